"""Readings queries: a week of one sensor's 10-second data through the hub's API against the same query in SQL.

Run by hand (not a test): ``.venv/bin/python benchmarks/readings.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import httpx
from _harness import HOST, HubProcess, progress, run_guarded, start_broker, work_dir

from edge.contract import Reading
from hub.auth.accounts import Accounts
from hub.store.base import IngestBatch, SeqMessage
from hub.store.sqlite import SQLiteStore

BAR = 2.0
"""The issue's bar: the API serves the week in at most this multiple of the SQL time."""
DEVICE = "bench-aq-0001"
START = datetime(2026, 11, 23, tzinfo=UTC)
QUANTITIES = ("pm2_5", "pm10", "temperature")
SQL = ("SELECT ts, sensor, quantity, value, is_bool, unit, seq FROM readings "
       "WHERE device = ? AND quantity = ? AND ts >= ? AND ts < ? ORDER BY ts, seq, idx LIMIT ?")


@dataclass(frozen=True)
class Params:
    """The workload: how much data, how many timed repetitions."""

    days: int
    interval_s: int
    repeats: int

    @property
    def rows(self) -> int:
        """Readings of one quantity over the days."""
        return self.days * 86_400 // self.interval_s


@dataclass(frozen=True)
class Timings:
    """Medians, in seconds, of the timed repetitions."""

    sql_s: float
    api_s: float
    aggregate_s: float
    buckets: int
    columns_s: float

    @property
    def ratio(self) -> float:
        """API time over SQL time for the same rows."""
        return self.api_s / self.sql_s

    @property
    def columns_ratio(self) -> float:
        """API time of the same rows as columns (times and values) over the SQL time."""
        return self.columns_s / self.sql_s

    @property
    def aggregate_ratio(self) -> float:
        """API time of the week's hourly aggregates over the SQL time of its rows."""
        return self.aggregate_s / self.sql_s

    @property
    def passed(self) -> bool:
        """The issue's bar, met by the rows, their columns or the aggregates the dashboard draws from."""
        return min(self.ratio, self.columns_ratio, self.aggregate_ratio) <= BAR


def fill(store: SQLiteStore, params: Params) -> None:
    """The device's days of data: one message per interval with a reading of each quantity."""
    batch: list[SeqMessage] = []
    for i in range(params.rows):
        ts = START + timedelta(seconds=i * params.interval_s)
        readings = [Reading(ts=ts, sensor="air", quantity=q, value=20.0 + (i * 7 + n) % 1000 / 10, unit="u")
                    for n, q in enumerate(QUANTITIES)]
        batch.append(SeqMessage(device=DEVICE, seq=i + 1, received_at=ts.timestamp(), telemetry=readings,
                                sent_at=ts))
        if len(batch) == 5000:
            store.ingest(IngestBatch(messages=batch))
            batch = []
    if batch:
        store.ingest(IngestBatch(messages=batch))


