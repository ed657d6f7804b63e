"""Simulated worlds on mock GPIO pins: citizens at an SOS button, people walking past a PIR, a canal under a sonar.

They drive gpiozero mock pins the way the real world drives the real ones (bouncing contacts, a PIR's hold time,
the length of an ultrasonic echo), so the drivers run their real code on them.
"""

from __future__ import annotations

import math
import random
import threading
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self

from gpiozero.pins.mock import MockPin, MockTriggerPin


class _World(ABC):
    """A simulation thread that runs while the context is open."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @abstractmethod
    def _run(self) -> None:
        """The world's life, until ``self._stop`` is set."""


def _drive(pin: Any, level: bool) -> None:
    if level:
        pin.drive_high()
    else:
        pin.drive_low()


class Citizen(_World):
    """People pressing a button now and then: mostly short presses, a share ``long_presses`` of long ones.

    Every press and release bounces for a few milliseconds, as real contacts do (gaps of 0.3 to 2 ms, well
    under the driver's default 50 ms ``bounce_s``), so each press must still count once.
    """

    def __init__(self, pin: Any, pressed_level: bool, mean_gap_s: float = 90.0, long_presses: float = 0.25,
                 rng: random.Random | None = None) -> None:
        super().__init__(f"sim-citizen-{pin}")
        self._pin = pin
        self._pressed_level = pressed_level
        self._mean_gap_s = mean_gap_s
        self._long_presses = long_presses
        self._rng = rng or random.Random()
        self.presses = 0

    def _run(self) -> None:
        # A finger needs a fifth of a second to come back for the next press.
        while not self._stop.wait(0.2 + self._rng.expovariate(1.0 / self._mean_gap_s)):
            long_press = self._rng.random() < self._long_presses
            self.press(self._rng.uniform(3.5, 6.0) if long_press else self._rng.uniform(0.15, 1.2))

    def press(self, hold_s: float) -> None:
        """One press: the contact bounces closed, stays down ``hold_s``, bounces open."""
        self.presses += 1
        self._bounce(self._pressed_level)
        self._stop.wait(hold_s)
        self._bounce(not self._pressed_level)

    def _bounce(self, level: bool) -> None:
        for _ in range(self._rng.randint(0, 5)):
            _drive(self._pin, level)
            time.sleep(self._rng.uniform(0.0003, 0.002))
            _drive(self._pin, not level)
            time.sleep(self._rng.uniform(0.0003, 0.002))
        _drive(self._pin, level)


class Passersby(_World):
    """People walking past a PIR: its output is high while someone is in view and for ``hold_s`` after
    (an HC-SR501 holds at least about 2.5 s), and a walker arriving meanwhile keeps it high."""

    def __init__(self, pin: Any, active_level: bool = True, mean_gap_s: float = 20.0, hold_s: float = 2.5,
                 rng: random.Random | None = None) -> None:
        super().__init__(f"sim-passersby-{pin}")
        self._pin = pin
        self._active_level = active_level
        self._mean_gap_s = mean_gap_s
        self._hold_s = hold_s
        self._rng = rng or random.Random()
        self.walkers = 0

    def _in_view_until(self) -> float:
        self.walkers += 1
        return time.monotonic() + self._rng.uniform(1.0, 4.0) + self._hold_s

    def _run(self) -> None:
        while not self._stop.wait(self._rng.expovariate(1.0 / self._mean_gap_s)):
            _drive(self._pin, self._active_level)
            until = self._in_view_until()
            while True:
                gap = self._rng.expovariate(1.0 / self._mean_gap_s)
                left = until - time.monotonic()
                if gap >= left:
                    if self._stop.wait(max(0.0, left)):
                        return
                    break
                if self._stop.wait(gap):
                    return
                until = max(until, self._in_view_until())
            _drive(self._pin, not self._active_level)


NO_ECHO_S = 0.038
"""How long an HC-SR04 holds ECHO high when nothing came back (its own time-out)."""


