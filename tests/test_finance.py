"""Finance: PromptPay vectors, exactly-once payments, gapless receipts, pending QR payments, voids, reconciliation."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.contract import Tx, TxOutcome, TxStatus, format_timestamp, now
from hub.audit import AuditLog
from hub.auth import signature
from hub.auth.web import guarded_app
from hub.finance import api as finance_api
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.fiscal import BANGKOK, baht, fiscal_year, local_date, thai_date
from hub.finance.promptpay import PromptPaySettings, bill_payment, crc16_ccitt_false, credit_transfer
from hub.finance.repository import SqlBook, SqlFinance
from hub.ingest.consumer import IngestSettings
from hub.records.postgresql import records_store
from hub.router import Router
from hub.serve import HubSettings, build
from hub.store.sqlite import SQLiteStore
from tests.conftest import Broker, signed_client, wait_for
from tests.test_gis import Kiosk

CITIZEN = {"ref": "9f2c" * 16}


def test_promptpay_payloads_match_the_public_test_vectors() -> None:
    assert credit_transfer("0801234567") == \
        "00020101021129370016A000000677010111011300668012345675802TH530376463046197"
    assert credit_transfer("1111111111111") == \
        "00020101021129370016A000000677010111021311111111111115802TH530376463047B5A"
    assert credit_transfer("080-123-4567", 45625) == \
        "00020101021229370016A000000677010111011300668012345675802TH53037645406456.256304483D"


def test_bill_payment_carries_the_reference_and_a_valid_crc() -> None:
    payload = bill_payment("099400016550101", "KIOSK0001TX42", 4000)
    assert payload.startswith("000201010212" "3056" "0016A000000677010112" "0115099400016550101" "0213KIOSK0001TX42")
    assert "5802TH" in payload and "5303764" in payload and "540540.00" in payload
    assert payload[-4:] == f"{crc16_ccitt_false(payload[:-4].encode()):04X}"
    with pytest.raises(ValueError, match="ref1"):
        bill_payment("099400016550101", "not valid!", 4000)
    assert PromptPaySettings(biller_id="099400016550101").payload("TX1", 100).startswith("000201010212" + "30")


def test_thai_fiscal_years_and_money() -> None:
    assert fiscal_year(date(2026, 9, 30)) == 2569
    assert fiscal_year(date(2026, 10, 1)) == 2570
    assert thai_date(date(2026, 11, 20)) == "20/11/2569"
    assert baht(123456) == "1,234.56" and baht(-5) == "-0.05"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "hub.sqlite") if request.param == "sqlite" else \
        records_store(request.getfixturevalue("postgres_url"))
    s.open()
    yield s
    s.close()


@pytest.fixture
def route() -> ledger.FinanceRoute:
    return ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))


def _payment(tx_id: str, method: str = "cash", service: str = "garbage-monthly", amount: int = 4000,
             office: str = "kkc-hq", device: str = "kk-kiosk-0001", seq: int = 1, citizen: Any = CITIZEN) -> Tx:
    return Tx(device=device, seq=seq, tx_id=tx_id, kind="fee.payment", created_at=now(), citizen=citizen,
              data={"office": office, "service": service, "amount_satang": amount, "method": method})


def test_the_same_payment_delivered_five_times_is_one_entry_one_receipt_five_identical_answers(
        store: SQLiteStore, route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})
    tx = _payment("kk-kiosk-0001-tx-000001")
    answers = [store.apply_tx(tx, 1.0, router.decide) for _ in range(5)]
    outcomes = {a.model_dump_json() for a, _ in answers}
    assert len(outcomes) == 1
    outcome = answers[0][0]
    assert outcome.status is TxStatus.ACCEPTED
    assert outcome.result["receipt_no"].startswith("KKC-25") and outcome.result["receipt_no"].endswith("-000001")
    assert outcome.result["amount_satang"] == 4000
    rows = store.read(lambda db: db.execute("SELECT count(*), count(DISTINCT receipt_no) FROM ledger").fetchone())
    assert rows == (1, 1)


@pytest.mark.parametrize("change,reason", [
    ({"amount": 100}, "does not match the fee"),
    ({"service": "building-permit", "amount": 150000}, "cannot be paid by 'cash'"),
    ({"office": "kkc-moon"}, "unknown office"),
    ({"service": "building-permit", "office": "kkc-north", "amount": 150000, "method": "promptpay"}, "not offered"),
    ({"service": "water-meter-check", "amount": 10000, "citizen": None}, "needs the citizen's ID card"),
])
def test_a_payment_that_does_not_fit_the_catalogue_is_rejected_with_a_reason(
        store: SQLiteStore, route: ledger.FinanceRoute, change: dict[str, Any], reason: str) -> None:
    router = Router({"fee.payment": route})
    outcome, _ = store.apply_tx(_payment("kk-kiosk-0001-tx-bad", **change), 1.0, router.decide)
    assert outcome.status is TxStatus.REJECTED and reason in (outcome.reason or "")
    assert store.read(lambda db: db.execute("SELECT count(*) FROM ledger").fetchone()[0]) == 0


def test_the_ledger_cannot_be_edited(store: SQLiteStore, route: ledger.FinanceRoute) -> None:
    store.apply_tx(_payment("kk-kiosk-0001-tx-000002"), 1.0, Router({"fee.payment": route}).decide)
    with pytest.raises(Exception, match="append-only"):
        store.write(lambda db: db.execute("UPDATE ledger SET amount_satang = 1"))
    with pytest.raises(Exception, match="append-only"):
        store.write(lambda db: db.execute("DELETE FROM ledger"))


def test_concurrent_kiosks_get_gapless_unique_receipts_per_office_and_fiscal_year(
        store: SQLiteStore, route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})

    def kiosk(k: int) -> None:
        for i in range(10):
            office = "kkc-hq" if i % 2 else "kkc-north"
            store.apply_tx(_payment(f"kk-kiosk-{k:04d}-tx-{i:06d}", office=office, device=f"kk-kiosk-{k:04d}",
                                    seq=i + 1), 1.0, router.decide)

    threads = [threading.Thread(target=kiosk, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = store.read(lambda db: db.execute("SELECT office, fiscal_year, receipt_no FROM ledger").fetchall())
    assert len(rows) == 200
    for office in ("kkc-hq", "kkc-north"):
        numbers = sorted(int(r[2].rsplit("-", 1)[1]) for r in rows if r[0] == office)
        assert numbers == list(range(1, 101))


def _app(store: SQLiteStore, route: ledger.FinanceRoute, answered: list[tuple[str, TxOutcome]]) -> TestClient:
    app = guarded_app()
    app.include_router(finance_api.create_router(SqlFinance(store, route.catalogue, AuditLog(store)),
                                                 lambda d, o: answered.append((d, o)), "bank-secret"))
    return signed_client(app, store, "finance")


def _signed(body: dict[str, Any], secret: str = "bank-secret") -> dict[str, Any]:  # noqa: S107
    raw = json.dumps(body).encode()
    return {"content": raw, "headers": {"Content-Type": "application/json", **signature.headers(secret, raw)}}


def test_a_promptpay_payment_is_pending_until_the_bank_confirms_it(store: SQLiteStore,
                                                                    route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})
    tx = _payment("kk-kiosk-0001-tx-qr0001", method="promptpay")
    pending, _ = store.apply_tx(tx, 1.0, router.decide)
    assert pending.status is TxStatus.PENDING
    assert pending.result["promptpay"].startswith("000201010212") and "540540.00" in pending.result["promptpay"]
    assert store.read(lambda db: db.execute("SELECT count(*) FROM ledger").fetchone()[0]) == 0  # no receipt yet
    answered: list[tuple[str, TxOutcome]] = []
    client = _app(store, route, answered)
    url = f"/api/finance/payments/{tx.tx_id}/confirm"
    assert client.post(url, json={"amount_satang": 4000, "bank_ref": "B1"}).status_code == 401
    bad = client.post(url, **_signed({"amount_satang": 3999, "bank_ref": "B1"}))
    assert bad.status_code == 409
    ok = client.post(url, **_signed({"amount_satang": 4000, "bank_ref": "B1"}))
    assert ok.status_code == 200 and ok.json()["receipt_no"].endswith("-000001") and not ok.json()["already_confirmed"]
    assert answered[0][0] == "kk-kiosk-0001" and answered[0][1].status is TxStatus.ACCEPTED
    again = client.post(url, **_signed({"amount_satang": 4000, "bank_ref": "B1"}))
    assert again.json()["already_confirmed"] and again.json()["receipt_no"] == ok.json()["receipt_no"]
    redelivered, duplicate = store.apply_tx(tx, 2.0, router.decide)  # the kiosk asks again: the final answer
    assert duplicate and redelivered.status is TxStatus.ACCEPTED
    assert redelivered.result["receipt_no"] == ok.json()["receipt_no"]
    assert store.read(lambda db: db.execute("SELECT count(*) FROM ledger").fetchone()[0]) == 1
    assert client.post("/api/finance/payments/nope/confirm",
                       **_signed({"amount_satang": 1, "bank_ref": "x"})).status_code == 404


def test_void_is_a_compensating_entry_and_reconciliation_compares_counted_cash(
        store: SQLiteStore, route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})
    for i in range(3):
        store.apply_tx(_payment(f"kk-kiosk-0001-tx-c{i:05d}", seq=i + 1), 1.0, router.decide)
    client = _app(store, route, [])
    receipts = client.get("/api/finance/receipts").json()
    assert [r["receipt_no"][-6:] for r in receipts] == ["000001", "000002", "000003"]
    r = client.post(f"/api/finance/receipts/{receipts[1]['receipt_no']}/reverse",
                    json={"entry": "void", "reason": "citizen paid twice"})
    assert r.status_code == 200
    assert client.post(f"/api/finance/receipts/{receipts[1]['receipt_no']}/reverse",
                       json={"entry": "void", "reason": "again"}).status_code == 409
    ledger_rows = client.get("/api/finance/ledger").json()
    assert [e["amount_satang"] for e in ledger_rows] == [4000, 4000, 4000, -4000]
    assert client.get("/api/finance/receipts").json()[1]["reversed_by"] == "void"
    day = datetime.now(UTC).astimezone(BANGKOK).date().isoformat()
    summary = client.get("/api/finance/summary", params={"day": day}).json()
    assert summary["total_satang"] == 8000 and summary["total_baht"] == "80.00"
    check = client.post("/api/finance/reconciliations", json={"device": "kk-kiosk-0001", "day": day,
                                                             "counted_satang": 7500, "counted_by": "Somchai"}).json()
    assert check["ledger_satang"] == 8000 and check["difference_satang"] == -500 and not check["balanced"]
    csv_text = client.get("/api/finance/reconciliation.csv", params={"day": day}).text
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("day,device,cash_entries,ledger_cash_baht,counted_baht,difference_baht")
    assert lines[1] == f"{day},kk-kiosk-0001,4,80.00,75.00,-5.00,Somchai,difference,1"


def test_promptpay_is_off_unless_configured_and_the_kiosk_is_told_to_pay_cash(store: SQLiteStore) -> None:
    off = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings())})
    outcome, _ = store.apply_tx(_payment("kk-kiosk-0001-tx-qroff1", method="promptpay"), 1.0, off.decide)
    assert outcome.status is TxStatus.REJECTED and "PromptPay is not set up" in (outcome.reason or "")
    assert "pay in cash" in (outcome.reason or "")
    assert store.read(lambda db: db.execute("SELECT count(*) FROM payments").fetchone()[0]) == 0


def test_the_demo_promptpay_pays_no_one_and_says_it_is_a_demo(store: SQLiteStore) -> None:
    demo = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings.for_demo())})
    outcome, _ = store.apply_tx(_payment("kk-kiosk-0001-tx-qrdemo", method="promptpay"), 1.0, demo.decide)
    assert outcome.status is TxStatus.PENDING and outcome.result["promptpay_demo"] is True
    assert "01130066000000000" in outcome.result["promptpay"]  # +66 0...: no Thai number, no account


def test_without_a_bank_secret_every_confirmation_is_refused(store: SQLiteStore,
                                                             route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})
    store.apply_tx(_payment("kk-kiosk-0001-tx-qr0002", method="promptpay"), 1.0, router.decide)
    app = guarded_app()
    app.include_router(finance_api.create_router(SqlFinance(store, route.catalogue, AuditLog(store)),
                                                 lambda d, o: None, None))
    r = signed_client(app, store, "finance").post("/api/finance/payments/kk-kiosk-0001-tx-qr0002/confirm",
                                                  **_signed({"amount_satang": 4000, "bank_ref": "B1"}))
    assert r.status_code == 503 and "--bank-secret-file" in r.json()["detail"]
    assert store.read(lambda db: db.execute("SELECT status FROM payments").fetchone()[0]) == "pending"


@pytest.mark.broker
def test_the_hub_keeps_its_data_private_and_warns_about_what_is_off(tmp_path: Path, broker: Broker,
                                                                     procs: dict[str, Any]) -> None:
    data = tmp_path / "hub"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    secret = tmp_path / "bank.secret"
    secret.write_text("zq81-bank-signing-value\n")
    secret.chmod(0o600)
    hub = procs["hub"](broker.port, "--bank-secret-file", str(secret), data=data)
    for path in (data / "hub.sqlite", data / "hub.sqlite-wal", data / "hub.sqlite-shm"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    log = hub.log()
    assert "PromptPay is off" in log
    assert "zq81" not in log


def test_the_hub_warns_at_start_up_that_confirmations_are_refused_without_a_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "nakhon.hub"):
        build(HubSettings(data=tmp_path, ingest=IngestSettings(port=1), promptpay=PromptPaySettings.for_demo()))
    assert "confirmations will be refused" in caplog.text and "PromptPay in DEMO mode" in caplog.text


class Clock:
    """A hub clock the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def test_a_pending_promptpay_payment_expires_and_the_kiosk_is_told_it_ended(store: SQLiteStore) -> None:
    clock = Clock(T0)
    route = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0000000000", expire_after_s=60),
                                clock=clock)
    router = Router({"fee.payment": route})
    tx = _payment("kk-kiosk-0001-tx-qrexp1", method="promptpay")
    pending, _ = store.apply_tx(tx, 1.0, router.decide)
    assert pending.status is TxStatus.PENDING and pending.result["expires_at"] == "2026-11-20T03:01:00.000Z"
    answered: list[tuple[str, TxOutcome]] = []
    finance = SqlFinance(store, route.catalogue, AuditLog(store))
    assert finance_api.expire_pending(finance, lambda d, o: answered.append((d, o)), T0 + timedelta(seconds=59)) == 0
    assert finance_api.expire_pending(finance, lambda d, o: answered.append((d, o)), T0 + timedelta(seconds=60)) == 1
    ((device, outcome),) = answered
    assert device == "kk-kiosk-0001" and outcome.status is TxStatus.REJECTED and outcome.result["ended"] == "expired"
    assert "not received in time" in (outcome.reason or "")
    resent, duplicate = store.apply_tx(tx, 2.0, router.decide)  # the kiosk's resend gets the end, not pending
    assert duplicate and resent.status is TxStatus.REJECTED and resent.result["ended"] == "expired"
    client = _app(store, route, answered)
    assert client.get("/api/finance/payments", params={"status": "expired"}).json()[0]["tx_id"] == tx.tx_id
    late = client.post(f"/api/finance/payments/{tx.tx_id}/confirm", **_signed({"amount_satang": 4000,
                                                                                  "bank_ref": "B9"}))
    assert late.status_code == 200 and late.json()["late"] == "expired" and late.json()["receipt_no"]


