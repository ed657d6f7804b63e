"""Kiosk receipt printer (ESC/POS over a serial line): prints Thai and English receipts, reports paper status.

Thai is a combining script: a printer without Thai "3-pass" printing misplaces vowels and tone marks, so by
default (``thai_mode = "raster"``) every line holding non-ASCII text is drawn with a Thai TrueType font and sent
as a ``GS v 0`` raster image; ASCII lines go as printer text. ``thai_mode = "codepage"`` selects the printer's
CP874 code table (``ESC t n``, n per printer, read off its self-test page) and sends cp874 text instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
import termios
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal

import serial
from escpos.capabilities import Profile
from escpos.constants import QR_ECLEVEL_M, RT_STATUS_PAPER
from escpos.exceptions import Error as EscposError
from escpos.printer import Dummy
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, PrivateAttr, StringConstraints
from pydantic import Field as PydanticField

from edge.contract import Severity
from edge.drivers import DriverConfig, DriverEvent, EmitEvent, Presence
from edge.drivers._serial import open_serial, read_bytes, serial_present, write_bytes
from edge.errors import DeviceUnavailable, DriverError

DEFAULT_FONT: Final = "/usr/share/fonts/truetype/tlwg/Loma.ttf"
"""Loma from Debian's ``fonts-thai-tlwg``: compact line height, legible at thermal-printer resolution."""


class Config(DriverConfig):
    """An ESC/POS receipt printer on a serial port (TTL UART, RS-232 or a USB-serial adapter)."""

    kind: Literal["escpos_printer"] = "escpos_printer"
    port: Annotated[str, PydanticField(min_length=1)] = "/dev/ttyUSB0"
    baudrate: Literal[4800, 9600, 19200, 38400, 57600, 115200] = 9600
    codepage: Annotated[int, PydanticField(ge=1, le=255)] = 21
    thai_mode: Literal["codepage", "raster"] = "raster"
    font_path: Path = Path(DEFAULT_FONT)
    paper_width_px: Annotated[int, PydanticField(ge=128, le=832, multiple_of=8)] = 576
    status_poll_s: Annotated[float, PydanticField(gt=0, le=3600)] = 5.0
    status_timeout_s: Annotated[float, PydanticField(gt=0, le=10)] = 1.0
    sim_paper_log: Path | None = None
    """On the simulator only (``--simulate``): append what the simulated printer prints to this file."""
    _caption_rasters: Callable[[list[str]], None] | None = PrivateAttr(default=None)
    """Set by :func:`simulate`: hands the simulator the text of each raster line of a receipt, in order."""

    def claims(self) -> set[str]:
        """The serial port."""
        return {f"serial:{self.port}"}


SAMPLE_CONFIG = {"kind": "escpos_printer", "name": "receipt", "port": "/dev/ttyUSB0", "baudrate": 9600,
                 "codepage": 21, "thai_mode": "raster", "font_path": DEFAULT_FONT, "paper_width_px": 576,
                 "status_poll_s": 5}

