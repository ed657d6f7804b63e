"""The hub's MQTT connection in a process of its own: paho's network loop there, the writer in the hub.

paho spends tens of microseconds of Python per message (packet parsing, v5 properties, the message object, a
PUBACK); in the hub's process that time is taken from the writer under one GIL. Here it runs on another core:
the child passes what it receives to the hub in batches of raw ``(topic, payload, received_at)`` over a pipe,
and publishes what the hub hands it. It holds nothing durable: a message it PUBACKed but never passed on is
still in its device's outbox, which resends it until the hub acknowledges it after its commit.

Child to hub: ``("up", max_packet_size, session_present)``, ``("down", reason_code)``, ``("msgs", [...])``.
Hub to child: ``("pub", topic, payload)``, ``("stop",)``.
"""

from __future__ import annotations

import importlib
import logging
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.contract import QOS

log = logging.getLogger("nakhon.hub.ingest")

FLUSH_S = 0.002
"""How long a received message may wait in the child for others to share its trip to the hub."""
BATCH = 1000
RECONNECT_FIRST_S = (0.05, 0.15)
"""The first reconnection after a lost link waits a random moment in this range (seconds), then paho doubles it
up to RECONNECT_MAX_S: a broker restart of a second costs the hub well under a second more, and hub processes
restarted together do not reconnect in lockstep."""
RECONNECT_MAX_S = 30
"""Most messages in one trip."""


@dataclass(frozen=True)
class Link:
    """How the child reaches the broker (what it needs of the hub's ingest settings)."""

    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    subscription: str
    session_expiry_s: int
    keepalive_s: int


READ_CHUNK = 262_144
"""Bytes asked of the socket at once by :class:`_ChunkedClient` (a burst of small PUBLISH packets in one call)."""


class _ChunkedClient(mqtt.Client):
    """paho's client, reading its socket a chunk at a time.

    paho asks the socket for each packet's fixed header byte, each byte of its length and then its body: three or
    four ``recv`` calls a message, each a system call, and one pass of its select loop a packet. Here ``_sock_recv``
    (paho's one read of its socket, TLS included) serves those reads from one ``recv`` of up to READ_CHUNK bytes,
    and ``loop_read`` goes on until that chunk is used up. paho still parses and answers every packet itself. A new
    connection starts with an empty chunk; the leftover of a lost one is dropped with it. (paho documents neither
    method as an extension point: ``tests/test_ingest_receiver.py`` fails if a paho release changes them.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._chunk_at = 0
        self._chunk_of: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        chunk, at = self._chunk, self._chunk_at
        if at >= len(chunk) or self._chunk_of is not self._sock:
            chunk = super()._sock_recv(READ_CHUNK)  # BlockingIOError when the socket has nothing yet
            at = 0
            self._chunk_of = self._sock
        end = at + bufsize
        self._chunk, self._chunk_at = chunk, min(end, len(chunk))
        return chunk[at:end]

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._chunk) - self._chunk_at if self._chunk_of is self._sock else 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every packet the socket gave us (paho alone handles one a call, then waits in select again)."""
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self.buffered():
            rc = super().loop_read(max_packets)
        return rc


_TABLES = ("packetType", "types", "names", "properties")
"""The attributes of paho's ``Properties`` that are not MQTT properties: the packet type and three tables."""


class _SharedTableProperties(Properties):
    """paho's MQTT v5 properties, sharing paho's constant tables instead of building them again for each packet.

    paho builds a ``Properties`` for every PUBLISH it receives: its ``__init__`` fills three tables of the 27
    property names and types (the same every time), and ``unpack`` begins with a ``clear`` that rewrites each of
    those names to look for it. That was about a third of the receiver's CPU per message. This class takes the
    tables of one instance built by paho, and clears only the properties that are set; everything else is paho's.
    """

    _template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]

    def __init__(self, packetType: int) -> None:
        state = self.__dict__
        template = self._template.__dict__
        state["packetType"] = packetType
        for table in _TABLES[1:]:
            state[table] = template[table]

    def clear(self) -> None:
        """Remove every property that is set (paho's own walks all 27 names)."""
        state = self.__dict__
        for name in [name for name in state if name not in _TABLES]:
            del state[name]


