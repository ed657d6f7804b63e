"""Thai national ID card reader of a service kiosk: any PC/SC (CCID) reader, through pcscd and pyscard.

The driver watches one reader, waits for an inserted card to settle, reads the personal applet (SELECT, the READ
commands and the T=0 GET RESPONSE exchange) in SHARED mode, checks the citizen id's check digit and emits
``card.inserted``, then ``card.removed``. The event publishes only which fields were read; the configured fields
themselves go to the kiosk's flow in memory (:attr:`DriverEvent.private`) and leave the device only inside the
transaction that needs them. The raw citizen id never leaves the driver: it becomes ``citizen.ref``, an HMAC-SHA256
under a key provisioned per deployment, or is masked for a receipt.
Card data lives in memory only and is dropped when the card leaves; no APDU data is ever logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import Field as PydanticField
from pydantic import field_validator
from smartcard import scard
from smartcard.Exceptions import SmartcardException
from smartcard.ExclusiveTransmitCardConnection import ExclusiveTransmitCardConnection
from smartcard.pcsc.PCSCExceptions import BaseSCardException
from smartcard.pcsc.PCSCReader import PCSCReader
from smartcard.System import readers as pcsc_readers

from edge.contract import Severity
from edge.drivers import DriverConfig, DriverEvent, EmitEvent, Presence
from edge.errors import DeviceUnavailable, DriverError

log = logging.getLogger(__name__)


class CardReadError(DriverError):
    """A card could not be read to the end (pulled out, refused a command, not a Thai ID card)."""


class CardRejected(CardReadError):
    """A card was read but refused (its citizen id fails the check digit)."""


# -- the card's personal applet: commands and records -----------------------------------------------------------

PERSONAL_APPLET: Final = bytes.fromhex("A000000054480001")
SELECT_PERSONAL: Final = bytes.fromhex("00A4040008") + PERSONAL_APPLET
INS_GET_RESPONSE: Final = 0xC0


@dataclass(frozen=True)
class Record:
    """One field of the personal applet: where it starts in the card's file and how many bytes it holds."""

    offset: int
    length: int
    what: str


RECORDS: Final[dict[str, Record]] = {
    "citizen_id": Record(0x0004, 13, "the citizen id"),
    "name_th": Record(0x0011, 100, "the Thai name"),
    "name_en": Record(0x0075, 100, "the English name"),
    "birth_date": Record(0x00D9, 8, "the birth date"),
    "gender": Record(0x00E1, 1, "the gender"),
    "issuer": Record(0x00F6, 100, "the issuer"),
    "issue_date": Record(0x0167, 8, "the issue date"),
    "expiry_date": Record(0x016F, 8, "the expiry date"),
    "address": Record(0x1579, 100, "the address"),
}
"""The personal applet's records (offsets and lengths as read by every Thai ID card reader program)."""

PHOTO_OFFSET: Final = 0x017B
PHOTO_PARTS: Final = 20
PHOTO_PART_LENGTH: Final = 0xFF


def read_apdu(offset: int, length: int) -> bytes:
    """The READ command of the personal applet: ``80 B0 <offset> 02 00 <length>``."""
    return bytes((0x80, 0xB0, offset >> 8, offset & 0xFF, 0x02, 0x00, length))


def get_response_apdu(p2: int, le: int) -> bytes:
    """GET RESPONSE, ``00 C0 00 <p2> <le>``: fetch what the card holds after answering ``61 xx``."""
    return bytes((0x00, INS_GET_RESPONSE, 0x00, p2, le))


def get_response_p2(atr: bytes) -> int:
    """The GET RESPONSE P2 a card wants, from its ATR: ``01`` for ``3B 67`` cards, ``00`` for the others."""
    return 0x01 if len(atr) >= 2 and atr[0] == 0x3B and atr[1] == 0x67 else 0x00


# -- status words -----------------------------------------------------------------------------------------------


class Step(Enum):
    """What the reader does next after a status word."""

    DONE = "done"
    MORE = "send GET RESPONSE"
    WRONG_LE = "send the command again with the length the card gave"
    OTHER_P2 = "send GET RESPONSE again with the other P2"
    FAIL = "give up"


ANY: Final = -1
"""An SW2 wildcard in :data:`STATUS_WORDS`."""

