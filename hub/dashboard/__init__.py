"""The operators' dashboard: static pages the hub serves itself, on its own guarded API.

``/`` is the page (it shows the sign-in form until a session exists), ``/ui/...`` its modules and style,
``/vendor/...`` the libraries vendored by ``hub/dashboard/fetch-vendor.sh``. These routes are public in
:data:`hub.auth.policy.POLICY`: they hold no data, and every data call the pages make goes through the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC = Path(__file__).with_name("static")
INDEX = STATIC / "index.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: https: http:; style-src 'self' "
                               "'unsafe-inline'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Sent with every dashboard file: only the hub's own scripts run; tiles (a configured URL) may be images."""


class DashboardSettings(BaseModel):
    """What the pages need from the hub's settings."""

    tiles: str | None
    """A tile URL template (``https://tiles.example/{z}/{x}/{y}.png``) for the map's basemap, or none."""


async def _serve(files: StaticFiles, path: str, request: Request) -> Response:
    """One file from ``files`` (its path checked to stay inside the directory), with the security headers."""
    try:
        response = await files.get_response(path, request.scope)
    except StarletteHTTPException as err:
        raise HTTPException(err.status_code, "no such file") from err
    response.headers.update(SECURITY_HEADERS)
    return response


def add_dashboard(app: FastAPI, tiles: str | None = None) -> None:
    """Serve the dashboard at ``/`` and its files; ``tiles`` is the map's basemap URL template (none: plain)."""
    ui = StaticFiles(directory=STATIC / "ui")
    vendor = StaticFiles(directory=STATIC / "vendor")
    settings = DashboardSettings(tiles=tiles)

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

    @app.get("/api/dashboard/settings")
    def dashboard_settings() -> DashboardSettings:
        """The hub settings the dashboard pages use (the map's tile URL)."""
        return settings
