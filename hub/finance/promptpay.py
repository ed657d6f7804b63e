"""PromptPay QR payloads (Thai EMVCo merchant-presented QR): tag 29 credit transfer or tag 30 bill payment."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import HubConfigError

_AID_CREDIT_TRANSFER = "A000000677010111"
_AID_BILL_PAYMENT = "A000000677010112"
_THB = "764"


def _tlv(tag: str, value: str) -> str:
    if len(value) > 99:
        raise ValueError(f"EMV field {tag} is longer than 99 characters")
    return f"{tag}{len(value):02d}{value}"


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _with_crc(body: str) -> str:
    body += "6304"
    return body + f"{crc16_ccitt_false(body.encode('ascii')):04X}"


def _proxy(target: str) -> tuple[str, str]:
    digits = re.sub(r"\D", "", target)
    if len(digits) >= 15:
        return "03", digits  # e-wallet id
    if len(digits) == 13:
        return "02", digits  # national id or tax id
    if len(digits) == 10 and digits.startswith("0"):
        return "01", ("0066" + digits[1:]).rjust(13, "0")  # mobile phone
    raise ValueError(f"not a PromptPay target: {target!r} (phone 0XXXXXXXXX, 13-digit id or 15-digit e-wallet)")


def _amount(satang: int | None) -> str:
    if satang is None:
        return ""
    if satang <= 0:
        raise ValueError("a PromptPay amount must be positive")
    return _tlv("54", f"{satang // 100}.{satang % 100:02d}")


def credit_transfer(target: str, amount_satang: int | None = None) -> str:
    """Tag 29 payload to a phone number, national/tax id or e-wallet; dynamic (one-time) when an amount is set."""
    sub, value = _proxy(target)
    merchant = _tlv("00", _AID_CREDIT_TRANSFER) + _tlv(sub, value)
    body = (_tlv("00", "01") + _tlv("01", "12" if amount_satang is not None else "11") + _tlv("29", merchant)
            + _tlv("58", "TH") + _tlv("53", _THB) + _amount(amount_satang))
    return _with_crc(body)


_REF = re.compile(r"^[A-Z0-9]{1,20}$")


def bill_payment(biller_id: str, ref1: str, amount_satang: int, ref2: str | None = None) -> str:
    """Tag 30 payload for a registered biller; ref1 (and ref2) come back with the bank's payment notice."""
    for name, ref in (("ref1", ref1), ("ref2", ref2)):
        if ref is not None and not _REF.match(ref):
            raise ValueError(f"{name} must be 1-20 upper-case letters or digits, got {ref!r}")
    merchant = _tlv("00", _AID_BILL_PAYMENT) + _tlv("01", biller_id) + _tlv("02", ref1)
    if ref2:
        merchant += _tlv("03", ref2)
    body = (_tlv("00", "01") + _tlv("01", "12") + _tlv("30", merchant) + _tlv("58", "TH") + _tlv("53", _THB)
            + _amount(amount_satang))
    return _with_crc(body)


DEMO_TARGET = "0000000000"
"""The demo's PromptPay target: shaped like a phone number, but no Thai number starts +66 0, so no account."""


@dataclass(frozen=True)
class PromptPaySettings:
    """Where a municipality's QR payments go: a registered biller (preferred) or a PromptPay target.

    Neither set means PromptPay is off: a PromptPay payment is rejected and the citizen pays in cash.
    """

    biller_id: str | None = None
    target: str | None = None
    demo: bool = False
    """QR codes go to :data:`DEMO_TARGET`; every pending answer says so (``promptpay_demo``)."""
    expire_after_s: float = 900.0
    """How long a QR payment waits for the bank before it expires (and the kiosk is told)."""

    def __post_init__(self) -> None:
        if not 0 < self.expire_after_s <= 7 * 86_400:
            raise HubConfigError(f"a QR payment must expire after more than 0 s and at most 7 days, "
                                 f"not {self.expire_after_s:g} s")

    @classmethod
    def for_demo(cls) -> PromptPaySettings:
        """The demo's settings: QR codes that pay no one."""
        return cls(target=DEMO_TARGET, demo=True)

    @property
    def configured(self) -> bool:
        """Whether QR payments are offered at all."""
        return bool(self.biller_id or self.target)

    def payload(self, reference: str, amount_satang: int) -> str:
        """The QR payload for one payment; bill payment carries ``reference`` as ref1."""
        if self.biller_id:
            return bill_payment(self.biller_id, reference, amount_satang)
        if self.target:
            return credit_transfer(self.target, amount_satang)
        raise ValueError("PromptPay is not set up at this hub (no biller id or target): please pay in cash")