STATUS_WORDS: Final[dict[tuple[int, int], tuple[Step, str]]] = {
    (0x90, 0x00): (Step.DONE, "success"),
    (0x61, ANY): (Step.MORE, "response bytes waiting"),
    (0x6C, ANY): (Step.WRONG_LE, "wrong length, the card gives the right one"),
    (0x6A, 0x86): (Step.OTHER_P2, "incorrect P1-P2"),
    (0x6B, 0x00): (Step.OTHER_P2, "wrong parameters P1-P2"),
    (0x62, ANY): (Step.FAIL, "warning, data may be corrupted"),
    (0x63, ANY): (Step.FAIL, "warning, memory changed"),
    (0x64, ANY): (Step.FAIL, "execution error"),
    (0x65, ANY): (Step.FAIL, "memory failure"),
    (0x67, 0x00): (Step.FAIL, "wrong length"),
    (0x68, ANY): (Step.FAIL, "function in CLA not supported"),
    (0x69, 0x82): (Step.FAIL, "security status not satisfied"),
    (0x69, 0x85): (Step.FAIL, "conditions of use not satisfied"),
    (0x69, ANY): (Step.FAIL, "command not allowed"),
    (0x6A, 0x82): (Step.FAIL, "file or application not found"),
    (0x6A, ANY): (Step.FAIL, "wrong parameters"),
    (0x6D, 0x00): (Step.FAIL, "instruction not supported"),
    (0x6E, 0x00): (Step.FAIL, "class not supported"),
    (0x6F, 0x00): (Step.FAIL, "no precise diagnosis"),
}
"""Status word -> what to do, exact SW2 first, then any SW2 (ISO 7816-4)."""


def status_step(sw1: int, sw2: int) -> tuple[Step, str]:
    """Look a status word up in :data:`STATUS_WORDS`; an unknown one fails."""
    return STATUS_WORDS.get((sw1, sw2)) or STATUS_WORDS.get((sw1, ANY)) or (Step.FAIL, "unknown status")


MAX_EXCHANGES: Final = 64
"""Commands one READ may take (GET RESPONSE chains, length fixes) before the card is taken as broken."""

Transmit = Callable[[bytes], bytes]
"""Send a command APDU, return the response APDU (data then SW1 SW2)."""


class CardSession:
    """One conversation with an inserted card: SELECT, then READs with the T=0 GET RESPONSE exchange.

    With T=0 every READ answers ``61 xx`` and the reader must fetch the data with GET RESPONSE (pcscd does not).
    P2 of GET RESPONSE comes from the ATR; when the card refuses it (``6A 86``, ``6B 00``) the other P2 is tried
    once and kept for the rest of the session. ``6C xx`` repeats the command with the length the card gave.
    """

    def __init__(self, transmit: Transmit, atr: bytes) -> None:
        self._transmit = transmit
        self.p2 = get_response_p2(atr)

    def select(self) -> None:
        """Select the personal applet; a card without it is not a Thai national ID card."""
        sw1, sw2 = self._status(self._transmit(SELECT_PERSONAL), "selecting the personal applet")
        step, meaning = status_step(sw1, sw2)
        if step not in (Step.DONE, Step.MORE):  # the FCI waiting behind 61 xx is not needed
            raise CardReadError(f"not a Thai national ID card: the personal applet answered {sw1:02X} {sw2:02X} "
                                f"({meaning})")

    def read(self, offset: int, length: int, what: str) -> bytes:
        """READ ``length`` bytes at ``offset`` of the personal applet, GET RESPONSE included."""
        command = read_apdu(offset, length)
        data = bytearray()
        tried_other_p2 = False
        for _ in range(MAX_EXCHANGES):
            response = self._transmit(command)
            sw1, sw2 = self._status(response, f"reading {what}")
            step, meaning = status_step(sw1, sw2)
            if step is Step.DONE:
                return bytes(data + response[:-2])
            if step is Step.MORE:
                data += response[:-2]
                # after a READ ask for what the READ asked for; after a GET RESPONSE, for what the card announced
                command = get_response_apdu(self.p2, sw2 if command[1] == INS_GET_RESPONSE else command[-1])
            elif step is Step.WRONG_LE:
                command = command[:-1] + bytes((sw2,))
            elif step is Step.OTHER_P2 and command[1] == INS_GET_RESPONSE and not tried_other_p2:
                tried_other_p2 = True
                self.p2 ^= 0x01
                command = get_response_apdu(self.p2, command[-1])
            else:
                raise CardReadError(f"the card answered {sw1:02X} {sw2:02X} ({meaning}) while reading {what}")
        raise CardReadError(f"the card kept asking for more exchanges while reading {what}")

    @staticmethod
    def _status(response: bytes, doing: str) -> tuple[int, int]:
        if len(response) < 2:
            raise CardReadError(f"the card gave no status word while {doing}")
        return response[-2], response[-1]


class CardData:
    """The raw records read from one card, by record name; held in memory only, never printed."""

    def __init__(self, records: Mapping[str, bytes]) -> None:
        self._records = dict(records)

    def __getitem__(self, name: str) -> bytes:
        return self._records[name]

    def __repr__(self) -> str:
        return f"CardData(records={sorted(self._records)})"


