"""The finance module's tables and rules: fee payments routed from kiosks, the ledger, receipts, reconciliation.

The ledger is append-only (SQLite triggers refuse UPDATE and DELETE; only a citizen reference may be erased,
by the retention purge): a payment adds one entry, a void or a refund adds a compensating entry that refers to
it. Receipt numbers come from a counter per office and fiscal year, taken in the same database transaction as
the ledger entry, so they have no gaps. A PromptPay payment stays ``pending`` (no ledger entry, no receipt
number) until the bank's confirmation arrives, or until it expires or is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from edge.contract import Tx, TxOutcome, TxStatus, format_timestamp, tx_reference
from hub.finance.catalogue import Catalogue
from hub.finance.fiscal import BANGKOK, fiscal_year, local_date
from hub.finance.promptpay import PromptPaySettings
from hub.records.session import Session

KIOSK_CLOCK_TRUSTED = timedelta(days=30)
"""How far back a kiosk's transaction time may lie and still date a cash payment (a hub outage); older, or
ahead of the hub's clock, and the hub's own time dates it."""


class PaymentRejected(ValueError):
    """A fee payment that cannot be taken, with the reason the kiosk shows the citizen."""


@dataclass(frozen=True)
class Receipt:
    """What a receipt says."""

    receipt_no: str
    office: str
    fiscal_year: int
    service: str
    method: str
    amount_satang: int
    paid_at: str
    """When the citizen paid (the kiosk's time for cash, the bank's confirmation for PromptPay): it decides the
    accounting day and fiscal year."""
    recorded_at: str
    """When the hub wrote the entry."""


def _next_receipt(db: Session, catalogue: Catalogue, office: str, fy: int) -> str:
    row = db.execute(
        "INSERT INTO receipt_counters (office, fiscal_year, last) VALUES (?, ?, 1) "
        "ON CONFLICT (office, fiscal_year) DO UPDATE SET last = receipt_counters.last + 1 RETURNING last",
        (office, fy)).fetchone()
    return f"{catalogue.offices[office].receipt_prefix}-{fy}-{row[0]:06d}"


def _post_payment(db: Session, catalogue: Catalogue, *, at: datetime, paid_at: datetime, office: str,
                  tx_id: str, device: str, service: str, method: str, amount: int,
                  citizen_ref: str | None) -> Receipt:
    day = local_date(paid_at)
    fy = fiscal_year(day)
    receipt_no = _next_receipt(db, catalogue, office, fy)
    stamp, paid = format_timestamp(at), format_timestamp(paid_at)
    db.execute(
        "INSERT INTO ledger (at, local_date, entry, office, fiscal_year, receipt_no, tx_id, device, service, method, "
        "amount_satang, citizen_ref, paid_at) VALUES (?, ?, 'payment', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (stamp, day.isoformat(), office, fy, receipt_no, tx_id, device, service, method, amount, citizen_ref, paid))
    return Receipt(receipt_no, office, fy, service, method, amount, paid, stamp)


def cash_paid_at(kiosk_at: datetime, now: datetime) -> datetime:
    """The time that dates a cash payment: the kiosk's, unless its clock cannot be trusted (see
    :data:`KIOSK_CLOCK_TRUSTED`)."""
    return kiosk_at if now - KIOSK_CLOCK_TRUSTED <= kiosk_at <= now + timedelta(minutes=5) else now


def _receipt_result(catalogue: Catalogue, receipt: Receipt) -> dict[str, Any]:
    service = catalogue.service(receipt.service)
    office = catalogue.offices[receipt.office]
    return {
        "receipt_no": receipt.receipt_no, "office": receipt.office, "office_th": office.name_th,
        "office_en": office.name_en, "fiscal_year": receipt.fiscal_year, "service": receipt.service,
        "service_th": service.name_th if service else receipt.service,
        "service_en": service.name_en if service else receipt.service,
        "method": receipt.method, "amount_satang": receipt.amount_satang, "paid_at": receipt.paid_at,
        "recorded_at": receipt.recorded_at,
        "municipality_th": catalogue.municipality_th, "municipality_en": catalogue.municipality_en,
    }


class FinanceRoute:
    """Applies ``fee.payment`` transactions: cash is paid at once, PromptPay waits for the bank."""

    KINDS = ("fee.payment",)

    def __init__(self, catalogue: Catalogue, promptpay: PromptPaySettings,
                 clock: Any = None) -> None:
        self.catalogue = catalogue
        self.promptpay = promptpay
        self._clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))

    def _check(self, tx: Tx) -> tuple[str, str, str, int]:
        data = tx.data
        office, code, method = data.get("office"), data.get("service"), data.get("method")
        if not isinstance(office, str) or office not in self.catalogue.offices:
            raise PaymentRejected(f"unknown office {office!r}")
        service = self.catalogue.service(code) if isinstance(code, str) else None
        if service is None or not service.offered_at(office):
            raise PaymentRejected(f"service {code!r} is not offered at {office}")
        if method not in service.methods:
            accepted = ", ".join(service.methods)
            raise PaymentRejected(f"{service.code} cannot be paid by {method!r} (accepted: {accepted})")
        amount = data.get("amount_satang")
        if amount != service.amount_satang:
            raise PaymentRejected(f"amount {amount!r} satang does not match the fee of {service.amount_satang} satang")
        if tx.citizen is None and not service.anonymous:
            raise PaymentRejected(f"{service.code} needs the citizen's ID card")
        return office, service.code, str(method), service.amount_satang

    def apply(self, tx: Tx, db: Session) -> TxOutcome:
        """Take the payment inside the hub's transaction; never commits."""
        try:
            office, code, method, amount = self._check(tx)
        except PaymentRejected as err:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=str(err), result={})
        citizen = tx.citizen.ref if tx.citizen else None
        now = self._clock()
        kiosk_at = format_timestamp(tx.created_at)
        if method == "cash":
            receipt = _post_payment(db, self.catalogue, at=now, paid_at=cash_paid_at(tx.created_at, now),
                                    office=office, tx_id=tx.tx_id, device=tx.device, service=code, method=method,
                                    amount=amount, citizen_ref=citizen)
            db.execute("INSERT INTO payments (tx_id, device, office, service, method, amount_satang, citizen_ref, "
                       "status, reference, created_at, paid_at, receipt_no, kiosk_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                       "'paid', ?, ?, ?, ?, ?)",
                       (tx.tx_id, tx.device, office, code, method, amount, citizen, tx_reference(tx.tx_id),
                        format_timestamp(now), receipt.paid_at, receipt.receipt_no, kiosk_at))
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                             result=_receipt_result(self.catalogue, receipt))
        ref = tx_reference(tx.tx_id)
        try:
            payload = self.promptpay.payload(ref, amount)
        except ValueError as err:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=str(err), result={})
        expires_at = format_timestamp(now + timedelta(seconds=self.promptpay.expire_after_s))
        db.execute("INSERT INTO payments (tx_id, device, office, service, method, amount_satang, citizen_ref, status, "
                   "reference, created_at, kiosk_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                   (tx.tx_id, tx.device, office, code, method, amount, citizen, ref, format_timestamp(now), kiosk_at,
                    expires_at))
        result: dict[str, Any] = {"awaiting": "payment", "reference": ref, "promptpay": payload,
                                  "amount_satang": amount, "service": code, "office": office,
                                  "expires_at": expires_at}
        if self.promptpay.demo:
            result["promptpay_demo"] = True
        return TxOutcome(tx_id=tx.tx_id, status=TxStatus.PENDING, duplicate=False, reason=None, result=result)


