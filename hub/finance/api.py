"""The finance API: the bank's payment confirmation, receipts, ledger, voids, daily summary and reconciliation."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, Field

from edge.contract import TxOutcome
from hub.audit import AuditLog
from hub.auth.web import CurrentActor, signed_by
from hub.finance.fiscal import baht
from hub.finance.ledger import ConfirmError, FinanceRoute, confirm_payment, reconcile, reverse, today
from hub.store.sqlite import SQLiteStore

AnswerKiosk = Callable[[str, TxOutcome], None]


class Confirmation(BaseModel):
    """The bank's (or acquirer's) notice that a PromptPay payment was received."""

    amount_satang: Annotated[int, Field(gt=0)]
    bank_ref: Annotated[str, Field(min_length=1, max_length=64)]


class Reversal(BaseModel):
    """A void or refund of a receipt."""

    entry: Literal["void", "refund"] = "void"
    reason: Annotated[str, Field(min_length=3, max_length=500)]


class CashCount(BaseModel):
    """The cash counted from one kiosk for one day."""

    device: str
    day: date
    counted_satang: Annotated[int, Field(ge=0)]
    counted_by: Annotated[str, Field(min_length=1, max_length=100)]


def _rows(db: sqlite3.Connection, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def create_router(store: SQLiteStore, route: FinanceRoute, answer_kiosk: AnswerKiosk,
                  bank_secret: str | None, audit: AuditLog) -> APIRouter:
    """Build the finance routes over the hub's store; the bank signs its callbacks with ``bank_secret``."""
    api = APIRouter(prefix="/api/finance", tags=["finance"])

    @api.post("/payments/{tx_id}/confirm", dependencies=[Depends(signed_by(bank_secret))])
    def confirm(tx_id: str, body: Confirmation, actor: CurrentActor) -> dict[str, Any]:
        """The bank's callback, signed (docs/finance.md): the payment is paid, gets its receipt number, and the
        kiosk gets the outcome."""
        def work(db: sqlite3.Connection) -> tuple[TxOutcome, bool, str]:
            outcome, new = confirm_payment(db, route.catalogue, tx_id, body.amount_satang, body.bank_ref,
                                           datetime.now(UTC))
            device = store.replace_tx_outcome(db, tx_id, outcome)
            if new:
                audit.record(actor, "payment.confirm", f"payment/{tx_id}", {"status": "pending"},
                             {"status": "paid", "bank_ref": body.bank_ref,
                              "receipt_no": outcome.result.get("receipt_no")}, db=db)
            return outcome, new, device

        try:
            outcome, new, device = store.write(work)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except ConfirmError as err:
            raise HTTPException(409, str(err)) from err
        answer_kiosk(device, outcome)
        return {"tx_id": tx_id, "already_confirmed": not new, **outcome.result}

    @api.get("/payments")
    def payments(status: Literal["pending", "paid"] | None = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
        """Payments, newest first (pending ones wait for the bank)."""
        sql = ("SELECT tx_id, device, office, service, method, amount_satang, status, reference, created_at, "
               "paid_at, receipt_no, citizen_ref FROM payments")
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        return store.read(lambda db: _rows(db, sql + " ORDER BY created_at DESC LIMIT ?", [*args, limit]))

    @api.get("/ledger")
    def ledger(day: date | None = None, device: str | None = None,
               limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
        """Ledger entries in order (payments, voids and refunds), optionally of one local date or kiosk."""
        sql = ("SELECT id, at, local_date, entry, office, fiscal_year, receipt_no, refers_to, tx_id, device, service, "
               "method, amount_satang, reason, by_user FROM ledger WHERE 1 = 1")
        args: list[Any] = []
        if day:
            sql += " AND local_date = ?"
            args.append(day.isoformat())
        if device:
            sql += " AND device = ?"
            args.append(device)
        return store.read(lambda db: _rows(db, sql + " ORDER BY id LIMIT ?", [*args, limit]))

    @api.get("/receipts")
    def receipts(office: str | None = None, fiscal_year: int | None = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
        """Receipts issued, in number order, with whether each was voided or refunded."""
        sql = ("SELECT p.receipt_no, p.office, p.fiscal_year, p.at AS paid_at, p.device, p.service, p.method, "
               "p.amount_satang, r.entry AS reversed_by, r.reason AS reversal_reason FROM ledger p "
               "LEFT JOIN ledger r ON r.refers_to = p.id WHERE p.entry = 'payment'")
        args: list[Any] = []
        if office:
            sql += " AND p.office = ?"
            args.append(office)
        if fiscal_year:
            sql += " AND p.fiscal_year = ?"
            args.append(fiscal_year)
        return store.read(lambda db: _rows(db, sql + " ORDER BY p.office, p.fiscal_year, p.receipt_no LIMIT ?",
                                           [*args, limit]))

    @api.post("/receipts/{receipt_no}/reverse")
    def reverse_receipt(receipt_no: str, body: Reversal, actor: CurrentActor) -> dict[str, Any]:
        """Void or refund a receipt with a compensating ledger entry (nothing is edited)."""
        def work(db: sqlite3.Connection) -> int:
            entry_id = reverse(db, receipt_no, body.entry, body.reason, datetime.now(UTC), by=actor.user)
            audit.record(actor, f"receipt.{body.entry}", f"receipt/{receipt_no}", {"reversed": False},
                         {"reversed": True, "entry": body.entry, "reason": body.reason, "ledger_id": entry_id}, db=db)
            return entry_id

        try:
            entry_id = store.write(work)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except ConfirmError as err:
            raise HTTPException(409, str(err)) from err
        return {"receipt_no": receipt_no, "entry": body.entry, "ledger_id": entry_id}

    @api.get("/summary")
    def summary(day: date | None = None) -> dict[str, Any]:
        """Totals of a local date (today by default) per office, method and service."""
        d = (day or today()).isoformat()
        rows = store.read(lambda db: _rows(
            db, "SELECT office, method, service, entry, count(*) AS entries, sum(amount_satang) AS amount_satang "
                "FROM ledger WHERE local_date = ? GROUP BY office, method, service, entry ORDER BY 1, 2, 3, 4", [d]))
        total = sum(r["amount_satang"] for r in rows)
        return {"day": d, "total_satang": total, "total_baht": baht(total), "rows": rows}

    @api.post("/reconciliations")
    def record_count(body: CashCount, actor: CurrentActor) -> dict[str, Any]:
        """Record the cash counted from a kiosk and compare it with the ledger."""
        def work(db: sqlite3.Connection) -> dict[str, Any]:
            result = reconcile(db, body.device, body.day, body.counted_satang, body.counted_by, datetime.now(UTC),
                               recorded_by=actor.user)
            audit.record(actor, "cash.count", f"reconciliation/{body.device}/{body.day.isoformat()}", None, result,
                         db=db)
            return result

        return store.write(work)

    @api.get("/reconciliation.csv")
    def reconciliation_csv(day: date | None = None) -> Response:
        """Per kiosk for one local date: cash in the ledger, cash counted (latest count), difference."""
        d = (day or today()).isoformat()
        rows = store.read(lambda db: db.execute(
            "SELECT k.device, coalesce(l.cash, 0), coalesce(l.n, 0), r.counted_satang, r.counted_by FROM "
            "(SELECT device FROM ledger WHERE local_date = ?1 AND method = 'cash' UNION "
            " SELECT device FROM reconciliations WHERE day = ?1) k "
            "LEFT JOIN (SELECT device, sum(amount_satang) AS cash, count(*) AS n FROM ledger "
            "           WHERE local_date = ?1 AND method = 'cash' GROUP BY device) l ON l.device = k.device "
            "LEFT JOIN (SELECT device, counted_satang, counted_by, max(id) FROM reconciliations WHERE day = ?1 "
            "           GROUP BY device) r ON r.device = k.device ORDER BY k.device", (d,)).fetchall())
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["day", "device", "cash_entries", "ledger_cash_baht", "counted_baht", "difference_baht",
                         "counted_by", "status"])
        for device, cash, n, counted, by in rows:
            diff = None if counted is None else counted - cash
            status = "not counted" if counted is None else "balanced" if diff == 0 else "difference"
            writer.writerow([d, device, n, baht(cash), "" if counted is None else baht(counted),
                             "" if diff is None else baht(diff), by or "", status])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{d}.csv"'})

    return api