def read_card(transmit: Transmit, atr: bytes, records: set[str], photo: bool = False) -> CardData:
    """Read a card: SELECT, the citizen id (refused on a bad check digit), then ``records`` and the photo.

    Raises :class:`CardRejected` for a bad check digit (nothing else is read) and :class:`CardReadError` when the
    card fails a command.
    """
    session = CardSession(transmit, atr)
    session.select()
    spec = RECORDS["citizen_id"]
    citizen_id = session.read(spec.offset, spec.length, spec.what)
    if not check_digit_ok(decode_text(citizen_id)):
        raise CardRejected("the citizen id on the card fails its check digit (damaged or forged card)")
    read = {"citizen_id": citizen_id}
    for name, spec in RECORDS.items():
        if name in records and name not in read:
            read[name] = session.read(spec.offset, spec.length, spec.what)
    if photo:
        parts = [session.read(PHOTO_OFFSET + i * PHOTO_PART_LENGTH, PHOTO_PART_LENGTH, f"part {i + 1} of the photo")
                 for i in range(PHOTO_PARTS)]
        read["photo"] = extract_photo(b"".join(parts))
    return CardData(read)


# -- bytes -> values ---------------------------------------------------------------------------------------------


def decode_text(raw: bytes) -> str:
    """Decode a text record (cp874, which unlike Python's tis-620 also takes 0xA0) and drop its padding."""
    return raw.rstrip(b"\x00").decode("cp874", errors="replace").strip()


@dataclass(frozen=True)
class PersonName:
    """A name as the card holds it: ``prefix#first#middle#last``."""

    prefix: str
    first: str
    middle: str
    last: str

    @property
    def display(self) -> str:
        """The name as printed on a receipt: the parts that are there, separated by spaces."""
        return " ".join(part for part in (self.prefix, self.first, self.middle, self.last) if part)


def parse_name(text: str) -> PersonName:
    """Split a ``prefix#first#middle#last`` name record."""
    prefix, first, middle, last = ([part.strip() for part in text.split("#", 3)] + ["", "", ""])[:4]
    return PersonName(prefix, first, middle, last)


def parse_address(text: str) -> str:
    """Join the ``#``-separated parts of an address record with spaces, skipping the empty ones."""
    return " ".join(part.strip() for part in text.split("#") if part.strip())


class DateMark(StrEnum):
    """A date record that holds no date."""

    LIFELONG = "lifelong"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PartialDate:
    """A date of which the card knows only the year, or the year and month (month or day ``00``)."""

    year: int
    month: int | None = None

    def isoformat(self) -> str:
        """``1947`` or ``1947-03``."""
        return f"{self.year:04d}" if self.month is None else f"{self.year:04d}-{self.month:02d}"


CardDate = date | PartialDate | DateMark
"""What a date record holds: a date, a partial date, or a mark."""

BE_OFFSET: Final = 543
"""Buddhist era year - Gregorian year."""

LIFELONG_TEXTS: Final = frozenset({"99999999", "ตลอดชีพ", "LIFELONG"})
"""How cards of citizens aged 70 and over write a lifelong expiry."""


def parse_be_date(text: str) -> CardDate:
    """A Buddhist-era ``YYYYMMDD`` date record: a Gregorian date, a :class:`PartialDate` (``00`` month or day),
    :attr:`DateMark.LIFELONG` or :attr:`DateMark.UNKNOWN` for anything else."""
    text = text.strip()
    if text.upper() in LIFELONG_TEXTS:
        return DateMark.LIFELONG
    if len(text) != 8 or not text.isascii() or not text.isdigit() or int(text[:4]) <= BE_OFFSET:
        return DateMark.UNKNOWN
    year, month, day = int(text[:4]) - BE_OFFSET, int(text[4:6]), int(text[6:])
    if month == 0:
        return PartialDate(year)
    if month > 12:
        return DateMark.UNKNOWN
    if day == 0:
        return PartialDate(year, month)
    try:
        return date(year, month, day)
    except ValueError:
        return DateMark.UNKNOWN


def date_text(value: CardDate) -> str:
    """A card date as published: ``1985-04-20``, ``1947-03``, ``1947``, ``lifelong`` or ``unknown``."""
    return value.value if isinstance(value, DateMark) else value.isoformat()


def check_digit_ok(citizen_id: str) -> bool:
    """True when ``citizen_id`` is 13 digits whose last one is the check digit of the first 12."""
    if len(citizen_id) != 13 or not citizen_id.isascii() or not citizen_id.isdigit():
        return False
    total = sum(int(citizen_id[i]) * (13 - i) for i in range(12))
    return (11 - total % 11) % 10 == int(citizen_id[12])


def citizen_ref(citizen_id: str, key: bytes) -> str:
    """The citizen's published reference: HMAC-SHA256 of the id under the deployment's key, in hex.

    An unkeyed hash of a 13-digit id with a check digit is brute-forced in minutes; the key makes it a pseudonym.
    """
    return hmac.new(key, citizen_id.encode("ascii"), hashlib.sha256).hexdigest()


def mask_citizen_id(citizen_id: str) -> str:
    """The id as a receipt shows it: ``1-1017-xxxxx-xx-8`` (first five digits and the check digit)."""
    return f"{citizen_id[0]}-{citizen_id[1:5]}-xxxxx-xx-{citizen_id[12]}"