ReceiptText = Annotated[str, StringConstraints(max_length=300, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""One line of receipt text: no control characters, so a value can never smuggle printer commands in."""


class Receipt(BaseModel):
    """What to print, in any language: the driver lays it out for the paper width.

    ``lines`` and ``totals`` are (label, value) pairs printed with the value against the right edge; amounts
    arrive already formatted (``"1,234.00 บาท"``). ``qr`` is printed as a QR code (a PromptPay payload).
    A ``provisional`` receipt (a QR payment not yet confirmed) carries ``provisional_banner`` in large inverted
    type under the title.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: tuple[ReceiptText, ...] = ()
    lines: tuple[tuple[ReceiptText, ReceiptText], ...] = ()
    totals: tuple[tuple[ReceiptText, ReceiptText], ...] = ()
    footer: tuple[ReceiptText, ...] = ()
    qr: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    provisional: bool = False
    provisional_banner: ReceiptText = "ใบรับชั่วคราว / PROVISIONAL"


class PrinterError(DriverError):
    """The printer cannot print this receipt now (paper out, font missing, a receipt it cannot build)."""


class PaperState(StrEnum):
    """What the roll paper sensors say."""

    OK = "ok"
    NEAR_END = "near_end"
    OUT = "out"


STATUS_FIXED_MASK: Final = 0x93
STATUS_FIXED_BITS: Final = 0x12
"""Every ``DLE EOT n`` answer has bits 1 and 4 set and bits 0 and 7 clear."""

PAPER_SENSOR_BITS: Final[tuple[tuple[int, PaperState], ...]] = (
    (0x60, PaperState.OUT),       # bits 5-6: roll paper end sensor
    (0x0C, PaperState.NEAR_END),  # bits 2-3: roll paper near-end sensor
)
"""``DLE EOT 4`` answer bits, most urgent first."""

PAPER_EVENTS: Final[dict[PaperState, tuple[str, Severity]]] = {
    PaperState.OK: ("printer.paper_ok", Severity.INFO),
    PaperState.NEAR_END: ("printer.paper_low", Severity.WARNING),
    PaperState.OUT: ("printer.paper_out", Severity.CRITICAL),
}
"""The event sent when the paper sensors change to each state."""


def parse_paper_status(answer: bytes) -> PaperState | None:
    """The paper state from a ``DLE EOT 4`` answer byte; None when there is no answer or it is not a status byte."""
    if len(answer) != 1 or answer[0] & STATUS_FIXED_MASK != STATUS_FIXED_BITS:
        return None
    return next((state for mask, state in PAPER_SENSOR_BITS if answer[0] & mask), PaperState.OK)


# -- layout ------------------------------------------------------------------------------------------------

CHAR_DOTS: Final = 12
"""Width of a character of the printer's font A (12 x 24 dots): 48 columns on 80 mm paper, 32 on 58 mm."""

FONT_PX: Final[dict[int, int]] = {1: 26, 2: 40}
"""TrueType font size for raster lines at normal and double size; 26 px matches font A's height."""

QR_MODULE_DIVISOR: Final = 96
"""QR module size in dots is the paper width divided by this: 6 dots on 80 mm paper, 4 on 58 mm."""

WRITE_CHUNK: Final = 4096


@dataclass(frozen=True)
class LineStyle:
    """How one kind of receipt line looks."""

    align: Literal["left", "center", "right"]
    scale: Literal[1, 2]
    bold: bool = False
    invert: bool = False


STYLES: Final[dict[str, LineStyle]] = {
    "title": LineStyle("center", 2, bold=True),
    "banner": LineStyle("center", 2, bold=True, invert=True),
    "item": LineStyle("left", 1),
    "total": LineStyle("left", 1, bold=True),
    "footer": LineStyle("center", 1),
}

Measure = Callable[[str], int]


def text_cells(text: str) -> int:
    """Character cells a string takes on the printer: Thai vowel and tone marks share their base's cell."""
    return sum(1 for c in text if unicodedata.category(c) not in ("Mn", "Me", "Cf"))


def _clusters(text: str) -> Iterator[str]:
    """Base characters with the combining marks that follow them, so a line is never broken inside one."""
    cluster = ""
    for c in text:
        if cluster and unicodedata.category(c) in ("Mn", "Me"):
            cluster += c
            continue
        if cluster:
            yield cluster
        cluster = c
    if cluster:
        yield cluster


def wrap(text: str, width: int, measure: Measure) -> list[str]:
    """Break text into lines no wider than ``width``, at the last space when there is one."""
    lines: list[str] = []
    line = ""
    for cluster in _clusters(text):
        candidate = line + cluster
        while line and measure(candidate) > width:
            head, space, tail = line.rpartition(" ")
            if space and head.strip():
                lines.append(head.rstrip())
                line = tail
            else:
                lines.append(line)
                line = ""
            candidate = "" if not line and cluster == " " else line + cluster
        line = candidate
    lines.append(line)
    return lines


def lay_out(left: str, right: str, width: int, measure: Measure) -> list[tuple[str, str]]:
    """Lines of (left, right) text; the value goes on the label's last line when both fit with a space between."""
    lines = [(part, "") for part in wrap(left, width, measure)]
    if not right:
        return lines
    values = wrap(right, width, measure)
    last = lines[-1][0]
    if len(values) == 1 and measure(last) + measure(" ") + measure(right) <= width:
        lines[-1] = (last, right)
        return lines
    return lines + [("", value) for value in values]


@functools.lru_cache(maxsize=8)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(str(path), size)
    except OSError as err:
        raise PrinterError(f"cannot load the Thai font {path}: {err}; install the Debian package "
                           f"fonts-thai-tlwg or set font_path") from err


def _measure_px(font: ImageFont.FreeTypeFont, style: LineStyle) -> Measure:
    """Width in dots of text drawn with ``font`` (bold lines are drawn with a 1-dot stroke)."""
    stroke = 2 if style.bold else 0
    return lambda text: math.ceil(font.getlength(text)) + stroke


def _draw_line(font: ImageFont.FreeTypeFont, left: str, right: str, style: LineStyle, width: int) -> Image.Image:
    """One line of text drawn black on white (white on black when inverted), paper-wide, 1 bit per pixel."""
    stroke = 1 if style.bold else 0
    measure = _measure_px(font, style)
    ascent, descent = font.getmetrics()
    ink, paper = (255, 0) if style.invert else (0, 255)
    image = Image.new("L", (width, ascent + descent + 2 * stroke), paper)
    draw = ImageDraw.Draw(image)
    offsets = {"left": 0, "center": (width - measure(left)) // 2, "right": width - measure(left)}
    placed = [(offsets[style.align], left)] + ([(width - measure(right), right)] if right else [])
    for x, text in placed:
        draw.text((x + stroke, stroke), text, font=font, fill=ink, stroke_width=stroke, stroke_fill=ink)
    return image.convert("1", dither=Image.Dither.NONE)


def _dummy_printer(config: Config) -> Any:
    """python-escpos's byte-collecting printer, told the paper width and where this printer keeps CP874."""
    profile = Profile(features={"paperFullCut": True, "paperPartCut": True})
    profile.profile_data = {**profile.profile_data,
                            "codePages": {"0": "CP437", str(config.codepage): "CP874"},
                            "media": {"width": {"pixels": config.paper_width_px}}}
    return Dummy(profile=profile)


def _print_row(printer: Any, config: Config, style: LineStyle, left: str, right: str, captions: list[str]) -> None:
    width = config.paper_width_px
    if config.thai_mode == "raster" and not (left + right).isascii():
        font = _font(config.font_path, FONT_PX[style.scale])
        for line_left, line_right in lay_out(left, right, width, _measure_px(font, style)):
            printer.image(_draw_line(font, line_left, line_right, style, width), impl="bitImageRaster")
            captions.append(f"{line_left}  {line_right}" if line_right else line_left)
        return
    dots = CHAR_DOTS * style.scale

    def measure_dots(text: str) -> int:
        return text_cells(text) * dots

    double = style.scale == 2
    printer.set(align="left" if right else style.align, bold=style.bold, invert=style.invert,
                normal_textsize=not double, double_width=double, double_height=double)
    for line_left, line_right in lay_out(left, right, width, measure_dots):
        gap = (width - measure_dots(line_left) - measure_dots(line_right)) // dots if line_right else 0
        printer.text(f"{line_left}{' ' * gap}{line_right}\n")


def render_receipt(receipt: Receipt, config: Config, captions: list[str] | None = None) -> bytes:
    """The ESC/POS bytes that print ``receipt`` on this printer, ending with a cut.

    ``captions`` receives the text of every line sent as a raster image, in order (what the simulator logs).
    """
    captions = [] if captions is None else captions
    rule = "-" * (config.paper_width_px // CHAR_DOTS)
    head = [("title", text, "") for text in receipt.title]
    if receipt.provisional:
        head.append(("banner", receipt.provisional_banner, ""))
    body = [*head, ("item", rule, ""), *(("item", label, value) for label, value in receipt.lines)]
    if receipt.totals:
        body += [("item", rule, ""), *(("total", label, value) for label, value in receipt.totals)]
    printer = _dummy_printer(config)
    try:
        printer.hw("INIT")
        printer.charcode("CP874" if config.thai_mode == "codepage" else "CP437")
        for style, left, right in body:
            _print_row(printer, config, STYLES[style], left, right, captions)
        if receipt.qr is not None:
            printer.set(align="center", bold=False, invert=False, normal_textsize=True)
            printer.qr(receipt.qr, native=True, ec=QR_ECLEVEL_M,
                       size=max(1, min(16, config.paper_width_px // QR_MODULE_DIVISOR)))
            printer.ln()
        for text in receipt.footer:
            _print_row(printer, config, STYLES["footer"], text, "", captions)
        printer.cut()
    except (EscposError, ValueError) as err:
        # python-escpos raises ValueError for out-of-range command parameters
        raise PrinterError(f"cannot build the receipt: {err}") from err
    data: bytes = printer.output
    return data


# -- the driver ----------------------------------------------------------------------------------------------

class Driver:
    """Prints receipts on demand and watches the paper sensors from its own thread.

    ``print_receipt`` and the status poll share the serial port under one lock. A printer that never answers
    ``DLE EOT 4`` is reported once (``printer.status_unsupported``) and not asked again; one that answered before
    and falls silent, or whose port fails, is reported ``printer.offline`` and, when it comes back,
    ``printer.online``. After a port failure the port is opened again at the next poll or print.
    """

    receipt_model: ClassVar[type[Receipt]] = Receipt
    """What ``print_receipt`` takes: the kiosk builds receipts through this, not by importing this module."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._what = f"printer {config.name}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.SerialBase | None = None
        self._emit: EmitEvent | None = None
        self._answers_status: bool | None = None
        self._paper: PaperState | None = None
        self._online = True

    def start(self, emit: EmitEvent) -> None:
        """Open the port and begin watching the paper; raises DriverError when the printer cannot be used."""
        if self._thread is not None:
            return
        if self._config.thai_mode == "raster":
            for size in FONT_PX.values():
                _font(self._config.font_path, size)
        with self._lock:
            self._emit = emit  # set first, so a printer missing at start is reported printer.offline
            try:
                self._open_port()
            except DeviceUnavailable:
                self._emit = None
                raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_paper, name=f"printer-{self._config.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and close the port; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._config.status_timeout_s + 5)
            self._thread = None
        with self._lock:
            self._close_port()
            self._emit = None

    def print_receipt(self, receipt: Receipt) -> None:
        """Print one receipt; returns once every byte has left the serial port (the printer may still be printing).

        Raises :class:`PrinterError` when the paper is out or the receipt cannot be built (Thai font missing), and
        :class:`DeviceUnavailable` when the driver is not started or the printer is unplugged or not answering.
        """
        captions: list[str] = []
        data = render_receipt(receipt, self._config, captions)
        with self._lock:
            if self._emit is None:
                raise DeviceUnavailable(f"{self._what}: not started")
            if self._answers_status is not False:
                state = self._check_paper()
                if state is PaperState.OUT:
                    raise PrinterError(f"{self._what}: paper out; load a new roll")
                if state is None and self._answers_status:
                    raise DeviceUnavailable(f"{self._what}: the printer does not answer; is it switched on?")
            port = self._port if self._port is not None else self._open_port()
            if self._config._caption_rasters is not None:
                self._config._caption_rasters(captions)
            try:
                self._write(port, data)
            except DeviceUnavailable as err:
                self._went_offline(str(err), close_port=True)
                raise

    def _watch_paper(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._answers_status is False:
                    return
                # a failure was reported as printer.offline; the next poll opens the port again
                with contextlib.suppress(DeviceUnavailable):
                    self._check_paper()
            if self._stop.wait(self._config.status_poll_s):
                return

    def _check_paper(self) -> PaperState | None:
        """Ask the paper sensors (lock held) and report what changed; None when the printer does not answer."""
        port = self._port if self._port is not None else self._open_port()
        try:
            self._discard_input(port)  # a late answer to an earlier query must not be taken for this one
            self._write(port, RT_STATUS_PAPER)
            state = parse_paper_status(read_bytes(port, 1, self._what))
        except DeviceUnavailable as err:
            self._went_offline(str(err), close_port=True)
            raise
        if state is None:
            if self._answers_status is None:
                self._answers_status = False
                self._send("printer.status_unsupported", Severity.INFO,
                           note="the printer does not answer paper status queries; paper is not watched")
            elif self._answers_status:
                self._went_offline("the printer stopped answering status queries", close_port=False)
            return None
        self._answers_status = True
        if not self._online:
            self._online = True
            self._send("printer.online", Severity.INFO)
        if state is not self._paper and (self._paper is not None or state is not PaperState.OK):
            self._send(*PAPER_EVENTS[state], paper=state.value)
        self._paper = state
        return state

    def _write(self, port: serial.SerialBase, data: bytes) -> None:
        try:
            for start in range(0, len(data), WRITE_CHUNK):
                write_bytes(port, data[start:start + WRITE_CHUNK], self._what)
        except termios.error as err:  # pyserial's flush (tcdrain) on a vanished port; write_bytes lets it through
            raise DeviceUnavailable(f"{self._what}: serial write failed: {err}") from err

    def _discard_input(self, port: serial.SerialBase) -> None:
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError, TypeError, termios.error) as err:
            raise DeviceUnavailable(f"{self._what}: serial port failed: {err}") from err

    def _went_offline(self, reason: str, *, close_port: bool) -> None:
        if close_port:
            self._close_port()
        if self._online:
            self._online = False
            self._send("printer.offline", Severity.CRITICAL, error=reason)

    def _send(self, event: str, severity: Severity, **data: str) -> None:
        if self._emit is not None:
            self._emit(DriverEvent(event, severity, {"port": self._config.port, **data}))

    def _open_port(self) -> serial.SerialBase:
        try:
            self._port = open_serial(self._config.port, baudrate=self._config.baudrate,
                                     timeout=self._config.status_timeout_s,
                                     write_timeout=2 + 2 * WRITE_CHUNK * 10 / self._config.baudrate,
                                     what=self._what)
        except DeviceUnavailable as err:
            self._went_offline(str(err), close_port=False)
            raise
        return self._port

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):  # an unplugged port may fail to close
                port.close()


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated printer on a pty (CP874 at the configured table, paper loaded) and point the driver at it."""
    from edge.drivers._escpos_sim import PrinterSimulator

    with PrinterSimulator(thai_table=config.codepage, paper_log=config.sim_paper_log) as printer:
        simulated = config.model_copy(update={"port": printer.path})
        simulated._caption_rasters = printer.caption_rasters
        yield simulated


def present(config: Config) -> Presence:
    """Whether the serial port is there (``nakhon agent check --connect``)."""
    return serial_present(config.port)
