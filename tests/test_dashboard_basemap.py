"""The map's local basemap: a ``.pmtiles`` file the hub serves by HTTP Range and the map draws offline with
protomaps-leaflet; the demo extract and its builder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.dashboard import BASEMAP_URL, DEMO_BASEMAP, read_basemap
from hub.dashboard.demo_basemap import build
from hub.errors import HubConfigError
from tests.browser import chromium, js, open_page, sign_in
from tests.conftest import ROOT, TEST_PASSWORD, Broker, wait_for

Procs = dict[str, Callable[..., Any]]


def test_the_committed_demo_basemap_is_what_its_builder_makes(tmp_path: Path) -> None:
    assert build(tmp_path / "demo.pmtiles") > 100
    assert (tmp_path / "demo.pmtiles").read_bytes() == DEMO_BASEMAP.read_bytes()
    assert DEMO_BASEMAP.stat().st_size < 64 * 1024  # small enough to ship in the repository


def test_the_hub_reads_the_basemap_header_and_refuses_what_it_cannot_draw(tmp_path: Path) -> None:
    demo = read_basemap(DEMO_BASEMAP)
    assert (demo.url, demo.tile_type, demo.min_zoom, demo.max_zoom) == (BASEMAP_URL, "mvt", 10, 15)
    assert demo.bounds == pytest.approx((102.76, 16.38, 102.90, 16.50))
    assert demo.attribution == "Nakhon demo data"
    raster = bytearray(DEMO_BASEMAP.read_bytes())
    raster[99] = 2  # the header's tile type: PNG
    (tmp_path / "raster.pmtiles").write_bytes(bytes(raster))
    (tmp_path / "text.pmtiles").write_text("not a tile archive\n")
    refusals = {"raster.pmtiles": "its tiles are png", "text.pmtiles": "not a PMTiles version 3 file",
                "missing.pmtiles": "cannot read it"}
    for name, why in refusals.items():
        with pytest.raises(HubConfigError, match=why):
            read_basemap(tmp_path / name)


def test_a_bad_basemap_file_stops_the_hub_at_start_up_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "city.pmtiles").write_text("<html>an error page saved by mistake</html>")
    r = subprocess.run([sys.executable, "-m", "nakhon.cli", "hub", "serve", "--data", str(tmp_path / "hub"),
                        "--pmtiles", str(tmp_path / "city.pmtiles"), "--http-port", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert f"--pmtiles {tmp_path / 'city.pmtiles'}: not a PMTiles version 3 file" in r.stderr


@pytest.mark.broker
def test_the_map_draws_the_local_basemap_read_by_range_requests(broker: Broker, procs: Procs, tmp_path: Path) -> None:
    tiles = "http://127.0.0.1:9/tiles/{z}/{x}/{y}.png"  # nothing listens: the layer is there, its tiles fail
    hub = procs["hub"](broker.port, "--pmtiles", str(DEMO_BASEMAP), "--tiles", tiles)
    whole = DEMO_BASEMAP.read_bytes()
    assert httpx.get(f"{hub.url}{BASEMAP_URL}", timeout=10).status_code == 401  # for signed-in users only
    r = httpx.get(f"{hub.url}{BASEMAP_URL}", headers={**hub.auth, "Range": "bytes=0-126", "Accept-Encoding": "gzip"},
                  timeout=10)
    assert r.status_code == 206 and r.content == whole[:127]
    assert r.headers["content-range"] == f"bytes 0-126/{len(whole)}" and "content-encoding" not in r.headers
    middle = httpx.get(f"{hub.url}{BASEMAP_URL}", headers={**hub.auth, "Range": "bytes=5000-5999"}, timeout=10)
    assert middle.status_code == 206 and middle.content == whole[5000:6000]
    assert hub.get("/api/dashboard/settings")["basemap"]["tile_type"] == "mvt"

    with chromium(tmp_path / "profile") as driver:
        sign_in(driver, hub.url, "admin", TEST_PASSWORD, lang="en")
        open_page(driver, "map")
        assert js(driver, "return Object.keys(window.nakhon.map.basemaps)") == ["Local basemap", "Tile server basemap"]
        on_map = "const m = window.nakhon.map; return Object.entries(m.basemaps).filter(([, l]) => m.map.hasLayer(l))" \
                 ".map(([k]) => k)"
        assert js(driver, on_map) == ["Local basemap"]  # the local one first: it needs no network
        # protomaps-leaflet paints each tile on a canvas: wait for one with the land colour on it
        painted = """
        return [...document.querySelectorAll('.leaflet-tile-pane canvas')].filter(c => {
          if (!c.width) return false;
          const p = c.getContext('2d').getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data;
          return p[3] > 0;
        }).length"""
        wait_for(lambda: js(driver, painted) > 0, 20, "a basemap tile painted")
        loaded = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(hub.url) for url in loaded), loaded
        assert any(url.endswith(BASEMAP_URL) for url in loaded)
        assert "No basemap" not in driver.find_element("id", "map-located").text
        assert "Nakhon demo data" in driver.find_element("css selector", ".leaflet-control-attribution").text
        # the layer switch offers the tile server instead
        switch = driver.find_element("css selector", ".leaflet-control-layers")
        assert switch.text.split("\n") == ["Local basemap", "Tile server basemap"]
        switch.find_elements("css selector", "input[type=radio]")[1].click()
        wait_for(lambda: js(driver, on_map) == ["Tile server basemap"], 10, "the tile server's basemap")