GENDERS: Final[dict[str, str]] = {"1": "male", "2": "female"}


_STANDALONE_MARKERS: Final = frozenset({0x01, *range(0xD0, 0xD8)})
"""JPEG markers without a length field (TEM, RST0-7)."""
_EOI, _SOS = 0xD9, 0xDA


def extract_photo(raw: bytes) -> bytes:
    """The JPEG in the photo parts, walked segment by segment by their lengths up to its end marker.

    Searching for the first ``FF D9`` would cut a photo at the end of an EXIF thumbnail (a JPEG inside an APP1
    segment); the walk skips every segment whole, then scans the entropy-coded data after each SOS, where
    ``FF 00`` and ``FF D0``-``FF D7`` are data. The padding after the end marker is dropped, and no byte before it
    (0x20 is valid JPEG data).
    """
    if not raw.startswith(b"\xff\xd8"):
        raise CardReadError("the photo on the card is not a JPEG")
    at = 2
    while True:
        if at + 2 > len(raw) or raw[at] != 0xFF:
            raise CardReadError("the photo on the card is not a complete JPEG (a segment is cut or malformed)")
        marker = raw[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
        elif marker == _EOI:
            return raw[:at + 2]
        elif marker in _STANDALONE_MARKERS:
            at += 2
        else:
            length = int.from_bytes(raw[at + 2:at + 4], "big")
            if length < 2 or at + 2 + length > len(raw):
                raise CardReadError("the photo on the card is not a complete JPEG (a segment runs past its end)")
            at += 2 + length
            if marker == _SOS:
                at = _end_of_scan(raw, at)


def _end_of_scan(raw: bytes, at: int) -> int:
    """Where the entropy-coded data that starts at ``at`` ends: the first marker that is not data."""
    while True:
        at = raw.find(b"\xff", at)
        if at < 0 or at + 1 >= len(raw):
            raise CardReadError("the photo on the card is not a complete JPEG (its image data has no end)")
        following = raw[at + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            at += 2
        elif following == 0xFF:
            at += 1
        else:
            return at


# -- the published fields ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardField:
    """One field a deployment may publish: the records it needs, where it goes in the event, how it is made."""

    records: tuple[str, ...]
    key: tuple[str, ...]
    render: Callable[[CardData, bytes], Any]
    description: str


def _text(record: str) -> Callable[[CardData, bytes], str]:
    return lambda card, _key: decode_text(card[record])


def _name(record: str) -> Callable[[CardData, bytes], str]:
    return lambda card, _key: parse_name(decode_text(card[record])).display


def _date(record: str) -> Callable[[CardData, bytes], str]:
    return lambda card, _key: date_text(parse_be_date(decode_text(card[record])))


FIELDS: Final[dict[str, CardField]] = {
    "citizen_ref": CardField(("citizen_id",), ("citizen", "ref"),
                             lambda card, key: citizen_ref(decode_text(card["citizen_id"]), key),
                             "HMAC-SHA256 of the citizen id under the deployment key (hex)"),
    "citizen_id_masked": CardField(("citizen_id",), ("citizen_id_masked",),
                                   lambda card, _key: mask_citizen_id(decode_text(card["citizen_id"])),
                                   "the citizen id for a receipt, 1-1017-xxxxx-xx-8"),
    "name_th": CardField(("name_th",), ("name_th",), _name("name_th"), "Thai name, prefix first middle last"),
    "name_en": CardField(("name_en",), ("name_en",), _name("name_en"), "English name, prefix first middle last"),
    "birth_date": CardField(("birth_date",), ("birth_date",), _date("birth_date"),
                            "Gregorian birth date: 1985-04-20, or 1947-03 / 1947 when the card has 00"),
    "gender": CardField(("gender",), ("gender",), lambda card, _key: GENDERS.get(decode_text(card["gender"]),
                                                                                  "unknown"),
                        "male, female or unknown"),
    "issuer": CardField(("issuer",), ("issuer",), _text("issuer"), "the office that issued the card"),
    "issue_date": CardField(("issue_date",), ("issue_date",), _date("issue_date"), "Gregorian issue date"),
    "expiry_date": CardField(("expiry_date",), ("expiry_date",), _date("expiry_date"),
                             "Gregorian expiry date, or lifelong"),
    "address": CardField(("address",), ("address",), lambda card, _key: parse_address(decode_text(card["address"])),
                         "registered address, one line"),
    "photo": CardField((), ("photo",), lambda card, _key: base64.b64encode(card["photo"]).decode("ascii"),
                       "the holder's photo, JPEG in base64 (biometric data: only when listed)"),
}
"""Every field a deployment may publish; the raw citizen id is deliberately not one of them."""

FieldName = Literal["citizen_ref", "citizen_id_masked", "name_th", "name_en", "birth_date", "gender", "issuer",
                    "issue_date", "expiry_date", "address", "photo"]


def event_data(card: CardData, fields: tuple[str, ...], key: bytes) -> dict[str, Any]:
    """The ``card.inserted`` data: the configured fields only, rendered from the card's records."""
    data: dict[str, Any] = {}
    for name in fields:
        spec = FIELDS[name]
        *parents, leaf = spec.key
        target = data
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = spec.render(card, key)
    return data


# -- configuration -------------------------------------------------------------------------------------------------

MIN_KEY_BYTES: Final = 32


class Backend(StrEnum):
    """Where the driver finds its readers."""

    PCSC = "pcsc"
    SIMULATED = "simulated"


class Config(DriverConfig):
    """A Thai ID card reader; ``fields`` lists what ``card.inserted`` publishes (see :data:`FIELDS`)."""

    kind: Literal["thai_id_card"] = "thai_id_card"
    reader: Annotated[str, PydanticField(min_length=1)] | None = None
    fields: Annotated[tuple[FieldName, ...], PydanticField(min_length=1)] = ("citizen_ref", "name_th", "name_en")
    hmac_key_file: Path
    settle_s: Annotated[float, PydanticField(ge=0, le=10)] = 0.5
    poll_s: Annotated[float, PydanticField(gt=0, le=5)] = 0.25
    backend: Backend = Backend.PCSC
    sim_citizens: Path | None = None
    """On the simulator only (``--simulate``): a JSON list of ``{"citizen_id", "name_th", "name_en"}`` whose
    cards the simulated visitors insert in turn (tests, demos)."""

    @field_validator("fields", mode="before")
    @classmethod
    def _no_raw_id(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and "citizen_id" in value:
            raise ValueError("citizen_id is not an allowed field: the raw citizen id never leaves the driver; "
                             "publish citizen_ref (keyed hash) or citizen_id_masked (for receipts)")
        return value

    @field_validator("fields")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a field is listed twice")
        return value

    @field_validator("hmac_key_file")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path, e.g. /etc/nakhon/citizen-ref.key")
        return value

    def claims(self) -> set[str]:
        """The reader, by the part of its name the config gives (``pcsc:*`` for the first reader)."""
        return {f"pcsc:{self.reader or '*'}"}


SAMPLE_CONFIG = {"kind": "thai_id_card", "name": "id-card", "reader": "ACS ACR39U",
                 "fields": ["citizen_ref", "name_th", "name_en"], "hmac_key_file": "/etc/nakhon/citizen-ref.key",
                 "settle_s": 0.5}


def read_hmac_key(path: Path, what: str) -> bytes:
    """The deployment's citizen-ref key: at least 32 bytes written as hex in ``path``. Never logged."""
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as err:
        raise DriverError(f"{what}: cannot read the citizen-ref key file {path}: {err.strerror}") from err
    except UnicodeDecodeError:
        raise DriverError(f"{what}: the citizen-ref key file {path} is not hex text "
                          "(create it with: openssl rand -hex 32)") from None
    try:
        key = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise DriverError(f"{what}: the citizen-ref key file {path} is not hex text "
                          "(create it with: openssl rand -hex 32)") from None
    if len(key) < MIN_KEY_BYTES:
        raise DriverError(f"{what}: the citizen-ref key in {path} has {len(key)} bytes, at least {MIN_KEY_BYTES} "
                          "expected (create it with: openssl rand -hex 32)")
    if path.stat().st_mode & 0o077:
        log.warning("%s: the citizen-ref key file %s is readable by other users; chmod 600 it", what, path)
    return key


# -- the PC/SC seam ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotState:
    """A reader's slot: a card in it or not, and a counter that moves on every insertion and removal."""

    present: bool
    events: int


class CardLink(Protocol):
    """An open connection to the card in a reader, held in a PC/SC transaction while open.

    The transaction keeps another application sharing the reader from slipping a command between a READ and its
    GET RESPONSE. ``transmit`` raises :class:`CardReadError` when the card goes away and :class:`DeviceUnavailable`
    when pcscd or the reader does.
    """

    @property
    def atr(self) -> bytes:
        """The card's answer to reset."""

    def transmit(self, apdu: bytes) -> bytes:
        """Send a command APDU, return the response with its status word."""

    def close(self) -> None:
        """End the transaction and disconnect, leaving the card powered for other applications (idempotent)."""


class CardReaders(Protocol):
    """The PC/SC seam: the reader list, card presence, and connections to cards.

    :class:`PcscReaders` is the real one (pcscd through pyscard); the simulator provides an in-process one with
    the same behaviour. Every failure is a :class:`DeviceUnavailable` (pcscd or the reader gone: the driver calls
    :meth:`release` and starts again from :meth:`names`) or a :class:`CardReadError` (the card).
    """

    def names(self) -> list[str]:
        """The names of the connected readers."""

    def wait_for_change(self, reader: str, timeout_s: float) -> SlotState:
        """The reader's slot after it changed since the last call, or after ``timeout_s`` (the first call returns
        at once)."""

    def connect(self, reader: str) -> CardLink:
        """Connect to the card in ``reader`` in SHARED mode."""

    def release(self) -> None:
        """Forget the PC/SC context and what was seen; the next call establishes a new one (idempotent)."""


_NO_VALID_RESPONSE: Final = scard.SCARD_S_SUCCESS
"""pyscard raises "card returned no valid response" with a success code: a card pulled mid-exchange."""

PCSC_ERRORS: Final[dict[int, tuple[type[DriverError], str]]] = {
    _NO_VALID_RESPONSE: (CardReadError, "the card gave no valid response (pulled out mid-read?)"),
    scard.SCARD_W_REMOVED_CARD: (CardReadError, "the card was pulled out"),
    scard.SCARD_E_NO_SMARTCARD: (CardReadError, "the card was pulled out"),
    scard.SCARD_E_NOT_TRANSACTED: (CardReadError, "the exchange with the card broke off (pulled out mid-read?)"),
    scard.SCARD_W_RESET_CARD: (CardReadError, "another application reset the card"),
    scard.SCARD_W_UNRESPONSIVE_CARD: (CardReadError, "the card does not answer (inserted the wrong way round, "
                                                     "or dirty contacts)"),
    scard.SCARD_W_UNPOWERED_CARD: (CardReadError, "the card is not powered"),
    scard.SCARD_W_UNSUPPORTED_CARD: (CardReadError, "the card's answer to reset is not supported"),
    scard.SCARD_E_PROTO_MISMATCH: (CardReadError, "the card speaks neither T=0 nor T=1"),
    scard.SCARD_E_SHARING_VIOLATION: (CardReadError, "another application holds the card exclusively"),
    scard.SCARD_E_NO_SERVICE: (DeviceUnavailable, "pcscd is not running"),
    scard.SCARD_E_SERVICE_STOPPED: (DeviceUnavailable, "pcscd stopped"),
    scard.SCARD_F_COMM_ERROR: (DeviceUnavailable, "lost contact with pcscd"),
    # libpcsclite's name for "pcscd closed the socket": pcscd stopping mid-call, or its polkit check refusing us
    scard.SCARD_W_SECURITY_VIOLATION: (DeviceUnavailable, "pcscd closed the connection (stopped, or refused this "
                                                          "user: see polkit)"),
    scard.SCARD_E_NO_ACCESS: (DeviceUnavailable, "pcscd refused this user (see polkit)"),
    scard.SCARD_E_INVALID_HANDLE: (DeviceUnavailable, "pcscd no longer knows this connection (restarted?)"),
    scard.SCARD_E_UNKNOWN_READER: (DeviceUnavailable, "the reader is gone (unplugged?)"),
    scard.SCARD_E_READER_UNAVAILABLE: (DeviceUnavailable, "the reader is unavailable (unplugged?)"),
    scard.SCARD_E_NO_READERS_AVAILABLE: (DeviceUnavailable, "no card reader is connected"),
}
"""PC/SC result code -> the project's error and what it means for a technician."""


_BY_CODE: Final = {code & 0xFFFFFFFF: row for code, row in PCSC_ERRORS.items()}  # pyscard mixes signed and not


def pcsc_error(code: int, doing: str, default: type[DriverError], detail: str = "") -> DriverError:
    """Translate a PC/SC result code (pyscard's ``hresult``) into the project's error."""
    code &= 0xFFFFFFFF
    if code in _BY_CODE:
        error, meaning = _BY_CODE[code]
        return error(f"{doing}: {meaning}")
    return default(f"{doing}: {detail or 'PC/SC error'} (0x{code:08X})")


_PYSCARD_ERRORS: Final = (SmartcardException, BaseSCardException)


def _translate(err: SmartcardException | BaseSCardException, doing: str, default: type[DriverError]) -> DriverError:
    return pcsc_error(int(err.hresult), doing, default, detail=str(err))


class _PcscLink:
    """A card connection through pyscard (``createConnection``, ``connect(mode=SHARED)``, ``transmit``)."""

    def __init__(self, connection: Any, atr: bytes) -> None:
        self._connection: Any = connection
        self._atr = atr

    @property
    def atr(self) -> bytes:
        return self._atr

    def transmit(self, apdu: bytes) -> bytes:
        if self._connection is None:
            raise CardReadError("the connection to the card is closed")
        try:
            data, sw1, sw2 = self._connection.transmit(list(apdu))
        except _PYSCARD_ERRORS as err:
            raise _translate(err, "talking to the card", CardReadError) from err
        return bytes(data) + bytes((sw1, sw2))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _dispose(connection, locked=True)


def _dispose(connection: Any, locked: bool) -> None:
    # each step fails on its own when the card or pcscd is already gone; the rest must still run
    steps = (connection.unlock, connection.disconnect, connection.release) if locked else (connection.disconnect,
                                                                                         connection.release)
    for step in steps:
        with contextlib.suppress(*_PYSCARD_ERRORS):
            step()


class PcscReaders:
    """The real seam: pcscd through pyscard, with one PC/SC context for watching, re-established after a release."""

    def __init__(self) -> None:
        self._context: Any = None
        self._known: dict[str, int] = {}

    def names(self) -> list[str]:
        """The connected readers, from a fresh context (new readers appear, a restarted pcscd is found)."""
        try:
            return [str(reader) for reader in pcsc_readers()]
        except _PYSCARD_ERRORS as err:
            raise _translate(err, "listing the card readers", DeviceUnavailable) from err

    def wait_for_change(self, reader: str, timeout_s: float) -> SlotState:
        """SCardGetStatusChange on ``reader`` from the state seen last (pcscd compares the event counter too)."""
        context = self._established()
        known = self._known.get(reader, scard.SCARD_STATE_UNAWARE)
        hresult, states = scard.SCardGetStatusChange(context, int(timeout_s * 1000), [(reader, known)])
        if hresult & 0xFFFFFFFF == scard.SCARD_E_TIMEOUT & 0xFFFFFFFF:
            state = known
        elif hresult != scard.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, f"watching reader {reader!r}", DeviceUnavailable)
        else:
            state = states[0][1] & ~scard.SCARD_STATE_CHANGED
        if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE | scard.SCARD_STATE_IGNORE):
            raise DeviceUnavailable(f"reader {reader!r} is gone (unplugged?)")
        self._known[reader] = state
        return SlotState(present=bool(state & scard.SCARD_STATE_PRESENT), events=state >> 16)

    def connect(self, reader: str) -> CardLink:
        """Connect in SHARED mode, leave the card powered on disconnect, and hold a transaction while reading."""
        try:
            connection = ExclusiveTransmitCardConnection(PCSCReader(reader).createConnection())
        except _PYSCARD_ERRORS as err:
            raise _translate(err, "connecting to pcscd", DeviceUnavailable) from err
        locked = False
        try:
            connection.connect(mode=scard.SCARD_SHARE_SHARED, disposition=scard.SCARD_LEAVE_CARD)
            connection.lock()
            locked = True
            atr = bytes(connection.getATR())
        except _PYSCARD_ERRORS as err:
            _dispose(connection, locked)
            raise _translate(err, "connecting to the card", CardReadError) from err
        return _PcscLink(connection, atr)

    def release(self) -> None:
        """Release the watching context; the next wait establishes a new one."""
        context, self._context = self._context, None
        self._known.clear()
        if context is not None:
            scard.SCardReleaseContext(context)  # fails harmlessly when pcscd is already gone

    def _established(self) -> Any:
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                raise pcsc_error(hresult, "connecting to pcscd", DeviceUnavailable)
            self._context = context
        return self._context


def _simulated_readers(config: Config) -> CardReaders:
    # imported here: the simulator module imports this one for the seam's types
    from edge.drivers._thai_id_card_sim import running_kiosk

    return running_kiosk(config.reader or "")


BACKENDS: Final[dict[Backend, Callable[[Config], CardReaders]]] = {
    Backend.PCSC: lambda _config: PcscReaders(),
    Backend.SIMULATED: _simulated_readers,
}


# -- the driver ----------------------------------------------------------------------------------------------------

RECONNECT_S: Final = 1.0
"""Pause before looking for pcscd or the reader again (pcscd restarts in about a second)."""


class Driver:
    """Watches one card reader and publishes each Thai national ID card inserted in it."""

    def __init__(self, config: Config, readers: CardReaders | None = None) -> None:
        self._config = config
        self._what = f"thai_id_card {config.name!r}"
        self._injected = readers
        self._readers: CardReaders | None = None
        self._key = b""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._card: dict[str, Any] | None = None
        self._card_events: int | None = None
        self._reader_state: str | None = None
        records = {record for name in config.fields for record in FIELDS[name].records}
        self._records = records
        self._photo = "photo" in config.fields

    @property
    def card(self) -> Mapping[str, Any] | None:
        """The configured fields of the card in the reader (``card.inserted``'s private data); None without one."""
        return self._card

    def start(self, emit: EmitEvent) -> None:
        """Read the key, then watch the reader from a background thread."""
        if self._thread is not None:
            return
        self._key = read_hmac_key(self._config.hmac_key_file, self._what)
        self._readers = self._injected or BACKENDS[self._config.backend](self._config)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, args=(emit,), name=f"id-card-{self._config.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, release pcscd and forget the card and the key; safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._readers is not None:
            self._readers.release()
            self._readers = None
        self._card, self._card_events, self._key, self._reader_state = None, None, b"", None

    def _watch(self, emit: EmitEvent) -> None:
        assert self._readers is not None
        readers = self._readers
        reader: str | None = None
        while not self._stopping.is_set():
            try:
                if reader is None:
                    reader = self._choose(readers)
                    self._reader_ready(reader, emit)
                state = readers.wait_for_change(reader, self._config.poll_s)
                if self._card_events is not None and (not state.present or state.events != self._card_events):
                    self._removed(emit)
                if state.present and self._card_events is None:
                    self._inserted(readers, reader, state, emit)
            except DeviceUnavailable as err:
                if self._card_events is not None:
                    self._removed(emit)
                self._reader_lost(str(err), emit)
                reader = None
                readers.release()
                self._stopping.wait(RECONNECT_S)

    def _choose(self, readers: CardReaders) -> str:
        names = readers.names()
        wanted = self._config.reader
        for name in names:
            if wanted is None or wanted in name:
                return name
        which = f"whose name contains {wanted!r}" if wanted else "connected"
        raise DeviceUnavailable(f"no card reader {which} (readers: {', '.join(names) or 'none'})")

    def _reader_ready(self, reader: str, emit: EmitEvent) -> None:
        log.info("%s: watching reader %r", self._what, reader)
        self._reader_state = "ready"
        emit(DriverEvent("reader.ready", Severity.INFO, {"reader": reader}))

    def _reader_lost(self, reason: str, emit: EmitEvent) -> None:
        if self._reader_state == "lost":
            return
        log.warning("%s: %s; looking again every %.0f s", self._what, reason, RECONNECT_S)
        self._reader_state = "lost"
        emit(DriverEvent("reader.lost", Severity.WARNING, {"reason": reason}))

    def _settled(self, readers: CardReaders, reader: str, state: SlotState) -> SlotState | None:
        """Wait until the card sits still for ``settle_s``; None when it left or the driver stops."""
        while state.present:
            if self._stopping.wait(self._config.settle_s):
                return None
            now = readers.wait_for_change(reader, 0)
            if now == state:
                return state
            state = now
        return None

    def _inserted(self, readers: CardReaders, reader: str, state: SlotState, emit: EmitEvent) -> None:
        settled = self._settled(readers, reader, state)
        if settled is None:
            return
        self._card_events = settled.events
        log.info("%s: card inserted", self._what)
        try:
            link = readers.connect(reader)
            try:
                card = read_card(link.transmit, link.atr, self._records, photo=self._photo)
            finally:
                link.close()
        except CardRejected as err:
            log.warning("%s: card refused: %s", self._what, err)
            emit(DriverEvent("card.rejected", Severity.WARNING, {"reason": str(err)}))
            return
        except CardReadError as err:
            log.warning("%s: card not read: %s", self._what, err)
            emit(DriverEvent("card.read_failed", Severity.WARNING, {"reason": str(err)}))
            return
        except DeviceUnavailable as err:
            emit(DriverEvent("card.read_failed", Severity.WARNING, {"reason": str(err)}))
            raise
        self._card = event_data(card, self._config.fields, self._key)
        log.info("%s: card read, publishing %s", self._what, ", ".join(self._config.fields))
        # the event says which fields were read; their values (names, ids) stay with the kiosk's flow
        emit(DriverEvent("card.inserted", Severity.INFO, {"fields": list(self._config.fields)},
                         private=dict(self._card)))

    def _removed(self, emit: EmitEvent) -> None:
        self._card, self._card_events = None, None
        log.info("%s: card removed", self._what)
        emit(DriverEvent("card.removed", Severity.INFO, {}))


@contextlib.contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run an in-process simulated kiosk reader where fictional citizens insert cards now and then (some pull
    theirs out mid-read, one card is forged), with a throwaway citizen-ref key; no pcscd needed."""
    from edge.drivers._thai_id_card_sim import load_citizens, simulated_kiosk  # see _simulated_readers

    citizens = load_citizens(config.sim_citizens) if config.sim_citizens else None
    with tempfile.TemporaryDirectory(prefix="nakhon-id-card-") as tmp, \
            simulated_kiosk(config.name, citizens) as kiosk:
        key_file = Path(tmp) / "citizen-ref.key"
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_hex(MIN_KEY_BYTES) + "\n")
        yield config.model_copy(update={"backend": Backend.SIMULATED, "reader": kiosk.name,
                                        "hmac_key_file": key_file})


def present(config: Config) -> Presence:
    """Whether pcscd answers and sees the reader (``nakhon agent check --connect``)."""
    try:
        names = BACKENDS[config.backend](config).names()
    except DriverError as err:
        return Presence(False, f"pcscd does not answer ({err})",
                        "sudo apt-get install pcscd && sudo systemctl enable --now pcscd.socket")
    if not names:
        return Presence(False, "pcscd sees no card reader", "plug the reader in (pcsc_scan lists what pcscd sees)")
    if config.reader is not None and not any(config.reader in n for n in names):
        return Presence(False, f"no reader named {config.reader!r}; pcscd sees: {', '.join(names)}",
                        "correct the driver's reader = ... in the config")
    return Presence(True, f"card reader {config.reader or names[0]} through pcscd")
