"""The agent's MQTT client on its hot path: PUBACKs settled without paho's decoding when they carry nothing but the
packet id, packets written at once (or through a writer when the socket is full), sizes counted as paho packs them.

A broker played on a socket answers each PUBLISH with the PUBACK a test chooses, byte for byte."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.agents.mqtt import PUBACK_SUCCESS, CheckedClient, publish_packet_size
from edge.errors import PublishRefused

CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])
TOPIC = "nakhon/kk-aq-0001/up/telemetry"


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def _packet(conn: socket.socket) -> tuple[int, bytes]:
    """One MQTT packet: its first byte and what follows the remaining length."""
    first = _exactly(conn, 1)[0]
    length, shift = 0, 0
    while True:
        byte = _exactly(conn, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, _exactly(conn, length)


def _mid(body: bytes) -> bytes:
    """The packet id of a QoS 1 PUBLISH's body."""
    topic_length = int.from_bytes(body[:2], "big")
    return body[2 + topic_length:4 + topic_length]


class PlayedBroker:
    """Accepts one client, answers its CONNECT, and answers the n-th PUBLISH with ``pubacks[n](mid)`` (a PUBACK's
    bytes after its fixed header); records the size of each PUBLISH it reads."""

    def __init__(self, pubacks: list[Callable[[bytes], bytes]]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pubacks = pubacks
        self.sizes: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            _packet(conn)  # CONNECT
            conn.sendall(CONNACK_V5)
            answered = 0
            try:
                while True:
                    first, body = _packet(conn)
                    if first >> 4 == 3:  # PUBLISH
                        self.sizes.append(len(body))
                        reply = self.pubacks[answered](_mid(body))
                        answered += 1
                        conn.sendall(bytes([0x40, len(reply)]) + reply)
                    elif first >> 4 == 14:  # DISCONNECT
                        return
            except ConnectionError:
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def played() -> Iterator[Callable[[list[Callable[[bytes], bytes]]], PlayedBroker]]:
    brokers: list[PlayedBroker] = []

    def start(pubacks: list[Callable[[bytes], bytes]]) -> PlayedBroker:
        brokers.append(PlayedBroker(pubacks))
        return brokers[-1]

    yield start
    for broker in brokers:
        broker.close()


def _client(port: int) -> CheckedClient:
    return CheckedClient(hostname="127.0.0.1", port=port, identifier="kk-aq-0001",
                         protocol=aiomqtt.ProtocolVersion.V5, timeout=10, connect_timeout=10)


PUBACKS: list[tuple[str, Callable[[bytes], bytes], int]] = [
    ("packet id only", lambda mid: mid, 0x00),
    ("success spelled out", lambda mid: mid + b"\x00", 0x00),
    ("no matching subscribers", lambda mid: mid + b"\x10", 0x10),
    ("not authorized", lambda mid: mid + b"\x87", 0x87),
    ("payload too large, with a reason string",
     lambda mid: mid + b"\x97" + bytes([7, 0x1F, 0x00, 0x04]) + b"big!", 0x97),
    ("success with a user property",
     lambda mid: mid + b"\x00" + bytes([7, 0x26, 0x00, 0x01]) + b"k" + b"\x00\x01v", 0x00),
]


def test_each_puback_gives_the_reason_code_paho_decodes(played: Callable[..., PlayedBroker]) -> None:
    broker = played([reply for _, reply, _ in PUBACKS])

    async def session() -> list[ReasonCode]:
        codes: list[ReasonCode] = []
        async with _client(broker.port) as client:
            for n in range(len(PUBACKS)):
                settled = asyncio.Event()

                def done(code: ReasonCode, settled: asyncio.Event = settled) -> None:
                    codes.append(code)
                    settled.set()

                client.publish_nowait(TOPIC, b'{"n":%d}' % n, done)
                await asyncio.wait_for(settled.wait(), 10)
        return codes

    codes = asyncio.run(asyncio.wait_for(session(), 30))
    assert [code.value for code in codes] == [value for _, _, value in PUBACKS]
    assert [code.is_failure for code in codes] == [value >= 0x80 for _, _, value in PUBACKS]
    assert codes[0] is PUBACK_SUCCESS  # the two-byte PUBACK was not decoded
    assert all(code is not PUBACK_SUCCESS for code in codes[1:])  # every other one went through paho


def test_a_refusal_in_a_full_puback_still_raises(played: Callable[..., PlayedBroker]) -> None:
    broker = played([lambda mid: mid, lambda mid: mid + b"\x87"])

    async def session() -> None:
        async with _client(broker.port) as client:
            await client.publish_checked(TOPIC, b"{}", timeout=10)  # accepted by a two-byte PUBACK
            with pytest.raises(PublishRefused) as refused:
                await client.publish_checked(TOPIC, b"{}", timeout=10)
            assert refused.value.reason_code == 0x87

    asyncio.run(asyncio.wait_for(session(), 30))


def _settle(settled: asyncio.Event, code: ReasonCode) -> None:
    settled.set()


def _writer_registered(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
    try:
        return bool(selector.get_key(sock.fileno()).events & selectors.EVENT_WRITE)
    except KeyError:
        return False


def test_a_packet_the_socket_cannot_take_at_once_is_finished_by_a_writer(
        played: Callable[..., PlayedBroker]) -> None:
    broker = played([lambda mid: mid] * 3)
    big = b"x" * (8 * 1024 * 1024)  # far more than the client's send buffer (set to 64 KiB below)

    async def session() -> tuple[list[bool], list[bool]]:
        loop = asyncio.get_running_loop()
        during, after = [], []
        async with _client(broker.port) as client:
            sock = client._client.socket()
            assert isinstance(sock, socket.socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # fixed, whatever the kernel's tuning
            for payload in (b"{}", big, b"{}"):
                settled = asyncio.Event()
                client.publish_nowait(TOPIC, payload, partial(_settle, settled))
                during.append(_writer_registered(loop, sock))
                await asyncio.wait_for(settled.wait(), 30)
                after.append(_writer_registered(loop, sock))
        return during, after

    during, after = asyncio.run(asyncio.wait_for(session(), 60))
    assert during == [False, True, False]  # small packets are written at once; the big one needs the writer
    assert after == [False, False, False]  # and the writer is gone once it is written
    assert broker.sizes[1] == publish_packet_size(TOPIC, big) - 5  # all of it arrived (less the fixed header)


def _keep_queued(client: paho.Client, userdata: object, sock: object) -> None:
    """Leave the packet in paho's queue (no writer)."""


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_the_packet_size_is_what_paho_packs(remaining: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client._sock = socket.socket()  # queued, never sent: paho only needs a socket to build the packet
    client.on_socket_register_write = _keep_queued
    try:
        payload = b"p" * (remaining - (2 + len(TOPIC) + 2 + 1))
        client.publish(TOPIC, payload, qos=1)
        packet = client._out_packet[0]["packet"]
    finally:
        client._sock.close()
        client._sock = None
    assert publish_packet_size(TOPIC, payload) == len(packet)
