"""The agent's clock: wall time for stamps, and whether the kernel says the system clock is synchronised."""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

from edge.agents.telemetry import ms_since_epoch, now_ms
from edge.contract import ClockState, now

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised


@cache
def _libc() -> ctypes.CDLL:
    # the process's own symbols hold the C library's; ctypes.util.find_library would run ldconfig at every check
    return ctypes.CDLL(None, use_errno=True)


def system_clock_state() -> ClockState:
    """Ask the kernel (adjtimex) whether NTP or another discipline keeps the system clock synchronised."""
    if not sys.platform.startswith("linux"):
        return ClockState(source="system", synchronized=None)
    try:
        libc = _libc()
        timex = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 reads only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return ClockState(source="system", synchronized=None)
    if state < 0:
        return ClockState(source="system", synchronized=None)
    return ClockState(source="system", synchronized=state != _TIME_ERROR)


class AgentClock:
    """Stamps readings: the system clock when it is synchronised, else the freshest time a device offered.

    A Pi without an RTC boots with a wrong clock until NTP answers; a GPS receiver knows the time. Every
    stamp says which clock made it, so the hub can tell a GPS-stamped reading from a guess.
    """

    OFFER_MAX_AGE_S = 600.0
    """A device's time is used for at most this long after it arrived (the Pi's oscillator drifts)."""
    RECHECK_S = 60.0

    def __init__(self, system_state: Callable[[], ClockState] = system_clock_state,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._system_state = system_state
        self._monotonic = monotonic
        self._state = ClockState(source="system", synchronized=None)
        self._checked = -1e9
        self._offer: tuple[str, datetime, float] | None = None

    def offer(self, source: str, utc: datetime, at_monotonic: float) -> None:
        """A device tells the time it had at ``at_monotonic``."""
        self._offer = (source, utc, at_monotonic)

    def _system(self) -> ClockState:
        t = self._monotonic()
        if t - self._checked >= self.RECHECK_S:
            self._state = self._system_state()
            self._checked = t
        return self._state

    def now(self) -> tuple[datetime, str]:
        """The current UTC time and the name of the clock that gave it."""
        if self._system().synchronized is not False or self._offer is None:
            return now(), "system"
        source, utc, at = self._offer
        age = self._monotonic() - at
        if age > self.OFFER_MAX_AGE_S:
            return now(), "system"
        stamp = utc + timedelta(seconds=age)
        return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000), source

    def now_ms(self) -> tuple[int, str]:
        """:meth:`now` in milliseconds since the epoch (a polled stream's samples need no ``datetime``)."""
        if self._system().synchronized is not False or self._offer is None:
            return now_ms(), "system"
        stamp, source = self.now()
        return ms_since_epoch(stamp), source

    def state(self) -> ClockState:
        """What the heartbeat says about the clock."""
        system = self._system()
        if system.synchronized is False and self._offer is not None:
            source, _, at = self._offer
            if self._monotonic() - at <= self.OFFER_MAX_AGE_S:
                return ClockState(source=source, synchronized=True)
        return system