def test_a_pending_payment_can_be_cancelled_once_and_a_paid_one_cannot(store: SQLiteStore,
                                                                       route: ledger.FinanceRoute) -> None:
    router = Router({"fee.payment": route})
    store.apply_tx(_payment("kk-kiosk-0001-tx-qrcan1", method="promptpay"), 1.0, router.decide)
    store.apply_tx(_payment("kk-kiosk-0001-tx-cash01", seq=2), 1.0, router.decide)
    answered: list[tuple[str, TxOutcome]] = []
    client = _app(store, route, answered)
    first = client.post("/api/finance/payments/kk-kiosk-0001-tx-qrcan1/cancel")
    assert first.status_code == 200 and first.json() == {"tx_id": "kk-kiosk-0001-tx-qrcan1", "status": "cancelled",
                                                         "already_ended": False}
    assert answered[0][1].status is TxStatus.REJECTED and answered[0][1].result["ended"] == "cancelled"
    again = client.post("/api/finance/payments/kk-kiosk-0001-tx-qrcan1/cancel")
    assert again.status_code == 200 and again.json()["already_ended"] and len(answered) == 1
    assert client.post("/api/finance/payments/kk-kiosk-0001-tx-cash01/cancel").status_code == 409
    assert client.post("/api/finance/payments/kk-kiosk-0001-tx-nope00/cancel").status_code == 404


