"""A virtual Thai national ID card, and two ways to put it in a reader: vpcd (a real pcscd) or an in-process one.

:class:`ThaiIdCard` is the card side of the protocol: an ATR, the personal applet's file, and ISO 7816 T=0 answers
(``61 xx`` to every READ, GET RESPONSE with the P2 its ATR family wants, ``6C xx`` for a wrong length). A citizen
may pull it out after a number of commands. :class:`VpcdCard` inserts it into pcscd's virtual reader (vsmartcard's
vpcd) as a TCP client; :class:`SimulatedReaders` is an in-process stand-in for pcscd with the driver's seam, used by
``simulate()`` where no pcscd runs. Every citizen here is fictional.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw

from edge.drivers.thai_id_card import CardLink, CardReadError, SlotState
from edge.errors import DeviceUnavailable, DriverError

ATR_2016: Final = bytes.fromhex("3B 79 96 00 00 54 48 20 4E 49 44 20 31 38")
"""A card of 2016 and later: T=0, historical bytes "TH NID 18"."""
ATR_3B67: Final = bytes.fromhex("3B 67 00 00 54 48 20 4E 49 44 31")
"""The rare ``3B 67`` family (made up historical bytes): GET RESPONSE with P2 = 01."""

AID_PERSONAL: Final = bytes.fromhex("A000000054480001")

FILE_LAYOUT: Final[dict[str, tuple[int, int]]] = {
    "citizen_id": (0x0004, 13),
    "name_th": (0x0011, 100),
    "name_en": (0x0075, 100),
    "birth": (0x00D9, 8),
    "gender": (0x00E1, 1),
    "issuer": (0x00F6, 100),
    "issued": (0x0167, 8),
    "expires": (0x016F, 8),
    "photo": (0x017B, 20 * 255),
    "address": (0x1579, 100),
}
"""Where each field sits in the personal applet's file (offset, length), as the card holds it."""
FILE_SIZE: Final = 0x1579 + 100


class CardPulled(Exception):
    """Raised by :meth:`ThaiIdCard.process` when the citizen pulls the card out before it answers."""


@dataclass(frozen=True)
class Citizen:
    """A fictional card holder, with every field written the way the card stores it."""

    citizen_id: str
    name_th: str
    name_en: str
    birth: str
    gender: str
    issuer: str
    issued: str
    expires: str
    address: str
    portrait_seed: int


def with_check_digit(first12: str) -> str:
    """Append the citizen id check digit to 12 digits."""
    total = sum(int(first12[i]) * (13 - i) for i in range(12))
    return first12 + str((11 - total % 11) % 10)


KHON_KAEN_ISSUER: Final = "อำเภอเมืองขอนแก่น/ขอนแก่น"

CITIZENS: Final = (
    Citizen("1101700230708", "นาย#สมชาย##ใจดี", "Mr.#Somchai##Jaidee", "25280420", "1", KHON_KAEN_ISSUER,
            "25650115", "25730419", "123/4#หมู่ที่ 5###ถนนมิตรภาพ#ตำบลในเมือง#อำเภอเมืองขอนแก่น#จังหวัดขอนแก่น", 1),
    Citizen(with_check_digit("340990012345"), "นางสาว#มาลี##ศรีสุข", "Miss#Malee##Srisuk", "25400812", "2",
            KHON_KAEN_ISSUER, "25660301", "25740811",
            "88#หมู่ที่ 12#ซอยศรีจันทร์ 3##ตำบลศิลา#อำเภอเมืองขอนแก่น#จังหวัดขอนแก่น", 2),
    Citizen(with_check_digit("340010045678"), "นาง#บุญมี##มีสุข", "Mrs.#Boonmee##Meesuk", "24900000", "2",
            "อำเภอบ้านไผ่/ขอนแก่น", "25600705", "99999999",
            "7#หมู่ที่ 2####ตำบลในเมือง#อำเภอบ้านไผ่#จังหวัดขอนแก่น", 3),
)
"""Fictional citizens: a man born 1985, a woman born 1997, and an elderly woman born 1947 (birth month and day
not on record) with a lifelong card."""

FORGED: Final = Citizen("1101700230705", "นาย#อนันต์##แก้วมณี", "Mr.#Anan##Kaewmanee", "25300101", "1",
                        KHON_KAEN_ISSUER, "25650101", "25730101", "1#หมู่ที่ 1####ตำบลในเมือง#อำเภอเมืองขอนแก่น"
                        "#จังหวัดขอนแก่น", 4)
"""A card whose citizen id fails the check digit."""


