"""Moving an embedded deployment's records from its SQLite file to PostgreSQL (``nakhon hub migrate-store``).

Every records table is copied (registry, dedup keys, events, dead letters, commands, transactions, ledger,
receipt counters, payments, reconciliations, reports and their history, accounts, audit, alarms, notifications,
the feed), in one PostgreSQL transaction: a failure leaves the target as empty as it was. Ids are kept, so
receipts, reversals and history still refer to the right rows, and the identity sequences continue after the
largest id copied. The target must be empty; the source is only read (after its own pending migrations, as
the hub would apply them at start-up). The file's readings, if any, go to the time-series store the new hub
will use (``--timeseries URL``), written through its :class:`hub.timeseries.base.TimeSeries` interface and
counted back through it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from hub.backends import SQLITE_PREFIX, open_backends
from hub.errors import HubConfigError, StoreError
from hub.records.postgresql import PostgresRecords, PostgresSession
from hub.records.session import Session
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import Point, TimeSeries
from hub.timeseries.sqlite import from_ms

TIMESERIES_TABLES = frozenset({"readings", "latest"})
SEEDED_TABLES = frozenset({"feed_counter"})
"""One-row tables a migration fills in an empty database: replaced by the source's row, not counted as content."""
"""SQLite keeps the time series in the records file; they are not records."""
PARENTS_FIRST = ("users", "alarms", "notifications", "reports", "ledger")
"""Tables other tables refer to, copied before them (the ledger refers to itself: rows go in id order)."""
BATCH = 2000
READINGS_PAGE = 10_000


@dataclass(frozen=True)
class TableCount:
    """One table's rows in the source and in the target after the copy."""

    table: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        """The target holds every row of the source."""
        return self.source == self.target


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL, read as :mod:`hub.backends` reads it (``sqlite:////abs/path``,
    ``sqlite:///relative/path``)."""
    if not url.startswith(SQLITE_PREFIX) or len(url) == len(SQLITE_PREFIX):
        raise HubConfigError(f"{url}: an embedded records URL is sqlite:///PATH")
    return Path(url[len(SQLITE_PREFIX):])


def _tables(session: Session) -> list[str]:
    names = [r[0] for r in session.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                           "'sqlite_%' AND name <> 'schema_migrations'")]
    names = [n for n in names if n not in TIMESERIES_TABLES]
    return [n for n in PARENTS_FIRST if n in names] + sorted(n for n in names if n not in PARENTS_FIRST)


def _columns(session: Session, table: str) -> list[str]:
    return [r[1] for r in session.execute(f"PRAGMA table_info({table})")]


def _target_columns(session: Session, table: str) -> tuple[set[str], bool]:
    """The columns the target can be given (not generated ones), and whether it has an identity ``id``."""
    rows = session.execute("SELECT column_name, is_generated, is_identity, identity_generation FROM "
                           "information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
                           (table,)).fetchall()
    if not rows:
        raise StoreError(f"the target has no table {table!r}: is its schema older than the source's?")
    writable = {name for name, generated, _, identity in rows if generated == "NEVER" and identity != "ALWAYS"}
    return writable, any(name == "id" and is_identity == "YES" for name, _, is_identity, _ in rows)


