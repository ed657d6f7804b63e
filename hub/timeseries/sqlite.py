"""Readings in the records store's SQLite file: the ``readings`` table (and ``latest``, the newest per quantity).

When the records store is this same file, ingest writes the readings in the records commit itself (one
transaction, the embedded default's fast path: :func:`insert_readings`); :meth:`SQLiteTimeSeries.write` is the
path of a separate time-series store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from hub.errors import RecordRejected, StoreError, TimeSeriesUnavailable
from hub.records.session import Session
from hub.store.base import ReadingBucket, ReadingKey, ReadingsPage, epoch_ms
from hub.timeseries.base import Point, ReadingColumns, sorted_units

if TYPE_CHECKING:
    from hub.store.sqlite import SQLiteStore


def from_ms(value: int) -> datetime:
    """The UTC time ``value`` milliseconds after the epoch."""
    return datetime.fromtimestamp(value / 1000, UTC)


Row = tuple[str, int, int, int, str, str, Any, bool, str | None]
"""device, seq, idx, ts (ms), sensor, quantity, value, is_bool, unit."""


def insert_readings(db: Session, rows: Sequence[Row], latest: dict[tuple[str, str, str], int]) -> None:
    """Inside a write: store readings (one per (device, seq, idx)) and move each quantity's newest time."""
    if not rows:
        return
    db.executemany("INSERT INTO readings (device, seq, idx, ts, sensor, quantity, value, is_bool, unit) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq, idx) DO NOTHING", rows)
    db.executemany(
        "INSERT INTO latest (device, sensor, quantity, ts) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (device, sensor, quantity) DO UPDATE SET ts = max(ts, excluded.ts)",
        [(*k, ts) for k, ts in latest.items()])


_READING_JSON = (
    """'{"ts":"' || strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000.0, 'unixepoch') || '","sensor":' || json_quote(sensor)"""
    """ || ',"quantity":' || json_quote(quantity) || ',"value":',"""
    """ CASE WHEN is_bool THEN iif(value, 'true', 'false') WHEN typeof(value) = 'real' THEN NULL"""
    """ ELSE json_quote(value) END, value,"""
    """ ',"unit":' || json_quote(unit) || ',"seq":' || seq || '}'"""
)
"""A reading as the head of its JSON object, its value as JSON text (NULL for a float, which Python writes),
the value itself and the tail of the object: the API's ``ReadingView``, built in SQLite."""


_SAME_SERIES: Final = 1
"""Bit of a columns row: the reading has the sensor and unit of the page's first reading."""
_BOOL: Final = 2
"""Bit of a columns row: the reading is a boolean (stored as 0 or 1)."""


def _readings_where(device: str, quantity: str | None, since: datetime | None,
                    until: datetime | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) of a device's readings, optionally one quantity, in a window."""
    where, args = "device = ?", list[Any]([device])
    value: str | int | None
    for clause, value in (("quantity = ?", quantity), ("ts >= ?", epoch_ms(since) if since else None),
                          ("ts < ?", epoch_ms(until) if until else None)):
        if value is not None:
            where += f" AND {clause}"
            args.append(value)
    return where, args


