"""Problem reports at a place: stored as point features, assigned to a municipal zone, moved through a workflow.

The rules live here (categories, the zones layer, the workflow); the reports tables are
:mod:`hub.gis.repository`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shapely.geometry import Point, shape
from shapely.prepared import PreparedGeometry, prep

from edge.contract import REPORT_CATEGORIES, Tx, TxOutcome, TxStatus, format_timestamp
from hub.errors import HubConfigError

if TYPE_CHECKING:
    from hub.records.unit import RecordsUnit

DEMO_ZONES = Path(__file__).with_name("demo-zones.geojson")

CATEGORIES = REPORT_CATEGORIES

WORKFLOW: dict[str, frozenset[str]] = {
    "new": frozenset({"assigned", "resolved"}),
    "assigned": frozenset({"resolved", "new"}),
    "resolved": frozenset({"assigned"}),
}
"""Allowed status changes: a resolved report can be reopened by assigning it again."""


@dataclass(frozen=True)
class Zone:
    """A municipal zone polygon."""

    zone: str
    properties: dict[str, Any]
    geometry: dict[str, Any]
    prepared: PreparedGeometry


class Zones:
    """The zones layer, loaded from a GeoJSON FeatureCollection (WGS 84), with point-in-polygon lookup."""

    def __init__(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise HubConfigError(f"{path}: cannot read the zones GeoJSON: {err}") from err
        zones = []
        for i, feature in enumerate(data.get("features", [])):
            props = feature.get("properties") or {}
            zone_id = props.get("zone") or feature.get("id")
            if not zone_id:
                raise HubConfigError(f"{path}: features[{i}] has no 'zone' property or id")
            try:
                geometry = shape(feature["geometry"])
            except (KeyError, ValueError, TypeError, AttributeError) as err:
                raise HubConfigError(f"{path}: features[{i}] ({zone_id}) has no valid geometry: {err}") from err
            zones.append(Zone(str(zone_id), props, feature["geometry"], prep(geometry)))
        if not zones:
            raise HubConfigError(f"{path}: no zones in the file")
        self.path = path
        self.zones = zones

    def locate(self, lon: float, lat: float) -> str | None:
        """The zone containing the point (the first one listed, where zones overlap), or None."""
        point = Point(lon, lat)
        return next((z.zone for z in self.zones if z.prepared.covers(point)), None)


@dataclass(frozen=True)
class NewReport:
    """A report as a kiosk's transaction brings it."""

    tx_id: str
    device: str
    category: str
    description: str
    lat: float
    lon: float
    zone: str | None
    citizen_ref: str | None
    created_at: str


class ReportBook(Protocol):
    """The reports tables and the zones lookup inside one records transaction: what a route writes
    (:attr:`hub.records.unit.RecordsUnit.reports`)."""

    def zone_at(self, zones: Zones, lon: float, lat: float) -> str | None:
        """The zone containing the point (WGS 84), or None."""
        ...

    def add(self, report: NewReport) -> int:
        """Store a ``new`` report with the first line of its history; returns its id."""
        ...


class ReportRoute:
    """Applies ``issue.report`` transactions: a report at a place becomes a feature in its zone."""

    KINDS = ("issue.report",)

    def __init__(self, zones: Zones) -> None:
        self.zones = zones

    def apply(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
        """Store the report inside the hub's transaction, through the unit's reports; never commits."""
        category, description = tx.data.get("category"), tx.data.get("description", "")
        reason = None
        if category not in CATEGORIES:
            reason = f"unknown category {category!r} (known: {', '.join(CATEGORIES)})"
        elif not isinstance(description, str) or len(description) > 2000:
            reason = "description must be text of at most 2000 characters"
        elif tx.location is None:
            reason = "a problem report needs a location"
        if reason is not None or tx.location is None:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=reason, result={})
        zone = unit.reports.zone_at(self.zones, tx.location.lon, tx.location.lat)
        stamp = format_timestamp(datetime.now(UTC))
        report_id = unit.reports.add(NewReport(tx.tx_id, tx.device, str(category), description, tx.location.lat,
                                               tx.location.lon, zone, tx.citizen.ref if tx.citizen else None, stamp))
        th, en = CATEGORIES[str(category)]
        return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None, result={
            "report_id": report_id, "zone": zone, "status": "new", "category": category, "category_th": th,
            "category_en": en, "created_at": stamp})


class WorkflowError(ValueError):
    """A status change the workflow does not allow."""


def next_assignee(report_id: int, current: str, current_assignee: str | None, status: str,
                  assignee: str | None) -> str | None:
    """Who a report is assigned to after moving from ``current`` to ``status`` (a report back to ``new`` has
    nobody); WorkflowError when the workflow does not allow the move."""
    if status not in WORKFLOW.get(current, frozenset()):
        allowed = ", ".join(sorted(WORKFLOW.get(current, frozenset()))) or "nothing"
        raise WorkflowError(f"report {report_id} is {current}: it can become {allowed}, not {status}")
    assignee = assignee or (current_assignee if status != "new" else None)
    if status == "assigned" and not assignee:
        raise WorkflowError("assigning a report needs an assignee (a team or an officer)")
    return assignee


def feature(report_id: int, device: str, category: str, description: str, lat: float, lon: float,
            zone: str | None, status: str, assignee: str | None, created: str, updated: str) -> dict[str, Any]:
    """A report as a GeoJSON point feature."""
    th, en = CATEGORIES.get(category, (category, category))
    return {"type": "Feature", "id": report_id, "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"category": category, "category_th": th, "category_en": en, "description": description,
                           "zone": zone, "status": status, "assignee": assignee, "device": device,
                           "created_at": created, "updated_at": updated}}


@dataclass(frozen=True)
class FeatureQuery:
    """Filters of an items request."""

    bbox: tuple[float, float, float, float] | None = None
    start: str | None = None
    end: str | None = None
    status: str | None = None
    zone: str | None = None