def test_every_cash_count_is_kept_the_latest_stands_and_unknown_devices_are_refused(
        store: SQLiteStore, route: ledger.FinanceRoute) -> None:
    store.apply_tx(_payment("kk-kiosk-0001-tx-cnt001"), 1.0, Router({"fee.payment": route}).decide)
    client = _app(store, route, [])
    day = datetime.now(UTC).astimezone(BANGKOK).date().isoformat()
    count = {"device": "kk-kiosk-0001", "day": day, "counted_by": "Somchai"}
    first = client.post("/api/finance/reconciliations", json={**count, "counted_satang": 3000}).json()
    second = client.post("/api/finance/reconciliations", json={**count, "counted_satang": 4000}).json()
    assert first["earlier_counts"] == [] and second["balanced"]
    assert [(c["id"], c["counted_satang"]) for c in second["earlier_counts"]] == [(first["id"], 3000)]
    listed = client.get("/api/finance/reconciliations", params={"day": day}).json()
    assert [(c["counted_satang"], c["superseded"]) for c in listed] == [(3000, True), (4000, False)]
    row = client.get("/api/finance/reconciliation.csv", params={"day": day}).text.splitlines()[1].split(",")
    assert row[4] == "40.00" and row[-2:] == ["balanced", "2"]
    stranger = client.post("/api/finance/reconciliations", json={**count, "device": "kk-kiosk-9999",
                                                                "counted_satang": 1})
    assert stranger.status_code == 404 and "registry" in stranger.json()["detail"]


