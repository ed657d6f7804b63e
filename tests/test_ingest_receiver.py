"""The hub's MQTT connection runs in a child process: it is started again if it dies, and stopped with the hub."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.contract import format_timestamp, now
from hub.ingest.consumer import Ingest, IngestSettings
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
