"""Problem reports at a place: stored as point features, assigned to a municipal zone, moved through a workflow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shapely.geometry import Point, shape
from shapely.prepared import PreparedGeometry, prep

from edge.contract import REPORT_CATEGORIES, Tx, TxOutcome, TxStatus, format_timestamp
from hub.errors import HubConfigError
from hub.records.dialect import dialect_of
from hub.records.session import Session

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


class ReportRoute:
    """Applies ``issue.report`` transactions: a report at a place becomes a feature in its zone."""

    KINDS = ("issue.report",)

    def __init__(self, zones: Zones) -> None:
        self.zones = zones

    def apply(self, tx: Tx, db: Session) -> TxOutcome:
        """Store the report inside the hub's transaction; never commits."""
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
        zone = dialect_of(db).zone_at(db, self.zones, tx.location.lon, tx.location.lat)
        stamp = format_timestamp(datetime.now(UTC))
        cur = db.execute(
            "INSERT INTO reports (tx_id, device, category, description, lat, lon, zone, status, citizen_ref, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'new', ?, ?, ?) RETURNING id",
            (tx.tx_id, tx.device, category, description, tx.location.lat, tx.location.lon, zone,
             tx.citizen.ref if tx.citizen else None, stamp, stamp))
        report_id = int(cur.fetchone()[0])
        db.execute("INSERT INTO report_history (report_id, at, status) VALUES (?, ?, 'new')", (report_id, stamp))
        th, en = CATEGORIES[str(category)]
        return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None, result={
            "report_id": report_id, "zone": zone, "status": "new", "category": category, "category_th": th,
            "category_en": en, "created_at": stamp})


class WorkflowError(ValueError):
    """A status change the workflow does not allow."""


def change_status(db: Session, report_id: int, status: str, assignee: str | None,
                  note: str | None, by: str | None = None) -> dict[str, Any]:
    """Move a report through the workflow (user ``by`` does it); returns the updated report."""
    row = db.execute("SELECT status, assignee FROM reports WHERE id = ?", (report_id,)).fetchone()
    if row is None:
        raise LookupError(f"no report {report_id}")
    current, current_assignee = row
    if status not in WORKFLOW.get(current, frozenset()):
        allowed = ", ".join(sorted(WORKFLOW.get(current, frozenset()))) or "nothing"
        raise WorkflowError(f"report {report_id} is {current}: it can become {allowed}, not {status}")
    assignee = assignee or (current_assignee if status != "new" else None)
    if status == "assigned" and not assignee:
        raise WorkflowError("assigning a report needs an assignee (a team or an officer)")
    stamp = format_timestamp(datetime.now(UTC))
    db.execute("UPDATE reports SET status = ?, assignee = ?, updated_at = ? WHERE id = ?",
               (status, assignee, stamp, report_id))
    db.execute("INSERT INTO report_history (report_id, at, status, assignee, note, by_user) "
               "VALUES (?, ?, ?, ?, ?, ?)", (report_id, stamp, status, assignee, note, by))
    return report(db, report_id) or {}


_COLUMNS = "id, device, category, description, lat, lon, zone, status, assignee, created_at, updated_at"


def _feature(row: tuple[Any, ...]) -> dict[str, Any]:
    rid, device, category, description, lat, lon, zone, status, assignee, created, updated = row
    th, en = CATEGORIES.get(category, (category, category))
    return {"type": "Feature", "id": rid, "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"category": category, "category_th": th, "category_en": en, "description": description,
                           "zone": zone, "status": status, "assignee": assignee, "device": device,
                           "created_at": created, "updated_at": updated}}


def report(db: Session, report_id: int) -> dict[str, Any] | None:
    """One report as a GeoJSON feature."""
    row = db.execute(f"SELECT {_COLUMNS} FROM reports WHERE id = ?", (report_id,)).fetchone()  # noqa: S608
    return _feature(row) if row else None


@dataclass(frozen=True)
class FeatureQuery:
    """Filters of an items request."""

    bbox: tuple[float, float, float, float] | None = None
    start: str | None = None
    end: str | None = None
    status: str | None = None
    zone: str | None = None


def reports(db: Session, query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Reports matching the query, oldest first, and how many match in all."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if query.bbox:
        minx, miny, maxx, maxy = query.bbox
        where.append("lon BETWEEN ? AND ? AND lat BETWEEN ? AND ?")
        args += [minx, maxx, miny, maxy]
    if query.start:
        where.append("created_at >= ?")
        args.append(query.start)
    if query.end:
        where.append("created_at <= ?")
        args.append(query.end)
    for column in ("status", "zone"):
        value = getattr(query, column)
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    clause = " AND ".join(where)
    total = db.execute(f"SELECT COUNT(*) FROM reports WHERE {clause}", args).fetchone()[0]  # noqa: S608
    rows = db.execute(f"SELECT {_COLUMNS} FROM reports WHERE {clause} ORDER BY id LIMIT ? OFFSET ?",  # noqa: S608
                      [*args, limit, offset]).fetchall()
    return [_feature(r) for r in rows], int(total)