@pytest.mark.parametrize("kiosk_behind,dated_by", [(timedelta(hours=10), "kiosk"), (timedelta(days=60), "hub")])
def test_cash_is_dated_by_the_citizens_time_and_the_receipt_keeps_both_times(
        store: SQLiteStore, kiosk_behind: timedelta, dated_by: str) -> None:
    hub_now = datetime(2026, 10, 1, 1, 0, tzinfo=UTC)  # 08:00 on 1 Oct in Thailand: FY 2570 has begun
    route = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(), clock=Clock(hub_now))
    tx = _payment("kk-kiosk-0001-tx-late01").model_copy(update={"created_at": hub_now - kiosk_behind})
    outcome, _ = store.apply_tx(tx, 1.0, Router({"fee.payment": route}).decide)
    paid_at = tx.created_at if dated_by == "kiosk" else hub_now
    assert outcome.result["paid_at"] == format_timestamp(paid_at)
    assert outcome.result["recorded_at"] == format_timestamp(hub_now)
    assert outcome.result["fiscal_year"] == fiscal_year(local_date(paid_at))
    day = store.read(lambda db: db.execute("SELECT local_date FROM ledger").fetchone()[0])
    assert day == local_date(paid_at).isoformat()
    if dated_by == "kiosk":
        assert day == "2026-09-30" and outcome.result["fiscal_year"] == 2569  # paid before the outage ended