def portrait_jpeg(seed: int) -> bytes:
    """A small made-up portrait (a head and shoulders on a plain background), as a baseline JPEG."""
    rng = random.Random(seed)
    image = Image.new("RGB", (96, 120), (rng.randint(150, 230), rng.randint(170, 240), 245))
    draw = ImageDraw.Draw(image)
    skin = (rng.randint(170, 225), rng.randint(130, 175), rng.randint(100, 140))
    draw.ellipse((18, 88, 78, 150), fill=(rng.randint(20, 90),) * 3)
    draw.ellipse((30, 22, 66, 70), fill=skin)
    draw.chord((28, 14, 68, 50), 180, 360, fill=(25, 20, 20))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=55)
    return out.getvalue()


def card_file(citizen: Citizen, photo: bytes) -> bytes:
    """The personal applet's file of ``citizen``: text fields in cp874, space padded; the photo padded with 0x20."""
    image = bytearray(FILE_SIZE)
    values = {"citizen_id": citizen.citizen_id, "name_th": citizen.name_th, "name_en": citizen.name_en,
              "birth": citizen.birth, "gender": citizen.gender, "issuer": citizen.issuer, "issued": citizen.issued,
              "expires": citizen.expires, "address": citizen.address}
    for name, (offset, length) in FILE_LAYOUT.items():
        raw = photo if name == "photo" else values[name].encode("cp874")
        if len(raw) > length:
            raise ValueError(f"{name} does not fit on the card ({len(raw)} > {length} bytes)")
        image[offset:offset + length] = raw.ljust(length, b" ")
    return bytes(image)


SW_OK: Final = b"\x90\x00"


class ThaiIdCard:
    """The card side of the personal applet over T=0.

    ``get_response_p2`` overrides the P2 the ATR family implies (a card that disagrees with its ATR);
    ``wrong_p2_sw`` is what it answers to the other P2; ``io_buffer`` is the most it sends per response (so
    a READ may take several GET RESPONSEs and a ``6C xx``); ``pull_after`` is the number of commands it answers
    before the citizen pulls it out; ``photo`` replaces the generated portrait.
    """

    def __init__(self, citizen: Citizen, *, atr: bytes = ATR_2016, get_response_p2: int | None = None,
                 wrong_p2_sw: bytes = b"\x6a\x86", io_buffer: int = 256, pull_after: int | None = None,
                 photo: bytes | None = None) -> None:
        self.citizen = citizen
        self.atr = atr
        self.p2 = get_response_p2 if get_response_p2 is not None else (0x01 if atr[:2] == b"\x3b\x67" else 0x00)
        self.wrong_p2_sw = wrong_p2_sw
        self.io_buffer = io_buffer
        self.pull_after = pull_after
        self.commands = 0
        self._file = card_file(citizen, photo if photo is not None else portrait_jpeg(citizen.portrait_seed))
        self._selected = False
        self._pending = b""
        self._handlers: dict[tuple[int, int], Callable[[bytes], bytes]] = {
            (0x00, 0xA4): self._select, (0x80, 0xB0): self._read, (0x00, 0xC0): self._get_response}

    def power_on(self) -> None:
        """Cold or warm reset: nothing selected, nothing waiting."""
        self._selected = False
        self._pending = b""

    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU; raises :class:`CardPulled` when the citizen pulls the card out first."""
        self.commands += 1
        if self.pull_after is not None and self.commands > self.pull_after:
            raise CardPulled
        if len(apdu) < 4:
            return b"\x67\x00"
        handler = self._handlers.get((apdu[0], apdu[1]))
        if handler is None:
            return b"\x6d\x00" if apdu[0] in (0x00, 0x80) else b"\x6e\x00"
        return handler(apdu)

    def _announce(self) -> bytes:
        return bytes((0x61, min(len(self._pending), self.io_buffer) & 0xFF))

    def _select(self, apdu: bytes) -> bytes:
        self._pending = b""
        if apdu[2:4] != b"\x04\x00" or apdu[5:5 + apdu[4]] != AID_PERSONAL:
            self._selected = False
            return b"\x6a\x82"
        self._selected = True
        self._pending = b"\x6f\x08\x84\x06" + AID_PERSONAL[:6]  # FCI: the application's name
        return self._announce()

    def _read(self, apdu: bytes) -> bytes:
        self._pending = b""
        if not self._selected:
            return b"\x69\x85"
        if len(apdu) != 7 or apdu[4] != 0x02:
            return b"\x67\x00"
        offset, length = apdu[2] << 8 | apdu[3], apdu[6]
        if offset + length > len(self._file):
            return b"\x6b\x00"
        self._pending = self._file[offset:offset + length]
        return self._announce() if self._pending else SW_OK

    def _get_response(self, apdu: bytes) -> bytes:
        if not self._pending:
            return b"\x69\x85"
        if apdu[3] != self.p2:
            return self.wrong_p2_sw
        le = (apdu[4] if len(apdu) > 4 else 0) or 256
        available = min(len(self._pending), self.io_buffer)
        if le > available:
            return bytes((0x6C, available & 0xFF))
        data, self._pending = self._pending[:le], self._pending[le:]
        return data + (self._announce() if self._pending else SW_OK)


# -- in pcscd's virtual reader -----------------------------------------------------------------------------------

VPCD_POWER_OFF, VPCD_POWER_ON, VPCD_RESET, VPCD_ATR = 0, 1, 2, 4


class VpcdCard:
    """A :class:`ThaiIdCard` inserted in a vpcd reader of a real pcscd: a TCP client of vpcd's port.

    Connecting inserts the card, closing the socket removes it. Every message both ways is a 2-byte big-endian
    length and a payload; a 1-byte payload from vpcd is a control byte (0 off, 1 on, 2 reset, 4 send the ATR).
    """

    def __init__(self, card: ThaiIdCard, port: int, host: str = "127.0.0.1") -> None:
        self.card = card
        self._address = (host, port)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.pulled = threading.Event()
        """Set when the citizen pulled the card out mid-read (``pull_after``)."""

    def __enter__(self) -> VpcdCard:
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def insert(self) -> None:
        """Put the card in the reader."""
        try:
            self._socket = socket.create_connection(self._address, timeout=5)
        except OSError as err:
            raise DeviceUnavailable(f"virtual card: cannot reach vpcd on {self._address}: {err}") from err
        self._socket.settimeout(None)
        self._thread = threading.Thread(target=self._serve, args=(self._socket,), name="vpcd-card", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        """Take the card out (idempotent)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):  # vpcd may have closed it first
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sock is not None:
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the card was removed (our socket shut) or pcscd went away
            while (payload := _receive(sock)) is not None:
                if len(payload) == 1:
                    if payload[0] == VPCD_ATR:
                        _send(sock, self.card.atr)
                    elif payload[0] in (VPCD_POWER_ON, VPCD_RESET):
                        self.card.power_on()
                    continue
                try:
                    answer = self.card.process(payload)
                except CardPulled:
                    self.pulled.set()
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                _send(sock, answer)


