"""The dashboard's operations pages in headless Chromium against a real broker, hub and agents: an SOS alarm
acknowledged from the page and audited, a flood grouped, voids refused to a viewer and made by a finance user,
reports triaged by a GIS user, users managed by an admin."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By

from edge.contract import Location, Tx, now
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.router import Router
from tests.browser import chromium, click, js, page_ready, sign_in
from tests.conftest import TEST_PASSWORD, Broker, build_hub_app, user_token, wait_for
from tests.test_gis import Kiosk

pytestmark = pytest.mark.broker

Procs = dict[str, Callable[..., Any]]

SOS_BUTTON = {"kind": "sim_button", "name": "sos", "event": "sos.pressed", "mean_gap_s": 2.0, "seed": 20}
"""A pole's SOS button: its first press comes 4.7 s after the agent starts (once it is online), the next 2.3 s later."""
ON_PAGE_WITHIN_S = 1.0


def _with_payments(data: Path, n: int, method: str = "cash") -> list[str]:
    """A hub data directory whose ledger holds ``n`` payments by ``method`` (kiosk kk-kiosk-0001); their tx ids."""
    made = build_hub_app(data)
    tx_ids = [f"kk-kiosk-0001-tx-{method[0]}{i:05d}" for i in range(1, n + 1)]
    try:
        router = Router({"fee.payment": ledger.FinanceRoute(load_catalogue(DEMO_FEES),
                                                            PromptPaySettings(target="0801234567"))})
        for seq, tx_id in enumerate(tx_ids, 1):
            made.store.apply_tx(Tx(device="kk-kiosk-0001", seq=seq, tx_id=tx_id,
                                   kind="fee.payment", created_at=now(), citizen={"ref": "9f2c" * 16},
                                   data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000,
                                         "method": method}), 1.0, router.decide)
    finally:
        made.store.close()
    return tx_ids


def _receipt_rows(driver: Chrome) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#fin-receipts tr[data-receipt]")
    return [r.get_attribute("data-receipt") or "" for r in rows]


def _text(driver: Chrome, selector: str) -> str:
    """The text of the first element matching ``selector`` now (read in one step: the page may redraw it), with
    no-break spaces as spaces."""
    text = str(js(driver, "return document.querySelector(arguments[0])?.innerText || ''", selector))
    return text.replace("\xa0", " ")


def _session_call(driver: Chrome, method: str, path: str, body: dict[str, Any]) -> int:
    """Call the API from the page's own session (cookie and CSRF token), as a crafted request would; the status."""
    return int(driver.execute_async_script("""
        const [method, path, body, done] = arguments;
        fetch('/api/session').then(r => r.json()).then(s => fetch(path, {method, body: JSON.stringify(body),
            headers: {'Content-Type': 'application/json', [s.csrf_header]: s.csrf_token}}))
          .then(r => done(r.status), () => done(0));""", method, path, body))


