"""A simulated serial QR / barcode scanner on a pseudo-terminal that can be unplugged and plugged back in.

Citizens and staff scan now and then: PromptPay QR codes (the public test vectors and municipal bill
payments with their CRC), EAN-13 barcodes of Thai products, asset tags of street furniture and Thai-language
notices. A code held in view is sent again, and a glitch on the line now and then sends a burst of noise.
The driver opens a symlink that points at the current pty, like udev's ``/dev/serial/by-id/...`` links:
:meth:`ScannerSimulation.unplug` hangs the pty up and removes the link, :meth:`ScannerSimulation.replug`
makes a new pty behind the same path.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from edge.drivers._serial import PtyDevice
from edge.errors import DriverError

TERMINATOR_BYTES: Final = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}

PROMPTPAY_VECTORS: Final = (
    "00020101021129370016A000000677010111011300668012345675802TH530376463046197",
    "00020101021129370016A000000677010111021311111111111115802TH530376463047B5A",
    "00020101021229370016A000000677010111011300668012345675802TH53037645406456.256304483D",
)
"""Public PromptPay test vectors (phone, national id, phone with an amount)."""

_BILLER_ID: Final = "099400012345601"  # a municipality's registered biller id (made up)
_REPEAT_GAP_S: Final = 0.15  # a scanner in continuous mode re-sends a code still in view this often


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the checksum of a PromptPay payload."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def _tlv(tag: str, value: str) -> str:
    return f"{tag}{len(value):02d}{value}"


def promptpay_bill(ref1: str, amount_satang: int) -> str:
    """A dynamic PromptPay bill-payment QR payload (tag 30) for the municipality's biller id."""
    biller = _tlv("00", "A000000677010112") + _tlv("01", _BILLER_ID) + _tlv("02", ref1)
    amount = f"{amount_satang // 100}.{amount_satang % 100:02d}"
    body = (_tlv("00", "01") + _tlv("01", "12") + _tlv("30", biller) + _tlv("53", "764") + _tlv("54", amount)
            + _tlv("58", "TH") + "6304")
    return body + f"{crc16_ccitt_false(body.encode()):04X}"


def ean13(first12: str) -> str:
    """An EAN-13 barcode: 12 digits and their check digit."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return first12 + str((10 - total % 10) % 10)


def _bill(rng: random.Random) -> str:
    return promptpay_bill(f"KK2570{rng.randrange(10**6):06d}", rng.randrange(2_000, 500_000))


def _product(rng: random.Random) -> str:
    return ean13(f"885{rng.randrange(10**9):09d}")  # 885: GS1 Thailand


def _asset(rng: random.Random) -> str:
    return f"https://qr.khonkaen.example/asset/LAMP-{rng.randrange(10**6):06d}"


def _notice(rng: random.Random) -> str:
    return f"ใบแจ้งภาษีป้าย เลขที่ 2570/{rng.randrange(10**5):05d}"


def _public_vector(rng: random.Random) -> str:
    return rng.choice(PROMPTPAY_VECTORS)


CODE_MAKERS: Final[tuple[Callable[[random.Random], str], ...]] = (_bill, _product, _asset, _notice, _public_vector)
"""What people scan at a municipal kiosk, one maker per kind of code."""


class ScannerDevice(PtyDevice):
    """One plug-in of the scanner: a pty that sends scanned codes at random times and what tests queue."""

    def __init__(self, rng: random.Random, terminator: bytes, mean_gap_s: float | None, repeat_rate: float,
                 noise_rate: float) -> None:
        super().__init__("serial_scanner")
        self._rng = rng
        self._terminator = terminator
        self._mean_gap_s = mean_gap_s
        self._repeat_rate = repeat_rate
        self._noise_rate = noise_rate
        self._queue: queue.Queue[bytes] = queue.Queue()

    def send(self, data: bytes) -> None:
        """Send raw bytes to the driver, in order with the simulated scans."""
        self._queue.put(data)

    def serve(self) -> None:
        """Send queued bytes at once and a random scan every ``mean_gap_s`` on average."""
        next_scan = self._next_scan_at()
        while not self.stopping.is_set():
            with contextlib.suppress(queue.Empty):
                self.write(self._queue.get(timeout=min(0.05, max(0.0, next_scan - time.monotonic()))))
                continue
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = self._next_scan_at()

    def _next_scan_at(self) -> float:
        if self._mean_gap_s is None:
            return float("inf")
        return time.monotonic() + self._rng.expovariate(1.0 / self._mean_gap_s)

    def _scan(self) -> None:
        if self._rng.random() < self._noise_rate:
            # a glitch: a break reads as NULs, a bounce as high bytes
            noise = bytes(self._rng.choice((0x00, 0xFF, 0xFE, 0xF8, 0x80)) for _ in range(self._rng.randint(2, 6)))
            self.write(b"\x00" + noise + self._terminator)
        code = self._rng.choice(CODE_MAKERS)(self._rng).encode() + self._terminator
        self.write(code)
        while self._rng.random() < self._repeat_rate and not self.stopping.wait(_REPEAT_GAP_S):
            self.write(code)


class ScannerSimulation:
    """A scanner that can be unplugged and plugged back in, reachable at the same :attr:`path` throughout."""

    def __init__(self, *, terminator: str = "cr", seed: int | None = None, mean_gap_s: float | None = 8.0,
                 repeat_rate: float = 0.3, noise_rate: float = 0.05) -> None:
        self._rng = random.Random(seed)
        self._terminator = TERMINATOR_BYTES[terminator]
        self._mean_gap_s = mean_gap_s
        self._repeat_rate = repeat_rate
        self._noise_rate = noise_rate
        self._device: ScannerDevice | None = None
        self._dir = ""
        self.path = ""

    def __enter__(self) -> ScannerSimulation:
        try:
            self._dir = tempfile.mkdtemp(prefix="nakhon-scanner-")
        except OSError as err:
            raise DriverError(f"scanner simulator: cannot make a directory for its port: {err}") from err
        self.path = os.path.join(self._dir, "ttyACM0")
        try:
            self.replug()
        except DriverError:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Unplug the scanner and remove its directory; safe to call twice."""
        self.unplug()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    @property
    def plugged(self) -> bool:
        """True while the scanner is plugged in."""
        return self._device is not None

    def unplug(self) -> None:
        """Pull the cable: the driver's open port hangs up and the path disappears."""
        device, self._device = self._device, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if device is not None:
            device.close()

    def replug(self) -> None:
        """Plug the scanner in again: a new pty behind the same path."""
        if self._device is not None:
            return
        device = ScannerDevice(self._rng, self._terminator, self._mean_gap_s, self._repeat_rate, self._noise_rate)
        device.__enter__()
        link = self.path + ".new"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(device.path, link)
            os.replace(link, self.path)
        except OSError as err:
            device.close()
            raise DriverError(f"scanner simulator: cannot link {self.path} to {device.path}: {err}") from err
        self._device = device

    def send(self, data: bytes) -> None:
        """Send raw bytes as the scanner (nothing arrives while it is unplugged)."""
        if self._device is not None:
            self._device.send(data)

    def scan(self, code: str) -> None:
        """Scan ``code``: its UTF-8 bytes and the scanner's terminator."""
        self.send(code.encode() + self._terminator)
