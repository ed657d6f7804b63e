"""The time-series contract: every engine behind :class:`hub.timeseries.base.TimeSeries` passes the same cases.

``TIMESERIES_URLS`` maps an engine to the ``timeseries`` URL of an empty store for one test; an engine's fixture
(a server on a free port) adds its entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.backends import Backends, open_backends
from hub.timeseries.base import Point, ReadingColumns, TimeSeries
from tests.fixtures.victoria import Victoria

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
"""A whole hour: buckets aligned to the epoch start on it."""
POLE = "kk-aq-0601"
OTHER = "kk-aq-0602"


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'readings.sqlite'}"


def _victoriametrics(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    victoria: Victoria = request.getfixturevalue("victoria")
    return victoria.timeseries_url


TIMESERIES_URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": _sqlite, "victoriametrics": _victoriametrics}
DELETES_BY_TIME = {"sqlite"}
"""Engines whose ``purge_before`` deletes readings by time. VictoriaMetrics cannot (``delete_series`` removes whole
series) and drops what is older than its ``-retentionPeriod`` by itself: its ``purge_before`` deletes nothing."""


@pytest.fixture(params=sorted(TIMESERIES_URLS))
def timeseries_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeries]:
    backends: Backends = open_backends(None, TIMESERIES_URLS[request.param](request, tmp_path), tmp_path)
    assert backends.separate
    backends.open()
    yield backends.timeseries
    backends.close()


def _at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _pm(seq: int, s: float, value: float | int | bool | str, device: str = POLE, idx: int = 0,
        quantity: str = "pm2_5", unit: str | None = "ug/m3") -> Point:
    return Point(device, seq, idx, _at(s), "pm", quantity, value, unit)


def _seqs(series: TimeSeries) -> list[tuple[int, object]]:
    page = series.readings_page(POLE, "pm2_5", T0 - timedelta(days=1), None, 100)
    return [(r["seq"], r["value"]) for r in map(json.loads, page.rows)]


def test_points_written_twice_are_kept_once_in_time_order(timeseries_engine: TimeSeries) -> None:
    points = [_pm(2, 20, 12.5), _pm(1, 10, 11), _pm(3, 30, 13.25)]
    timeseries_engine.write(points)
    timeseries_engine.write(points[:2])  # a redelivered message
    assert _seqs(timeseries_engine) == [(1, 11), (2, 12.5), (3, 13.25)]
    rows = [json.loads(r) for r in timeseries_engine.readings_page(POLE, None, None, None, 10).rows]
    assert rows[0] == {"ts": "2026-11-20T03:00:10.000Z", "sensor": "pm", "quantity": "pm2_5", "value": 11,
                       "unit": "ug/m3", "seq": 1}


def test_pages_follow_the_reading_key_and_windows_are_half_open(timeseries_engine: TimeSeries) -> None:
    timeseries_engine.write([_pm(seq, seq * 10, float(seq)) for seq in range(1, 6)])
    first = timeseries_engine.readings_page(POLE, "pm2_5", None, None, 2)
    assert [json.loads(r)["seq"] for r in first.rows] == [1, 2] and first.next_after is not None
    rest = timeseries_engine.readings_page(POLE, "pm2_5", None, None, 10, first.next_after)
    assert [json.loads(r)["seq"] for r in rest.rows] == [3, 4, 5] and rest.next_after is None
    window = timeseries_engine.readings_page(POLE, "pm2_5", _at(20), _at(40), 10)
    assert [json.loads(r)["seq"] for r in window.rows] == [2, 3]


def test_buckets_hold_count_min_avg_max_of_numbers_aligned_to_the_epoch(timeseries_engine: TimeSeries) -> None:
    timeseries_engine.write([_pm(1, 5, 10), _pm(2, 25, 20.0), _pm(3, 59, 30), _pm(4, 61, 5),
                             _pm(5, 62, True), _pm(6, 63, "n/a"), _pm(7, 64, 99, device=OTHER)])
    found = timeseries_engine.aggregate(POLE, "pm2_5", None, None, 60, 10)
    assert [(b.start, b.count, b.min, b.avg, b.max) for b in found] == [
        (_at(0), 3, 10, 20, 30), (_at(60), 1, 5, 5, 5)]
    assert [b.start for b in timeseries_engine.aggregate(POLE, "pm2_5", None, None, 60, 1)] == [_at(0)]
    shifted = timeseries_engine.aggregate(POLE, "pm2_5", _at(5), _at(65), 30, 10, origin=_at(5))
    assert [(b.start, b.count) for b in shifted] == [(_at(5), 2), (_at(35), 2)]


def test_latest_and_quantities_per_sensor(timeseries_engine: TimeSeries) -> None:
    timeseries_engine.write([_pm(1, 10, 11), _pm(1, 10, 21, idx=1, quantity="pm10"), _pm(2, 70, 12),
                             _pm(3, 5, 9, device=OTHER)])
    assert timeseries_engine.latest(POLE) == {("pm", "pm2_5"): _at(70), ("pm", "pm10"): _at(10)}
    assert timeseries_engine.quantities(POLE) == [("pm", "pm10", "ug/m3"), ("pm", "pm2_5", "ug/m3")]
    assert timeseries_engine.quantities(POLE, _at(60), _at(120)) == [("pm", "pm2_5", "ug/m3")]


def test_retention_purges_what_is_older_than_the_cutoff(timeseries_engine: TimeSeries,
                                                        request: pytest.FixtureRequest) -> None:
    timeseries_engine.write([_pm(seq, seq * 100, float(seq)) for seq in range(1, 5)])
    if request.node.callspec.params["timeseries_engine"] in DELETES_BY_TIME:
        assert timeseries_engine.purge_before(_at(250)) == 2
        assert [s for s, _ in _seqs(timeseries_engine)] == [3, 4]
    else:
        assert timeseries_engine.purge_before(_at(250)) == 0
        assert [s for s, _ in _seqs(timeseries_engine)] == [1, 2, 3, 4]
    assert timeseries_engine.healthy()


def test_columns_are_a_quantitys_times_and_values_in_pages(timeseries_engine: TimeSeries) -> None:
    timeseries_engine.write([_pm(1, 10, 11), _pm(2, 20, 12.5), _pm(3, 30, True), _pm(4, 40, "n/a ไฟ"),
                             _pm(5, 50, 7, unit=None), _pm(5, 50, 1, idx=1, quantity="pm10"),
                             Point(POLE, 6, 0, _at(60), "pm-b", "pm2_5", -2.25, "ug/m3"), _pm(7, 70, 99, device=OTHER)])
    day = (T0, _at(86_400))
    whole = timeseries_engine.readings_columns(POLE, "pm2_5", None, *day, 10)
    t = [round(_at(s).timestamp() * 1000) for s in range(10, 70, 10)]
    assert whole == ReadingColumns(count=6, ts=json.dumps(t).replace(" ", ""), values='[11,12.5,true,"n/a ไฟ",7,-2.25]',
                                   sensors=("pm", "pm-b"), units=(None, "ug/m3"), next_after=None)
    first = timeseries_engine.readings_columns(POLE, "pm2_5", None, *day, 2)
    assert (first.count, first.values, first.next_after) == (2, "[11,12.5]", (t[1], 2, 0))
    rest = timeseries_engine.readings_columns(POLE, "pm2_5", None, *day, 3, first.next_after)
    assert (rest.count, rest.values, rest.next_after) == (3, '[true,"n/a ไฟ",7]', (t[4], 5, 0))
    last = timeseries_engine.readings_columns(POLE, "pm2_5", None, *day, 3, rest.next_after)
    assert (last.values, last.sensors, last.next_after) == ("[-2.25]", ("pm-b",), None)
    window = timeseries_engine.readings_columns(POLE, "pm2_5", "pm", _at(20), _at(60), 10)
    assert (window.ts, window.values, window.sensors, window.units) == (
        f"[{t[1]},{t[2]},{t[3]},{t[4]}]", '[12.5,true,"n/a ไฟ",7]', ("pm",), (None, "ug/m3"))
    empty = timeseries_engine.readings_columns(POLE, "pm2_5", "pm-c", *day, 10)
    assert empty == ReadingColumns(count=0, ts="[]", values="[]", sensors=(), units=(), next_after=None)
