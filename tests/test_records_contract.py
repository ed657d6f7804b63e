"""The records store contract: every engine behind :class:`hub.store.base.SqlStore` passes the same cases.

``RECORDS_URLS`` maps an engine to the URL of an empty store for one test; an engine's fixture (a server on a
free port) adds its entry, so each case runs on SQLite and on every other engine installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.contract import Reading, Tx, TxOutcome, TxStatus
from hub.audit import CLI, AuditLog
from hub.backends import open_backends
from hub.errors import StoreError
from hub.records.migrate import migrations
from hub.records.session import Session
from hub.records.unit import RecordsUnit
from hub.store.base import IngestBatch, SeqMessage, SqlStore

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
POLE = "kk-aq-0501"
KIOSK = "kk-kiosk-0501"


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.sqlite'}"


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("postgres_url"))  # tests/fixtures/postgres.py


RECORDS_URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {"sqlite": _sqlite, "postgresql": _postgresql}


def _open(url: str, tmp_path: Path) -> SqlStore:
    store = open_backends(url, f"sqlite:///{tmp_path / 'series.sqlite'}", tmp_path).records
    store.open()
    return store


@pytest.fixture(params=sorted(RECORDS_URLS))
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return RECORDS_URLS[request.param](request, tmp_path)


@pytest.fixture
def records_engine(records_url: str, tmp_path: Path) -> Iterator[SqlStore]:
    store = _open(records_url, tmp_path)
    yield store
    store.close()


def _telemetry(seq: int) -> SeqMessage:
    return SeqMessage(device=POLE, seq=seq, received_at=T0.timestamp() + seq, telemetry=[
        Reading(ts=T0, sensor="pm", quantity="pm2_5", value=10.0 + seq, unit="ug/m3")])


def _users(db: Session) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM users ORDER BY name")]


def _add_user(name: str) -> Callable[[Session], None]:
    def work(db: Session) -> None:
        db.execute("INSERT INTO users (name, password_hash, roles, disabled, created_at, changed_at) "
                   "VALUES (?, 'x', 'viewer', 0, 1.0, 1.0)", (name,))
    return work


def test_a_write_commits_when_it_returns_and_rolls_back_when_it_raises(records_engine: SqlStore) -> None:
    records_engine.write(_add_user("malee"))

    def fails(db: Session) -> None:
        _add_user("somchai")(db)
        raise LookupError("refused after the insert")

    with pytest.raises(LookupError):
        records_engine.write(fails)
    assert records_engine.read(_users) == ["malee"]


def test_inserts_return_ids_and_conflicts_do_nothing(records_engine: SqlStore) -> None:
    def work(db: Session) -> tuple[int, int, int]:
        first = db.execute("INSERT INTO feed (at, type, key, data) VALUES (?, 'event', ?, '{}') RETURNING id",
                           (1.0, "k1")).fetchone()[0]
        again = db.execute("INSERT INTO feed (at, type, key, data) VALUES (?, 'event', ?, '{}') "
                           "ON CONFLICT (key) DO NOTHING RETURNING id", (2.0, "k1")).fetchall()
        second = db.execute("INSERT INTO feed (at, type, key, data) VALUES (?, 'event', ?, '{}') RETURNING id",
                            (3.0, "k2")).fetchone()[0]
        return int(first), len(again), int(second)

    first, again, second = records_engine.write(work)
    assert again == 0 and second > first


def test_migrations_are_applied_once(records_url: str, tmp_path: Path) -> None:
    store = _open(records_url, tmp_path)
    engine = store.read(lambda db: db.engine)
    store.close()
    again = _open(records_url, tmp_path)
    again.close()
    assert again.applied == []
    assert store.applied == [] or [m.version for m in store.applied] == [m.version for m in migrations(engine)]


def test_a_redelivered_batch_is_acknowledged_again_and_stored_once(records_engine: SqlStore) -> None:
    batch = IngestBatch(messages=[_telemetry(1), _telemetry(2), _telemetry(4)])
    first = records_engine.ingest(batch)
    again = records_engine.ingest(batch)
    assert first.acks == again.acks == {POLE: [1, 2, 4]}
    assert (first.new_messages, first.duplicates, again.new_messages, again.duplicates) == (3, 0, 0, 3)
    device = records_engine.device(POLE)
    assert device is not None and (device.received, device.lost, device.duplicates, device.last_seq) == (3, 1, 3, 4)


def _payment(tx_id: str, seq: int) -> Tx:
    return Tx(device=KIOSK, seq=seq, tx_id=tx_id, kind="fee.payment", created_at=T0,
              data={"office": "kkc-hq", "service": "garbage-monthly", "method": "cash", "amount_satang": 4000})


def test_a_transaction_is_applied_once(records_engine: SqlStore) -> None:
    applied: list[str] = []

    def decide(tx: Tx, unit: RecordsUnit) -> TxOutcome:
        applied.append(tx.tx_id)
        return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                         result={"n": len(applied)})

    tx = _payment(f"{KIOSK}-tx-000001", 1)
    outcome, before = records_engine.apply_tx(tx, T0.timestamp(), decide)
    again, before_again = records_engine.apply_tx(tx, T0.timestamp(), decide)
    assert (before, before_again, applied) == (False, True, [tx.tx_id])
    assert again.result == outcome.result == {"n": 1}
    assert records_engine.tx_outcome(tx.tx_id, KIOSK) == outcome


def test_the_audit_log_and_the_ledger_refuse_changes(records_engine: SqlStore) -> None:
    AuditLog(records_engine).record(CLI, "user.add", "user/malee", None, {"roles": ["viewer"]})
    records_engine.write(lambda db: db.execute(
        "INSERT INTO ledger (at, local_date, entry, office, fiscal_year, receipt_no, device, service, method, "
        "amount_satang) VALUES ('2026-11-20T03:00:00.000Z', '2026-11-20', 'payment', 'kkc-hq', 2570, "
        "'KKC-2570-000001', ?, 'garbage-monthly', 'cash', 4000)", (KIOSK,)))
    for sql in ("UPDATE audit SET user = 'someone else'", "DELETE FROM audit", "DELETE FROM ledger",
                "UPDATE ledger SET amount_satang = 1", "UPDATE ledger SET citizen_ref = 'someone'"):
        with pytest.raises(StoreError, match="append-only"):
            records_engine.write(lambda db, sql=sql: db.execute(sql))  # type: ignore[misc]
    assert [e.user for e in AuditLog(records_engine).entries()] == ["cli"]
    records_engine.write(lambda db: db.execute("UPDATE ledger SET citizen_ref = NULL"))  # the purge may erase it
    assert records_engine.read(lambda db: db.execute("SELECT amount_satang FROM ledger").fetchall()) == [(4000,)]


def test_commands_move_from_queued_to_sent_to_settled(records_engine: SqlStore) -> None:
    t = T0.timestamp()
    records_engine.record_command("c1", POLE, "ping", {"n": 1}, t, t + 60, queued=True)
    assert records_engine.mark_command_published("c1", t + 1)
    assert not records_engine.mark_command_published("c1", t + 2)
    assert records_engine.settle_command("c1", records_engine.command("c1").outcome.TIMEOUT)  # type: ignore[union-attr]
    command = records_engine.command("c1")
    assert command is not None and command.outcome == "timeout" and command.args == {"n": 1}
    assert [c.cmd_id for c in records_engine.commands(POLE, 10)] == ["c1"]
