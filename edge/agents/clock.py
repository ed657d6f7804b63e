"""The agent's clock: wall time for stamps, and whether the kernel says the system clock is synchronised."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from edge.contract import ClockState

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised


def system_clock_state() -> ClockState:
    """Ask the kernel (adjtimex) whether NTP or another discipline keeps the system clock synchronised."""
    if not sys.platform.startswith("linux"):
        return ClockState(source="system", synchronized=None)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0 reads only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return ClockState(source="system", synchronized=None)
    if state < 0:
        return ClockState(source="system", synchronized=None)
    return ClockState(source="system", synchronized=state != _TIME_ERROR)
