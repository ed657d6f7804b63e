"""The audit log: one append-only row per change naming the user, their address, before and after; voids and
report transitions name the user in their own records; only admin reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge.contract import Location, Tx, now
from hub.audit import CLI, Actor, AuditLog
from hub.errors import StoreError
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.gis.reports import DEMO_ZONES, ReportRoute, Zones
from hub.records.session import Session
from hub.router import Router
from nakhon import cli
from tests.conftest import HubApp

ROUTER = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567")),
                 "issue.report": ReportRoute(Zones(DEMO_ZONES))})


def _apply(hub_app: HubApp, tx: Tx) -> dict[str, object]:
    outcome, _ = hub_app.store.apply_tx(tx, 1.0, ROUTER.decide)
    return outcome.result


def _cash(tx_id: str) -> Tx:
    return Tx(device="kk-kiosk-0001", seq=1, tx_id=tx_id, kind="fee.payment", created_at=now(),
              citizen={"ref": "9f2c" * 16},
              data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000, "method": "cash"})


def test_a_void_names_the_user_in_the_ledger_and_in_the_audit_log(hub_app: HubApp) -> None:
    receipt = str(_apply(hub_app, _cash("kk-kiosk-0001-tx-a0001"))["receipt_no"])
    clerk = hub_app.client("finance", name="malee")
    r = clerk.post(f"/api/finance/receipts/{receipt}/reverse", json={"entry": "void", "reason": "paid twice"})
    assert r.status_code == 200
    entries = clerk.get("/api/finance/ledger").json()
    assert [(e["entry"], e["by_user"]) for e in entries] == [("payment", None), ("void", "malee")]
    admin = hub_app.client("admin")
    rows = admin.get("/api/audit", params={"object": f"receipt/{receipt}"}).json()
    assert len(rows) == 1
    row = rows[0]
    assert (row["user"], row["address"], row["action"]) == ("malee", "testclient", "receipt.void")
    assert row["before"] == {"reversed": False}
    assert row["after"]["reversed"] and row["after"]["reason"] == "paid twice"
    assert clerk.get("/api/audit").status_code == 403  # the log is for admins


def test_a_report_transition_names_the_user_in_its_history_and_in_the_audit_log(hub_app: HubApp) -> None:
    report = _apply(hub_app, Tx(device="kk-kiosk-0001", seq=2, tx_id="kk-kiosk-0001-r0001", kind="issue.report",
                                created_at=now(), data={"category": "streetlight", "description": "lamp out"},
                                location=Location(lat=16.45, lon=102.80)))
    rid = report["report_id"]
    officer = hub_app.client("gis", name="somchai")
    assert officer.patch(f"/api/gis/reports/{rid}", json={"status": "assigned",
                                                          "assignee": "Electrical team"}).status_code == 200
    assert officer.patch(f"/api/gis/reports/{rid}", json={"status": "resolved", "note": "replaced"}).status_code == 200
    history = officer.get(f"/api/gis/reports/{rid}/history").json()
    assert [(h["status"], h["by"]) for h in history] == [("new", None), ("assigned", "somchai"),
                                                         ("resolved", "somchai")]
    rows = hub_app.client("admin").get("/api/audit", params={"user": "somchai", "object": "report"}).json()
    assert [(r["action"], r["object"], r["before"]["status"], r["after"]["status"]) for r in rows] == [
        ("report.assigned", f"report/{rid}", "new", "assigned"),
        ("report.resolved", f"report/{rid}", "assigned", "resolved")]
    assert rows[1]["before"]["assignee"] == "Electrical team" and rows[1]["after"]["with_note"] is True


def test_a_refused_change_leaves_no_audit_row(hub_app: HubApp) -> None:
    receipt = str(_apply(hub_app, _cash("kk-kiosk-0001-tx-a0002"))["receipt_no"])
    viewer = hub_app.client("viewer", name="nok")
    assert viewer.post(f"/api/finance/receipts/{receipt}/reverse",
                       json={"entry": "void", "reason": "not allowed"}).status_code == 403
    assert hub_app.client("admin").get("/api/audit", params={"object": "receipt"}).json() == []


def test_the_audit_log_is_append_only_in_the_database(hub_app: HubApp) -> None:
    AuditLog(hub_app.store).record(Actor(user="malee", address="10.0.0.5"), "cash.count", "reconciliation/x")
    for sql in ("UPDATE audit SET user = 'someone else'", "DELETE FROM audit"):
        def edit(db: Session, sql: str = sql) -> None:
            db.execute(sql)

        with pytest.raises(StoreError, match="append-only"):
            hub_app.store.write(edit)
    assert [e.user for e in AuditLog(hub_app.store).entries()] == ["malee"]


def test_the_audit_api_filters_by_user_object_and_time(hub_app: HubApp) -> None:
    log = AuditLog(hub_app.store)
    log.record(Actor(user="malee", address="10.0.0.5"), "cash.count", "reconciliation/kk-kiosk-0001/2026-11-20",
               None, {"counted_satang": 100})
    log.record(CLI, "user.add", "user/malee", None, {"roles": ["finance"]})
    admin = hub_app.client("admin")
    assert [r["user"] for r in admin.get("/api/audit", params={"object": "user/malee"}).json()] == ["cli"]
    assert [r["action"] for r in admin.get("/api/audit", params={"user": "malee"}).json()] == ["cash.count"]
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert admin.get("/api/audit", params={"since": future}).json() == []
    assert admin.get("/api/audit", params={"since": "2026-11-20T10:00:00"}).status_code == 422
    assert admin.get("/api/audit", params={"object": "recon"}).json() == []  # prefixes end at a '/'


def test_sign_ins_and_account_commands_are_audited(hub_app: HubApp, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(hub_app.store.path.parent)]
    assert cli.main(["hub", "user", "add", "lek", "--role", "operator", *data]) == 0
    password = capsys.readouterr().out.split("keep it safe): ")[1].strip()
    assert hub_app.anonymous().post("/api/session", json={"name": "lek", "password": password}).status_code == 200
    rows = hub_app.client("admin").get("/api/audit", params={"object": "user/lek"}).json()
    assert [(r["user"], r["action"]) for r in rows] == [("cli", "user.add"), ("lek", "session.open")]
    assert password not in str(rows)
