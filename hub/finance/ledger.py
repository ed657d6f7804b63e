"""The finance module's rules: fee payments routed from kiosks, the ledger, receipts, reconciliation.

The ledger is append-only (SQLite triggers refuse UPDATE and DELETE; only a citizen reference may be erased,
by the retention purge): a payment adds one entry, a void or a refund adds a compensating entry that refers to
it. Receipt numbers come from a counter per office and fiscal year, taken in the same database transaction as
the ledger entry, so they have no gaps. A PromptPay payment stays ``pending`` (no ledger entry, no receipt
number) until the bank's confirmation arrives, or until it expires or is cancelled. The tables are
:mod:`hub.finance.repository`'s: the route writes through the :class:`Book` of the hub's transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from edge.contract import Tx, TxOutcome, TxStatus, format_timestamp, tx_reference
from hub.finance.catalogue import Catalogue
from hub.finance.fiscal import BANGKOK, fiscal_year, local_date
from hub.finance.promptpay import PromptPaySettings

if TYPE_CHECKING:
    from hub.records.unit import RecordsUnit

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


@dataclass(frozen=True)
class Payment:
    """A payment as a kiosk's transaction opens it: ``paid`` at once (cash) or ``pending`` the bank (PromptPay)."""

    tx_id: str
    device: str
    office: str
    service: str
    method: str
    amount_satang: int
    citizen_ref: str | None
    status: str
    reference: str
    created_at: str
    kiosk_at: str
    paid_at: str | None = None
    receipt_no: str | None = None
    expires_at: str | None = None


class Book(Protocol):
    """The ledger, the receipt counters and the payments inside one records transaction: what a route writes
    (:attr:`hub.records.unit.RecordsUnit.ledger`)."""

    def next_receipt(self, office: str, fiscal_year: int) -> int:
        """Take the next receipt number of an office and fiscal year (gapless: rolled back with the transaction)."""
        ...

    def append_payment(self, receipt: Receipt, day: date, tx_id: str, device: str, citizen_ref: str | None) -> None:
        """Add the ledger's payment entry for ``receipt``, booked on local date ``day``."""
        ...

    def add_payment(self, payment: Payment) -> None:
        """Record a payment a kiosk opened."""
        ...


def post_payment(book: Book, catalogue: Catalogue, *, at: datetime, paid_at: datetime, office: str,
                 tx_id: str, device: str, service: str, method: str, amount: int,
                 citizen_ref: str | None) -> Receipt:
    """Number a receipt and add its ledger entry (``paid_at`` decides the accounting day and fiscal year)."""
    day = local_date(paid_at)
    fy = fiscal_year(day)
    receipt_no = f"{catalogue.offices[office].receipt_prefix}-{fy}-{book.next_receipt(office, fy):06d}"
    receipt = Receipt(receipt_no, office, fy, service, method, amount, format_timestamp(paid_at),
                      format_timestamp(at))
    book.append_payment(receipt, day, tx_id, device, citizen_ref)
    return receipt


def cash_paid_at(kiosk_at: datetime, now: datetime) -> datetime:
    """The time that dates a cash payment: the kiosk's, unless its clock cannot be trusted (see
    :data:`KIOSK_CLOCK_TRUSTED`)."""
    return kiosk_at if now - KIOSK_CLOCK_TRUSTED <= kiosk_at <= now + timedelta(minutes=5) else now


def receipt_result(catalogue: Catalogue, receipt: Receipt) -> dict[str, Any]:
    """What a transaction's outcome says about its receipt (the kiosk prints it)."""
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

    def apply(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
        """Take the payment inside the hub's transaction, through the unit's ledger; never commits."""
        try:
            office, code, method, amount = self._check(tx)
        except PaymentRejected as err:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=str(err), result={})
        citizen = tx.citizen.ref if tx.citizen else None
        now = self._clock()
        kiosk_at = format_timestamp(tx.created_at)
        if method == "cash":
            receipt = post_payment(unit.ledger, self.catalogue, at=now, paid_at=cash_paid_at(tx.created_at, now),
                                   office=office, tx_id=tx.tx_id, device=tx.device, service=code, method=method,
                                   amount=amount, citizen_ref=citizen)
            unit.ledger.add_payment(Payment(tx.tx_id, tx.device, office, code, method, amount, citizen, "paid",
                                            tx_reference(tx.tx_id), format_timestamp(now), kiosk_at,
                                            paid_at=receipt.paid_at, receipt_no=receipt.receipt_no))
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.ACCEPTED, duplicate=False, reason=None,
                             result=receipt_result(self.catalogue, receipt))
        ref = tx_reference(tx.tx_id)
        try:
            payload = self.promptpay.payload(ref, amount)
        except ValueError as err:
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False, reason=str(err), result={})
        expires_at = format_timestamp(now + timedelta(seconds=self.promptpay.expire_after_s))
        unit.ledger.add_payment(Payment(tx.tx_id, tx.device, office, code, method, amount, citizen, "pending", ref,
                                        format_timestamp(now), kiosk_at, expires_at=expires_at))
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


ENDINGS: dict[str, str] = {
    "expired": "the PromptPay payment was not received in time; nothing was charged, please start again",
    "cancelled": "the PromptPay payment was cancelled by the municipality; nothing was charged",
}
"""Why a pending payment ended, as the kiosk shows it (``result.ended`` carries the key)."""


def today() -> date:
    """Today's date in Thailand."""
    return datetime.now(BANGKOK).date()
