"""Query cost as readings grow: a week of one device's PM2.5, raw and in buckets, on SQLite and VictoriaMetrics.

Run by hand (not a test): ``.venv/bin/python benchmarks/timeseries.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx
from _harness import HOST, START_S, BenchError, LoggedProcess, progress, run_guarded, table, work_dir

from hub.broker import free_port
from hub.store.base import ReadingBucket, ReadingsPage
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import Point
from hub.timeseries.sqlite import SQLiteTimeSeries
from hub.timeseries.victoria import VictoriaMetrics

WEEK_END = datetime(2026, 11, 30, tzinfo=UTC)
WEEK = timedelta(days=7)
INTERVAL_S = 10
WEEKS = 4
"""Each device holds this many weeks of 10-second PM2.5; the stored total grows with the number of devices."""
PER_WEEK = 7 * 86_400 // INTERVAL_S
PER_MESSAGE = 60
"""Readings per message (one minute of a device): the seq and idx of each point."""
BATCH = 48_000
"""Readings per write: whole messages, so that no message is split across two writes."""
QUANTITY = "pm2_5"
DEVICE = "bench-aq-0000"


class Backend(Protocol):
    """What the benchmark needs of a store: load points, read a page, read buckets, its bytes on disk."""

    name: str

    def load(self, points: list[Point]) -> None: ...

    def page(self, since: datetime, until: datetime) -> ReadingsPage: ...

    def buckets(self, since: datetime, until: datetime, bucket_s: int) -> list[ReadingBucket]: ...

    def disk_bytes(self) -> int: ...


class SQLiteBackend:
    """The embedded store's readings table in a file of its own, loaded through its time-series write."""

    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "series.sqlite"
        self.store = SQLiteTimeSeries(SQLiteStore(self.path), owns_store=True)
        self.store.open()

    def load(self, points: list[Point]) -> None:
        self.store.write(points)

    def page(self, since: datetime, until: datetime) -> ReadingsPage:
        return self.store.readings_page(DEVICE, QUANTITY, since, until, 100_000)

    def buckets(self, since: datetime, until: datetime, bucket_s: int) -> list[ReadingBucket]:
        return self.store.aggregate(DEVICE, QUANTITY, since, until, bucket_s, 10_000)

    def disk_bytes(self) -> int:
        self.store.store.read(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return sum(p.stat().st_size for p in self.path.parent.glob("series.sqlite*"))

    def close(self) -> None:
        self.store.close()


class VictoriaProcess(LoggedProcess):
    """Debian's victoria-metrics on a free loopback port, as the tests and docs/production.md start it."""

    name = "victoria-metrics"

    def __init__(self, stack: contextlib.ExitStack, directory: Path) -> None:
        binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        if not Path(binary).exists():
            raise BenchError("victoria-metrics is not installed (Debian package victoria-metrics)")
        self.data = directory / "data"
        self.log = directory / "victoria-metrics.log"
        self.port = free_port(HOST)
        directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"-httpListenAddr={HOST}:{self.port}", f"-storageDataPath={self.data}",
                 "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=0s", "-search.disableCache",
                 "-retentionPeriod=100y", "-loggerLevel=WARN"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(self.stop)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=1).text.strip() == "OK":
                    return
            time.sleep(0.1)
        raise BenchError(f"victoria-metrics did not answer /health within {START_S:.0f} s")


class VictoriaBackend:
    """VictoriaMetrics through the hub's time-series store."""

    name = "victoriametrics"

    def __init__(self, stack: contextlib.ExitStack, directory: Path) -> None:
        self.process = VictoriaProcess(stack, directory)
        self.store = VictoriaMetrics(f"victoriametrics+http://{HOST}:{self.process.port}", timeout_s=120)
        self.store.open()

    def load(self, points: list[Point]) -> None:
        self.store.write(points)

    def page(self, since: datetime, until: datetime) -> ReadingsPage:
        return self.store.readings_page(DEVICE, QUANTITY, since, until, 100_000)

    def buckets(self, since: datetime, until: datetime, bucket_s: int) -> list[ReadingBucket]:
        return self.store.aggregate(DEVICE, QUANTITY, since, until, bucket_s, 10_000)

    def disk_bytes(self) -> int:
        """Bytes on disk after a clean stop (which writes every in-memory part to disk): call it last."""
        self.process.stop()
        size = sum(p.stat().st_size for p in self.process.data.rglob("*") if p.is_file())
        return size

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Result:
    """One backend at one size: load rate, query medians and disk use."""

    backend: str
    stored: int
    load_per_s: float
    raw_ms: float
    buckets_1h_ms: float
    buckets_5min_ms: float
    bytes_per_reading: float


