"""A simulated ESC/POS receipt printer: decodes the byte stream into what would come out on paper.

:func:`decode_escpos` is the pure decoder (text through the selected code table, ``GS v 0`` raster images,
``GS ( k`` QR codes, feeds and cuts). :class:`PrinterSimulator` runs it on a pty, keeps the printed elements for
tests to inspect and answers ``DLE EOT 4`` with a paper state that can be changed while it runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from PIL import Image

from edge.drivers._serial import PtyDevice
from edge.drivers.escpos_printer import PaperState

ESC: Final = 0x1B
GS: Final = 0x1D
DLE: Final = 0x10
FS: Final = 0x1C
LF: Final = 0x0A

BASE_CODE_TABLES: Final[dict[int, str]] = {
    0: "cp437", 2: "cp850", 3: "cp860", 4: "cp863", 5: "cp865", 16: "cp1252", 17: "cp866", 18: "cp852", 19: "cp858",
}
"""``ESC t n`` tables every simulated printer has (Epson numbering); the Thai table's number varies per model."""

PAPER_STATUS_BYTE: Final[dict[PaperState, int]] = {
    PaperState.OK: 0x12,
    PaperState.NEAR_END: 0x1E,
    PaperState.OUT: 0x7E,  # a printer out of paper also reports its near-end sensor
}
"""What a printer answers to ``DLE EOT 4`` in each paper state."""

Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class TextLine:
    """A line of printer text, with the print mode it was printed in."""

    text: str
    bold: bool = False
    width: int = 1
    height: int = 1
    invert: bool = False
    align: Align = "left"


@dataclass(frozen=True, eq=False)
class RasterImage:
    """A ``GS v 0`` raster image (black dots are 0 in the 1-bit image)."""

    image: Image.Image

    @property
    def width(self) -> int:
        """Width in dots."""
        return self.image.width

    @property
    def height(self) -> int:
        """Height in dots."""
        return self.image.height

    def ink(self) -> float:
        """The fraction of dots that are black."""
        black = self.image.histogram()[0]
        return black / (self.width * self.height) if self.width and self.height else 0.0


@dataclass(frozen=True)
class QrCode:
    """A QR code printed from the data stored with ``GS ( k``."""

    payload: str


@dataclass(frozen=True)
class Feed:
    """Blank paper fed by ``ESC d n``."""

    lines: int


@dataclass(frozen=True)
class Cut:
    """The paper was cut."""

    partial: bool


PaperElement = TextLine | RasterImage | QrCode | Feed | Cut
"""Something that came out on the paper."""


@dataclass(frozen=True)
class StatusRequest:
    """A real-time ``DLE EOT n`` status request (answered by the printer, prints nothing)."""

    n: int


Decoded = PaperElement | StatusRequest
Length = Callable[[bytes, int], int | None]
"""Given the buffer and a command's offset: the command's length, or None while it is incomplete."""


def _fixed(params: int) -> Length:
    return lambda buf, i: 2 + params if len(buf) - i >= 2 + params else None


def _cut_length(buf: bytes, i: int) -> int | None:
    if len(buf) - i < 3:
        return None
    length = 4 if buf[i + 2] in (65, 66, 97, 98, 103, 104) else 3  # function B, C, D carry a feed amount
    return length if len(buf) - i >= length else None


def _raster_length(buf: bytes, i: int) -> int | None:
    if len(buf) - i < 8:
        return None
    row_bytes, rows = buf[i + 4] | buf[i + 5] << 8, buf[i + 6] | buf[i + 7] << 8
    length = 8 + row_bytes * rows
    return length if len(buf) - i >= length else None


def _parameter_block_length(buf: bytes, i: int) -> int | None:
    if len(buf) - i < 5:
        return None
    length = 5 + (buf[i + 3] | buf[i + 4] << 8)
    return length if len(buf) - i >= length else None


@dataclass(frozen=True)
class _Command:
    length: Length
    apply: Callable[[EscposDecoder, bytes, list[Decoded]], None]


