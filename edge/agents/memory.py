"""The agent's memory on a small device: few malloc arenas, and what start-up freed given back to the system.

Both are glibc calls (``mallopt(3)``, ``malloc_trim(3)``) made through ctypes; where the C library has neither
(musl, macOS) they do nothing. Start-up (imports, configuration, the first connection) frees megabytes that the
C heap would otherwise keep for the life of the process; the steady state allocates little more.
"""

from __future__ import annotations

import ctypes
from functools import cache

M_ARENA_MAX = -8
"""``mallopt`` parameter: the most arenas malloc creates (glibc's ``malloc.h``)."""
ARENAS = 2
"""Arenas for the agent's threads: without a limit each thread that allocates gets one, with its own free pages."""


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the process's own symbols, the C library's among them


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let at most ``arenas`` malloc arenas serve the threads (call before threads start); False where unsupported."""
    try:
        return bool(_libc().mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (the GIL is released meanwhile); False where libc cannot."""
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
