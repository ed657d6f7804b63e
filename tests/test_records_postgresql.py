"""The PostgreSQL records store on a real PostgreSQL 15 + PostGIS: the URL and its secret, the statement rewrite,
migrations under concurrency, append-only ledger and audit, gapless receipts, dedup, point-in-polygon."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from edge.contract import Tx, TxOutcome, TxStatus, now
from hub import retention
from hub.errors import HubConfigError, RecordRejected, StoreError
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.gis.reports import DEMO_ZONES, Zones
from hub.records.migrate import migrations
from hub.records.postgresql import (
    DIALECT,
    PostgresRecords,
    PostgresSession,
    PostgresStore,
    connect_params,
    records_store,
    redact,
    split_script,
    to_postgres,
)
from hub.records.session import Session
from hub.records.unit import RecordsUnit
from hub.store.base import CommandOutcome
from hub.store.sqlite import SQLiteStore
from nakhon.cli import main
from tests.fixtures.postgres import PostgresServer

CITIZEN = {"ref": "9f2c" * 16}


@pytest.fixture
def records(postgres_url: str) -> Iterator[PostgresRecords]:
    """A migrated records store on a fresh database."""
    store = PostgresRecords(postgres_url, max_connections=25)
    store.open()
    yield store
    store.close()


def _one(cursor: Any) -> Any:
    """The first column of the one row."""
    row = cursor.fetchone()
    assert row is not None
    return row[0]


def _payment(tx_id: str, office: str = "kkc-hq", seq: int = 1) -> Tx:
    return Tx(device="kk-kiosk-0001", seq=seq, tx_id=tx_id, kind="fee.payment", created_at=now(), citizen=CITIZEN,
              data={"office": office, "service": "garbage-monthly", "amount_satang": 4000, "method": "cash"})


def test_portable_sql_is_rewritten_for_psycopg_outside_literals() -> None:
    assert to_postgres("SELECT a FROM t WHERE b = ? AND c LIKE 'x%?' AND d = ?") == \
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%?' AND d = %s"
    assert to_postgres("SELECT 10 % 3, \"user\", user, by_user FROM audit WHERE user = ?") == \
        'SELECT 10 %% 3, "user", "user", by_user FROM audit WHERE "user" = %s'
    assert to_postgres("SELECT 'it''s ?' -- a comment?\n, ?") == "SELECT 'it''s ?' -- a comment?\n, %s"


def test_the_url_takes_its_password_from_a_file_and_never_shows_it(tmp_path: Path) -> None:
    secret = tmp_path / "records.password"
    secret.write_text("s3cret-pw\n")
    params = connect_params(f"postgresql://hub@db.example:6543/nakhon?password_file={secret}&sslmode=require")
    assert params == {"dbname": "nakhon", "host": "db.example", "port": 6543, "user": "hub", "sslmode": "require",
                      "password": "s3cret-pw"}
    assert connect_params("postgresql://hub@db/nakhon", password_file=secret)["password"] == "s3cret-pw"
    assert redact("postgresql://hub:s3cret-pw@db:5432/nakhon") == "postgresql://hub:***@db:5432/nakhon"
    assert redact("postgresql://hub@db/nakhon?password=s3cret-pw&sslmode=require") == \
        "postgresql://hub@db/nakhon?password=***&sslmode=require"
    for bad, why in (("postgresql://hub:s3cret-pw@db/nakhon", "password in a file"),
                     ("postgresql://hub@db/nakhon?password=s3cret-pw", "password in a file"),
                     ("mysql://hub@db/nakhon", "starts with postgresql://"),
                     ("postgresql://hub@db/", "name one database"),
                     ("postgresql://hub@db/x?" + "a=b&" * 600, "longer than")):
        with pytest.raises(HubConfigError, match=why) as caught:
            connect_params(bad)
        assert "s3cret-pw" not in str(caught.value)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(HubConfigError, match="empty"):
        connect_params("postgresql://hub@db/nakhon", password_file=tmp_path / "empty")


def test_a_wrong_password_fails_open_without_showing_it(postgres_server: PostgresServer, postgres_url: str,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-42\n")
    url = postgres_url.split("?")[0] + f"?password_file={wrong}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        PostgresRecords(url).open()
    assert "not-the-password-42" not in str(caught.value) and "not-the-password-42" not in caplog.text


def test_migrations_apply_once_even_when_two_processes_start_together(postgres_url: str) -> None:
    stores = [PostgresRecords(postgres_url, migrate=False) for _ in range(4)]
    for store in stores:
        store.open()
    try:
        barrier = threading.Barrier(len(stores))
        applied: list[list[int]] = []

        def start(store: PostgresRecords) -> None:
            barrier.wait(30)
            applied.append([m.version for m in store.migrate()])

        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        versions = [m.version for m in migrations("postgresql")]
        assert sorted(applied, key=len) == [[], [], [], versions]
        rows = stores[0].read(lambda s: s.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall())
        assert [v for (v,) in rows] == versions
    finally:
        for store in stores:
            store.close()


def _one_entry(records: PostgresRecords, route: ledger.FinanceRoute) -> int:
    outcome = records.write(lambda s: route.apply(_payment("TX-TRIGGER-1"), RecordsUnit(s)))
    assert outcome.status is TxStatus.ACCEPTED
    return int(records.read(lambda s: _one(s.execute("SELECT id FROM ledger"))))


@pytest.mark.parametrize("statement", [
    "UPDATE ledger SET amount_satang = 1 WHERE id = ?",
    "UPDATE ledger SET citizen_ref = 'someone-else' WHERE id = ?",
    "UPDATE ledger SET citizen_ref = NULL, reason = 'tidy' WHERE id = ?",
    "DELETE FROM ledger WHERE id = ?",
])
def test_the_ledger_refuses_changes_but_erasing_a_citizen_ref(records: PostgresRecords, statement: str) -> None:
    route = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))
    entry = _one_entry(records, route)
    with pytest.raises(RecordRejected, match="append-only"):
        records.write(lambda s: s.execute(statement, (entry,)))
    with pytest.raises(RecordRejected, match="append-only"):
        records.write(lambda s: s.script("TRUNCATE ledger"))
    row = records.read(lambda s: s.execute("SELECT amount_satang, citizen_ref FROM ledger").fetchone())
    assert row == (4000, CITIZEN["ref"])
    erased = records.write(lambda s: s.execute("UPDATE ledger SET citizen_ref = NULL WHERE id = ?", (entry,)).rowcount)
    assert erased == 1
    assert records.read(lambda s: s.execute("SELECT citizen_ref FROM ledger").fetchone()) == (None,)


def test_the_audit_log_is_append_only(records: PostgresRecords) -> None:
    records.write(lambda s: s.execute("INSERT INTO audit (at, user, address, action, object) VALUES (?, ?, ?, ?, ?)",
                                      ("2026-12-01T00:00:00Z", "admin", "127.0.0.1", "user.add", "user:somchai")))
    for statement in ("UPDATE audit SET action = 'nothing'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(RecordRejected, match="append-only"):
            records.write(partial(PostgresSession.script, sql=statement))
    assert records.read(lambda s: s.execute("SELECT user, action FROM audit").fetchall()) == [("admin", "user.add")]


def test_receipts_are_gapless_per_office_and_year_under_20_concurrent_writers(records: PostgresRecords) -> None:
    route = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))
    offices = ("kkc-hq", "kkc-north")
    barrier = threading.Barrier(20)
    receipts: list[str] = []
    errors: list[BaseException] = []

    def pay(tx: Tx) -> None:
        barrier.wait(30)
        try:
            outcome = records.write(lambda s: route.apply(tx, RecordsUnit(s)))
            receipts.append(str(outcome.result["receipt_no"]))
        except (StoreError, AssertionError, KeyError) as err:  # the assertion below shows which writer failed
            errors.append(err)

    threads = [threading.Thread(target=pay, args=(_payment(f"TX-PAY-{i:03d}", office=offices[i % 2], seq=i + 1),))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    prefixes = {office: load_catalogue(DEMO_FEES).offices[office].receipt_prefix for office in offices}
    for office, prefix in prefixes.items():
        numbers = sorted(int(r.rsplit("-", 1)[1]) for r in receipts if r.startswith(prefix + "-"))
        assert numbers == list(range(1, 11)), office
    stored = records.read(lambda s: s.execute("SELECT office, count(*), count(DISTINCT receipt_no), "
                                              "max(CAST(substr(receipt_no, length(receipt_no) - 5) AS BIGINT)), "
                                              "sum(amount_satang) FROM ledger GROUP BY office ORDER BY 1").fetchall())
    assert stored == [("kkc-hq", 10, 10, 10, 40000), ("kkc-north", 10, 10, 10, 40000)]


def test_telemetry_dedup_by_its_unique_key_across_two_store_objects(postgres_url: str) -> None:
    first, second = PostgresRecords(postgres_url), PostgresRecords(postgres_url)
    first.open()
    second.open()
    try:
        barrier = threading.Barrier(2)
        new: dict[str, int] = {}

        def store(name: str, records: PostgresRecords) -> None:
            barrier.wait(30)
            new[name] = records.write(lambda s: sum(
                len(s.execute("INSERT INTO received (device, seq, kind) VALUES (?, ?, 'telemetry') "
                              "ON CONFLICT (device, seq) DO NOTHING RETURNING seq", ("kk-aq-0001", seq)).fetchall())
                for seq in range(1, 501)))

        threads = [threading.Thread(target=store, args=(n, r)) for n, r in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(new.values()) == [0, 500]
        assert first.read(lambda s: s.execute("SELECT count(*) FROM received").fetchone()) == (500,)
        with pytest.raises(RecordRejected, match="UniqueViolation"):
            second.write(lambda s: s.execute("INSERT INTO received (device, seq, kind) VALUES ('kk-aq-0001', 1, 'tx')"))
    finally:
        first.close()
        second.close()


def test_point_in_polygon_runs_in_the_database_and_agrees_with_shapely(records: PostgresRecords) -> None:
    zones = Zones(DEMO_ZONES)
    records.write(lambda s: DIALECT.load_zones(s, zones))
    (minx, miny, maxx, maxy), = records.read(lambda s: s.execute(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) AS e FROM zones) x"
    ).fetchall())
    points = [(minx + (maxx - minx) * i / 9 + 0.0001, miny + (maxy - miny) * j / 9 + 0.0001)
              for i in range(10) for j in range(10)]
    located = records.read(lambda s: [DIALECT.zone_at(s, zones, lon, lat) for lon, lat in points])
    assert located == [zones.locate(lon, lat) for lon, lat in points]
    assert len({z for z in located if z}) >= 2 and None in located
    records.write(lambda s: DIALECT.load_zones(s, zones))  # loading again replaces, never doubles
    assert records.read(lambda s: s.execute("SELECT count(*) FROM zones").fetchone()) == (len(zones.zones),)


def test_reports_keep_a_postgis_point_in_step_with_lat_lon(records: PostgresRecords) -> None:
    def add(s: PostgresSession) -> Any:
        return _one(s.execute(
            "INSERT INTO reports (tx_id, device, category, description, lat, lon, status, created_at, updated_at) "
            "VALUES ('TX-R', 'kk-kiosk-0001', 'pothole', '', 16.43, 102.83, 'new', 'x', 'x') RETURNING id"))

    rid = records.write(add)
    assert isinstance(rid, int)
    row = records.read(lambda s: s.execute("SELECT ST_AsText(geom), ST_SRID(geom) FROM reports").fetchone())
    assert row == ("POINT(102.83 16.43)", 4326)


def test_reads_are_read_only_and_booleans_and_sums_come_back_as_sqlite_gives_them(records: PostgresRecords) -> None:
    with pytest.raises(StoreError, match="read-only"):
        records.read(lambda s: s.execute("INSERT INTO received (device, seq, kind) VALUES ('d', 1, 'x')"))
    records.write(lambda s: s.execute(
        "INSERT INTO commands (cmd_id, device, name, args, sent_at, ok, outcome) VALUES (?, ?, ?, ?, ?, ?, "
        "CASE WHEN ? THEN 'ok' ELSE 'error' END)", ("c1", "d", "ping", "{}", 1.5, True, True)))
    assert records.read(lambda s: s.execute("SELECT ok, outcome, sum(replays), avg(sent_at) FROM commands "
                                            "GROUP BY 1, 2").fetchone()) == (1, "ok", 0, 1.5)


def test_a_deadlock_is_retried_whole(records: PostgresRecords) -> None:
    records.write(lambda s: s.execute("INSERT INTO receipt_counters (office, fiscal_year, last) "
                                      "VALUES ('a', 1, 0), ('b', 1, 0)"))
    barrier = threading.Barrier(2)
    runs: dict[str, int] = {"ab": 0, "ba": 0}

    def bump(order: str) -> Callable[[PostgresSession], None]:
        def work(s: PostgresSession) -> None:
            runs[order] += 1
            s.execute("UPDATE receipt_counters SET last = last + 1 WHERE office = ?", (order[0],))
            if runs[order] == 1:
                barrier.wait(30)
            s.execute("UPDATE receipt_counters SET last = last + 1 WHERE office = ?", (order[1],))
        return work

    threads = [threading.Thread(target=records.write, args=(bump(o),)) for o in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(runs.values()) == [1, 2]
    assert records.read(lambda s: s.execute("SELECT office, last FROM receipt_counters ORDER BY 1").fetchall()) == \
        [("a", 2), ("b", 2)]


def test_migration_scripts_split_outside_literals_and_function_bodies() -> None:
    script = ("-- a comment; not a statement\nCREATE TABLE t (a TEXT DEFAULT ';');\n"
              "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'x;y'; END; $$;\n"
              "/* only; a comment */\n")
    assert split_script(script) == [
        "-- a comment; not a statement\nCREATE TABLE t (a TEXT DEFAULT ';')",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'x;y'; END; $$"]


def test_json_conditions_for_the_retention_purge(records: PostgresRecords) -> None:
    records.write(lambda s: s.execute("INSERT INTO commands (cmd_id, device, name, args, sent_at) VALUES "
                                      "('c1', 'd', 'n', ?, 1), ('c2', 'd', 'n', '{\"b\": 2}', 1)",
                                      ('{"name": "Somchai", "a": 1}',)))
    keys = ["name", "id"]
    without, present = DIALECT.json_without_keys("args", keys), DIALECT.json_keys_present("args", keys)
    sql = f"SELECT cmd_id, {without} FROM commands WHERE {present}"  # noqa: S608 (constant keys)
    assert records.read(lambda s: s.execute(sql).fetchall()) == [("c1", '{"a": 1}')]
    with pytest.raises(ValueError, match="plain JSON key"):
        DIALECT.json_keys_present("args", ["x') OR ('1"])


PG_ONLY_COLUMNS = {"geom", "rowid"}
"""Columns PostgreSQL keeps besides SQLite's: PostGIS geometries, the insertion order of history tables."""
TIMESERIES_TABLES = {"readings", "latest"}
"""SQLite keeps the time series in the records file; PostgreSQL leaves them to the time-series store."""