def _count(session: Session, table: str) -> int:
    return int(session.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (our table names)


def _order(session: Session, table: str) -> str:
    """``rowid`` (insertion order: ids and the order of history rows are kept), or the primary key of a table
    made WITHOUT ROWID."""
    sql = session.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    if "WITHOUT ROWID" not in sql.upper():
        return "rowid"
    keys = sorted((r[5], r[1]) for r in session.execute(f"PRAGMA table_info({table})") if r[5])
    return ", ".join(name for _, name in keys)


def _stream(session: Session, table: str, columns: str, target: PostgresSession, insert: str,
            progress: Progress, total: int) -> int:
    """Copy the rows of one table in batches, as the source's cursor yields them."""
    cursor = session.execute(f"SELECT {columns} FROM {table} ORDER BY {_order(session, table)}")  # noqa: S608
    done = 0
    while rows := list(islice(cursor, BATCH)):
        target.executemany(insert, rows)
        done += len(rows)
        progress(table, done, total)
    return done


Progress = Callable[[str, int, int], None]


def bar(out: TextIO) -> Progress:
    """A progress bar on ``out``: one line per table, redrawn in place as its rows are copied."""
    def show(table: str, done: int, total: int) -> None:
        width = 30
        filled = width if total == 0 else width * done // total
        out.write(f"\r{table:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            out.write("\n")
        out.flush()
    return show


def _copy(source: SQLiteStore, target: PostgresSession, tables: Sequence[str], progress: Progress) -> None:
    for table in tables:
        if table not in SEEDED_TABLES and _count(target, table):
            raise StoreError(f"the target is not empty ({table} has rows): migrate-store copies into an empty "
                             "database only")
    for table in tables:
        writable, identity = _target_columns(target, table)
        names = [c for c in source.read(partial(_columns, table=table)) if c in writable]
        total = source.read(partial(_count, table=table))
        listed = ", ".join(names)
        insert = f"INSERT INTO {table} ({listed}) VALUES ({', '.join('?' * len(names))})"  # noqa: S608
        progress(table, 0, total)
        if table in SEEDED_TABLES:
            target.execute(f"DELETE FROM {table}")  # noqa: S608 (our table names)
        source.read(partial(_stream, table=table, columns=listed, target=target, insert=insert, progress=progress,
                            total=total))
        if identity:
            target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                           f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")


def _points(session: Session, series: TimeSeries, progress: Progress, total: int) -> None:
    """Write the file's readings to the time-series store in batches, in (device, seq, idx) order."""
    cursor = session.execute("SELECT device, seq, idx, ts, sensor, quantity, value, is_bool, unit FROM readings "
                             "ORDER BY device, seq, idx")
    done = 0
    while rows := list(islice(cursor, BATCH)):
        series.write([Point(device, seq, idx, from_ms(ts), sensor, quantity, bool(value) if is_bool else value, unit)
                      for device, seq, idx, ts, sensor, quantity, value, is_bool, unit in rows])
        done += len(rows)
        progress("readings", done, total)


def _series_count(series: TimeSeries, devices: Sequence[str]) -> int:
    """How many readings the time-series store holds for these devices, counted through its own pages."""
    count = 0
    for device in devices:
        after = None
        while True:
            page = series.readings_page(device, None, None, None, READINGS_PAGE, after)
            count += len(page.rows)
            if page.next_after is None:
                break
            after = page.next_after
    return count


def _copy_readings(source: SQLiteStore, timeseries_url: str, progress: Progress) -> TableCount:
    series = open_backends(None, timeseries_url, source.path.parent).timeseries
    total = source.read(partial(_count, table="readings"))
    series.open()
    try:
        progress("readings", 0, total)
        source.read(partial(_points, series=series, progress=progress, total=total))
        devices = source.read(lambda s: [r[0] for r in s.execute("SELECT DISTINCT device FROM readings")])
        return TableCount("readings", total, _series_count(series, devices))
    finally:
        series.close()


def migrate_store(source_url: str, target_url: str, *, password_file: Path | None = None,
                  timeseries_url: str | None = None, progress: Progress | None = None) -> list[TableCount]:
    """Copy every records table from the SQLite file to the empty PostgreSQL database, and its readings to the
    time-series store at ``timeseries_url`` if given; returns the counts of both sides per table, taken after
    the commit."""
    path = sqlite_path(source_url)
    if not path.is_file():
        raise HubConfigError(f"{path}: no such SQLite file")
    show = progress or bar(sys.stderr)
    source = SQLiteStore(path)
    target = PostgresRecords(target_url, password_file=password_file)
    try:
        source.open()
        target.open()
        tables = source.read(_tables)
        target.write(lambda s: _copy(source, s, tables, show))
        counts = [TableCount(t, source.read(partial(_count, table=t)), target.read(partial(_count, table=t)))
                  for t in tables]
        if timeseries_url is not None:
            counts.append(_copy_readings(source, timeseries_url, show))
        return counts
    finally:
        source.close()
        target.close()


def report(counts: Sequence[TableCount]) -> list[str]:
    """The verification printed at the end: each table's rows on both sides."""
    lines = [f"{'table':<22} {'sqlite':>10} {'postgresql':>10}"]
    lines += [f"{c.table:<22} {c.source:>10} {c.target:>10}{'' if c.ok else '  MISMATCH'}" for c in counts]
    bad = [c.table for c in counts if not c.ok]
    lines.append(f"{sum(c.target for c in counts)} rows in {len(counts)} tables: "
                 + ("verified" if not bad else f"MISMATCH in {', '.join(bad)}"))
    return lines


def run(source_url: str, target_url: str, password_file: Path | None = None, timeseries_url: str | None = None,
        out: Any = None) -> int:
    """``nakhon hub migrate-store``: copy, print the verification, 0 when every count matches."""
    out = out or sys.stdout
    try:
        counts = migrate_store(source_url, target_url, password_file=password_file, timeseries_url=timeseries_url)
    except (StoreError, HubConfigError) as err:
        print(f"nakhon: {err}", file=sys.stderr)
        return 1
    print("\n".join(report(counts)), file=out)
    return 0 if all(c.ok for c in counts) else 1
