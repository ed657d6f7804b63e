"""The SQLite engine: its session, its connections (WAL, busy timeout) and its dialect.

Everything SQLite-specific outside the migrations is here; the store and the domain modules see a
:class:`hub.records.session.Session`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from hub.records.session import Session

if TYPE_CHECKING:
    from hub.gis.reports import Zones

BUSY_TIMEOUT_MS: Final = 30_000


class SQLiteSession:
    """A :class:`hub.records.session.Session` over one ``sqlite3.Connection`` (in autocommit mode: the store
    opens and ends its transactions)."""

    engine: Final[Literal["sqlite"]] = "sqlite"
    __slots__ = ("connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement."""
        return self.connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row."""
        self.connection.executemany(sql, rows)


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the file at ``path`` in autocommit mode, waiting up to 30 s for a lock."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if read_only:
        db.execute("PRAGMA query_only = ON")
    return db


def prepare_file(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (readers alongside the writer) with the durability ingest relies on."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


def columns(session: Session, table: str) -> set[str]:
    """The column names of ``table`` (for migrations that upgrade tables made before a column existed)."""
    return {row[1] for row in session.execute(f"PRAGMA table_info({table})")}


def _json_path(key: str) -> str:
    if not key.replace("_", "").isalnum():
        raise ValueError(f"not a plain JSON key: {key!r}")
    return f"'$.{key}'"


class SQLiteDialect:
    """SQLite's :class:`hub.records.dialect.Dialect`: zones looked up in Python (shapely), JSON1 functions."""

    engine: Literal["sqlite"] = "sqlite"
    insertion_order = "rowid"

    def split_script(self, script: str) -> list[str]:
        """Statements ended by ``;`` as SQLite parses them (so a trigger's body stays in one piece)."""
        statements, pending = [], ""
        for line in script.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                statements.append(pending.strip())
                pending = ""
        if pending.strip():
            raise ValueError(f"unterminated statement in migration: {pending.strip()[:80]!r}")
        return statements

    def lock_migrations(self, session: Session) -> None:
        """Nothing to do: the migration transaction is BEGIN IMMEDIATE, which already excludes other writers."""

    def load_zones(self, session: Session, zones: Zones) -> None:
        """Nothing to do: :meth:`zone_at` asks the zones in memory."""

    def zone_at(self, session: Session, zones: Zones, lon: float, lat: float) -> str | None:
        """Point-in-polygon on the prepared shapely geometries."""
        return zones.locate(lon, lat)

    def json_keys_present(self, column: str, keys: Sequence[str]) -> str:
        """``json_type`` of any key is not NULL."""
        return " OR ".join(f"json_type({column}, {_json_path(k)}) IS NOT NULL" for k in keys)

    def json_without_keys(self, column: str, keys: Sequence[str]) -> str:
        """``json_remove`` of every key."""
        return f"json_remove({column}, {', '.join(_json_path(k) for k in keys)})"


DIALECT: Final = SQLiteDialect()
