"""API input: every out-of-range path, query or body value is a 4xx with a clear message, never a 500."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.contract import Location, Tx, TxStatus, now
from hub.api.validation import MAX_ECHO, MAX_ERRORS
from hub.auth import signature
from hub.auth.accounts import Accounts
from hub.finance import ledger
from hub.finance.catalogue import load_catalogue
from hub.finance.fiscal import local_date
from hub.finance.promptpay import PromptPaySettings
from hub.gis.reports import ReportRoute, Zones
from hub.ingest.consumer import IngestSettings
from hub.router import Router
from hub.serve import HubSettings, build
from hub.store.sqlite import SQLiteStore
from tests.conftest import TEST_PASSWORD

KIOSK = "kk-kiosk-0001"
BANK_SECRET = "bank-secret-for-tests"
HUGE = "99999999999999999999999"


@dataclass
class HubApp:
    """The hub's whole API in-process over a store in tmp_path, with one kiosk, a payment and a report; ``client``
    sends the API token of an admin (``token``)."""

    app: FastAPI
    client: TestClient
    store: SQLiteStore
    router: Router
    settings: HubSettings
    token: str

    def tx(self, tx: Tx) -> Any:
        """Apply a transaction as ingest would."""
        return self.store.apply_tx(tx, now().timestamp(), self.router.decide)[0]


def hub_settings(tmp_path: Path, **extra: Any) -> HubSettings:
    """Settings of a hub whose broker is never reached (nothing is started)."""
    return HubSettings(data=tmp_path / "hub", ingest=IngestSettings(port=1), bank_secret=BANK_SECRET,
                       promptpay=PromptPaySettings(target="0000000000"), **extra)


def make_hub_app(tmp_path: Path, **extra: Any) -> HubApp:
    """Build the hub's app without its lifespan (no broker): the store is opened here, closed by the caller."""
    settings = hub_settings(tmp_path, **extra)
    app, store, _ = build(settings)
    store.open()
    router = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(settings.fees), settings.promptpay),
                     "issue.report": ReportRoute(Zones(settings.zones))})
    users = Accounts(store)
    users.add_user("admin", ["admin"], TEST_PASSWORD)
    _, token = users.add_token("admin", "tests")
    client = TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {token}"})
    assert isinstance(store, SQLiteStore)
    hub = HubApp(app, client, store, router, settings, token)
    hub.tx(Tx(device=KIOSK, seq=1, tx_id=f"{KIOSK}-tx-000001", kind="fee.payment", created_at=now(),
              data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000, "method": "cash"}))
    hub.tx(Tx(device=KIOSK, seq=2, tx_id=f"{KIOSK}-r-000001", kind="issue.report", created_at=now(),
              data={"category": "pothole", "description": "หลุมบ่อหน้าตลาด"}, location=Location(lat=16.45, lon=102.8)))
    return hub


def signed_body(body: Any) -> dict[str, Any]:
    """Request arguments sending ``body`` as JSON signed as the bank signs it (other routes ignore the headers)."""
    raw = json.dumps(body).encode()
    return {"content": raw, "headers": {"Content-Type": "application/json", **signature.headers(BANK_SECRET, raw)}}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubApp]:
    h = make_hub_app(tmp_path)
    yield h
    h.store.close()


@pytest.mark.parametrize("method,path,body", [
    ("GET", f"/api/gis/reports/{HUGE}", None),
    ("GET", f"/api/gis/reports/{HUGE}/history", None),
    ("PATCH", f"/api/gis/reports/{HUGE}", {"status": "resolved"}),
    ("GET", f"/api/gis/reports?offset={HUGE}", None),
    ("GET", f"/ogc/collections/reports/items?offset={HUGE}", None),
    ("GET", f"/api/finance/receipts?fiscal_year={HUGE}", None),
    ("POST", "/api/finance/reconciliations", {"device": KIOSK, "day": "2026-11-20", "counted_satang": 2**64,
                                              "counted_by": "Somchai"}),
    ("POST", f"/api/finance/payments/{KIOSK}-tx-000001/confirm", {"amount_satang": 2**64, "bank_ref": "B1"}),
    ("GET", "/api/devices/kk-kiosk-0001/readings?since=0001-01-01T00:00:00%2B01:00", None),
])
def test_integers_and_times_beyond_what_the_store_holds_are_refused_with_422(
        hub: HubApp, method: str, path: str, body: dict[str, Any] | None) -> None:
    r = hub.client.request(method, path, **signed_body(body))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and all(d["msg"] for d in detail)


