"""Versioned migrations: a database made before them upgrades in place, data intact; a second run applies nothing."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from hub.errors import StoreError
from hub.records.migrate import migrations
from hub.store.sqlite import SQLiteStore
from nakhon.cli import main

BEFORE = Path(__file__).with_name("fixtures") / "hub-schema-before-migrations.sql"


def _old_database(path: Path) -> None:
    """A hub database as the previous release left it, with a device, a ledger entry, a user and an audit row."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(BEFORE.read_text(encoding="utf-8"))
        db.execute("INSERT INTO devices (device, first_seen, last_seen, min_seq, max_seq, received) "
                   "VALUES ('kk-aq-0001', 1.0, 2.0, 1, 10, 9)")
        db.execute("INSERT INTO ledger (at, local_date, entry, office, fiscal_year, receipt_no, device, service, "
                   "method, amount_satang) VALUES ('2026-01-01T00:00:00.000Z', '2026-01-01', 'payment', 'kkc-hq', "
                   "2569, 'KKC-2569-000001', 'kk-kiosk-0001', 'garbage-monthly', 'cash', 4000)")
        db.execute("INSERT INTO users (name, password_hash, roles, disabled, created_at, changed_at) "
                   "VALUES ('malee', 'hash', 'operator', 0, 1.0, 1.0)")
        db.execute("INSERT INTO audit (at, user, address, action, object) "
                   "VALUES ('2026-01-01T00:00:00.000Z', 'cli', 'local', 'user.add', 'user/malee')")
        db.commit()


def _schema(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every table's columns (name, declared type) and every index and trigger's name."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
                                          "('sqlite_sequence', 'schema_migrations') ORDER BY name")]
        out = {t: [(r[1], r[2]) for r in db.execute(f"PRAGMA table_info({t})")] for t in names}
        out["(indexes, triggers)"] = [(r[0], r[1]) for r in db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL "
            "ORDER BY name")]
    return out


def test_a_database_made_before_migrations_upgrades_in_place_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    _old_database(path)
    store = SQLiteStore(path)
    store.open()
    try:
        assert [m.version for m in store.applied] == [m.version for m in migrations("sqlite")]
        device = store.device("kk-aq-0001")
        assert device is not None and (device.received, device.lost) == (9, 1)
        assert store.read(lambda db: db.execute("SELECT receipt_no, amount_satang FROM ledger").fetchall()) == [
            ("KKC-2569-000001", 4000)]
        assert store.read(lambda db: db.execute("SELECT name FROM users").fetchall()) == [("malee",)]
        with pytest.raises(StoreError, match="append-only"):
            store.write(lambda db: db.execute("UPDATE ledger SET amount_satang = 1"))
    finally:
        store.close()
    again = SQLiteStore(path)
    again.open()
    again.close()
    assert again.applied == []


def test_a_new_database_gets_the_same_schema_as_an_upgraded_one(tmp_path: Path) -> None:
    _old_database(tmp_path / "old.sqlite")
    for name in ("old.sqlite", "new.sqlite"):
        store = SQLiteStore(tmp_path / name)
        store.open()
        store.close()
    assert _schema(tmp_path / "new.sqlite") == _schema(tmp_path / "old.sqlite")


def test_hub_migrate_prints_what_it_applied_then_that_the_store_is_up_to_date(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _old_database(tmp_path / "hub.sqlite")
    assert main(["hub", "migrate", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {m.version:04d} {m.name}" for m in migrations("sqlite")]
    assert main(["hub", "migrate", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["up to date"]


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE commands (cmd_id TEXT PRIMARY KEY, device TEXT NOT NULL)")  # no name, args...
        db.commit()
    with pytest.raises(StoreError):
        SQLiteStore(path).open()
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"commands"}
