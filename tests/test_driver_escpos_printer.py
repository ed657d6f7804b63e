"""The ESC/POS receipt printer: decoding recorded byte streams, laying out Thai receipts, and printing through a pty."""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont
from pydantic import ValidationError

from edge.contract import Severity
from edge.drivers import DriverEvent
from edge.drivers._escpos_sim import (
    Cut,
    EscposDecoder,
    Feed,
    PaperElement,
    PrinterSimulator,
    QrCode,
    RasterImage,
    StatusRequest,
    TextLine,
    decode_escpos,
)
from edge.drivers.escpos_printer import (
    DEFAULT_FONT,
    FONT_PX,
    SAMPLE_CONFIG,
    Config,
    Driver,
    PaperState,
    PrinterError,
    Receipt,
    parse_paper_status,
    render_receipt,
    simulate,
    text_cells,
    wrap,
)
from edge.errors import DeviceUnavailable
from tests.conftest import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "escpos_printer"
PROMPTPAY = "00020101021229370016A000000677010111011300668012345675802TH53037645406456.256304483D"

RECEIPT = Receipt(
    title=("เทศบาลนครขอนแก่น", "Khon Kaen City"),
    lines=(("ค่าน้ำประปา เดือนตุลาคม", "150.00"), ("Receipt no.", "2570/000123")),
    totals=(("รวมทั้งสิ้น / Total", "150.00 บาท"),),
    footer=("ขอบคุณที่ใช้บริการ", "Thank you"),
)
THAI_ROWS = 4
"""Rows of RECEIPT holding Thai (first title, water fee, total, first footer line): the raster images it prints."""


def hex_fixture(name: str) -> bytes:
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    return bytes.fromhex(" ".join(line.split("#")[0] for line in lines))


def config(**overrides: Any) -> Config:
    return Config.model_validate({**SAMPLE_CONFIG, **overrides})


def texts(paper: list[PaperElement]) -> list[str]:
    return [e.text for e in paper if isinstance(e, TextLine)]


def images(paper: list[PaperElement]) -> list[RasterImage]:
    return [e for e in paper if isinstance(e, RasterImage)]


def ink_box(image: Image.Image) -> Image.Image:
    """The image cropped to its black dots."""
    gray = image.convert("L")
    box = ImageChops.invert(gray).getbbox()
    assert box is not None, "blank image"
    return gray.crop(box)


def reference_line(text: str, size: int) -> Image.Image:
    """The text drawn straight with Pillow and the default font, thresholded like a thermal printer would."""
    font = ImageFont.truetype(DEFAULT_FONT, size)
    canvas = Image.new("L", (1200, 120), 255)
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, fill=0)
    return ink_box(canvas.convert("1", dither=Image.Dither.NONE))


def mismatch(a: Image.Image, b: Image.Image) -> float:
    """The fraction of differing dots, 1.0 when the sizes differ by more than a dot."""
    if abs(a.width - b.width) > 1 or abs(a.height - b.height) > 1:
        return 1.0
    w, h = min(a.width, b.width), min(a.height, b.height)
    diff = ImageChops.difference(a.crop((0, 0, w, h)), b.crop((0, 0, w, h))).point(lambda v: 255 if v else 0)
    return diff.histogram()[255] / (w * h)


# -- recorded byte streams -----------------------------------------------------------------------------------

RECORDED_RECEIPT: list[PaperElement] = [
    TextLine("ใบเสร็จรับเงิน", bold=True, width=2, height=2, align="center"),
    TextLine("น้ำประปา" + " " * 35 + "150.00"),
    TextLine("PROVISIONAL", invert=True),
    QrCode(PROMPTPAY),
    Feed(4),
    Cut(partial=True),
]


def test_a_recorded_thai_receipt_decodes_to_what_the_paper_shows() -> None:
    decoder = EscposDecoder(thai_table=21)
    decoded = decoder.feed(hex_fixture("receipt_table21.hex"))
    assert [e for e in decoded if not isinstance(e, StatusRequest)] == RECORDED_RECEIPT
    assert StatusRequest(4) in decoded and decoder.unknown == []
    assert text_cells("น้ำประปา" + " " * 35 + "150.00") == 48  # the tone mark shares its base's cell