class ConfirmError(ValueError):
    """A bank confirmation that does not fit the payment it names."""


@dataclass(frozen=True)
class Confirmed:
    """The outcome of a bank confirmation."""

    outcome: TxOutcome
    new: bool
    late: str | None
    """``expired`` or ``cancelled`` when the money arrived after the payment had ended: it is booked all the
    same (the money is the municipality's to account for), and an officer hands over or refunds the receipt."""


def confirm_payment(db: Session, catalogue: Catalogue, tx_id: str, amount_satang: int,
                    bank_ref: str, at: datetime) -> Confirmed:
    """Record the bank's confirmation of a PromptPay payment: its receipt, or the one it already has."""
    row = db.execute("SELECT device, office, service, method, amount_satang, citizen_ref, status, receipt_no, "
                     "paid_at FROM payments WHERE tx_id = ?", (tx_id,)).fetchone()
    if row is None:
        raise LookupError(f"no payment for transaction {tx_id!r}")
    device, office, service, method, amount, citizen, status, receipt_no, paid_at = row
    if amount_satang != amount:
        raise ConfirmError(f"the bank confirmed {amount_satang} satang for a payment of {amount} satang")
    if status == "paid":
        recorded = db.execute("SELECT at FROM ledger WHERE receipt_no = ?", (receipt_no,)).fetchone()
        fy = int(receipt_no.split("-")[1])
        receipt = Receipt(receipt_no, office, fy, service, method, amount, paid_at,
                          recorded[0] if recorded else paid_at)
        return Confirmed(TxOutcome(tx_id=tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                                   result=_receipt_result(catalogue, receipt)), False, None)
    receipt = _post_payment(db, catalogue, at=at, paid_at=at, office=office, tx_id=tx_id, device=device,
                            service=service, method=method, amount=amount, citizen_ref=citizen)
    db.execute("UPDATE payments SET status = 'paid', paid_at = ?, bank_ref = ?, receipt_no = ? WHERE tx_id = ?",
               (receipt.paid_at, bank_ref, receipt.receipt_no, tx_id))
    return Confirmed(TxOutcome(tx_id=tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                               result=_receipt_result(catalogue, receipt)), True,
                     None if status == "pending" else str(status))


ENDINGS: dict[str, str] = {
    "expired": "the PromptPay payment was not received in time; nothing was charged, please start again",
    "cancelled": "the PromptPay payment was cancelled by the municipality; nothing was charged",
}
"""Why a pending payment ended, as the kiosk shows it (``result.ended`` carries the key)."""


