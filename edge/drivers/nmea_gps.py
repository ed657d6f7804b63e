"""GPS receiver on a bus (u-blox NEO-6M / NEO-M8 style): NMEA 0183 over a serial port, read on a schedule.

Each :meth:`Driver.read` drains the sentences that arrived since the previous read, then waits for one fresh
epoch (the RMC and GGA the receiver sends every second) and reports the latest fix. The driver is also a clock
source: the time of the latest valid RMC and the ``time.monotonic()`` at which it arrived.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from typing import Annotated, ClassVar, Literal

import pynmea2
import serial
from pydantic import Field as PydanticField
from pydantic import StringConstraints

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field, Presence
from edge.drivers._nmea_gps_sim import BusGps
from edge.drivers._serial import open_serial, read_bytes, serial_present
from edge.errors import DeviceUnavailable, NakhonError

KNOT_KMH = 1.852
MOVING_KMH = 2.0
"""Below this speed the course over ground is receiver noise, so no heading is reported."""
POLL_S = 0.1
"""Longest a single serial read blocks, so a read() overshoots its deadline by at most this."""
MAX_LINE = 256
"""NMEA allows 82 characters; a longer run without a line end is noise (a wrong baud rate) and is dropped."""

HEMISPHERE_SIGN: dict[str, int] = {"N": 1, "S": -1, "E": 1, "W": -1}
RMC_STATUS: dict[str, bool] = {"A": True, "V": False}
RMC_MODE_QUALITY: dict[str, int] = {"N": 0, "A": 1, "P": 1, "D": 2, "R": 4, "F": 5, "E": 6, "M": 7, "S": 8}
"""The RMC mode indicator (NMEA 2.3+) as the GGA fix quality it stands for."""

DECIMALS: dict[str, int] = {"latitude": 6, "longitude": 6, "altitude": 1, "speed": 1, "heading": 1}
"""Published precision: 6 decimals of a degree are 0.1 m, finer than any receiver on a bus."""

_TIME_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\.\d+)?$")
_DATE_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})$")
_COORDINATE_RE = {"lat": re.compile(r"^(\d{2})(\d{2}\.\d+)$"), "lon": re.compile(r"^(\d{3})(\d{2}\.\d+)$")}
_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")
_INTEGER_RE = re.compile(r"^\d+$")

VehicleLabel = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Config(DriverConfig):
    """A GPS receiver on a serial port; ``vehicle_id`` and ``route_id`` name the bus for the dashboard."""

    kind: Literal["nmea_gps"] = "nmea_gps"
    port: str = "/dev/serial0"
    baudrate: Literal[4800, 9600, 19200, 38400, 57600, 115200] = 9600
    read_timeout_s: Annotated[float, PydanticField(gt=0, le=60)] = 2.0
    vehicle_id: VehicleLabel | None = None
    route_id: VehicleLabel | None = None

    def claims(self) -> set[str]:
        """The serial port."""
        return {f"serial:{self.port}"}


SAMPLE_CONFIG = {"kind": "nmea_gps", "name": "gps", "interval_s": 5, "port": "/dev/serial0", "baudrate": 9600,
                 "read_timeout_s": 2.0, "vehicle_id": "kk-bus-07", "route_id": "8"}

TELEMETRY: tuple[Field, ...] = (
    Field("fix", None, bool, "true when the receiver has a position (RMC status A, GGA quality 1 or more)"),
    Field("fix_quality", None, int, "GGA fix quality: 0 none, 1 GPS, 2 DGPS/SBAS, 4 RTK, 5 RTK float, 6 estimated"),
    Field("satellites", None, int, "satellites used in the solution (GGA)"),
    Field("latitude", "deg", float, "WGS 84 latitude, only with a fix"),
    Field("longitude", "deg", float, "WGS 84 longitude, only with a fix"),
    Field("altitude", "m", float, "antenna height above mean sea level (GGA), only with a fix"),
    Field("speed", "km/h", float, "speed over ground (RMC knots x 1.852), only with a fix"),
    Field("heading", "deg", float, "course over ground from true north, only when moving"),
    Field("bad_sentences", None, int, "lines dropped during this read: wrong or missing checksum, or not NMEA"),
)


class BadSentence(NakhonError, ValueError):
    """A line that is not a usable NMEA sentence."""


class ChecksumMismatch(BadSentence):
    """A sentence whose ``*hh`` checksum is wrong or missing (line noise, a loose wire)."""


@dataclass(frozen=True)
class Fix:
    """What the receiver knows after the sentences so far; attribute names are the published quantities."""

    fix: bool = False
    fix_quality: int = 0
    satellites: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    speed: float | None = None
    heading: float | None = None

    def quantities(self) -> dict[str, Scalar]:
        """The fix as readings; what the receiver did not report is left out."""
        return {quantity: round(value, DECIMALS[quantity]) if quantity in DECIMALS else value
                for quantity, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Rmc:
    """Recommended minimum data: time, date, status, position, speed and course."""

    talker: str
    time: time_of_day | None
    date: date | None
    valid: bool
    quality: int | None
    latitude: float | None
    longitude: float | None
    speed_kmh: float | None
    course: float | None

    @property
    def utc(self) -> datetime | None:
        """Date and time together, or None when the receiver does not know them yet."""
        if self.time is None or self.date is None:
            return None
        return datetime.combine(self.date, self.time)

    def apply(self, fix: Fix) -> Fix:
        """The fix as this sentence leaves it."""
        if not self.valid:
            return Fix(satellites=fix.satellites)  # no fix: only the satellite count still means something
        moving = self.speed_kmh is not None and self.speed_kmh >= MOVING_KMH
        return replace(fix, fix=True, fix_quality=self.quality or fix.fix_quality or 1,
                       latitude=self.latitude, longitude=self.longitude, speed=self.speed_kmh,
                       heading=self.course if moving else None)


@dataclass(frozen=True)
class Gga:
    """Fix data: time, position, fix quality, satellites and altitude."""

    talker: str
    time: time_of_day | None
    quality: int
    satellites: int | None
    latitude: float | None
    longitude: float | None
    altitude: float | None

    def apply(self, fix: Fix) -> Fix:
        """The fix as this sentence leaves it."""
        if self.quality == 0 or self.latitude is None or self.longitude is None:
            return Fix(satellites=self.satellites)
        return replace(fix, fix=True, fix_quality=self.quality, satellites=self.satellites,
                       latitude=self.latitude, longitude=self.longitude, altitude=self.altitude)


Sentence = Rmc | Gga


class FixAccumulator:
    """Merges RMC and GGA sentences, in the order they arrived, into the latest :class:`Fix`.

    Every sentence says whether there is a fix, so the newest one wins when an epoch is only half read.
    """

    def __init__(self) -> None:
        self.fix: Fix | None = None

    def add(self, sentence: Sentence) -> Fix:
        """Merge one sentence; return the fix it leaves."""
        self.fix = sentence.apply(self.fix or Fix())
        return self.fix


def _number(value: str, what: str) -> float | None:
    if value == "":
        return None
    if not _NUMBER_RE.match(value):
        raise BadSentence(f"{what} {value!r} is not a number")
    return float(value)


def _integer(value: str, what: str) -> int | None:
    if value == "":
        return None
    if not _INTEGER_RE.match(value):
        raise BadSentence(f"{what} {value!r} is not a whole number")
    return int(value)


def _time(value: str) -> time_of_day | None:
    if value == "":
        return None
    match = _TIME_RE.match(value)
    if not match:
        raise BadSentence(f"time {value!r} is not hhmmss.ss")
    hour, minute, second = (int(g) for g in match.groups()[:3])
    fraction = float(match.group(4) or 0)
    if hour > 23 or minute > 59 or second > 60:
        raise BadSentence(f"time {value!r} is out of range")
    # a leap second (60) is held at the end of the minute: datetime cannot name it
    micro = 999_999 if second == 60 else min(999_999, round(fraction * 1_000_000))
    return time_of_day(hour, minute, min(second, 59), micro, tzinfo=UTC)


def _date(value: str) -> date | None:
    if value == "":
        return None
    match = _DATE_RE.match(value)
    if not match:
        raise BadSentence(f"date {value!r} is not ddmmyy")
    day, month, year = (int(g) for g in match.groups())
    try:
        return date(2000 + year, month, day)
    except ValueError as err:
        raise BadSentence(f"date {value!r}: {err}") from err


def _coordinate(value: str, hemisphere: str, axis: Literal["lat", "lon"]) -> float | None:
    if value == "":
        return None
    match = _COORDINATE_RE[axis].match(value)
    sign = HEMISPHERE_SIGN.get(hemisphere)
    if not match or sign is None:
        raise BadSentence(f"{axis} {value!r},{hemisphere!r} is not ddmm.mmmm with a hemisphere")
    degrees, minutes = int(match.group(1)), float(match.group(2))
    if minutes >= 60 or degrees + minutes / 60 > (90 if axis == "lat" else 180):
        raise BadSentence(f"{axis} {value!r} is out of range")
    return sign * (degrees + minutes / 60)


def _field(msg: pynmea2.TalkerSentence, name: str) -> str:
    """The raw text of a named field ('' when the sentence is shorter): pynmea2's own conversions hide errors."""
    index: int = msg.name_to_idx[name]
    return str(msg.data[index]) if index < len(msg.data) else ""


