"""The readings endpoints: rows exactly as the pydantic model writes them, pages that say they were cut and where the
next one starts, per-bucket aggregates, and one quantity as columns (times and values) on both time-series engines."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.contract import Reading
from hub.api.app import ReadingsView, ReadingView
from hub.broker import free_port
from hub.store.base import IngestBatch, SeqMessage
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import TimeSeries, points_of
from tests.conftest import HUB_BANK_SECRET, HubApp

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


# -- columns: one quantity as two arrays, on both time-series engines -------------------------------------------


@dataclass
class SeriesHub:
    """The hub app on the embedded SQLite readings or on a VictoriaMetrics, and a way to store messages in it."""

    hub: HubApp
    series: TimeSeries | None
    """The separate time-series store the API reads (None: the records file's readings table)."""

    def store(self, messages: list[list[Reading]], device: str = DEVICE) -> None:
        """Store the messages (seq 1, 2, ...) as ingest does: records, then the readings where the API reads them."""
        batch = [SeqMessage(device=device, seq=1 + i, received_at=START.timestamp(), telemetry=readings,
                            sent_at=START) for i, readings in enumerate(messages)]
        self.hub.store.ingest(IngestBatch(messages=batch))
        if self.series is not None:
            self.series.write(points_of(batch))


@pytest.fixture(params=["sqlite", "victoriametrics"])
def series_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SeriesHub]:
    """The hub app reading its readings from each engine."""
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, build

    url = request.getfixturevalue("victoria").timeseries_url if request.param == "victoriametrics" else None
    app, store, ingest = build(HubSettings(data=tmp_path / "hub", ingest=IngestSettings(port=free_port()),
                                           bank_secret=HUB_BANK_SECRET, timeseries=url))
    assert isinstance(store, SQLiteStore)
    store.open()
    if ingest.timeseries is not None:
        ingest.timeseries.open()
    yield SeriesHub(HubApp(app, store), ingest.timeseries)
    if ingest.timeseries is not None:
        ingest.timeseries.close()
    store.close()


COLUMNS = f"/api/devices/{DEVICE}/readings/columns"
KEPT_VALUES: list[Any] = [12.5, 0.25, -3, 7, True, False, "ไฟฟ้า \"ok\"\n", 5.0, 0.001, 123456.75]
"""Values of every type that VictoriaMetrics keeps exactly too (see :mod:`hub.timeseries.victoria`)."""
WEEK = {"since": "2026-11-20T00:00:00Z", "until": "2026-12-20T00:00:00Z"}


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def _typed(values: list[Any]) -> list[tuple[type, Any]]:
    """Values with their JSON type: ``true`` and ``1`` differ."""
    return [(type(v), v) for v in values]


def test_columns_are_the_rows_times_and_values(series_hub: SeriesHub) -> None:
    rng = random.Random(7)
    stamps = [START + timedelta(milliseconds=rng.randrange(0, 10**9)) for _ in KEPT_VALUES]
    series_hub.store([[_reading(ts, v), _reading(ts, 1, quantity="pm10")]
                      for ts, v in zip(stamps, KEPT_VALUES, strict=True)])
    api = series_hub.hub.client("viewer")
    answer = api.get(COLUMNS, params={"quantity": "pm2_5", **WEEK})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = api.get(f"/api/devices/{DEVICE}/readings", params={"quantity": "pm2_5", **WEEK}).json()["readings"]
    assert len(rows) == len(KEPT_VALUES)
    assert body["ts"] == [_ms(r["ts"]) for r in rows] == sorted(body["ts"])
    assert _typed(body["value"]) == _typed([r["value"] for r in rows])
    assert sorted(_typed(body["value"]), key=repr) == sorted(_typed(KEPT_VALUES), key=repr)
    assert {k: v for k, v in body.items() if k not in ("ts", "value")} == {
        "device": DEVICE, "quantity": "pm2_5", "sensor": "pm", "unit": "ug/m3", "sensors": ["pm"],
        "units": ["ug/m3"], "count": len(KEPT_VALUES), "truncated": False, "next": None}


def test_a_columns_page_cut_by_its_limit_says_so_and_its_cursor_gives_the_rest(series_hub: SeriesHub) -> None:
    # two readings (two sensors) per message at one time, pages cut between them: no reading skipped nor repeated
    # (VictoriaMetrics keeps one sample per series and millisecond, so each message has a time of its own)
    series_hub.store([[_reading(START + timedelta(seconds=i), i),
                       Reading(ts=START + timedelta(seconds=i), sensor="pm-b", quantity="pm2_5", value=-i,
                               unit="ug/m3")]
                      for i in range(25)])
    api = series_hub.hub.client("viewer")
    whole = api.get(COLUMNS, params={"quantity": "pm2_5", **WEEK}).json()
    assert whole["count"] == 50 and not whole["truncated"]
    ts: list[int] = []
    values: list[Any] = []
    params: dict[str, Any] = {"quantity": "pm2_5", "limit": 7, **WEEK}
    pages = 0
    while True:
        body = api.get(COLUMNS, params=params).json()
        pages += 1
        assert body["count"] == len(body["ts"]) == len(body["value"])
        ts += body["ts"]
        values += body["value"]
        if not body["truncated"]:
            assert body["next"] is None
            break
        assert body["count"] == 7 and body["next"]
        params["after"] = body["next"]
    assert pages == 8
    assert values == [v for i in range(25) for v in (i, -i)] == whole["value"]
    assert ts == whole["ts"]
    exact = api.get(COLUMNS, params={"quantity": "pm2_5", "limit": 50, **WEEK}).json()
    assert exact["count"] == 50 and exact["truncated"] is False and exact["next"] is None


