"""HC-SR04 ultrasonic sensor (or the waterproof JSN-SR04T) above a canal: distance to the water, and its level.

The sensor answers a 10 us pulse on TRIG with a pulse on ECHO as long as the sound's round trip; the driver
fires a burst of pings per read, keeps the pings that came back from within ``max_distance_m``, and reports their
median as ``distance`` and ``mount_height_m - distance`` as ``water_level``. A read where most pings were lost
reports only ``in_range = false``; ``unavailable_after`` such reads in a row raise :class:`DeviceUnavailable`.

gpiozero's ``DistanceSensor`` is not used: it pings every 60 ms in a background thread for ever, keeps reporting
the last good value when the echo stops, and blocks for ever on its first read when the echo never came. A water
gauge read once a minute wants each read to be its own measurement. Pins come from :mod:`edge.drivers._gpio`.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Annotated, Any, ClassVar, Literal

from gpiozero import DigitalOutputDevice, InputDevice
from gpiozero.pins.mock import MockFactory
from pydantic import Field as PydanticField
from pydantic import model_validator

from edge.contract import Scalar
from edge.drivers import Field, Presence
from edge.drivers._gpio import BcmPin, GpioConfig, gpio_errors, gpio_present, on_board, pin_factory
from edge.drivers._gpio_sim import EchoPin, Sonar, WaterSurface
from edge.errors import DeviceUnavailable

TRIGGER_PULSE_S = 10e-6
"""The datasheet's trigger: at least 10 us high."""
ECHO_TIMEOUT_S = 0.1
"""ECHO rises about 0.5 ms after the trigger and lasts at most 38 ms (nothing in range); 100 ms means no answer."""
PING_PERIOD_S = 0.06
"""At least 60 ms from ping to ping, so that the last ping's echoes have died out."""
QUIET_TIMEOUT_S = 0.2
"""How long to wait for an ECHO still high from the last ping before giving the next ping up."""


class Config(GpioConfig):
    """An HC-SR04 on two GPIO pins, mounted ``mount_height_m`` above the gauge datum, looking down."""

    kind: Literal["hcsr04"] = "hcsr04"
    trigger: BcmPin
    echo: BcmPin
    mount_height_m: Annotated[float, PydanticField(gt=0, le=20)]
    max_distance_m: Annotated[float, PydanticField(gt=0.05, le=6)] = 4.0
    air_temperature_c: Annotated[float, PydanticField(ge=-10, le=60)] = 30.0
    pings: Annotated[int, PydanticField(ge=1, le=15)] = 5
    unavailable_after: Annotated[int, PydanticField(ge=1, le=100)] = 3

    @model_validator(mode="after")
    def _two_pins(self) -> Config:
        if self.trigger == self.echo:
            raise ValueError(f"trigger and echo must be two different pins (both are BCM {self.trigger})")
        return self

    def claims(self) -> set[str]:
        """Both pins: TRIG and ECHO."""
        return {f"gpio:{self.trigger}", f"gpio:{self.echo}"}


SAMPLE_CONFIG = {"kind": "hcsr04", "name": "canal", "interval_s": 60, "trigger": 23, "echo": 24,
                 "mount_height_m": 3.0, "max_distance_m": 3.5}

TELEMETRY: tuple[Field, ...] = (
    Field("water_level", "m", float, "water surface above the gauge datum: mount_height_m - distance"),
    Field("distance", "m", float, "sensor face to the water surface, median of the pings that came back"),
    Field("in_range", None, bool, "false when most pings found nothing within max_distance_m"),
)


def speed_of_sound(air_temperature_c: float) -> float:
    """Speed of sound in air in m/s: 343 at 20 C, 349 at 30 C (1.8 % on a Thai afternoon is 5 cm at 3 m)."""
    return 331.3 * math.sqrt(1 + air_temperature_c / 273.15)


def pulse_width(edges: Sequence[tuple[float, bool]]) -> float | None:
    """The ECHO pulse of one ping, from its edges ``(seconds, level)``: rising to next falling edge, in seconds;
    None when no whole pulse came (the echo never rose, or never fell in time)."""
    rise: float | None = None
    for at, level in edges:
        if level and rise is None:
            rise = at
        elif not level and rise is not None:
            return at - rise
    return None


