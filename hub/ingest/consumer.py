"""The ingest consumer: paho's threaded MQTT client feeding a writer thread that commits in batches.

The paho network thread only queues what it receives. The writer thread drains the queue in batches,
classifies each message, commits the batch in one store transaction, then acknowledges on ``down/ack``
exactly the seqs the commit covered (duplicates included, so a device whose ack was lost stops resending).
Transactions are applied one by one through the router and answered on ``down/tx``.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.contract import QOS, Ack, TxOutcome, seq_ranges, topic
from hub.commands import CommandDesk
from hub.errors import StoreError
from hub.faults import crash_point
from hub.ingest.classify import TxRequest, classify
from hub.metrics import HubMetrics
from hub.router import Router
from hub.store.base import DeadLetter, IngestBatch, SeqMessage, StatusUpdate, Store

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


Received = tuple[str, bytes, float]


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
        self.commands = CommandDesk(store, self.publish, settings.root)
        self._queue: queue.SimpleQueue[Received | None] = queue.SimpleQueue()
        self._client: mqtt.Client | None = None
        self._writer: threading.Thread | None = None
        self.connected = threading.Event()

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

    def publish(self, topic_name: str, payload: bytes) -> None:
        """Publish a downlink message at QoS 1 (thread-safe)."""
        if self._client is None:
            raise StoreError("the hub is not connected to a broker")
        self._client.publish(topic_name, payload, qos=QOS)

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the hub: %s", self.settings.host, self.settings.port, reason_code)
            return
        client.subscribe(self.subscription, qos=QOS)
        self.connected.set()
        log.info("connected to broker %s:%d, subscribed %s (session present: %s)", self.settings.host,
                 self.settings.port, self.subscription, flags.session_present)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("lost the broker (%s); paho reconnects", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), time.time()))

    # -- writer thread -------------------------------------------------------------------------
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
            self._process(received)

    def _process(self, received: list[Received]) -> None:
        s = self.settings
        batch = IngestBatch()
        txs: list[TxRequest] = []
        for topic_name, payload, at in received:
            item = classify(topic_name, payload, at, root=s.root, max_payload=s.max_payload)
            if isinstance(item, SeqMessage):
                batch.messages.append(item)
            elif isinstance(item, StatusUpdate):
                batch.statuses.append(item)
            elif isinstance(item, DeadLetter):
                batch.deadletters.append(item)
                log.info("dead letter (%s) on %s: %s", item.reason, item.topic, item.detail)
            else:
                txs.append(item)
        self.metrics.received.inc(len(received))
        if len(batch):
            outcome = self._commit(batch)
            if self.observer is not None:
                self.observer.committed(batch)
            self.metrics.stored.inc(outcome.new_messages)
            self.metrics.readings.inc(outcome.readings_stored)
            self.metrics.duplicates.inc(outcome.duplicates)
            for d in batch.deadletters:
                self.metrics.deadletters.labels(d.reason).inc()
            for device, seqs in outcome.acks.items():
                self.publish(topic(s.root, device, "down/ack"), Ack(acked=seq_ranges(seqs)).to_json())
            for reply in outcome.replies:
                self.commands.resolve(reply)
            done = time.time()
            self.metrics.ingest_lag.set(done - min(at for _, _, at in received))
            sent = [m.sent_at.timestamp() for m in batch.messages if m.sent_at is not None]
            if sent:
                self.metrics.device_lag.set(done - min(sent))
        for request in txs:
            self._apply_tx(request)

    def _commit(self, batch: IngestBatch) -> Any:
        delay = 0.5
        while True:
            try:
                return self.store.ingest(batch)
            except StoreError as err:
                log.error("%s; retrying in %.1f s (nothing is acknowledged until it commits)", err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _apply_tx(self, request: TxRequest) -> None:
        tx = request.tx
        crash_point("tx-received")
        try:
            outcome, duplicate = self.store.apply_tx(tx, request.received_at, self.router.decide)
        except StoreError as err:
            log.error("%s; the kiosk will send it again", err)
            return
        crash_point("tx-applied")
        answer = TxOutcome.model_validate({**outcome.model_dump(), "duplicate": duplicate})
        self.metrics.transactions.labels(answer.status.value).inc()
        self.publish(topic(self.settings.root, tx.device, "down/tx"), answer.to_json())
        log.info("transaction %s (%s) from %s: %s%s", tx.tx_id, tx.kind, tx.device, answer.status,
                 " (duplicate)" if duplicate else "")