def test_columns_of_several_sensors_name_them_all_and_one_can_be_asked_for(series_hub: SeriesHub) -> None:
    series_hub.store([[Reading(ts=START + timedelta(seconds=i), sensor="pm-a", quantity="pm2_5", value=float(i + 1),
                               unit="ug/m3"),
                       Reading(ts=START + timedelta(seconds=i, milliseconds=1), sensor="pm-b", quantity="pm2_5",
                               value=-float(i + 1), unit=None if i % 2 else "ug/m3")] for i in range(4)])
    api = series_hub.hub.client("viewer")
    both = api.get(COLUMNS, params={"quantity": "pm2_5", **WEEK}).json()
    assert (both["sensor"], both["sensors"], both["unit"], both["units"]) == (None, ["pm-a", "pm-b"], None,
                                                                              [None, "ug/m3"])
    assert both["value"] == [1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0]
    one = api.get(COLUMNS, params={"quantity": "pm2_5", "sensor": "pm-b", **WEEK}).json()
    assert (one["sensor"], one["sensors"], one["unit"], one["units"]) == ("pm-b", ["pm-b"], None, [None, "ug/m3"])
    assert one["value"] == [-1.0, -2.0, -3.0, -4.0]
    assert one["ts"] == [_ms((START + timedelta(seconds=i, milliseconds=1)).isoformat()) for i in range(4)]
    none = api.get(COLUMNS, params={"quantity": "pm2_5", "sensor": "pm-c", **WEEK}).json()
    assert (none["count"], none["ts"], none["value"], none["sensor"], none["sensors"]) == (0, [], [], None, [])


def test_columns_default_to_the_day_before_until_and_until_to_now(series_hub: SeriesHub) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    series_hub.store([[_reading(now - timedelta(hours=30), 1)], [_reading(now - timedelta(hours=2), 2)],
                      [_reading(now + timedelta(hours=1), 3)]])
    api = series_hub.hub.client("viewer")
    assert api.get(COLUMNS, params={"quantity": "pm2_5"}).json()["value"] == [2]
    until = (now - timedelta(hours=20)).isoformat()
    assert api.get(COLUMNS, params={"quantity": "pm2_5", "until": until}).json()["value"] == [1]


@pytest.mark.parametrize(("params", "says"), [
    ({}, "quantity"),
    ({"quantity": ""}, "quantity"),
    ({"quantity": "pm2_5", "limit": 0}, "limit"),
    ({"quantity": "pm2_5", "limit": 100_001}, "limit"),
    ({"quantity": "pm2_5", "since": "2026-11-23T00:00:00"}, "since"),
    ({"quantity": "pm2_5", "since": "2026-11-23T00:00:00Z", "until": "2026-11-23T00:00:00Z"},
     "since (2026-11-23T00:00:00+00:00) must be before until"),
    ({"quantity": "pm2_5", "after": "1.2"}, "after"),
    ({"quantity": "pm2_5", "after": "99999999999999999999.1.1"}, "after: not a cursor this API gave"),
    ({"quantity": "pm2_5", "sensor": "s" * 101}, "sensor"),
], ids=["no-quantity", "empty-quantity", "limit-0", "limit-over", "since-no-zone", "empty-window", "bad-cursor",
        "cursor-out-of-range", "long-sensor"])
def test_columns_input_is_bounded_and_refusals_say_why(hub_app: HubApp, params: dict[str, Any], says: str) -> None:
    _store(hub_app, [[_reading(START, 1)]])
    answer = hub_app.client("viewer").get(COLUMNS, params=params)
    assert answer.status_code == 422, answer.text
    assert says in answer.text


def test_columns_of_an_unknown_device_are_404_and_need_a_sign_in(hub_app: HubApp) -> None:
    assert hub_app.client("viewer").get("/api/devices/kk-aq-0000/readings/columns",
                                        params={"quantity": "pm2_5"}).status_code == 404
    _store(hub_app, [[_reading(START, 1)]])
    assert hub_app.anonymous().get(COLUMNS, params={"quantity": "pm2_5"}).status_code == 401
