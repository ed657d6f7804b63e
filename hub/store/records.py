"""The records store's engine-neutral half: ingest bookkeeping, the device registry, dead letters, commands and
transactions, written once in portable SQL over a :class:`hub.records.session.Session`.

An engine (:class:`hub.store.sqlite.SQLiteStore`, :class:`hub.records.postgresql.PostgresStore`) subclasses
:class:`RecordsStore` and supplies only its connections: :meth:`RecordsStore.open`, :meth:`RecordsStore.close`,
:meth:`RecordsStore.write` and :meth:`RecordsStore.read` (and, where the readings share the records file,
:meth:`RecordsStore._insert_readings`). Nothing here knows which engine runs the statements.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from edge.contract import REPLY_EXPIRED, Reply, Tx, TxOutcome, TxStatus
from hub.errors import StoreError
from hub.records.dialect import dialect_of
from hub.records.migrate import Migration
from hub.records.session import Session
from hub.records.unit import RecordsUnit
from hub.store.base import (
    CommandOutcome,
    CommandRecord,
    DeviceRecord,
    IngestBatch,
    IngestOutcome,
    StoredDeadLetter,
    StoredEvent,
    TxDecision,
    epoch_ms,
)
from hub.timeseries.sqlite import Row

T = TypeVar("T")


class RecordsStore(ABC):
    """The :class:`hub.store.base.SqlStore` in portable SQL; an engine subclass supplies the transactions."""

    _readings = False
    """Whether :meth:`ingest` stores the readings of telemetry in its own commit (:meth:`_insert_readings`)."""

    def __init__(self, deadletter_keep_bytes: int = 4096, schemas: Sequence[Callable[[Session], None]] = ()) -> None:
        self._keep = deadletter_keep_bytes
        self._schemas = tuple(schemas)
        self.applied: list[Migration] = []
        """The migrations the last :meth:`open` applied."""

    @abstractmethod
    def open(self) -> None:
        """Connect and apply the pending migrations, then the ``schemas`` hooks."""

    @abstractmethod
    def close(self) -> None:
        """Release every connection; safe to call twice."""

    @abstractmethod
    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction (committed if it returns, rolled back if it raises)."""

    @abstractmethod
    def read(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` on a read connection."""

    def _insert_readings(self, db: Session, rows: Sequence[Row], latest: dict[tuple[str, str, str], int]) -> None:
        """Inside :meth:`ingest`'s write: store the batch's readings (engines that keep them in the records)."""
        if rows:
            raise StoreError("this records store keeps no readings: they go to the time-series store")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one query on a read connection."""
        return self.read(lambda db: db.execute(sql, params).fetchall())

    def _row(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row of one query on a read connection, or None."""
        return self.read(lambda db: db.execute(sql, params).fetchone())


    @staticmethod
    def replace_tx_outcome(db: Session, tx_id: str, outcome: TxOutcome) -> str:
        """Inside :meth:`write`: store the later outcome of a transaction (a pending payment confirmed);
        returns the device to answer."""
        row = db.execute("UPDATE transactions SET status = ?, outcome = ? WHERE tx_id = ? RETURNING device",
                         (outcome.status.value, outcome.model_dump_json(), tx_id)).fetchone()
        if row is None:
            raise LookupError(f"no transaction {tx_id!r}")
        return str(row[0])

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, batch: IngestBatch) -> IngestOutcome:
        """Commit one batch; see :meth:`hub.store.base.Store.ingest`."""
        out = IngestOutcome()
        self.write(lambda db: self._ingest(db, batch, out))
        return out

    def _ingest(self, db: Session, batch: IngestBatch, out: IngestOutcome) -> None:
        seen: dict[str, list[float]] = {}
        new_seqs: dict[str, list[int]] = defaultdict(list)
        dups: dict[str, int] = defaultdict(int)
        readings: list[Row] = []
        add_reading = readings.append
        latest: dict[tuple[str, str, str], int] = {}
        events: list[tuple[Any, ...]] = []
        stored = _already_stored(db, [(m.device, m.seq) for m in batch.messages])
        received: list[tuple[str, int, str]] = []
        acks = out.acks
        for m in batch.messages:
            device, seq, plain = m.device, m.seq, m.readings
            kind = "telemetry" if plain is not None else "event" if m.event is not None else "reply"
            span = seen.get(device)
            if span is None:
                seen[device] = [m.received_at, m.received_at]
            else:
                _widen(span, m.received_at)
            device_acks = acks.get(device)
            if device_acks is None:
                acks[device] = [seq]
            else:
                device_acks.append(seq)
            sent = (device, seq)
            if sent in stored:
                dups[device] += 1
                continue
            stored.add(sent)
            received.append((device, seq, kind))
            new_seqs[device].append(seq)
            if plain is not None:
                for idx, r in enumerate(plain if self._readings else ()):
                    ts = r.ts_ms
                    value = r.value  # bool has no subclasses: the class test is isinstance's answer, cheaper
                    add_reading((device, seq, idx, ts, r.sensor, r.quantity, value, value.__class__ is bool, r.unit))
                    key = (device, r.sensor, r.quantity)
                    if latest.get(key, -1) < ts:
                        latest[key] = ts
            elif m.event is not None:
                e = m.event
                events.append((m.device, m.seq, epoch_ms(e.ts), e.sensor, e.event, e.severity.value,
                               json.dumps(e.data, ensure_ascii=False)))
            elif m.reply is not None and _settle_reply(db, m.reply, m.received_at):
                out.replies.append(m.reply)
        db.executemany("INSERT INTO received (device, seq, kind) VALUES (?, ?, ?)", received)
        for d in batch.deadletters:
            _touch(seen, d.device, d.received_at)
            if d.device is not None and d.seq is not None:
                out.acks.setdefault(d.device, []).append(d.seq)
                if not db.execute("INSERT INTO received (device, seq, kind) VALUES (?, ?, ?) "
                                  "ON CONFLICT (device, seq) DO NOTHING",
                                  (d.device, d.seq, "deadletter")).rowcount:
                    dups[d.device] += 1
                    continue
                new_seqs[d.device].append(d.seq)
            db.execute(
                "INSERT INTO deadletters (received_at, topic, reason, detail, size, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (d.received_at, d.topic, d.reason, d.detail[:1000], d.size, d.payload[: self._keep]))
        self._insert_readings(db, readings, latest)
        if events:
            db.executemany("INSERT INTO events (device, seq, ts, sensor, event, severity, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", events)
        # one statement each for every device, in device order (two hubs on one database lock rows alike)
        db.executemany(_SEEN, [(device, first, last) for device, (first, last) in sorted(seen.items())])
        counted = []
        for device in sorted(set(new_seqs) | set(dups)):
            seqs = new_seqs.get(device, [])
            low, high = min(seqs, default=2**62), max(seqs, default=0)
            counted.append((len(seqs), dups.get(device, 0), low, low, high, high, device))
        db.executemany(
            "UPDATE devices SET received = received + ?, duplicates = duplicates + ?, "
            "min_seq = CASE WHEN min_seq IS NOT NULL AND min_seq <= ? THEN min_seq ELSE ? END, "
            "max_seq = CASE WHEN max_seq IS NOT NULL AND max_seq >= ? THEN max_seq ELSE ? END "
            "WHERE device = ?", counted)
        for s in batch.statuses:
            self._apply_status(db, s.status, s.received_at)
        out.new_messages = sum(len(v) for v in new_seqs.values())
        out.duplicates = sum(dups.values())
        out.readings_stored = len(readings)

    def _apply_status(self, db: Session, status: Any, received_at: float) -> None:
        # the first node kind a device declares stays: it decides which transactions the hub takes from it, so a
        # device's credentials alone must not be enough to turn it into a kiosk
        heartbeat = status.model_dump(mode="json", exclude={"v", "device", "state", "at"}, exclude_none=True)
        db.execute(
            _SEEN,
            (status.device, received_at, received_at))
        db.execute(
            "UPDATE devices SET state = ?, last_status_at = ?, node = coalesce(node, ?), "
            "site = coalesce(?, site), "
            "dropped_at_edge = CASE WHEN dropped_at_edge >= ? THEN dropped_at_edge ELSE ? END, "
            "heartbeat = CASE WHEN ? THEN ? ELSE heartbeat END WHERE device = ?",
            (status.state.value, received_at, status.node, status.site, status.dropped or 0, status.dropped or 0,
             bool(heartbeat), json.dumps(heartbeat), status.device))

    # -- transactions --------------------------------------------------------------------------
    def apply_tx(self, tx: Tx, received_at: float, decide: TxDecision) -> tuple[TxOutcome, bool]:
        """Apply a transaction and record its outcome in one commit; a known tx_id returns its outcome."""
        try:
            return self.write(lambda db: self._apply_tx(db, tx, received_at, decide))
        except StoreError as err:
            raise type(err)(f"transaction {tx.tx_id} could not be applied: {err}") from err

    @staticmethod
    def _apply_tx(db: Session, tx: Tx, received_at: float,
                  decide: TxDecision) -> tuple[TxOutcome, bool]:
        row = db.execute("SELECT outcome, device FROM transactions WHERE tx_id = ?", (tx.tx_id,)).fetchone()
        if row is not None and row[1] != tx.device:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False,
                             reason=f"tx_id {tx.tx_id!r} was already used by another device", result={}), False
        if row is not None:
            db.execute("INSERT INTO received (device, seq, kind) VALUES (?, ?, 'tx') ON CONFLICT (device, seq) "
                       "DO NOTHING",
                       (tx.device, tx.seq))
            return TxOutcome.model_validate_json(row[0]), True
        outcome = decide(tx, RecordsUnit(db))
        db.execute(
            "INSERT INTO transactions (tx_id, device, seq, kind, created_at, received_at, status, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (tx.tx_id, tx.device, tx.seq, tx.kind, tx.model_dump(mode="json")["created_at"], received_at,
             outcome.status.value, outcome.model_dump_json()))
        if db.execute("INSERT INTO received (device, seq, kind) VALUES (?, ?, 'tx') ON CONFLICT (device, seq) "
                      "DO NOTHING",
                      (tx.device, tx.seq)).rowcount:
            db.execute(
                "INSERT INTO devices (device, first_seen, last_seen, min_seq, max_seq, received) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (device) DO UPDATE SET "
                "last_seen = CASE WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen "
                "ELSE devices.last_seen END, "
                "received = devices.received + 1, "
                "min_seq = CASE WHEN devices.min_seq IS NOT NULL AND devices.min_seq <= excluded.min_seq "
                "THEN devices.min_seq ELSE excluded.min_seq END, "
                "max_seq = CASE WHEN devices.max_seq IS NOT NULL AND devices.max_seq >= excluded.max_seq "
                "THEN devices.max_seq ELSE excluded.max_seq END",
                (tx.device, received_at, received_at, tx.seq, tx.seq))
        return outcome, False

    def tx_outcome(self, tx_id: str, device: str) -> TxOutcome | None:
        """The recorded outcome of ``device``'s transaction ``tx_id``, or None if it was never applied."""
        row = self.read(lambda db: db.execute("SELECT outcome FROM transactions WHERE tx_id = ? AND device = ?",
                                              (tx_id, device)).fetchone())
        return TxOutcome.model_validate_json(row[0]) if row else None

    # -- queries -------------------------------------------------------------------------------
    _DEVICE_COLUMNS = ("device, node, site, state, first_seen, last_seen, last_status_at, min_seq, max_seq, "
                       "received, duplicates, dropped_at_edge, heartbeat")

    @staticmethod
    def _device_row(row: tuple[Any, ...]) -> DeviceRecord:
        (device, node, site, state, first_seen, last_seen, last_status_at, min_seq, max_seq, received,
         duplicates, dropped, heartbeat) = row
        lost = (max_seq - min_seq + 1 - received) if max_seq is not None and min_seq is not None else 0
        return DeviceRecord(device=device, node=node, site=site, state=state, first_seen=first_seen,
                            last_seen=last_seen, last_status_at=last_status_at, last_seq=max_seq,
                            received=received, lost=max(0, lost), dropped_at_edge=dropped,
                            duplicates=duplicates, heartbeat=json.loads(heartbeat) if heartbeat else None)

    def devices(self) -> list[DeviceRecord]:
        """Every device, by id."""
        rows = self._rows(f"SELECT {self._DEVICE_COLUMNS} FROM devices ORDER BY device")  # noqa: S608 (constant)
        return [self._device_row(r) for r in rows]

    def device(self, device: str) -> DeviceRecord | None:
        """One device."""
        row = self._row(f"SELECT {self._DEVICE_COLUMNS} FROM devices WHERE device = ?",  # noqa: S608
                        (device,))
        return self._device_row(row) if row else None

    def deadletters(self, limit: int, reason: str | None = None) -> list[StoredDeadLetter]:
        """Newest first."""
        sql = "SELECT id, topic, reason, detail, received_at, size, payload FROM deadletters"
        args: list[Any] = []
        if reason is not None:
            sql += " WHERE reason = ?"
            args.append(reason)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [StoredDeadLetter(*row) for row in self._rows(sql, args)]

    def deadletter_counts(self) -> dict[str, int]:
        """Dead letters per reason."""
        return dict(self._rows("SELECT reason, COUNT(*) FROM deadletters GROUP BY reason"))

    def events(self, limit: int, device: str | None = None, sensor: str | None = None, event: str | None = None,
               event_prefix: str | None = None, severity: str | None = None, since: int | None = None,
               until: int | None = None, before: tuple[int, str, int] | None = None) -> list[StoredEvent]:
        """Newest first; see :meth:`hub.store.base.Store.events`."""
        where: list[str] = []
        args: list[Any] = []
        for condition, value in (("device = ?", device), ("sensor = ?", sensor), ("event = ?", event),
                                 ("severity = ?", severity), ("ts >= ?", since), ("ts < ?", until)):
            if value is not None:
                where.append(condition)
                args.append(value)
        if event_prefix is not None:
            where.append("substr(event, 1, ?) = ?")
            args += [len(event_prefix), event_prefix]
        if before is not None:
            where.append("(ts, device, seq) < (?, ?, ?)")
            args += before
        sql = "SELECT device, seq, ts, sensor, event, severity, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, device DESC, seq DESC LIMIT ?"
        return [StoredEvent(d, s, ts, sn, e, sv, json.loads(data))
                for d, s, ts, sn, e, sv, data in self._rows(sql, [*args, limit])]

    def record_command(self, cmd_id: str, device: str, name: str, args: dict[str, Any], sent_at: float,
                       expires_at: float | None = None, queued: bool = False) -> None:
        """Remember a command before it is published (``sent``), or ``queued`` until its device is online."""
        outcome = CommandOutcome.QUEUED if queued else CommandOutcome.SENT
        self.write(lambda db: db.execute(
            "INSERT INTO commands (cmd_id, device, name, args, sent_at, expires_at, outcome, published_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cmd_id, device, name, json.dumps(args), sent_at, expires_at, outcome.value,
             None if queued else sent_at)))

    def command(self, cmd_id: str) -> CommandRecord | None:
        """A command with its outcome and reply."""
        row = self._row(f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE cmd_id = ?", (cmd_id,))  # noqa: S608
        return None if row is None else _command_row(row)

    def commands(self, device: str, limit: int) -> list[CommandRecord]:
        """A device's commands, newest first."""
        rows = self.read(lambda db: db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE device = ? "  # noqa: S608
            f"ORDER BY sent_at DESC, {dialect_of(db).insertion_order} DESC LIMIT ?", (device, limit)).fetchall())
        return [_command_row(r) for r in rows]

    def settle_command(self, cmd_id: str, outcome: CommandOutcome, error: str | None = None,
                       only_from: tuple[CommandOutcome, ...] = (CommandOutcome.SENT,)) -> bool:
        """Give a command its outcome (timeout, expired, error) if it is still in one of ``only_from``."""
        marks = ",".join("?" * len(only_from))
        return bool(self.write(lambda db: db.execute(
            f"UPDATE commands SET outcome = ?, error = coalesce(?, error) "  # noqa: S608
            f"WHERE cmd_id = ? AND outcome IN ({marks})",
            (outcome.value, error, cmd_id, *(o.value for o in only_from))).rowcount))

    def due_commands(self, now: float) -> list[CommandRecord]:
        """Queued, unexpired commands of devices whose link is online, oldest first."""
        rows = self.read(lambda db: db.execute(
            f"SELECT {_COMMAND_COLUMNS} FROM commands c JOIN devices d USING (device) "  # noqa: S608
            "WHERE c.outcome = 'queued' AND d.state = 'online' AND c.expires_at > ? "
            f"ORDER BY c.sent_at, c.{dialect_of(db).insertion_order}", (now,)).fetchall())
        return [_command_row(r) for r in rows]

    def mark_command_published(self, cmd_id: str, at: float) -> bool:
        """Move a queued command to ``sent``; False when it is no longer queued."""
        return bool(self.write(lambda db: db.execute(
            "UPDATE commands SET outcome = 'sent', published_at = ? WHERE cmd_id = ? AND outcome = 'queued'",
            (at, cmd_id)).rowcount))

    def expire_commands(self, now: float, reply_grace_s: float = 0.0) -> int:
        """Queued commands past their expiry become ``expired``, sent ones without a reply ``reply_grace_s``
        after it ``timeout``."""
        stale = self._row(
            "SELECT EXISTS (SELECT 1 FROM commands WHERE outcome = 'queued' AND expires_at <= ?) "
            "OR EXISTS (SELECT 1 FROM commands WHERE outcome = 'sent' AND expires_at <= ?)",
            (now, now - reply_grace_s))[0]
        if not stale:
            return 0

        def work(db: Session) -> int:
            expired = db.execute("UPDATE commands SET outcome = 'expired', error = 'expired before the device came "
                                 "online; never sent' WHERE outcome = 'queued' AND expires_at <= ?", (now,)).rowcount
            timed_out = db.execute("UPDATE commands SET outcome = 'timeout' WHERE outcome = 'sent' "
                                   "AND expires_at <= ?", (now - reply_grace_s,)).rowcount
            return int(expired + timed_out)
        return self.write(work)

    def stored_seqs(self) -> set[tuple[str, int]]:
        """Every (device, seq) stored; for tests and audits."""
        return {(device, seq) for device, seq in self._rows("SELECT device, seq FROM received")}


_SEEN = ("INSERT INTO devices (device, first_seen, last_seen) VALUES (?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
         "last_seen = CASE WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen "
         "ELSE devices.last_seen END")
"""A device seen (device, first, last): added, or its last contact moved to the later of the two (portable SQL,
no two-argument max)."""

_COMMAND_COLUMNS = ("cmd_id, device, name, args, outcome, sent_at, published_at, expires_at, replied_at, "
                   "result, error, replays")


def _command_row(row: tuple[Any, ...]) -> CommandRecord:
    cmd_id, device, name, args, outcome, sent_at, published_at, expires_at, replied_at, result, error, replays = row
    return CommandRecord(cmd_id=cmd_id, device=device, name=name, args=json.loads(args),
                         outcome=CommandOutcome(outcome), requested_at=sent_at, published_at=published_at,
                         expires_at=expires_at, replied_at=replied_at,
                         result=json.loads(result) if result else None, error=error, replays=replays)


_REPLY_OUTCOME = {True: CommandOutcome.OK, False: CommandOutcome.ERROR}


def _settle_reply(db: Session, reply: Reply, received_at: float) -> bool:
    """Store the first reply to a command; a later one (a replay, a second run) is only counted."""
    first = CommandOutcome.EXPIRED if reply.code == REPLY_EXPIRED else _REPLY_OUTCOME[reply.ok]
    late = first if first is CommandOutcome.EXPIRED else CommandOutcome.LATE
    settled = db.execute(
        "UPDATE commands SET ok = ?, result = ?, error = ?, replied_at = ?, "
        "outcome = CASE outcome WHEN 'timeout' THEN ? ELSE ? END "
        "WHERE cmd_id = ? AND device = ? AND outcome IN ('sent', 'timeout')",
        (reply.ok, json.dumps(reply.result) if reply.result is not None else None, reply.error, received_at,
         late.value, first.value, reply.cmd_id, reply.device)).rowcount
    if not settled:
        db.execute("UPDATE commands SET replays = replays + 1 WHERE cmd_id = ? AND device = ?",
                   (reply.cmd_id, reply.device))
    return bool(settled)


def _already_stored(db: Session, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of these (device, seq) the store already holds: one query per device and 500 seqs."""
    by_device: dict[str, list[int]] = defaultdict(list)
    for device, seq in keys:
        by_device[device].append(seq)
    found: set[tuple[str, int]] = set()
    for device, seqs in by_device.items():
        unique = sorted(set(seqs))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT seq FROM received WHERE device = ? AND seq IN ({marks})",  # noqa: S608
                              [device, *chunk])
            found.update((device, seq) for (seq,) in rows)
    return found


def _touch(seen: dict[str, list[float]], device: str | None, at: float) -> None:
    if device is None:
        return
    _widen(seen.setdefault(device, [at, at]), at)


def _widen(span: list[float], at: float) -> None:
    """Make the [first, last] contact ``span`` take in ``at``."""
    if at < span[0]:
        span[0] = at
    elif at > span[1]:
        span[1] = at