def test_a_viewer_sees_no_void_and_is_refused_and_a_finance_user_voids_with_their_name_in_the_ledger(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "hub"
    _with_payments(data, 3)
    user_token(data, "vichai", ("viewer",))
    user_token(data, "malee", ("finance",))
    hub = procs["hub"](broker.port, data=data)
    receipts = [r["receipt_no"] for r in hub.get("/api/finance/receipts")]
    assert len(receipts) == 3

    with chromium(tmp_path / "viewer") as driver:
        sign_in(driver, hub.url, "vichai", TEST_PASSWORD, lang="en")
        assert driver.find_elements(By.CSS_SELECTOR, '#nav a[data-page="finance"]')
        page_ready(driver, "finance", "#fin-receipts tr[data-receipt]")
        assert sorted(_receipt_rows(driver)) == sorted(receipts)
        assert driver.find_elements(By.CSS_SELECTOR, "[data-void]") == []
        assert driver.find_elements(By.ID, "fin-count-form") == []
        assert _session_call(driver, "POST", f"/api/finance/receipts/{receipts[1]}/reverse",
                             {"entry": "void", "reason": "crafted by a viewer"}) == 403
    assert [e["entry"] for e in hub.get("/api/finance/ledger")] == ["payment"] * 3

    with chromium(tmp_path / "finance") as driver:
        sign_in(driver, hub.url, "malee", TEST_PASSWORD, lang="en")
        page_ready(driver, "finance", f'[data-void="{receipts[1]}"]')
        driver.find_element(By.CSS_SELECTOR, f'[data-void="{receipts[1]}"]').click()
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.ask[open]")
        dialog.find_element(By.NAME, "reason").send_keys("citizen paid twice")
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '#fin-ledger tr[data-kind="void"]'), 10,
                 "the compensating entry in the ledger")
        row = driver.find_element(By.CSS_SELECTOR, '#fin-ledger tr[data-kind="void"]')
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert "malee" in cells and "citizen paid twice" in cells and receipts[1] in cells
        assert any(c.startswith("-") and "40.00" in c for c in cells)
        assert not driver.find_elements(By.CSS_SELECTOR, f'[data-void="{receipts[1]}"]')

        day = driver.find_element(By.ID, "fin-day").get_attribute("value")
        xlsx = driver.find_element(By.ID, "fin-register-xlsx").get_attribute("href") or ""
        assert xlsx.endswith(f"/api/finance/register.xlsx?day={day}&lang=en")
        form = driver.find_element(By.ID, "fin-count-form")
        assert form.find_element(By.NAME, "device").get_attribute("value") == "kk-kiosk-0001"
        form.find_element(By.NAME, "counted").send_keys("75")
        form.find_element(By.NAME, "counted_by").send_keys("Somchai")
        form.find_element(By.CSS_SELECTOR, '[type="submit"]').click()
        wait_for(lambda: "Somchai" in _text(driver, "#fin-counts"), 10, "the cash count")
        assert "-THB 5.00" in _text(driver, "#fin-counts")  # 80 baht of cash in the ledger, 75 counted
    entries = hub.get("/api/finance/ledger")
    assert [(e["entry"], e["amount_satang"], e["by_user"]) for e in entries][-1] == ("void", -4000, "malee")
    audit = hub.get("/api/audit", object=f"receipt/{receipts[1]}")
    assert [(a["user"], a["action"]) for a in audit] == [("malee", "receipt.void")]


def test_a_finance_user_expires_a_pending_promptpay_payment_from_the_page_after_confirming(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "hub"
    first, second = _with_payments(data, 2, "promptpay")
    user_token(data, "malee", ("finance",))
    hub = procs["hub"](broker.port, data=data)
    with chromium(tmp_path / "finance") as driver:
        sign_in(driver, hub.url, "malee", TEST_PASSWORD, lang="en")
        page_ready(driver, "finance", f'[data-expire="{first}"]')
        assert driver.find_elements(By.CSS_SELECTOR, f'[data-cancel="{first}"]')  # beside Cancel
        driver.find_element(By.CSS_SELECTOR, f'[data-expire="{first}"]').click()
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.ask[open]")
        assert f"Expire PromptPay payment {first} now?" in dialog.text
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, f'[data-expire="{first}"]'), 10,
                 "the expired payment gone from the pending list")
        assert driver.find_elements(By.CSS_SELECTOR, f'[data-expire="{second}"]')
    assert [p["tx_id"] for p in hub.get("/api/finance/payments", status="expired")] == [first]
    assert [p["tx_id"] for p in hub.get("/api/finance/payments", status="pending")] == [second]
    audit = hub.get("/api/audit", object=f"payment/{first}")
    assert [(a["user"], a["action"]) for a in audit] == [("malee", "payment.expire")]


