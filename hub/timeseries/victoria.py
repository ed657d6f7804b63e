"""Readings in VictoriaMetrics (single node): written as InfluxDB line protocol, read through export and MetricsQL.

Each reading is one line of measurement ``reading`` with the tags ``device``, ``sensor``, ``quantity``, ``unit``
and ``type`` and the fields ``value``, ``seq`` and ``idx``, at its timestamp in milliseconds. VictoriaMetrics
makes three series of it (``reading_value``, ``reading_seq``, ``reading_idx``) under the same labels; the export
joins them back into the reading and its :data:`~hub.store.base.ReadingKey`. Started with
``-dedup.minScrapeInterval=1ms``, a point written twice (a redelivered message) is one sample.

What VictoriaMetrics keeps, and how it differs from the SQLite store:

- ``type`` is ``float``, ``int``, ``bool`` (value 0 or 1) or ``str``, so a reading reads back as what was sent.
- Values are kept as decimals, not float64: about 12 significant digits, integers exactly up to 2**53, and the
  values of one stored block of a series share one exponent, so a series mixing 1e22 and 0.2 reads the 0.2 back
  as 0. Sensor readings have a few digits within a few orders of magnitude, which come back exactly.
- A string reading is the label ``text`` (the string as a JSON literal, so that line breaks travel) with value
  1. Every distinct string makes a series of its own: fine for states (``fix``, ``open``), not for free text.
- A unit of ``""`` is the label ``unit_empty="1"`` (VictoriaMetrics drops empty labels); no unit, no label.
- Line protocol cannot carry a line break in a label: a sensor, quantity or unit with one is refused.
- Two readings of one device, sensor, quantity and unit at the same millisecond are one sample.
- A write returns when VictoriaMetrics has answered; the hub then asks it to flush (``/internal/force_flush``) so
  that the API reads what was acknowledged. VictoriaMetrics 1.79 writes its in-memory parts to disk within about
  10 s: a clean stop (SIGTERM) loses nothing, a crash of VictoriaMetrics itself in those seconds loses them.
- Retention is VictoriaMetrics' own ``-retentionPeriod``: :meth:`VictoriaMetrics.purge_before` deletes nothing
  (see there).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httpx
import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision

from hub.errors import HubConfigError, RecordRejected, TimeSeriesUnavailable
from hub.store.base import ReadingBucket, ReadingKey, ReadingsPage, epoch_ms
from hub.timeseries.base import Point, ReadingColumns, sorted_units

SCHEME: Final = "victoriametrics+"
"""``victoriametrics+http://HOST:PORT``: the time-series URL of this backend."""
MAX_LABEL_BYTES: Final = 16_384
"""VictoriaMetrics' default ``-maxLabelValueLen``: it would cut a longer label silently, so it is refused."""
SPAN: Final = "3650d"
"""How far back an open-ended query looks for a device's first reading."""
MAX_STEPS: Final = 10_000
"""Buckets per query_range call (VictoriaMetrics answers at most ``-search.maxPointsPerTimeseries``, 30,000)."""

_SERIES: Final = ("value", "seq", "idx")
_NUMERIC: Final = '"int|float"'


@functools.lru_cache(maxsize=4096)
def _escape(text: str) -> str:
    """A tag key or value in line protocol: backslash, comma, equals sign and space escaped."""
    if "\n" in text or "\r" in text:
        raise RecordRejected(f"line protocol cannot carry a line break in a label: {text[:64]!r}")
    if len(text.encode()) > MAX_LABEL_BYTES:
        raise RecordRejected(f"a label of over {MAX_LABEL_BYTES} bytes: {text[:64]!r}...")
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _float(value: Any) -> tuple[str, str, str | None]:
    return "float", repr(value), None


def _int(value: Any) -> tuple[str, str, str | None]:
    return "int", f"{value}i", None


def _bool(value: Any) -> tuple[str, str, str | None]:
    return "bool", "1i" if value else "0i", None


def _str(value: Any) -> tuple[str, str, str | None]:
    return "str", "1i", json.dumps(value, ensure_ascii=False)


_ENCODE: Final[dict[type, Callable[[Any], tuple[str, str, str | None]]]] = {
    float: _float, int: _int, bool: _bool, str: _str}
