"""The ingest consumer: the MQTT connection (in a child process, :mod:`hub.ingest.receiver`) feeding a writer
thread that commits in batches.

The child passes what it receives in batches; a pump thread queues it. The writer thread drains the queue in batches,
classifies each message, commits the batch in one store transaction, then acknowledges on ``down/ack``
exactly the seqs the commit covered (duplicates included, so a device whose ack was lost stops resending).
Acknowledgements are coalesced: the seqs committed within ``ack_window_s`` go out as one ``down/ack`` of ranges
per device, never before their commit, and a device's go out at once when ``ack_flush_seqs`` of them wait.
Transactions are applied one by one through the router and answered on ``down/tx``.

The writer survives any single message: an unexpected error splits the work in halves until the message that
causes it is alone, which is dead-lettered as ``store_rejected`` (and acknowledged) while the rest is committed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol, TypeVar

from edge.contract import Ack, Tx, TxOutcome, TxStatus, parse_topic, seq_ranges, topic
from hub.commands import CommandDesk
from hub.errors import MessageTooLarge, RecordRejected, StoreError, TimeSeriesUnavailable
from hub.faults import crash_point
from hub.ingest.access import TX_KINDS_BY_NODE, tx_refusal
from hub.ingest.backlog import Backlog
from hub.ingest.classify import Classified, ClockWindow, Reason, TxRefused, TxRequest, classify
from hub.ingest.receiver import Link
from hub.ingest.receiver import run as run_receiver
from hub.metrics import HubMetrics, WriterState
from hub.router import Router
from hub.store.base import DeadLetter, IngestBatch, IngestOutcome, SeqMessage, StatusUpdate, Store
from hub.timeseries.base import Point, TimeSeries, points_of

log = logging.getLogger("nakhon.hub.ingest")


@dataclass(frozen=True)
class IngestSettings:
    """How the hub reaches the broker and how it batches."""

    host: str = "127.0.0.1"
    port: int = 1883
    root: str = "nakhon"
    username: str | None = None
    password: str | None = None
    client_id: str = "nakhon-hub"
    share: str | None = None
    session_expiry_s: int = 7 * 86_400
    max_payload: int = 262_144
    batch_max: int = 5_000
    batch_gather_s: float = 0.02
    """After a first message, the writer waits up to this long for ``batch_fill`` to be there: a commit's cost is
    mostly per batch (per device, per statement, the commit), so a batch of 1,000 costs far less a message than
    ten of 100. Acks wait for their window anyway; a transaction waits this much longer at most."""
    batch_fill: int = 1_000
    queue_max: int = 20_000
    """Received messages held for the writer at most; beyond, the hub stops reading from the broker (backpressure:
    the broker and the devices' outboxes keep the rest) until the writer catches up."""
    keepalive_s: int = 30
    window: ClockWindow = field(default_factory=ClockWindow)
    max_unwritten_s: float = 60.0
    """``/healthz`` answers 503 while a received message waits longer than this to be committed."""
    ack_window_s: float = 1.0
    """Committed seqs wait at most this long to share one ``down/ack`` per device (0: one ack per commit)."""
    ack_flush_seqs: int = 50
    """A device's acks go out as soon as this many of its committed seqs wait, whatever the window: a device
    draining a backlog through a send window of its own (200 by default) is never held up by the hub's window.
    For one window after that, its acks go out at each commit (the drain's last few seqs too)."""
    tx_kinds_by_node: Mapping[str, frozenset[str]] = field(default_factory=lambda: dict(TX_KINDS_BY_NODE))


Received = tuple[str, bytes, float]
T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    """A received message and what classification made of it."""

    received: Received
    item: Classified


@dataclass(frozen=True)
class _TxEntry:
    """A received transaction."""

    received: Received
    request: TxRequest


_PACKET_TOO_LARGE = 0x95


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_packet_size(topic_name: str, payload: bytes) -> int:
    """Bytes of the MQTT v5 PUBLISH packet (QoS 1, no properties) that carries ``payload`` on ``topic_name``."""
    remaining = 2 + len(topic_name.encode()) + 2 + 1 + len(payload)
    return 1 + _varint_len(remaining) + remaining


class IngestObserver(Protocol):
    """Told about every batch right after it commits and before it is acknowledged (the alarm engine)."""

    def committed(self, batch: IngestBatch) -> None:
        """Look at a committed batch; returns once what it derived is committed too."""



_SPAWN = multiprocessing.get_context("spawn")
"""A fresh interpreter for the connection's child: forking a process with threads running is unsafe."""
_RESPAWN_S = 1.0


class Ingest:
    """Subscribes ``{root}/+/up/#`` (optionally shared), stores what arrives, acknowledges and answers."""

    def __init__(self, store: Store, settings: IngestSettings, metrics: HubMetrics, router: Router,
                 observer: IngestObserver | None = None, timeseries: TimeSeries | None = None) -> None:
        self.store = store
        self.timeseries = timeseries
        """A time-series store apart from the records store: each batch's readings are written there first, and
        nothing is acknowledged until they are (None: the records store keeps readings in its own commit)."""
        self._waiting_for: str | None = None
        self.observer = observer
        self.settings = settings
        self.metrics = metrics
        self.router = router
        self.max_packet_size: int | None = None
        """The broker's Maximum Packet Size from its last CONNACK (None: not announced, or not connected yet)."""
        self.connected = threading.Event()
        self.commands = CommandDesk(store, self.publish, settings.root, check=self.check_publishable,
                                    connected=self.connected.is_set)
        self._backlog: Backlog[Received] = Backlog(settings.queue_max)
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._child: BaseProcess | None = None
        self._pump: threading.Thread | None = None
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._in_hand_since: float | None = None
        self.admits: Callable[[str], bool] | None = None
        """The registry's check of a sending device (None: every device is taken, as without a deployment)."""
        self.on_connected: Callable[[], None] | None = None
        """Called on paho's thread after each (re)connection, once subscribed (the registry syncs the broker)."""
        self._unacked: dict[str, list[int]] = {}
        self._unacked_since: float | None = None
        self._draining: dict[str, float] = {}
        """Devices whose acks went out by count (a backlog's drain), until when (monotonic): until then their acks
        go out at each commit, so that the drain's last seqs do not wait for the window."""
        metrics.watch_writer(self.writer_state)

    @property
    def subscription(self) -> str:
        """The topic filter the hub subscribes to."""
        base = f"{self.settings.root}/+/up/#"
        return f"$share/{self.settings.share}/{base}" if self.settings.share else base

    def start(self) -> None:
        """Start the writer thread and the connection's child (it connects in the background, with paho's
        reconnects; a child that dies is started again)."""
        self._stopping.clear()
        self._backlog = Backlog(self.settings.queue_max)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._spawn()
        self._pump = threading.Thread(target=self._pump_loop, name="ingest-pump", daemon=True)
        self._pump.start()

    def stop(self) -> None:
        """Disconnect, then let the writer commit and acknowledge what it already holds."""
        self._stopping.set()
        if self._conn is not None:
            with self._send_lock, contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
        if self._pump is not None:
            self._pump.join(timeout=30)
            self._pump = None
        if self._writer is not None:
            self._backlog.close()
            self._writer.join(timeout=30)
            self._writer = None
        self._reap()

    def _spawn(self) -> None:
        s = self.settings
        link = Link(host=s.host, port=s.port, client_id=s.client_id, username=s.username, password=s.password,
                    subscription=self.subscription, session_expiry_s=s.session_expiry_s, keepalive_s=s.keepalive_s)
        ours, theirs = _SPAWN.Pipe()
        child = _SPAWN.Process(target=run_receiver, args=(theirs, link), name="nakhon-hub-mqtt", daemon=True)
        child.start()
        theirs.close()
        with self._send_lock:
            self._conn, self._child = ours, child

    def _reap(self) -> None:
        with self._send_lock:
            conn, child, self._conn, self._child = self._conn, self._child, None, None
        if child is not None:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
        if conn is not None:
            conn.close()

    def _pump_loop(self) -> None:
        """Queue what the child receives, follow its connection; start it again if it dies."""
        while True:
            conn = self._conn
            if conn is None:
                return
            try:
                while True:
                    self._handle(conn.recv())
            except (EOFError, OSError):
                pass
            self.connected.clear()
            if self._stopping.is_set():
                return
            log.error("the hub's MQTT process ended (exit code %s); starting it again",
                      self._child.exitcode if self._child else None)
            self._reap()
            self._stopping.wait(_RESPAWN_S)
            if self._stopping.is_set():
                return
            self._spawn()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "msgs":
            self._hold(event[1])
        elif kind == "up":
            self.max_packet_size = event[1]
            self.connected.set()
            if self.on_connected is not None:
                self.on_connected()
            log.info("connected to broker %s:%d, subscribed %s (session present: %s)", self.settings.host,
                     self.settings.port, self.subscription, event[2])
        elif kind == "down":
            self.connected.clear()
            if event[1] == _PACKET_TOO_LARGE:
                log.error("the broker disconnected the hub for a packet larger than its max_packet_size (%s bytes)",
                          self.max_packet_size)
            elif event[1] != 0:
                log.warning("lost the broker (%s); paho reconnects", event[1])

    def _hold(self, received: list[Received]) -> None:
        """Hand messages to the writer, waiting while the backlog is full (the child then stops reading the
        socket, and the broker holds what follows); gives up only when the hub stops."""
        added = self._backlog.put(received, timeout=0)
        if added == len(received):
            return
        log.warning("ingest: %d messages wait for the writer; reading from the broker paused until it catches up",
                    self.settings.queue_max)
        while not self._stopping.is_set():
            added += self._backlog.put(received[added:], timeout=0.5)
            if added == len(received):
                log.info("ingest: the writer caught up; reading from the broker again")
                return

    def check_publishable(self, topic_name: str, payload: bytes) -> None:
        """Raise :class:`MessageTooLarge` when the broker announced a maximum packet size this message exceeds."""
        limit = self.max_packet_size
        size = publish_packet_size(topic_name, payload)
        if limit is not None and size > limit:
            raise MessageTooLarge(f"a message of {size} bytes on {topic_name} exceeds the broker's maximum packet "
                                  f"size of {limit} bytes; it was not published")

    def publish(self, topic_name: str, payload: bytes) -> None:
        """Publish a downlink message at QoS 1 (thread-safe); one the broker would refuse is never handed to
        paho, which would otherwise send it again after every disconnect the broker answers it with."""
        self.check_publishable(topic_name, payload)
        with self._send_lock:
            if self._conn is None:
                raise StoreError("the hub is not connected to a broker")
            try:
                self._conn.send(("pub", topic_name, payload))
            except (OSError, ValueError) as err:
                raise StoreError(f"the hub's MQTT process is gone: {err}") from err

    def publish_ack(self, device: str, seqs: list[int]) -> None:
        """Acknowledge seqs on ``down/ack``, in as many messages as the broker's maximum packet size needs."""
        name = topic(self.settings.root, device, "down/ack")
        parts = [seq_ranges(seqs)]
        while parts:
            ranges = parts.pop()
            payload = Ack(acked=ranges).to_json()
            try:
                self.check_publishable(name, payload)
            except MessageTooLarge:
                if len(ranges) == 1:
                    raise
                parts += [ranges[len(ranges) // 2:], ranges[: len(ranges) // 2]]
                continue
            self.publish(name, payload)

    # -- writer thread -------------------------------------------------------------------------
    def writer_state(self) -> WriterState:
        """Whether the writer runs, how much waits for it, and for how long (thread-safe)."""
        since = self._in_hand_since
        return WriterState(running=self._writer is not None and self._writer.is_alive(),
                           queue_depth=len(self._backlog),
                           oldest_unwritten_s=max(0.0, time.time() - since) if since is not None else 0.0,
                           limit_s=self.settings.max_unwritten_s, waiting_for=self._waiting_for)

    def _write_loop(self) -> None:
        while True:
            received = self._backlog.take(self.settings.batch_max, self._ack_due_in(), self.settings.batch_gather_s,
                                          self.settings.batch_fill)
            if received is None:
                break
            if not received:
                self._flush_acks()
                continue
            self._in_hand_since = min(at for _, _, at in received)
            err = _guarded(self._process, received)
            self._in_hand_since = None
            if err is not None:
                self.metrics.writer_errors.inc()
                log.error("ingest writer: %d messages not settled; their devices will send them again",
                          len(received), exc_info=err)
            if self._ack_due_in() == 0.0:
                self._flush_acks()
        self._flush_acks()

    def _ack_due_in(self) -> float | None:
        """Seconds until the coalesced acks must go out (None: none wait)."""
        since = self._unacked_since
        if since is None:
            return None
        return max(0.0, since + self.settings.ack_window_s - time.monotonic())

    def _flush_acks(self) -> None:
        """Publish every committed seq that waits for its ``down/ack``."""
        unacked, self._unacked, self._unacked_since = self._unacked, {}, None
        moment = time.monotonic()
        self._draining = {d: until for d, until in self._draining.items() if until > moment}
        for device, seqs in unacked.items():
            self._ack(device, seqs)

    def _flush_device(self, device: str) -> None:
        """Publish one device's committed seqs now (it has enough of them waiting)."""
        self._ack(device, self._unacked.pop(device))

    def _ack(self, device: str, seqs: list[int]) -> None:
        try:
            self.publish_ack(device, seqs)
        except (StoreError, MessageTooLarge) as err:  # stored already: the device resends, gets a duplicate's ack
            log.warning("could not acknowledge %d seqs of %s: %s", len(seqs), device, err)

    def _process(self, received: list[Received]) -> None:
        self.metrics.received.inc(len(received))
        entries: list[_Entry] = []
        _isolated(received, lambda rs: entries.extend([self._classify(r) for r in rs]), self._reject_unread)
        stored = [e for e in entries if e.item.__class__ is SeqMessage]  # the bulk of them: telemetry
        if len(stored) < len(entries):
            stored += self._unusual(entries)
        if stored:
            _isolated(stored, self._store, self._reject)
        for e in entries:
            if isinstance(e.item, TxRequest):
                _isolated([_TxEntry(e.received, e.item)], self._apply_tx, self._reject_tx)
            elif isinstance(e.item, TxRefused):
                self._refuse_tx(e.item)

    @staticmethod
    def _unusual(entries: list[_Entry]) -> list[_Entry]:
        """The entries to store that are not seq messages (statuses, dead letters), each dead letter logged."""
        stored = []
        for e in entries:
            letter = e.item.letter if isinstance(e.item, TxRefused) else e.item
            if isinstance(letter, DeadLetter):
                log.info("dead letter (%s) on %s: %s", letter.reason, letter.topic, letter.detail)
            if not isinstance(e.item, SeqMessage | TxRequest):
                stored.append(e)
        return stored

    def _classify(self, received: Received) -> _Entry:
        s = self.settings
        topic_name, payload, at = received
        return _Entry(received, classify(topic_name, payload, at, root=s.root, max_payload=s.max_payload,
                                         window=s.window, admits=self.admits))

    def _store(self, entries: list[_Entry]) -> None:
        batch = IngestBatch()
        for e in entries:
            if isinstance(e.item, SeqMessage):
                batch.messages.append(e.item)
            elif isinstance(e.item, StatusUpdate):
                batch.statuses.append(e.item)
            elif isinstance(e.item, DeadLetter):
                batch.deadletters.append(e.item)
            elif isinstance(e.item, TxRefused):
                batch.deadletters.append(e.item.letter)
        if self.timeseries is not None:
            points = points_of(batch.messages)
            if not self._write_points(points):
                return  # stopping with the time-series store down: nothing committed or acknowledged, all resent
            self.metrics.readings.inc(len(points))
        outcome = self._commit(batch)
        if self.observer is not None:
            self.observer.committed(batch)
        self._settled(batch, outcome)
        for reply in outcome.replies:
            self.commands.resolve(reply)
        done = time.time()
        self.metrics.ingest_lag.set(done - min(e.received[2] for e in entries))
        sent = [m.sent_at.timestamp() for m in batch.messages if m.sent_at is not None]
        if sent:
            self.metrics.device_lag.set(done - min(sent))

    def _settled(self, batch: IngestBatch, outcome: IngestOutcome) -> None:
        """Count a committed batch and acknowledge what it covered."""
        self.metrics.stored.inc(outcome.new_messages)
        self.metrics.readings.inc(outcome.readings_stored)
        self.metrics.duplicates.inc(outcome.duplicates)
        for d in batch.deadletters:
            self.metrics.deadletters.labels(d.reason).inc()
        flush = self.settings.ack_flush_seqs
        moment = time.monotonic()
        for device, seqs in outcome.acks.items():
            waiting = self._unacked.setdefault(device, [])
            waiting.extend(seqs)
            if len(waiting) >= flush:
                self._draining[device] = moment + self.settings.ack_window_s
                self._flush_device(device)
            elif self._draining.get(device, 0.0) > moment:
                self._flush_device(device)
        if self._unacked and self._unacked_since is None:
            self._unacked_since = moment
        elif not self._unacked:
            self._unacked_since = None

    def _write_points(self, points: list[Point]) -> bool:
        """Write a batch's readings to the time-series store, trying again with backoff while it is unavailable
        (meanwhile nothing is acknowledged, ``/healthz`` says why, and the broker keeps what devices resend);
        False when the hub stops before they could be written."""
        if not points or self.timeseries is None:
            return True
        delay = 0.5
        while True:
            try:
                self.timeseries.write(points)
            except TimeSeriesUnavailable as err:
                self._waiting_for = f"time-series store unavailable: {err}"
                log.error("%s; retrying in %.1f s (nothing is acknowledged until it is written)", err, delay)
                if self._stopping.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)
                continue
            if self._waiting_for is not None:
                log.info("time-series store available again")
                self._waiting_for = None
            return True

    def _commit(self, batch: IngestBatch) -> IngestOutcome:
        delay = 0.5
        while True:
            try:
                outcome = self.store.ingest(batch)
            except RecordRejected:
                raise  # about a record, not the database: retrying would fail the same way
            except StoreError as err:
                self._waiting_for = f"records store unavailable: {err}"
                log.error("%s; retrying in %.1f s (nothing is acknowledged until it commits)", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._waiting_for is not None and self._waiting_for.startswith("records store"):
                log.info("records store available again")
                self._waiting_for = None
            return outcome

    def _reject(self, entry: _Entry, err: Exception) -> None:
        """Set aside the one message that made the store (or the code) fail; acknowledged when it has a seq."""
        item = entry.item
        device, seq = (item.device, item.seq) if isinstance(item, SeqMessage) else (None, None)
        self._store_rejected(entry.received, err, device, seq)

    def _reject_unread(self, received: Received, err: Exception) -> None:
        """Set aside a message that could not even be classified."""
        self._store_rejected(received, err, None, None)

    def _reject_tx(self, entry: _TxEntry, err: Exception) -> None:
        """Set aside a transaction that could not be applied, and answer it (rejected, nothing applied)."""
        self._store_rejected(entry.received, err, None, None)
        tx = entry.request.tx
        self._answer(tx, TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, result={},
                                   reason="store_rejected: the hub could not apply this transaction; "
                                          "ask the operator"), False)

    def _store_rejected(self, received: Received, err: Exception, device: str | None, seq: int | None) -> None:
        topic_name, payload, at = received
        self.metrics.writer_errors.inc()
        log.error("ingest writer: the message on %s could not be stored; dead-lettered as store_rejected",
                  topic_name, exc_info=err)
        self._dead_letter(DeadLetter(topic=topic_name, reason=Reason.STORE_REJECTED.value,
                                     detail=f"{type(err).__name__}: {err}", received_at=at, size=len(payload),
                                     payload=payload, device=device, seq=seq))

    def _dead_letter(self, letter: DeadLetter) -> None:
        """Store one dead letter outside a batch; without its seq if the store refuses that."""
        try:
            batch = IngestBatch(deadletters=[letter])
            self._settled(batch, self._commit(batch))
        except RecordRejected as err:
            if letter.device is None:
                log.error("dead letter on %s dropped: the store refused it too (%s)", letter.topic, err)
                return
            self._dead_letter(DeadLetter(topic=letter.topic, reason=letter.reason, detail=letter.detail,
                                         received_at=letter.received_at, size=letter.size,
                                         payload=letter.payload))

    def _apply_tx(self, entries: list[_TxEntry]) -> None:
        (entry,) = entries
        request = entry.request
        tx = request.tx
        crash_point("tx-received")
        try:
            record = self.store.device(tx.device)
            node = record.node if record else None
            refusal = tx_refusal(self.settings.tx_kinds_by_node, tx.device, node, tx.kind)
            decide = self.router.decide if refusal is None else _refuse(refusal)
            outcome, duplicate = self.store.apply_tx(tx, request.received_at, decide)
        except RecordRejected:
            raise
        except StoreError as err:
            log.error("%s; the kiosk will send it again", err)
            return
        crash_point("tx-applied")
        if refusal is not None and not duplicate and outcome.reason == refusal:
            topic_name, payload, at = entry.received
            self._dead_letter(DeadLetter(topic=topic_name, reason=Reason.KIND_NOT_ALLOWED.value, detail=refusal,
                                         received_at=at, size=len(payload), payload=payload))
        self._answer(tx, outcome, duplicate)

    def _refuse_tx(self, refused: TxRefused) -> None:
        """Answer a transaction that breaks the contract (already dead-lettered): rejected, nothing applied."""
        letter = refused.letter
        parsed = parse_topic(letter.topic, self.settings.root)
        if parsed is None:
            return
        known = self.store.tx_outcome(refused.tx_id, parsed.device)
        if known is not None:  # applied before from a valid copy: its outcome stands
            outcome = TxOutcome.model_validate({**known.model_dump(), "duplicate": True})
        else:
            outcome = TxOutcome(tx_id=refused.tx_id, status=TxStatus.REJECTED, duplicate=False, result={},
                                reason=f"{letter.reason}: {letter.detail}"[:500])
        self.metrics.transactions.labels(outcome.status.value).inc()
        self.publish(topic(self.settings.root, parsed.device, "down/tx"), outcome.to_json())
        log.info("transaction %s from %s: rejected (%s)", refused.tx_id, parsed.device, letter.reason)

    def _answer(self, tx: Tx, outcome: TxOutcome, duplicate: bool) -> None:
        answer = TxOutcome.model_validate({**outcome.model_dump(), "duplicate": duplicate})
        self.metrics.transactions.labels(answer.status.value).inc()
        self.publish(topic(self.settings.root, tx.device, "down/tx"), answer.to_json())
        log.info("transaction %s (%s) from %s: %s%s", tx.tx_id, tx.kind, tx.device, answer.status,
                 " (duplicate)" if duplicate else "")


def _isolated(items: list[T], work: Callable[[list[T]], None], reject: Callable[[T, Exception], None]) -> None:
    """Run ``work`` on ``items``; on an unexpected error, bisect until the one item that causes it is alone and
    ``reject`` it. Safe to repeat: the store drops seqs it already holds and applies each ``tx_id`` once."""
    err = _guarded(work, items)
    if err is None:
        return
    if len(items) == 1:
        reject(items[0], err)
        return
    log.debug("isolating an error (%s) in %d messages", err, len(items))
    half = len(items) // 2
    _isolated(items[:half], work, reject)
    _isolated(items[half:], work, reject)


def _guarded(work: Callable[[list[T]], None], arg: list[T]) -> Exception | None:
    """Run ``work`` and return the unexpected error it raised, if any, instead of letting it end the writer.

    The one place ingest catches every error: the writer is the whole fleet's only path into the store, so no
    single message may stop it. Callers log the traceback once (at the message it was isolated to).
    """
    try:
        work(arg)
    except Exception as err:  # noqa: BLE001 (see above: the supervisor of the data path)
        return err
    return None


def _refuse(reason: str) -> Callable[[Tx, Any], TxOutcome]:
    """A decision that rejects the transaction with ``reason`` and applies nothing."""
    return lambda tx, db: TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=reason,
                                    result={})
