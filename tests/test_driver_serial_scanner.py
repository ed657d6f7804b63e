"""Serial scanner driver: codes split from recorded bytes, and the driver against a simulated scanner on a real pty
that is unplugged and plugged back in behind the same path."""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.drivers import DriverEvent, serial_scanner
from edge.drivers._serial_scanner_sim import (
    PROMPTPAY_VECTORS,
    ScannerSimulation,
    crc16_ccitt_false,
    ean13,
    promptpay_bill,
)
from edge.drivers.serial_scanner import Config, Driver, decode_code, mask_personal_ids, rejection, split_codes
from edge.errors import DeviceUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "serial_scanner"
PHONE, NATIONAL_ID, WITH_AMOUNT = PROMPTPAY_VECTORS
THAI_NOTICE = "ใบแจ้งภาษีป้าย เลขที่ 2570/00123"
EAN = "8850999320014"
ASSET = "https://qr.khonkaen.example/asset/LAMP-004512"
PHONE_MASKED = "00020101021129370016A0000006770101110113xxxxxxxxx45675802TH530376463046197"
NATIONAL_ID_MASKED = "00020101021129370016A0000006770101110213xxxxxxxxx11115802TH530376463047B5A"


def fixture(name: str) -> bytes:
    """Bytes of a hex fixture file ('#' starts a comment)."""
    lines = (line.split("#", 1)[0] for line in (FIXTURES / name).read_text().splitlines())
    return bytes.fromhex(" ".join(lines))


# -- bytes -> codes -------------------------------------------------------------------------------

@pytest.mark.parametrize("terminator", ["crlf", "any"])
def test_crlf_codes_split_cleanly(terminator: serial_scanner.Terminator) -> None:
    codes, rest = split_codes(fixture("promptpay_crlf.hex"), terminator)
    assert [decode_code(c) for c in codes] == [PHONE, NATIONAL_ID]
    assert rest == b""


def test_a_thai_code_decodes_as_utf8_and_the_unfinished_code_waits() -> None:
    codes, rest = split_codes(fixture("thai_notice_lf.hex"), "lf")
    assert [decode_code(c) for c in codes] == [THAI_NOTICE]
    assert rest == b"88500"


def test_a_code_that_is_not_utf8_falls_back_to_latin1() -> None:
    codes, _ = split_codes(fixture("latin1_cr.hex"), "cr")
    assert [decode_code(c) for c in codes] == ["Café 42"]


def test_gs1_separators_are_data_but_line_noise_is_rejected() -> None:
    gs1, ean = split_codes(fixture("gs1_cr.hex"), "any")[0]
    assert gs1 == b"0108850999000015\x1d10LOT42" and rejection(gs1, 512) is None
    assert ean.decode() == EAN
    noise, ean = split_codes(fixture("noise_cr.hex"), "any")[0]
    assert rejection(noise, 512) == "line_noise"
    assert rejection(ean, 512) is None
    assert rejection(ean, 12) == "too_long"


def test_a_crlf_split_across_reads_leaves_only_an_empty_code() -> None:
    assert split_codes(b"A1\r", "any") == ([b"A1"], b"")
    assert split_codes(b"\nB2\r", "any") == ([b"", b"B2"], b"")


def test_the_personal_id_of_a_promptpay_qr_is_masked() -> None:
    assert mask_personal_ids(PHONE) == PHONE_MASKED  # phone 0801234567 as 0066801234567
    assert mask_personal_ids(NATIONAL_ID) == NATIONAL_ID_MASKED
    assert "456.25" in mask_personal_ids(WITH_AMOUNT) and "0066801234567" not in mask_personal_ids(WITH_AMOUNT)
    bill = promptpay_bill("KK2570000123", 45_625)  # a municipality's bill: nothing personal in it
    for code in (bill, EAN, ASSET, THAI_NOTICE, "000201010211299", "00020101021129"):
        assert mask_personal_ids(code) == code