def test_the_decoder_takes_the_stream_in_any_pieces() -> None:
    data = hex_fixture("receipt_table21.hex")
    decoder = EscposDecoder(thai_table=21)
    pieces = [element for i in range(len(data)) for element in decoder.feed(data[i:i + 1])]
    assert [e for e in pieces if not isinstance(e, StatusRequest)] == RECORDED_RECEIPT


def test_a_printer_keeping_cp874_at_another_table_prints_no_thai() -> None:
    """Why the self-test page matters: the same bytes on a printer whose CP874 is table 47."""
    paper = decode_escpos(hex_fixture("receipt_table21.hex"), thai_table=47)
    assert texts(paper)[0] != "ใบเสร็จรับเงิน"
    assert not any("\u0e00" <= c <= "\u0e7f" for line in texts(paper) for c in line)


def test_a_recorded_raster_image_decodes_to_its_dots() -> None:
    paper = decode_escpos(hex_fixture("raster_16x3.hex"))
    assert len(paper) == 2 and isinstance(paper[0], RasterImage) and paper[1] == TextLine("")
    image = paper[0].image
    assert (image.width, image.height) == (16, 3)
    black = {(x, y) for y in range(3) for x in range(16) if image.getpixel((x, y)) == 0}
    assert black == {(0, 0), (15, 0), *((x, 1) for x in range(8))}


@pytest.mark.parametrize("answer, state", [
    (b"\x12", PaperState.OK),
    (b"\x1e", PaperState.NEAR_END),
    (b"\x72", PaperState.OUT),
    (b"\x7e", PaperState.OUT),
    (b"", None),            # no answer within the timeout
    (b"\x00", None),        # not a status byte (fixed bits wrong)
    (b"\x12\x12", None),
])
def test_paper_status_answers(answer: bytes, state: PaperState | None) -> None:
    assert parse_paper_status(answer) == state


# -- laying out receipts ---------------------------------------------------------------------------------------

def test_a_codepage_receipt_decodes_back_to_the_same_thai_and_english() -> None:
    data = render_receipt(RECEIPT, config(thai_mode="codepage", codepage=21))
    assert b"\x1bt\x15" in data
    decoder = EscposDecoder(thai_table=21)
    paper = [e for e in decoder.feed(data) if not isinstance(e, StatusRequest)]
    assert decoder.unknown == [] and images(paper) == []
    lines = [line for line in texts(paper) if line]
    assert lines[:2] == ["เทศบาลนครขอนแก่น", "Khon Kaen City"]
    assert lines[3] == "ค่าน้ำประปา เดือนตุลาคม" + " " * 23 + "150.00"
    assert lines[4] == "Receipt no." + " " * 26 + "2570/000123"
    assert lines[6].startswith("รวมทั้งสิ้น / Total") and lines[6].endswith(" 150.00 บาท")
    assert lines[7:] == ["ขอบคุณที่ใช้บริการ", "Thank you"]
    assert all(text_cells(line) == 48 for line in lines[2:7])
    title = next(e for e in paper if isinstance(e, TextLine) and e.text == "เทศบาลนครขอนแก่น")
    assert (title.width, title.height, title.bold, title.align) == (2, 2, True, "center")
    total = next(e for e in paper if isinstance(e, TextLine) and e.text.startswith("รวม"))
    assert total.bold
    assert paper[-1] == Cut(partial=False)


def test_the_code_table_number_is_the_printers() -> None:
    data = render_receipt(RECEIPT, config(thai_mode="codepage", codepage=47))
    assert b"\x1bt\x2f" in data
    assert "เทศบาลนครขอนแก่น" in texts(decode_escpos(data, thai_table=47))
    assert "เทศบาลนครขอนแก่น" not in texts(decode_escpos(data, thai_table=21))


def test_raster_mode_draws_thai_lines_and_sends_ascii_as_text() -> None:
    paper = decode_escpos(render_receipt(RECEIPT, config(thai_mode="raster")))
    assert not any("\u0e00" <= c <= "\u0e7f" for line in texts(paper) for c in line)
    assert "Khon Kaen City" in texts(paper) and "Thank you" in texts(paper)
    drawn = images(paper)
    assert len(drawn) == THAI_ROWS
    assert all(image.width == 576 for image in drawn)
    assert all(0.01 < image.ink() < 0.5 for image in drawn)


