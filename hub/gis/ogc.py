"""OGC API - Features (Part 1: Core, GeoJSON) over the GIS layers, so QGIS and GDAL open them directly.

Collections: ``reports`` (problem reports), ``devices`` (where the fleet is) and ``zones`` (municipal zones).
Items support ``bbox``, ``datetime`` (an instant or an interval with ``..`` for an open end), ``limit`` and
``offset``, with ``next``/``prev`` links for paging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from edge.contract import format_timestamp
from hub.api.bounds import InputError, Key, Name, Offset, instant_text, parse_bbox
from hub.gis.reports import FeatureQuery

GEOJSON = "application/geo+json"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
]
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
KHON_KAEN_EXTENT = [102.70, 16.30, 102.95, 16.55]

Items = Callable[[FeatureQuery, int, int], tuple[list[dict[str, Any]], int]]
"""A collection's items: (query, limit, offset) -> (features, number matched)."""


@dataclass(frozen=True)
class FeatureLayer:
    """A collection's data: its filtered, paged items and one feature by id."""

    items: Items
    one: Callable[[str], dict[str, Any] | None]

COLLECTIONS: dict[str, tuple[str, str]] = {
    "reports": ("Problem reports", "Problems citizens reported at a place (streetlight, pothole, flooding...)"),
    "devices": ("Devices", "Where Nakhon's sensor poles, kiosks and vehicles are"),
    "zones": ("Municipal zones", "The zones problem reports are assigned to"),
}


def _interval(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if "/" not in value:
        t = instant_text(value, "datetime")
        return t, t
    start, end = value.split("/", 1)
    return _open_end(start), _open_end(end)


def _open_end(part: str) -> str | None:
    return None if part in ("", "..") else instant_text(part, "datetime")


def create_router(layers: dict[str, FeatureLayer]) -> APIRouter:
    """Build the OGC API routes over the given layers (keys of :data:`COLLECTIONS`)."""
    api = APIRouter(prefix="/ogc", tags=["ogc"])

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/ogc"

    def collection(request: Request, cid: str) -> dict[str, Any]:
        title, description = COLLECTIONS[cid]
        url = f"{base(request)}/collections/{cid}"
        return {"id": cid, "title": title, "description": description, "itemType": "feature", "crs": [CRS84],
                "extent": {"spatial": {"bbox": [KHON_KAEN_EXTENT], "crs": CRS84}},
                "links": [{"href": url, "rel": "self", "type": "application/json", "title": title},
                          {"href": f"{url}/items", "rel": "items", "type": GEOJSON, "title": title}]}

    @api.get("")
    def landing(request: Request) -> dict[str, Any]:
        """The landing page."""
        b = base(request)
        root = str(request.base_url).rstrip("/")
        return {"title": "Nakhon GIS", "description": "Problem reports, devices and zones of the municipality",
                "links": [{"href": b, "rel": "self", "type": "application/json", "title": "this document"},
                          {"href": f"{root}/openapi.json", "rel": "service-desc",
                           "type": "application/vnd.oai.openapi+json;version=3.0", "title": "the API definition"},
                          {"href": f"{b}/conformance", "rel": "conformance", "type": "application/json",
                           "title": "conformance classes"},
                          {"href": f"{b}/collections", "rel": "data", "type": "application/json",
                           "title": "the feature collections"}]}

    @api.get("/conformance")
    def conformance() -> dict[str, Any]:
        """The conformance classes implemented."""
        return {"conformsTo": CONFORMANCE}

    @api.get("/collections")
    def collections(request: Request) -> dict[str, Any]:
        """The feature collections."""
        return {"links": [{"href": f"{base(request)}/collections", "rel": "self", "type": "application/json"}],
                "collections": [collection(request, cid) for cid in COLLECTIONS if cid in layers]}

    @api.get("/collections/{cid}")
    def one_collection(request: Request, cid: Name) -> dict[str, Any]:
        """One collection."""
        if cid not in layers:
            raise HTTPException(404, f"no collection {cid!r}")
        return collection(request, cid)

    @api.get("/collections/{cid}/items")
    def items(request: Request, cid: Name, bbox: Annotated[str | None, Query(max_length=200)] = None,
              datetime_: Annotated[str | None, Query(alias="datetime", max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
              offset: Offset = 0) -> JSONResponse:
        """Features of a collection, filtered and paged."""
        if cid not in layers:
            raise HTTPException(404, f"no collection {cid!r}")
        try:
            start, end = _interval(datetime_)
            query = FeatureQuery(bbox=None if bbox is None else parse_bbox(bbox), start=start, end=end)
        except InputError as err:
            raise HTTPException(400, str(err)) from err
        features, matched = layers[cid].items(query, limit, offset)
        url = f"{base(request)}/collections/{cid}/items"
        params = {k: v for k, v in request.query_params.items() if k not in ("limit", "offset")}

        def link(rel: str, off: int) -> dict[str, str]:
            query = "&".join(f"{k}={v}" for k, v in {**params, "limit": str(limit), "offset": str(off)}.items())
            return {"href": f"{url}?{query}", "rel": rel, "type": GEOJSON}

        links = [link("self", offset)]
        if offset + len(features) < matched:
            links.append(link("next", offset + limit))
        if offset > 0:
            links.append(link("prev", max(0, offset - limit)))
        body = {"type": "FeatureCollection", "features": features, "numberMatched": matched,
                "numberReturned": len(features), "timeStamp": format_timestamp(datetime.now(UTC)), "links": links}
        return JSONResponse(body, media_type=GEOJSON)

    @api.get("/collections/{cid}/items/{fid}")
    def item(request: Request, cid: Name, fid: Key) -> JSONResponse:
        """One feature."""
        if cid not in layers:
            raise HTTPException(404, f"no collection {cid!r}")
        feature = layers[cid].one(fid)
        if feature is None:
            raise HTTPException(404, f"no feature {fid!r} in {cid}")
        url = f"{base(request)}/collections/{cid}"
        return JSONResponse({**feature, "links": [
            {"href": f"{url}/items/{fid}", "rel": "self", "type": GEOJSON},
            {"href": url, "rel": "collection", "type": "application/json"}]}, media_type=GEOJSON)

    return api
