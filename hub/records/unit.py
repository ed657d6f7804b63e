"""The records store's unit of work as routes see it: one transaction's repositories, never its session."""

from __future__ import annotations

from hub.finance.ledger import Book
from hub.finance.repository import SqlBook
from hub.gis.reports import ReportBook
from hub.gis.repository import SqlReportBook
from hub.records.session import Session


class RecordsUnit:
    """The finance and GIS repositories bound to one records transaction (the store makes one per
    transaction it applies): what a route writes through, so the outcome the store records and the route's writes
    commit together, exactly once."""

    __slots__ = ("ledger", "reports")

    def __init__(self, session: Session) -> None:
        self.ledger: Book = SqlBook(session)
        """The ledger, receipt counters and payments (:class:`hub.finance.ledger.Book`)."""
        self.reports: ReportBook = SqlReportBook(session)
        """The citizen reports and the zones lookup (:class:`hub.gis.reports.ReportBook`)."""