def test_a_raster_line_looks_like_the_text_drawn_with_the_thai_font() -> None:
    paper = decode_escpos(render_receipt(Receipt(footer=("ขอบคุณที่ใช้บริการ",)), config(thai_mode="raster")))
    (printed,) = images(paper)
    assert printed.width == 576
    got = ink_box(printed.image)
    assert mismatch(got, reference_line("ขอบคุณที่ใช้บริการ", FONT_PX[1])) < 0.02
    assert mismatch(got, reference_line("ขอบคุณทีใช้บริการ", FONT_PX[1])) == 1.0  # a tone mark missing
    assert mismatch(got, reference_line("ขอบคุณที่ไข้บริการ", FONT_PX[1])) > 0.02  # one letter changed


def test_58_mm_paper_gets_narrower_images_and_lines() -> None:
    raster = decode_escpos(render_receipt(RECEIPT, config(paper_width_px=384)))
    assert {image.width for image in images(raster)} == {384}
    text = decode_escpos(render_receipt(RECEIPT, config(paper_width_px=384, thai_mode="codepage")))
    assert max(text_cells(line) for line in texts(text)) == 32


def test_a_provisional_receipt_says_so_in_large_reversed_type() -> None:
    provisional = RECEIPT.model_copy(update={"provisional": True})
    paper = decode_escpos(render_receipt(provisional, config(thai_mode="codepage")))
    banner = [e for e in paper if isinstance(e, TextLine) and e.invert]
    assert [(e.text, e.width, e.height) for e in banner] == [("ใบรับชั่วคราว / PROVISIONAL", 2, 2)]
    assert not any(isinstance(e, TextLine) and e.invert
                   for e in decode_escpos(render_receipt(RECEIPT, config(thai_mode="codepage"))))
    drawn = images(decode_escpos(render_receipt(provisional, config(thai_mode="raster"))))
    assert len(drawn) == THAI_ROWS + 1 and drawn[1].ink() > 0.6  # white on black under the title


def test_long_thai_text_wraps_between_characters_never_inside_one() -> None:
    text = "ค่าธรรมเนียมใบอนุญาตก่อสร้างอาคารตามกฎกระทรวงฉบับที่สองพุทธศักราชสองพันห้าร้อยหกสิบเก้า"

    def measure(s: str) -> int:
        return text_cells(s) * 12

    lines = wrap(text, 384, measure)
    assert len(lines) > 1 and "".join(lines) == text
    assert all(measure(line) <= 384 for line in lines)
    assert not any(unicodedata.category(line[0]) == "Mn" for line in lines)
    assert wrap("Water fee for October 2569", 12 * 12, measure) == ["Water fee", "for October", "2569"]
    assert wrap("ที่นี่", 2, len) == ["ที่", "นี่"]  # even when a mark takes width, it stays with its base


def test_receipt_text_cannot_carry_printer_commands() -> None:
    with pytest.raises(ValidationError):
        Receipt(footer=("thank you\x1bt\x00",))
    with pytest.raises(ValidationError):
        Receipt(lines=(("fee\n\x1dV\x00", "1.00"),))


def test_a_qr_payload_round_trips() -> None:
    paper = decode_escpos(render_receipt(Receipt(qr=PROMPTPAY), config()))
    assert [e for e in paper if isinstance(e, QrCode)] == [QrCode(PROMPTPAY)]


def test_the_font_is_only_needed_to_start_a_raster_printer(tmp_path: Path) -> None:
    missing = config(font_path=str(tmp_path / "nofont.ttf"))  # validates on a machine without the font
    assert missing.claims() == {"serial:/dev/ttyUSB0"}
    with pytest.raises(PrinterError, match="fonts-thai-tlwg"):
        Driver(missing).start(lambda event: None)
    with pytest.raises(PrinterError, match="fonts-thai-tlwg"):
        render_receipt(RECEIPT, missing)
    assert render_receipt(RECEIPT, missing.model_copy(update={"thai_mode": "codepage"}))