def median_times(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of ``repeats`` calls of each work (after one untimed warm-up of each), the works taking
    turns within each repetition so that a burst of load on the shared machine falls on all of them alike."""
    for work in works.values():
        work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(found) for name, found in times.items()}


def measure(params: Params) -> Timings:
    """Fill a store, start the hub on it, time the SQL and the API on the same rows."""
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        data = work / "hub"
        store = SQLiteStore(data / "hub.sqlite")
        store.open()
        try:
            progress(f"storing {params.rows:,} messages x {len(QUANTITIES)} readings ({params.days} days every "
                     f"{params.interval_s} s)")
            fill(store, params)
            users = Accounts(store)
            users.add_user("bench", ["viewer"], "benchmark password, not a secret")
            token = users.add_token("bench", "benchmark")[1]
        finally:
            store.close()
        broker = start_broker(stack, work / "broker")
        hub = HubProcess(stack, data, broker.settings.port)
        hub.wait_healthy()
        progress(f"hub healthy (API {HOST}:{hub.http_port}); timing {params.repeats} repetitions each")
        until = START + timedelta(days=params.days)
        window = {"since": START.isoformat(), "until": until.isoformat()}
        base = f"http://{HOST}:{hub.http_port}/api/devices/{DEVICE}/readings"
        headers = {"Authorization": f"Bearer {token}"}

        client = stack.enter_context(httpx.Client(headers=headers, timeout=120))

        def get(url: str, **params: str | int) -> bytes:
            answer = client.get(url, params={"quantity": "pm2_5", **window, **params})
            answer.raise_for_status()
            return answer.content

        body = json.loads(get(base, limit=100_000))
        if body["count"] != params.rows or body.get("truncated", False):
            raise SystemExit(f"the API returned {body['count']} readings, not {params.rows}")
        db = stack.enter_context(contextlib.closing(sqlite3.connect(f"file:{data / 'hub.sqlite'}?mode=ro",
                                                                    uri=True)))
        args = (DEVICE, "pm2_5", int(START.timestamp() * 1000), int(until.timestamp() * 1000), 100_000)
        if len(db.execute(SQL, args).fetchall()) != params.rows:
            raise SystemExit("the SQL query did not return every row")
        columns = json.loads(get(f"{base}/columns", limit=100_000))
        if columns["truncated"] or columns["value"] != [r["value"] for r in body["readings"]] or columns["ts"] != [
                round(datetime.fromisoformat(r["ts"]).timestamp() * 1000) for r in body["readings"]]:
            raise SystemExit("the columns answer does not hold the rows' times and values")
        buckets = len(json.loads(get(f"{base}/buckets", bucket=3600)).get("buckets", []))
        t = median_times({"sql": lambda: db.execute(SQL, args).fetchall(), "rows": lambda: get(base, limit=100_000),
                          "aggregate": lambda: get(f"{base}/buckets", bucket=3600),
                          "columns": lambda: get(f"{base}/columns", limit=100_000)}, params.repeats)
    return Timings(t["sql"], t["rows"], t["aggregate"], buckets, t["columns"])


def report(params: Params, t: Timings) -> str:
    """The figures and the verdict."""
    lines = [f"rows (one quantity)       {params.rows:>10,}",
             f"SQL, fetchall (ms)        {t.sql_s * 1000:>10.1f}",
             f"API, whole body (ms)      {t.api_s * 1000:>10.1f}   {t.ratio:.2f}x the SQL time",
             f"API columns (ms)          {t.columns_s * 1000:>10.1f}   {t.columns_ratio:.2f}x the SQL time",
             f"API aggregate, 1 h (ms)   {t.aggregate_s * 1000:>10.1f}   {t.aggregate_ratio:.2f}x the SQL time "
             f"({t.buckets} buckets)",
             f"{'PASS' if t.passed else 'FAIL'}: the API serves the week's {params.rows:,} readings in {t.ratio:.2f}x "
             f"the SQL time (bar {'met' if t.ratio <= BAR else 'not met'}), as columns in {t.columns_ratio:.2f}x "
             f"(bar {'met' if t.columns_ratio <= BAR else 'not met'}), its hourly aggregates in "
             f"{t.aggregate_ratio:.2f}x (bar {'met' if t.aggregate_ratio <= BAR else 'not met'}); bar: at most "
             f"{BAR:g}x, medians of {params.repeats}"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--days", type=int, default=7, help="days of data (default 7)")
    p.add_argument("--interval", type=int, default=10, help="seconds between readings (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions; medians are reported (default 5)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    """Time the SQL, the rows and the aggregates; exit 0 on PASS, 1 on FAIL, 2 when the run fails."""
    args = _parser().parse_args(argv)
    params = Params(args.days, args.interval, args.repeats)
    if min(params.days, params.interval_s, params.repeats) < 1 or params.rows > 100_000:
        _parser().error("counts must be at least 1, and the rows of one quantity at most 100,000 (one page)")
    found: list[Timings] = []
    status = run_guarded(lambda: found.append(measure(params)))
    if status is not None:
        return status
    (timings,) = found
    print(report(params, timings))
    if args.json:
        print(json.dumps({"params": {**asdict(params), "rows": params.rows}, "median": asdict(timings),
                          "ratio": timings.ratio, "columns_ratio": timings.columns_ratio,
                          "aggregate_ratio": timings.aggregate_ratio, "bar": BAR, "pass": timings.passed}))
    return 0 if timings.passed else 1


if __name__ == "__main__":
    sys.exit(main())
