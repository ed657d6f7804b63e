"""The aggregate readings endpoint: min/avg/max per equal bucket, computed by the store, never the raw points."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from edge.contract import Reading
from hub.store.base import IngestBatch, SeqMessage
from tests.conftest import HubApp

POLE = "kk-aq-0042"
START = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def _store(hub_app: HubApp, values: list[tuple[float, float | bool | str]], quantity: str = "pm2_5") -> None:
    """Readings of POLE at START + offset seconds, one message each."""
    hub_app.store.ingest(IngestBatch(messages=[
        SeqMessage(device=POLE, seq=i + 1, received_at=time.time(), telemetry=[
            Reading(ts=START + timedelta(seconds=offset), sensor="pm", quantity=quantity, value=value,
                    unit="ug/m3")])
        for i, (offset, value) in enumerate(values)]))


def _iso(offset_s: float) -> str:
    return (START + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


def test_buckets_hold_min_avg_max_and_count_of_numeric_readings_in_the_window(hub_app: HubApp) -> None:
    # 0-59 s: 10, 20, 30; 60-119 s: 5 and a boolean (left out); 120-179 s: nothing; 180 s: the end, excluded
    _store(hub_app, [(0, 10.0), (10, 20.0), (59.999, 30.0), (60, 5.0), (61, True), (180, 99.0)])
    client = hub_app.client("viewer")
    r = client.get(f"/api/devices/{POLE}/readings/aggregate",
                   params={"quantity": "pm2_5", "since": _iso(0), "until": _iso(180), "buckets": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["device"], body["quantity"], body["unit"], body["bucket_s"]) == (POLE, "pm2_5", "ug/m3", 60.0)
    assert body["buckets"] == [
        {"t": "2026-11-20T03:00:00.000Z", "min": 10.0, "avg": 20.0, "max": 30.0, "count": 3},
        {"t": "2026-11-20T03:01:00.000Z", "min": 5.0, "avg": 5.0, "max": 5.0, "count": 1}]
    raw = client.get(f"/api/devices/{POLE}/readings",
                     params={"quantity": "pm2_5", "since": _iso(0), "until": _iso(180)}).json()
    numeric = [x["value"] for x in raw["readings"] if not isinstance(x["value"], bool)]
    assert sum(b["count"] for b in body["buckets"]) == len(numeric) == 4


def test_a_week_of_ten_second_data_comes_back_as_the_buckets_asked_for(hub_app: HubApp) -> None:
    week = 7 * 86_400
    _store(hub_app, [(s, float(s % 100)) for s in range(0, week, 10)])
    r = hub_app.client("viewer").get(f"/api/devices/{POLE}/readings/aggregate", params={
        "quantity": "pm2_5", "since": _iso(0), "until": _iso(week), "buckets": 336})
    body = r.json()
    assert body["bucket_s"] == week / 336 and len(body["buckets"]) == 336
    assert sum(b["count"] for b in body["buckets"]) == week // 10
    assert min(b["min"] for b in body["buckets"]) == 0 and max(b["max"] for b in body["buckets"]) == 90


def test_bad_windows_unknown_devices_and_strings(hub_app: HubApp) -> None:
    _store(hub_app, [(0, "calibrating")])
    client = hub_app.client("viewer")
    url = f"/api/devices/{POLE}/readings/aggregate"
    assert client.get(url, params={"quantity": "pm2_5", "since": _iso(0), "until": _iso(60)}).json()["buckets"] == []
    assert client.get(url, params={"quantity": "pm2_5", "since": _iso(60), "until": _iso(0)}).status_code == 422
    assert client.get(url, params={"quantity": "pm2_5", "buckets": 2001}).status_code == 422
    assert client.get(url, params={}).status_code == 422
    assert client.get("/api/devices/kk-none-0001/readings/aggregate",
                      params={"quantity": "pm2_5"}).status_code == 404
    assert hub_app.anonymous().get(url, params={"quantity": "pm2_5"}).status_code == 401


def test_quantities_lists_each_sensor_quantity_with_unit_and_newest_time(hub_app: HubApp) -> None:
    _store(hub_app, [(0, 10.0), (30, 12.0)])
    assert hub_app.client("viewer").get(f"/api/devices/{POLE}/quantities").json() == [
        {"sensor": "pm", "quantity": "pm2_5", "unit": "ug/m3", "last": "2026-11-20T03:00:30.000Z"}]
    assert hub_app.client("viewer").get("/api/devices/kk-none-0001/quantities").status_code == 404
