"""Finance: PromptPay vectors, exactly-once payments, gapless receipts, pending QR payments, voids, reconciliation."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.contract import Tx, TxOutcome, TxStatus, now
from hub.audit import AuditLog
from hub.auth import signature
from hub.auth.web import guarded_app
from hub.finance import api as finance_api
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.fiscal import baht, fiscal_year, thai_date
from hub.finance.promptpay import PromptPaySettings, bill_payment, crc16_ccitt_false, credit_transfer
from hub.gis import reports
from hub.router import Router
from hub.store.sqlite import SQLiteStore
from tests.conftest import AUTH_SCHEMAS, signed_client

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


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "hub.sqlite", schemas=(ledger.ensure_schema, reports.ensure_schema, *AUTH_SCHEMAS))
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
    app.include_router(finance_api.create_router(store, route, lambda d, o: answered.append((d, o)), "bank-secret",
                                                 AuditLog(store)))
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
    day = datetime.now(UTC).astimezone(ledger.BANGKOK).date().isoformat()
    summary = client.get("/api/finance/summary", params={"day": day}).json()
    assert summary["total_satang"] == 8000 and summary["total_baht"] == "80.00"
    check = client.post("/api/finance/reconciliations", json={"device": "kk-kiosk-0001", "day": day,
                                                             "counted_satang": 7500, "counted_by": "Somchai"}).json()
    assert check["ledger_satang"] == 8000 and check["difference_satang"] == -500 and not check["balanced"]
    csv_text = client.get("/api/finance/reconciliation.csv", params={"day": day}).text
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("day,device,cash_entries,ledger_cash_baht,counted_baht,difference_baht")
    assert lines[1] == f"{day},kk-kiosk-0001,4,80.00,75.00,-5.00,Somchai,difference"
