"""Serial QR / barcode scanner (USB-CDC or TTL UART): each code it reads arrives as a line of text.

The scanner types what it decodes followed by CR, LF or CRLF. The driver's reader thread splits the stream
into codes and emits ``scan.read`` for each (with the personal id of a PromptPay QR masked), ignoring the repeats
a scanner sends while a code stays in view, rejecting overlong garbage and line noise with ``scan.rejected``, and
surviving an unplugged cable: ``scanner.lost``, then reopening with backoff until ``scanner.restored``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Final, Literal

import serial
from pydantic import Field as PydanticField

from edge.contract import Severity
from edge.drivers import DriverConfig, DriverEvent, EmitEvent, Presence
from edge.drivers._serial import open_serial, read_bytes, serial_present
from edge.errors import DeviceUnavailable

Terminator = Literal["cr", "lf", "crlf", "any"]

TERMINATORS: Final[dict[str, re.Pattern[bytes]]] = {
    "cr": re.compile(rb"\r"),
    "lf": re.compile(rb"\n"),
    "crlf": re.compile(rb"\r\n"),
    "any": re.compile(rb"\r\n|\r|\n"),
}
"""What ends a code, by ``terminator`` setting."""

ALLOWED_CONTROLS: Final[dict[int, str]] = {
    0x04: "EOT, ends an ISO/IEC 15434 message",
    0x09: "tab, a field separator some scanners send",
    0x0A: "LF inside a multi-line code (when it is not the terminator)",
    0x0D: "CR inside a multi-line code (when it is not the terminator)",
    0x1D: "GS, the GS1 field separator (FNC1)",
    0x1E: "RS, the ISO/IEC 15434 record separator",
}
"""Control bytes a real code may carry; any other byte below 0x20, or DEL, is line noise."""

PROMPTPAY_PERSONAL: Final[dict[str, str]] = {"01": "phone number", "02": "national or tax id", "03": "e-wallet id"}
"""Sub-tags of a PromptPay QR's tag 29 (credit transfer) that identify a person: masked before they leave the kiosk."""

_NOISE: Final = frozenset(range(0x20)) - frozenset(ALLOWED_CONTROLS) | {0x7F}
_EMV_START: Final = "000201"  # every EMVCo merchant-presented QR opens with tag 00 = "01"
_PROMPTPAY_TRANSFER: Final = "29"
_KEEP_VISIBLE = 4  # like a receipt: enough to tell two codes apart, not enough to find the person
_CHUNK = 512
_POLL_S = 0.1  # serial read timeout: how often the reader thread looks at stop()
_REOPEN_MIN_S = 0.2
_REOPEN_MAX_S = 5.0
_PREVIEW = 24  # bytes of a rejected code shown in the event, enough to recognise it


def split_codes(buffer: bytes, terminator: Terminator) -> tuple[list[bytes], bytes]:
    """Split a stream into terminated codes and the unterminated rest.

    Every terminator ends a code, so empty codes are kept (a blank line, or with ``"any"`` the LF of a CRLF
    that arrived in a later read than its CR); callers skip them.
    """
    parts = TERMINATORS[terminator].split(buffer)
    return parts[:-1], parts[-1]


def decode_code(raw: bytes) -> str:
    """The text of a code: UTF-8, or Latin-1 for a scanner set to a single-byte code page."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _tlv_values(payload: str, offset: int = 0) -> dict[str, tuple[int, int]] | None:
    """Tag -> (start, end) of its value in a flat EMVCo TLV string, or None when ``payload`` is not one."""
    values: dict[str, tuple[int, int]] = {}
    at = 0
    while at < len(payload):
        tag, length = payload[at:at + 2], payload[at + 2:at + 4]
        if len(length) < 2 or not (tag.isdigit() and length.isdigit()) or at + 4 + int(length) > len(payload):
            return None
        values[tag] = (offset + at + 4, offset + at + 4 + int(length))
        at += 4 + int(length)
    return values


def mask_personal_ids(code: str) -> str:
    """The code with the phone number, national id or e-wallet id of a PromptPay QR masked (all but the last 4
    characters become ``x``); any other code unchanged.

    The wire contract forbids raw personal identifiers in event data, and a PromptPay "transfer to" QR carries
    one. The masked code keeps its length and structure, so its CRC no longer matches.
    """
    fields = _tlv_values(code) if code.startswith(_EMV_START) else None
    if fields is None or _PROMPTPAY_TRANSFER not in fields:
        return code
    start, end = fields[_PROMPTPAY_TRANSFER]
    transfer = _tlv_values(code[start:end], offset=start)
    if transfer is None:
        return code
    for sub_tag in PROMPTPAY_PERSONAL.keys() & transfer.keys():
        first, last = transfer[sub_tag]
        hidden_end = max(first, last - _KEEP_VISIBLE)
        code = code[:first] + "x" * (hidden_end - first) + code[hidden_end:]
    return code


def rejection(raw: bytes, max_length: int) -> str | None:
    """Why a code must not be reported (``"too_long"``, ``"line_noise"``), or None when it is fine."""
    if len(raw) > max_length:
        return "too_long"
    if not _NOISE.isdisjoint(raw):
        return "line_noise"
    return None


class Config(DriverConfig):
    """A serial QR / barcode scanner."""

    kind: Literal["serial_scanner"] = "serial_scanner"
    port: str = "/dev/ttyACM0"
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 9600
    terminator: Terminator = "any"
    max_length: Annotated[int, PydanticField(ge=1, le=65_536)] = 512
    dedupe_s: Annotated[float, PydanticField(ge=0, le=3600)] = 1.0

    def claims(self) -> set[str]:
        """The serial port."""
        return {f"serial:{self.port}"}


SAMPLE_CONFIG = {"kind": "serial_scanner", "name": "scanner", "port": "/dev/ttyACM0", "baudrate": 9600,
                 "terminator": "any", "max_length": 512, "dedupe_s": 1.0}


class _RecentCodes:
    """Codes seen within the dedupe window; a code held in front of the scanner stays in it while it repeats."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self._window = window_s
        self._clock = clock
        self._seen: dict[str, float] = {}

    def is_repeat(self, code: str) -> bool:
        """True when ``code`` was seen less than the window ago; either way it counts as seen now."""
        now = self._clock()
        self._seen = {c: t for c, t in self._seen.items() if now - t < self._window}
        repeat = code in self._seen
        self._seen[code] = now
        return repeat


