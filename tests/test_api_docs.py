"""``/docs`` works without internet: Swagger UI comes from the hub, rendered in headless Chromium with no DNS."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By

from hub.api.docs import SWAGGER_UI
from tests.conftest import ROOT, Broker, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OFFLINE = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
"""No name resolves: a page that needs a CDN cannot load it, as on a municipal network without internet."""


def test_the_vendored_swagger_ui_is_the_pinned_version_with_its_licence() -> None:
    script = (ROOT / "hub" / "api" / "static" / "fetch-vendor.sh").read_text()
    pinned = re.search(r"^VERSION=(\S+)$", script, re.M)
    assert pinned is not None
    assert (SWAGGER_UI / "VERSION").read_text().strip() == pinned.group(1)
    assert "Apache License" in (SWAGGER_UI / "LICENSE").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "NOTICE"):
        assert (SWAGGER_UI / name).stat().st_size > 0, name


@pytest.fixture
def offline_browser(tmp_path: Path) -> Iterator[Chrome]:
    """Headless Chromium that resolves no host name (only 127.0.0.1 is reachable)."""
    options = webdriver.ChromeOptions()
    for arg in OFFLINE:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.broker
def test_docs_render_with_no_network(broker: Broker, procs: dict[str, Any], offline_browser: Chrome) -> None:
    hub = procs["hub"](broker.port)
    page = httpx.get(f"{hub.url}/docs", timeout=10).text
    assert not re.findall(r"""(?:src|href)=["']?https?://""", page), page
    offline_browser.get(f"{hub.url}/docs")

    def operations() -> list[str]:
        found = offline_browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")
        return [str(e.get_attribute("data-path")) for e in found]

    paths = wait_for(operations, 30, "Swagger UI to list the API's operations")
    assert {"/api/devices", "/api/devices/{device}", "/healthz"} <= set(paths)
    assert "Nakhon hub" in offline_browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    loaded = offline_browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(hub.url) for url in loaded), loaded
    assert httpx.get(f"{hub.url}/redoc", timeout=10).status_code == 404  # ReDoc would need a CDN