def test_an_sos_alarm_shows_within_a_second_is_acknowledged_from_the_page_and_audited(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    user_token(hub.data, "somchai", ("operator",))
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "somchai", TEST_PASSWORD, lang="en")
        page_ready(driver, "alarms", "#alarm-counts .count")
        assert driver.find_elements(By.CSS_SELECTOR, "#alarms-open tr[data-alarm]") == []
        js(driver, """window.seenAt = null;
            new MutationObserver(() => { if (!window.seenAt && document.querySelector('#alarms-open tr[data-alarm]'))
              window.seenAt = Date.now(); }).observe(document.body, {childList: true, subtree: true});""")
        procs["agent"]("kk-pole-0001", broker.port, drivers=[SOS_BUTTON], heartbeat_s=1.0)
        wait_for(lambda: hub.get("/api/alarms", rule="sos"), 20, "the SOS alarm on the hub")
        wait_for(lambda: js(driver, "return window.seenAt"), 5, "the SOS alarm on the page")
        pressed = min(e["ts"] for e in hub.get("/api/events", event="sos.pressed", limit=100)["events"])
        seen_after_s = js(driver, "return window.seenAt") / 1000 - datetime.fromisoformat(pressed).timestamp()
        assert 0 < seen_after_s < ON_PAGE_WITHIN_S, f"the SOS showed {seen_after_s:.2f} s after the press"

        alarm = hub.get("/api/alarms", rule="sos")[0]
        selector = f'#alarms-open tr[data-alarm="{alarm["id"]}"]'
        row = _text(driver, selector)
        assert "SOS" in row and "kk-pole-0001" in row and "unacknowledged" in row
        click(driver, f'{selector} [data-act="ack"]')
        wait_for(lambda: hub.get(f"/api/alarms/{alarm['id']}")["state"] == "acknowledged", 10, "the acknowledgement")
        assert hub.get(f"/api/alarms/{alarm['id']}")["acked_by"] == "somchai"
        # "unacknowledged" holds "acknowledged": wait for the state word to change, then the button to go
        wait_for(lambda: "acknowledged" in _text(driver, selector) and "unacknowledged" not in _text(driver, selector),
                 10, "the page to show it acknowledged")
        wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, f'{selector} [data-act="ack"]'), 10,
                 "the acknowledge button gone")

        driver.find_element(By.ID, "signout").click()
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        page_ready(driver, "audit", 'tr[data-action="alarm.ack"]')
        audited = driver.find_element(By.CSS_SELECTOR, 'tr[data-action="alarm.ack"]')
        assert audited.get_attribute("data-user") == "somchai" and f"alarm/{alarm['id']}" in audited.text


def _raise_alarms(data: Path, devices: list[str], rule: str, at: float) -> None:
    """Open alarms of one rule on many devices, written straight into the hub's store as its engine would."""
    with sqlite3.connect(data / "hub.sqlite") as db:
        db.executemany("INSERT INTO alarms (rule, device, severity, state, latched, title_th, title_en, detail, "
                       "first_seen, last_seen) VALUES (?, ?, 'major', 'active', 0, 'น้ำท่วมขัง', 'Flooding', '{}', ?, ?)",
                       [(rule, d, at, at) for d in devices])


