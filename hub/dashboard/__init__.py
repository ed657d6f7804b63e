"""The operators' dashboard: static pages the hub serves itself, on its own guarded API.

``/`` is the page (it shows the sign-in form until a session exists), ``/ui/...`` its modules and style,
``/vendor/...`` the libraries vendored by ``hub/dashboard/fetch-vendor.sh``. These routes are public in
:data:`hub.auth.policy.POLICY`: they hold no data, and every data call the pages make goes through the API.
A city's basemap (a local ``.pmtiles`` file) is served to signed-in users at :data:`BASEMAP_URL`, with HTTP Range
requests, which is how the map reads only the tiles it shows.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Final, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.errors import HubConfigError

STATIC = Path(__file__).with_name("static")
INDEX = STATIC / "index.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: https: http:; style-src 'self' "
                               "'unsafe-inline'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Sent with every dashboard file: only the hub's own scripts run; tiles (a configured URL) may be images."""


BASEMAP_URL: Final = "/api/dashboard/basemap.pmtiles"
DEMO_BASEMAP: Final = Path(__file__).with_name("basemap") / "demo-khon-kaen.pmtiles"
"""A small schematic basemap of central Khon Kaen (land, the lake, the demo zones), built by
:mod:`hub.dashboard.demo_basemap`."""
PMTILES_TYPE: Final = "application/vnd.pmtiles"
TILE_TYPES: Final = {0: "unknown", 1: "mvt", 2: "png", 3: "jpeg", 4: "webp", 5: "avif"}
"""PMTiles v3 header tile type byte -> its name; the map draws vector tiles (mvt) with protomaps-leaflet."""
MAX_ATTRIBUTION = 300
GZIP_COMPRESSION = 2
"""The header's code for gzip (its metadata's internal compression)."""


class Basemap(BaseModel):
    """A local PMTiles basemap, as its header describes it."""

    url: str
    tile_type: Literal["mvt"]
    min_zoom: int
    max_zoom: int
    bounds: tuple[float, float, float, float]
    """west, south, east, north in degrees."""
    attribution: str
    """From the file's metadata, as plain text (tags removed)."""


def read_basemap(path: Path) -> Basemap:
    """The basemap in the PMTiles (v3) file ``path``, checked at start-up; :class:`HubConfigError` if it is none."""
    try:
        with path.open("rb") as f:
            head = f.read(127)
            magic, version = head[:7], head[7:8]
            if len(head) < 127 or magic != b"PMTiles" or version != b"\x03":
                raise HubConfigError(f"--pmtiles {path}: not a PMTiles version 3 file")
            metadata_offset, metadata_length = struct.unpack_from("<QQ", head, 24)
            compression, tile_type, min_zoom, max_zoom = head[97], head[99], head[100], head[101]
            bounds = struct.unpack_from("<iiii", head, 102)
            f.seek(metadata_offset)
            raw = f.read(min(metadata_length, 1 << 20))
    except OSError as err:
        raise HubConfigError(f"--pmtiles {path}: cannot read it ({err.strerror})") from err
    if TILE_TYPES.get(tile_type) != "mvt":
        raise HubConfigError(f"--pmtiles {path}: its tiles are {TILE_TYPES.get(tile_type, tile_type)}; the map "
                             "draws vector (MVT) basemaps (serve image tiles with --tiles URL)")
    try:
        metadata = json.loads(gzip.decompress(raw) if compression == GZIP_COMPRESSION else raw)
    except (OSError, EOFError, zlib.error, ValueError):
        metadata = {}
    attribution = metadata.get("attribution") if isinstance(metadata, dict) else None
    text = html.unescape(re.sub(r"<[^>]*>", "", attribution))[:MAX_ATTRIBUTION] if isinstance(attribution, str) else ""
    return Basemap(url=BASEMAP_URL, tile_type="mvt", min_zoom=min_zoom, max_zoom=max_zoom,
                   bounds=(bounds[0] / 1e7, bounds[1] / 1e7, bounds[2] / 1e7, bounds[3] / 1e7), attribution=text)


class DashboardSettings(BaseModel):
    """What the pages need from the hub's settings."""

    tiles: str | None
    """A tile URL template (``https://tiles.example/{z}/{x}/{y}.png``) for the map's basemap, or none."""
    basemap: Basemap | None = None
    """A local PMTiles basemap the hub serves (``--pmtiles``), or none."""


async def _serve(files: StaticFiles, path: str, request: Request) -> Response:
    """One file from ``files`` (its path checked to stay inside the directory), with the security headers."""
    try:
        response = await files.get_response(path, request.scope)
    except StarletteHTTPException as err:
        raise HTTPException(err.status_code, "no such file") from err
    response.headers.update(SECURITY_HEADERS)
    return response


def add_dashboard(app: FastAPI, tiles: str | None = None, pmtiles: Path | None = None) -> None:
    """Serve the dashboard at ``/`` and its files; ``tiles`` is the map's basemap URL template and ``pmtiles`` a
    local PMTiles basemap file (neither: a plain background)."""
    ui = StaticFiles(directory=STATIC / "ui")
    vendor = StaticFiles(directory=STATIC / "vendor")
    settings = DashboardSettings(tiles=tiles, basemap=read_basemap(pmtiles) if pmtiles else None)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        """The dashboard page."""
        return await _serve(StaticFiles(directory=STATIC), INDEX.name, request)

    @app.get("/ui/{path:path}", include_in_schema=False)
    async def ui_file(path: str, request: Request) -> Response:
        """A module, style sheet or image of the dashboard."""
        return await _serve(ui, path, request)

    @app.get("/vendor/{path:path}", include_in_schema=False)
    async def vendor_file(path: str, request: Request) -> Response:
        """A vendored library file."""
        return await _serve(vendor, path, request)

    @app.get(BASEMAP_URL, response_class=FileResponse, responses={200: {"content": {PMTILES_TYPE: {}}},
                                                                   206: {"content": {PMTILES_TYPE: {}}}})
    def basemap() -> FileResponse:
        """The map's local basemap (a PMTiles file), whole or by HTTP Range (206)."""
        if pmtiles is None:
            raise HTTPException(404, "no basemap: the hub was started without --pmtiles")
        return FileResponse(pmtiles, media_type=PMTILES_TYPE, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/dashboard/settings")
    def dashboard_settings() -> DashboardSettings:
        """The hub settings the dashboard pages use (the map's tile URL or local basemap)."""
        return settings
