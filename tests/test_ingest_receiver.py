"""The hub's MQTT connection runs in a child process: it is started again if it dies, and stopped with the hub; its
paho client reads the socket a chunk at a time and decodes MQTT v5 properties without rebuilding paho's tables."""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.contract import format_timestamp, now
from hub.ingest.consumer import Ingest, IngestSettings
from hub.ingest.receiver import READ_CHUNK, _ChunkedClient, _SharedTableProperties, use_shared_table_properties
from hub.metrics import HubMetrics
from hub.router import Router
from hub.store.sqlite import SQLiteStore
from tests.conftest import Broker, wait_for
from tests.test_ingest_hardening import Device

POLE = "kk-aq-0909"


def _telemetry(seq: int) -> bytes:
    stamp = format_timestamp(now())
    return json.dumps({"v": 1, "device": POLE, "seq": seq, "sent_at": stamp, "readings": [
        {"ts": stamp, "sensor": "pm", "quantity": "pm2_5", "value": 12.5, "unit": "ug/m3"}]}).encode()


@pytest.fixture
def ingest(broker: Broker, tmp_path: Path) -> Iterator[Ingest]:
    store = SQLiteStore(tmp_path / "hub.sqlite")
    store.open()
    consumer = Ingest(store, IngestSettings(port=broker.port, client_id="hub-receiver-test"), HubMetrics(store),
                      Router({}))
    consumer.start()
    wait_for(consumer.connected.is_set, 20, "ingest connected")
    yield consumer
    consumer.stop()
    store.close()


def _child_pid(ingest: Ingest) -> int:
    child = ingest._child
    assert child is not None and child.pid is not None
    return child.pid


@pytest.mark.broker
def test_a_dead_mqtt_process_is_started_again_and_ingest_goes_on(broker: Broker, ingest: Ingest) -> None:
    device = Device(broker.port, POLE)
    try:
        device.publish("up/telemetry", _telemetry(1))
        wait_for(lambda: 1 in device.acked(), 20, "seq 1 acknowledged")
        first = _child_pid(ingest)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: ingest._child is not None and ingest._child.pid != first and ingest.connected.is_set(),
                 30, "a new MQTT process connected")
        device.publish("up/telemetry", _telemetry(2))
        wait_for(lambda: 2 in device.acked(), 20, "seq 2 acknowledged")
    finally:
        device.close()
    store = ingest.store
    assert isinstance(store, SQLiteStore)
    assert {s for d, s in store.stored_seqs() if d == POLE} == {1, 2}


@pytest.mark.broker
def test_stopping_the_hub_ends_its_mqtt_process(ingest: Ingest) -> None:
    child = ingest._child
    assert child is not None
    ingest.stop()
    assert not child.is_alive() and child.exitcode == 0