def _rmc(msg: pynmea2.TalkerSentence) -> Rmc:
    status = RMC_STATUS.get(_field(msg, "status"))
    if status is None:
        raise BadSentence(f"RMC status {_field(msg, 'status')!r} is neither A nor V")
    mode = _field(msg, "mode_indicator")
    quality = RMC_MODE_QUALITY.get(mode) if mode else None
    if mode and quality is None:
        raise BadSentence(f"RMC mode indicator {mode!r} is unknown")
    latitude = _coordinate(_field(msg, "lat"), _field(msg, "lat_dir"), "lat")
    longitude = _coordinate(_field(msg, "lon"), _field(msg, "lon_dir"), "lon")
    knots = _number(_field(msg, "spd_over_grnd"), "speed")
    valid = status and quality != 0 and latitude is not None and longitude is not None
    return Rmc(talker=msg.talker, time=_time(_field(msg, "timestamp")), date=_date(_field(msg, "datestamp")),
               valid=valid, quality=quality, latitude=latitude, longitude=longitude,
               speed_kmh=None if knots is None else knots * KNOT_KMH,
               course=_number(_field(msg, "true_course"), "course"))


def _gga(msg: pynmea2.TalkerSentence) -> Gga:
    return Gga(talker=msg.talker, time=_time(_field(msg, "timestamp")),
               quality=_integer(_field(msg, "gps_qual"), "fix quality") or 0,
               satellites=_integer(_field(msg, "num_sats"), "satellites"),
               latitude=_coordinate(_field(msg, "lat"), _field(msg, "lat_dir"), "lat"),
               longitude=_coordinate(_field(msg, "lon"), _field(msg, "lon_dir"), "lon"),
               altitude=_number(_field(msg, "altitude"), "altitude"))


