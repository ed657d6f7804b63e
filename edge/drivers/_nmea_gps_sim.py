"""Simulated GPS receiver on a city bus looping through Khon Kaen, talking NMEA 0183 on a pty.

It simulates behaviour and time, not canned values: the bus follows a route of waypoints with a trapezoidal
speed profile (pulling away, cruising at 25-50 km/h, braking for stops and lights), and the receiver has a cold
start, loses its fix under the elevated railway, sees fewer satellites between tall buildings, now and then
garbles a sentence on the wire, and can go silent. Epochs fall on the whole seconds (or fractions, at a faster
rate) of the simulator's own clock, which may differ from the system clock as a real GPS's does.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from edge.drivers._serial import PtyDevice

ACCEL = 0.8
"""m/s^2: a loaded city bus pulling away."""
DECEL = 1.0
"""m/s^2: braking for a stop without throwing standing passengers."""
KNOT_KMH = 1.852
OUTPUT_DELAY_S = 0.05
"""The receiver starts sending an epoch's sentences this long after the epoch's instant."""
REACQUIRE_S = 2.0
"""After the sky comes back, a warm receiver needs about this long to fix again."""
GEOID_SEPARATION_M = -27.9
"""EGM96 geoid height around Khon Kaen, as a u-blox reports it in GGA."""
SATELLITE_PRNS = (2, 5, 7, 10, 13, 15, 18, 20, 23, 26, 29, 30)


@dataclass(frozen=True)
class Waypoint:
    """A point on the route; ``dwell_s`` > 0 makes it a stop (a bus stop or a red light)."""

    name: str
    lat: float
    lon: float
    dwell_s: float = 0.0
    cruise_kmh: float = 35.0
    """Cruising speed from this stop to the next one (only read on stops)."""


@dataclass(frozen=True)
class Shadow:
    """A place where the sky is hidden: under an ``overpass`` the fix is lost, in a ``canyon`` satellites are."""

    name: str
    lat: float
    lon: float
    radius_m: float
    kind: Literal["overpass", "canyon"]


KHON_KAEN_LOOP: tuple[Waypoint, ...] = (
    Waypoint("Mittraphap Rd at Srichan Rd (lights)", 16.43345, 102.81590, dwell_s=25, cruise_kmh=35),
    Waypoint("Srichan Rd under the elevated railway", 16.43305, 102.82330),
    Waypoint("CentralPlaza Khon Kaen stop, Srichan Rd", 16.43275, 102.82575, dwell_s=30, cruise_kmh=40),
    Waypoint("Srichan Rd at Na Mueang Rd (lights)", 16.43225, 102.83545, dwell_s=20, cruise_kmh=40),
    Waypoint("Na Mueang Rd, south", 16.42310, 102.83580),
    Waypoint("Bueng Kaen Nakhon, north shore stop", 16.41930, 102.83470, dwell_s=25, cruise_kmh=25),
    Waypoint("Bueng Kaen Nakhon, east shore", 16.41380, 102.83930),
    Waypoint("Wat Nong Wang stop, south shore", 16.40640, 102.83620, dwell_s=30, cruise_kmh=25),
    Waypoint("Bueng Kaen Nakhon, west shore", 16.41270, 102.82990),
    Waypoint("Lake road under the elevated railway", 16.41255, 102.82250),
    Waypoint("Mittraphap Rd at the lake road (lights)", 16.41240, 102.81900, dwell_s=35, cruise_kmh=50),
    Waypoint("Mittraphap Rd, north", 16.42300, 102.81740),
)
"""A city bus loop (about 10 km, 25 minutes): Mittraphap Rd, Srichan Rd, Na Mueang Rd, round Bueng Kaen Nakhon."""

KHON_KAEN_SHADOWS: tuple[Shadow, ...] = (
    Shadow("elevated railway over Srichan Rd", 16.43305, 102.82330, 18.0, "overpass"),
    Shadow("elevated railway over the lake road", 16.41255, 102.82250, 18.0, "overpass"),
    Shadow("CentralPlaza and the hotels on Srichan Rd", 16.43275, 102.82575, 160.0, "canyon"),
)


@dataclass(frozen=True)
class Motion:
    """Where the bus is and how it moves at one instant."""

    lat: float
    lon: float
    speed_kmh: float
    course: float


class _Flat:
    """Metres east/north of an origin: plenty exact over a city."""

    def __init__(self, lat0: float, lon0: float) -> None:
        phi = math.radians(lat0)
        self.lat0, self.lon0 = lat0, lon0
        self.m_per_lat = 111_132.954 - 559.822 * math.cos(2 * phi)
        self.m_per_lon = 111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.m_per_lon, (lat - self.lat0) * self.m_per_lat

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        return self.lat0 + y / self.m_per_lat, self.lon0 + x / self.m_per_lon


@dataclass(frozen=True)
class _Phase:
    """A dwell at a stop (no length) or a run between stops with a trapezoidal speed profile."""

    start_s: float
    s0: float
    length_m: float
    t_acc: float
    t_cruise: float
    t_dec: float
    v_peak: float

    @classmethod
    def dwell(cls, start_s: float, s0: float, dwell_s: float) -> _Phase:
        return cls(start_s, s0, 0.0, 0.0, dwell_s, 0.0, 0.0)

    @classmethod
    def run(cls, start_s: float, s0: float, length_m: float, cruise_kmh: float) -> _Phase:
        v = cruise_kmh / 3.6
        if v * v / (2 * ACCEL) + v * v / (2 * DECEL) > length_m:
            v = math.sqrt(2 * length_m * ACCEL * DECEL / (ACCEL + DECEL))  # too short to reach cruising speed
        t_cruise = (length_m - v * v / (2 * ACCEL) - v * v / (2 * DECEL)) / v
        return cls(start_s, s0, length_m, v / ACCEL, max(0.0, t_cruise), v / DECEL, v)

    @property
    def duration_s(self) -> float:
        return self.t_acc + self.t_cruise + self.t_dec

    def progress(self, tau: float) -> tuple[float, float]:
        """Distance from the phase's start (m) and speed (m/s) ``tau`` seconds into it."""
        if tau < self.t_acc:
            return 0.5 * ACCEL * tau * tau, ACCEL * tau
        if tau < self.t_acc + self.t_cruise:
            return 0.5 * self.v_peak * self.t_acc + self.v_peak * (tau - self.t_acc), self.v_peak
        left = max(0.0, self.duration_s - tau)
        return self.length_m - 0.5 * DECEL * left * left, DECEL * left


