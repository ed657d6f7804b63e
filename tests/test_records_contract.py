"""The records store contract: every engine behind :class:`hub.store.base.SqlStore` passes the same cases.

``RECORDS_URLS`` maps an engine to the URL of an empty store for one test; an engine's fixture (a server on a
free port) adds its entry, so each case runs on SQLite and on every other engine installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import shape

from edge.contract import DeviceState, Event, Location, Reading, Reply, Severity, Status, Tx, TxOutcome, TxStatus
from hub.audit import CLI, AuditLog
from hub.backends import open_backends
from hub.errors import StoreError
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.ledger import FinanceRoute
from hub.finance.promptpay import PromptPaySettings
from hub.gis.reports import DEMO_ZONES, ReportRoute, Zones
from hub.gis.repository import SqlReports
from hub.records.dialect import dialect_of
from hub.records.migrate import migrations
from hub.records.session import Session
from hub.records.unit import RecordsUnit
from hub.router import Router
from hub.store.base import CommandOutcome, DeadLetter, IngestBatch, SeqMessage, SqlStore, StatusUpdate

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


def _status(state: str, at: datetime, node: str | None = None, **heartbeat: Any) -> StatusUpdate:
    return StatusUpdate(Status(device=POLE, state=DeviceState(state), at=at, node=node, **heartbeat),
                        received_at=at.timestamp())


def test_dead_letters_are_kept_newest_first_and_a_trusted_seq_is_acknowledged_once(records_engine: SqlStore) -> None:
    t = T0.timestamp()
    trusted = DeadLetter(topic=f"nakhon/v1/{POLE}/telemetry", reason="invalid", detail="x" * 2000, received_at=t,
                         size=5000, payload=b"\x00" * 5000, device=POLE, seq=7)
    anonymous = DeadLetter(topic="nakhon/v1/unknown/telemetry", reason="unknown_topic", detail="no device",
                           received_at=t + 1, size=3, payload=b"{}\xff")
    first = records_engine.ingest(IngestBatch(deadletters=[trusted, anonymous]))
    again = records_engine.ingest(IngestBatch(deadletters=[trusted]))
    assert first.acks == again.acks == {POLE: [7]}
    assert (first.new_messages, again.duplicates) == (1, 1)
    stored = records_engine.deadletters(10)
    assert [(d.reason, d.topic) for d in stored] == [("unknown_topic", anonymous.topic), ("invalid", trusted.topic)]
    assert (len(stored[1].payload), len(stored[1].detail), stored[0].payload) == (4096, 1000, b"{}\xff")
    assert [d.reason for d in records_engine.deadletters(10, reason="invalid")] == ["invalid"]
    assert records_engine.deadletter_counts() == {"invalid": 1, "unknown_topic": 1}
    device = records_engine.device(POLE)
    assert device is not None and (device.received, device.duplicates, device.last_seq) == (1, 1, 7)


def test_statuses_keep_the_first_node_kind_the_latest_heartbeat_and_the_edge_drop_count(
        records_engine: SqlStore) -> None:
    records_engine.ingest(IngestBatch(statuses=[_status("online", T0, node="air", uptime_s=5.0, dropped=3)]))
    later = T0 + timedelta(minutes=1)
    records_engine.ingest(IngestBatch(statuses=[_status("offline", later, node="kiosk", dropped=1)]))
    device = records_engine.device(POLE)
    assert device is not None
    assert (device.node, device.state, device.dropped_at_edge) == ("air", "offline", 3)
    assert device.heartbeat == {"dropped": 1, "node": "kiosk"}  # the latest heartbeat, whole
    assert (device.first_seen, device.last_seen, device.last_status_at) == (
        T0.timestamp(), later.timestamp(), later.timestamp())
    assert [d.device for d in records_engine.devices()] == [POLE]


def test_a_reply_settles_its_command_once_and_later_replies_are_only_counted(records_engine: SqlStore) -> None:
    t = T0.timestamp()
    records_engine.record_command("c-ok", POLE, "ping", {}, t, t + 60)

    def reply(seq: int, ok: bool) -> SeqMessage:
        return SeqMessage(device=POLE, seq=seq, received_at=t + seq, reply=Reply(
            device=POLE, seq=seq, cmd_id="c-ok", ok=ok, result={"pong": seq} if ok else None,
            error=None if ok else "busy"))

    first = records_engine.ingest(IngestBatch(messages=[reply(1, True)]))
    later = records_engine.ingest(IngestBatch(messages=[reply(2, False)]))
    assert [r.cmd_id for r in first.replies] == ["c-ok"] and later.replies == []
    command = records_engine.command("c-ok")
    assert command is not None
    assert (command.outcome, command.result, command.error, command.replied_at, command.replays) == (
        CommandOutcome.OK, {"pong": 1}, None, t + 1, 1)


def test_queued_commands_wait_for_their_device_online_then_expire(records_engine: SqlStore) -> None:
    t = T0.timestamp()
    records_engine.record_command("c-queued", POLE, "reboot", {}, t, t + 60, queued=True)
    records_engine.record_command("c-sent", POLE, "ping", {}, t, t + 30)
    records_engine.record_command("c-queued-2", POLE, "reboot", {}, t, t + 60, queued=True)
    assert records_engine.due_commands(t) == []  # the device is not online yet
    records_engine.ingest(IngestBatch(statuses=[_status("online", T0)]))
    assert [c.cmd_id for c in records_engine.due_commands(t)] == ["c-queued", "c-queued-2"]  # in the order queued
    assert records_engine.expire_commands(t + 40, reply_grace_s=5) == 1  # the sent one, past expiry and grace
    assert records_engine.expire_commands(t + 61) == 2  # the queued ones
    assert records_engine.expire_commands(t + 62) == 0
    assert [(c.cmd_id, c.outcome) for c in records_engine.commands(POLE, 10)] == [  # newest first
        ("c-queued-2", CommandOutcome.EXPIRED), ("c-sent", CommandOutcome.TIMEOUT),
        ("c-queued", CommandOutcome.EXPIRED)]
    assert not records_engine.settle_command("c-sent", CommandOutcome.ERROR)


def test_a_tx_id_taken_by_another_device_is_rejected_and_a_later_outcome_replaces_the_first(
        records_engine: SqlStore) -> None:
    router = Router({"fee.payment": _Accepting()})
    tx = _payment(f"{KIOSK}-tx-000009", 9)
    records_engine.apply_tx(tx, T0.timestamp(), router.decide)
    thief = tx.model_copy(update={"device": "kk-kiosk-0999"})
    outcome, before = records_engine.apply_tx(thief, T0.timestamp(), router.decide)
    assert (outcome.status, before) == (TxStatus.REJECTED, False)
    assert "already used by another device" in str(outcome.reason)
    final = TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason="cancelled", result={})
    assert records_engine.write(lambda db: records_engine.replace_tx_outcome(db, tx.tx_id, final)) == KIOSK
    assert records_engine.tx_outcome(tx.tx_id, KIOSK) == final
    assert records_engine.tx_outcome(tx.tx_id, "kk-kiosk-0999") is None
    device = records_engine.device(KIOSK)
    assert device is not None and (device.received, device.last_seq) == (1, 9)


class _Accepting:
    def apply(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
        return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None, result={})


def _finance_route() -> FinanceRoute:
    return FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))


def _ledger(db: Session) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute("SELECT receipt_no, tx_id, amount_satang FROM ledger ORDER BY id")]


def test_a_route_writes_through_the_unit_in_the_commit_of_its_outcome(records_engine: SqlStore) -> None:
    router = Router({"fee.payment": _finance_route()})
    paid = [records_engine.apply_tx(_payment(f"{KIOSK}-tx-00010{i}", 10 + i), T0.timestamp(), router.decide)[0]
            for i in range(2)]
    receipts = [str(o.result["receipt_no"]) for o in paid]
    assert [r[-7:] for r in receipts] == ["-000001", "-000002"]  # gapless, per office and fiscal year

    class Failing:
        def apply(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
            _finance_route().apply(tx, unit)  # a receipt number and a ledger entry, then a bug
            raise KeyError("after the ledger entry")

    broken = _payment(f"{KIOSK}-tx-000103", 13)
    with pytest.raises(KeyError):
        records_engine.apply_tx(broken, T0.timestamp(), Router({"fee.payment": Failing()}).decide)
    assert records_engine.tx_outcome(broken.tx_id, KIOSK) is None
    again, before = records_engine.apply_tx(broken, T0.timestamp(), router.decide)
    assert not before and str(again.result["receipt_no"]).endswith("-000003")  # the failed one took no number
    assert records_engine.read(_ledger) == [(receipts[0], paid[0].tx_id, 4000), (receipts[1], paid[1].tx_id, 4000),
                                            (again.result["receipt_no"], broken.tx_id, 4000)]
    _, before = records_engine.apply_tx(broken, T0.timestamp(), router.decide)
    assert before and len(records_engine.read(_ledger)) == 3


def test_a_report_route_finds_its_zone_through_the_engine(records_engine: SqlStore) -> None:
    zones = Zones(DEMO_ZONES)
    records_engine.write(lambda db: dialect_of(db).load_zones(db, zones))
    inside = shape(zones.zones[0].geometry).representative_point()
    router = Router({"issue.report": ReportRoute(zones)})

    def report(seq: int, lon: float, lat: float) -> TxOutcome:
        tx = Tx(device=KIOSK, seq=seq, tx_id=f"{KIOSK}-tx-r{seq:05d}", kind="issue.report", created_at=T0,
                data={"category": "pothole", "description": "deep"}, location=Location(lat=lat, lon=lon))
        return records_engine.apply_tx(tx, T0.timestamp(), router.decide)[0]

    found, nowhere = report(1, inside.x, inside.y), report(2, 100.0, 5.0)
    assert (found.status, found.result["zone"], nowhere.result["zone"]) == (
        TxStatus.ACCEPTED, zones.zones[0].zone, None)
    reports = SqlReports(records_engine, AuditLog(records_engine))
    feature = reports.feature(int(found.result["report_id"]))
    assert feature is not None and feature["geometry"]["coordinates"] == [inside.x, inside.y]
    assert [h["status"] for h in reports.history(int(found.result["report_id"]))] == ["new"]


def _event(device: str, seq: int, minute: int, name: str, severity: Severity = Severity.CRITICAL) -> SeqMessage:
    e = Event(device=device, seq=seq, ts=T0 + timedelta(minutes=minute), sensor=name.split(".")[0], event=name,
              severity=severity, data={"seq": seq, "site": "ขอนแก่น"})
    return SeqMessage(device=device, seq=seq, received_at=T0.timestamp() + seq, event=e)


def test_events_come_newest_first_filtered_and_paged_by_their_cursor(records_engine: SqlStore) -> None:
    other = "kk-aq-0502"
    records_engine.ingest(IngestBatch(messages=[
        _event(POLE, 1, 0, "sos.pressed"), _event(POLE, 2, 1, "sos.released", Severity.INFO),
        _event(other, 1, 1, "sos.pressed"), _event(POLE, 3, 2, "door.opened", Severity.WARNING),
        _event(POLE, 4, 2, "sos.pressed")]))

    def keys(**filters: Any) -> list[tuple[str, int]]:
        return [(e.device, e.seq) for e in records_engine.events(100, **filters)]

    newest_first = [(POLE, 4), (POLE, 3), (other, 1), (POLE, 2), (POLE, 1)]  # by time, then device, then seq
    assert keys() == newest_first
    assert keys(event="sos.pressed") == [(POLE, 4), (other, 1), (POLE, 1)]
    assert keys(event_prefix="sos.") == [(POLE, 4), (other, 1), (POLE, 2), (POLE, 1)]
    assert keys(event_prefix="so_") == keys(event_prefix="%") == []  # a prefix is text, not a pattern
    assert keys(severity="info") == [(POLE, 2)]
    assert keys(device=other) == [(other, 1)]
    assert keys(sensor="door") == [(POLE, 3)]
    minute = 60_000
    since = int(T0.timestamp() * 1000) + minute
    assert keys(since=since, until=since + minute) == [(other, 1), (POLE, 2)]
    assert keys(device=POLE, event_prefix="sos.", since=since) == [(POLE, 4), (POLE, 2)]
    pages: list[tuple[str, int]] = []
    before = None
    while page := records_engine.events(2, before=before):
        pages += [(e.device, e.seq) for e in page]
        before = (page[-1].ts, page[-1].device, page[-1].seq)
    assert pages == newest_first
    first = records_engine.events(1)[0]
    assert (first.ts, first.sensor, first.event, first.severity, first.data) == (
        since + minute, "sos", "sos.pressed", "critical", {"seq": 4, "site": "ขอนแก่น"})