class EscposDecoder:
    """Turns ESC/POS bytes into printed elements, fed piece by piece as they arrive (a command may be split).

    ``thai_table`` is the ``ESC t n`` number at which this printer keeps CP874. Unknown commands are skipped
    (their first two bytes) and listed in :attr:`unknown`, as a printer would ignore them.
    """

    def __init__(self, thai_table: int = 21) -> None:
        self.code_tables: Mapping[int, str] = {**BASE_CODE_TABLES, thai_table: "cp874"}
        self.unknown: list[bytes] = []
        self._pending = b""
        self._qr_data = b""
        self._initialise()

    def _initialise(self) -> None:
        self.table = 0
        self.style = TextLine("")
        self._line: TextLine | None = None

    def feed(self, data: bytes) -> list[Decoded]:
        """Decode what can be decoded; an incomplete command at the end waits for the next call."""
        buf, i = self._pending + data, 0
        out: list[Decoded] = []
        while i < len(buf):
            used = self._step(buf, i, out)
            if not used:
                break
            i += used
        self._pending = buf[i:]
        return out

    def _step(self, buf: bytes, i: int, out: list[Decoded]) -> int:
        byte = buf[i]
        if byte in (ESC, GS, DLE, FS):
            if len(buf) - i < 2:
                return 0
            command = COMMANDS.get(buf[i:i + 2])
            if command is None:
                self.unknown.append(buf[i:i + 2])
                return 2
            length = command.length(buf, i)
            if length is None:
                return 0
            command.apply(self, buf[i:i + length], out)
            return length
        if byte == LF:
            out.append(self._line or self.style)
            self._line = None
            return 1
        if byte < 0x20:
            return 1  # CR and other controls: nothing to print
        end = i
        while end < len(buf) and buf[end] >= 0x20:
            end += 1
        text = buf[i:end].decode(self.code_tables[self.table], errors="replace")
        self._line = replace(self._line or self.style, text=(self._line.text if self._line else "") + text)
        return end - i

    def _print_buffer(self, out: list[Decoded]) -> None:
        """Print a pending partial line (before an image, a feed or a cut)."""
        if self._line is not None:
            out.append(self._line)
            self._line = None

    def _set_style(self, **changes: object) -> None:
        self.style = replace(self.style, **changes)  # type: ignore[arg-type]

    # -- command handlers: (decoder, command bytes, output) -------------------------------------------------
    def _init(self, cmd: bytes, out: list[Decoded]) -> None:
        self._initialise()  # ESC @ also discards the print buffer

    def _select_table(self, cmd: bytes, out: list[Decoded]) -> None:
        if cmd[2] in self.code_tables:  # a printer ignores a table it does not have
            self.table = cmd[2]

    def _bold(self, cmd: bytes, out: list[Decoded]) -> None:
        self._set_style(bold=bool(cmd[2] & 1))

    def _print_mode(self, cmd: bytes, out: list[Decoded]) -> None:
        self._set_style(bold=bool(cmd[2] & 0x08), height=2 if cmd[2] & 0x10 else 1, width=2 if cmd[2] & 0x20 else 1)

    def _size(self, cmd: bytes, out: list[Decoded]) -> None:
        self._set_style(width=(cmd[2] >> 4) + 1, height=(cmd[2] & 0x0F) + 1)

    def _align(self, cmd: bytes, out: list[Decoded]) -> None:
        self._set_style(align=ALIGNMENTS.get(cmd[2], self.style.align))

    def _invert(self, cmd: bytes, out: list[Decoded]) -> None:
        self._set_style(invert=bool(cmd[2] & 1))

    def _feed_lines(self, cmd: bytes, out: list[Decoded]) -> None:
        self._print_buffer(out)
        out.append(Feed(cmd[2]))

    def _feed_dots(self, cmd: bytes, out: list[Decoded]) -> None:
        self._print_buffer(out)

    def _cut(self, cmd: bytes, out: list[Decoded]) -> None:
        self._print_buffer(out)
        out.append(Cut(partial=cmd[2] in (1, 49, 66, 98, 104)))

    def _raster(self, cmd: bytes, out: list[Decoded]) -> None:
        if cmd[2] != ord("0"):
            self.unknown.append(cmd[:3])
            return
        self._print_buffer(out)
        row_bytes, rows = cmd[4] | cmd[5] << 8, cmd[6] | cmd[7] << 8
        out.append(RasterImage(Image.frombytes("1", (row_bytes * 8, rows), cmd[8:], "raw", "1;I")))

    def _parameter_block(self, cmd: bytes, out: list[Decoded]) -> None:
        if cmd[2] != ord("k") or len(cmd) < 7 or cmd[5] != 49:  # only QR (cn 49) among GS ( functions
            return
        function = cmd[6]
        if function == 80:  # store the data (after the m byte)
            self._qr_data = cmd[8:]
        elif function == 81:  # print the stored symbol
            self._print_buffer(out)
            out.append(QrCode(self._qr_data.decode("utf-8", errors="replace")))

    def _status(self, cmd: bytes, out: list[Decoded]) -> None:
        out.append(StatusRequest(cmd[2]))

    def _ignore(self, cmd: bytes, out: list[Decoded]) -> None:
        """A command that changes nothing this simulator records (underline, font, spacing...)."""


