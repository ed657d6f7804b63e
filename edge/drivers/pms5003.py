"""Plantower PMS5003 / PMS7003 particulate sensor on a UART (9600 8N1): PM1.0, PM2.5, PM10 and particle counts.

The sensor sends 32-byte frames (``42 4D``, length 28, 13 big-endian words, a 16-bit sum) either on its own about
once a second (active mode) or when asked (passive mode). It answers mode and sleep commands with an 8-byte frame
of length 4. The driver resynchronises on ``42 4D`` in a stream with garbage, skips and counts frames with a bad
length or checksum, and can sleep the fan between reads, waking it ``warmup_s`` before the reading is due.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from typing import Annotated, ClassVar, Final, Literal, Self

import serial
from pydantic import Field as PydanticField
from pydantic import model_validator

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field, Presence
from edge.drivers._serial import open_serial, read_bytes, serial_present, write_bytes
from edge.errors import DeviceUnavailable, NakhonError

HEADER: Final = b"\x42\x4d"
DATA_LENGTH: Final = 28
"""The length field of a data frame: 13 words and the checksum."""
ANSWER_LENGTH: Final = 4
"""The length field of the sensor's answer to a mode or sleep command: command, data, checksum."""
FRAME_SIZE: Final = 4 + DATA_LENGTH

COMMANDS: Final[dict[str, tuple[int, int]]] = {
    "passive": (0xE1, 0x00),
    "active": (0xE1, 0x01),
    "read": (0xE2, 0x00),
    "sleep": (0xE4, 0x00),
    "wake": (0xE4, 0x01),
}
"""Host commands by name: (command byte, data byte); the mode commands are named after the mode they set."""

_CHUNK = 64
_POLL_S = 0.1  # serial read timeout: how often a blocked read looks at close()
_PASSIVE_RETRY_S = 1.0  # a sensor that missed the read command is asked again


class BadFrame(NakhonError, ValueError):
    """Bytes that are not a valid data frame (header, length or checksum)."""


@dataclass(frozen=True)
class PmsFrame:
    """One data frame; the fields are the frame's 13 words in order.

    Concentrations are in ug/m3 ("cf1" = factory calibration particles; the others are "atmospheric", the ones
    to use for ambient air); particle counts are per 0.1 L of air, above the named diameter.
    """

    pm1_0_cf1: int
    pm2_5_cf1: int
    pm10_cf1: int
    pm1_0: int
    pm2_5: int
    pm10: int
    particles_0_3um: int
    particles_0_5um: int
    particles_1_0um: int
    particles_2_5um: int
    particles_5_0um: int
    particles_10um: int
    reserved: int


def checksum(data: bytes) -> int:
    """The protocol's checksum: the 16-bit sum of the bytes."""
    return sum(data) & 0xFFFF


def command(name: str) -> bytes:
    """The 7 bytes of a host command of :data:`COMMANDS`."""
    cmd, data = COMMANDS[name]
    body = HEADER + bytes((cmd, 0x00, data))
    return body + checksum(body).to_bytes(2, "big")


def encode_frame(frame: PmsFrame, *, corrupt: bool = False) -> bytes:
    """The 32 bytes the sensor sends for ``frame``; ``corrupt`` spoils the checksum (for simulators and tests)."""
    body = HEADER + DATA_LENGTH.to_bytes(2, "big") + b"".join(w.to_bytes(2, "big") for w in astuple(frame))
    return body + ((checksum(body) ^ (0x0101 if corrupt else 0)).to_bytes(2, "big"))


def _checksum_ok(frame: bytes) -> bool:
    return checksum(frame[:-2]) == int.from_bytes(frame[-2:], "big")


def parse_frame(frame: bytes) -> PmsFrame:
    """Decode one 32-byte data frame; raise :class:`BadFrame` when its header, length or checksum is wrong."""
    if frame[:2] != HEADER:
        raise BadFrame(f"a frame starts with 42 4D, got {frame[:2].hex(' ').upper()}")
    length = int.from_bytes(frame[2:4], "big")
    if length != DATA_LENGTH:
        raise BadFrame(f"a data frame has length {DATA_LENGTH}, got {length}")
    if len(frame) != FRAME_SIZE:
        raise BadFrame(f"a data frame has {FRAME_SIZE} bytes, got {len(frame)}")
    if not _checksum_ok(frame):
        raise BadFrame(f"checksum {frame[-2:].hex().upper()} != sum {checksum(frame[:-2]):04X}")
    words = [int.from_bytes(frame[i:i + 2], "big") for i in range(4, FRAME_SIZE - 2, 2)]
    return PmsFrame(*words)


