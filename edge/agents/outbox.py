"""The durable outbox: every message a device sends is committed here first and deleted only when the hub says so.

One SQLite file (WAL). Each record gets its ``seq`` from an AUTOINCREMENT key, so sequence numbers strictly
increase and are never reused, across restarts too. Telemetry, events and command replies are deleted when
the hub acknowledges them on ``down/ack``; transactions when it answers them on ``down/tx``. Each class is
bounded (rows and age): the droppable classes lose their oldest records first and count what they lost;
transactions are never dropped, and a transaction the outbox cannot take is refused with :class:`OutboxFull`.
A full disk is reported as :class:`OutboxDiskFull` and nothing already committed is lost; writes succeed again
once space returns. A record the broker refuses for good is moved to the ``set_aside`` table, out of the way
of the others, where a technician can still read it.

Telemetry records are committed to the outbox's recent file first (``edge.agents.recent``: one ``write`` each, no
SQLite transaction) and moved into SQLite in batches; the outbox is both files. A record in either is committed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from edge.agents import recent
from edge.config import OutboxConfig
from edge.contract import Message
from edge.errors import OutboxDiskFull, OutboxError, OutboxFull

log = logging.getLogger("nakhon.outbox")

RECENT_MAX_RECORDS = 200
"""Telemetry records the recent file holds before they are moved into SQLite."""
RECENT_MAX_BYTES = 1024 * 1024
"""The recent file's size beyond which its records are moved into SQLite (acknowledged ones take room too)."""


class RecordClass(StrEnum):
    """What a record is, which decides how it is acknowledged and whether it may be dropped."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    REPLY = "reply"
    TX = "tx"

    @property
    def suffix(self) -> str:
        """The topic suffix the record is published on."""
        return f"up/{self.value}"

    @property
    def droppable(self) -> bool:
        """Transactions are never dropped; everything else may be, oldest first."""
        return self is not RecordClass.TX


@dataclass(frozen=True)
class OutboxRecord:
    """One committed message waiting for the hub."""

    seq: int
    klass: RecordClass
    payload: bytes
    key: str | None
    created: float


@dataclass(frozen=True)
class OutboxSnapshot:
    """An outbox seen from outside the agent (``snapshot``)."""

    waiting: tuple[int, ...]
    """The seqs of the records waiting for the hub, in order."""
    last_seq: int
    """The highest seq handed out (0 for a new outbox)."""


_LAST_SEQ = ("SELECT MAX(seq) FROM (SELECT seq FROM sqlite_sequence WHERE name = 'records' "
             "UNION ALL SELECT MAX(seq) FROM records UNION ALL SELECT MAX(seq) FROM set_aside)")
"""The highest seq the outbox's SQLite file knows of (the recent file may know a higher one)."""


