"""The operators' dashboard in headless Chromium against a real broker, hub and agents: sign-in, fleet, device
charts, map."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from hub.dashboard import STATIC
from tests.browser import chromium, click, js, open_page, page_ready, sign_in
from tests.conftest import ROOT, TEST_PASSWORD, Agent, Broker, Hub, fast_air, user_token, wait_for

pytestmark = pytest.mark.broker

Procs = dict[str, Callable[..., Any]]


def test_the_vendored_libraries_are_the_pinned_versions_with_their_licences() -> None:
    script = (ROOT / "hub" / "dashboard" / "fetch-vendor.sh").read_text()
    pinned = dict(re.findall(r'^  "(\S+) (\S+) sha512-\S+"$', script, re.M))
    assert set(pinned) == {"leaflet", "leaflet.markercluster", "protomaps-leaflet", "uplot",
                           "@fontsource/noto-sans-thai"}
    vendor = STATIC / "vendor"
    licences = {"leaflet": "BSD 2-Clause License", "leaflet.markercluster": "Permission is hereby granted",
                "protomaps-leaflet": "Redistribution and use in source and binary forms", "uplot": "The MIT License",
                "@fontsource/noto-sans-thai": "SIL Open Font License, Version 1.1"}
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
    assert hub.get("/api/dashboard/settings") == {"tiles": "https://tiles.example.go.th/{z}/{x}/{y}.png",
                                                  "basemap": None}


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

        def said() -> str:
            try:
                return str(driver.find_element(By.ID, "signin-error").text)
            except StaleElementReferenceException:  # the page was drawn again between finding and reading
                return ""
        wait_for(lambda: said() == "Your session has ended: please sign in again", 15, "the reason on the sign-in page")
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


def _located(agent: Agent, lat: float, lon: float) -> None:
    """Give a test agent's config an installed location (top-level keys come before the first table)."""
    text = agent.config.read_text()
    agent.config.write_text(text.replace("config_version = 1\n", f"config_version = 1\nlocation = {{ lat = {lat}, "
                                         f"lon = {lon} }}\nsite = \"Test site\"\nnode = \"air-quality-pole\"\n", 1))


def _online(hub: Hub, *devices: str) -> None:
    wait_for(lambda: {d["device"] for d in hub.get("/api/devices") if d["liveness"]["link"] == "online"}
             >= set(devices), 30, f"{devices} online")


def test_a_stopped_agent_shows_offline_on_the_fleet_page_without_a_reload(broker: Broker, procs: Procs,
                                                                           tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    agents = {d: procs["agent"](d, broker.port, drivers=[fast_air(interval_s=1)], start=False)
              for d in ("kk-aq-0001", "kk-aq-0002")}
    for a in agents.values():
        a.start()
    _online(hub, *agents)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD)
        page_ready(driver, "fleet", 'tr[data-device="kk-aq-0002"][data-link="online"]')
        assert js(driver, "return document.querySelector('#fleet-counts [data-state=online] b').textContent") == "2"
        wait_for(lambda: js(driver, "return window.nakhon.streamOpen"), 15, "the live stream")
        js(driver, "window.stayedOnThisPage = true")
        assert agents["kk-aq-0002"].stop() == 0  # a graceful stop: the agent says offline
        # the page re-reads the whole fleet only every 30 s: within 10 s, only the stream can have said it
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-device="kk-aq-0002"][data-link="offline"]'),
                 10, "kk-aq-0002 offline on the page")
        assert js(driver, "return window.stayedOnThisPage") is True
        assert js(driver, "return document.querySelector('#fleet-counts [data-state=offline] b').textContent") == "1"
        # the filters and the search narrow the table; one click opens the device
        Select(driver.find_element(By.ID, "fleet-state")).select_by_value("offline")
        rows = driver.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr[data-device]")
        assert [r.get_attribute("data-device") for r in rows] == ["kk-aq-0002"]
        Select(driver.find_element(By.ID, "fleet-state")).select_by_value("")
        driver.find_element(By.ID, "fleet-search").send_keys("0001")
        rows = driver.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr[data-device]")
        assert [r.get_attribute("data-device") for r in rows] == ["kk-aq-0001"]
        rows[0].click()
        wait_for(lambda: driver.current_url.endswith("#/device/kk-aq-0001"), 10, "the device page")


