"""The finance API: the bank's payment confirmation, receipts, ledger, voids, daily summary and reconciliation."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from openpyxl import Workbook
from pydantic import BaseModel, Field

from edge.contract import DeviceId, TxOutcome
from hub.api.bounds import INT64_MAX, FiscalYear, Key, Name, Satang
from hub.auth.web import CurrentActor, signed_by
from hub.finance.fiscal import baht
from hub.finance.ledger import ConfirmError, today
from hub.finance.repository import Ended, FinanceRepository

AnswerKiosk = Callable[[str, TxOutcome], None]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class Confirmation(BaseModel):
    """The bank's (or acquirer's) notice that a PromptPay payment was received."""

    amount_satang: Annotated[int, Field(gt=0, le=INT64_MAX)]
    bank_ref: Annotated[str, Field(min_length=1, max_length=64)]


class Reversal(BaseModel):
    """A void or refund of a receipt."""

    entry: Literal["void", "refund"] = "void"
    reason: Annotated[str, Field(min_length=3, max_length=500)]


class CashCount(BaseModel):
    """The cash counted from one kiosk for one day."""

    device: DeviceId
    day: date
    counted_satang: Satang
    counted_by: Annotated[str, Field(min_length=1, max_length=100)]


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """A text cell a spreadsheet will not run: one starting like a formula gets a leading quote (OWASP's rule)."""
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


REGISTER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("day", "วันที่", "day"),
    ("office", "หน่วยงาน", "office"),
    ("fiscal_year", "ปีงบประมาณ", "fiscal year"),
    ("receipt_no", "เลขที่ใบเสร็จ", "receipt no."),
    ("entry", "รายการ", "entry"),
    ("refers_to", "อ้างอิงใบเสร็จ", "refers to receipt"),
    ("time", "เวลา", "time"),
    ("device", "ตู้", "kiosk"),
    ("service", "บริการ", "service"),
    ("method", "วิธีชำระ", "method"),
    ("amount_baht", "จำนวนเงิน (บาท)", "amount (baht)"),
    ("reason", "เหตุผล", "reason"),
    ("by_user", "ผู้ทำรายการ", "by"),
)
"""The daily receipt register's columns: key, Thai heading, English heading (one table for CSV and XLSX)."""

def _register_headings(lang: str) -> list[str]:
    return [th if lang == "th" else en for _, th, en in REGISTER_COLUMNS]


def register_csv(rows: list[dict[str, Any]], lang: str) -> str:
    """The register as CSV (UTF-8 with a byte-order mark so spreadsheets read the Thai), text cells made safe."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_register_headings(lang))
    for row in rows:
        writer.writerow([baht(row["amount_satang"]) if key == "amount_baht" else
                         spreadsheet_text(row[key]) if isinstance(row[key], str) else row[key]
                         for key, _, _ in REGISTER_COLUMNS])
    return "\ufeff" + out.getvalue()


def register_xlsx(rows: list[dict[str, Any]], day: date, lang: str) -> bytes:
    """The register as an XLSX workbook: one sheet, a heading row, amounts as numbers in baht, a total row."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new workbook always has its first sheet
    sheet.title = f"register {day.isoformat()}"
    sheet.append(_register_headings(lang))
    amount_col = [key for key, _, _ in REGISTER_COLUMNS].index("amount_baht") + 1
    for row in rows:
        sheet.append([row["amount_satang"] / 100 if key == "amount_baht" else
                      spreadsheet_text(row[key]) if isinstance(row[key], str) else row[key]
                      for key, _, _ in REGISTER_COLUMNS])
    total = sheet.max_row + 1
    sheet.cell(total, 1, "รวม" if lang == "th" else "total")
    sheet.cell(total, amount_col, sum(r["amount_satang"] for r in rows) / 100)
    for (cell,) in sheet.iter_rows(min_row=2, min_col=amount_col, max_col=amount_col):
        cell.number_format = "#,##0.00"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def expire_pending(finance: FinanceRepository, answer_kiosk: AnswerKiosk, at: datetime) -> int:
    """End every pending PromptPay payment whose time is up and tell its kiosk; returns how many ended."""
    ended = finance.expire_due(at)
    for device, outcome in ended:
        answer_kiosk(device, outcome)
    return len(ended)