_READERS: dict[str, Callable[[pynmea2.TalkerSentence], Sentence]] = {"RMC": _rmc, "GGA": _gga}
"""Sentence type -> how to read it; every other type is well-formed noise to this driver (VTG, GSA, GSV, TXT...)."""


def parse_sentence(line: str) -> Sentence | None:
    """Read one NMEA line: an :class:`Rmc` or :class:`Gga`, or None for a valid sentence of another type.

    Raises :class:`ChecksumMismatch` when the ``*hh`` checksum is wrong or missing and :class:`BadSentence`
    for anything else that is not NMEA. Any talker is accepted (``GP`` GPS only, ``GN`` multi-GNSS...).
    """
    line = line.strip()
    if not line.startswith("$") or not line.isascii():
        raise BadSentence(f"not an NMEA sentence: {line[:40]!r}")
    try:
        msg = pynmea2.parse(line, check=True)
    except pynmea2.ChecksumError as err:
        raise ChecksumMismatch(f"bad checksum: {line[:40]!r}") from err
    except pynmea2.SentenceTypeError:
        return None  # checksum good, a type pynmea2 does not know
    except pynmea2.ParseError as err:
        raise BadSentence(f"not an NMEA sentence: {line[:40]!r}") from err
    if not isinstance(msg, pynmea2.TalkerSentence):
        return None  # proprietary ($PUBX...) or query sentences
    reader = _READERS.get(msg.sentence_type)
    return reader(msg) if reader else None


@dataclass
class _Epoch:
    """The fresh RMC and GGA heard during one read; complete when both carry the same time."""

    rmc: Rmc | None = None
    gga: Gga | None = None

    def add(self, sentence: Sentence) -> None:
        if isinstance(sentence, Rmc):
            self.rmc = sentence
        else:
            self.gga = sentence

    @property
    def heard(self) -> bool:
        return self.rmc is not None or self.gga is not None

    @property
    def complete(self) -> bool:
        return self.rmc is not None and self.gga is not None and self.rmc.time == self.gga.time


