"""Versioned schema migrations: ``migrations/<engine>/NNNN_name.sql`` (or ``.py`` with ``upgrade(session)``),
applied in order, each recorded in ``schema_migrations``.

The hub applies what is pending when it opens its records store; ``nakhon hub migrate`` does it by hand. All
pending migrations run in one write transaction under the engine's migration lock, so two hub processes
starting together apply each migration once, and a migration that fails leaves the schema as it was.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from edge.contract import format_timestamp
from hub.errors import StoreError
from hub.records.dialect import Dialect
from hub.records.session import Session

MIGRATIONS: Final = Path(__file__).with_name("migrations")
_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")

T = TypeVar("T")

TABLE: Final = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


@dataclass(frozen=True)
class Migration:
    """One schema change of one engine."""

    version: int
    name: str
    path: Path

    def apply(self, session: Session, dialect: Dialect) -> None:
        """Run the migration's statements (or its ``upgrade``) inside the caller's transaction."""
        if self.path.suffix == ".sql":
            for statement in dialect.split_script(self.path.read_text(encoding="utf-8")):
                session.execute(statement)
            return
        spec = importlib.util.spec_from_file_location(f"nakhon_migration_{self.path.stem}", self.path)
        if spec is None or spec.loader is None:
            raise StoreError(f"cannot load the migration {self.path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        upgrade: Callable[[Session], None] = module.upgrade
        upgrade(session)


def migrations(engine: str, root: Path = MIGRATIONS) -> list[Migration]:
    """Every migration of ``engine``, oldest first."""
    found = []
    for path in sorted((root / engine).iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a version in {root / engine}")
    return found


def pending(session: Session, engine: str, root: Path = MIGRATIONS) -> list[Migration]:
    """The migrations of ``engine`` not yet recorded in the database."""
    applied = {row[0] for row in session.execute("SELECT version FROM schema_migrations")}
    return [m for m in migrations(engine, root) if m.version not in applied]


def upgrade(session: Session, dialect: Dialect, root: Path = MIGRATIONS) -> list[Migration]:
    """Inside one write transaction: apply every pending migration in order; returns those applied."""
    dialect.lock_migrations(session)
    session.execute(TABLE)
    todo = pending(session, dialect.engine, root)
    for migration in todo:
        try:
            migration.apply(session, dialect)
        except StoreError:
            raise
        except (OSError, ValueError) as err:
            raise StoreError(f"migration {migration.path.name} failed: {err}") from err
        session.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, format_timestamp(datetime.now(UTC))))
    return todo


def describe(applied: list[Migration]) -> list[str]:
    """What ``nakhon hub migrate`` prints: one line per migration applied, or that the schema is up to date."""
    return [f"applied {m.version:04d} {m.name}" for m in applied] or ["up to date"]