def find_frames(buffer: bytes) -> tuple[list[PmsFrame], bytes, int]:
    """Scan a byte stream for data frames: (frames found, bytes to keep for the next scan, bad frames skipped).

    Bytes before a ``42 4D`` header are garbage and dropped. A header with a length other than 28 (data) or
    4 (the answer to a command) or a frame with a wrong checksum counts as one bad frame, and the scan
    resumes just after that header, so a real frame hidden in a broken one is still found. Command answers
    are valid and skipped.
    """
    frames: list[PmsFrame] = []
    bad = 0
    at = 0
    while True:
        start = buffer.find(HEADER, at)
        if start < 0:
            # a final 0x42 may be the first half of the next header
            return frames, buffer[-1:] if buffer.endswith(HEADER[:1]) else b"", bad
        if len(buffer) - start < 4:
            return frames, buffer[start:], bad
        length = int.from_bytes(buffer[start + 2:start + 4], "big")
        if length not in (DATA_LENGTH, ANSWER_LENGTH):
            bad += 1
            at = start + 1
            continue
        end = start + 4 + length
        if len(buffer) < end:
            return frames, buffer[start:], bad
        candidate = buffer[start:end]
        if not _checksum_ok(candidate):
            bad += 1
            at = start + 1
            continue
        if length == DATA_LENGTH:
            frames.append(parse_frame(candidate))
        at = end


class Config(DriverConfig):
    """A PMS5003 or PMS7003 on a serial port."""

    kind: Literal["pms5003"] = "pms5003"
    port: str = "/dev/serial0"
    baudrate: Literal[9600] = 9600
    mode: Literal["active", "passive"] = "active"
    read_timeout_s: Annotated[float, PydanticField(gt=0, le=60)] = 5.0
    sleep_between_reads: bool = False
    warmup_s: Annotated[float, PydanticField(ge=0, le=300)] = 30.0

    @model_validator(mode="after")
    def _sleep_needs_a_long_interval(self) -> Self:
        if self.sleep_between_reads and self.interval_s < 2 * self.warmup_s:
            raise ValueError(f"sleep_between_reads needs interval_s ({self.interval_s:g}) of at least twice "
                             f"warmup_s ({self.warmup_s:g}): the fan would barely sleep; raise interval_s or "
                             f"set sleep_between_reads = false")
        return self

    def claims(self) -> set[str]:
        """The serial port."""
        return {f"serial:{self.port}"}


SAMPLE_CONFIG = {"kind": "pms5003", "name": "pm", "interval_s": 10, "port": "/dev/serial0", "mode": "active"}

_CONCENTRATION = "ug/m3"
_COUNT = "1/0.1L"
_FRAME_FIELDS: tuple[Field, ...] = (
    Field("pm1_0", _CONCENTRATION, float, "PM1.0, atmospheric"),
    Field("pm2_5", _CONCENTRATION, float, "PM2.5, atmospheric; Thai 24 h limit 37.5"),
    Field("pm10", _CONCENTRATION, float, "PM10, atmospheric"),
    Field("particles_0_3um", _COUNT, int, "particles above 0.3 um in 0.1 L of air"),
    Field("particles_0_5um", _COUNT, int, "particles above 0.5 um in 0.1 L of air"),
    Field("particles_1_0um", _COUNT, int, "particles above 1.0 um in 0.1 L of air"),
    Field("particles_2_5um", _COUNT, int, "particles above 2.5 um in 0.1 L of air"),
    Field("particles_5_0um", _COUNT, int, "particles above 5 um in 0.1 L of air"),
    Field("particles_10um", _COUNT, int, "particles above 10 um in 0.1 L of air"),
)
TELEMETRY: tuple[Field, ...] = (
    *_FRAME_FIELDS,
    Field("frames_rejected", None, int, "frames dropped for a bad length or checksum while taking this reading"),
)


