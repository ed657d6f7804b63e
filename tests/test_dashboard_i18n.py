"""Every dashboard page in Thai and in English, in Chromium: no untranslated label, no message missing in one
language, and usable on a 390x844 phone (nothing wider than the screen)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser import DESKTOP, PHONE, chromium, js, nav_pages, open_page, sign_in, untranslated
from tests.conftest import TEST_PASSWORD, Broker, fast_air, wait_for

pytestmark = pytest.mark.broker

EVERY_PAGE = {"fleet", "map", "alarms", "deadletters", "finance", "reports", "audit", "users"}


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1366x768", "390x844"])
def test_every_page_in_thai_and_english_has_no_untranslated_label(broker: Broker, procs: dict[str, Callable[..., Any]],
                                                                   tmp_path: Path, size: tuple[int, int]) -> None:
    hub = procs["hub"](broker.port)
    procs["agent"]("kk-aq-0001", broker.port, drivers=[fast_air(interval_s=1)])
    wait_for(lambda: any(d["device"] == "kk-aq-0001" for d in hub.get("/api/devices")), 30, "kk-aq-0001 known")
    wait_for(lambda: hub.get("/api/devices/kk-aq-0001/quantities"), 30, "readings of kk-aq-0001")
    with chromium(tmp_path / "profile", size) as driver:
        for lang in ("th", "en"):
            sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang=lang)
            if size == PHONE:  # the navigation folds into the menu button
                assert not driver.find_element("id", "nav").is_displayed()
                driver.find_element("id", "menu").click()
                assert driver.find_element("id", "nav").is_displayed()
            pages = nav_pages(driver)
            assert set(pages) == EVERY_PAGE, pages  # admin sees every page
            for page in [*pages, "device/kk-aq-0001"]:
                open_page(driver, page)
                assert js(driver, "return document.documentElement.lang") == lang
                assert untranslated(driver) == [], (lang, page)
                overflow = js(driver, "const d = document.documentElement; return d.scrollWidth - d.clientWidth")
                assert overflow <= 0, (lang, page, overflow)
            assert js(driver, "return [...window.nakhon.missing]") == [], lang
            js(driver, "document.getElementById('signout').click()")
            wait_for(lambda: driver.find_elements("id", "signin-name"), 15, "signed out")


def test_the_label_check_finds_a_label_that_skipped_the_message_table(broker: Broker,
                                                                      procs: dict[str, Callable[..., Any]],
                                                                      tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "fleet")
        assert untranslated(driver) == []
        js(driver, "const b = document.createElement('button'); b.textContent = 'Reboot all';"
                   "document.querySelector('.page').append(b);"
                   "const d = document.createElement('span'); d.dataset.raw = ''; d.textContent = 'kk-aq-0001';"
                   "document.querySelector('.page').append(d);"
                   "const i = document.createElement('input'); i.placeholder = 'Filter by zone';"
                   "document.querySelector('.page').append(i);")
        assert sorted(untranslated(driver)) == ["@placeholder: Filter by zone", "button: Reboot all"]
        js(driver, "import('/ui/app.js').then(m => m.t('fleet.no_such_key'))")
        wait_for(lambda: js(driver, "return [...window.nakhon.missing]"), 5, "the missing key reported")
        assert js(driver, "return [...window.nakhon.missing]") == ["en:fleet.no_such_key"]