def test_more_than_ten_alarms_in_ten_minutes_are_a_flood_grouped_by_rule(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    _raise_alarms(hub.data, [f"kk-water-{i:04d}" for i in range(10)], "water-high", time.time() - 60)
    _raise_alarms(hub.data, ["kk-water-0100"], "water-high", time.time() - 3600)  # an hour ago: not in the flood
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        page_ready(driver, "alarms", "#alarms-open tr[data-alarm]")
        assert driver.find_elements(By.CSS_SELECTOR, "#alarm-flood .flood-group") == []  # ten is not a flood
        assert len(driver.find_elements(By.CSS_SELECTOR, "#alarms-open tr[data-alarm]")) == 11

        _raise_alarms(hub.data, ["kk-water-0010"], "water-high", time.time())
        driver.refresh()
        page_ready(driver, "alarms", '#alarm-flood .flood-group[data-rule="water-high"]')
        group = driver.find_element(By.CSS_SELECTOR, '#alarm-flood .flood-group[data-rule="water-high"]')
        assert "11 ×" in group.text and "Flooding" in group.text
        assert "Alarm flood: 11 in 10 minutes" in driver.find_element(By.ID, "alarm-flood").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#alarms-open tr[data-alarm]")) == 1  # the older one
        click(driver, '#alarm-flood [data-ack-group="water-high"]')
        wait_for(lambda: len(hub.get("/api/alarms", state="acknowledged")) == 11, 10, "the group acknowledged")
    assert {a["acked_by"] for a in hub.get("/api/alarms", state="acknowledged")} == {"admin"}
    assert [a["device"] for a in hub.get("/api/alarms", state="active")] == ["kk-water-0100"]


def test_a_gis_user_assigns_and_resolves_a_report_from_the_queue_and_a_viewer_cannot(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    user_token(hub.data, "nida", ("gis",))
    user_token(hub.data, "vichai", ("viewer",))
    kiosk = Kiosk(broker.port, "kk-kiosk-0001")
    try:
        for i, (lat, lon, category) in enumerate([(16.45, 102.80, "streetlight"), (16.40, 102.86, "pothole")]):
            kiosk.send(f"kk-kiosk-0001-r{i:04d}", "issue.report", {"category": category, "description": f"เรื่อง {i}"},
                       Location(lat=lat, lon=lon))
        wait_for(lambda: len(hub.get("/api/gis/reports")["features"]) == 2, 20, "two reports on the hub")
    finally:
        kiosk.close()
    first = hub.get("/api/gis/reports")["features"][0]["id"]

    with chromium(tmp_path / "viewer") as driver:
        sign_in(driver, hub.url, "vichai", TEST_PASSWORD, lang="en")
        page_ready(driver, "reports", "#rep-queue tr[data-report]")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#rep-queue tr[data-report]")) == 2
        click(driver, f'#rep-queue tr[data-report="{first}"]')
        wait_for(lambda: "Streetlight" in _text(driver, "#rep-detail"), 10, "the report's details")
        assert driver.find_elements(By.CSS_SELECTOR, ".page [data-act]") == []

    with chromium(tmp_path / "gis") as driver:
        sign_in(driver, hub.url, "nida", TEST_PASSWORD, lang="en")
        page_ready(driver, "reports", f'#rep-queue tr[data-report="{first}"] [data-act="assigned"]')
        click(driver, f'#rep-queue tr[data-report="{first}"] [data-act="assigned"]')
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.ask[open]")
        dialog.find_element(By.NAME, "assignee").send_keys("electricity team")
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        wait_for(lambda: hub.get(f"/api/gis/reports/{first}")["properties"]["status"] == "assigned", 10, "assigned")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '#rep-detail [data-act="resolved"]'), 10,
                 "the resolve button of the assigned report")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#rep-queue tr[data-report]")) == 1, 10,
                 "the queue holding only the new report")  # it is drawn again after the detail
        click(driver, '#rep-detail [data-act="resolved"]')
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.ask[open]")
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        wait_for(lambda: "Please fill in Note" in dialog.text, 10, "the note asked for")  # resolving needs a note
        dialog.find_element(By.NAME, "note").send_keys("lamp replaced")
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        wait_for(lambda: hub.get(f"/api/gis/reports/{first}")["properties"]["status"] == "resolved", 10, "resolved")
        wait_for(lambda: "lamp replaced" in _text(driver, "#rep-detail"), 10, "the history")
    history = hub.get(f"/api/gis/reports/{first}/history")
    assert [(h["status"], h["assignee"], h["note"], h["by"]) for h in history][1:] == [
        ("assigned", "electricity team", None, "nida"), ("resolved", "electricity team", "lamp replaced", "nida")]


def test_an_admin_adds_a_user_from_the_page_sees_the_password_once_and_disables_them(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        page_ready(driver, "users", 'tr[data-user="admin"]')
        assert not driver.find_elements(By.CSS_SELECTOR, '[data-act="disable"][data-user="admin"]')  # not oneself
        driver.find_element(By.ID, "users-add").click()
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.ask[open]")
        dialog.find_element(By.NAME, "name").send_keys("somsri")
        dialog.find_element(By.CSS_SELECTOR, 'input[type="checkbox"][value="finance"]').click()
        dialog.find_element(By.CSS_SELECTOR, '[data-confirm="yes"]').click()
        shown = wait_for(lambda: driver.find_elements(By.ID, "users-generated"), 10, "the generated password")
        password = shown[0].text
        assert httpx.post(f"{hub.url}/api/session", json={"name": "somsri", "password": password},
                          timeout=10).json()["roles"] == ["finance", "viewer"]
        row = driver.find_element(By.CSS_SELECTOR, 'tr[data-user="somsri"]')
        assert "finance" in row.text and "active" in row.text
        driver.refresh()
        page_ready(driver, "users", 'tr[data-user="somsri"]')
        assert driver.find_elements(By.ID, "users-generated") == []  # shown once
        driver.find_element(By.CSS_SELECTOR, '[data-act="disable"][data-user="somsri"]').click()
        driver.find_element(By.CSS_SELECTOR, 'dialog.ask[open] [data-confirm="yes"]').click()
        wait_for(lambda: "disabled" in _text(driver, 'tr[data-user="somsri"]'), 10,
                 "the user disabled")
    assert next(u for u in hub.get("/api/users") if u["name"] == "somsri")["disabled"] is True
    assert httpx.post(f"{hub.url}/api/session", json={"name": "somsri", "password": password},
                      timeout=10).status_code == 401
