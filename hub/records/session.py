"""The one database handle domain code sees: a :class:`Session` inside a records store's transaction.

SQL run through a session is portable between the engines: ``?`` placeholders only, ``INSERT ... ON CONFLICT
(...) DO NOTHING`` (not SQLite's own conflict clauses), ``RETURNING id`` (not the cursor's last row id), no
functions of one engine (date formatting, JSON, ``GREATEST``). What cannot be written portably goes through the
engine's :class:`hub.records.dialect.Dialect`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol

Engine = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows an UPDATE, DELETE or INSERT changed."""
        ...

    @property
    def description(self) -> Any:
        """The result's columns, each a sequence whose first item is the column's name."""
        ...

    def fetchone(self) -> Any:
        """The next row (a tuple), or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one by one."""
        ...


class Session(Protocol):
    """A connection inside one transaction of a records store; never committed by the code that receives it."""

    @property
    def engine(self) -> Engine:
        """Which engine runs the statements (for the dialect; domain SQL does not branch on it)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""
        ...