def end_payment(db: Session, tx_id: str, ending: str, at: datetime) -> tuple[str, TxOutcome] | None:
    """End a pending PromptPay payment (``expired`` or ``cancelled``); returns (device, final outcome), or None
    when it is not pending any more."""
    row = db.execute("UPDATE payments SET status = ?, ended_at = ? WHERE tx_id = ? AND status = 'pending' "
                     "RETURNING device, reference, amount_satang, service, office",
                     (ending, format_timestamp(at), tx_id)).fetchone()
    if row is None:
        return None
    device, reference, amount, service, office = row
    return device, TxOutcome(tx_id=tx_id, status=TxStatus.REJECTED, duplicate=False, reason=ENDINGS[ending], result={
        "ended": ending, "reference": reference, "amount_satang": amount, "service": service, "office": office})


def due_to_expire(db: Session, at: datetime) -> list[str]:
    """Pending payments whose time is up."""
    return [r[0] for r in db.execute("SELECT tx_id FROM payments WHERE status = 'pending' AND expires_at IS NOT NULL "
                                     "AND expires_at <= ?", (format_timestamp(at),))]


def reverse(db: Session, receipt_no: str, entry: str, reason: str, at: datetime,
            by: str | None = None) -> int:
    """Add a void or refund entry compensating the payment with this receipt number, made by user ``by``;
    returns its id."""
    row = db.execute("SELECT id, office, fiscal_year, tx_id, device, service, method, amount_satang, citizen_ref "
                     "FROM ledger WHERE receipt_no = ? AND entry = 'payment'", (receipt_no,)).fetchone()
    if row is None:
        raise LookupError(f"no payment with receipt {receipt_no!r}")
    if db.execute("SELECT 1 FROM ledger WHERE refers_to = ?", (row[0],)).fetchone():
        raise ConfirmError(f"receipt {receipt_no} was already voided or refunded")
    pid, office, fy, tx_id, device, service, method, amount, citizen = row
    cur = db.execute(
        "INSERT INTO ledger (at, local_date, entry, office, fiscal_year, refers_to, tx_id, device, service, method, "
        "amount_satang, citizen_ref, reason, by_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (format_timestamp(at), local_date(at).isoformat(), entry, office, fy, pid, tx_id, device, service, method,
         -amount, citizen, reason, by))
    return int(cur.fetchone()[0])


def cash_in_ledger(db: Session, device: str, day: date) -> tuple[int, int]:
    """Net cash (satang) and number of cash entries a kiosk took on a local date."""
    row = db.execute("SELECT coalesce(sum(amount_satang), 0), count(*) FROM ledger WHERE device = ? AND "
                     "local_date = ? AND method = 'cash'", (device, day.isoformat())).fetchone()
    return int(row[0]), int(row[1])


def reconcile(db: Session, device: str, day: date, counted_satang: int, counted_by: str,
              at: datetime, recorded_by: str | None = None) -> dict[str, Any]:
    """Record the cash counted from a known kiosk against what its ledger says (entered by user ``recorded_by``);
    returns the comparison, with the earlier counts of the same kiosk and day (kept: the latest stands)."""
    if db.execute("SELECT 1 FROM devices WHERE device = ?", (device,)).fetchone() is None:
        raise LookupError(f"no device {device!r} in the registry: cash is counted only from known kiosks")
    ledger, entries = cash_in_ledger(db, device, day)
    earlier = counts(db, day, device)
    cur = db.execute("INSERT INTO reconciliations (device, day, counted_satang, ledger_satang, entries, counted_by, "
                     "at, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                     (device, day.isoformat(), counted_satang, ledger, entries, counted_by, format_timestamp(at),
                      recorded_by))
    return {"id": int(cur.fetchone()[0]), "device": device, "day": day.isoformat(), "counted_satang": counted_satang,
            "ledger_satang": ledger, "difference_satang": counted_satang - ledger, "entries": entries,
            "counted_by": counted_by, "balanced": counted_satang == ledger, "recorded_by": recorded_by,
            "earlier_counts": [{**c, "superseded": True} for c in earlier]}


def counts(db: Session, day: date, device: str | None = None) -> list[dict[str, Any]]:
    """Every cash count of a day, oldest first; each says whether a later count of its kiosk superseded it."""
    sql = ("SELECT id, device, day, counted_satang, ledger_satang, entries, counted_by, at, recorded_by, "
           "id < max(id) OVER (PARTITION BY device) AS superseded FROM reconciliations WHERE day = ?")
    args: list[Any] = [day.isoformat()]
    if device is not None:
        sql += " AND device = ?"
        args.append(device)
    cur = db.execute(sql + " ORDER BY id", args)
    names = [d[0] for d in cur.description]
    return [{**dict(zip(names, row, strict=True)), "superseded": bool(row[-1])} for row in cur.fetchall()]


def today() -> date:
    """Today's date in Thailand."""
    return datetime.now(BANGKOK).date()