def create_router(finance: FinanceRepository, answer_kiosk: AnswerKiosk, bank_secret: str | None) -> APIRouter:
    """Build the finance routes over the finance repository; the bank signs its callbacks with ``bank_secret``."""
    api = APIRouter(prefix="/api/finance", tags=["finance"])

    @api.post("/payments/{tx_id}/confirm", dependencies=[Depends(signed_by(bank_secret))])
    def confirm(tx_id: Key, body: Confirmation, actor: CurrentActor) -> dict[str, Any]:
        """The bank's callback, signed (docs/finance.md): the payment is paid, gets its receipt number, and the
        kiosk gets the outcome."""
        try:
            confirmed, device = finance.confirm(tx_id, body.amount_satang, body.bank_ref, datetime.now(UTC), actor)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except ConfirmError as err:
            raise HTTPException(409, str(err)) from err
        answer_kiosk(device, confirmed.outcome)
        return {"tx_id": tx_id, "already_confirmed": not confirmed.new, "late": confirmed.late,
                **confirmed.outcome.result}

    def end_by_hand(tx_id: str, status: str, ended: Ended | str) -> dict[str, Any]:
        if isinstance(ended, str):
            if ended == "paid":
                raise HTTPException(409, f"{tx_id} is paid: void or refund its receipt instead")
            return {"tx_id": tx_id, "status": ended, "already_ended": True}
        answer_kiosk(*ended)
        return {"tx_id": tx_id, "status": status, "already_ended": False}

    @api.post("/payments/{tx_id}/cancel")
    def cancel(tx_id: Key, actor: CurrentActor) -> dict[str, Any]:
        """Cancel a PromptPay payment still waiting for the bank; the kiosk is told and stops asking."""
        try:
            return end_by_hand(tx_id, "cancelled", finance.cancel(tx_id, datetime.now(UTC), actor))
        except LookupError as err:
            raise HTTPException(404, str(err)) from err

    @api.post("/payments/{tx_id}/expire")
    def expire(tx_id: Key, actor: CurrentActor) -> dict[str, Any]:
        """Expire a PromptPay payment still waiting for the bank now, as its time running out would."""
        try:
            return end_by_hand(tx_id, "expired", finance.expire(tx_id, datetime.now(UTC), actor))
        except LookupError as err:
            raise HTTPException(404, str(err)) from err

    @api.get("/payments")
    def payments(status: Literal["pending", "paid", "expired", "cancelled"] | None = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
        """Payments, newest first (pending ones wait for the bank until ``expires_at``)."""
        return finance.payments(status, limit)

    @api.get("/ledger")
    def ledger(day: date | None = None, device: DeviceId | None = None,
               limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
        """Ledger entries in order (payments, voids and refunds), optionally of one local date or kiosk."""
        return finance.ledger(day, device, limit)

    @api.get("/receipts")
    def receipts(office: Name | None = None, fiscal_year: FiscalYear | None = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
        """Receipts issued, in number order, with whether each was voided or refunded."""
        return finance.receipts(office, fiscal_year, limit)

    @api.post("/receipts/{receipt_no}/reverse")
    def reverse_receipt(receipt_no: Key, body: Reversal, actor: CurrentActor) -> dict[str, Any]:
        """Void or refund a receipt with a compensating ledger entry (nothing is edited)."""
        try:
            entry_id = finance.reverse(receipt_no, body.entry, body.reason, datetime.now(UTC), actor)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err
        except ConfirmError as err:
            raise HTTPException(409, str(err)) from err
        return {"receipt_no": receipt_no, "entry": body.entry, "ledger_id": entry_id}

    @api.get("/summary")
    def summary(day: date | None = None) -> dict[str, Any]:
        """Totals of a local date (today by default) per office, method and service."""
        d = day or today()
        rows = finance.summary(d)
        total = sum(r["amount_satang"] for r in rows)
        return {"day": d.isoformat(), "total_satang": total, "total_baht": baht(total), "rows": rows}

    @api.post("/reconciliations")
    def record_count(body: CashCount, actor: CurrentActor) -> dict[str, Any]:
        """Record the cash counted from a known kiosk and compare it with the ledger; earlier counts stay."""
        try:
            return finance.reconcile(body.device, body.day, body.counted_satang, body.counted_by, datetime.now(UTC),
                                     actor)
        except LookupError as err:
            raise HTTPException(404, str(err)) from err

    @api.get("/reconciliations")
    def all_counts(day: date | None = None, device: DeviceId | None = None) -> list[dict[str, Any]]:
        """Every cash count of a local date (today by default), oldest first, with which ones were superseded."""
        return finance.counts(day or today(), device)

    @api.get("/reconciliation.csv")
    def reconciliation_csv(day: date | None = None) -> Response:
        """Per kiosk for one local date: cash in the ledger, cash counted (latest count), difference."""
        d = (day or today()).isoformat()
        rows = finance.reconciliation(day or today())
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["day", "device", "cash_entries", "ledger_cash_baht", "counted_baht", "difference_baht",
                         "counted_by", "status", "counts"])
        for device, cash, n, counted, by, n_counts in rows:
            diff = None if counted is None else counted - cash
            status = "not counted" if counted is None else "balanced" if diff == 0 else "difference"
            writer.writerow([d, spreadsheet_text(device), n, baht(cash), "" if counted is None else baht(counted),
                             "" if diff is None else baht(diff), spreadsheet_text(by or ""), status, n_counts])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="reconciliation-{d}.csv"'})

    @api.get("/register.csv")
    def register_as_csv(day: date | None = None, lang: Literal["th", "en"] = "th") -> Response:
        """The daily receipt register of a local date (today by default), every payment, void and refund, as CSV
        for the clerk who keys it into the national accounting system; headings in Thai or English."""
        d = day or today()
        text = register_csv(finance.register(d), lang)
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="receipts-{d.isoformat()}.csv"'})

    @api.get("/register.xlsx", response_class=Response,
             responses={200: {"content": {XLSX: {}}, "description": "the register as a workbook"}})
    def register_as_xlsx(day: date | None = None, lang: Literal["th", "en"] = "th") -> Response:
        """The same daily receipt register as an XLSX workbook, with amounts as numbers and a total row."""
        d = day or today()
        body = register_xlsx(finance.register(d), d, lang)
        return Response(body, media_type=XLSX,
                        headers={"Content-Disposition": f'attachment; filename="receipts-{d.isoformat()}.xlsx"'})

    return api