def points(total: int) -> Iterator[list[Point]]:
    """``total`` readings (rounded up to whole device-weeks) in batches: devices x WEEKS weeks of 10-second
    PM2.5 ending at WEEK_END; the queried device is the first."""
    devices = max(1, math.ceil(total / (WEEKS * PER_WEEK)))
    first = WEEK_END - WEEKS * WEEK
    batch: list[Point] = []
    for d in range(devices):
        device = f"bench-aq-{d:04d}"
        noise = random.Random(d)  # a real clock's jitter and a real sensor's noise: patterns would compress away
        for i in range(WEEKS * PER_WEEK):
            ts = first + timedelta(seconds=i * INTERVAL_S, milliseconds=noise.randrange(250))
            value = round(max(0.0, 18 + 12 * math.sin(i / 360 + d) + noise.gauss(0, 3)), 1)
            batch.append(Point(device=device, seq=i // PER_MESSAGE + 1, idx=i % PER_MESSAGE, ts=ts,
                               sensor="pm", quantity=QUANTITY, value=value, unit="ug/m3"))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def measure(backend: Backend, total: int, repeats: int) -> Result:
    """Load ``total`` readings into ``backend``, then time the week's queries."""
    stored = 0
    began = time.perf_counter()
    for batch in points(total):
        backend.load(batch)
        stored += len(batch)
        if stored % 1_000_000 < BATCH:
            progress(f"{backend.name}: {stored:,} readings loaded")
    load_s = time.perf_counter() - began
    since, until = WEEK_END - WEEK, WEEK_END
    page = backend.page(since, until)
    if len(page.rows) != PER_WEEK:
        raise BenchError(f"{backend.name}: the week has {len(page.rows)} readings, not {PER_WEEK}")
    hours = backend.buckets(since, until, 3600)
    if len(hours) != 7 * 24 or sum(b.count for b in hours) != PER_WEEK:
        raise BenchError(f"{backend.name}: {len(hours)} hourly buckets of {sum(b.count for b in hours)} readings")
    raw = _median_ms(lambda: backend.page(since, until), repeats)
    b1h = _median_ms(lambda: backend.buckets(since, until, 3600), repeats)
    b5m = _median_ms(lambda: backend.buckets(since, until, 300), repeats)
    return Result(backend.name, stored, stored / load_s, raw, b1h, b5m, backend.disk_bytes() / stored)


def run(sizes: list[int], backends: list[str], repeats: int, results: list[Result]) -> None:
    """Every backend at every size, each in a fresh directory."""
    for size in sizes:
        for name in backends:
            with contextlib.ExitStack() as stack:
                directory = work_dir(stack)
                backend: SQLiteBackend | VictoriaBackend = (
                    SQLiteBackend(directory) if name == "sqlite" else VictoriaBackend(stack, directory / "vm"))
                stack.callback(backend.close)
                results.append(measure(backend, size, repeats))
                progress(f"{name} at {size:,}: {results[-1]}")


def report(results: list[Result]) -> str:
    """The results as a table."""
    rows = [["backend", "stored", "load/s", "week raw ms", "week 1 h buckets ms", "week 5 min buckets ms",
             "bytes/reading"]]
    rows += [[r.backend, f"{r.stored:,}", f"{r.load_per_s:,.0f}", f"{r.raw_ms:.1f}", f"{r.buckets_1h_ms:.1f}",
              f"{r.buckets_5min_ms:.1f}", f"{r.bytes_per_reading:.1f}"] for r in results]
    return "\n".join(table(rows))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="stored readings (rounded up to whole device-weeks)")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "victoriametrics"],
                        default=["sqlite", "victoriametrics"])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each query (median)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load, query, report; exit 2 when a run fails."""
    args = _parser().parse_args(argv)
    results: list[Result] = []
    status = run_guarded(lambda: run(args.sizes, args.backends, args.repeats, results))
    if status is not None:
        return status
    print(report(results))
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
