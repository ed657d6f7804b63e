"""A time-series store apart from the records store: readings go there first, and while it is down nothing is
acknowledged, ``/healthz`` says why, and ingest resumes by itself without loss or duplicates."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.contract import format_timestamp, now
from hub.errors import TimeSeriesUnavailable
from hub.ingest.consumer import Ingest, IngestSettings
from hub.metrics import HubMetrics
from hub.router import Router
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import Point
from hub.timeseries.sqlite import SQLiteTimeSeries
from tests.conftest import Broker, wait_for
from tests.test_ingest_hardening import Device, _client

POLE = "kk-aq-0911"


class Outage(SQLiteTimeSeries):
    """A time-series store (its own SQLite file) that is down until :meth:`recover`: each write in between raises."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self.up = threading.Event()
        self.refused = 0
        self.written: list[Point] = []

    def write(self, points: Sequence[Point]) -> None:
        if not self.up.is_set():
            self.refused += 1
            raise TimeSeriesUnavailable(f"connection refused (attempt {self.refused})")
        super().write(points)
        self.written.extend(points)

    def recover(self) -> None:
        self.up.set()


def _telemetry(seq: int) -> bytes:
    stamp = format_timestamp(now())
    return json.dumps({"v": 1, "device": POLE, "seq": seq, "sent_at": stamp, "readings": [
        {"ts": stamp, "sensor": "pm", "quantity": "pm2_5", "value": 10.0 + seq, "unit": "ug/m3"}]}).encode()


@pytest.fixture
def queue_max() -> int:
    return 20_000


@pytest.fixture
def rig(broker: Broker, tmp_path: Path, queue_max: int) -> Iterator[tuple[Ingest, Outage]]:
    store = SQLiteStore(tmp_path / "hub.sqlite", readings=False)
    store.open()
    outage = Outage(SQLiteStore(tmp_path / "series.sqlite"))
    outage.store.open()
    consumer = Ingest(store, IngestSettings(port=broker.port, client_id="hub-outage-test", ack_window_s=0,
                                                    queue_max=queue_max),
                      HubMetrics(store), Router({}), timeseries=outage)
    consumer.start()
    wait_for(consumer.connected.is_set, 20, "ingest connected")
    yield consumer, outage
    consumer.stop()
    store.close()
    outage.store.close()


@pytest.mark.broker
def test_nothing_is_acknowledged_while_the_time_series_store_is_down_and_ingest_resumes(
        broker: Broker, rig: tuple[Ingest, Outage]) -> None:
    ingest, outage = rig
    api = _client(ingest)
    device = Device(broker.port, POLE)
    try:
        device.publish("up/telemetry", _telemetry(1))
        device.publish("up/telemetry", _telemetry(2))
        wait_for(lambda: outage.refused >= 2, 20, "the write tried again")
        assert device.acked() == set()
        assert ingest.store.device(POLE) is None  # the records commit waits for the readings
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert health.json()["reason"].startswith("time-series store unavailable: connection refused")

        outage.recover()
        wait_for(lambda: device.acked() >= {1, 2}, 20, "seqs 1 and 2 acknowledged once written")
        assert api.get("/healthz").json()["status"] == "ok"
        device.publish("up/telemetry", _telemetry(2))  # a redelivery: its reading is kept once
        wait_for(lambda: len(outage.written) == 3, 20, "the redelivered reading written again")
    finally:
        device.close()
    page = outage.readings_page(POLE, "pm2_5", datetime(2020, 1, 1, tzinfo=UTC), None, 10)
    assert [json.loads(r)["seq"] for r in page.rows] == [1, 2]
    record = ingest.store.device(POLE)
    assert record is not None and (record.received, record.duplicates, record.lost) == (2, 1, 0)


@pytest.mark.broker
@pytest.mark.parametrize("queue_max", [20])
def test_a_long_outage_holds_a_bounded_queue_and_loses_nothing_when_the_store_returns(
        broker: Broker, rig: tuple[Ingest, Outage]) -> None:
    ingest, outage = rig
    device = Device(broker.port, POLE)
    try:
        for seq in range(1, 301):
            device.publish("up/telemetry", _telemetry(seq))
        wait_for(lambda: ingest.writer_state().queue_depth >= 20, 20, "the queue to fill")
        refused = outage.refused
        wait_for(lambda: outage.refused >= refused + 2, 20, "two more refused writes (seconds of backoff)")
        deepest = ingest.writer_state().queue_depth  # unbounded, all 300 less the batch in hand would wait here
        assert deepest <= 20 and device.acked() == set()
        outage.recover()
        wait_for(lambda: device.acked() >= set(range(1, 301)), 60, "all 300 seqs acknowledged once written")
    finally:
        device.close()
    record = ingest.store.device(POLE)
    assert record is not None and (record.received, record.lost) == (300, 0)