def test_the_map_shows_one_marker_per_located_device_and_the_zones(broker: Broker, procs: Procs,
                                                                   tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    places = {"kk-aq-0001": (16.4322, 102.8236), "kk-aq-0002": (16.4419, 102.8360)}
    for device, (lat, lon) in places.items():
        agent = procs["agent"](device, broker.port, drivers=[fast_air(interval_s=5)], start=False)
        _located(agent, lat, lon)
        agent.start()
    procs["agent"]("kk-wl-0001", broker.port, drivers=[fast_air(interval_s=5)])  # no location: not on the map
    _online(hub, *places, "kk-wl-0001")
    zones = hub.get("/api/gis/zones")["features"]
    assert zones
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        page_ready(driver, "map", ".leaflet-container")
        wait_for(lambda: js(driver, "return window.nakhon.map && window.nakhon.map.cluster.getLayers().length"), 15,
                 "the device markers")
        markers = js(driver, "return window.nakhon.map.cluster.getLayers().map(m => [m.options.device, "
                             "m.getLatLng().lat, m.getLatLng().lng, m.options.state])")
        assert sorted(markers) == sorted([d, lat, lon, "online"] for d, (lat, lon) in places.items())
        assert js(driver, "return window.nakhon.map.zones.getLayers().length") == len(zones)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".leaflet-overlay-pane path.zone")) == len(zones)
        assert not driver.find_elements(By.CSS_SELECTOR, ".leaflet-tile")  # no basemap without --tiles
        loaded = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(hub.url) for url in loaded), loaded


def test_a_device_chart_shows_what_the_store_holds_for_its_window(broker: Broker, procs: Procs,
                                                                  tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0001", broker.port, drivers=[fast_air(interval_s=0.05)])
    _online(hub, "kk-aq-0001")
    wait_for(lambda: hub.get("/api/devices/kk-aq-0001/readings", quantity="pm2_5")["count"] >= 200, 60,
             "200 PM2.5 readings")
    assert agent.stop() == 0  # what the store holds stays put while the page reads it
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD)
        page_ready(driver, "device/kk-aq-0001?window=hour", '.chart[data-quantity="pm2_5"] canvas')
        wait_for(lambda: js(driver, "return window.nakhon.charts && window.nakhon.charts.pm2_5"), 15, "the chart data")
        chart = js(driver, "return window.nakhon.charts.pm2_5")
        raw = hub.get("/api/devices/kk-aq-0001/readings", quantity="pm2_5", since=chart["since"],
                      until=chart["until"], limit=100_000)["readings"]
        values = [r["value"] for r in raw]
        assert len(values) >= 200
        assert sum(b["count"] for b in chart["buckets"]) == len(values)
        assert min(b["min"] for b in chart["buckets"]) == min(values)
        assert max(b["max"] for b in chart["buckets"]) == max(values)
        assert len(chart["buckets"]) <= 2000 and chart["bucket_s"] * 1000 >= 3600 * 1000 / 2000
        assert chart["unit"] == "ug/m3"
        # the uPlot series hold the same buckets (min, avg, max)
        series = js(driver, "const c = document.querySelector('.chart[data-quantity=pm2_5] .uplot');"
                            "return c && c.querySelectorAll('.u-legend .u-series').length")
        assert series == 4
        # the PM2.5 chart carries the Thai AQI band legend
        assert "ดีมาก" in driver.find_element(By.CSS_SELECTOR, '.chart[data-quantity="pm2_5"]').find_element(
            By.XPATH, "..").text


SOS_BUTTON = {"kind": "sim_button", "name": "sos", "event": "sos.pressed", "mean_gap_s": 2.0, "seed": 20}


