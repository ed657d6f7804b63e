"""Behaviour shared by the simulated sensors: a seeded random walk around a daily cycle, and outages."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from edge.errors import DeviceUnavailable


class DailyWalk:
    """A value that follows a daily sine around ``mean`` with bounded random-walk noise."""

    def __init__(self, rng: random.Random, mean: float, daily_swing: float, noise: float,
                 low: float, high: float, peak_hour: float = 15.0) -> None:
        self._rng = rng
        self._mean = mean
        self._swing = daily_swing
        self._noise = noise
        self._low = low
        self._high = high
        self._peak_hour = peak_hour
        self._drift = 0.0

    def sample(self, at: float) -> float:
        """The value at the POSIX time ``at``."""
        hour = (at / 3600.0 + 7.0) % 24.0  # Thailand is UTC+7
        cycle = math.cos((hour - self._peak_hour) / 24.0 * 2 * math.pi)
        self._drift = 0.9 * self._drift + self._rng.gauss(0.0, self._noise)
        return min(self._high, max(self._low, self._mean + self._swing * cycle + self._drift))


class Outages:
    """Makes a simulated device go silent now and then, for ``length`` reads at a time."""

    def __init__(self, rng: random.Random, rate: float, length: int) -> None:
        self._rng = rng
        self._rate = rate
        self._length = length
        self._left = 0

    def check(self, what: str) -> None:
        """Raise :class:`DeviceUnavailable` while the device is in an outage."""
        if self._left == 0 and self._rate > 0 and self._rng.random() < self._rate:
            self._left = self._length
        if self._left > 0:
            self._left -= 1
            raise DeviceUnavailable(f"{what}: no answer from the sensor (simulated outage)")


Clock = Callable[[], float]
wall_clock: Clock = time.time