def _table_info(session: Session, table: str) -> list[Any]:
    return session.execute(f"PRAGMA table_info({table})").fetchall()


def test_every_sqlite_table_and_column_exists_on_postgresql(records: PostgresRecords, tmp_path: Path) -> None:
    sqlite = SQLiteStore(tmp_path / "hub.sqlite")
    sqlite.open()
    try:
        tables = sqlite.read(lambda s: [r[0] for r in s.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")])
        expected = {t: {r[1] for r in sqlite.read(partial(_table_info, table=t))}
                    for t in tables if t not in TIMESERIES_TABLES}
    finally:
        sqlite.close()
    rows = records.read(lambda s: s.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'").fetchall())
    found: dict[str, set[str]] = {}
    for table, column in rows:
        if column not in PG_ONLY_COLUMNS:
            found.setdefault(table, set()).add(column)
    assert {t: found.get(t) for t in expected} == expected
    assert [m.version for m in records.applied] == [m.version for m in migrations("sqlite")]



@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[PostgresStore]:
    """The hub's store with its records on PostgreSQL."""
    store = records_store(postgres_url)
    store.open()
    yield store
    store.close()


def test_commands_keep_their_order_on_postgresql(pg_store: PostgresStore) -> None:
    for n in range(3):
        pg_store.record_command(f"cmd-{n}", "kk-aq-0001", "ping", {"n": n}, 10.0)  # one timestamp: rowid decides
    assert [c.cmd_id for c in pg_store.commands("kk-aq-0001", 10)] == ["cmd-2", "cmd-1", "cmd-0"]
    assert pg_store.settle_command("cmd-1", CommandOutcome.TIMEOUT)
    assert not pg_store.settle_command("cmd-1", CommandOutcome.TIMEOUT)
    command = pg_store.command("cmd-1")
    assert command is not None and command.outcome is CommandOutcome.TIMEOUT and command.args == {"n": 1}


def test_a_transaction_is_applied_once_when_two_hub_processes_race_on_its_tx_id(postgres_url: str) -> None:
    hubs = [records_store(postgres_url), records_store(postgres_url)]
    for hub in hubs:
        hub.open()
    route = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))
    both_checked = threading.Barrier(2)

    def decide(tx: Tx, unit: RecordsUnit) -> TxOutcome:
        both_checked.wait(30)  # both hubs found no earlier outcome before either applies it
        return route.apply(tx, unit)

    tx = _payment("TX-RACE-0001")
    results: list[tuple[TxOutcome, bool]] = []
    try:
        threads = [threading.Thread(target=lambda h=hub: results.append(h.apply_tx(tx, 1.0, decide)))
                   for hub in hubs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(duplicate for _, duplicate in results) == [False, True]
        assert results[0][0] == results[1][0]
        assert str(results[0][0].result["receipt_no"]).endswith("-000001")
        counts = hubs[0].read(lambda s: s.execute(
            "SELECT (SELECT count(*) FROM ledger), (SELECT count(*) FROM transactions), "
            "(SELECT max(last) FROM receipt_counters), (SELECT received FROM devices)").fetchone())
        assert counts == (1, 1, 1, 1)  # the loser's receipt number was rolled back with it: no gap
    finally:
        for hub in hubs:
            hub.close()


def test_the_store_carries_on_after_postgresql_restarts(postgres_server: PostgresServer, records: PostgresRecords,
                                                       ) -> None:
    add = "INSERT INTO received (device, seq, kind) VALUES ('kk-aq-0001', ?, 'telemetry')"
    records.write(lambda s: s.execute(add, (1,)))
    assert records.read(lambda s: s.execute("SELECT count(*) FROM received").fetchone()) == (1,)
    postgres_server.restart()  # every pooled connection is now broken
    records.write(lambda s: s.execute(add, (2,)))
    assert records.read(lambda s: s.execute("SELECT count(*) FROM received").fetchone()) == (2,)


def test_nakhon_hub_migrate_applies_the_postgresql_migrations_once(postgres_url: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "migrate", "--records", postgres_url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"applied {m.version:04d} {m.name}" for m in migrations("postgresql")]
    assert main(["hub", "migrate", "--records", postgres_url]) == 0
    assert capsys.readouterr().out.splitlines() == ["up to date"]


def test_the_retention_purge_erases_personal_fields_on_postgresql(pg_store: PostgresStore) -> None:
    catalogue = load_catalogue(DEMO_FEES)
    old, new = datetime.now(UTC) - timedelta(days=400), datetime.now(UTC)
    for i, at in enumerate((old, new)):
        route = ledger.FinanceRoute(catalogue, PromptPaySettings(), clock=lambda at=at: at)
        pg_store.apply_tx(_payment(f"TX-KEEP-{i:04d}", seq=i + 1), at.timestamp(), route.apply)
    pg_store.write(lambda s: s.execute(
        "INSERT INTO events (device, seq, ts, sensor, event, severity, data) VALUES "
        "('kk-kiosk-0001', 9, ?, 'card', 'card.inserted', 'info', ?)",
        (int(old.timestamp() * 1000), json.dumps({"name_th": "สมชาย ใจดี", "name_en": "Somchai", "reader": "vpcd 0"}))))
    stripped = pg_store.write(lambda s: retention.purge(s, new - timedelta(days=365)))
    assert stripped["ledger.citizen_ref"] == 1 and stripped["payments.citizen_ref"] == 1
    assert stripped["events.data"] == 1
    assert pg_store.read(lambda s: s.execute("SELECT citizen_ref FROM ledger ORDER BY id").fetchall()) == [
        (None,), (CITIZEN["ref"],)]
    event = pg_store.read(lambda s: _one(s.execute("SELECT data FROM events")))
    assert json.loads(event) == {"reader": "vpcd 0"}
    assert pg_store.write(lambda s: retention.purge(s, new - timedelta(days=365)))["ledger.citizen_ref"] == 0