class Driver:
    """Reads one fresh frame per read, in active or passive mode, optionally sleeping the fan in between.

    With ``sleep_between_reads`` the sensor is put to sleep after each reading and a timer wakes it
    ``warmup_s`` before the next one is due (``interval_s`` after this one); a read that comes earlier
    wakes it itself and waits out the warm-up, so no reading is ever taken from a fan that is spinning up.
    """

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        self._what = f"{config.name} (PMS5003 on {config.port})"
        self._port: serial.SerialBase | None = None
        self._buffer = b""
        self._lock = threading.Lock()  # the port is shared by read() and the wake timer
        self._closing = threading.Event()
        self._wake_timer: threading.Timer | None = None
        self._awake_since: float | None = None  # time.monotonic() of the last wake; None while asleep

    def open(self) -> None:
        """Open the port, wake the sensor (a previous run may have left it asleep) and set its mode."""
        if self._port is not None:
            return
        self._closing.clear()
        port = open_serial(self._config.port, baudrate=self._config.baudrate, timeout=_POLL_S, what=self._what)
        self._port = port
        self._buffer = b""
        write_bytes(port, command("wake"), self._what)
        # without sleep_between_reads the sensor is taken as warm: it normally never sleeps
        self._awake_since = time.monotonic() if self._config.sleep_between_reads else float("-inf")
        write_bytes(port, command(self._config.mode), self._what)

    def read(self) -> dict[str, Scalar]:
        """One fresh frame's values; :class:`DeviceUnavailable` when no valid frame comes within the timeout."""
        self._cancel_wake_timer()
        with self._lock:
            port = self._port
            if port is None:
                raise DeviceUnavailable(f"{self._what}: sensor is not open")
            if self._config.sleep_between_reads:
                self._warm_up(port)
            frame, rejected = self._next_frame(port)
            if self._config.sleep_between_reads:
                write_bytes(port, command("sleep"), self._what)
                self._awake_since = None
                self._schedule_wake()
        values: dict[str, Scalar] = {f.quantity: f.type(getattr(frame, f.quantity)) for f in _FRAME_FIELDS}
        values["frames_rejected"] = rejected
        return values

    def close(self) -> None:
        """Stop the wake timer and close the port; safe to call twice or after a failed open."""
        self._closing.set()
        with self._lock:  # waits for a read in progress, which sees _closing within _POLL_S
            port, self._port = self._port, None
            self._awake_since = None
            if port is not None:
                with contextlib.suppress(serial.SerialException, OSError):  # nothing left to do with a dead port
                    port.close()
        self._cancel_wake_timer()  # after the lock: that read may just have scheduled one

    def _warm_up(self, port: serial.SerialBase) -> None:
        if self._awake_since is None:
            write_bytes(port, command("wake"), self._what)
            self._awake_since = time.monotonic()
        remaining = self._awake_since + self._config.warmup_s - time.monotonic()
        if remaining > 0 and self._closing.wait(remaining):
            raise DeviceUnavailable(f"{self._what}: closed while the fan was warming up")

    def _next_frame(self, port: serial.SerialBase) -> tuple[PmsFrame, int]:
        """The first valid frame that arrives from now on, and how many bad frames came before it."""
        self._discard_input(port)
        deadline = time.monotonic() + self._config.read_timeout_s
        next_request = 0.0
        rejected = 0
        while True:
            now = time.monotonic()
            if self._config.mode == "passive" and now >= next_request:
                write_bytes(port, command("read"), self._what)
                next_request = now + _PASSIVE_RETRY_S
            self._buffer += read_bytes(port, _CHUNK, self._what)
            frames, self._buffer, bad = find_frames(self._buffer)
            rejected += bad
            if frames:
                return frames[-1], rejected
            if bad:
                next_request = 0.0  # a spoilt answer: ask again at once
            if self._closing.is_set():
                raise DeviceUnavailable(f"{self._what}: closed during a read")
            if time.monotonic() >= deadline:
                raise DeviceUnavailable(f"{self._what}: no valid frame within {self._config.read_timeout_s:g} s "
                                        f"({rejected} bad frame(s) skipped); check the wiring and the 5 V supply")

    def _discard_input(self, port: serial.SerialBase) -> None:
        # frames queued since the last read (or measured while the fan was spinning up) are stale
        self._buffer = b""
        while len(read_bytes(port, 4096, self._what)) == 4096:
            pass

    def _schedule_wake(self) -> None:
        timer = threading.Timer(self._config.interval_s - self._config.warmup_s, self._wake_on_time)
        timer.name = f"pms5003-wake-{self._config.name}"
        timer.daemon = True
        self._wake_timer = timer
        timer.start()

    def _cancel_wake_timer(self) -> None:
        timer, self._wake_timer = self._wake_timer, None
        if timer is not None:
            timer.cancel()
            timer.join()

    def _wake_on_time(self) -> None:
        with self._lock:
            if self._port is None or self._awake_since is not None or self._closing.is_set():
                return
            try:
                write_bytes(self._port, command("wake"), self._what)
            except DeviceUnavailable:
                return  # the next read wakes the sensor itself and reports the failure
            self._awake_since = time.monotonic()


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated PMS5003 on a pseudo-terminal and point the driver at it."""
    from edge.drivers._pms5003_sim import PmsSensor

    with PmsSensor() as sensor:
        yield config.model_copy(update={"port": sensor.path})


def present(config: Config) -> Presence:
    """Whether the serial port is there (``nakhon agent check --connect``)."""
    return serial_present(config.port)