def _covered(seq: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(first <= seq <= last for first, last in ranges)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    klass   TEXT NOT NULL,
    key     TEXT,
    created REAL NOT NULL,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS records_by_class ON records (klass, seq);
CREATE INDEX IF NOT EXISTS records_by_key ON records (key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (
    seq     INTEGER PRIMARY KEY,
    klass   TEXT NOT NULL,
    key     TEXT,
    created REAL NOT NULL,
    payload BLOB,
    reason  TEXT NOT NULL,
    at      REAL NOT NULL
);
"""


def storage_error(err: sqlite3.Error | OSError, doing: str) -> OutboxError:
    """The outbox error for a failed write: :class:`OutboxDiskFull` when the disk is full."""
    full = (isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL) or \
        (isinstance(err, OSError) and err.errno == errno.ENOSPC)
    if full:
        return OutboxDiskFull(f"{doing}: the disk is full ({err}); free some space, the agent retries by itself")
    return OutboxError(f"{doing}: {err}")


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite already rolled back after a full disk)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


class Outbox:
    """A device's durable queue of outgoing records; thread-safe, blocking (agents call it in a thread)."""

    def __init__(self, path: Path, limits: OutboxConfig, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._limits = limits
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._counts: dict[RecordClass, int] = {}
        self._last = 0
        """The highest seq handed out, kept here so that a record is written in one INSERT with its payload."""
        self._deferred: list[tuple[int, int]] = []
        """Acknowledged ranges not deleted yet: the next :meth:`append` deletes them in its own transaction (or
        :meth:`ack` does, whichever comes first)."""
        self._deferred_lock = threading.Lock()
        self._recent_file = recent.RecentFile(recent.recent_path(path))
        self._recent: dict[int, OutboxRecord] = {}
        """The telemetry records in the recent file and not in SQLite, in seq order (every seq above ``_stored``)."""
        self._stored = 0
        """The highest seq ever written to SQLite's ``records``."""
        self._batching = limits.synchronous != "full"
        """Telemetry goes to the recent file first (with ``synchronous=full`` every record is a SQLite commit)."""
        self._limits_by_class = {
            RecordClass.TELEMETRY: limits.telemetry_max_rows,
            RecordClass.EVENT: limits.event_max_rows,
            RecordClass.REPLY: limits.reply_max_rows,
            RecordClass.TX: limits.tx_max_rows,
        }

    def open(self) -> None:
        """Open (creating if needed) the outbox file."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._limits.synchronous.upper()}")
            db.executescript(_SCHEMA)
            self._replay(db)
            rows = db.execute("SELECT klass, COUNT(*) FROM records GROUP BY klass").fetchall()
            last = db.execute(_LAST_SEQ).fetchone()[0]
        except (sqlite3.Error, OSError) as err:
            self._recent_file.close()
            raise OutboxError(f"cannot open the outbox at {self._path}: {err}") from err
        self._last = self._stored = int(last or 0)
        self._recent = {}
        self._counts = {k: 0 for k in RecordClass}
        self._counts.update({RecordClass(k): n for k, n in rows})
        self._db = db

    def _replay(self, db: sqlite3.Connection) -> None:
        """Open the recent file and put what it holds into SQLite (after a crash or a power cut), with the last seq
        it handed out; then empty it."""
        replay = self._recent_file.open()
        if replay.torn_bytes:
            log.warning("%s ended in %d byte(s) of a record cut short (a power cut during a write); ignored",
                        self._recent_file.path, replay.torn_bytes)
        if replay.last_seq:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR IGNORE INTO records (seq, klass, key, created, payload) "
                               "VALUES (?, 'telemetry', NULL, ?, ?)",
                               [(seq, created, payload) for seq, (created, payload) in replay.records.items()])
                self._keep_last(db, replay.last_seq)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        if self._recent_file.size or replay.torn_bytes:
            self._recent_file.empty()

    @staticmethod
    def _keep_last(db: sqlite3.Connection, seq: int) -> None:
        """Inside a transaction: record ``seq`` as handed out, in AUTOINCREMENT's own counter (``sqlite_sequence``,
        which SQLite lets a program update), for records that never reached SQLite."""
        if not db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'records'", (seq,)).rowcount:
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (seq,))

    def close(self) -> None:
        """Close the files (the recent file's records moved into SQLite first); safe to call twice."""
        with self._lock:
            if self._db is not None:
                moved = False
                try:
                    self._move_recent(self._db)
                    moved = True
                except OutboxError as err:  # they stay in the recent file, which the next open reads
                    log.warning("%s", err)
                self._recent_file.close(remove=moved)
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is not open")
        return self._db

    def _limit(self, klass: RecordClass) -> int:
        return self._limits_by_class[klass]

    def _max_age(self, klass: RecordClass) -> float | None:
        return {
            RecordClass.TELEMETRY: self._limits.telemetry_max_age_s,
            RecordClass.EVENT: self._limits.event_max_age_s,
            RecordClass.REPLY: self._limits.reply_max_age_s,
            RecordClass.TX: None,
        }[klass]

    def _count_dropped(self, db: sqlite3.Connection, klass: RecordClass, n: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (f"dropped_{klass}", n),
        )

    def append(self, klass: RecordClass, build: Callable[[int], Message | bytes],
               key: str | None = None) -> OutboxRecord:
        """Commit a new record; ``build(seq)`` makes its message (or its JSON) once the seq is known.

        A full droppable class loses its oldest record (counted); a full transaction class raises
        :class:`OutboxFull` and commits nothing.
        """
        with self._lock:
            db = self._conn
            if (klass is RecordClass.TELEMETRY and key is None and self._batching
                    and self._counts[klass] < self._limit(klass) and len(self._recent) < RECENT_MAX_RECORDS
                    and self._recent_file.size < RECENT_MAX_BYTES and not self._stored_acked()):
                return self._append_recent(build)
            if self._counts[klass] >= self._limit(klass) and not klass.droppable:
                raise OutboxFull(
                    f"outbox holds {self._counts[klass]} unanswered transactions (limit "
                    f"outbox.tx_max_rows = {self._limit(klass)}); the transaction was not taken: "
                    "check the link to the hub")
            try:
                full = klass is RecordClass.TX and self._limits.synchronous != "full"
                if full:
                    db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN IMMEDIATE")
                acked = self._take_deferred()  # what the hub acknowledged goes in this transaction
                moving, acked_recent = self._split_recent(acked)
                try:
                    self._insert(db, moving)  # the recent file's records first: seqs stay in order in SQLite
                    gone = self._delete_acked(db, acked) if acked else []
                    gone += [(seq, RecordClass.TELEMETRY.value) for seq in acked_recent]
                    held = self._counts[klass] - sum(1 for _, k in gone if k == klass)
                    excess = held - self._limit(klass) + 1
                    if excess > 0:
                        db.execute(
                            "DELETE FROM records WHERE seq IN "
                            "(SELECT seq FROM records WHERE klass = ? ORDER BY seq LIMIT ?)",
                            (klass.value, excess))
                        self._count_dropped(db, klass, excess)
                    created = self._clock()
                    seq = self._last + 1  # what AUTOINCREMENT would give, which it records for the next open
                    built = build(seq)
                    payload = built if isinstance(built, bytes) else built.to_json()
                    db.execute("INSERT INTO records (seq, klass, key, created, payload) VALUES (?, ?, ?, ?, ?)",
                               (seq, klass.value, key, created, payload))
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    if acked:
                        self._defer_again(acked)
                    raise
                finally:
                    if full:
                        db.execute(f"PRAGMA synchronous={self._limits.synchronous.upper()}")
            except (sqlite3.Error, OSError) as err:
                raise storage_error(err, f"cannot commit a {klass} record to {self._path}") from err
            self._moved()
            if gone:
                self._uncount(gone)
            self._counts[klass] = self._counts[klass] - max(0, excess) + 1
            self._last = self._stored = seq
            return OutboxRecord(seq=seq, klass=klass, payload=payload, key=key, created=created)

    def _split_recent(self, ranges: list[tuple[int, int]]) -> tuple[list[OutboxRecord], list[int]]:
        """The recent file's records that ``ranges`` do not acknowledge, and the seqs of those they do."""
        kept: list[OutboxRecord] = []
        acked: list[int] = []
        for seq, record in self._recent.items():
            if _covered(seq, ranges):
                acked.append(seq)
            else:
                kept.append(record)
        return kept, acked

    def _stored_acked(self) -> bool:
        """Whether acknowledged ranges wait that reach into SQLite (deleted in the next record's transaction)."""
        with self._deferred_lock:
            return any(first <= self._stored for first, _ in self._deferred)

    def _append_recent(self, build: Callable[[int], Message | bytes]) -> OutboxRecord:
        """Under the lock: commit a telemetry record to the recent file, after deleting what the hub acknowledged."""
        seq, created = self._last + 1, self._clock()
        built = build(seq)  # before anything changes: a record that fails to build leaves the outbox as it was
        payload = built if isinstance(built, bytes) else built.to_json()
        acked = self._take_deferred()
        if acked:
            try:
                self._settle(self._conn, acked)
            except (sqlite3.Error, OSError) as err:
                self._defer_again(acked)
                raise storage_error(err, f"cannot delete acknowledged records from {self._path}") from err
        try:
            self._recent_file.add(seq, created, payload)
        except OSError as err:
            raise storage_error(err, f"cannot commit a telemetry record to {self._recent_file.path}") from err
        record = OutboxRecord(seq=seq, klass=RecordClass.TELEMETRY, payload=payload, key=None, created=created)
        self._recent[seq] = record
        self._counts[RecordClass.TELEMETRY] += 1
        self._last = seq
        return record

    @staticmethod
    def _insert(db: sqlite3.Connection, records: list[OutboxRecord]) -> None:
        if records:
            db.executemany("INSERT OR IGNORE INTO records (seq, klass, key, created, payload) VALUES (?, ?, ?, ?, ?)",
                           [(r.seq, r.klass.value, r.key, r.created, r.payload) for r in records])

    def _moved(self) -> None:
        """After a commit that put the recent file's records and the last seq into SQLite: empty the file."""
        if self._recent:
            self._stored = max(self._stored, next(reversed(self._recent)))
            self._recent = {}
        if self._recent_file.size:
            try:
                self._recent_file.empty()
            except OSError as err:  # its records are in SQLite: a reopen puts them there again, which changes nothing
                log.warning("cannot empty %s: %s", self._recent_file.path, err)

    def _move_recent(self, db: sqlite3.Connection) -> None:
        """Under the lock: move the recent file's records into SQLite in one transaction (before a query or a write
        that must see them), with the last seq, then empty the file."""
        if not self._recent and not self._recent_file.size:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._insert(db, list(self._recent.values()))
                self._keep_last(db, self._last)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except (sqlite3.Error, OSError) as err:
            raise storage_error(err, f"cannot move telemetry records from {self._recent_file.path} into "
                                     f"{self._path}") from err
        self._moved()

    def _settle(self, db: sqlite3.Connection, ranges: list[tuple[int, int]]) -> list[tuple[int, str]]:
        """Under the lock: delete the acknowledged records of ``ranges``: in SQLite in one transaction (raises,
        changing nothing, if it fails), then from the recent file (told which ranges are acknowledged); the seq and
        class of each record deleted."""
        gone: list[tuple[int, str]] = []
        stored = [(first, min(last, self._stored)) for first, last in ranges if first <= self._stored]
        if stored:
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._delete_acked(db, stored)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        if self._recent:
            _, acked = self._split_recent(ranges)
            for seq in acked:
                del self._recent[seq]
            gone += [(seq, RecordClass.TELEMETRY.value) for seq in acked]
            if acked:
                self._note_acked(acked, ranges)
        self._uncount(gone)
        return gone

    def _note_acked(self, acked: list[int], ranges: list[tuple[int, int]]) -> None:
        """Tell the recent file what the hub acknowledged of its records (it is emptied only when SQLite holds the
        last seq); best effort: a record a reopen brings back is sent again, and the hub acknowledges it again as a
        duplicate."""
        try:
            for first, last in ranges:
                if any(first <= seq <= last for seq in acked):
                    self._recent_file.acked(first, last)
        except OSError as err:
            log.warning("cannot note acknowledged records in %s: %s", self._recent_file.path, err)

    def pending(self, limit: int, after: int = 0) -> list[OutboxRecord]:
        """The oldest ``limit`` records with a seq above ``after`` still waiting for the hub, in seq order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, klass, payload, key, created FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit)).fetchall()
            records = [OutboxRecord(seq, RecordClass(k), p, key, c) for seq, k, p, key, c in rows]
            for seq, record in self._recent.items():  # every seq above those in SQLite
                if len(records) >= limit:
                    break
                if seq > after:
                    records.append(record)
        return records

    def defer_ack(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Note acknowledged ranges for deletion by the next commit (:meth:`append` or :meth:`ack`): a device
        that keeps sampling deletes what the hub acknowledged in the transaction of its next record, without a
        transaction of its own. Does not wait for the outbox (safe on an event loop)."""
        with self._deferred_lock:
            self._deferred.extend(ranges)

    def deferred(self) -> bool:
        """Whether acknowledged ranges wait for deletion."""
        return bool(self._deferred)

    def _take_deferred(self) -> list[tuple[int, int]]:
        with self._deferred_lock:
            taken, self._deferred = self._deferred, []
        return taken

    def _defer_again(self, ranges: list[tuple[int, int]]) -> None:
        with self._deferred_lock:
            self._deferred[:0] = ranges

    @staticmethod
    def _delete_acked(db: sqlite3.Connection, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, str]]:
        """Inside a transaction: delete the acknowledged telemetry, event and reply records of ``ranges``
        (transactions are settled by their answer only); the seq and class of each record deleted."""
        gone: list[tuple[int, str]] = []
        for first, last in ranges:
            gone += db.execute("DELETE FROM records WHERE seq BETWEEN ? AND ? AND klass != 'tx' "
                               "RETURNING seq, klass", (first, last)).fetchall()
        return gone

    def ack(self, ranges: Iterable[tuple[int, int]] = ()) -> list[int]:
        """Delete acknowledged telemetry, event and reply records (``ranges`` and those deferred); returns the
        seqs deleted."""
        with self._lock:
            db = self._conn
            taken = [*self._take_deferred(), *ranges]
            if not taken:
                return []
            try:
                gone = self._settle(db, taken)
            except (sqlite3.Error, OSError) as err:
                self._defer_again(taken)
                raise storage_error(err, f"cannot delete acknowledged records from {self._path}") from err
        return sorted(seq for seq, _ in gone)

    def _uncount(self, gone: list[tuple[int, str]]) -> None:
        counts = self._counts
        for _, klass in gone:
            counts[RecordClass(klass)] -= 1

    def set_aside(self, seq: int, reason: str) -> bool:
        """Move the record ``seq`` out of the queue into ``set_aside`` with ``reason``; False if it is gone."""
        with self._lock:
            db = self._conn
            if seq in self._recent:
                self._move_recent(db)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute("DELETE FROM records WHERE seq = ? RETURNING klass, key, created, payload",
                                     (seq,)).fetchone()
                    if row is not None:
                        db.execute("INSERT OR REPLACE INTO set_aside (seq, klass, key, created, payload, reason, at) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (seq, *row, reason, self._clock()))
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            except (sqlite3.Error, OSError) as err:
                raise storage_error(err, f"cannot set record {seq} aside in {self._path}") from err
            if row is None:
                return False
            self._counts[RecordClass(row[0])] -= 1
            return True

    def set_aside_count(self) -> int:
        """How many records the broker refused for good and wait in ``set_aside``."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM set_aside").fetchone()[0])

    def answer(self, tx_id: str) -> int | None:
        """Delete the transaction ``tx_id`` once the hub has answered it; returns its seq if it was here."""
        with self._lock:
            row = self._conn.execute(
                "DELETE FROM records WHERE key = ? AND klass = 'tx' RETURNING seq", (tx_id,)).fetchone()
            if row is None:
                return None
            self._counts[RecordClass.TX] -= 1
            return int(row[0])

    def expire(self) -> int:
        """Drop droppable records older than their class's age limit; returns how many."""
        total = 0
        with self._lock:
            db = self._conn
            max_age = self._max_age(RecordClass.TELEMETRY)
            oldest = next(iter(self._recent.values()), None)
            if oldest is not None and max_age is not None and oldest.created < self._clock() - max_age:
                self._move_recent(db)
            for klass in RecordClass:
                max_age = self._max_age(klass)
                if max_age is None:
                    continue
                try:
                    db.execute("BEGIN IMMEDIATE")
                    n = db.execute("DELETE FROM records WHERE klass = ? AND created < ?",
                                   (klass.value, self._clock() - max_age)).rowcount
                    if n:
                        self._count_dropped(db, klass, n)
                    db.execute("COMMIT")
                except (sqlite3.Error, OSError) as err:
                    _rollback(db)
                    raise storage_error(err, f"cannot expire old records in {self._path}") from err
                self._counts[klass] -= n
                total += n
        return total

    def depth(self) -> int:
        """How many records wait for the hub."""
        return sum(self._counts.values())

    def dropped(self) -> dict[str, int]:
        """Records dropped at the edge since the outbox was created, per class."""
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM counters WHERE name LIKE 'dropped_%'").fetchall()
        return {name.removeprefix("dropped_"): int(v) for name, v in rows}

    def last_seq(self) -> int:
        """The highest seq ever handed out (0 for a new outbox)."""
        with self._lock:
            if self._db is None:
                raise OutboxError("the outbox is not open")
            return self._last


def snapshot(path: Path) -> OutboxSnapshot:
    """The records waiting in the outbox at ``path`` and its last seq, read without writing (the agent may be
    running): its recent file first, then SQLite, so that a record moved between the two meanwhile is seen."""
    replay = recent.read(recent.recent_path(path))
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        stored = [int(seq) for (seq,) in db.execute("SELECT seq FROM records ORDER BY seq")]
        row = db.execute(_LAST_SEQ).fetchone()
    return OutboxSnapshot(tuple(sorted({*stored, *replay.records})), max(int(row[0] or 0), replay.last_seq))


class SendWindow:
    """The publisher's view of the outbox over one connection: what is in flight and where to read next.

    Records are taken in seq order, each once per connection, either read from the outbox after ``cursor``
    or offered as they are committed (no read at all when the publisher keeps up). At most ``size`` records
    are taken and unacknowledged at a time. A record leaves the window when the hub acknowledges or answers
    it, and is never sent again on this connection; one still unacknowledged ``resend_after`` seconds after
    its send is due again. :meth:`reset` (a new connection) starts again from the oldest record in the outbox.
    """

    def __init__(self, size: int, resend_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.resend_after = resend_after
        self._clock = clock
        self.cursor = 0
        """The highest seq taken on this connection."""
        self.unread = True
        """Whether the outbox may hold records after ``cursor`` that were not taken."""
        self._missed = 0
        self._ready: deque[OutboxRecord] = deque()
        self._inflight: dict[int, tuple[OutboxRecord, float]] = {}
        self._next_check = math.inf

    def reset(self) -> None:
        """Forget everything taken: the next records are read from the oldest in the outbox."""
        self.cursor, self.unread = 0, True
        self._missed += 1
        self._ready.clear()
        self._inflight.clear()
        self._next_check = math.inf

    def __len__(self) -> int:
        return len(self._ready) + len(self._inflight)

    def room(self) -> int:
        """How many more records may be taken now."""
        return self.size - len(self)

    def offer(self, record: OutboxRecord) -> None:
        """A record just committed: taken when it is the next one and there is room, else left to be read."""
        if record.seq == self.cursor + 1 and not self.unread and self.room() > 0:
            self.cursor = record.seq
            self._ready.append(record)
        elif record.seq > self.cursor:
            self.unread = True
            self._missed += 1

    def marker(self) -> int:
        """Taken before a read and given to :meth:`took`: offers missed meanwhile keep ``unread`` set."""
        return self._missed

    def took(self, records: list[OutboxRecord], asked: int, marker: int) -> None:
        """Take ``records``, read from the outbox after ``cursor`` with a limit of ``asked``."""
        for record in records:
            if record.seq > self.cursor:
                self.cursor = record.seq
                self._ready.append(record)
        if len(records) < asked and marker == self._missed:
            self.unread = False

    def to_send(self) -> list[OutboxRecord]:
        """Records to send now, in seq order: those due again, then those newly taken."""
        now = self._clock()
        due: list[OutboxRecord] = []
        if now >= self._next_check:
            self._next_check = math.inf
            for seq, (record, at) in self._inflight.items():
                if at <= now:
                    due.append(record)
                    at = now + self.resend_after
                    self._inflight[seq] = (record, at)
                self._next_check = min(self._next_check, at)
        while self._ready:
            record = self._ready.popleft()
            self._inflight[record.seq] = (record, now + self.resend_after)
            self._next_check = min(self._next_check, now + self.resend_after)
            due.append(record)
        return due

    def wait_s(self) -> float:
        """Seconds until a record in flight is due again (``resend_after`` when none is in flight)."""
        if self._ready:
            return 0.0
        return max(0.0, min(self._next_check - self._clock(), self.resend_after))

    def postpone(self, seq: int, delay: float) -> None:
        """Send ``seq`` again ``delay`` seconds from now rather than ``resend_after`` after its send."""
        entry = self._inflight.get(seq)
        if entry is not None:
            at = self._clock() + delay
            self._inflight[seq] = (entry[0], at)
            self._next_check = min(self._next_check, at)

    def settle(self, seq: int) -> None:
        """``seq`` is done (answered, set aside): it leaves the window."""
        self._inflight.pop(seq, None)

    def acked(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The hub acknowledged ``ranges``: every record in them but transactions leaves the window.

        A record dropped from the outbox while in flight leaves too, although the outbox deleted nothing.
        """
        for first, last in ranges:
            seqs = range(first, last + 1) if last - first < len(self._inflight) else list(self._inflight)
            for seq in seqs:
                entry = self._inflight.get(seq)
                if entry is not None and first <= seq <= last and entry[0].klass is not RecordClass.TX:
                    del self._inflight[seq]

    def inflight(self) -> list[int]:
        """The seqs sent and not yet acknowledged or answered, in the order they were first sent."""
        return list(self._inflight)
