"""Headless Chromium for the dashboard tests: offline (no name resolves), signed in through the page itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By

from tests.conftest import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OFFLINE = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--autoplay-policy=no-user-gesture-required",
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
"""No name resolves: a page that needs a CDN cannot load it, as on a municipal network without internet."""
DESKTOP = (1366, 768)
PHONE = (390, 844)


@contextlib.contextmanager
def chromium(profile: Path, size: tuple[int, int] = DESKTOP) -> Iterator[Chrome]:
    """A headless Chromium window of ``size`` (CSS pixels), quit at the end."""
    options = webdriver.ChromeOptions()
    for arg in OFFLINE:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_window_size(*size)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])
        yield driver
    finally:
        driver.quit()


def js(driver: Chrome, script: str, *args: Any) -> Any:
    """Run ``script`` (a function body) in the page and return its value."""
    return driver.execute_script(script, *args)


def click(driver: Chrome, css: str, timeout: float = 10) -> None:
    """Click what ``css`` finds on a live page, found again if the page redrew it between finding and clicking."""
    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True
    wait_for(attempt, timeout, f"a click on {css}")


def sign_in(driver: Chrome, url: str, name: str, password: str, lang: str = "th") -> None:
    """Open the dashboard, choose the language and sign in through the form; wait for the navigation."""
    driver.get(url + "/")
    wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 30, "the sign-in form")
    js(driver, "localStorage.setItem('nakhon.lang', arguments[0]); localStorage.setItem('nakhon.mute', '1')", lang)
    driver.get(url + "/")
    wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 30, "the sign-in form")
    driver.find_element(By.ID, "signin-name").send_keys(name)
    driver.find_element(By.ID, "signin-password").send_keys(password)
    driver.find_element(By.ID, "signin-submit").click()
    wait_for(lambda: driver.find_element(By.ID, "top").is_displayed(), 15, "the dashboard after sign-in")


def page_ready(driver: Chrome, page: str, selector: str, timeout: float = 15) -> None:
    """Go to ``#/page`` and wait until ``selector`` shows in it."""
    driver.get(driver.current_url.split("#")[0] + f"#/{page}")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f'.page[data-page="{page.split("/")[0]}"] {selector}'),
             timeout, f"{selector} on page {page}")


UNTRANSLATED = """
const produced = [...window.nakhon.produced];
const known = (text) => produced.some((p) => p.includes(text));
const bad = new Set();
const check = (text, where) => {
  for (const piece of text.split(/[:·—()\\[\\],\\n|/•]+/)) {
    const p = piece.trim();
    if (/[A-Za-z\\u0E01-\\u0E5B]/.test(p) && !known(p)) bad.add(`${where}: ${p}`);
  }
};
const skip = (el) => !el || el.closest("[data-raw], script, style, dialog:not([open])") || !el.checkVisibility();
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (!skip(n.parentElement)) check(n.textContent, n.parentElement.tagName.toLowerCase());
}
for (const el of document.querySelectorAll("[placeholder], [aria-label], [title]")) {
  if (skip(el)) continue;
  for (const a of ["placeholder", "aria-label", "title"]) if (el.getAttribute(a)) check(el.getAttribute(a), `@${a}`);
}
return [...bad];
"""
"""Visible text (and placeholders, labels, titles) that came neither from t()/fmt nor from an element marked
``data-raw`` (data shown as is: ids, names, values)."""


TILES_SHOWN = """return [...document.querySelectorAll('.leaflet-tile')].every(
  (tile) => tile.classList.contains('leaflet-tile-loaded') && getComputedStyle(tile).opacity === '1')"""
"""Every basemap tile on the page has loaded and faded in (true on a page without a map)."""


def open_page(driver: Chrome, page: str, timeout: float = 20) -> None:
    """Go to ``#/page`` and wait until the page has rendered (its element is marked ``data-ready``)."""
    driver.get(driver.current_url.split("#")[0] + f"#/{page}")
    name = page.split("/")[0].split("?")[0]
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f'.page[data-page="{name}"][data-ready]'), timeout,
             f"page {page} rendered")


def nav_pages(driver: Chrome) -> list[str]:
    """The pages the navigation offers the signed-in user."""
    return [str(a.get_attribute("data-page")) for a in driver.find_elements(By.CSS_SELECTOR, "#nav a[data-page]")]


def untranslated(driver: Chrome) -> list[str]:
    """What :data:`UNTRANSLATED` finds on the current page."""
    return list(js(driver, UNTRANSLATED))


def screenshots(url: str, name: str, password: str, out: Path, device: str) -> list[Path]:
    """Every page the user sees (and ``device``'s page), in Thai, at 1366x768 and 390x844, as PNG files in ``out``."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    taken = []
    for size in (DESKTOP, PHONE):
        with tempfile.TemporaryDirectory() as profile, chromium(Path(profile), size) as driver:
            sign_in(driver, url, name, password)
            for page in [*nav_pages(driver), f"device/{device}"]:
                open_page(driver, page)
                js(driver, "return document.fonts.ready")
                wait_for(lambda: js(driver, TILES_SHOWN), 30, "the basemap's tiles shown")
                path = out / f"{page.split('/')[0]}-{size[0]}x{size[1]}.png"
                driver.save_screenshot(str(path))
                taken.append(path)
    return taken


if __name__ == "__main__":
    import sys

    # python -m tests.browser URL NAME PASSWORD_FILE OUT_DIR DEVICE: the screenshots in docs/dashboard/
    target, user, secret, folder, one = sys.argv[1:6]
    for shot in screenshots(target, user, Path(secret).read_text().strip(), Path(folder), one):
        print(shot)