class Driver:
    """Reads the latest fix from a GPS receiver; also offers the GPS time as a clock."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        bus = f" on bus {config.vehicle_id}" if config.vehicle_id else ""
        self._what = f"GPS {config.name}{bus} ({config.port})"
        self._port: serial.SerialBase | None = None
        self._pending = b""
        self._synced = False
        self._fix = FixAccumulator()
        self._bad = 0
        self._others = 0
        self._offer: tuple[datetime, float] | None = None

    def open(self) -> None:
        """Open the serial port (pyserial empties its input buffer: nothing stale is read)."""
        if self._port is not None:
            return
        self._port = open_serial(self._config.port, baudrate=self._config.baudrate, timeout=POLL_S,
                                 what=self._what, exclusive=True)
        self._pending, self._synced, self._fix = b"", False, FixAccumulator()

    def read(self) -> dict[str, Scalar]:
        """Drain what arrived since the last read, wait for one fresh epoch, report the latest fix.

        Raises :class:`DeviceUnavailable` when no valid RMC or GGA arrives within ``read_timeout_s``.
        """
        port = self._port
        if port is None:
            raise DeviceUnavailable(f"{self._what}: port is not open")
        self._bad = 0
        deadline = time.monotonic() + self._config.read_timeout_s
        backlog = self._waiting(port)
        if backlog:  # its arrival times are unknown: it updates the fix but never the clock
            self._take(read_bytes(port, backlog, self._what))
        backlog_bad, self._others = self._bad, 0
        epoch = _Epoch()
        while not epoch.complete and time.monotonic() < deadline:
            data = read_bytes(port, max(1, self._waiting(port)), self._what)
            arrived = time.monotonic()
            for sentence in self._take(data):
                epoch.add(sentence)
                if isinstance(sentence, Rmc) and sentence.valid and sentence.utc is not None:
                    self._offer = (sentence.utc, arrived)
        fix = self._fix.fix
        if not epoch.heard or fix is None:
            raise DeviceUnavailable(f"{self._what}: no valid RMC or GGA in {self._config.read_timeout_s:g} s, "
                                    f"{self._diagnosis(self._bad - backlog_bad)}")
        return {**fix.quantities(), "bad_sentences": self._bad}

    def time_offer(self) -> tuple[datetime, float] | None:
        """The UTC time of the latest valid RMC and the ``time.monotonic()`` at which it arrived."""
        return self._offer

    def close(self) -> None:
        """Close the serial port; safe to call twice."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):  # the device may already be gone
                port.close()

    def _diagnosis(self, unreadable: int) -> str:
        """What to check when a read heard no valid RMC or GGA."""
        if unreadable:
            return f"{unreadable} unreadable line(s): check the baud rate ({self._config.baudrate}) and the wiring"
        if self._others:
            return f"{self._others} other sentence(s): turn RMC and GGA output on in the receiver"
        return "silent: check the receiver's power, its TX wire and the port"

    def _waiting(self, port: serial.SerialBase) -> int:
        try:
            waiting: int = port.in_waiting
        except (serial.SerialException, OSError) as err:
            raise DeviceUnavailable(f"{self._what}: serial port failed: {err}") from err
        return waiting

    def _take(self, data: bytes) -> list[Sentence]:
        """Split received bytes into sentences and merge each into the fix; count and skip the bad lines."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        if not self._synced and lines:
            # the port was opened in the middle of a sentence: its tail is not a bad line
            lines, self._synced = lines[1:], True
        if len(self._pending) > MAX_LINE:
            self._pending, self._bad = b"", self._bad + 1
        taken: list[Sentence] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                sentence = parse_sentence(raw.decode("ascii", errors="replace"))
            except BadSentence:
                self._bad += 1
                continue
            if sentence is None:
                self._others += 1
                continue
            self._fix.add(sentence)
            taken.append(sentence)
        return taken


@contextlib.contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated receiver on a bus looping through Khon Kaen; yield the config pointing at its pty."""
    with BusGps(baudrate=config.baudrate, corrupt_rate=0.002) as device:
        yield config.model_copy(update={"port": device.path})


def present(config: Config) -> Presence:
    """Whether the serial port is there (``nakhon agent check --connect``)."""
    return serial_present(config.port)
