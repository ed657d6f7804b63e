"""The ingest consumer: paho's threaded MQTT client feeding a writer thread that commits in batches.

The paho network thread only queues what it receives. The writer thread drains the queue in batches,
classifies each message, commits the batch in one store transaction, then acknowledges on ``down/ack``
exactly the seqs the commit covered (duplicates included, so a device whose ack was lost stops resending).
Transactions are applied one by one through the router and answered on ``down/tx``.

The writer survives any single message: an unexpected error splits the work in halves until the message that
causes it is alone, which is dead-lettered as ``store_rejected`` (and acknowledged) while the rest is committed.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.contract import QOS, Ack, Tx, TxOutcome, TxStatus, parse_topic, seq_ranges, topic
from hub.commands import CommandDesk
from hub.errors import MessageTooLarge, RecordRejected, StoreError
from hub.faults import crash_point
from hub.ingest.access import TX_KINDS_BY_NODE, tx_refusal
from hub.ingest.classify import Classified, ClockWindow, Reason, TxRefused, TxRequest, classify
from hub.metrics import HubMetrics, WriterState
from hub.router import Router
from hub.store.base import DeadLetter, IngestBatch, IngestOutcome, SeqMessage, StatusUpdate, Store

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
    keepalive_s: int = 30
    window: ClockWindow = field(default_factory=ClockWindow)
    max_unwritten_s: float = 60.0
    """``/healthz`` answers 503 while a received message waits longer than this to be committed."""
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


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Ingest:
    """Subscribes ``{root}/+/up/#`` (optionally shared), stores what arrives, acknowledges and answers."""

    def __init__(self, store: Store, settings: IngestSettings, metrics: HubMetrics, router: Router,
                 observer: IngestObserver | None = None) -> None:
        self.store = store
        self.observer = observer
        self.settings = settings
        self.metrics = metrics
        self.router = router
        self.max_packet_size: int | None = None
        """The broker's Maximum Packet Size from its last CONNACK (None: not announced, or not connected yet)."""
        self.connected = threading.Event()
        self.commands = CommandDesk(store, self.publish, settings.root, check=self.check_publishable,
                                    connected=self.connected.is_set)
        self._queue: queue.SimpleQueue[Received | None] = queue.SimpleQueue()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self._in_hand_since: float | None = None
        self.admits: Callable[[str], bool] | None = None
        """The registry's check of a sending device (None: every device is taken, as without a deployment)."""
        self.on_connected: Callable[[], None] | None = None
        """Called on paho's thread after each (re)connection, once subscribed (the registry syncs the broker)."""
        metrics.watch_writer(self.writer_state)

    @property
    def subscription(self) -> str:
        """The topic filter the hub subscribes to."""
        base = f"{self.settings.root}/+/up/#"
        return f"$share/{self.settings.share}/{base}" if self.settings.share else base

    def start(self) -> None:
        """Connect (in the background, with paho's reconnects) and start the writer thread."""
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5)
        if s.username:
            client.username_pw_set(s.username, s.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # small messages answered one by one: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms each
        client.on_socket_open = _no_delay
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        self._client = client
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        client.loop_start()

    def stop(self) -> None:
        """Disconnect, then let the writer commit and acknowledge what it already holds."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=30)
            self._writer = None
        self._client = None

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
        if self._client is None:
            raise StoreError("the hub is not connected to a broker")
        self.check_publishable(topic_name, payload)
        self._client.publish(topic_name, payload, qos=QOS)

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

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the hub: %s", self.settings.host, self.settings.port, reason_code)
            return
        # MQTT v5: a client must not send a packet larger than the broker announces (Mosquitto's max_packet_size)
        self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
        client.subscribe(self.subscription, qos=QOS)
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()
        log.info("connected to broker %s:%d, subscribed %s (session present: %s)", self.settings.host,
                 self.settings.port, self.subscription, flags.session_present)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if reason_code == _PACKET_TOO_LARGE:
            log.error("the broker disconnected the hub for a packet larger than its max_packet_size (%s bytes)",
                      self.max_packet_size)
        elif reason_code != 0:
            log.warning("lost the broker (%s); paho reconnects", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), time.time()))

    # -- writer thread -------------------------------------------------------------------------
    def writer_state(self) -> WriterState:
        """Whether the writer runs, how much waits for it, and for how long (thread-safe)."""
        since = self._in_hand_since
        return WriterState(running=self._writer is not None and self._writer.is_alive(),
                           queue_depth=self._queue.qsize(),
                           oldest_unwritten_s=max(0.0, time.time() - since) if since is not None else 0.0,
                           limit_s=self.settings.max_unwritten_s)

    def _write_loop(self) -> None:
        s = self.settings
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            received = [first]
            while len(received) < s.batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                received.append(item)
            self._in_hand_since = min(at for _, _, at in received)
            err = _guarded(self._process, received)
            self._in_hand_since = None
            if err is not None:
                self.metrics.writer_errors.inc()
                log.error("ingest writer: %d messages not settled; their devices will send them again",
                          len(received), exc_info=err)

    def _process(self, received: list[Received]) -> None:
        self.metrics.received.inc(len(received))
        entries: list[_Entry] = []
        _isolated(received, lambda rs: entries.extend([self._classify(r) for r in rs]), self._reject_unread)
        for e in entries:
            letter = e.item.letter if isinstance(e.item, TxRefused) else e.item
            if isinstance(letter, DeadLetter):
                log.info("dead letter (%s) on %s: %s", letter.reason, letter.topic, letter.detail)
        stored = [e for e in entries if not isinstance(e.item, TxRequest)]
        if stored:
            _isolated(stored, self._store, self._reject)
        for e in entries:
            if isinstance(e.item, TxRequest):
                _isolated([_TxEntry(e.received, e.item)], self._apply_tx, self._reject_tx)
            elif isinstance(e.item, TxRefused):
                self._refuse_tx(e.item)

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
        for device, seqs in outcome.acks.items():
            self.publish_ack(device, seqs)

    def _commit(self, batch: IngestBatch) -> IngestOutcome:
        delay = 0.5
        while True:
            try:
                return self.store.ingest(batch)
            except RecordRejected:
                raise  # about a record, not the database: retrying would fail the same way
            except StoreError as err:
                log.error("%s; retrying in %.1f s (nothing is acknowledged until it commits)", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

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