def _sample_properties() -> bytes:
    """A PUBLISH's properties as paho packs them: payload format, message expiry, content type, two user
    properties."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    props.ContentType = "application/json"
    props.UserProperty = [("site", "kk"), ("zone", "n")]
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def use_shared_table_properties() -> bool:
    """Have paho decode each received PUBLISH's properties with :class:`_SharedTableProperties` (in the receiver's
    process only), once a sample decodes to exactly what paho's own class gives; False (paho left as it is) when
    it does not, or when this paho decodes PUBLISH packets elsewhere."""
    try:
        decoder = importlib.import_module("paho.mqtt._packet")  # where paho 2.2 decodes a PUBLISH
    except ImportError:
        return False
    if getattr(decoder, "Properties", None) is not Properties:
        return False
    ours = _SharedTableProperties(PacketTypes.PUBLISH)
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    sample = _sample_properties()
    for props in (ours, theirs):
        props.unpack(sample)  # type: ignore[no-untyped-call]
        props.unpack(sample)  # type: ignore[no-untyped-call]  # the second clears the first
    if ours.__dict__ != theirs.__dict__ or ours.pack() != theirs.pack():  # type: ignore[no-untyped-call]
        return False
    setattr(decoder, "Properties", _SharedTableProperties)  # noqa: B010 (a module found at run time)
    return True


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Child:
    """The child's side: a paho client, a batcher that sends to the hub, a reader of the hub's requests."""

    def __init__(self, conn: Connection, link: Link) -> None:
        self.conn = conn
        self.link = link
        self.send_lock = threading.Lock()
        self.pending: list[tuple[str, bytes, float]] = []
        self.ready = threading.Condition()
        self.stopping = False
        self.connack: tuple[int | None, bool] | None = None
        """The broker's Maximum Packet Size and session present flag from the last CONNACK, for the "up" report."""
        client = _ChunkedClient(CallbackAPIVersion.VERSION2, client_id=link.client_id, protocol=mqtt.MQTTv5)
        if link.username:
            client.username_pw_set(link.username, link.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        # paho annotates the delays as int but waits them as seconds in float arithmetic (its _reconnect_wait)
        client.reconnect_delay_set(random.uniform(*RECONNECT_FIRST_S), RECONNECT_MAX_S)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # small messages answered one by one: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms each
        client.on_socket_open = _no_delay
        self.client = client

    def send(self, item: tuple[Any, ...]) -> None:
        """Send to the hub (from any thread)."""
        with self.send_lock:
            self.conn.send(item)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the hub: %s", self.link.host, self.link.port, reason_code)
            return
        # MQTT v5: a client must not send a packet larger than the broker announces (Mosquitto's max_packet_size)
        self.connack = (getattr(properties, "MaximumPacketSize", None), bool(flags.session_present))
        client.subscribe(self.link.subscription, qos=QOS)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any],
                      properties: Any) -> None:
        """The SUBACK: only now is the hub up (a message published before it would find no subscription, and
        ``/healthz`` would have said the hub takes it)."""
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker %s:%d refused the hub's subscription to %s: %s; check its ACL for the hub's user",
                      self.link.host, self.link.port, self.link.subscription, refused[0])
            return
        if self.connack is not None:
            self.send(("up", *self.connack))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.send(("down", int(reason_code.value) if hasattr(reason_code, "value") else int(reason_code)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.ready:
            self.pending.append((message.topic, bytes(message.payload), time.time()))
            if len(self.pending) == 1:
                self.ready.notify()

    def batcher(self) -> None:
        """Pass what arrived to the hub: a first message waits up to FLUSH_S for company."""
        while True:
            with self.ready:
                while not self.pending and not self.stopping:
                    self.ready.wait()
                if not self.pending:
                    return
            if len(self.pending) < BATCH and not self.stopping:
                time.sleep(FLUSH_S)
            with self.ready:
                batch, self.pending = self.pending, []
            self.send(("msgs", batch))

    def run(self) -> None:
        """Connect, then serve the hub's requests until it asks to stop or goes away."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.link.session_expiry_s
        batcher = threading.Thread(target=self.batcher, name="receiver-batcher", daemon=True)
        batcher.start()
        self.client.connect_async(self.link.host, self.link.port, keepalive=self.link.keepalive_s,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        try:
            while True:
                request = self.conn.recv()
                if request[0] == "pub":
                    self.client.publish(request[1], request[2], qos=QOS)
                else:
                    break
        except EOFError:
            pass  # the hub is gone: nothing here is durable
        self.client.disconnect()
        self.client.loop_stop()
        with self.ready:
            self.stopping = True
            self.ready.notify()
        batcher.join()


def run(conn: Connection, link: Link) -> None:
    """The child process: Ctrl-C is the hub's to handle (it asks the child to stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not use_shared_table_properties():
        log.warning("paho %s decodes MQTT v5 properties differently than expected: left as it is (slower)",
                    getattr(mqtt, "__version__", "?"))
    _Child(conn, link).run()
    conn.close()
