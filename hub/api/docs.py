"""The interactive API page, ``/docs``, on Swagger UI served by the hub itself: no CDN, so it works offline.

The files come from the npm package ``swagger-ui-dist`` at a pinned version, vendored with its licence by
``hub/api/static/fetch-vendor.sh`` (rerun it to upgrade).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

SWAGGER_UI = Path(__file__).with_name("static") / "swagger-ui"
ASSETS = "/static/swagger-ui"


def add_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` from the vendored Swagger UI, replacing FastAPI's pages that load it from a CDN."""
    cdn_pages = {app.docs_url, app.redoc_url}
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in cdn_pages)]
    app.docs_url = app.redoc_url = None
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI), name="swagger-ui")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI on this hub's OpenAPI description."""
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
                                   oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url)
