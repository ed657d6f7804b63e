"""The finance repository: every read and change the finance API makes, as domain methods over a records store.

The API module never sees a database session or SQL; :class:`SqlFinance` is the one implementation, in portable
SQL over any :class:`hub.store.base.SqlStore` (each change commits with its audit row and, for payments, the
transaction's new outcome).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

from edge.contract import TxOutcome
from hub.audit import Actor, AuditLog
from hub.finance.catalogue import Catalogue
from hub.finance.fiscal import BANGKOK
from hub.finance.ledger import Confirmed, confirm_payment, counts, due_to_expire, end_payment, reconcile, reverse
from hub.records.session import Session
from hub.store.base import SqlStore

Ended = tuple[str, TxOutcome]
"""A payment that ended: the kiosk to tell, and the transaction's new outcome."""


class FinanceRepository(Protocol):
    """What the finance API reads and changes."""

    def confirm(self, tx_id: str, amount_satang: int, bank_ref: str, at: datetime,
                actor: Actor) -> tuple[Confirmed, str]:
        """The bank confirmed a PromptPay payment: it is paid and numbered; returns it and the kiosk to tell."""

    def cancel(self, tx_id: str, at: datetime, actor: Actor) -> Ended | str:
        """Cancel a pending payment; when it is not pending, its status instead. LookupError: no such payment."""

    def expire(self, tx_id: str, at: datetime, actor: Actor) -> Ended | str:
        """Expire a pending payment now; when it is not pending, its status instead. LookupError: no such payment."""

    def expire_due(self, at: datetime) -> list[Ended]:
        """End every pending payment whose time is up."""

    def payments(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Payments, newest first."""

    def ledger(self, day: date | None, device: str | None, limit: int) -> list[dict[str, Any]]:
        """Ledger entries in order."""

    def receipts(self, office: str | None, fiscal_year: int | None, limit: int) -> list[dict[str, Any]]:
        """Receipts in number order, with their reversal if any."""

    def reverse(self, receipt_no: str, entry: str, reason: str, at: datetime, actor: Actor) -> int:
        """Void or refund a receipt with a compensating entry; returns the entry's id."""

    def summary(self, day: date) -> list[dict[str, Any]]:
        """Totals of a local date per office, method, service and entry."""

    def reconcile(self, device: str, day: date, counted_satang: int, counted_by: str, at: datetime,
                  actor: Actor) -> dict[str, Any]:
        """Record a cash count against the ledger."""

    def counts(self, day: date, device: str | None) -> list[dict[str, Any]]:
        """Every cash count of a local date, oldest first."""

    def reconciliation(self, day: date) -> list[tuple[Any, ...]]:
        """Per kiosk: ledger cash, cash entries, latest count, who counted, how many counts."""

    def register(self, day: date) -> list[dict[str, Any]]:
        """Every ledger entry of a local date as receipt-register rows (amounts in satang)."""


def _rows(db: Session, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


_REGISTER_SQL = (
    "SELECT e.local_date, e.office, e.fiscal_year, e.receipt_no, e.entry, p.receipt_no, "
    "coalesce(e.paid_at, e.at), e.device, e.service, e.method, e.amount_satang, e.reason, e.by_user "
    "FROM ledger e LEFT JOIN ledger p ON p.id = e.refers_to WHERE e.local_date = ? ORDER BY e.office, e.id")

_RECONCILIATION_SQL = (
    "SELECT k.device, coalesce(l.cash, 0), coalesce(l.n, 0), r.counted_satang, r.counted_by, "
    "coalesce(r.counts, 0) FROM "
    "(SELECT device FROM ledger WHERE local_date = ? AND method = 'cash' UNION "
    " SELECT device FROM reconciliations WHERE day = ?) k "
    "LEFT JOIN (SELECT device, sum(amount_satang) AS cash, count(*) AS n FROM ledger "
    "           WHERE local_date = ? AND method = 'cash' GROUP BY device) l ON l.device = k.device "
    "LEFT JOIN (SELECT c.device, c.counted_satang, c.counted_by, n.counts FROM reconciliations c "
    "           JOIN (SELECT max(id) AS last, count(*) AS counts FROM reconciliations WHERE day = ? "
    "                 GROUP BY device) n ON c.id = n.last) r ON r.device = k.device "
    "ORDER BY k.device")


class SqlFinance:
    """The :class:`FinanceRepository` in portable SQL over a records store."""

    def __init__(self, store: SqlStore, catalogue: Catalogue, audit: AuditLog) -> None:
        self.store = store
        self.catalogue = catalogue
        self.audit = audit

    def confirm(self, tx_id: str, amount_satang: int, bank_ref: str, at: datetime,
                actor: Actor) -> tuple[Confirmed, str]:
        """See :meth:`FinanceRepository.confirm`."""
        def work(db: Session) -> tuple[Confirmed, str]:
            confirmed = confirm_payment(db, self.catalogue, tx_id, amount_satang, bank_ref, at)
            device = self.store.replace_tx_outcome(db, tx_id, confirmed.outcome)
            if confirmed.new:
                self.audit.record(actor, "payment.confirm", f"payment/{tx_id}",
                                  {"status": confirmed.late or "pending"},
                                  {"status": "paid", "bank_ref": bank_ref,
                                   "receipt_no": confirmed.outcome.result.get("receipt_no")}, db=db)
            return confirmed, device
        return self.store.write(work)

    def cancel(self, tx_id: str, at: datetime, actor: Actor) -> Ended | str:
        """See :meth:`FinanceRepository.cancel`."""
        return self._end_by_hand(tx_id, "cancelled", "payment.cancel", at, actor)

    def expire(self, tx_id: str, at: datetime, actor: Actor) -> Ended | str:
        """See :meth:`FinanceRepository.expire`."""
        return self._end_by_hand(tx_id, "expired", "payment.expire", at, actor)

    def _end_by_hand(self, tx_id: str, status: str, action: str, at: datetime, actor: Actor) -> Ended | str:
        def work(db: Session) -> Ended | str:
            ended = end_payment(db, tx_id, status, at)
            if ended is not None:
                self.store.replace_tx_outcome(db, tx_id, ended[1])
                self.audit.record(actor, action, f"payment/{tx_id}", {"status": "pending"}, {"status": status},
                                  db=db)
                return ended
            row = db.execute("SELECT status FROM payments WHERE tx_id = ?", (tx_id,)).fetchone()
            if row is None:
                raise LookupError(f"no payment for transaction {tx_id!r}")
            return str(row[0])
        return self.store.write(work)

    def expire_due(self, at: datetime) -> list[Ended]:
        """See :meth:`FinanceRepository.expire_due`."""
        def work(db: Session) -> list[Ended]:
            ended = [e for e in (end_payment(db, tx_id, "expired", at) for tx_id in due_to_expire(db, at))
                     if e is not None]
            for _, outcome in ended:
                self.store.replace_tx_outcome(db, outcome.tx_id, outcome)
            return ended
        return self.store.write(work)

    def payments(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.payments`."""
        sql = ("SELECT tx_id, device, office, service, method, amount_satang, status, reference, created_at, "
               "paid_at, receipt_no, kiosk_at, expires_at, ended_at, citizen_ref FROM payments")
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        return self.store.read(lambda db: _rows(db, sql + " ORDER BY created_at DESC LIMIT ?", [*args, limit]))

    def ledger(self, day: date | None, device: str | None, limit: int) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.ledger`."""
        sql = ("SELECT id, at, local_date, entry, office, fiscal_year, receipt_no, refers_to, tx_id, device, service, "
               "method, amount_satang, reason, by_user FROM ledger WHERE 1 = 1")
        args: list[Any] = []
        if day:
            sql += " AND local_date = ?"
            args.append(day.isoformat())
        if device:
            sql += " AND device = ?"
            args.append(device)
        return self.store.read(lambda db: _rows(db, sql + " ORDER BY id LIMIT ?", [*args, limit]))

    def receipts(self, office: str | None, fiscal_year: int | None, limit: int) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.receipts`."""
        sql = ("SELECT p.receipt_no, p.office, p.fiscal_year, coalesce(p.paid_at, p.at) AS paid_at, "
               "p.at AS recorded_at, p.device, p.service, p.method, p.amount_satang, r.entry AS reversed_by, "
               "r.reason AS reversal_reason FROM ledger p "
               "LEFT JOIN ledger r ON r.refers_to = p.id WHERE p.entry = 'payment'")
        args: list[Any] = []
        if office:
            sql += " AND p.office = ?"
            args.append(office)
        if fiscal_year:
            sql += " AND p.fiscal_year = ?"
            args.append(fiscal_year)
        return self.store.read(lambda db: _rows(db, sql + " ORDER BY p.office, p.fiscal_year, p.receipt_no LIMIT ?",
                                                [*args, limit]))

    def reverse(self, receipt_no: str, entry: str, reason: str, at: datetime, actor: Actor) -> int:
        """See :meth:`FinanceRepository.reverse`."""
        def work(db: Session) -> int:
            entry_id = reverse(db, receipt_no, entry, reason, at, by=actor.user)
            self.audit.record(actor, f"receipt.{entry}", f"receipt/{receipt_no}", {"reversed": False},
                              {"reversed": True, "entry": entry, "reason": reason, "ledger_id": entry_id}, db=db)
            return entry_id
        return self.store.write(work)

    def summary(self, day: date) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.summary`."""
        return self.store.read(lambda db: _rows(
            db, "SELECT office, method, service, entry, count(*) AS entries, sum(amount_satang) AS amount_satang "
                "FROM ledger WHERE local_date = ? GROUP BY office, method, service, entry ORDER BY 1, 2, 3, 4",
            [day.isoformat()]))

    def reconcile(self, device: str, day: date, counted_satang: int, counted_by: str, at: datetime,
                  actor: Actor) -> dict[str, Any]:
        """See :meth:`FinanceRepository.reconcile`."""
        def work(db: Session) -> dict[str, Any]:
            result = reconcile(db, device, day, counted_satang, counted_by, at, recorded_by=actor.user)
            after = {k: v for k, v in result.items() if k != "earlier_counts"}
            self.audit.record(actor, "cash.count", f"reconciliation/{device}/{day.isoformat()}", None, after, db=db)
            return result
        return self.store.write(work)

    def counts(self, day: date, device: str | None) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.counts`."""
        return self.store.read(lambda db: counts(db, day, device))

    def reconciliation(self, day: date) -> list[tuple[Any, ...]]:
        """See :meth:`FinanceRepository.reconciliation`."""
        d = day.isoformat()
        rows = self.store.read(lambda db: db.execute(_RECONCILIATION_SQL, (d, d, d, d)).fetchall())
        return [tuple(r) for r in rows]

    def register(self, day: date) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.register`."""
        rows = self.store.read(lambda db: db.execute(_REGISTER_SQL, (day.isoformat(),)).fetchall())
        out = []
        for d, office, fy, no, entry, refers, at, device, service, method, amount, reason, by in rows:
            local = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(BANGKOK)
            out.append({"day": d, "office": office, "fiscal_year": fy, "receipt_no": no or "", "entry": entry,
                        "refers_to": refers or "", "time": f"{local:%H:%M:%S}", "device": device,
                        "service": service, "method": method, "amount_satang": amount, "reason": reason or "",
                        "by_user": by or ""})
        return out