"""A reading's Python type -> its ``type`` label, its field value in line protocol and its ``text`` label."""

_DECODE: Final[dict[str, Callable[[Any, dict[str, str]], str]]] = {
    "float": lambda v, _: repr(float(v)),
    "int": lambda v, _: str(int(v)),
    "bool": lambda v, _: "true" if v else "false",
    "str": lambda _, labels: labels["text"],
}
"""A sample's ``type`` label -> its value as the readings API writes it (JSON text)."""


def line(p: Point) -> str:
    """One reading as a line of InfluxDB line protocol (timestamp in ms)."""
    kind, value, text = _ENCODE[type(p.value)](p.value)
    tags = (f"reading,device={_escape(p.device)},sensor={_escape(p.sensor)},quantity={_escape(p.quantity)},"
            f"type={kind}")
    if p.unit:
        tags += f",unit={_escape(p.unit)}"
    elif p.unit is not None:
        tags += ",unit_empty=1"
    if text is not None:
        tags += f",text={_escape(text)}"
    return f"{tags} value={value},seq={p.seq}i,idx={p.idx}i {epoch_ms(p.ts)}"


def _from_ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


def _seconds(ms: int) -> str:
    """A time in ms as the seconds VictoriaMetrics' query arguments take, exactly."""
    whole, frac = divmod(ms, 1000)
    return f"{whole}.{frac:03d}"


def _iso(ms: int) -> str:
    """A time as the readings API writes it (SQLite's ``%Y-%m-%dT%H:%M:%fZ``)."""
    whole, frac = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{frac:03d}Z"


def _quote(text: str) -> str:
    """A label value in a MetricsQL selector."""
    return json.dumps(text)


def _json(text: str | None) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Series:
    """The labels of one exported series and the parts of its readings' JSON that they decide."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.unit = labels.get("unit", "" if "unit_empty" in labels else None)
        self.head = f'"sensor":{_json(labels["sensor"])},"quantity":{_json(labels["quantity"])},"value":'
        self.tail = f'"unit":{_json(self.unit)},"seq":'
        self._decode = _DECODE[labels["type"]]

    def value(self, raw: Any) -> str:
        """A sample's value as JSON text."""
        return self._decode(raw, self.labels)


