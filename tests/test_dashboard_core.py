"""The operators' dashboard in headless Chromium against a real broker, hub and agents: sign-in, fleet, device
charts, map."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from hub.dashboard import STATIC
from tests.browser import chromium, js, page_ready, sign_in
from tests.conftest import ROOT, TEST_PASSWORD, Broker, wait_for

pytestmark = pytest.mark.broker

Procs = dict[str, Callable[..., Any]]


def test_the_vendored_libraries_are_the_pinned_versions_with_their_licences() -> None:
    script = (ROOT / "hub" / "dashboard" / "fetch-vendor.sh").read_text()
    pinned = dict(re.findall(r'^  "(\S+) (\S+) sha512-\S+"$', script, re.M))
    assert set(pinned) == {"leaflet", "leaflet.markercluster", "uplot", "@fontsource/noto-sans-thai"}
    vendor = STATIC / "vendor"
    licences = {"leaflet": "BSD 2-Clause License", "leaflet.markercluster": "Permission is hereby granted",
                "uplot": "The MIT License", "@fontsource/noto-sans-thai": "SIL Open Font License, Version 1.1"}
    for name, version in pinned.items():
        folder = vendor / name.removeprefix("@fontsource/")
        assert (folder / "VERSION").read_text().split() == [name, version]
        licence = next(folder.glob("*LICEN*")).read_text()
        assert licences[name] in licence, name
    assert sorted(p.name for p in (vendor / "noto-sans-thai" / "files").iterdir()) == sorted(
        f"noto-sans-thai-{s}-{w}-normal.woff2" for s in ("thai", "latin", "latin-ext") for w in (400, 700))


def test_the_page_and_its_files_need_no_sign_in_but_the_data_does(broker: Broker, procs: Procs) -> None:
    hub = procs["hub"](broker.port, "--tiles", "https://tiles.example.go.th/{z}/{x}/{y}.png")
    page = httpx.get(f"{hub.url}/", timeout=10)
    assert page.status_code == 200 and '<script type="module" src="/ui/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.findall(r"""(?:src|href)=["']?https?://""", page.text)
    assert httpx.get(f"{hub.url}/ui/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{hub.url}/vendor/leaflet/leaflet.js", timeout=10).status_code == 200
    assert httpx.get(f"{hub.url}/ui/..%2f__init__.py", timeout=10).status_code == 404
    assert httpx.get(f"{hub.url}/ui/nothing.js", timeout=10).status_code == 404
    assert httpx.get(f"{hub.url}/api/dashboard/settings", timeout=10).status_code == 401
    assert hub.get("/api/dashboard/settings") == {"tiles": "https://tiles.example.go.th/{z}/{x}/{y}.png"}


def test_sign_in_wrong_password_and_the_end_of_a_session(broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    with chromium(tmp_path / "profile") as driver:
        driver.get(hub.url + "/")
        wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 15, "the sign-in form")
        assert driver.find_element(By.CSS_SELECTOR, "#signin h2").text == "เข้าสู่ระบบ"
        driver.find_element(By.ID, "signin-name").send_keys("admin")
        driver.find_element(By.ID, "signin-password").send_keys("not the password")
        driver.find_element(By.ID, "signin-submit").click()
        wait_for(lambda: driver.find_element(By.ID, "signin-error").text, 15, "the refusal")
        assert driver.find_element(By.ID, "signin-error").text == "ชื่อผู้ใช้หรือรหัสผ่านไม่ถูกต้อง"
        assert not driver.find_element(By.ID, "nav").is_displayed()
        assert driver.get_cookie("nakhon_session") is None

        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        assert "admin" in driver.find_element(By.ID, "who").text
        assert driver.find_element(By.CSS_SELECTOR, '#nav a[data-page="fleet"]').text == "Fleet"
        cookie = driver.get_cookie("nakhon_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        with hub.db() as db:
            assert db.execute("SELECT action FROM audit WHERE user = 'admin' ORDER BY id DESC LIMIT 1"
                              ).fetchone() == ("session.open",)

        # the session ends elsewhere (signed out from another window): the next step shows the sign-in page
        jar = {"nakhon_session": cookie["value"]}
        csrf = httpx.get(f"{hub.url}/api/session", cookies=jar, timeout=10).json()["csrf_token"]
        assert httpx.delete(f"{hub.url}/api/session", cookies=jar, headers={"X-CSRF-Token": csrf},
                            timeout=10).status_code == 200
        driver.find_element(By.CSS_SELECTOR, '#nav a[data-page="map"]').click()
        wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 15, "the sign-in page after the session ended")
        assert driver.find_element(By.ID, "signin-error").text == "Your session has ended: please sign in again"
        assert not driver.find_element(By.ID, "nav").is_displayed()

        # signing out from the page ends the session on the hub
        sign_in(driver, hub.url, "admin", TEST_PASSWORD)
        session = driver.get_cookie("nakhon_session")
        assert session is not None
        driver.find_element(By.ID, "signout").click()
        wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 15, "the sign-in page after signing out")
        assert httpx.get(f"{hub.url}/api/session", cookies={"nakhon_session": session["value"]},
                         timeout=10).status_code == 401
        page_errors = js(driver, "return window.nakhon.missing.size")
        assert page_errors == 0
