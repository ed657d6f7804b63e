"""End to end on PostgreSQL: agent -> Mosquitto -> hub -> PostgreSQL, which is stopped mid-stream and started again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Broker, Hub, fast_air, wait_for
from tests.fixtures.postgres import PostgresServer
from tests.test_delivery import drain

pytestmark = pytest.mark.broker

OUTAGE_S = 5.0


def _health(hub: Hub) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{hub.url}/healthz", timeout=30)
    body: dict[str, Any] = r.json()
    return r.status_code, body


def test_postgresql_stopped_mid_stream_nothing_lost_nothing_doubled(
        broker: Broker, procs: dict[str, Any], postgres_server: PostgresServer, postgres_url: str,
        tmp_path: Path) -> None:
    device = "kk-aq-1201"
    hub = procs["hub"](broker.port, "--records", postgres_url,
                       "--timeseries", f"sqlite:///{tmp_path / 'readings.sqlite'}")
    agent = procs["agent"](device, broker.port, drivers=[fast_air(interval_s=0.02)], resend_after_s=2.0)
    wait_for(lambda: len(hub.stored()) >= 50, 60, "telemetry in PostgreSQL")
    hub.close_stores()  # the test's own connections would only break with the server
    postgres_server.down()
    try:
        _, body = wait_for(lambda: (h := _health(hub))[0] == 503 and h, 30, "/healthz to answer degraded")
        assert body["status"] == "degraded" and body["store"] is False, body
        outage_ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < outage_ends:
            assert hub.alive(), hub.log()[-3000:]
            time.sleep(0.5)
        wait_for(lambda: _health(hub)[1].get("reason", "").startswith("records store unavailable"), 30,
                 "the writer to say it waits for the records store")
    finally:
        postgres_server.up()
    wait_for(lambda: _health(hub)[0] == 200, 60, "/healthz to recover")
    produced = drain([agent], procs, broker.port, hub, timeout=120)
    assert len(produced) > OUTAGE_S * 10  # the agent kept producing through the outage
    assert hub.stored() == produced  # every seq once: 0 lost
    [(rows, distinct)] = hub.rows("SELECT count(*), count(DISTINCT seq) FROM received WHERE device = 'kk-aq-1201'")
    assert rows == distinct == len(produced)  # 0 duplicated
    readings = hub.readings(device)
    assert sorted({r["seq"] for r in readings}) == sorted(seq for _, seq in produced)
    assert len(readings) == len({(r["seq"], r["quantity"]) for r in readings})