def test_a_critical_alarm_shows_a_banner_on_every_page_and_beeps_until_muted(broker: Broker, procs: Procs,
                                                                             tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "map")
        js(driver, "localStorage.setItem('nakhon.mute', '0')")
        assert not driver.find_element(By.ID, "banner").is_displayed()
        procs["agent"]("kk-pole-0001", broker.port, drivers=[SOS_BUTTON], heartbeat_s=1.0)
        wait_for(lambda: driver.find_element(By.ID, "banner").is_displayed(), 20, "the critical-alarm banner")
        assert "kk-pole-0001" in driver.find_element(By.ID, "banner").text
        assert "1 critical alarm" in driver.find_element(By.ID, "banner").text
        wait_for(lambda: js(driver, "return window.nakhon.beeps") >= 2, 10, "two beeps")
        open_page(driver, "fleet")
        assert driver.find_element(By.ID, "banner").is_displayed()
        click(driver, "#mute")
        assert driver.find_element(By.ID, "mute").text == "Unmute"
        beeps, ticks = js(driver, "return [window.nakhon.beeps, window.nakhon.ticks]")
        wait_for(lambda: js(driver, "return window.nakhon.ticks") > ticks + 1, 10, "two more ticks of the beeper")
        assert js(driver, "return window.nakhon.beeps") == beeps  # muted: the banner stays, the sound stops
        alarm = hub.get("/api/alarms", rule="sos")[0]
        r = httpx.post(f"{hub.url}/api/alarms/{alarm['id']}/ack", json={"comment": "on my way"}, headers=hub.auth,
                       timeout=10)
        assert r.status_code == 200, r.text
        wait_for(lambda: not driver.find_element(By.ID, "banner").is_displayed(), 10, "the banner gone after the ack")


def test_a_configured_tile_url_adds_a_basemap_to_the_map(broker: Broker, procs: Procs, tmp_path: Path) -> None:
    tiles = "http://127.0.0.1:9/tiles/{z}/{x}/{y}.png"  # nothing listens: the layer is there, its tiles fail
    hub = procs["hub"](broker.port, "--tiles", tiles)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "map")
        urls = js(driver, "const m = window.nakhon.map.map; const u = [];"
                          "m.eachLayer(l => { if (l instanceof L.TileLayer) u.push(l._url); }); return u")
        assert urls == [tiles]
        assert driver.find_elements(By.CSS_SELECTOR, ".leaflet-tile")


def test_a_page_left_open_returns_to_the_sign_in_form_when_its_session_ends(broker: Broker, procs: Procs,
                                                                             tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "fleet")
        wait_for(lambda: js(driver, "return window.nakhon.streamOpen"), 15, "the live stream")
        cookie = driver.get_cookie("nakhon_session")
        assert cookie is not None
        jar = {"nakhon_session": cookie["value"]}
        csrf = httpx.get(f"{hub.url}/api/session", cookies=jar, timeout=10).json()["csrf_token"]
        httpx.delete(f"{hub.url}/api/session", cookies=jar, headers={"X-CSRF-Token": csrf}, timeout=10)
        # nobody touches the page: the hub ends its stream (it checks every 15 s), the page finds out why
        wait_for(lambda: driver.find_elements(By.ID, "signin-name"), 30, "the sign-in form, untouched page")
        assert driver.find_element(By.ID, "signin-error").text == "Your session has ended: please sign in again"


def test_an_operator_sends_a_command_after_confirming_and_a_viewer_sees_no_command_form(
        broker: Broker, procs: Procs, tmp_path: Path) -> None:
    hub = procs["hub"](broker.port)
    procs["agent"]("kk-aq-0001", broker.port, drivers=[fast_air(interval_s=1)])
    _online(hub, "kk-aq-0001")
    user_token(hub.data, "olive", ("operator",))
    user_token(hub.data, "vera", ("viewer",))
    with chromium(tmp_path / "operator") as driver:
        sign_in(driver, hub.url, "olive", TEST_PASSWORD, lang="en")
        open_page(driver, "device/kk-aq-0001")
        driver.find_element(By.ID, "command-send").click()
        dialog = driver.find_element(By.CSS_SELECTOR, "dialog.confirm")
        assert dialog.text.startswith("Send ping to kk-aq-0001?")
        dialog.find_element(By.CSS_SELECTOR, "[data-confirm=yes]").click()
        wait_for(lambda: driver.find_element(By.ID, "command-outcome").text == "Outcome: ok", 20, "the ping's outcome")
        wait_for(lambda: "ping" in driver.find_element(By.ID, "device-commands").text, 10, "the command history")
        assert [c["outcome"] for c in hub.get("/api/devices/kk-aq-0001/commands")] == ["ok"]
    with hub.db() as db:
        assert db.execute("SELECT user FROM audit WHERE action = 'device.command'").fetchall() == [("olive",)]
    with chromium(tmp_path / "viewer") as driver:
        sign_in(driver, hub.url, "vera", TEST_PASSWORD, lang="en")
        open_page(driver, "device/kk-aq-0001")
        assert not driver.find_elements(By.ID, "command-send")
        assert "ping" in driver.find_element(By.ID, "device-commands").text  # the history is for everyone
