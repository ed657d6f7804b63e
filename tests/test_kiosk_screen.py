"""The kiosk's touch screen in headless Chromium, against a real broker, hub and kiosk agent: what a citizen sees."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sqlite3
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from edge import config as config_module
from edge.agents.agent import Agent
from edge.contract import DeviceState, tx_reference
from hub.auth import signature
from hub.broker import free_port
from tests.conftest import ROOT, Broker, Hub, Proc, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)"),
]

FIRMWARE_CONFIG = ROOT / "firmware-configs" / "service-kiosk.toml"
PAGE = ROOT / "edge" / "agents" / "kiosk_screen" / "index.html"
BANK_SECRET = "bank-callback-secret"
ANSWER_TIMEOUT_S = 3
RECEIPT_NO = re.compile(r"^KKC-25\d\d-\d{6}$")
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")
LANDSCAPE = (1024, 600)
PORTRAIT = (800, 1280)
PI_DISPLAY = (800, 480)
"""The Raspberry Pi 7" touch display."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # JSON strings and numbers are valid TOML


def _toml(table: dict[str, Any], prefix: str = "") -> list[str]:
    """TOML lines of a parsed config: its keys, then its tables and arrays of tables."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict) and not is_tables(v)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", *_toml(value, f"{prefix}{key}.")]
        elif is_tables(value):
            for item in value:
                lines += ["", f"[[{prefix}{key}]]", *_toml(item, f"{prefix}{key}.")]
    return lines


def kiosk_config(tmp_path: Path, broker_port: int, http_port: int, **kiosk: Any) -> Path:
    """The shipped service-kiosk config, with only its printer (no card reader, scanner or GPIO), on local ports."""
    config = tomllib.loads(FIRMWARE_CONFIG.read_text(encoding="utf-8"))
    config["broker"] = {"host": "127.0.0.1", "port": broker_port}
    config["agent"] = {"heartbeat_s": 1, "resend_after_s": 1, "backoff_min_s": 0.2, "backoff_max_s": 1}
    config["outbox"] = {"path": str(tmp_path / "kiosk-outbox.sqlite"), "synchronous": "full"}
    config["drivers"] = [{**d, "sim_paper_log": str(tmp_path / "paper.log")}
                         for d in config["drivers"] if d["kind"] == "escpos_printer"]
    del config["kiosk"]["card_reader"]
    config["kiosk"].update(http_port=http_port, answer_timeout_s=ANSWER_TIMEOUT_S, **kiosk)
    path = tmp_path / "kiosk.toml"
    path.write_text("\n".join(_toml(config)) + "\n", encoding="utf-8")
    return path


@dataclass
class Site:
    """A broker, the hub and one kiosk agent (printer on its simulator), as a municipality runs them."""

    broker: Broker
    hub: Hub
    kiosk: Proc
    http_port: int
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def kiosk_state(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"{self.url}api/state", timeout=2).json()  # type: ignore[no-any-return]
        except httpx.HTTPError:
            return None

    def committed(self) -> list[str]:
        """The tx_ids the kiosk committed, from its journal."""
        with sqlite3.connect(f"file:{self.tmp / 'kiosk-journal.sqlite'}?mode=ro", uri=True) as db:
            return [r[0] for r in db.execute("SELECT tx_id FROM journal")]

    def documents_printed(self) -> int:
        """Slips and receipts that came out of the (simulated) printer: one cut each."""
        paper = self.tmp / "paper.log"
        return paper.read_text(encoding="utf-8").splitlines().count("cut") if paper.exists() else 0

    def confirm_payment(self, tx_id: str, amount_satang: int) -> dict[str, Any]:
        """What the bank's callback does when the citizen has paid the QR."""
        body = json.dumps({"amount_satang": amount_satang, "bank_ref": "BANK-0001"}).encode()
        r = httpx.post(f"{self.hub.url}/api/finance/payments/{tx_id}/confirm", timeout=10, content=body,
                       headers={"Content-Type": "application/json", **signature.headers(BANK_SECRET, body)})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, procs: dict[str, Any]) -> Iterator[Site]:
    """The broker, the hub (with the bank's signing secret) and the kiosk agent, started and linked; a test may
    change ``[kiosk]`` settings with ``@pytest.mark.parametrize("site", [{...}], indirect=True)``."""
    secret = tmp_path / "bank.secret"
    secret.write_text(BANK_SECRET)
    secret.chmod(0o600)
    hub = procs["hub"](broker.port, "--bank-secret-file", str(secret), "--promptpay-demo")
    http_port = free_port()
    config = kiosk_config(tmp_path, broker.port, http_port, **getattr(request, "param", {}))
    kiosk = Proc(["agent", "run", "--simulate", str(config)],
                 tmp_path / "kiosk.log")
    kiosk.start()
    s = Site(broker, hub, kiosk, http_port, tmp_path)
    try:
        def online() -> bool:
            if not kiosk.alive():
                pytest.fail(f"kiosk exited:\n{kiosk.log()[-3000:]}")
            return bool((s.kiosk_state() or {}).get("online"))

        wait_for(online, 30, "the kiosk screen up and linked to the broker")
        yield s
    finally:
        kiosk.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """One headless Chromium for the module, with a fresh profile; quit at the end."""
    options = webdriver.ChromeOptions()
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class KioskScreen:
    """The page in the browser, read and touched the way a citizen does: by what is on the screen."""

    def __init__(self, driver: Chrome, url: str, shots: Path) -> None:
        self.driver = driver
        self.url = url
        self.shots = shots
        self.taken: list[Path] = []

    def open(self, size: tuple[int, int] = LANDSCAPE) -> None:
        width, height = size
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.driver.get(self.url)
        self.wait_step("notice")

    def find(self, testid: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def visible(self, testid: str) -> WebElement | None:
        found = self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        return found[0] if found and found[0].is_displayed() else None

    def text(self, testid: str) -> str:
        return str(self.find(testid).text)

    def step(self) -> str:
        return str(self.find("screen").get_attribute("data-step"))

    def wait_step(self, step: str, timeout: float = 10) -> None:
        wait_for(lambda: self.step() == step and self.visible(f"step-{step}"), timeout, f"the {step} screen")

    def wait_visible(self, testid: str, timeout: float = 10) -> WebElement:
        return wait_for(lambda: self.visible(testid), timeout, f"{testid} on the screen")  # type: ignore[no-any-return]

    def tap(self, testid: str) -> None:
        element = self.wait_visible(testid)
        assert element.is_enabled(), f"{testid} is not enabled"
        element.click()

    def fits(self, name: str) -> None:
        """Nothing on this screen needs scrolling: every button is inside the viewport and nothing scrolls."""
        self.shot(name)
        outside = self.driver.execute_script(
            "return [...document.querySelectorAll('button')].filter(b => b.offsetParent !== null)"
            ".map(b => [b.dataset.testid || b.textContent.trim(), b.getBoundingClientRect()])"
            ".filter(([, r]) => r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth)"
            ".map(([label, r]) => [label, Math.round(r.top), Math.round(r.bottom)])")
        assert not outside, f"buttons outside the {self.driver.execute_script('return innerHeight')} px " \
                            f"high screen on {name}: {outside}"
        scrolled = self.driver.execute_script(
            "return [...document.querySelectorAll('.step-body, main, body')]"
            ".filter(e => e.scrollHeight > e.clientHeight + 1).map(e => e.className || e.tagName)")
        assert not scrolled, f"{name} scrolls: {scrolled}"

    def shot(self, name: str) -> None:
        """A screenshot, after checking what any screen must be: big touch targets and nothing cut off sideways."""
        sizes = self.driver.execute_script(
            "return [...document.querySelectorAll('button')].filter(b => b.offsetParent !== null)"
            ".map(b => [b.dataset.testid || b.textContent.trim(), b.getBoundingClientRect().height])")
        small = [(label, height) for label, height in sizes if height < 64]
        assert not small, f"touch targets under 64 px on {name}: {small}"
        overflow = self.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is {overflow} px wider than the screen"
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)


