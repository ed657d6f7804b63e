"""The embedded default store: one SQLite file (WAL) in the hub's data directory.

Ingest writes through one connection in batched transactions; API reads use their own connections,
one per thread, which WAL lets run alongside the writer. The store's domain SQL is the engine-neutral
:class:`hub.store.records.RecordsStore`'s; this module supplies the connections and the readings table.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from hub.errors import RecordRejected, StoreError
from hub.records.migrate import upgrade
from hub.records.session import Session
from hub.records.sqlite import DIALECT, SQLiteSession, connect, prepare_file
from hub.store.base import StoredReading, epoch_ms
from hub.store.records import RecordsStore
from hub.timeseries.sqlite import Row, SQLiteTimeSeries, from_ms, insert_readings

T = TypeVar("T")

_REFUSED_RECORD = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError)
"""Errors about the records written rather than the database: the write is refused, not retried."""


class _Reader:
    """One thread's read-only connection, and the lock it is used under (so that :meth:`SQLiteStore.close`, on
    another thread, never closes it in the middle of a statement: SQLite would read freed memory)."""

    __slots__ = ("db", "lock")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db: sqlite3.Connection | None = db
        self.lock = threading.RLock()


class SQLiteStore(RecordsStore):
    """The :class:`hub.store.base.SqlStore` on one SQLite file."""

    def __init__(self, path: Path, deadletter_keep_bytes: int = 4096,
                 schemas: Sequence[Callable[[Session], None]] = (), readings: bool = True) -> None:
        super().__init__(deadletter_keep_bytes, schemas)
        self.path = path
        self._readings = readings
        self.timeseries = SQLiteTimeSeries(self)
        """The readings in this file: written by :meth:`ingest` itself unless ``readings`` is False (readings then
        go to a separate time-series store)."""
        self._writer: sqlite3.Connection | None = None
        self._session: SQLiteSession | None = None
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[_Reader] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        """Set by :meth:`close` (a thread still running then gets :class:`StoreError`), cleared by :meth:`open`."""

    def open(self) -> None:
        """Create the file if needed and apply the pending migrations (then the ``schemas`` hooks, if any)."""
        self._closed = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_file(self.path)
            db = connect(self.path)
            prepare_file(db)
            for suffix in ("-wal", "-shm"):  # SQLite gives them the store's mode; older files may predate that
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.chmod(0o600)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open the store at {self.path}: {err}") from err
        self._writer, self._session = db, SQLiteSession(db)
        try:
            self.applied = self.write(lambda session: upgrade(session, DIALECT))
            for hook in self._schemas:
                self.write(hook)
        except StoreError:
            self.close()
            raise

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction (committed if it returns, rolled back if it raises)."""
        with self._write_lock:
            db, session = self._w
            try:
                db.execute("BEGIN IMMEDIATE")
                result = work(session)
                db.execute("COMMIT")
                return result
            except _REFUSED_RECORD as err:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise RecordRejected(f"the store refused a record: {type(err).__name__}: {err}") from err
            except sqlite3.Error as err:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"write failed: {err}") from err
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def read(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` on this thread's read-only connection."""
        try:
            with self._reading() as db:
                return work(SQLiteSession(db))
        except sqlite3.Error as err:
            raise StoreError(f"read failed: {err}") from err

    def close(self) -> None:
        """Close every connection; safe to call twice."""
        with self._readers_lock:
            self._closed = True
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = self._session = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:  # each once its thread's statement is over
            with reader.lock:
                if reader.db is not None:
                    reader.db.close()
                    reader.db = None
        self._local = threading.local()

    @property
    def _w(self) -> tuple[sqlite3.Connection, SQLiteSession]:
        if self._writer is None or self._session is None:
            raise StoreError("the store is not open")
        return self._writer, self._session

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's read-only connection (made on first use), held against :meth:`close` while in use."""
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            with self._readers_lock:  # with close(): a reader is either closed by it or never made
                if self._closed:
                    raise StoreError("the store is closed")
                reader = _Reader(connect(self.path, read_only=True))
                self._readers.append(reader)
            self._local.reader = reader
        with reader.lock:
            if reader.db is None:
                raise StoreError("the store is closed")
            yield reader.db

    def _insert_readings(self, db: Session, rows: Sequence[Row], latest: dict[tuple[str, str, str], int]) -> None:
        """Inside :meth:`ingest`'s write: the readings go to this file's readings table in the same commit."""
        insert_readings(db, rows, latest)

    def readings(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
                 limit: int) -> list[StoredReading]:
        """Readings in time order (then seq)."""
        sql = "SELECT ts, sensor, quantity, value, is_bool, unit, seq FROM readings WHERE device = ?"
        args: list[Any] = [device]
        if quantity is not None:
            sql += " AND quantity = ?"
            args.append(quantity)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(epoch_ms(since))
        if until is not None:
            sql += " AND ts < ?"
            args.append(epoch_ms(until))
        sql += " ORDER BY ts, seq, idx LIMIT ?"
        args.append(limit)
        with self._reading() as db:
            rows = db.execute(sql, args).fetchall()
        return [StoredReading(ts=from_ms(ts), sensor=sensor, quantity=q, value=bool(v) if is_bool else v,
                              unit=unit, seq=seq)
                for ts, sensor, q, v, is_bool, unit, seq in rows]


def _private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600), or take a wider mode away from an existing one."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    path.chmod(0o600)

