"""The dashboard at a city's scale, against a real hub subprocess: compressed answers (never the SSE stream), and
the fleet page with 5,000 devices in headless Chromium (a windowed table)."""

from __future__ import annotations

import functools
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from edge.contract import QOS, DeviceState, Status, now, topic
from hub.dashboard import STATIC
from hub.store.base import IngestBatch, StatusUpdate
from hub.store.sqlite import SQLiteStore
from tests.browser import chromium, js, open_page, sign_in
from tests.conftest import TEST_PASSWORD, Broker, Hub, user_token, wait_for

pytestmark = pytest.mark.broker

Procs = dict[str, Callable[..., Any]]


class Publisher:
    """A plain MQTT client that publishes devices' status messages as their agents would."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-status", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def status(self, device: str, state: str, site: str = "Site 0") -> float:
        """Publish ``device``'s status; the time it was acknowledged by the broker."""
        self.client.publish(topic("nakhon", device, "up/status"), Status(
            device=device, state=DeviceState(state), at=now(), heartbeat_s=30, node="air-quality-pole",
            site=site).to_json(), qos=QOS).wait_for_publish(10)
        return time.monotonic()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    """Status messages published straight to the test broker."""
    p = Publisher(broker.port)
    yield p
    p.close()


def _fleet(hub: Hub, publisher: Publisher, n: int) -> None:
    for i in range(n):
        publisher.status(f"kk-aq-{i:04d}", "online")
    wait_for(lambda: len(hub.get("/api/devices")) == n, 30, f"{n} devices in the registry")


def test_the_dashboard_files_and_the_api_answers_arrive_compressed(broker: Broker, procs: Procs,
                                                                    publisher: Publisher) -> None:
    hub = procs["hub"](broker.port)
    _fleet(hub, publisher, 20)
    gzipped = {"Accept-Encoding": "gzip"}
    script = httpx.get(f"{hub.url}/ui/app.js", headers=gzipped, timeout=10)
    assert script.headers["content-encoding"] == "gzip" and "accept-encoding" in script.headers["vary"].lower()
    assert script.content == (STATIC / "ui" / "app.js").read_bytes()  # httpx undid the gzip
    assert int(script.headers["content-length"]) < len(script.content) / 2
    assert httpx.get(f"{hub.url}/ui/app.css", headers=gzipped, timeout=10).headers["content-encoding"] == "gzip"
    devices = httpx.get(f"{hub.url}/api/devices", headers={**hub.auth, **gzipped}, timeout=10)
    assert devices.headers["content-encoding"] == "gzip"
    assert len(devices.json()) == 20
    # a viewer's answers have personal fields removed first, then are compressed
    viewer = {"Authorization": f"Bearer {user_token(hub.data, 'vera', ('viewer',))}", **gzipped}
    for path in ("/api/devices", "/openapi.json"):
        seen = httpx.get(f"{hub.url}{path}", headers=viewer, timeout=10)
        assert seen.status_code == 200 and seen.headers["content-encoding"] == "gzip", path
        assert seen.json(), path
    # a client that does not ask for gzip gets the plain bytes
    plain = httpx.get(f"{hub.url}/ui/app.js", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "content-encoding" not in plain.headers and plain.content == script.content
    # already compressed: the font goes as it is
    font = httpx.get(f"{hub.url}/vendor/noto-sans-thai/files/noto-sans-thai-thai-400-normal.woff2", headers=gzipped,
                     timeout=10)
    assert font.status_code == 200 and "content-encoding" not in font.headers
    # the raw bytes really are gzip
    with httpx.stream("GET", f"{hub.url}/ui/app.js", headers=gzipped, timeout=10) as r:
        assert gzip.decompress(b"".join(r.iter_raw())) == script.content


def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


def test_the_event_stream_is_not_compressed_and_each_event_arrives_at_once(broker: Broker, procs: Procs,
                                                                          publisher: Publisher) -> None:
    hub = procs["hub"](broker.port)
    _fleet(hub, publisher, 1)
    arrived: list[tuple[str, str, float]] = []
    headers: dict[str, str] = {}
    opened = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{hub.url}/api/stream", headers={**hub.auth, "Accept-Encoding": "gzip"},
                          timeout=httpx.Timeout(10, read=30)) as r:
            headers.update(r.headers)
            opened.set()
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "device":
                    data = json.loads(line[5:])
                    arrived.append((data["device"], data["state"], time.monotonic()))
                    if len(arrived) == 3:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10), "the stream did not open"
    assert headers["content-type"].startswith("text/event-stream") and "content-encoding" not in headers
    for n, state in enumerate(("offline", "online", "offline"), start=1):
        sent = publisher.status("kk-aq-0000", state)
        # each event reaches the client on its own, while the stream stays open (a gzip buffer would hold it)
        wait_for(functools.partial(_at_least, arrived, n), 5, f"{state} on the stream")
        assert arrived[-1][2] - sent < 2.0
    reader.join(10)
    assert [(d, s) for d, s, _ in arrived] == [("kk-aq-0000", s) for s in ("offline", "online", "offline")]


