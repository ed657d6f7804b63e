"""End to end on VictoriaMetrics: agent -> Mosquitto -> hub -> VictoriaMetrics, which is stopped mid-stream."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import QOS, Telemetry
from hub.timeseries.victoria import VictoriaMetrics
from tests.conftest import Broker, Hub, fast_air, wait_for
from tests.fixtures.victoria import Victoria
from tests.test_delivery import drain

pytestmark = pytest.mark.broker

OUTAGE_S = float(os.environ.get("VM_OUTAGE_S", "10"))
"""How long VictoriaMetrics stays stopped; issue 11 asks for 60 (``VM_OUTAGE_S=60``), the suite
takes 10 to stay fast."""


class Published:
    """Every telemetry message the broker carries, as a subscriber beside the hub sees it."""

    def __init__(self, port: int) -> None:
        self.messages: dict[tuple[str, int], Telemetry] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-observer", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("nakhon/+/up/telemetry", qos=QOS)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the observer was not subscribed"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        t = Telemetry.model_validate_json(message.payload)
        with self._lock:
            self.messages[(t.device, t.seq)] = t

    def readings(self, device: str) -> Counter[tuple[int, int, str, str]]:
        """(seq, ts in ms, sensor, quantity) of every reading ``device`` published, each message counted once."""
        with self._lock:
            return Counter((t.seq, _ms(r.ts), r.sensor, r.quantity)
                           for (d, _), t in self.messages.items() if d == device for r in t.readings)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


def _health(hub: Hub) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{hub.url}/healthz", timeout=5)
    body: dict[str, Any] = r.json()
    return r.status_code, body


def test_victoria_stopped_mid_stream_nothing_lost_nothing_doubled(
        broker: Broker, procs: dict[str, Any], victoria: Victoria) -> None:
    device = "kk-aq-1101"
    published = Published(broker.port)
    store = VictoriaMetrics(victoria.timeseries_url, timeout_s=5)
    store.open()
    try:
        hub = procs["hub"](broker.port, "--timeseries", victoria.timeseries_url)
        agent = procs["agent"](device, broker.port, drivers=[fast_air(interval_s=0.02)], resend_after_s=2.0)
        wait_for(lambda: len(store.readings_page(device, None, None, None, 1000).rows) >= 50, 60,
                 "readings in VictoriaMetrics")
        victoria.stop()
        _, body = wait_for(lambda: (h := _health(hub))[0] == 503 and h, 20, "/healthz to answer degraded")
        assert body["status"] == "degraded"
        assert body["reason"].startswith("time-series store unavailable"), body
        outage_ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < outage_ends:
            assert hub.alive(), hub.log()[-3000:]
            assert _health(hub)[0] == 503
            time.sleep(1)
        victoria.start()
        wait_for(lambda: _health(hub)[0] == 200, 60, "/healthz to recover")
        produced = drain([agent], procs, broker.port, hub, timeout=120)
        assert len(produced) > OUTAGE_S * 10  # the agent kept producing through the outage
        assert hub.stored() == produced  # the records store: every seq once
        rows = [json.loads(r) for r in store.readings_page(device, None, None, None, 100_000).rows]
        stored = Counter((r["seq"], _ms(datetime.fromisoformat(r["ts"])), r["sensor"], r["quantity"]) for r in rows)
        with hub.db() as db:
            telemetry = {seq for (seq,) in db.execute("SELECT seq FROM received WHERE device = ? AND kind = ?",
                                                       (device, "telemetry"))}
        sent = published.readings(device)
        assert {seq for seq, *_ in sent} == telemetry  # the observer saw every message the hub took
        # VictoriaMetrics keeps one sample per series and millisecond: two reads of a sensor that a loaded agent
        # stamped with the same millisecond are one reading there (docs/victoriametrics.md)
        places: dict[tuple[int, str, str], set[int]] = defaultdict(set)
        for seq, ts, sensor, quantity in sent:
            places[ts, sensor, quantity].add(seq)
        assert max(stored.values()) == 1  # 0 duplicated
        assert {(ts, s, q) for _, ts, s, q in stored} == set(places)  # 0 lost
        assert all(seq in places[ts, s, q] for seq, ts, s, q in stored)  # each as it was published
        assert sum(len(seqs) - 1 for seqs in places.values()) <= len(places) // 100
    finally:
        store.close()
        published.close()