ALIGNMENTS: Final[dict[int, Align]] = {0: "left", 48: "left", 1: "center", 49: "center", 2: "right", 50: "right"}

COMMANDS: Final[dict[bytes, _Command]] = {
    b"\x1b@": _Command(_fixed(0), EscposDecoder._init),
    b"\x1bt": _Command(_fixed(1), EscposDecoder._select_table),
    b"\x1bE": _Command(_fixed(1), EscposDecoder._bold),
    b"\x1bG": _Command(_fixed(1), EscposDecoder._ignore),         # double-strike
    b"\x1b!": _Command(_fixed(1), EscposDecoder._print_mode),
    b"\x1ba": _Command(_fixed(1), EscposDecoder._align),
    b"\x1b-": _Command(_fixed(1), EscposDecoder._ignore),         # underline
    b"\x1bM": _Command(_fixed(1), EscposDecoder._ignore),         # font A/B
    b"\x1b{": _Command(_fixed(1), EscposDecoder._ignore),         # upside-down
    b"\x1b ": _Command(_fixed(1), EscposDecoder._ignore),         # character spacing
    b"\x1b2": _Command(_fixed(0), EscposDecoder._ignore),         # default line spacing
    b"\x1b3": _Command(_fixed(1), EscposDecoder._ignore),         # line spacing
    b"\x1bd": _Command(_fixed(1), EscposDecoder._feed_lines),
    b"\x1bJ": _Command(_fixed(1), EscposDecoder._feed_dots),
    b"\x1bp": _Command(_fixed(3), EscposDecoder._ignore),         # cash drawer pulse
    b"\x1d!": _Command(_fixed(1), EscposDecoder._size),
    b"\x1dB": _Command(_fixed(1), EscposDecoder._invert),
    b"\x1db": _Command(_fixed(1), EscposDecoder._ignore),         # smoothing
    b"\x1dL": _Command(_fixed(2), EscposDecoder._ignore),         # left margin
    b"\x1dW": _Command(_fixed(2), EscposDecoder._ignore),         # print area width
    b"\x1dV": _Command(_cut_length, EscposDecoder._cut),
    b"\x1dv": _Command(_raster_length, EscposDecoder._raster),
    b"\x1d(": _Command(_parameter_block_length, EscposDecoder._parameter_block),
    b"\x10\x04": _Command(_fixed(1), EscposDecoder._status),
    b"\x1c.": _Command(_fixed(0), EscposDecoder._ignore),         # cancel Kanji mode
}
"""Commands the simulated printer knows: two-byte prefix -> how long the command is and what it does."""


def decode_escpos(data: bytes, thai_table: int = 21) -> list[PaperElement]:
    """What a printer keeping CP874 at ``thai_table`` puts on paper for ``data`` (a line without LF stays unprinted)."""
    return [e for e in EscposDecoder(thai_table).feed(data) if not isinstance(e, StatusRequest)]


