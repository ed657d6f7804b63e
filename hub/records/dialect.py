"""The few statements that cannot be written portably, one implementation per engine.

Each engine module (``hub.records.sqlite``, ``hub.records.postgresql``) defines ``DIALECT``, an object with
these methods; :func:`dialect_for` imports the module only when its engine is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

from hub.errors import HubConfigError
from hub.records.session import Engine, Session

if TYPE_CHECKING:
    from hub.gis.reports import Zones


class Dialect(Protocol):
    """What differs between engines beyond portable SQL."""

    @property
    def engine(self) -> Engine:
        """The engine this dialect speaks for."""
        ...

    @property
    def insertion_order(self) -> str:
        """The column that orders the rows of a table without an id column as they were inserted (history
        tables): SQLite's ``rowid``; other engines give those tables a generated column of that name."""
        ...

    def split_script(self, script: str) -> list[str]:
        """A migration file's text as the statements to execute, in order."""
        ...

    def lock_migrations(self, session: Session) -> None:
        """Inside the migration transaction: keep a second hub process from migrating at the same time."""
        ...

    def load_zones(self, session: Session, zones: Zones) -> None:
        """Inside a write: make the zones known to :meth:`zone_at` (a no-op where the lookup runs in Python)."""
        ...

    def zone_at(self, session: Session, zones: Zones, lon: float, lat: float) -> str | None:
        """The zone containing the point (WGS 84), or None: point-in-polygon."""
        ...

    def json_keys_present(self, column: str, keys: Sequence[str]) -> str:
        """A condition true where the JSON object text in ``column`` has any of ``keys``."""
        ...

    def json_without_keys(self, column: str, keys: Sequence[str]) -> str:
        """An expression: the JSON object text in ``column`` without ``keys``."""
        ...


_MODULES: dict[str, str] = {"sqlite": "hub.records.sqlite", "postgresql": "hub.records.postgresql"}


def dialect_for(engine: str) -> Dialect:
    """The dialect of ``engine``, importing its module on first use."""
    try:
        module = importlib.import_module(_MODULES[engine])
    except KeyError:
        raise HubConfigError(f"no records engine {engine!r} (known: {', '.join(_MODULES)})") from None
    except ModuleNotFoundError as err:
        raise HubConfigError(f"the {engine} records engine is not installed ({_MODULES[engine]}: {err})") from err
    return cast(Dialect, module.DIALECT)


def dialect_of(session: Session) -> Dialect:
    """The dialect of the engine behind ``session``."""
    return dialect_for(session.engine)
