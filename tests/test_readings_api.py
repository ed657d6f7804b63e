"""The readings endpoints: rows exactly as the pydantic model writes them, pages that say they were cut and where the
next one starts, and per-bucket aggregates."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.contract import Reading
from hub.api.app import ReadingsView, ReadingView
from hub.store.base import IngestBatch, SeqMessage
from tests.conftest import HubApp

DEVICE = "kk-aq-0808"
START = datetime(2026, 11, 23, 0, 0, 0, 7000, tzinfo=UTC)
VALUES: list[Any] = [12.5, 0.1 + 0.2, 1e300, -3, 2**62, True, False, "ไฟฟ้า \"ok\"\n", 5.0, 1 / 3]


def _store(hub_app: HubApp, messages: list[list[Reading]], first_seq: int = 1) -> None:
    batch = IngestBatch(messages=[SeqMessage(device=DEVICE, seq=first_seq + i, received_at=START.timestamp(),
                                             telemetry=readings, sent_at=START)
                                  for i, readings in enumerate(messages)])
    hub_app.store.ingest(batch)


def _reading(ts: datetime, value: Any, quantity: str = "pm2_5", unit: str | None = "ug/m3") -> Reading:
    return Reading(ts=ts, sensor="pm", quantity=quantity, value=value, unit=unit)


def test_rows_are_exactly_what_the_model_writes(hub_app: HubApp) -> None:
    rng = random.Random(12)
    stamps = [START + timedelta(milliseconds=rng.randrange(0, 10**10)) for _ in VALUES]
    _store(hub_app, [[_reading(ts, v, unit=None if i % 3 == 0 else "ug/m3")] for i, (ts, v) in
                     enumerate(zip(stamps, VALUES, strict=True))])
    answer = hub_app.client("viewer").get(f"/api/devices/{DEVICE}/readings")
    assert answer.status_code == 200
    body = answer.json()
    rows = hub_app.store.readings(DEVICE, None, None, None, 100)
    expected = ReadingsView(device=DEVICE, count=len(rows), readings=[
        ReadingView(ts=r.ts, sensor=r.sensor, quantity=r.quantity, value=r.value, unit=r.unit, seq=r.seq)
        for r in rows])
    assert body == json.loads(expected.model_dump_json())
    assert [r["value"] for r in sorted(body["readings"], key=lambda r: r["seq"])] == VALUES
    assert body["truncated"] is False and body["next"] is None


def test_a_page_cut_by_its_limit_says_so_and_the_next_pages_hold_the_rest(hub_app: HubApp) -> None:
    # two readings per message, and messages sharing timestamps: the cursor must not skip nor repeat any
    _store(hub_app, [[_reading(START + timedelta(seconds=i // 3), i), _reading(START + timedelta(seconds=i // 3), -i)]
                     for i in range(25)])
    api = hub_app.client("viewer")
    seen: list[tuple[int, Any]] = []
    params: dict[str, Any] = {"limit": 7}
    pages = 0
    while True:
        body = api.get(f"/api/devices/{DEVICE}/readings", params=params).json()
        pages += 1
        seen += [(r["seq"], r["value"]) for r in body["readings"]]
        assert body["count"] == len(body["readings"])
        if not body["truncated"]:
            assert body["next"] is None
            break
        assert body["count"] == 7 and body["next"]
        params["after"] = body["next"]
    assert pages == 8  # 50 readings, 7 a page
    assert seen == [(i + 1, v) for i in range(25) for v in (i, -i)]


def test_an_exact_last_page_is_not_called_truncated(hub_app: HubApp) -> None:
    _store(hub_app, [[_reading(START + timedelta(seconds=i), i)] for i in range(4)])
    body = hub_app.client("viewer").get(f"/api/devices/{DEVICE}/readings", params={"limit": 4}).json()
    assert body["count"] == 4 and body["truncated"] is False


@pytest.mark.parametrize("cursor", ["x", "1.2", "1.2.3.4", "99999999999999999999.1.1", "1.-2.3", "1.2.3" + "0" * 60])
def test_a_cursor_the_api_did_not_give_is_refused(hub_app: HubApp, cursor: str) -> None:
    _store(hub_app, [[_reading(START, 1)]])
    answer = hub_app.client("viewer").get(f"/api/devices/{DEVICE}/readings", params={"after": cursor})
    assert answer.status_code == 422


def test_aggregates_per_bucket(hub_app: HubApp) -> None:
    # 10-second data for an hour: six buckets of ten minutes, 60 readings each; a text and a bool are left out
    _store(hub_app, [[_reading(START + timedelta(seconds=10 * i), float(i)), _reading(START, "n/a"),
                      _reading(START, True), _reading(START + timedelta(seconds=10 * i), 1, quantity="pm10")]
                     for i in range(360)])
    api = hub_app.client("viewer")
    body = api.get(f"/api/devices/{DEVICE}/readings/buckets",
                   params={"quantity": "pm2_5", "bucket": 600}).json()
    assert body["count"] == 6 and body["truncated"] is False and body["next"] is None
    assert body["bucket_s"] == 600 and body["quantity"] == "pm2_5"
    first = body["buckets"][0]
    assert first == {"start": "2026-11-23T00:00:00.000Z", "count": 60, "min": 0.0, "avg": 29.5, "max": 59.0}
    assert [b["count"] for b in body["buckets"]] == [60] * 6
    assert body["buckets"][5]["max"] == 359.0
    cut = api.get(f"/api/devices/{DEVICE}/readings/buckets",
                  params={"quantity": "pm2_5", "bucket": 600, "limit": 4}).json()
    assert cut["count"] == 4 and cut["truncated"] is True and cut["next"] == "2026-11-23T00:40:00.000Z"
    rest = api.get(f"/api/devices/{DEVICE}/readings/buckets",
                   params={"quantity": "pm2_5", "bucket": 600, "since": cut["next"]}).json()
    assert cut["buckets"] + rest["buckets"] == body["buckets"]
    window = api.get(f"/api/devices/{DEVICE}/readings/buckets",
                     params={"quantity": "pm2_5", "bucket": 3600, "since": "2026-11-23T00:30:00Z",
                             "until": "2026-11-23T00:31:00Z"}).json()
    assert window["buckets"] == [{"start": "2026-11-23T00:00:00.000Z", "count": 6, "min": 180.0, "avg": 182.5,
                                  "max": 185.0}]


@pytest.mark.parametrize("params", [{}, {"quantity": "pm2_5", "bucket": 0}, {"quantity": "pm2_5", "bucket": 10**9},
                                    {"quantity": "pm2_5", "limit": 0}])
def test_aggregate_input_is_bounded(hub_app: HubApp, params: dict[str, Any]) -> None:
    _store(hub_app, [[_reading(START, 1)]])
    answer = hub_app.client("viewer").get(f"/api/devices/{DEVICE}/readings/buckets", params=params)
    assert answer.status_code == 422


def test_aggregate_of_an_unknown_device_is_404(hub_app: HubApp) -> None:
    answer = hub_app.client("viewer").get("/api/devices/kk-aq-0000/readings/buckets", params={"quantity": "x"})
    assert answer.status_code == 404