def test_a_store_from_before_expiry_and_two_times_is_brought_up_to_date(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript("""
        CREATE TABLE payments (tx_id TEXT PRIMARY KEY, device TEXT NOT NULL, office TEXT NOT NULL,
            service TEXT NOT NULL, method TEXT NOT NULL, amount_satang INTEGER NOT NULL, citizen_ref TEXT,
            status TEXT NOT NULL CHECK (status IN ('pending', 'paid')), reference TEXT NOT NULL,
            created_at TEXT NOT NULL, paid_at TEXT, bank_ref TEXT, receipt_no TEXT);
        INSERT INTO payments VALUES ('tx-old-000001', 'kk-kiosk-0001', 'kkc-hq', 'garbage-monthly', 'promptpay',
            4000, NULL, 'pending', 'REF', '2026-01-01T00:00:00.000Z', NULL, NULL, NULL);
        CREATE TABLE ledger (id INTEGER PRIMARY KEY, at TEXT NOT NULL, local_date TEXT NOT NULL, entry TEXT NOT NULL,
            office TEXT NOT NULL, fiscal_year INTEGER NOT NULL, receipt_no TEXT, refers_to INTEGER, tx_id TEXT,
            device TEXT NOT NULL, service TEXT NOT NULL, method TEXT NOT NULL, amount_satang INTEGER NOT NULL,
            citizen_ref TEXT, reason TEXT);
        CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: add a compensating entry'); END;
    """)
    db.close()
    store = SQLiteStore(tmp_path / "old.sqlite")
    store.open()
    try:
        assert store.write(lambda db: SqlBook(db).end_payment("tx-old-000001", "expired", T0)) is not None
        assert store.read(lambda db: db.execute("SELECT status, ended_at FROM payments").fetchone()) == (
            "expired", "2026-11-20T03:00:00.000Z")
        assert "paid_at" in {r[1] for r in store.read(lambda db: db.execute("PRAGMA table_info(ledger)").fetchall())}
    finally:
        store.close()


@pytest.mark.broker
def test_the_running_hub_expires_a_pending_payment_and_answers_the_kiosk(broker: Broker,
                                                                          procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port, "--promptpay-demo", "--promptpay-expiry-min", "0.03")
    kiosk = Kiosk(broker.port, "kk-kiosk-0001")
    try:
        wait_for(lambda: kiosk.client.is_connected(), 10, "the kiosk to connect")
        kiosk.send("kk-kiosk-0001-tx-qrrun1", "fee.payment", {"office": "kkc-hq", "service": "garbage-monthly",
                                                              "amount_satang": 4000, "method": "promptpay"}, None)
        assert kiosk.answer("kk-kiosk-0001-tx-qrrun1").status is TxStatus.PENDING
        ended = wait_for(lambda: next((a for a in kiosk.answers if a.status is TxStatus.REJECTED), None), 30,
                         "the expiry to reach the kiosk")
        assert ended.tx_id == "kk-kiosk-0001-tx-qrrun1" and ended.result["ended"] == "expired"
        assert hub.get("/api/finance/payments", status="expired")[0]["tx_id"] == "kk-kiosk-0001-tx-qrrun1"
    finally:
        kiosk.close()


def test_the_demo_writes_its_secrets_for_their_owner_only(tmp_path: Path) -> None:
    from nakhon.demo import _secret

    value = _secret(tmp_path / "secrets" / "bank.secret")
    assert stat.S_IMODE((tmp_path / "secrets" / "bank.secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert _secret(tmp_path / "secrets" / "bank.secret") == value  # the next run reuses it