# -- through a pty -------------------------------------------------------------------------------------------

class Events:
    """Events a driver emitted, waited for by name."""

    def __init__(self) -> None:
        self.got: list[DriverEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: DriverEvent) -> None:
        with self._changed:
            self.got.append(event)
            self._changed.notify_all()

    def names(self) -> list[str]:
        with self._changed:
            return [e.event for e in self.got]

    def wait_for(self, name: str, count: int = 1, timeout: float = 5) -> DriverEvent:
        with self._changed:
            assert self._changed.wait_for(lambda: [e.event for e in self.got].count(name) >= count, timeout), \
                f"no {name} event; got {[e.event for e in self.got]}"
            return [e for e in self.got if e.event == name][count - 1]


@pytest.fixture
def printer() -> Iterator[PrinterSimulator]:
    with PrinterSimulator(thai_table=21) as simulator:
        yield simulator


@contextmanager
def started(port: str, **overrides: Any) -> Iterator[tuple[Driver, Events]]:
    driver = Driver(config(port=port, status_poll_s=0.05, status_timeout_s=0.2, **overrides))
    events = Events()
    driver.start(events)
    try:
        yield driver, events
    finally:
        driver.stop()


def printed_receipt(simulator: PrinterSimulator) -> list[PaperElement]:
    assert simulator.wait_until(lambda paper: any(isinstance(e, Cut) for e in paper), 5), simulator.paper
    return simulator.paper


def test_a_thai_and_english_receipt_prints_through_the_pty(printer: PrinterSimulator) -> None:
    with started(printer.path, thai_mode="codepage") as (driver, _):
        driver.print_receipt(RECEIPT)
        paper = printed_receipt(printer)
    lines = [line for line in texts(paper) if line]
    assert lines[:2] == ["เทศบาลนครขอนแก่น", "Khon Kaen City"]
    assert lines[3].startswith("ค่าน้ำประปา เดือนตุลาคม") and lines[3].endswith(" 150.00")
    assert lines[-2:] == ["ขอบคุณที่ใช้บริการ", "Thank you"]
    assert printer.unknown_commands == []


def test_a_raster_receipt_prints_images_through_the_pty(printer: PrinterSimulator) -> None:
    with started(printer.path) as (driver, _):
        driver.print_receipt(RECEIPT)
        paper = printed_receipt(printer)
    assert len(images(paper)) == THAI_ROWS
    assert all(image.width == 576 and image.ink() > 0.01 for image in images(paper))
    assert "Thank you" in texts(paper)


def test_a_qr_payload_round_trips_through_the_pty(printer: PrinterSimulator) -> None:
    with started(printer.path) as (driver, _):
        driver.print_receipt(Receipt(title=("PromptPay",), qr=PROMPTPAY))
        paper = printed_receipt(printer)
    assert [e for e in paper if isinstance(e, QrCode)] == [QrCode(PROMPTPAY)]


def test_paper_running_low_and_out_is_reported_and_recovers(printer: PrinterSimulator) -> None:
    with started(printer.path) as (_, events):
        printer.set_paper(PaperState.NEAR_END)
        low = events.wait_for("printer.paper_low")
        printer.set_paper(PaperState.OUT)
        out = events.wait_for("printer.paper_out")
        printer.set_paper(PaperState.OK)
        ok = events.wait_for("printer.paper_ok")
    assert (low.severity, out.severity, ok.severity) == (Severity.WARNING, Severity.CRITICAL, Severity.INFO)
    assert out.data == {"port": printer.path, "paper": "out"}
    assert events.names() == ["printer.paper_low", "printer.paper_out", "printer.paper_ok"]  # transitions only


def test_a_printer_out_of_paper_refuses_the_receipt(printer: PrinterSimulator) -> None:
    printer.set_paper(PaperState.OUT)
    with started(printer.path) as (driver, events):
        with pytest.raises(PrinterError, match="paper out"):
            driver.print_receipt(RECEIPT)
        assert events.names() == ["printer.paper_out"]
        printer.set_paper(PaperState.OK)
        events.wait_for("printer.paper_ok")
        driver.print_receipt(RECEIPT)
        assert len(images(printed_receipt(printer))) == THAI_ROWS