def test_the_simulated_promptpay_codes_carry_a_valid_crc() -> None:
    for vector in PROMPTPAY_VECTORS:  # public vectors: the simulator's CRC must agree with them
        assert f"{crc16_ccitt_false(vector[:-4].encode()):04X}" == vector[-4:]
    bill = promptpay_bill("KK2570000123", 45_625)
    fields = tlv(bill)
    assert fields["01"] == "12" and fields["53"] == "764" and fields["54"] == "456.25" and fields["58"] == "TH"
    assert tlv(fields["30"])["00"] == "A000000677010112" and tlv(fields["30"])["02"] == "KK2570000123"
    assert fields["63"] == f"{crc16_ccitt_false(bill[:-4].encode()):04X}"
    assert ean13("885099932001") == EAN


def tlv(payload: str) -> dict[str, str]:
    """The tags of a flat EMVCo TLV string."""
    fields = {}
    while payload:
        tag, length = payload[:2], int(payload[2:4])
        fields[tag], payload = payload[4:4 + length], payload[4 + length:]
    return fields


# -- through a pty --------------------------------------------------------------------------------

class Events:
    """What the driver emitted, in order, as a user of the agent would see it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[DriverEvent] = queue.Queue()

    def __call__(self, event: DriverEvent) -> None:
        self._queue.put(event)

    def next(self, timeout: float = 2.0) -> DriverEvent:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no event within {timeout} s")

    def none_within(self, seconds: float) -> bool:
        try:
            event = self._queue.get(timeout=seconds)
        except queue.Empty:
            return True
        pytest.fail(f"unexpected event {event}")


@pytest.fixture
def scanner(request: pytest.FixtureRequest) -> Iterator[ScannerSimulation]:
    """A scanner that scans only what the test tells it to."""
    options = {"seed": 3, "mean_gap_s": None, **getattr(request, "param", {})}
    with ScannerSimulation(**options) as simulation:
        yield simulation


@pytest.fixture
def started() -> Iterator[Callable[..., Events]]:
    """Start drivers; all are stopped at the end."""
    drivers: list[Driver] = []

    def start(port: str, **options: Any) -> Events:
        driver = Driver(Config(name="scanner", port=port, **options))
        drivers.append(driver)
        events = Events()
        driver.start(events)
        return events

    yield start
    for driver in drivers:
        driver.stop()


def test_codes_arrive_as_events_in_order(scanner: ScannerSimulation, started: Callable[..., Events]) -> None:
    events = started(scanner.path)
    bill = promptpay_bill("KK2570000123", 45_625)
    codes = [bill, EAN, THAI_NOTICE, ASSET, PHONE]
    for code in codes:
        scanner.scan(code)
    got = [events.next() for _ in codes]
    assert [(e.event, e.severity) for e in got] == [("scan.read", "info")] * len(codes)
    assert [e.data for e in got] == [{"code": c, "length": len(c)} for c in [*codes[:-1], PHONE_MASKED]]


@pytest.mark.parametrize(("sent", "configured"), [
    ("cr", "cr"), ("lf", "lf"), ("crlf", "crlf"), ("cr", "any"), ("lf", "any"), ("crlf", "any"),
])
def test_each_terminator_ends_a_code(sent: str, configured: str, started: Callable[..., Events]) -> None:
    with ScannerSimulation(terminator=sent, mean_gap_s=None) as scanner:
        events = started(scanner.path, terminator=configured)
        scanner.scan(EAN)
        scanner.scan(ASSET)
        assert [events.next().data["code"] for _ in range(2)] == [EAN, ASSET]
        assert events.none_within(0.3)  # the LF of a CRLF is not an empty scan


def test_a_code_repeated_within_the_window_is_reported_once(scanner: ScannerSimulation,
                                                            started: Callable[..., Events]) -> None:
    events = started(scanner.path, dedupe_s=0.5)
    scanner.scan(EAN)
    scanner.scan(EAN)  # the scanner re-sends a code still in view
    scanner.scan(ASSET)
    scanner.scan(EAN)
    assert [events.next().data["code"] for _ in range(2)] == [EAN, ASSET]
    assert events.none_within(0.6)
    scanner.scan(EAN)  # the next citizen with the same product, after the window
    assert events.next().data["code"] == EAN


def test_dedupe_can_be_turned_off(scanner: ScannerSimulation, started: Callable[..., Events]) -> None:
    events = started(scanner.path, dedupe_s=0)
    for _ in range(3):
        scanner.scan(EAN)
    assert [events.next().data["code"] for _ in range(3)] == [EAN] * 3


def test_overlong_garbage_is_rejected(scanner: ScannerSimulation, started: Callable[..., Events]) -> None:
    events = started(scanner.path, max_length=100)
    rng = random.Random(1)
    scanner.send(bytes(rng.randrange(0x21, 0x7F) for _ in range(150)) + b"\r")
    scanner.scan(EAN)
    rejected = events.next()
    assert (rejected.event, rejected.severity, rejected.data["reason"], rejected.data["bytes"]) == (
        "scan.rejected", "warning", "too_long", 150)
    assert events.next().data["code"] == EAN

    # a stream with no terminator is rejected once, before it fills the memory, and its tail is dropped too
    scanner.send(b"A" * 1000)
    time.sleep(0.2)
    scanner.send(b"TAIL\r")
    scanner.scan(ASSET)
    rejected = events.next()
    assert (rejected.event, rejected.data["reason"]) == ("scan.rejected", "too_long")
    assert events.next().data["code"] == ASSET


def test_line_noise_is_rejected_not_reported(scanner: ScannerSimulation, started: Callable[..., Events]) -> None:
    events = started(scanner.path)
    scanner.send(b"\x00\xf8\x00\xff\r")
    scanner.scan(EAN)
    rejected = events.next()
    assert (rejected.event, rejected.data) == ("scan.rejected",
                                               {"reason": "line_noise", "bytes": 4, "preview": "00 f8 00 ff"})
    assert events.next().data["code"] == EAN


def test_an_unplugged_scanner_is_lost_then_restored(scanner: ScannerSimulation,
                                                    started: Callable[..., Events]) -> None:
    events = started(scanner.path)
    scanner.scan(EAN)
    assert events.next().data["code"] == EAN

    scanner.unplug()
    lost = events.next()
    assert (lost.event, lost.severity, lost.data["port"]) == ("scanner.lost", "warning", scanner.path)
    assert events.none_within(0.5)  # still away: no event per retry

    scanner.replug()
    restored = events.next(timeout=5)
    assert (restored.event, restored.severity) == ("scanner.restored", "info")
    assert restored.data["down_s"] >= 0.5
    scanner.scan(ASSET)
    assert events.next().data["code"] == ASSET


def test_start_on_a_missing_port_is_the_projects_own_error() -> None:
    driver = Driver(Config(name="scanner", port="/dev/nonexistent-scanner"))
    with pytest.raises(DeviceUnavailable, match="cannot open serial port /dev/nonexistent-scanner"):
        driver.start(Events())
    driver.stop()
    driver.stop()


def test_no_event_after_stop(scanner: ScannerSimulation) -> None:
    events = Events()
    driver = Driver(Config(name="scanner", port=scanner.path))
    driver.start(events)
    driver.stop()
    scanner.scan(EAN)
    assert events.none_within(0.3)


def test_the_packaged_simulator_scans_valid_codes_and_its_noise_never_reads_as_a_code(
        started: Callable[..., Events]) -> None:
    with ScannerSimulation(seed=11, mean_gap_s=0.05, noise_rate=0.3, repeat_rate=0.3) as scanner:
        events = started(scanner.path)
        got = [events.next() for _ in range(20)]
    reads = [e.data["code"] for e in got if e.event == "scan.read"]
    assert {e.event for e in got} == {"scan.read", "scan.rejected"}
    assert any("x" * 9 in code for code in reads)  # the simulator scans the public vectors too
    for code in reads:
        assert "\x00" not in code
        assert "0066801234567" not in code and "1111111111111" not in code
        if code.startswith("000201") and "x" not in code:
            assert f"{crc16_ccitt_false(code[:-4].encode()):04X}" == code[-4:]
        elif code.isdigit():
            assert ean13(code[:12]) == code


def test_simulate_points_the_sample_config_at_a_stable_path() -> None:
    conf = Config.model_validate(serial_scanner.SAMPLE_CONFIG)
    assert conf.claims() == {"serial:/dev/ttyACM0"}
    with serial_scanner.simulate(conf) as simulated:
        assert simulated.port != conf.port and Path(simulated.port).is_symlink()
        driver = Driver(simulated)
        driver.start(Events())
        driver.stop()
    assert not Path(simulated.port).exists()
