"""The finance repository: every read and change of the ledger, receipts, payments and cash counts, in portable SQL.

Routes and the API module never see a database session or SQL. :class:`SqlBook` is the finance side of one records
transaction (a route reaches it as :attr:`hub.records.unit.RecordsUnit.ledger`); :class:`SqlFinance` is what the
API calls, over any :class:`hub.store.base.SqlStore` (each change commits with its audit row and, for payments, the
transaction's new outcome).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

from edge.contract import TxOutcome, TxStatus, format_timestamp
from hub.audit import Actor, AuditLog
from hub.finance.catalogue import Catalogue
from hub.finance.fiscal import BANGKOK, local_date
from hub.finance.ledger import ENDINGS, Confirmed, ConfirmError, Payment, Receipt, post_payment, receipt_result
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


class SqlBook:
    """The finance tables inside one records transaction: the :class:`hub.finance.ledger.Book` a route writes
    through, and the changes the API makes (each runs inside the caller's transaction and never commits)."""

    __slots__ = ("_db",)

    def __init__(self, db: Session) -> None:
        self._db = db

    def next_receipt(self, office: str, fiscal_year: int) -> int:
        """See :meth:`hub.finance.ledger.Book.next_receipt`: the counter's row lock keeps it gapless across hub
        processes."""
        row = self._db.execute(
            "INSERT INTO receipt_counters (office, fiscal_year, last) VALUES (?, ?, 1) "
            "ON CONFLICT (office, fiscal_year) DO UPDATE SET last = receipt_counters.last + 1 RETURNING last",
            (office, fiscal_year)).fetchone()
        return int(row[0])

    def append_payment(self, receipt: Receipt, day: date, tx_id: str, device: str, citizen_ref: str | None) -> None:
        """See :meth:`hub.finance.ledger.Book.append_payment`."""
        self._db.execute(
            "INSERT INTO ledger (at, local_date, entry, office, fiscal_year, receipt_no, tx_id, device, service, "
            "method, amount_satang, citizen_ref, paid_at) VALUES (?, ?, 'payment', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (receipt.recorded_at, day.isoformat(), receipt.office, receipt.fiscal_year, receipt.receipt_no, tx_id,
             device, receipt.service, receipt.method, receipt.amount_satang, citizen_ref, receipt.paid_at))

    def add_payment(self, payment: Payment) -> None:
        """See :meth:`hub.finance.ledger.Book.add_payment`."""
        p = payment
        self._db.execute(
            "INSERT INTO payments (tx_id, device, office, service, method, amount_satang, citizen_ref, status, "
            "reference, created_at, paid_at, receipt_no, kiosk_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (p.tx_id, p.device, p.office, p.service, p.method, p.amount_satang, p.citizen_ref, p.status, p.reference,
             p.created_at, p.paid_at, p.receipt_no, p.kiosk_at, p.expires_at))

    def payment_status(self, tx_id: str) -> str | None:
        """Where the payment of transaction ``tx_id`` stands, or None when there is none."""
        row = self._db.execute("SELECT status FROM payments WHERE tx_id = ?", (tx_id,)).fetchone()
        return None if row is None else str(row[0])

    def confirm_payment(self, catalogue: Catalogue, tx_id: str, amount_satang: int,
                        bank_ref: str, at: datetime) -> Confirmed:
        """Record the bank's confirmation of a PromptPay payment: its receipt, or the one it already has."""
        row = self._db.execute("SELECT device, office, service, method, amount_satang, citizen_ref, status, "
                               "receipt_no, paid_at FROM payments WHERE tx_id = ?", (tx_id,)).fetchone()
        if row is None:
            raise LookupError(f"no payment for transaction {tx_id!r}")
        device, office, service, method, amount, citizen, status, receipt_no, paid_at = row
        if amount_satang != amount:
            raise ConfirmError(f"the bank confirmed {amount_satang} satang for a payment of {amount} satang")
        if status == "paid":
            recorded = self._db.execute("SELECT at FROM ledger WHERE receipt_no = ?", (receipt_no,)).fetchone()
            fy = int(receipt_no.split("-")[1])
            receipt = Receipt(receipt_no, office, fy, service, method, amount, paid_at,
                              recorded[0] if recorded else paid_at)
            return Confirmed(TxOutcome(tx_id=tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                                       result=receipt_result(catalogue, receipt)), False, None)
        receipt = post_payment(self, catalogue, at=at, paid_at=at, office=office, tx_id=tx_id, device=device,
                               service=service, method=method, amount=amount, citizen_ref=citizen)
        self._db.execute("UPDATE payments SET status = 'paid', paid_at = ?, bank_ref = ?, receipt_no = ? "
                         "WHERE tx_id = ?", (receipt.paid_at, bank_ref, receipt.receipt_no, tx_id))
        return Confirmed(TxOutcome(tx_id=tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                                   result=receipt_result(catalogue, receipt)), True,
                         None if status == "pending" else str(status))

    def end_payment(self, tx_id: str, ending: str, at: datetime) -> tuple[str, TxOutcome] | None:
        """End a pending PromptPay payment (``expired`` or ``cancelled``); returns (device, final outcome), or None
        when it is not pending any more."""
        row = self._db.execute("UPDATE payments SET status = ?, ended_at = ? WHERE tx_id = ? "
                               "AND status = 'pending' RETURNING device, reference, amount_satang, service, office",
                               (ending, format_timestamp(at), tx_id)).fetchone()
        if row is None:
            return None
        device, reference, amount, service, office = row
        return device, TxOutcome(tx_id=tx_id, status=TxStatus.REJECTED, duplicate=False, reason=ENDINGS[ending],
                                 result={"ended": ending, "reference": reference, "amount_satang": amount,
                                         "service": service, "office": office})

    def due_to_expire(self, at: datetime) -> list[str]:
        """Pending payments whose time is up."""
        return [r[0] for r in self._db.execute("SELECT tx_id FROM payments WHERE status = 'pending' "
                                               "AND expires_at IS NOT NULL AND expires_at <= ?",
                                               (format_timestamp(at),))]

    def reverse(self, receipt_no: str, entry: str, reason: str, at: datetime,
                by: str | None = None) -> int:
        """Add a void or refund entry compensating the payment with this receipt number, made by user ``by``;
        returns its id."""
        row = self._db.execute("SELECT id, office, fiscal_year, tx_id, device, service, method, amount_satang, "
                               "citizen_ref FROM ledger WHERE receipt_no = ? AND entry = 'payment'",
                               (receipt_no,)).fetchone()
        if row is None:
            raise LookupError(f"no payment with receipt {receipt_no!r}")
        if self._db.execute("SELECT 1 FROM ledger WHERE refers_to = ?", (row[0],)).fetchone():
            raise ConfirmError(f"receipt {receipt_no} was already voided or refunded")
        pid, office, fy, tx_id, device, service, method, amount, citizen = row
        cur = self._db.execute(
            "INSERT INTO ledger (at, local_date, entry, office, fiscal_year, refers_to, tx_id, device, service, "
            "method, amount_satang, citizen_ref, reason, by_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (format_timestamp(at), local_date(at).isoformat(), entry, office, fy, pid, tx_id, device, service, method,
             -amount, citizen, reason, by))
        return int(cur.fetchone()[0])

    def cash_in_ledger(self, device: str, day: date) -> tuple[int, int]:
        """Net cash (satang) and number of cash entries a kiosk took on a local date."""
        row = self._db.execute("SELECT coalesce(sum(amount_satang), 0), count(*) FROM ledger WHERE device = ? AND "
                               "local_date = ? AND method = 'cash'", (device, day.isoformat())).fetchone()
        return int(row[0]), int(row[1])

    def reconcile(self, device: str, day: date, counted_satang: int, counted_by: str,
                  at: datetime, recorded_by: str | None = None) -> dict[str, Any]:
        """Record the cash counted from a known kiosk against what its ledger says (entered by user
        ``recorded_by``); returns the comparison, with the earlier counts of the same kiosk and day (kept: the
        latest stands)."""
        if self._db.execute("SELECT 1 FROM devices WHERE device = ?", (device,)).fetchone() is None:
            raise LookupError(f"no device {device!r} in the registry: cash is counted only from known kiosks")
        ledger, entries = self.cash_in_ledger(device, day)
        earlier = self.counts(day, device)
        cur = self._db.execute("INSERT INTO reconciliations (device, day, counted_satang, ledger_satang, entries, "
                               "counted_by, at, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                               (device, day.isoformat(), counted_satang, ledger, entries, counted_by,
                                format_timestamp(at), recorded_by))
        return {"id": int(cur.fetchone()[0]), "device": device, "day": day.isoformat(),
                "counted_satang": counted_satang, "ledger_satang": ledger,
                "difference_satang": counted_satang - ledger, "entries": entries, "counted_by": counted_by,
                "balanced": counted_satang == ledger, "recorded_by": recorded_by,
                "earlier_counts": [{**c, "superseded": True} for c in earlier]}

    def counts(self, day: date, device: str | None = None) -> list[dict[str, Any]]:
        """Every cash count of a day, oldest first; each says whether a later count of its kiosk superseded it."""
        sql = ("SELECT id, device, day, counted_satang, ledger_satang, entries, counted_by, at, recorded_by, "
               "id < max(id) OVER (PARTITION BY device) AS superseded FROM reconciliations WHERE day = ?")
        args: list[Any] = [day.isoformat()]
        if device is not None:
            sql += " AND device = ?"
            args.append(device)
        cur = self._db.execute(sql + " ORDER BY id", args)
        names = [d[0] for d in cur.description]
        return [{**dict(zip(names, row, strict=True)), "superseded": bool(row[-1])} for row in cur.fetchall()]



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
            confirmed = SqlBook(db).confirm_payment(self.catalogue, tx_id, amount_satang, bank_ref, at)
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
            book = SqlBook(db)
            ended = book.end_payment(tx_id, status, at)
            if ended is not None:
                self.store.replace_tx_outcome(db, tx_id, ended[1])
                self.audit.record(actor, action, f"payment/{tx_id}", {"status": "pending"}, {"status": status},
                                  db=db)
                return ended
            current = book.payment_status(tx_id)
            if current is None:
                raise LookupError(f"no payment for transaction {tx_id!r}")
            return current
        return self.store.write(work)

    def expire_due(self, at: datetime) -> list[Ended]:
        """See :meth:`FinanceRepository.expire_due`."""
        def work(db: Session) -> list[Ended]:
            book = SqlBook(db)
            ended = [e for e in (book.end_payment(tx_id, "expired", at) for tx_id in book.due_to_expire(at))
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
            entry_id = SqlBook(db).reverse(receipt_no, entry, reason, at, by=actor.user)
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
            result = SqlBook(db).reconcile(device, day, counted_satang, counted_by, at, recorded_by=actor.user)
            after = {k: v for k, v in result.items() if k != "earlier_counts"}
            self.audit.record(actor, "cash.count", f"reconciliation/{device}/{day.isoformat()}", None, after, db=db)
            return result
        return self.store.write(work)

    def counts(self, day: date, device: str | None) -> list[dict[str, Any]]:
        """See :meth:`FinanceRepository.counts`."""
        return self.store.read(lambda db: SqlBook(db).counts(day, device))

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