class WaterSurface:
    """A canal seen from a sonar mounted above it, in simulated time.

    The level drifts slowly around its base; rain comes every quarter of an hour or so and raises it for a few
    minutes; ripples move single pings by millimetres, a bird or a leaf now and then answers a ping from much
    closer, some pings are lost (the 38 ms no-echo pulse), and now and then the sensor falls silent for a while
    (spray on the transducer, a loose connector).
    """

    RAIN_EVERY_S = 900.0
    SILENCE_EVERY_S = 1200.0
    LOST_PING = 0.03
    BIRD_PING = 0.01

    def __init__(self, mount_height_m: float, speed_of_sound_m_s: float, base_level_m: float | None = None,
                 rng: random.Random | None = None) -> None:
        self._mount = mount_height_m
        self._c = speed_of_sound_m_s
        self._rng = rng or random.Random()
        self._base = mount_height_m * 0.45 if base_level_m is None else base_level_m
        self.level_m = self._base
        self._at = time.monotonic()
        self._rain_until = 0.0
        self._rain_rise_m = 0.0
        self._silent_until = 0.0

    def _advance(self, at: float) -> None:
        dt = max(0.0, at - self._at)
        self._at = at
        rng = self._rng
        if at >= self._rain_until and rng.random() < dt / self.RAIN_EVERY_S:
            self._rain_until, self._rain_rise_m = at + rng.uniform(60, 300), rng.uniform(0.2, 0.6)
        if at >= self._silent_until and rng.random() < dt / self.SILENCE_EVERY_S:
            self._silent_until = at + rng.uniform(15, 45)
        target = self._base + (self._rain_rise_m if at < self._rain_until else 0.0)
        self.level_m += (target - self.level_m) * min(1.0, dt / 180.0) + rng.gauss(0.0, 0.002 * math.sqrt(dt))
        self.level_m = min(max(self.level_m, 0.0), self._mount - 0.05)

    def echo_s(self, at: float) -> float | None:
        """The length of the ECHO pulse answering a ping sent at ``at``; None when the sensor stays silent."""
        self._advance(at)
        if at < self._silent_until:
            return None
        roll = self._rng.random()
        if roll < self.LOST_PING:
            return NO_ECHO_S
        if roll < self.LOST_PING + self.BIRD_PING:
            distance = self._rng.uniform(0.3, 0.9)
        else:
            distance = self._mount - self.level_m + self._rng.gauss(0.0, 0.004)
        return 2 * distance / self._c


class EchoPin(MockPin):  # type: ignore[misc]
    """An HC-SR04's ECHO pin on a mock board whose edges carry the time they happen in the simulated world.

    On a Pi the kernel time-stamps each edge and lgpio delivers it later; a mock pin stamps an edge when a thread
    gets round to driving it, which on a busy machine is a millisecond (17 cm) late. Stamping the world's time
    keeps the simulation as exact as the real thing, however late the edge is delivered.
    """

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self._stamp: float | None = None

    def drive_at(self, level: bool, at: float) -> None:
        """Drive the pin to ``level``, as of the monotonic time ``at``."""
        self._stamp = at
        try:
            if level:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._stamp = None

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed and self._stamp is not None:
            self._last_change = self._stamp  # what MockPin hands to when_changed as the edge's ticks
        return changed


class Sonar(MockTriggerPin):  # type: ignore[misc]
    """An HC-SR04's TRIG pin on a mock board: each trigger is answered on its :class:`EchoPin` by a pulse as
    long as the sound's round trip to the simulated water surface."""

    BURST_S = 0.0005
    """The 8-cycle 40 kHz burst goes out before ECHO rises."""

    def __init__(self, factory: Any, info: Any, echo_pin: EchoPin, surface: WaterSurface) -> None:
        super().__init__(factory, info, echo_pin=echo_pin, echo_time=NO_ECHO_S)
        self.surface = surface

    def _echo(self) -> None:
        # MockTriggerPin calls this in a fresh thread for each rising edge on TRIG.
        pulse_s = self.surface.echo_s(time.monotonic())
        if pulse_s is None:
            return
        rises_at = time.monotonic() + self.BURST_S
        time.sleep(self.BURST_S)
        self.echo_pin.drive_at(True, rises_at)
        time.sleep(max(0.0, rises_at + pulse_s - time.monotonic()))
        self.echo_pin.drive_at(False, rises_at + pulse_s)