class Route:
    """A closed bus route: where the bus is ``t`` seconds after leaving its first stop, lap after lap."""

    def __init__(self, waypoints: Sequence[Waypoint]) -> None:
        if not waypoints or waypoints[0].dwell_s <= 0:
            raise ValueError("a route starts at a stop")
        self.waypoints = tuple(waypoints)
        self._flat = _Flat(waypoints[0].lat, waypoints[0].lon)
        self._xy = [self._flat.to_xy(w.lat, w.lon) for w in waypoints]
        self._cum = [0.0]
        for i in range(len(waypoints)):
            (x0, y0), (x1, y1) = self._xy[i], self._xy[(i + 1) % len(waypoints)]
            self._cum.append(self._cum[-1] + math.hypot(x1 - x0, y1 - y0))
        self.length_m = self._cum[-1]
        stops = [i for i, w in enumerate(waypoints) if w.dwell_s > 0]
        self._phases: list[_Phase] = []
        t = 0.0
        for k, stop in enumerate(stops):
            end = self._cum[stops[k + 1]] if k + 1 < len(stops) else self.length_m
            for phase in (_Phase.dwell(t, self._cum[stop], waypoints[stop].dwell_s),
                          _Phase.run(t + waypoints[stop].dwell_s, self._cum[stop], end - self._cum[stop],
                                     waypoints[stop].cruise_kmh)):
                self._phases.append(phase)
                t += phase.duration_s
        self.period_s = t
        self._starts = [p.start_s for p in self._phases]

    def at(self, t: float) -> Motion:
        """The bus's position, speed and course ``t`` seconds into the route (it loops)."""
        t %= self.period_s
        phase = self._phases[bisect.bisect_right(self._starts, t) - 1]
        along, speed = phase.progress(t - phase.start_s)
        s = phase.s0 + along
        if speed == 0 and s == 0:
            s = self.length_m  # standing at the first stop is standing at the end of the loop's last leg
        # standing at a stop, the bus is at the end of the leg it arrived on and holds that course
        leg = (bisect.bisect_left(self._cum, s) if speed == 0 else bisect.bisect_right(self._cum, s)) - 1
        leg = min(max(leg, 0), len(self.waypoints) - 1)
        (x0, y0), (x1, y1) = self._xy[leg], self._xy[(leg + 1) % len(self.waypoints)]
        frac = (s - self._cum[leg]) / (self._cum[leg + 1] - self._cum[leg])
        lat, lon = self._flat.to_latlon(x0 + (x1 - x0) * frac, y0 + (y1 - y0) * frac)
        course = math.degrees(math.atan2(x1 - x0, y1 - y0)) % 360
        return Motion(lat, lon, speed * 3.6, course)

    def arrival_s(self, name: str) -> float:
        """When (seconds into the route) the bus first reaches the waypoint called ``name``."""
        index = next(i for i, w in enumerate(self.waypoints) if w.name == name)
        target = self._cum[index]
        for phase in self._phases:
            if phase.length_m == 0 and phase.s0 == target:
                return phase.start_s
            if phase.s0 < target < phase.s0 + phase.length_m:
                lo, hi = 0.0, phase.duration_s
                for _ in range(60):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if phase.s0 + phase.progress(mid)[0] < target else (lo, mid)
                return phase.start_s + lo
        raise ValueError(f"waypoint {name!r} is not on the route")

    def offset(self, lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
        """The point ``east_m`` and ``north_m`` metres away."""
        x, y = self._flat.to_xy(lat, lon)
        return self._flat.to_latlon(x + east_m, y + north_m)

    def distance_m(self, lat0: float, lon0: float, lat1: float, lon1: float) -> float:
        """Distance between two points of the city in metres."""
        (x0, y0), (x1, y1) = self._flat.to_xy(lat0, lon0), self._flat.to_xy(lat1, lon1)
        return math.hypot(x1 - x0, y1 - y0)


def sentence(body: str) -> bytes:
    """Frame an NMEA body (``GPRMC,...``) as ``$body*hh`` with CR LF."""
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _dm(value: float, width: int, hemispheres: str) -> tuple[str, str]:
    """Signed degrees as NMEA ``(d)ddmm.mmmmm`` and a hemisphere letter (u-blox prints 5 decimals)."""
    degrees, minutes = divmod(round(abs(value) * 60, 5), 60)
    return f"{int(degrees):0{width}d}{minutes:08.5f}", hemispheres[0] if value >= 0 else hemispheres[1]


class BusGps(PtyDevice):
    """A u-blox-like receiver on a bus following ``route``; the driver opens :attr:`path` like a serial port.

    ``rate_hz`` epochs per second (1 like a NEO-6M; more for fast tests), ``start_s`` where on the route the bus
    is when the simulator starts, ``time_scale`` how many route seconds pass per second of ``clock`` (the UTC
    clock of the receiver, :func:`time.time` unless a test gives another), ``cold_start_s`` how long until the
    first fix, ``corrupt_rate`` the share of sentences garbled on the wire.
    """

    def __init__(self, *, talker: Literal["GP", "GN"] = "GP", rate_hz: float = 1.0, baudrate: int = 9600,
                 start_s: float = 0.0, time_scale: float = 1.0, cold_start_s: float = 15.0,
                 corrupt_rate: float = 0.0, seed: int | None = None, clock: Callable[[], float] = time.time,
                 route: Sequence[Waypoint] = KHON_KAEN_LOOP, shadows: Sequence[Shadow] = KHON_KAEN_SHADOWS) -> None:
        super().__init__("nmea_gps")
        self.route = Route(route)
        self.shadows = tuple(shadows)
        self._talker = talker
        self._period = 1.0 / rate_hz
        self._baudrate = baudrate
        self._start_s = start_s
        self._time_scale = time_scale
        self._cold_start_s = cold_start_s
        self._corrupt_rate = corrupt_rate
        self._rng = random.Random(seed)
        self._clock = clock
        self._shadowed_at = -math.inf
        self._to_corrupt = 0
        self._muted_until = 0.0

    def now(self) -> datetime:
        """The receiver's own UTC time."""
        return datetime.fromtimestamp(self._clock(), UTC)

    def mute(self, seconds: float = math.inf) -> None:
        """Stop talking (power or antenna lost) for ``seconds``, or until :meth:`unmute`."""
        self._muted_until = time.monotonic() + seconds

    def unmute(self) -> None:
        """Talk again."""
        self._muted_until = 0.0

    def corrupt(self, count: int = 1) -> None:
        """Garble the next ``count`` sentences on the wire (their checksums stop matching)."""
        self._to_corrupt += count

    def serve(self) -> None:
        """Send an epoch of sentences at every epoch instant of the clock until stopped."""
        os.set_blocking(self._master, False)  # a UART never waits for the listener: unread bytes are lost
        started = self._clock()
        first = True
        while not self.stopping.is_set():
            now = self._clock()
            epoch = (math.floor(now / self._period) + 1) * self._period
            if self.stopping.wait(epoch - now + OUTPUT_DELAY_S):
                return
            if time.monotonic() < self._muted_until:
                continue
            since = (epoch - started) * self._time_scale
            lines = self._banner() if first else []
            first = False
            for line in lines + self._epoch(epoch, since):
                self._transmit(line)
                if self.stopping.wait(len(line) * 10 / self._baudrate):  # 8N1: ten bits a byte
                    return

    def _banner(self) -> list[bytes]:
        return [sentence(f"{self._talker}TXT,01,01,02,u-blox ag - www.u-blox.com"),
                sentence(f"{self._talker}TXT,01,01,02,ANTSTATUS=OK")]

    def _epoch(self, epoch: float, since: float) -> list[bytes]:
        """The sentences of one epoch, ``since`` route seconds after power-up."""
        motion = self.route.at(self._start_s + since)
        utc = datetime.fromtimestamp(epoch, UTC)
        hhmmss = f"{utc:%H%M%S}.{utc.microsecond // 10_000:02d}"
        ddmmyy = f"{utc:%d%m%y}"
        shadow = {s.kind for s in self.shadows
                  if self.route.distance_m(s.lat, s.lon, motion.lat, motion.lon) <= s.radius_m}
        if "overpass" in shadow:
            self._shadowed_at = since
        t = self._talker
        if since < self._cold_start_s:
            time_known = since >= self._cold_start_s / 2  # time comes from the first satellite, a fix later
            return self._no_fix(hhmmss if time_known else "", ddmmyy if time_known else "", self._rng.randint(0, 3))
        if since - self._shadowed_at < REACQUIRE_S:
            return self._no_fix(hhmmss, ddmmyy, self._rng.randint(0, 3))
        satellites = 9 + round(2 * math.sin(since / 170.0)) - (3 if "canyon" in shadow else 0)
        hdop = 0.6 + 5.0 / satellites + self._rng.uniform(0.0, 0.15)
        lat, lon = self.route.offset(motion.lat, motion.lon, self._rng.gauss(0, 1.0), self._rng.gauss(0, 1.0))
        moving = motion.speed_kmh > 0
        kmh = max(0.0, motion.speed_kmh + self._rng.gauss(0, 0.3)) if moving else abs(self._rng.gauss(0, 0.25))
        course = (motion.course + (self._rng.gauss(0, 0.8) if moving else 0.0)) % 360
        knots = kmh / KNOT_KMH
        altitude = 168.0 + 3.0 * math.sin(since / 400.0) + self._rng.gauss(0, 0.4)
        la, ns = _dm(lat, 2, "NS")
        lo, ew = _dm(lon, 3, "EW")
        prns = [f"{p:02d}" for p in SATELLITE_PRNS[:satellites]] + [""] * (12 - min(12, satellites))
        bodies = [
            f"{t}RMC,{hhmmss},A,{la},{ns},{lo},{ew},{knots:.3f},{course:.2f},{ddmmyy},,,A",
            f"{t}VTG,{course:.2f},T,,M,{knots:.3f},N,{kmh:.3f},K,A",
            f"{t}GGA,{hhmmss},{la},{ns},{lo},{ew},1,{satellites:02d},{hdop:.2f},{altitude:.1f},M,"
            f"{GEOID_SEPARATION_M:.1f},M,,",
            f"{t}GSA,A,3,{','.join(prns)},{hdop * 1.6:.2f},{hdop:.2f},{hdop * 1.3:.2f}",
            f"{t}GLL,{la},{ns},{lo},{ew},{hhmmss},A,A",
        ]
        return [self._wire(body) for body in bodies]

    def _no_fix(self, hhmmss: str, ddmmyy: str, satellites: int) -> list[bytes]:
        t = self._talker
        bodies = [
            f"{t}RMC,{hhmmss},V,,,,,,,{ddmmyy},,,N",
            f"{t}VTG,,,,,,,,,N",
            f"{t}GGA,{hhmmss},,,,,0,{satellites:02d},99.99,,,,,,",
            f"{t}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
            f"{t}GLL,,,,,{hhmmss},V,N",
        ]
        return [self._wire(body) for body in bodies]

    def _wire(self, body: str) -> bytes:
        """Frame a sentence; line noise may flip a digit after the checksum was computed."""
        framed = sentence(body)
        if self._to_corrupt > 0 or self._rng.random() < self._corrupt_rate:
            self._to_corrupt = max(0, self._to_corrupt - 1)
            digits = [i for i, c in enumerate(framed[1:framed.index(b"*")], start=1) if 0x30 <= c <= 0x39]
            if digits:
                i = self._rng.choice(digits)
                framed = framed[:i] + bytes([0x30 + (framed[i] - 0x30 + 1) % 10]) + framed[i + 1:]
        return framed

    def _transmit(self, data: bytes) -> None:
        # when nobody reads, what does not fit in the pty is lost (or cut short), as on a real UART
        with contextlib.suppress(BlockingIOError):
            os.write(self._master, data)