@pytest.mark.parametrize("query,message", [
    ({"datetime": "0001-01-01T00:00:00+01:00"}, "between years 1 and 9999"),
    ({"datetime": "../9999-12-31T23:59:59-05:00"}, "between years 1 and 9999"),
    ({"datetime": "yesterday"}, "not an RFC 3339 timestamp"),
    ({"bbox": "nan,nan,nan,nan"}, "four finite numbers"),
    ({"bbox": "-inf,0,inf,1"}, "four finite numbers"),
    ({"bbox": "0,0,1e309,1"}, "four finite numbers"),
    ({"bbox": "0,-91,1,1"}, "latitudes within -90..90"),
    ({"bbox": "1,2"}, "four finite numbers"),
])
@pytest.mark.parametrize("collection", ["reports", "devices", "zones"])
def test_ogc_filters_that_mean_nothing_are_a_400_that_says_why(
        hub: HubApp, collection: str, query: dict[str, str], message: str) -> None:
    r = hub.client.get(f"/ogc/collections/{collection}/items", params=query)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize("fid", ["²", "١", HUGE, "0", "-1", "1.0"])
def test_an_ogc_report_id_that_is_not_a_row_id_is_not_found(hub: HubApp, fid: str) -> None:
    r = hub.client.get(f"/ogc/collections/reports/items/{fid}")
    assert r.status_code == 404, r.text
    assert hub.client.get("/ogc/collections/reports/items/1").json()["id"] == 1


def test_a_422_repeats_at_most_a_cut_copy_of_what_was_sent(hub: HubApp) -> None:
    huge = "x" * 200_000  # under the body limit: a larger body is a 413 before any validation
    r = hub.client.post("/api/finance/reconciliations", json={"device": KIOSK, "day": "2026-11-20",
                                                              "counted_satang": 1, "counted_by": huge})
    assert r.status_code == 422
    assert len(r.content) < 2_000
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "counted_by"] and "at most 100 characters" in error["msg"]
    assert error["input"].startswith("x" * MAX_ECHO) and error["input"].endswith("(200000 characters)")
    nested = hub.client.post("/api/finance/reconciliations", json={
        "device": KIOSK, "day": "2026-11-20", "counted_satang": {"deep": ["y" * 2_000] * 100},
        "counted_by": "Somchai"})
    assert nested.status_code == 422 and len(nested.content) < 2_000
    many = hub.client.post("/api/finance/reconciliations", json=[{"k": "v"}] * 1000)
    assert many.status_code == 422 and len(many.json()["detail"]) <= MAX_ERRORS


def test_counted_by_that_looks_like_a_formula_is_exported_as_text(hub: HubApp) -> None:
    day = local_date(now()).isoformat()
    for i, name in enumerate(["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tTab", "\rCR", "Somchai"]):
        r = hub.client.post("/api/finance/reconciliations", json={"device": KIOSK, "day": day,
                                                                  "counted_satang": 4000 + i, "counted_by": name})
        assert r.status_code == 200, r.text
        rows = list(csv.reader(io.StringIO(hub.client.get("/api/finance/reconciliation.csv",
                                                          params={"day": day}).text)))
        assert rows[1][6] == (name if name == "Somchai" else f"'{name}")
    assert rows[1][5] == "0.06"  # a number stays a number


def test_a_payment_with_a_bounded_amount_still_goes_through(hub: HubApp) -> None:
    outcome = hub.tx(Tx(device=KIOSK, seq=3, tx_id=f"{KIOSK}-tx-qr0001", kind="fee.payment", created_at=now(),
                        data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000,
                              "method": "promptpay"}))
    assert outcome.status is TxStatus.PENDING
    r = hub.client.post(f"/api/finance/payments/{KIOSK}-tx-qr0001/confirm",
                        **signed_body({"amount_satang": 4000, "bank_ref": "B1"}))
    assert r.status_code == 200 and r.json()["receipt_no"].endswith("-000002")