class SQLiteTimeSeries:
    """The :class:`hub.timeseries.base.TimeSeries` on the readings table of a :class:`SQLiteStore`'s file (the
    store opens and closes the file)."""

    def __init__(self, store: SQLiteStore, owns_store: bool = False) -> None:
        self.store = store
        self.owns_store = owns_store
        """The file is this time series' own (``sqlite:///PATH``), not the records store's: open and close it."""

    def open(self) -> None:
        """Open the file when it is this time series' own (the records store opens a shared one)."""
        if self.owns_store:
            self.store.open()

    def close(self) -> None:
        """Close the file when it is this time series' own."""
        if self.owns_store:
            self.store.close()

    def write(self, points: Sequence[Point]) -> None:
        """Store points in one transaction; a point already stored is kept once."""
        rows: list[Row] = []
        latest: dict[tuple[str, str, str], int] = {}
        append = rows.append
        for p in points:
            ts = epoch_ms(p.ts)
            value = p.value
            append((p.device, p.seq, p.idx, ts, p.sensor, p.quantity, value, value.__class__ is bool, p.unit))
            key = (p.device, p.sensor, p.quantity)
            if latest.get(key, -1) < ts:
                latest[key] = ts
        try:
            self.store.write(lambda db: insert_readings(db, rows, latest))
        except RecordRejected:
            raise
        except StoreError as err:
            raise TimeSeriesUnavailable(f"cannot write {len(rows)} readings: {err}") from err

    def readings_page(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
                      limit: int, after: ReadingKey | None = None) -> ReadingsPage:
        """Readings rendered by SQLite as the API's JSON objects but their floats (SQLite writes 15 digits;
        Python's repr round-trips)."""
        where, args = _readings_where(device, quantity, since, until)
        if after is not None:
            where += " AND (ts, seq, idx) > (?, ?, ?)"
            args += after
        sql = f"SELECT {_READING_JSON}, ts, seq, idx FROM readings WHERE {where} ORDER BY ts, seq, idx LIMIT ?"  # noqa: S608
        found = self.store.read(lambda db: db.execute(sql, (*args, limit + 1)).fetchall())
        page = found[:limit]
        rows = [f"{head}{text}{tail}" if text is not None else f"{head}{value!r}{tail}"
                for head, text, value, tail, _, _, _ in page]
        last = page[-1] if page else None
        return ReadingsPage(rows=rows, next_after=(last[4], last[5], last[6]) if last and len(found) > limit else None)

    def readings_columns(self, device: str, quantity: str, sensor: str | None, since: datetime, until: datetime,
                         limit: int, after: ReadingKey | None = None) -> ReadingColumns:
        """Times and values fetched as they are stored and written by ``json.dumps`` in one call per column: no
        JSON built per reading, in SQLite or in Python (SQLite 3.40 formats floats several times slower than
        Python). Besides them each row brings one small int (:data:`_SAME_SERIES`, :data:`_BOOL`) rather than its
        sensor, unit and key: a page that mixes sensors or units is looked at again for them, and a cut page for
        the key of its last reading."""
        where, args = _readings_where(device, quantity, since, until)
        if sensor is not None:
            where += " AND sensor = ?"
            args.append(sensor)
        if after is not None:
            where += " AND (ts, seq, idx) > (?, ?, ?)"
            args += after
        rows = f"FROM readings WHERE {where} ORDER BY ts, seq, idx"

        def work(db: Session) -> tuple[list[Any], list[Any], list[tuple[str, str | None]], ReadingKey | None]:
            db.execute("BEGIN")  # one snapshot for the page, its sensors and units and its last key
            try:
                first = db.execute(f"SELECT sensor, unit {rows} LIMIT 1", args).fetchone()
                if first is None:
                    return [], [], [], None
                found = db.execute(f"SELECT ts, value, (sensor IS ? AND unit IS ?) + {_BOOL} * is_bool {rows} "
                                   "LIMIT ?", (*first, *args, limit + 1)).fetchall()
                page = found[:limit]
                values = list(map(itemgetter(1), page))
                codes = set(map(itemgetter(2), page))
                if any(code & _BOOL for code in codes):
                    values = [bool(v) if code & _BOOL else v for _, v, code in page]
                series = [first] if all(code & _SAME_SERIES for code in codes) else db.execute(
                    f"SELECT DISTINCT sensor, unit FROM (SELECT sensor, unit {rows} LIMIT ?)",  # noqa: S608
                    (*args, limit)).fetchall()
                key = None
                if len(found) > limit:
                    seq, idx = db.execute(f"SELECT seq, idx {rows} LIMIT 1 OFFSET ?", (*args, limit - 1)).fetchone()
                    key = (page[-1][0], seq, idx)
                return list(map(itemgetter(0), page)), values, series, key
            finally:
                db.execute("COMMIT")

        ts, values, series, next_after = self.store.read(work)
        return ReadingColumns(count=len(ts), ts=json.dumps(ts, separators=(",", ":")),
                              values=json.dumps(values, separators=(",", ":"), ensure_ascii=False),
                              sensors=tuple(sorted({s for s, _ in series})), units=sorted_units(u for _, u in series),
                              next_after=next_after)

    def aggregate(self, device: str, quantity: str, since: datetime | None, until: datetime | None,
                  bucket_s: float, limit: int, origin: datetime | None = None) -> list[ReadingBucket]:
        """Numeric readings of one quantity per bucket; see :meth:`hub.timeseries.base.TimeSeries.aggregate`."""
        where, args = _readings_where(device, quantity, since, until)
        width, zero = max(1, round(bucket_s * 1000)), epoch_ms(origin) if origin else 0
        sql = (f"SELECT ((ts - ?) / ?) * ? + ?, count(*), min(value), avg(value), max(value) FROM readings "  # noqa: S608
               f"WHERE {where} AND is_bool = 0 AND typeof(value) IN ('integer', 'real') "
               f"GROUP BY 1 ORDER BY 1 LIMIT ?")
        found = self.store.read(lambda db: db.execute(sql, (zero, width, width, zero, *args, limit)).fetchall())
        return [ReadingBucket(start=from_ms(start), count=n, min=lo, avg=mean, max=hi)
                for start, n, lo, mean, hi in found]

    def latest(self, device: str) -> dict[tuple[str, str], datetime]:
        """Newest reading time per (sensor, quantity)."""
        rows = self.store.read(lambda db: db.execute("SELECT sensor, quantity, ts FROM latest WHERE device = ?",
                                                     (device,)).fetchall())
        return {(s, q): from_ms(ts) for s, q, ts in rows}

    def quantities(self, device: str, since: datetime | None = None,
                   until: datetime | None = None) -> list[tuple[str, str, str | None]]:
        """(sensor, quantity, unit) a device sent: the unit of the newest reading, or each unit in a window."""
        if since is None and until is None:
            sql = ("SELECT l.sensor, l.quantity, (SELECT unit FROM readings r WHERE r.device = l.device "
                   "AND r.quantity = l.quantity AND r.ts = l.ts LIMIT 1) FROM latest l WHERE l.device = ? "
                   "ORDER BY l.sensor, l.quantity")
            args: list[Any] = [device]
        else:
            where, args = _readings_where(device, None, since, until)
            sql = f"SELECT DISTINCT sensor, quantity, unit FROM readings WHERE {where} ORDER BY 1, 2, 3"  # noqa: S608
        return [(s, q, u) for s, q, u in self.store.read(lambda db: db.execute(sql, args).fetchall())]

    def purge_before(self, cutoff: datetime) -> int:
        """Delete readings older than ``cutoff`` (and the newest-time rows that only they kept)."""
        edge = epoch_ms(cutoff)

        def work(db: Session) -> int:
            gone = db.execute("DELETE FROM readings WHERE ts < ?", (edge,)).rowcount
            db.execute("DELETE FROM latest WHERE ts < ?", (edge,))
            return int(gone)
        return self.store.write(work)

    def healthy(self) -> bool:
        """Whether the file answers."""
        try:
            self.store.read(lambda db: db.execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True