class PrinterSimulator(PtyDevice):
    """A receipt printer on a pty: prints what it is sent onto :attr:`paper`, answers paper status queries.

    While the paper is out, what arrives is held in the printer and printed when paper is loaded again.
    ``answers_status = False`` makes a printer that ignores ``DLE EOT`` (as many cheap ones do).
    """

    def __init__(self, thai_table: int = 21, paper: PaperState = PaperState.OK, answers_status: bool = True,
                 paper_log: Path | None = None) -> None:
        super().__init__("escpos-printer")
        self.answers_status = answers_status
        self._paper_log = paper_log
        self._decoder = EscposDecoder(thai_table)
        self._changed = threading.Condition()
        self._paper_state = paper
        self._printed: list[PaperElement] = []
        self._held: list[PaperElement] = []
        self._status_queries = 0
        self._captions: deque[deque[str]] = deque()  # per receipt to come, the text of its raster lines

    def __enter__(self) -> PrinterSimulator:
        super().__enter__()
        return self

    def serve(self) -> None:
        """Decode what the driver sends until stopped."""
        while not self.stopping.is_set():
            data = self.read()
            if data:
                self._receive(data)

    def _receive(self, data: bytes) -> None:
        with self._changed:
            decoded = self._decoder.feed(data)
        for element in decoded:
            if isinstance(element, StatusRequest):
                self._answer(element)
                continue
            with self._changed:
                (self._held if self._paper_state is PaperState.OUT else self._printed).append(element)
                self._changed.notify_all()
            if self._paper_log is not None:
                self._log(element)

    def caption_rasters(self, captions: list[str]) -> None:
        """The driver's text of the raster lines of the receipt it is about to send (pixels cannot be read back)."""
        if self._paper_log is None:
            return  # captions are for the paper log only
        with self._changed:
            self._captions.append(deque(captions))

    def _caption(self, cut: bool) -> str | None:
        """The text of the next raster line; a cut ends the receipt and drops what it did not use."""
        with self._changed:
            if not self._captions:
                return None
            if cut:
                self._captions.popleft()
                return None
            current = self._captions[0]
            return current.popleft() if current else None

    def _log(self, element: PaperElement) -> None:
        """Append one line per printed element to the paper log (what a test or a demo operator reads)."""
        if isinstance(element, TextLine):
            line = f"text {element.text}"
        elif isinstance(element, RasterImage):
            caption = self._caption(cut=False)
            size = f"image {element.image.width}x{element.image.height}"
            line = size if caption is None else f"text {caption}  [{size}]"
        elif isinstance(element, QrCode):
            line = f"qr {element.payload}"
        elif isinstance(element, Cut):
            self._caption(cut=True)
            line = "cut"
        else:
            return
        assert self._paper_log is not None
        with open(self._paper_log, "a", encoding="utf-8") as log:
            log.write(line + "\n")

    def _answer(self, request: StatusRequest) -> None:
        with self._changed:
            self._status_queries += 1
            state = self._paper_state
            self._changed.notify_all()
        if self.answers_status and request.n == 4:
            self.write(bytes([PAPER_STATUS_BYTE[state]]))

    def set_paper(self, state: PaperState) -> None:
        """Change what the paper sensors see (a technician loads a roll, the roll runs low or out)."""
        with self._changed:
            self._paper_state = state
            if state is not PaperState.OUT:
                self._printed += self._held
                self._held.clear()
            self._changed.notify_all()

    @property
    def paper(self) -> list[PaperElement]:
        """Everything printed so far, in order."""
        with self._changed:
            return list(self._printed)

    @property
    def status_queries(self) -> int:
        """How many ``DLE EOT`` requests the printer received."""
        with self._changed:
            return self._status_queries

    @property
    def unknown_commands(self) -> list[bytes]:
        """Commands the printer did not understand."""
        with self._changed:
            return list(self._decoder.unknown)

    def wait_until(self, predicate: Callable[[list[PaperElement]], bool], timeout: float) -> bool:
        """Wait until ``predicate(paper)`` holds; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._printed), timeout)
