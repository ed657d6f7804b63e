"""The API the dashboard's operations pages need: the daily receipt register (CSV, XLSX) and the users API."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from openpyxl import load_workbook

from edge.contract import Tx, TxOutcome, TxStatus, now
from hub.audit import AuditLog
from hub.auth.accounts import Accounts
from hub.finance import ledger
from hub.finance.api import expire_pending
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.fiscal import BANGKOK
from hub.finance.promptpay import PromptPaySettings
from hub.finance.repository import SqlFinance
from hub.router import Router
from tests.conftest import TEST_PASSWORD, HubApp


def _pay(hub_app: HubApp, n: int, amounts: list[int]) -> None:
    router = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings())})
    for i, amount in enumerate(amounts):
        tx = Tx(device="kk-kiosk-0001", seq=n + i, tx_id=f"kk-kiosk-0001-tx-r{n + i:05d}", kind="fee.payment",
                created_at=now(), citizen={"ref": "9f2c" * 16},
                data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": amount, "method": "cash"})
        hub_app.store.apply_tx(tx, 1.0, router.decide)


def _today() -> str:
    return datetime.now(UTC).astimezone(BANGKOK).date().isoformat()


def test_the_daily_register_lists_every_entry_of_the_day_as_csv_and_xlsx(hub_app: HubApp) -> None:
    _pay(hub_app, 1, [4000, 4000, 4000])
    clerk = hub_app.client("finance", name="malee")
    first, second, third = [r["receipt_no"] for r in clerk.get("/api/finance/receipts").json()]
    assert clerk.post(f"/api/finance/receipts/{second}/reverse",
                      json={"entry": "void", "reason": "=paid twice"}).status_code == 200
    viewer = hub_app.client("viewer")
    r = viewer.get("/api/finance/register.csv", params={"day": _today(), "lang": "en"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="receipts-{_today()}.csv"'
    assert r.text.startswith("\ufeff")  # spreadsheets read the Thai as UTF-8
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert [(x["receipt no."], x["entry"], x["refers to receipt"], x["amount (baht)"]) for x in rows] == [
        (first, "payment", "", "40.00"), (second, "payment", "", "40.00"), (third, "payment", "", "40.00"),
        ("", "void", second, "-40.00")]
    assert rows[3]["reason"] == "'=paid twice" and rows[3]["by"] == "malee"  # a formula is not run
    assert "9f2c" not in r.text  # no citizen reference in the register
    thai = viewer.get("/api/finance/register.csv", params={"day": _today()}).text
    assert thai.lstrip("\ufeff").startswith("วันที่,หน่วยงาน,ปีงบประมาณ,เลขที่ใบเสร็จ")

    x = viewer.get("/api/finance/register.xlsx", params={"day": _today()})
    assert x.status_code == 200
    assert x.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    sheet = load_workbook(io.BytesIO(x.content)).worksheets[0]
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values[0][3] == "เลขที่ใบเสร็จ" and values[0][10] == "จำนวนเงิน (บาท)"
    assert [v[3] for v in values[1:4]] == [first, second, third]
    assert [v[10] for v in values[1:5]] == [40.0, 40.0, 40.0, -40.0]
    assert values[5][0] == "รวม" and values[5][10] == 80.0
    assert sheet.cell(2, 11).number_format == "#,##0.00"
    empty = viewer.get("/api/finance/register.csv", params={"day": "2020-01-01", "lang": "en"}).text
    assert empty.lstrip("\ufeff").strip().count("\n") == 0  # only the heading


def test_an_admin_manages_users_through_the_api_and_every_change_is_audited(hub_app: HubApp) -> None:
    admin = hub_app.client("admin", name="root")
    r = admin.post("/api/users", json={"name": "somchai", "roles": ["viewer"]})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    generated = r.json()["password"]
    accounts = Accounts(hub_app.store)
    assert accounts.verify("somchai", generated) is not None
    assert admin.post("/api/users", json={"name": "somchai", "roles": ["viewer"]}).status_code == 409
    assert admin.post("/api/users", json={"name": "x", "roles": ["viewer"]}).status_code == 422
    assert admin.post("/api/users", json={"name": "nida", "roles": ["mayor"]}).status_code == 422
    assert admin.post("/api/users", json={"name": "nida", "roles": ["gis"], "password": "short"}).status_code == 422
    assert "password" not in admin.post("/api/users", json={"name": "nida", "roles": ["gis"],
                                                            "password": TEST_PASSWORD}).json()
    listed = {u["name"]: u for u in admin.get("/api/users").json()}
    assert listed["somchai"]["roles"] == ["viewer"] and not listed["somchai"]["disabled"]
    assert all("password" not in u and "password_hash" not in u for u in listed.values())

    session = accounts.open_session("somchai", "127.0.0.1")
    r = admin.put("/api/users/somchai/roles", json={"roles": ["finance", "viewer"]})
    assert r.status_code == 200 and r.json()["roles"] == ["finance", "viewer"]
    assert accounts.session_user(session) is None  # new roles apply at the next sign-in
    assert admin.post("/api/users/somchai/disable").json()["disabled"] is True
    assert accounts.verify("somchai", generated) is None
    reset = admin.post("/api/users/somchai/reset")
    assert reset.json()["disabled"] is False and accounts.verify("somchai", reset.json()["password"]) is not None
    assert admin.post("/api/users/nobody/disable").status_code == 404
    assert admin.post("/api/users/root/disable").status_code == 409  # never locks the last admin out
    assert admin.put("/api/users/root/roles", json={"roles": ["viewer"]}).status_code == 409

    trail = [(e["user"], e["action"], e["object"]) for e in admin.get("/api/audit", params={"object": "user"}).json()
             if e["action"] != "session.open"]
    assert trail == [("root", "user.add", "user/somchai"), ("root", "user.add", "user/nida"),
                     ("root", "user.roles", "user/somchai"), ("root", "user.disable", "user/somchai"),
                     ("root", "user.reset", "user/somchai")]
    audit_text = str(admin.get("/api/audit").json())
    assert generated not in audit_text and reset.json()["password"] not in audit_text


def test_only_an_admin_may_see_or_change_users(hub_app: HubApp) -> None:
    for role in ("viewer", "operator", "finance", "gis"):
        client = hub_app.client(role)
        assert client.get("/api/users").status_code == 403
        assert client.post("/api/users", json={"name": "evil", "roles": ["admin"]}).status_code == 403
    assert hub_app.anonymous().get("/api/users").status_code == 401
    assert Accounts(hub_app.store).user("evil") is None


def test_a_finance_user_expires_a_pending_payment_now_as_its_time_running_out_would_once_and_audited(
        hub_app: HubApp) -> None:
    catalogue = load_catalogue(DEMO_FEES)
    router = Router({"fee.payment": ledger.FinanceRoute(catalogue, PromptPaySettings(target="0801234567"))})
    for seq, tx_id in enumerate(("kk-kiosk-0001-tx-qrexp1", "kk-kiosk-0001-tx-qrexp2"), start=1):
        pending, _ = hub_app.store.apply_tx(Tx(
            device="kk-kiosk-0001", seq=seq, tx_id=tx_id, kind="fee.payment", created_at=now(),
            citizen={"ref": "9f2c" * 16}, data={"office": "kkc-hq", "service": "garbage-monthly",
                                                "amount_satang": 4000, "method": "promptpay"}), 1.0, router.decide)
        assert pending.status is TxStatus.PENDING
    url = "/api/finance/payments/kk-kiosk-0001-tx-qrexp1/expire"
    for role in ("viewer", "operator"):
        assert hub_app.client(role).post(url).status_code == 403
    finance = hub_app.client("finance", name="malee")
    first = finance.post(url)
    assert first.status_code == 200 and first.json() == {"tx_id": "kk-kiosk-0001-tx-qrexp1", "status": "expired",
                                                         "already_ended": False}
    again = finance.post(url)
    assert again.status_code == 200 and again.json() == {"tx_id": "kk-kiosk-0001-tx-qrexp1", "status": "expired",
                                                         "already_ended": True}
    assert finance.post("/api/finance/payments/kk-kiosk-0001-tx-nope00/expire").status_code == 404
    trail = hub_app.client("admin").get("/api/audit", params={"object": "payment/kk-kiosk-0001-tx-qrexp1"}).json()
    assert [(e["user"], e["action"]) for e in trail] == [("malee", "payment.expire")]

    told: list[tuple[str, TxOutcome]] = []  # the other one ends on its own, by the automatic expiry
    expire_pending(SqlFinance(hub_app.store, catalogue, AuditLog(hub_app.store)),
                   lambda d, o: told.append((d, o)), datetime.now(UTC) + timedelta(days=1))
    assert [o.tx_id for _, o in told] == ["kk-kiosk-0001-tx-qrexp2"]
    by_hand = hub_app.store.tx_outcome("kk-kiosk-0001-tx-qrexp1", "kk-kiosk-0001")
    by_time = hub_app.store.tx_outcome("kk-kiosk-0001-tx-qrexp2", "kk-kiosk-0001")
    assert by_hand is not None and by_time is not None and by_hand.status is TxStatus.REJECTED
    assert by_hand.result["ended"] == "expired" and by_hand.reason == by_time.reason
    assert by_hand.result.keys() == by_time.result.keys()