def measure(pulses: Sequence[float | None], speed_of_sound_m_s: float, max_distance_m: float) -> float | None:
    """The distance in metres from a burst of pings: the median of those that came back from within
    ``max_distance_m``; None unless most of the pings did."""
    distances = [p * speed_of_sound_m_s / 2 for p in pulses if p is not None]
    in_range = [d for d in distances if d <= max_distance_m]
    if 2 * len(in_range) <= len(pulses):
        return None
    return statistics.median(in_range)


class Driver:
    """Reads the distance to the water and the water level from an HC-SR04 on two GPIO pins."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        self._where = f"{config.name}: HC-SR04 on BCM {config.trigger} (TRIG) / {config.echo} (ECHO)"
        self._c = speed_of_sound(config.air_temperature_c)
        self._trigger: Any = None
        self._echo: Any = None
        self._edges: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._fell = threading.Event()
        self._misses = 0

    def open(self) -> None:
        """Claim TRIG as an output (low) and watch ECHO's edges."""
        if self._echo is not None:
            return
        factory = pin_factory(self._config)
        try:
            with gpio_errors(self._where):
                self._trigger = DigitalOutputDevice(self._config.trigger, initial_value=False, pin_factory=factory)
                self._echo = InputDevice(self._config.echo, pull_up=False, pin_factory=factory)
                self._echo.pin.edges = "both"
                self._echo.pin.bounce = None
                self._echo.pin.when_changed = self._edge
        except DeviceUnavailable:
            self.close()
            raise
        self._misses = 0

    def _edge(self, ticks: float, level: int) -> None:
        # Called by the pin library's thread with the edge's time-stamp, so thread scheduling adds no error.
        with self._lock:
            self._edges.append((ticks, bool(level)))
        if not level:
            self._fell.set()

    def read(self) -> dict[str, Scalar]:
        """One burst of pings: distance, water level and ``in_range``, or only ``in_range = false``."""
        if self._echo is None:
            raise DeviceUnavailable(f"{self._where}: not open")
        pulses: list[float | None] = []
        with gpio_errors(self._where):
            for n in range(self._config.pings):
                started = time.monotonic()
                pulses.append(self._ping())
                if n + 1 < self._config.pings:
                    time.sleep(max(0.0, started + PING_PERIOD_S - time.monotonic()))
        distance = measure(pulses, self._c, self._config.max_distance_m)
        if distance is None:
            self._misses += 1
            if self._misses >= self._config.unavailable_after:
                answered = sum(p is not None for p in pulses)
                raise DeviceUnavailable(
                    f"{self._where}: nothing within {self._config.max_distance_m} m for {self._misses} reads in a row "
                    f"(last read: {answered} of {len(pulses)} pings echoed); check 5 V, GND, the ECHO divider, "
                    f"and that nothing covers the transducers")
            return {"in_range": False}
        self._misses = 0
        return {"water_level": round(self._config.mount_height_m - distance, 3), "distance": round(distance, 3),
                "in_range": True}

    def _ping(self) -> float | None:
        if not self._echo_low():
            return None
        with self._lock:
            self._edges.clear()
            self._fell.clear()
        self._trigger.on()
        time.sleep(TRIGGER_PULSE_S)
        self._trigger.off()
        self._fell.wait(ECHO_TIMEOUT_S)
        with self._lock:
            edges = list(self._edges)
        if not edges:
            return None
        ticks_diff = self._echo.pin_factory.ticks_diff
        first = edges[0][0]
        return pulse_width([(ticks_diff(ticks, first), level) for ticks, level in edges])

    def _echo_low(self) -> bool:
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        while self._echo.value:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Release both pins; safe to call twice or after a failed open."""
        trigger, echo, self._trigger, self._echo = self._trigger, self._echo, None, None
        with gpio_errors(self._where), ExitStack() as releases:  # both are closed even if one fails
            for device in (trigger, echo):
                if device is not None:
                    releases.callback(device.close)


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Put the sensor on a mock board above a simulated canal whose echo times follow the water surface."""
    board = MockFactory()
    surface = WaterSurface(config.mount_height_m, speed_of_sound(config.air_temperature_c))
    board.pin(config.trigger, pin_class=Sonar, echo_pin=board.pin(config.echo, pin_class=EchoPin), surface=surface)
    try:
        yield on_board(config, board)
    finally:
        board.close()


def present(config: Config) -> Presence:
    """Whether the GPIO controller is there (``nakhon agent check --connect``)."""
    return gpio_present(config)