def _receive(sock: socket.socket) -> bytes | None:
    # delayed ACKs would cost ~40 ms per APDU on loopback
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    header = sock.recv(2, socket.MSG_WAITALL)
    if len(header) < 2:
        return None
    (length,) = struct.unpack(">H", header)
    payload = sock.recv(length, socket.MSG_WAITALL) if length else b""
    return payload if len(payload) == length else None


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)


# -- in process, without pcscd -------------------------------------------------------------------------------------

APDU_SECONDS: Final = 0.004
BYTE_SECONDS: Final = 0.0001
"""Time one exchange takes on a USB CCID reader with a T=0 card: a few ms, plus the bytes at the card's speed."""


class _SimulatedLink:
    """A connection to the card in a :class:`SimulatedReaders`; breaks when the card leaves."""

    def __init__(self, readers: SimulatedReaders, card: ThaiIdCard, events: int) -> None:
        self._readers = readers
        self._card: ThaiIdCard | None = card
        self._events = events

    @property
    def atr(self) -> bytes:
        return self._card.atr if self._card is not None else b""

    def transmit(self, apdu: bytes) -> bytes:
        card = self._card
        if card is None or not self._readers.holds(card, self._events):
            raise CardReadError("talking to the card: the card was pulled out")
        try:
            answer = card.process(apdu)
        except CardPulled:
            self._readers.remove()
            raise CardReadError("talking to the card: the card gave no valid response (pulled out mid-read?)") from None
        time.sleep(APDU_SECONDS + BYTE_SECONDS * (len(apdu) + len(answer)))
        return answer

    def close(self) -> None:
        self._card = None


