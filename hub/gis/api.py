"""The GIS API: problem reports and their workflow, GeoJSON export, and the layers behind OGC API - Features."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from shapely.geometry import Point, box, shape

from hub.api.bounds import Name, Offset, PositiveId, row_id
from hub.auth.web import CurrentActor
from hub.gis.ogc import FeatureLayer
from hub.gis.reports import FeatureQuery, WorkflowError, Zones
from hub.gis.repository import ReportRepository
from hub.store.base import SqlStore
from hub.timeseries.base import TimeSeries

GEOJSON = "application/geo+json"


class StatusChange(BaseModel):
    """Move a report along the workflow."""

    status: Literal["new", "assigned", "resolved"]
    assignee: Annotated[str | None, Field(max_length=100)] = None
    note: Annotated[str | None, Field(max_length=1000)] = None


def _collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


def reports_layer(repository: ReportRepository) -> FeatureLayer:
    """Problem reports as an OGC layer."""
    def one(fid: str) -> dict[str, Any] | None:
        rid = row_id(fid)
        return None if rid is None else repository.feature(rid)

    return FeatureLayer(repository.features, one)


def _gps_fix(series: TimeSeries, device: str) -> dict[str, Any]:
    """The newest latitude and longitude a device sent."""
    fix = {}
    for (_, quantity), at in series.latest(device).items():
        if quantity in ("latitude", "longitude"):
            page = series.readings_page(device, quantity, at, at + timedelta(milliseconds=1), 1)
            if page.rows:
                fix[quantity] = json.loads(page.rows[0])["value"]
    return fix


def device_features(store: SqlStore, series: TimeSeries) -> list[dict[str, Any]]:
    """Where each device is: its configured location, else its latest GPS fix."""
    features = []
    for d in store.devices():
        location = (d.heartbeat or {}).get("location")
        source = "configured"
        if not location:
            latest = _gps_fix(series, d.device)
            if "latitude" not in latest or "longitude" not in latest:
                continue
            location, source = {"lat": latest["latitude"], "lon": latest["longitude"]}, "gps"
        features.append({"type": "Feature", "id": d.device,
                         "geometry": {"type": "Point", "coordinates": [location["lon"], location["lat"]]},
                         "properties": {"device": d.device, "node": d.node, "site": d.site, "state": d.state,
                                        "location_source": source}})
    return features


def devices_layer(store: SqlStore, series: TimeSeries) -> FeatureLayer:
    """Device locations as an OGC layer."""
    def items(query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        features = device_features(store, series)
        if query.bbox:
            area = box(*query.bbox)
            features = [f for f in features if area.covers(Point(f["geometry"]["coordinates"]))]
        return features[offset:offset + limit], len(features)

    def one(fid: str) -> dict[str, Any] | None:
        return next((f for f in device_features(store, series) if f["id"] == fid), None)

    return FeatureLayer(items, one)


def zones_layer(zones: Zones) -> FeatureLayer:
    """Municipal zones as an OGC layer."""
    features = [{"type": "Feature", "id": z.zone, "geometry": z.geometry, "properties": z.properties}
                for z in zones.zones]

    def items(query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        chosen = features
        if query.bbox:
            area = box(*query.bbox)
            chosen = [f for f in features if shape(f["geometry"]).intersects(area)]
        return chosen[offset:offset + limit], len(chosen)

    return FeatureLayer(items, lambda fid: next((f for f in features if f["id"] == fid), None))


def create_router(repository: ReportRepository, zones: Zones) -> APIRouter:
    """Build the GIS routes."""
    api = APIRouter(prefix="/api/gis", tags=["gis"])

    @api.get("/reports")
    def list_reports(status: Literal["new", "assigned", "resolved"] | None = None, zone: Name | None = None,
                     limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                     offset: Offset = 0) -> JSONResponse:
        """Reports as a GeoJSON FeatureCollection, oldest first."""
        features, _ = repository.features(FeatureQuery(status=status, zone=zone), limit, offset)
        return JSONResponse(_collection(features), media_type=GEOJSON)

    @api.get("/reports.geojson")
    def export_reports() -> JSONResponse:
        """Every report, as a GeoJSON file to open in QGIS."""
        features, _ = repository.features(FeatureQuery(), 1_000_000, 0)
        return JSONResponse(_collection(features), media_type=GEOJSON,
                            headers={"Content-Disposition": 'attachment; filename="nakhon-reports.geojson"'})

    @api.get("/reports/{report_id}")
    def one_report(report_id: PositiveId) -> JSONResponse:
        """One report."""
        feature = repository.feature(report_id)
        if feature is None:
            raise HTTPException(404, f"no report {report_id}")
        return JSONResponse(feature, media_type=GEOJSON)

    @api.patch("/reports/{report_id}")
    def update_report(report_id: PositiveId, body: StatusChange, actor: CurrentActor) -> JSONResponse:
        """Assign, resolve or reopen a report."""
        try:
            after = repository.change_status(report_id, body.status, body.assignee, body.note, actor)
            return JSONResponse(after, media_type=GEOJSON)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except WorkflowError as err:
            raise HTTPException(409, str(err)) from err

    @api.get("/reports/{report_id}/history")
    def history(report_id: PositiveId) -> list[dict[str, Any]]:
        """Every status the report went through."""
        return repository.history(report_id)

    @api.get("/zones")
    def zone_layer() -> JSONResponse:
        """The zones GeoJSON in use."""
        return JSONResponse(json.loads(zones.path.read_text(encoding="utf-8")), media_type=GEOJSON)

    return api
