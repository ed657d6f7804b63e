"""The GIS repository: citizen reports as routes, the GIS API and the OGC layer write and read them, in portable SQL.

Routes and the API module never see a database session or SQL. :class:`SqlReportBook` is the GIS side of one
records transaction (a route reaches it as :attr:`hub.records.unit.RecordsUnit.reports`); :class:`SqlReports` is
what the API calls, over any :class:`hub.store.base.SqlStore` (a status change commits with its history and audit
rows). Point-in-polygon is the engine's (:meth:`hub.records.dialect.Dialect.zone_at`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from edge.contract import format_timestamp
from hub.audit import Actor, AuditLog
from hub.gis.reports import FeatureQuery, NewReport, Zones, feature, next_assignee
from hub.records.dialect import dialect_of
from hub.records.session import Session
from hub.store.base import SqlStore


class ReportRepository(Protocol):
    """What the GIS API reads and changes."""

    def features(self, query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Reports matching ``query`` as GeoJSON features, oldest first, and how many match in all."""

    def feature(self, report_id: int) -> dict[str, Any] | None:
        """One report as a GeoJSON feature, or None."""

    def change_status(self, report_id: int, status: str, assignee: str | None, note: str | None,
                      actor: Actor) -> dict[str, Any]:
        """Move a report along the workflow (audited); LookupError: no such report; WorkflowError: not allowed."""

    def history(self, report_id: int) -> list[dict[str, Any]]:
        """Every status a report went through, oldest first."""


_COLUMNS = "id, device, category, description, lat, lon, zone, status, assignee, created_at, updated_at"
"""A report's columns in the order :func:`hub.gis.reports.feature` takes them."""


class SqlReportBook:
    """The reports tables inside one records transaction: the :class:`hub.gis.reports.ReportBook` a route writes
    through, and the reads and changes of the API (each inside the caller's transaction; never commits)."""

    __slots__ = ("_db",)

    def __init__(self, db: Session) -> None:
        self._db = db

    def zone_at(self, zones: Zones, lon: float, lat: float) -> str | None:
        """See :meth:`hub.gis.reports.ReportBook.zone_at`: the engine's point-in-polygon."""
        return dialect_of(self._db).zone_at(self._db, zones, lon, lat)

    def add(self, report: NewReport) -> int:
        """See :meth:`hub.gis.reports.ReportBook.add`."""
        r = report
        cur = self._db.execute(
            "INSERT INTO reports (tx_id, device, category, description, lat, lon, zone, status, citizen_ref, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'new', ?, ?, ?) RETURNING id",
            (r.tx_id, r.device, r.category, r.description, r.lat, r.lon, r.zone, r.citizen_ref, r.created_at,
             r.created_at))
        report_id = int(cur.fetchone()[0])
        self._db.execute("INSERT INTO report_history (report_id, at, status) VALUES (?, ?, 'new')",
                         (report_id, r.created_at))
        return report_id

    def change_status(self, report_id: int, status: str, assignee: str | None,
                      note: str | None, by: str | None = None) -> dict[str, Any]:
        """Move a report through the workflow (user ``by`` does it); returns the updated report."""
        row = self._db.execute("SELECT status, assignee FROM reports WHERE id = ?", (report_id,)).fetchone()
        if row is None:
            raise LookupError(f"no report {report_id}")
        assignee = next_assignee(report_id, row[0], row[1], status, assignee)
        stamp = format_timestamp(datetime.now(UTC))
        self._db.execute("UPDATE reports SET status = ?, assignee = ?, updated_at = ? WHERE id = ?",
                         (status, assignee, stamp, report_id))
        self._db.execute("INSERT INTO report_history (report_id, at, status, assignee, note, by_user) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (report_id, stamp, status, assignee, note, by))
        return self.report(report_id) or {}

    def report(self, report_id: int) -> dict[str, Any] | None:
        """One report as a GeoJSON feature."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE id = ?", (report_id,)).fetchone()  # noqa: S608
        return feature(*row) if row else None

    def reports(self, query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
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
        total = self._db.execute(f"SELECT COUNT(*) FROM reports WHERE {clause}", args).fetchone()[0]  # noqa: S608
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE {clause} "  # noqa: S608
                                "ORDER BY id LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [feature(*r) for r in rows], int(total)

    def history(self, report_id: int) -> list[Any]:
        """A report's history rows (at, status, assignee, note, by_user), oldest first."""
        return self._db.execute("SELECT at, status, assignee, note, by_user FROM report_history "  # noqa: S608
                                f"WHERE report_id = ? ORDER BY {dialect_of(self._db).insertion_order}",
                                (report_id,)).fetchall()


class SqlReports:
    """The :class:`ReportRepository` in portable SQL over a records store."""

    def __init__(self, store: SqlStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    def features(self, query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """See :meth:`ReportRepository.features`."""
        return self.store.read(lambda db: SqlReportBook(db).reports(query, limit, offset))

    def feature(self, report_id: int) -> dict[str, Any] | None:
        """See :meth:`ReportRepository.feature`."""
        return self.store.read(lambda db: SqlReportBook(db).report(report_id))

    def change_status(self, report_id: int, status: str, assignee: str | None, note: str | None,
                      actor: Actor) -> dict[str, Any]:
        """See :meth:`ReportRepository.change_status`."""
        def work(db: Session) -> dict[str, Any]:
            book = SqlReportBook(db)
            before = (book.report(report_id) or {}).get("properties", {})
            after = book.change_status(report_id, status, assignee, note, by=actor.user)
            # whether a note came, not its text: the audit log keeps rows for ever, the purge erases notes
            self.audit.record(actor, f"report.{status}", f"report/{report_id}",
                              {k: before.get(k) for k in ("status", "assignee")},
                              {"status": status, "assignee": after["properties"]["assignee"],
                               "with_note": note is not None}, db=db)
            return after
        return self.store.write(work)

    def history(self, report_id: int) -> list[dict[str, Any]]:
        """See :meth:`ReportRepository.history`."""
        return [{"at": at, "status": s, "assignee": a, "note": n, "by": by}
                for at, s, a, n, by in self.store.read(lambda db: SqlReportBook(db).history(report_id))]
