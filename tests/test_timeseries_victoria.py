"""The VictoriaMetrics time-series store against a real VictoriaMetrics: the same answers as SQLite, redelivery,
outages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.contract import Reading
from hub.errors import RecordRejected, TimeSeriesUnavailable
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import Point
from hub.timeseries.sqlite import SQLiteTimeSeries
from hub.timeseries.victoria import VictoriaMetrics, line
from tests.fixtures.victoria import Victoria

T0 = datetime(2026, 11, 30, 23, 10, 7, 250_000, tzinfo=UTC)
ODD = ["pm, =\\x", "ต้นตาล", 'say "hi"\\', "tab\there"]


def _messages() -> list[tuple[int, list[Reading]]]:
    """Readings of every type, odd names, two sensors sharing a quantity, values SQLite averages by ulps."""
    out = []
    values: list[bool | int | float | str] = [0.1, 0.2, 0.3, 12.5, 7, -3, True, False, "fix 3d", "", 'q"\n\\',
                                              1e9 + 0.5, 2.5e-7, 0.7]
    for seq in range(1, 41):
        readings = []
        ts = T0 + timedelta(seconds=97 * seq)
        v = values[seq % len(values)]
        readings.append(Reading(ts=ts, sensor="pm", quantity="pm25", value=v, unit="ug/m3"))
        readings.append(Reading(ts=ts + timedelta(milliseconds=3), sensor="pm-b", quantity="pm25",
                                value=[0.1, 0.2, 0.3][seq % 3], unit="ug/m3"))
        readings.append(Reading(ts=ts, sensor=ODD[seq % len(ODD)], quantity=ODD[(seq + 1) % len(ODD)],
                                value=seq * 1.5, unit=[None, "", "°C", "a b,c=d"][seq % 4]))
        readings.append(Reading(ts=ts + timedelta(milliseconds=seq), sensor="t", quantity="temperature",
                                value=[0.1, 0.2, 0.3, 25.5, 31][seq % 5], unit="°C"))
        out.append((seq, readings))
    return out


def _points(device: str, messages: list[tuple[int, list[Reading]]]) -> list[Point]:
    return [Point(device=device, seq=seq, idx=idx, ts=r.ts, sensor=r.sensor, quantity=r.quantity, value=r.value,
                  unit=r.unit) for seq, readings in messages for idx, r in enumerate(readings)]


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteTimeSeries]:
    series = SQLiteTimeSeries(SQLiteStore(tmp_path / "series.sqlite"), owns_store=True)
    series.open()
    yield series
    series.close()


@pytest.fixture
def vm(victoria: Victoria) -> Iterator[VictoriaMetrics]:
    ts = VictoriaMetrics(victoria.timeseries_url, timeout_s=3)
    ts.open()
    yield ts
    ts.close()


def _load(sqlite: SQLiteTimeSeries, vm: VictoriaMetrics) -> None:
    points = _points("kk-aq-0001", _messages())
    sqlite.write(points)
    vm.write(points)


def test_readings_pages_are_the_rows_sqlite_writes(sqlite: SQLiteTimeSeries, vm: VictoriaMetrics) -> None:
    _load(sqlite, vm)
    windows: list[tuple[str | None, datetime | None, datetime | None]] = [
        (None, None, None), ("pm25", None, None),
        ("pm25", T0 + timedelta(seconds=500), T0 + timedelta(seconds=2000)), (ODD[1], T0, None)]
    for quantity, since, until in windows:
        for limit in (7, 1000):
            want, got, after_w, after_g = [], [], None, None
            while True:
                page_w = sqlite.readings_page("kk-aq-0001", quantity, since, until, limit, after_w)
                page_g = vm.readings_page("kk-aq-0001", quantity, since, until, limit, after_g)
                assert page_g.next_after == page_w.next_after
                want += page_w.rows
                got += page_g.rows
                if page_w.next_after is None:
                    break
                after_w, after_g = page_w.next_after, page_g.next_after
            assert got == want, (quantity, since, until, limit)
            assert want
    assert vm.readings_page("kk-aq-0002", None, None, None, 10).rows == []


def test_columns_are_sqlites_text_for_text(sqlite: SQLiteTimeSeries, vm: VictoriaMetrics) -> None:
    _load(sqlite, vm)
    windows: list[tuple[str, str | None, datetime, datetime]] = [
        ("pm25", None, T0, T0 + timedelta(days=1)), ("pm25", "pm-b", T0, T0 + timedelta(days=1)),
        ("temperature", None, T0 + timedelta(seconds=500), T0 + timedelta(seconds=2000)),
        (ODD[1], ODD[0], T0, T0 + timedelta(days=1)), (ODD[2], None, T0, T0 + timedelta(days=1))]
    for quantity, sensor, since, until in windows:
        for limit in (7, 1000):
            pages_w, pages_g, after_w, after_g = [], [], None, None
            while True:
                page_w = sqlite.readings_columns("kk-aq-0001", quantity, sensor, since, until, limit, after_w)
                page_g = vm.readings_columns("kk-aq-0001", quantity, sensor, since, until, limit, after_g)
                pages_w.append(page_w)
                pages_g.append(page_g)
                if page_w.next_after is None or page_g.next_after is None:
                    break
                after_w, after_g = page_w.next_after, page_g.next_after
            assert pages_g == pages_w, (quantity, sensor, since, until, limit)
            assert pages_w[0].count


def test_buckets_are_sqlites_to_the_last_bit(sqlite: SQLiteTimeSeries, vm: VictoriaMetrics) -> None:
    _load(sqlite, vm)
    spans: list[tuple[datetime | None, datetime | None]] = [
        (None, None), (T0 + timedelta(seconds=333), T0 + timedelta(seconds=3001, milliseconds=5)),
        (T0.replace(minute=0, second=0, microsecond=0), None)]
    for bucket_s in (1, 60, 300, 3600, 86_400):
        for since, until in spans:
            for limit in (3, 10_000):
                for quantity in ("pm25", "temperature"):
                    want = sqlite.aggregate("kk-aq-0001", quantity, since, until, bucket_s, limit)
                    got = vm.aggregate("kk-aq-0001", quantity, since, until, bucket_s, limit)
                    assert got == want, (quantity, bucket_s, since, until, limit)
                    assert want
    origin = T0 + timedelta(seconds=200, milliseconds=123)  # the dashboard's charts: buckets from their since
    for width in (7.5, 300.001, 1000):
        want = sqlite.aggregate("kk-aq-0001", "pm25", origin, None, width, 10_000, origin)
        assert vm.aggregate("kk-aq-0001", "pm25", origin, None, width, 10_000, origin) == want
        assert want
    assert vm.aggregate("kk-aq-0001", "no-such", None, None, 60, 10) == []


def test_latest_and_quantities(sqlite: SQLiteTimeSeries, vm: VictoriaMetrics) -> None:
    _load(sqlite, vm)
    assert vm.latest("kk-aq-0001") == sqlite.latest("kk-aq-0001")
    assert vm.quantities("kk-aq-0001") == sqlite.quantities("kk-aq-0001")
    assert ("pm", "pm25", "ug/m3") in vm.quantities("kk-aq-0001")
    for since, until in ((T0, T0 + timedelta(seconds=1000)), (T0 + timedelta(seconds=500), None),
                         (None, T0 + timedelta(seconds=700))):
        assert vm.quantities("kk-aq-0001", since, until) == sqlite.quantities("kk-aq-0001", since, until)
    assert vm.quantities("kk-aq-0002") == []


def test_a_redelivered_batch_is_stored_once(vm: VictoriaMetrics) -> None:
    points = _points("kk-aq-0001", _messages())
    vm.write(points)
    first = vm.readings_page("kk-aq-0001", None, None, None, 10_000).rows
    vm.write(points)
    vm.write(points[5:17])
    again = vm.readings_page("kk-aq-0001", None, None, None, 10_000).rows
    assert again == first
    assert len(again) == len(points)


def test_unavailable_while_stopped_then_nothing_lost(victoria: Victoria, vm: VictoriaMetrics) -> None:
    points = _points("kk-aq-0001", _messages())
    vm.write(points[:60])
    victoria.stop()
    assert not vm.healthy()
    began = time.monotonic()
    with pytest.raises(TimeSeriesUnavailable, match="does not answer"):
        vm.write(points[60:])
    with pytest.raises(TimeSeriesUnavailable):
        vm.readings_page("kk-aq-0001", None, None, None, 10)
    assert time.monotonic() - began < 10
    victoria.start()
    assert vm.healthy()
    vm.write(points[60:])
    rows = vm.readings_page("kk-aq-0001", None, None, None, 10_000).rows
    assert len(rows) == len(points)


def test_what_line_protocol_cannot_carry_is_refused() -> None:
    ok = Point(device="kk-aq-0001", seq=1, idx=0, ts=T0, sensor="a b", quantity="q,=", value="x\ny", unit=None)
    assert line(ok).startswith("reading,device=kk-aq-0001,sensor=a\\ b,quantity=q\\,\\=,type=str,text=")
    assert "\n" not in line(ok)
    for bad in ("two\nlines", "cr\r"):
        with pytest.raises(RecordRejected, match="line break"):
            line(Point(device="kk-aq-0001", seq=1, idx=0, ts=T0, sensor=bad, quantity="q", value=1, unit=None))
    with pytest.raises(RecordRejected, match="bytes"):
        line(Point(device="kk-aq-0001", seq=1, idx=0, ts=T0, sensor="s", quantity="q", value="\x01" * 4000,
                   unit=None))