class Driver:
    """Reads codes in a background thread and emits one event per code, lost port or rejected line.

    ``start`` opens the port and raises :class:`DeviceUnavailable` when it cannot; after that the thread
    owns the port: when it fails (a USB scanner unplugged) the thread emits ``scanner.lost`` and reopens
    the port with backoff until it is back (``scanner.restored``) or :meth:`stop` is called.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._what = f"{config.name} (scanner on {config.port})"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.SerialBase | None = None
        self._rest = b""
        self._discarding = False  # the tail of an overlong code is still arriving
        self._recent = _RecentCodes(config.dedupe_s, time.monotonic)

    def start(self, emit: EmitEvent) -> None:
        """Open the port and start the reader thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._port = self._open()
        self._thread = threading.Thread(target=self._run, args=(emit,), name=f"scanner-{self._config.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and close the port; safe to call twice or after a failed start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_port()

    def _open(self) -> serial.SerialBase:
        self._rest, self._discarding = b"", False
        return open_serial(self._config.port, baudrate=self._config.baudrate, timeout=_POLL_S, what=self._what)

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):  # nothing left to do with a dead port
                port.close()

    def _run(self, emit: EmitEvent) -> None:
        while not self._stop.is_set():
            port = self._port
            if port is None:
                self._reopen(emit)
                continue
            try:
                data = read_bytes(port, _CHUNK, self._what)
            except DeviceUnavailable as err:
                self._close_port()
                emit(DriverEvent("scanner.lost", Severity.WARNING, {"port": self._config.port, "error": str(err)}))
                continue
            if data:
                for event in self._take(data):
                    emit(event)

    def _reopen(self, emit: EmitEvent) -> None:
        lost_at = time.monotonic()
        delay = _REOPEN_MIN_S
        while not self._stop.wait(delay):
            try:
                self._port = self._open()
            except DeviceUnavailable:
                delay = min(delay * 2, _REOPEN_MAX_S)
                continue
            emit(DriverEvent("scanner.restored", Severity.INFO,
                             {"port": self._config.port, "down_s": round(time.monotonic() - lost_at, 1)}))
            return

    def _take(self, data: bytes) -> Iterator[DriverEvent]:
        """Events for the codes completed by ``data``."""
        codes, self._rest = split_codes(self._rest + data, self._config.terminator)
        if self._discarding and codes:
            codes = codes[1:]  # the end of the overlong code already rejected
            self._discarding = False
        for raw in codes:
            if raw:
                yield from self._judge(raw)
        if len(self._rest) > self._config.max_length:
            # no terminator in sight: reject now (once) rather than buffer garbage without bound
            if not self._discarding:
                yield from self._judge(self._rest)
            self._rest, self._discarding = b"", True

    def _judge(self, raw: bytes) -> Iterator[DriverEvent]:
        reason = rejection(raw, self._config.max_length)
        if reason is not None:
            yield DriverEvent("scan.rejected", Severity.WARNING,
                              {"reason": reason, "bytes": len(raw), "preview": raw[:_PREVIEW].hex(" ")})
            return
        code = decode_code(raw)
        if not self._recent.is_repeat(code):
            yield DriverEvent("scan.read", Severity.INFO, {"code": mask_personal_ids(code), "length": len(code)})


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated scanner on a pseudo-terminal (behind a stable symlink) and point the driver at it."""
    from edge.drivers._serial_scanner_sim import ScannerSimulation

    # a real scanner ends every code the same way; CR is the factory setting of most
    with ScannerSimulation(terminator="cr" if config.terminator == "any" else config.terminator) as simulation:
        yield config.model_copy(update={"port": simulation.path})


def present(config: Config) -> Presence:
    """Whether the serial port is there (``nakhon agent check --connect``)."""
    return serial_present(config.port)