class VictoriaMetrics:
    """The :class:`hub.timeseries.base.TimeSeries` on a VictoriaMetrics single node."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        base = url.removeprefix(SCHEME)
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HubConfigError(f"a VictoriaMetrics URL is {SCHEME}http://HOST:PORT, not {url!r}")
        self.url = base.rstrip("/")
        self.timeout_s = timeout_s
        self._client: InfluxDBClient | None = None
        self._writer: WriteApi | None = None
        self._http: httpx.Client | None = None

    def open(self) -> None:
        """Make the HTTP clients; VictoriaMetrics itself may come up later (writes fail until then)."""
        self._client = InfluxDBClient(url=self.url, token="nakhon", org="nakhon",  # noqa: S106 (VM takes any)
                                      timeout=int(self.timeout_s * 1000))
        self._writer = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout_s)

    def close(self) -> None:
        """Close the HTTP clients; safe to call twice."""
        if self._writer is not None:
            self._writer.close()  # type: ignore[no-untyped-call]  # influxdb-client leaves it unannotated
            self._writer = None
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- writes --------------------------------------------------------------------------------
    def write(self, points: Sequence[Point]) -> None:
        """Send ``points`` in one request and flush them to searchable parts; TimeSeriesUnavailable when
        VictoriaMetrics does not answer or answers 5xx, RecordRejected when it refuses the lines (4xx)."""
        if not points:
            return
        body = "\n".join([line(p) for p in points])  # one string: influxdb-client walks a list item by item
        if self._writer is None:
            raise TimeSeriesUnavailable("the VictoriaMetrics store is not open")
        try:
            self._writer.write(bucket="nakhon", record=body, write_precision=cast(WritePrecision, WritePrecision.MS))
        except InfluxDBError as err:
            status = err.response.status if err.response is not None else None
            if status is not None and 400 <= status < 500:
                raise RecordRejected(f"VictoriaMetrics refused the readings ({status}): {err.message}") from err
            raise TimeSeriesUnavailable(f"VictoriaMetrics did not take the readings ({status}): {err}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise TimeSeriesUnavailable(f"VictoriaMetrics at {self.url} does not answer: {err}") from err
        self._get("/internal/force_flush", {})

    # -- reads ---------------------------------------------------------------------------------
    def _call(self, path: str, params: dict[str, str], post: bool = True) -> httpx.Response:
        if self._http is None:
            raise TimeSeriesUnavailable("the VictoriaMetrics store is not open")
        try:
            r = self._http.post(path, data=params) if post else self._http.get(path, params=params)
        except httpx.HTTPError as err:
            raise TimeSeriesUnavailable(f"VictoriaMetrics at {self.url} does not answer: {err}") from err
        if r.status_code >= 400:
            raise TimeSeriesUnavailable(f"VictoriaMetrics answered {r.status_code} on {path}: {r.text[:300]}")
        return r

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        return self._call(path, params, post=False)

    def _export(self, selector: str, start: int, end: int) -> Iterator[dict[str, Any]]:
        """The raw series of ``selector`` from ``start`` to ``end`` (ms, both inclusive)."""
        r = self._call("/api/v1/export", {"match[]": selector, "start": _seconds(start), "end": _seconds(end)})
        for text in r.text.splitlines():
            if text:
                yield json.loads(text)

    def _query(self, query: str, at: int) -> list[dict[str, Any]]:
        r = self._call("/api/v1/query", {"query": query, "time": _seconds(at), "nocache": "1"})
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def _span(self, selector: str) -> tuple[int, int] | None:
        """The times (ms) of the first and last sample of ``selector``, or None if it has none."""
        at = int(time.time() * 1000) + 86_400_000  # readings stamped ahead of the clock are accepted
        found = []
        for fn, pick in (("tfirst_over_time", "min"), ("tlast_over_time", "max")):
            rows = self._query(f"{pick}({fn}({selector}[{SPAN}]))", at)
            if not rows:
                return None
            found.append(round(float(rows[0]["value"][1]) * 1000))
        return found[0], found[1]

    def _selector(self, device: str, quantity: str | None, name: str, extra: str = "") -> str:
        labels = f"__name__=~{name},device={_quote(device)}"
        if quantity is not None:
            labels += f",quantity={_quote(quantity)}"
        return f"{{{labels}{extra}}}"

    def _samples(self, selector: str, start: int, end: int) -> list[tuple[ReadingKey, _Series, Any]]:
        """Readings from ``start`` to ``end`` (ms, inclusive): key, series and raw value, in key order."""
        series: dict[tuple[tuple[str, str], ...], dict[str, dict[int, Any]]] = defaultdict(dict)
        for s in self._export(selector, start, end):
            labels = s["metric"]
            field = labels.pop("__name__").removeprefix("reading_")
            # one line per stored block: a series can come in several
            series[tuple(sorted(labels.items()))].setdefault(field, {}).update(
                zip(s["timestamps"], s["values"], strict=True))
        found = []
        for labels, fields in series.items():
            seqs, idxs = fields.get("seq", {}), fields.get("idx", {})
            one = _Series(dict(labels))
            for ts, value in fields.get("value", {}).items():
                if ts in seqs and ts in idxs:
                    found.append(((ts, int(seqs[ts]), int(idxs[ts])), one, value))
        found.sort(key=lambda row: row[0])
        return found

    def _page(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
              limit: int, after: ReadingKey | None, extra: str = "") -> list[tuple[ReadingKey, _Series, Any]]:
        """Up to ``limit + 1`` readings in (ts, seq, idx) order after ``after``, exported in windows sized from the
        count of samples in the range to hold about one page each (bounded memory for a large range)."""
        selector = self._selector(device, quantity, '"reading_(value|seq|idx)"', extra)
        lo, hi = self._bounds(selector, since, until)
        if after is not None:
            lo = max(lo, after[0])
        rows: list[tuple[ReadingKey, _Series, Any]] = []
        width = self._window(device, quantity, lo, hi, limit, extra)
        start = lo
        while start < hi and len(rows) <= limit:
            end = min(hi, start + width)
            rows += [r for r in self._samples(selector, start, end - 1) if after is None or r[0] > after]
            start, width = end, width * 2
        return rows[:limit + 1]

    def readings_page(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
                      limit: int, after: ReadingKey | None = None) -> ReadingsPage:
        """Readings in (ts, seq, idx) order as the API's JSON objects."""
        rows = self._page(device, quantity, since, until, limit, after)
        page = rows[:limit]
        return ReadingsPage(rows=[f'{{"ts":"{_iso(key[0])}",{one.head}{one.value(v)},{one.tail}{key[1]}}}'
                                  for key, one, v in page],
                            next_after=page[-1][0] if len(rows) > limit else None)

    def readings_columns(self, device: str, quantity: str, sensor: str | None, since: datetime, until: datetime,
                         limit: int, after: ReadingKey | None = None) -> ReadingColumns:
        """A quantity's readings as columns, each value written as the rows write it."""
        extra = f",sensor={_quote(sensor)}" if sensor is not None else ""
        rows = self._page(device, quantity, since, until, limit, after, extra)
        page = rows[:limit]
        return ReadingColumns(count=len(page), ts=f"[{','.join([str(key[0]) for key, _, _ in page])}]",
                              values=f"[{','.join([one.value(v) for _, one, v in page])}]",
                              sensors=tuple(sorted({one.labels['sensor'] for _, one, _ in page})),
                              units=sorted_units(one.unit for _, one, _ in page),
                              next_after=page[-1][0] if len(rows) > limit else None)

    def _window(self, device: str, quantity: str | None, lo: int, hi: int, limit: int, extra: str = "") -> int:
        """An export window from ``lo`` that holds about ``limit`` readings, judged by the count in [lo, hi)."""
        if hi <= lo:
            return 1
        selector = self._selector(device, quantity, '"reading_value"', extra)
        found = self._query(f"sum(count_over_time({selector}[{hi - lo}ms]))", hi - 1)
        count = float(found[0]["value"][1]) if found else 0.0
        if count <= limit:
            return hi - lo
        return max(1, int((hi - lo) * (limit + 1) / count * 1.25))

    def _bounds(self, selector: str, since: datetime | None, until: datetime | None) -> tuple[int, int]:
        """[lo, hi) in ms: the window asked for, its open ends closed at the first and last sample."""
        span = self._span(selector) if since is None or until is None else None
        lo = epoch_ms(since) if since is not None else span[0] if span else 0
        hi = epoch_ms(until) if until is not None else span[1] + 1 if span else 0
        return lo, hi

    def aggregate(self, device: str, quantity: str, since: datetime | None, until: datetime | None,
                  bucket_s: float, limit: int, origin: datetime | None = None) -> list[ReadingBucket]:
        """Numeric readings per bucket of ``bucket_s`` (whole ms) aligned to ``origin`` (the epoch): whole buckets
        holding one series by MetricsQL rollups; the buckets cut by ``since`` or ``until`` and those several series
        share (two sensors of one quantity) from the raw samples, summed in (ts, seq, idx) order as SQLite sums
        them, so that both stores give the same mean."""
        values = self._selector(device, quantity, '"reading_value"', f",type=~{_NUMERIC}")
        lo, hi = self._bounds(values, since, until)
        width = max(1, round(bucket_s * 1000))
        zero = epoch_ms(origin) if origin is not None else 0
        out: dict[int, ReadingBucket] = {}
        raw: list[int] = []  # starts of buckets to compute from raw samples
        first_full = zero - ((zero - lo) // width) * width
        if first_full != lo:
            raw.append(first_full - width)
        start = first_full
        while start + width <= hi and len(out) < limit:
            steps = min(MAX_STEPS, (hi - start) // width)
            for begin, bucket in self._rollups(values, start, width, steps).items():
                if bucket is None:
                    raw.append(begin)
                else:
                    out[begin] = bucket
            start += steps * width
        if start < hi and (hi - start) < width:
            raw.append(start)
        for begin in sorted(set(raw)):
            bucket = self._raw_bucket(values, max(lo, begin), min(hi, begin + width), begin)
            if bucket is not None:
                out[begin] = bucket
        return [out[k] for k in sorted(out)][:limit]

    def _rollups(self, selector: str, start: int, width: int, steps: int) -> dict[int, ReadingBucket | None]:
        """Buckets from ``start``: each whole bucket of one series, or None where several series share it."""
        query = (f'aggr_over_time(("count_over_time","sum_over_time","min_over_time","max_over_time"),'
                 f"{selector}[{width}ms])")
        r = self._call("/api/v1/query_range", {
            "query": query, "start": _seconds(start + width - 1), "end": _seconds(start + steps * width - 1),
            "step": f"{width}ms", "nocache": "1"})
        parts: dict[int, dict[tuple[tuple[str, str], ...], dict[str, float]]] = defaultdict(dict)
        for s in r.json()["data"]["result"]:
            labels = dict(s["metric"])
            rollup = labels.pop("rollup")
            key = tuple(sorted(labels.items()))
            for t, v in s["values"]:
                parts[round(float(t) * 1000) + 1 - width].setdefault(key, {})[rollup] = float(v)
        out: dict[int, ReadingBucket | None] = {}
        for begin, by_series in parts.items():
            if len(by_series) != 1:
                out[begin] = None
                continue
            (r1,) = by_series.values()
            n = int(r1["count_over_time"])
            out[begin] = ReadingBucket(start=_from_ms(begin), count=n, min=r1["min_over_time"],
                                       avg=r1["sum_over_time"] / n, max=r1["max_over_time"])
        return out

    def _raw_bucket(self, selector: str, start: int, end: int, begin: int) -> ReadingBucket | None:
        """One bucket from the raw samples in [start, end)."""
        if end <= start:
            return None
        keyed = self._selector_keys(selector)
        values = [float(v) for _, _, v in self._samples(keyed, start, end - 1)]
        if not values:
            return None
        total = 0.0
        for v in values:
            total += v
        return ReadingBucket(start=_from_ms(begin), count=len(values), min=min(values),
                             avg=total / len(values), max=max(values))

    @staticmethod
    def _selector_keys(values: str) -> str:
        """The ``reading_value`` selector widened to its seq and idx series (to order the samples)."""
        return values.replace('__name__=~"reading_value"', '__name__=~"reading_(value|seq|idx)"', 1)

    def latest(self, device: str) -> dict[tuple[str, str], datetime]:
        """Newest reading time per (sensor, quantity)."""
        selector = self._selector(device, None, '"reading_value"')
        at = int(time.time() * 1000) + 86_400_000
        rows = self._query(f"max by (sensor, quantity) (tlast_over_time({selector}[{SPAN}]))", at)
        return {(r["metric"]["sensor"], r["metric"]["quantity"]): _from_ms(round(float(r["value"][1]) * 1000))
                for r in rows}

    def quantities(self, device: str, since: datetime | None = None,
                   until: datetime | None = None) -> list[tuple[str, str, str | None]]:
        """(sensor, quantity, unit) a device sent, sorted (no unit first): with no window the unit of each
        quantity's newest reading, in a window [since, until) every unit."""
        selector = self._selector(device, None, '"reading_value"')
        lo, hi = self._bounds(selector, since, until)
        if hi <= lo:
            return []
        rows = self._query(f"tlast_over_time({selector}[{hi - lo}ms])", hi - 1)
        newest: dict[tuple[str, str], tuple[float, str | None]] = {}
        found = set()
        for r in rows:
            m = r["metric"]
            unit = m.get("unit", "" if "unit_empty" in m else None)
            found.add((m["sensor"], m["quantity"], unit))
            last = float(r["value"][1])
            if newest.get((m["sensor"], m["quantity"]), (-math.inf, None))[0] < last:
                newest[m["sensor"], m["quantity"]] = (last, unit)
        if since is None and until is None:
            found = {(s, q, unit) for (s, q), (_, unit) in newest.items()}
        return sorted(found, key=lambda q: (q[0], q[1], q[2] is not None, q[2] or ""))

    def purge_before(self, cutoff: datetime) -> int:
        """Delete nothing and return 0: VictoriaMetrics drops whole months of data past its ``-retentionPeriod``
        by itself and cannot delete samples by time (``delete_series`` removes whole series)."""
        return 0

    def healthy(self) -> bool:
        """Whether VictoriaMetrics answers ``/health``."""
        try:
            return self._get("/health", {}).text.strip() == "OK"
        except TimeSeriesUnavailable:
            return False


def timeseries_store(url: str) -> VictoriaMetrics:
    """The store at ``http://HOST:PORT`` (``hub.backends`` strips the ``victoriametrics+``)."""
    return VictoriaMetrics(url)