class _Socket:
    """A socket that has ``data`` to give, in reads of at most ``bufsize``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[int] = []

    def recv(self, bufsize: int) -> bytes:
        self.reads.append(bufsize)
        out, self.data = self.data[:bufsize], self.data[bufsize:]
        if not out:
            raise BlockingIOError
        return out

    def close(self) -> None:
        """Nothing to release."""


def _chunked() -> _ChunkedClient:
    return _ChunkedClient(CallbackAPIVersion.VERSION2, client_id="chunk-test", protocol=mqtt.MQTTv5)


def test_paho_reads_are_served_from_one_chunk_of_the_socket() -> None:
    client = _chunked()
    sock = _Socket(b"\x30\x05hello" * 3)
    client._sock = sock  # type: ignore[assignment]
    got = [client._sock_recv(n) for n in (1, 1, 5, 1, 1, 5, 1, 1, 5)]
    assert b"".join(got) == b"\x30\x05hello" * 3
    assert sock.reads == [READ_CHUNK]
    assert client.buffered() == 0
    with pytest.raises(BlockingIOError):
        client._sock_recv(1)


def test_a_new_connection_never_gets_what_was_left_of_the_last_one() -> None:
    client = _chunked()
    client._sock = _Socket(b"old bytes")  # type: ignore[assignment]
    assert client._sock_recv(3) == b"old"
    assert client.buffered() == 6
    client._sock = _Socket(b"new")  # type: ignore[assignment]
    assert client.buffered() == 0
    assert client._sock_recv(3) == b"new"


@pytest.mark.broker
def test_a_burst_of_messages_is_read_in_far_fewer_socket_reads_than_messages(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    paho_read = mqtt.Client._sock_recv

    def counted(self: mqtt.Client, bufsize: int) -> bytes:
        reads.append(bufsize)
        return paho_read(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counted)
    got: list[bytes] = []
    subscribed = threading.Event()
    sub = _chunked()
    sub.on_connect = lambda c, *_: c.subscribe("nakhon/+/up/#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda c, u, m: got.append(bytes(m.payload))
    session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    session.SessionExpiryInterval = 300
    sub.connect("127.0.0.1", broker.port, properties=session)
    sub.loop_start()
    device = Device(broker.port, POLE)
    try:
        assert subscribed.wait(20)
        sub.disconnect()  # messages for its session wait at the broker, and arrive as one burst on reconnecting
        sub.loop_stop()
        payloads = [_telemetry(seq) for seq in range(1, 501)]
        for p in payloads:
            device.publish("up/telemetry", p)
        reads.clear()
        sub.reconnect()
        sub.loop_start()
        wait_for(lambda: len(got) == 500, 30, "500 messages received")
    finally:
        device.close()
        sub.disconnect()
        sub.loop_stop()
    assert got == payloads
    assert 0 < len(reads) < 100  # paho alone reads three or four times a message (2,006 reads here)


def _publish_packet(props: Properties | None) -> bytes:
    """The variable header and payload of a QoS 1 PUBLISH (what paho decodes after the fixed header)."""
    topic_name = b"nakhon/kk-aq-0909/up/telemetry"
    packed = bytes(props.pack()) if props is not None else b"\x00"  # type: ignore[no-untyped-call]
    return len(topic_name).to_bytes(2, "big") + topic_name + (7).to_bytes(2, "big") + packed + b'{"v": 1}'


def _property_sets() -> list[Properties | None]:
    none = None
    single = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    single.MessageExpiryInterval = 30
    many = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    many.PayloadFormatIndicator = 1
    many.ContentType = "application/json"
    many.ResponseTopic = "nakhon/kk-aq-0909/down/reply"
    many.CorrelationData = b"\x00\x01"
    many.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    many.SubscriptionIdentifier = [5, 300]
    return [none, single, many]


def test_paho_decodes_each_publish_with_the_shared_table_properties_to_what_its_own_class_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = importlib.import_module("paho.mqtt._packet")
    monkeypatch.setattr(decoder, "Properties", Properties)  # restored after the test, as paho shipped it
    packets = [_publish_packet(p) for p in _property_sets()]
    theirs = [decoder.decode_publish(0x32, p, mqtt.MQTTv5) for p in packets]
    assert use_shared_table_properties()
    ours = [decoder.decode_publish(0x32, p, mqtt.MQTTv5) for p in packets]
    for mine, paho in zip(ours, theirs, strict=True):
        assert type(mine.properties) is _SharedTableProperties and type(paho.properties) is Properties
        assert mine.properties.__dict__ == paho.properties.__dict__
        assert (mine.topic, mine.mid, mine.payload) == (paho.topic, paho.mid, paho.payload) == (
            b"nakhon/kk-aq-0909/up/telemetry", 7, b'{"v": 1}')
    assert ours[2].properties.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]


def test_shared_table_properties_are_not_used_when_paho_decodes_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = importlib.import_module("paho.mqtt._packet")
    monkeypatch.setattr(decoder, "Properties", object)
    assert not use_shared_table_properties()
    assert decoder.Properties is object


def test_a_property_set_twice_in_one_packet_is_still_refused_as_paho_refuses_it() -> None:
    twice = b"\x0a" + b"\x02\x00\x00\x00\x01" * 2  # message expiry interval, twice
    for props in (_SharedTableProperties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)):  # type: ignore[no-untyped-call]
        with pytest.raises(MQTTException):
            props.unpack(twice)  # type: ignore[no-untyped-call]