def console_log(browser: Chrome) -> list[dict[str, Any]]:
    """The browser console's entries since the last call."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium: unannotated
    return entries


@pytest.fixture
def screen(browser: Chrome, site: Site, tmp_path: Path) -> Iterator[KioskScreen]:
    """The kiosk page for one test; fails the test if the page threw a JavaScript error."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    console_log(browser)  # start with an empty console
    yield KioskScreen(browser, site.url, shots)
    console = console_log(browser)
    browser.get("about:blank")  # stop polling a kiosk that is about to go away
    thrown = [entry["message"] for entry in console if entry["source"] == "javascript"]
    assert not thrown, f"the page threw: {thrown}"


def start_anonymously(screen: KioskScreen) -> None:
    screen.tap("accept")
    screen.wait_step("identify")
    screen.tap("anonymous")
    screen.wait_step("service")


def test_page_is_self_contained() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"https?://|\bsrc\s*=|@import|url\(", page), "the kiosk page must not load anything"
    assert '<html lang="th">' in page


def test_anonymous_cash_payment_of_the_garbage_fee_shows_the_receipt_number(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    assert screen.driver.execute_script("return document.documentElement.lang") == "th"
    notice = screen.text("notice-text")
    assert "ประจำตัวประชาชน" in notice and "PDPA" in notice
    assert "ตู้จะอ่านเฉพาะ" not in notice  # this kiosk has no card reader: the notice claims no card fields
    assert screen.text("lang-switch") == "English"
    screen.shot("notice")

    screen.tap("accept")
    screen.wait_step("identify")
    assert screen.text("heading") == "กรุณาเสียบบัตรประจำตัวประชาชน"
    screen.shot("identify")

    screen.tap("anonymous")
    screen.wait_step("service")
    assert screen.text("service-amount-garbage-monthly") == "40.00 บาท"
    assert screen.text("service-amount-building-permit") == "1,500.00 บาท"
    screen.shot("services")

    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    assert screen.text("amount") == "40.00 บาท"
    screen.shot("payment")

    screen.tap("method-cash")
    screen.wait_step("done")
    receipt_no = screen.text("receipt-no")
    assert RECEIPT_NO.match(receipt_no) and receipt_no.endswith("-000001"), receipt_no
    assert screen.text("take") == "กรุณารับใบเสร็จ"
    assert screen.text("amount") == "40.00 บาท"
    screen.shot("done")

    receipts = site.hub.get("/api/finance/receipts")
    assert [(r["receipt_no"], r["amount_satang"], r["method"]) for r in receipts] == [(receipt_no, 4000, "cash")]
    wait_for(lambda: site.documents_printed() == 1, 10, "the receipt printed")

    screen.tap("finish")
    screen.wait_step("notice")


def test_promptpay_shows_the_qr_and_the_receipt_once_the_bank_confirms(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    start_anonymously(screen)
    screen.tap("service-water-meter-check")
    message = screen.wait_visible("message")
    assert "ต้องใช้บัตรประจำตัวประชาชน" in message.text
    assert screen.step() == "service"
    screen.shot("card-required")

    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    screen.tap("method-promptpay")
    screen.wait_step("awaiting_payment")
    qr = screen.driver.find_element(By.CSS_SELECTOR, '[data-testid="qr"] svg')
    assert qr.is_displayed() and qr.size["width"] >= 200 and qr.size["height"] >= 200
    assert screen.text("amount") == "40.00 บาท"
    reference = screen.text("reference")
    assert "กำลังรอการยืนยันจากธนาคาร" in screen.text("progress")
    screen.shot("promptpay-qr")

    pending = site.hub.get("/api/finance/payments", status="pending")
    assert [(p["reference"], p["amount_satang"]) for p in pending] == [(reference, 4000)]
    confirmed = site.confirm_payment(pending[0]["tx_id"], 4000)

    screen.wait_step("done")
    assert screen.text("receipt-no") == confirmed["receipt_no"]
    assert RECEIPT_NO.match(confirmed["receipt_no"])
    screen.shot("promptpay-done")


def test_the_english_switch_changes_the_screen_and_back(screen: KioskScreen, site: Site) -> None:
    screen.open(PORTRAIT)
    assert screen.text("heading") == "ประกาศความเป็นส่วนตัว"
    assert screen.text("accept") == "ยอมรับและเริ่มใช้บริการ"

    screen.tap("lang-switch")
    wait_for(lambda: screen.text("heading") == "Privacy notice", 5, "the notice in English")
    assert screen.text("accept") == "Accept and start"
    assert screen.text("decline") == "Do not accept"
    assert "Personal Data Protection Act" in screen.text("notice-text")
    assert screen.text("lang-switch") == "ภาษาไทย"
    assert screen.driver.execute_script("return document.documentElement.lang") == "en"
    wait_for(lambda: (site.kiosk_state() or {}).get("lang") == "en", 5, "the kiosk to keep English")
    screen.shot("notice-english")

    screen.tap("accept")
    screen.wait_step("identify")
    assert screen.text("heading") == "Please insert your Thai ID card"
    assert screen.text("anonymous") == "Continue without a card"

    screen.tap("lang-switch")
    wait_for(lambda: screen.text("heading") == "กรุณาเสียบบัตรประจำตัวประชาชน", 5, "the card screen in Thai")
    assert screen.text("anonymous") == "ทำรายการโดยไม่ใช้บัตร"
    assert screen.text("lang-switch") == "English"
    screen.shot("identify-thai-portrait")

    loaded = screen.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith(location.origin + '/'))")
    assert loaded == [], f"the page loaded something from elsewhere: {loaded}"


def test_a_problem_report_shows_its_report_number(screen: KioskScreen, site: Site) -> None:
    description = "อยู่ใกล้ทางแยก, อันตรายต่อผู้สัญจร"
    screen.open(LANDSCAPE)
    start_anonymously(screen)
    screen.tap("service-report")
    screen.wait_step("report")
    screen.shot("report-category")
    screen.tap("category-flooding")
    assert screen.text("report-category") == "น้ำท่วมขัง"
    for phrase in ("phrase-1", "phrase-2", "phrase-3"):  # no keyboard: the citizen taps preset phrases
        screen.tap(phrase)
    screen.tap("phrase-2")  # a second tap takes a phrase back
    assert screen.find("phrase-2").get_attribute("aria-pressed") == "false"
    assert screen.text("report-description") == description
    assert screen.driver.find_elements(By.CSS_SELECTOR, "textarea, input") == []
    screen.shot("report")

    screen.tap("send-report")
    screen.wait_step("done")
    report_no = screen.text("report-no")
    assert report_no.isdigit()
    assert screen.text("category") == "น้ำท่วมขัง"
    zone = screen.text("zone")
    assert zone.startswith("เขต: เขต ") and "zone-" not in zone  # the zone's name, not its code
    screen.shot("report-done")

    stored = site.hub.get(f"/api/gis/reports/{report_no}")
    assert stored["properties"]["category"] == "flooding"
    assert stored["properties"]["description"] == description


def test_with_the_hub_down_a_provisional_slip_then_the_receipt_under_one_tx_id(
        screen: KioskScreen, site: Site) -> None:
    site.hub.stop()
    screen.open(LANDSCAPE)
    start_anonymously(screen)
    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    screen.tap("method-cash")
    screen.wait_step("sending")
    progress = screen.find("progress")
    assert progress.get_attribute("role") == "status" and "กำลังส่งรายการ" in progress.text
    screen.shot("sending")

    screen.wait_step("provisional", timeout=ANSWER_TIMEOUT_S + 10)
    [tx_id] = site.committed()
    assert screen.text("reference") == tx_reference(tx_id)
    wait_for(lambda: site.documents_printed() == 1, 10, "the provisional slip printed")
    screen.shot("provisional")

    site.hub.start()
    screen.wait_step("done", timeout=30)
    receipt_no = screen.text("receipt-no")
    assert RECEIPT_NO.match(receipt_no)
    screen.shot("done-after-provisional")

    ledger = site.hub.get("/api/finance/ledger")
    assert [(e["tx_id"], e["receipt_no"]) for e in ledger] == [(tx_id, receipt_no)]
    assert [r["receipt_no"] for r in site.hub.get("/api/finance/receipts")] == [receipt_no]
    assert site.committed() == [tx_id]
    wait_for(lambda: site.documents_printed() == 2, 10, "the receipt printed after the slip")


def test_the_screen_says_when_the_kiosk_is_offline_or_unreachable(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    assert screen.visible("offline-banner") is None
    screen.driver.execute_script("act('pay', {method: 'cash'})")  # a touch that no longer fits the screen
    assert "หน้าจอมีการเปลี่ยนแปลงแล้ว" in screen.wait_visible("alert").text
    assert screen.step() == "notice"

    site.broker.stop()
    banner = screen.wait_visible("offline-banner")
    assert "ขาดการเชื่อมต่อ" in banner.text
    screen.shot("offline")
    site.broker.start()
    wait_for(lambda: screen.visible("offline-banner") is None, 15, "the offline banner to go")

    site.kiosk.kill()
    assert "ติดต่อระบบของตู้ไม่ได้" in screen.wait_visible("connection-error").text
    assert screen.visible("step-notice") is not None  # the last screen stays, never a blank page
    screen.shot("kiosk-unreachable")


def test_a_promptpay_payment_the_hub_cancels_ends_on_the_screen_in_thai(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    start_anonymously(screen)
    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    screen.tap("method-promptpay")
    screen.wait_step("awaiting_payment")
    (pending,) = site.hub.get("/api/finance/payments", status="pending")
    r = httpx.post(f"{site.hub.url}/api/finance/payments/{pending['tx_id']}/cancel", timeout=10,
                   headers=site.hub.auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    screen.wait_step("rejected")
    message = screen.wait_visible("message")
    assert message.get_attribute("data-message") == "payment_cancelled" and "ไม่มีการหักเงิน" in message.text


def test_the_main_flows_fit_the_raspberry_pi_display_without_scrolling(screen: KioskScreen, site: Site) -> None:
    screen.open(PI_DISPLAY)
    for lang in ("th", "en"):  # English words are longer, Thai lines are taller: both must fit
        if lang == "en":
            screen.tap("lang-switch")
            wait_for(lambda: screen.text("heading") == "Privacy notice", 5, "the notice in English")
        screen.fits(f"pi-notice-{lang}")
        screen.tap("accept")
        screen.wait_step("identify")
        screen.fits(f"pi-identify-{lang}")
        screen.tap("anonymous")
        screen.wait_step("service")
        screen.fits(f"pi-services-{lang}")
        screen.tap("service-report")
        screen.wait_step("report")
        screen.fits(f"pi-report-category-{lang}")
        screen.tap("category-streetlight")
        screen.wait_visible("phrase-0")
        screen.fits(f"pi-report-details-{lang}")
        screen.tap("report-back")
        screen.tap("cancel")
        screen.wait_step("notice")
    start_anonymously(screen)
    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    screen.fits("pi-payment")
    screen.tap("method-promptpay")
    screen.wait_step("awaiting_payment")
    screen.fits("pi-promptpay-qr")
    [tx_id] = site.committed()
    site.confirm_payment(tx_id, 4000)
    screen.wait_step("done", timeout=30)
    screen.fits("pi-paid")


def test_the_language_goes_back_to_thai_for_the_next_citizen(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    for leave in ("decline", "cancel-identify", "start-again", "cancel-payment", "finish"):
        screen.tap("lang-switch")
        wait_for(lambda: screen.text("heading") == "Privacy notice", 5, "the notice in English")
        if leave == "decline":
            screen.tap("decline")
        else:
            screen.tap("accept")
            screen.wait_step("identify")
            if leave == "cancel-identify":
                screen.tap("cancel")
            else:
                screen.tap("anonymous")
                screen.wait_step("service")
                if leave == "start-again":
                    screen.tap("start-again")
                else:
                    screen.tap("service-garbage-monthly")
                    screen.wait_step("payment")
                    if leave == "cancel-payment":
                        screen.tap("cancel")
                    else:
                        screen.tap("method-cash")
                        screen.wait_step("done", timeout=30)
                        assert screen.text("take") == "Please take your receipt."
                        screen.tap("finish")
        screen.wait_step("notice")
        wait_for(lambda: screen.text("heading") == "ประกาศความเป็นส่วนตัว", 5, f"Thai again after {leave}")
        assert (site.kiosk_state() or {}).get("lang") == "th"


@pytest.mark.parametrize("site", [{"idle_reset_s": 6}], indirect=True)
def test_an_idle_kiosk_returns_to_the_thai_notice_from_any_screen(screen: KioskScreen, site: Site) -> None:
    screen.open(LANDSCAPE)
    screen.tap("lang-switch")
    wait_for(lambda: (site.kiosk_state() or {}).get("lang") == "en", 5, "English")
    wait_for(lambda: (site.kiosk_state() or {}).get("lang") == "th", 25, "the untouched notice back in Thai")
    wait_for(lambda: screen.text("heading") == "ประกาศความเป็นส่วนตัว", 5, "the Thai notice on the screen")
    screen.tap("lang-switch")
    start_anonymously(screen)
    screen.tap("service-garbage-monthly")
    screen.wait_step("payment")
    assert screen.text("heading") == "Choose how to pay"
    screen.wait_step("notice", timeout=25)
    wait_for(lambda: screen.text("heading") == "ประกาศความเป็นส่วนตัว", 5, "the Thai notice after idling")


def fill_to_the_brim(journal: sqlite3.Connection) -> None:
    """Fill the kiosk journal's file to its last byte (ballast entries) and stop it from growing: SQLite then
    fails the next write with SQLITE_FULL, exactly as on a full SD card."""
    pages = journal.execute("PRAGMA page_count").fetchone()[0]
    journal.execute(f"PRAGMA max_page_count = {pages + 2}")
    n = 0
    for size in (4000, 400, 40, 1):
        full = False
        while not full:
            n += 1
            try:
                journal.execute("INSERT INTO journal (tx_id, kind, summary, created) VALUES (?, 'ballast', ?, 0)",
                                (f"ballast-{n}", "x" * size))
            except sqlite3.OperationalError as err:
                if "full" not in str(err):
                    raise
                full = True


def free_space(journal: sqlite3.Connection) -> None:
    """Delete the ballast and let the file grow again: space is back."""
    journal.execute("PRAGMA max_page_count = 1000000000")
    journal.execute("DELETE FROM journal WHERE kind = 'ballast'")


class InProcessKiosk:
    """The kiosk agent run in a thread of this process, so that the test can fill the disk under its files."""

    def __init__(self, config: Path) -> None:
        self.agent = Agent(config_module.load(config, environ={}), simulate=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), name="kiosk-agent", daemon=True)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.agent.run()

    def start(self, wait: bool = True) -> None:
        self._thread.start()
        if wait:
            wait_for(lambda: self.agent.kiosk is not None and self.agent.kiosk.server is not None
                     and self.agent.kiosk.server.started, 30, "the kiosk screen")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.agent.request_stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the kiosk agent did not stop"

    def journal(self) -> sqlite3.Connection:
        """The kiosk journal's database, through the kiosk's own connection."""
        assert self.agent.kiosk is not None
        return self.agent.kiosk.journal.db


def test_on_a_full_disk_a_payment_is_refused_in_thai_and_english_and_the_kiosk_returns_to_the_start(
        browser: Chrome, broker: Broker, tmp_path: Path) -> None:
    http_port = free_port()
    kiosk = InProcessKiosk(kiosk_config(tmp_path, broker.port, http_port, error_reset_s=3))
    kiosk.start()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    screen = KioskScreen(browser, f"http://127.0.0.1:{http_port}/", shots)
    try:
        screen.open(PI_DISPLAY)
        fill_to_the_brim(kiosk.journal())
        start_anonymously(screen)
        screen.tap("service-garbage-monthly")
        screen.wait_step("payment")
        screen.tap("method-cash")
        screen.wait_step("error")
        message = screen.wait_visible("message")
        assert message.get_attribute("data-message") == "storage_full"
        assert "พื้นที่จัดเก็บข้อมูลของตู้เต็ม" in message.text and "ยังไม่มีการชำระเงิน" in message.text
        other = screen.find("message-other")
        assert "storage is full" in other.text and "Nothing was paid" in other.text
        assert other.get_attribute("lang") == "en"
        screen.fits("full-disk-refused")
        assert kiosk.agent.outbox.depth() == 0 and kiosk.agent.outbox_error is not None
        assert not (tmp_path / "paper.log").exists() or "cut" not in (tmp_path / "paper.log").read_text()

        screen.wait_step("notice", timeout=15)  # back to the start by itself, nobody touching
        free_space(kiosk.journal())
        start_anonymously(screen)
        screen.tap("service-garbage-monthly")
        screen.wait_step("payment")
        screen.tap("method-cash")
        screen.wait_step("provisional", timeout=ANSWER_TIMEOUT_S + 15)  # taken: no hub here to answer it
        [pending] = [r for r in kiosk.agent.outbox.pending(100) if r.klass == "tx"]
        assert screen.text("reference") == tx_reference(str(pending.key))
        assert kiosk.agent.outbox_error is None
    finally:
        browser.get("about:blank")
        kiosk.stop()


def test_a_screen_that_cannot_listen_is_reported_and_comes_up_once_its_port_is_free(
        broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    http_port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", http_port))
    squatter.listen()
    kiosk = InProcessKiosk(kiosk_config(tmp_path, broker.port, http_port))
    with caplog.at_level(logging.INFO, logger="nakhon"):
        kiosk.start(wait=False)
        try:
            failed = wait_for(lambda: kiosk.agent.tasks.get("kiosk"), 30, "the kiosk task reported")
            assert failed.state == "unavailable" and "cannot listen on 127.0.0.1" in str(failed.error)
            assert "kiosk" in (kiosk.agent.status(DeviceState.ONLINE).tasks or {})  # in the heartbeat
            assert kiosk.agent.streams["receipt"].state == "ok"  # the rest of the agent runs on
            squatter.close()
            wait_for(lambda: (kiosk.agent.tasks["kiosk"].state == "ok"
                              and httpx.get(f"http://127.0.0.1:{http_port}/api/state", timeout=2).status_code == 200),
                     60, "the screen up on its port")
        finally:
            squatter.close()
            kiosk.stop()
    assert "task kiosk failed" in caplog.text
