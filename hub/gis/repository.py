"""The GIS repository: citizen reports as the GIS API and the OGC layer read and change them.

The API module never sees a database session or SQL; :class:`SqlReports` is the one implementation, in portable
SQL over any :class:`hub.store.base.SqlStore` (a status change commits with its history and audit rows).
"""

from __future__ import annotations

from typing import Any, Protocol

from hub.audit import Actor, AuditLog
from hub.gis.reports import FeatureQuery, change_status, report, reports
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


class SqlReports:
    """The :class:`ReportRepository` in portable SQL over a records store."""

    def __init__(self, store: SqlStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    def features(self, query: FeatureQuery, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """See :meth:`ReportRepository.features`."""
        return self.store.read(lambda db: reports(db, query, limit, offset))

    def feature(self, report_id: int) -> dict[str, Any] | None:
        """See :meth:`ReportRepository.feature`."""
        return self.store.read(lambda db: report(db, report_id))

    def change_status(self, report_id: int, status: str, assignee: str | None, note: str | None,
                      actor: Actor) -> dict[str, Any]:
        """See :meth:`ReportRepository.change_status`."""
        def work(db: Session) -> dict[str, Any]:
            before = (report(db, report_id) or {}).get("properties", {})
            after = change_status(db, report_id, status, assignee, note, by=actor.user)
            # whether a note came, not its text: the audit log keeps rows for ever, the purge erases notes
            self.audit.record(actor, f"report.{status}", f"report/{report_id}",
                              {k: before.get(k) for k in ("status", "assignee")},
                              {"status": status, "assignee": after["properties"]["assignee"],
                               "with_note": note is not None}, db=db)
            return after
        return self.store.write(work)

    def history(self, report_id: int) -> list[dict[str, Any]]:
        """See :meth:`ReportRepository.history`."""
        def work(db: Session) -> list[Any]:
            return db.execute("SELECT at, status, assignee, note, by_user FROM report_history "  # noqa: S608
                              f"WHERE report_id = ? ORDER BY {dialect_of(db).insertion_order}",
                              (report_id,)).fetchall()
        return [{"at": at, "status": s, "assignee": a, "note": n, "by": by}
                for at, s, a, n, by in self.store.read(work)]