CITY = 5000


def _registry(data: Path, n: int) -> None:
    """``n`` online devices written to the hub's store before it starts (one batch, as ingest writes them)."""
    data.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(data / "hub.sqlite")
    store.open()
    try:
        store.ingest(IngestBatch(statuses=[StatusUpdate(Status(
            device=f"kk-city-{i:04d}", state=DeviceState.ONLINE, at=now(), heartbeat_s=30,
            node="air-quality-pole" if i % 3 else "water-level-node", site=f"Site {i % 50}"), time.time())
            for i in range(n)]))
    finally:
        store.close()


def _rows(driver: Any) -> list[str]:
    """The devices of the rows in the DOM, read at one moment (the rows are redrawn as the list scrolls)."""
    return list(js(driver, "return [...document.querySelectorAll('#fleet-table tbody tr[data-device]')]"
                           ".map(r => r.dataset.device)"))


def test_the_fleet_page_keeps_only_the_rows_in_view_at_5000_devices(broker: Broker, procs: Procs, publisher: Publisher,
                                                                   tmp_path: Path) -> None:
    _registry(tmp_path / "hub", CITY)
    hub = procs["hub"](broker.port, data=tmp_path / "hub")
    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "fleet", 60)
        assert js(driver, "return [window.nakhon.fleet.total, window.nakhon.fleet.shown]") == [CITY, CITY]
        assert driver.find_element(By.ID, "fleet-shown").text == f"{CITY} of {CITY} devices shown"
        first = _rows(driver)
        assert first[0] == "kk-city-0000" and 10 <= len(first) <= 100, len(first)
        assert js(driver, "return document.querySelectorAll('#fleet-table tr').length") < 110
        # the whole list's height is kept: scrolling to the end shows the last device, still with few rows
        js(driver, "const s = document.getElementById('fleet-scroll'); s.scrollTop = s.scrollHeight")
        wait_for(lambda: "kk-city-4999" in _rows(driver), 30, "the last device after scrolling to the end")
        assert len(_rows(driver)) <= 100
        assert js(driver, "const r = document.querySelector('tr[data-device=kk-city-4999]').getBoundingClientRect(),"
                          "s = document.getElementById('fleet-scroll').getBoundingClientRect();"
                          "return r.top >= s.top && r.bottom <= s.bottom + 1")  # in view, not only in the DOM

        # the keyboard scrolls the list too: Home, then End
        scroller = driver.find_element(By.ID, "fleet-scroll")
        scroller.send_keys(Keys.HOME)
        wait_for(lambda: "kk-city-0000" in _rows(driver), 30, "the top of the list after Home")
        scroller.send_keys(Keys.END)
        wait_for(lambda: "kk-city-4999" in _rows(driver), 30, "the end of the list after End")

        # a change to a device out of view updates the fleet without drawing a row for it
        js(driver, "document.getElementById('fleet-scroll').scrollTop = 0")
        wait_for(lambda: "kk-city-0000" in _rows(driver), 30, "the top of the list again")
        wait_for(lambda: js(driver, "return window.nakhon.streamOpen"), 15, "the live stream")
        built = js(driver, "return window.nakhon.fleet.built")
        publisher.status("kk-city-2500", "offline", site="Site 0")  # its kind and site stay as they were
        offline = "return document.querySelector('#fleet-counts [data-state=offline] b').textContent"
        wait_for(lambda: js(driver, offline) == "1", 30, "the offline count")
        assert js(driver, "return window.nakhon.fleet.built") == built
        assert "kk-city-2500" not in _rows(driver)

        # search, filters and sorting work over the whole fleet, not only the rows drawn
        driver.find_element(By.ID, "fleet-search").send_keys("2500")
        wait_for(lambda: _rows(driver) == ["kk-city-2500"], 30, "the search")
        assert driver.find_element(By.CSS_SELECTOR, 'tr[data-device="kk-city-2500"]').get_attribute("data-link") == \
            "offline"
        driver.find_element(By.ID, "fleet-search").clear()
        js(driver, "const s = document.getElementById('fleet-search'); s.dispatchEvent(new Event('input'))")
        link = driver.find_element(By.CSS_SELECTOR, 'th[data-column="link"] button')
        link.click()
        link.click()  # descending: offline before online
        assert driver.find_element(By.CSS_SELECTOR, 'th[data-column="link"]').get_attribute("aria-sort") == "descending"
        wait_for(lambda: _rows(driver)[:2] == ["kk-city-2500", "kk-city-0000"], 30, "offline first")
        Select(driver.find_element(By.ID, "fleet-kind")).select_by_value("water-level-node")
        assert js(driver, "return window.nakhon.fleet.shown") == len(range(0, CITY, 3))
        # and what it downloaded came gzip-compressed
        sizes = js(driver, "const e = performance.getEntriesByType('resource')"
                           ".find(e => e.name.endsWith('/ui/app.js')); return [e.encodedBodySize, e.decodedBodySize]")
        assert 0 < sizes[0] < sizes[1] / 2, sizes