class SimulatedReaders:
    """An in-process stand-in for pcscd with one reader, behind the driver's PC/SC seam (:class:`CardReaders`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._changed = threading.Condition()
        self._card: ThaiIdCard | None = None
        self._events = 0
        self._seen: dict[str, int] = {}

    def insert(self, card: ThaiIdCard) -> None:
        """A citizen puts a card in (taking out the one that was there)."""
        with self._changed:
            card.power_on()
            self._events += 2 if self._card is not None else 1  # a swap is a removal and an insertion
            self._card = card
            self._changed.notify_all()

    def remove(self) -> None:
        """The citizen takes the card out."""
        with self._changed:
            if self._card is not None:
                self._card = None
                self._events += 1
                self._changed.notify_all()

    def holds(self, card: ThaiIdCard, events: int) -> bool:
        """True while ``card`` is still the one inserted at ``events``."""
        with self._changed:
            return self._card is card and self._events == events

    def names(self) -> list[str]:
        """The one simulated reader."""
        return [self.name]

    def wait_for_change(self, reader: str, timeout_s: float) -> SlotState:
        """Wait for an insertion or removal since the last call."""
        if reader != self.name:
            raise DeviceUnavailable(f"reader {reader!r} is gone (unplugged?)")
        with self._changed:
            seen = self._seen.get(reader)
            if seen is not None:
                self._changed.wait_for(lambda: self._events != seen, timeout_s)
            self._seen[reader] = self._events
            return SlotState(present=self._card is not None, events=self._events)

    def connect(self, reader: str) -> CardLink:
        """Connect to the card in the reader."""
        with self._changed:
            if reader != self.name:
                raise DeviceUnavailable(f"reader {reader!r} is gone (unplugged?)")
            if self._card is None:
                raise CardReadError("connecting to the card: the card was pulled out")
            return _SimulatedLink(self, self._card, self._events)

    def release(self) -> None:
        """Forget what was seen."""
        with self._changed:
            self._seen.clear()


class Visitors:
    """Citizens at the kiosk: each inserts a card, waits for the service, takes it out; some are quicker than the
    reader, one card is forged."""

    def __init__(self, readers: SimulatedReaders, *, seed: int | None = None, first_after_s: float = 2.0,
                 gap_s: tuple[float, float] = (15.0, 40.0), dwell_s: tuple[float, float] = (4.0, 12.0),
                 citizens: tuple[Citizen, ...] | None = None) -> None:
        self._readers = readers
        self._citizens = citizens
        self._turn = itertools.count()
        self._rng = random.Random(seed)
        self._first_after_s = first_after_s
        self._gap_s = gap_s
        self._dwell_s = dwell_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Let citizens in."""
        self._thread = threading.Thread(target=self._run, name=f"visitors-{self._readers.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the kiosk (idempotent)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._readers.remove()

    def next_card(self) -> ThaiIdCard:
        """The next visitor's card: mostly genuine, now and then forged or pulled out too early; with a given
        list of citizens, each of them in turn, genuine and patient."""
        if self._citizens:
            return ThaiIdCard(self._citizens[next(self._turn) % len(self._citizens)])
        roll = self._rng.random()
        if roll < 0.1:
            return ThaiIdCard(FORGED)
        citizen = self._rng.choice(CITIZENS)
        pull_after = self._rng.randint(3, 30) if roll < 0.25 else None
        return ThaiIdCard(citizen, pull_after=pull_after)

    def _run(self) -> None:
        wait = self._first_after_s
        while not self._stopping.wait(wait):
            self._readers.insert(self.next_card())
            if self._stopping.wait(self._rng.uniform(*self._dwell_s)):
                break
            self._readers.remove()
            wait = self._rng.uniform(*self._gap_s)


_KIOSKS: dict[str, SimulatedReaders] = {}
_KIOSKS_LOCK = threading.Lock()
_SERIAL = itertools.count(1)


def load_citizens(path: Path) -> tuple[Citizen, ...]:
    """Citizens from a JSON list of ``{"citizen_id", "name_th", "name_en"}`` (the rest is made up)."""
    template = CITIZENS[0]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return tuple(Citizen(e["citizen_id"], e["name_th"], e["name_en"], template.birth, template.gender,
                             template.issuer, template.issued, template.expires, template.address, i + 10)
                     for i, e in enumerate(entries))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DriverError(f"cannot read simulated citizens from {path}: {err}") from err


@contextlib.contextmanager
def simulated_kiosk(label: str, citizens: tuple[Citizen, ...] | None = None) -> Iterator[SimulatedReaders]:
    """Run a simulated reader with :class:`Visitors` while the context is open; drivers find it by its name."""
    readers = SimulatedReaders(f"Nakhon simulated reader {next(_SERIAL)} ({label})")
    crowd = (Visitors(readers, citizens=citizens, first_after_s=1.0, dwell_s=(20.0, 20.0), gap_s=(5.0, 5.0))
             if citizens else Visitors(readers))
    with _KIOSKS_LOCK:
        _KIOSKS[readers.name] = readers
    crowd.start()
    try:
        yield readers
    finally:
        crowd.stop()
        with _KIOSKS_LOCK:
            del _KIOSKS[readers.name]


def running_kiosk(name: str) -> SimulatedReaders:
    """The simulated reader named ``name``; a :class:`DriverError` when no simulator runs it."""
    with _KIOSKS_LOCK:
        readers = _KIOSKS.get(name)
    if readers is None:
        raise DriverError(f"no simulated card reader named {name!r} is running (use simulate())")
    return readers