def test_a_printer_without_status_is_reported_once_and_still_prints() -> None:
    with PrinterSimulator(answers_status=False) as printer, started(printer.path) as (driver, events):
        unsupported = events.wait_for("printer.status_unsupported")
        assert unsupported.severity == Severity.INFO
        asked = printer.status_queries
        threading.Event().wait(0.4)  # eight poll periods
        assert printer.status_queries == asked == 1
        driver.print_receipt(RECEIPT)
        printed_receipt(printer)
        assert printer.status_queries == 1
    assert events.names() == ["printer.status_unsupported"]


def test_an_unplugged_printer_raises_device_unavailable(printer: PrinterSimulator) -> None:
    with started(printer.path) as (driver, events):
        printer.close()
        offline = events.wait_for("printer.offline")
        assert offline.severity == Severity.CRITICAL
        with pytest.raises(DeviceUnavailable):
            driver.print_receipt(RECEIPT)
        assert events.names() == ["printer.offline"]


def test_a_replugged_printer_prints_again(tmp_path: Path) -> None:
    """The port is a stable name (like /dev/serial/by-id/...) that points at whichever pty is plugged in."""
    port = tmp_path / "ttyPRINTER"
    with PrinterSimulator() as first:
        os.symlink(first.path, port)
        with started(str(port)) as (driver, events):
            first.close()
            events.wait_for("printer.offline")
            with PrinterSimulator() as second:
                port.unlink()
                os.symlink(second.path, port)
                events.wait_for("printer.online")
                driver.print_receipt(RECEIPT)
                assert len(images(printed_receipt(second))) == THAI_ROWS


def test_a_printer_switched_off_is_offline_until_it_answers_again(printer: PrinterSimulator) -> None:
    with started(printer.path) as (driver, events):
        assert printer.wait_until(lambda _: printer.status_queries > 0, 5)
        printer.answers_status = False
        events.wait_for("printer.offline")
        with pytest.raises(DeviceUnavailable, match="switched on"):
            driver.print_receipt(RECEIPT)
        printer.answers_status = True
        events.wait_for("printer.online")
        driver.print_receipt(RECEIPT)
        printed_receipt(printer)
    assert "printer.status_unsupported" not in events.names()


def test_printing_before_start_is_refused(printer: PrinterSimulator) -> None:
    with pytest.raises(DeviceUnavailable, match="not started"):
        Driver(config(port=printer.path)).print_receipt(RECEIPT)
    assert printer.paper == []


def test_the_simulators_paper_log_shows_the_text_of_raster_lines(tmp_path: Path) -> None:
    """Pixels cannot be read back, so the driver hands the simulator the text it drew; receipt after receipt."""
    paper_log = tmp_path / "paper.log"
    with simulate(config(sim_paper_log=paper_log)) as simulated:
        driver = Driver(simulated.model_copy(update={"status_poll_s": 0.05}))
        driver.start(Events())
        try:
            driver.print_receipt(RECEIPT)
            driver.print_receipt(Receipt(title=("ใบรับชั่วคราว", "Provisional slip")))
            wait_for(lambda: paper_log.read_text(encoding="utf-8").count("cut") == 2 if paper_log.exists() else False,
                     10, "two receipts in the paper log")
        finally:
            driver.stop()
    logged = paper_log.read_text(encoding="utf-8").splitlines()
    assert not [line for line in logged if line.startswith("image")]
    lines = [line.split("  [image 576x")[0] for line in logged]  # the height depends on the type size
    assert lines == ["text เทศบาลนครขอนแก่น", "text Khon Kaen City", f"text {'-' * 48}",
                     "text ค่าน้ำประปา เดือนตุลาคม  150.00", f"text Receipt no.{' ' * 26}2570/000123", f"text {'-' * 48}",
                     "text รวมทั้งสิ้น / Total  150.00 บาท", "text ขอบคุณที่ใช้บริการ", "text Thank you", "cut",
                     "text ใบรับชั่วคราว", "text Provisional slip", f"text {'-' * 48}", "cut"]
    assert sum("[image 576x" in line for line in logged) == THAI_ROWS + 1
