"""Crash points for failure tests: the hub SIGKILLs itself where ``NAKHON_CRASH_AT`` says.

``NAKHON_CRASH_AT=tx-received`` kills the hub after it received a transaction and before it applied it;
``tx-applied`` after the commit and before the answer is published. Unset in production, it costs one set
lookup per transaction.
"""

from __future__ import annotations

import os
import signal

_POINTS = frozenset(p for p in os.environ.get("NAKHON_CRASH_AT", "").split(",") if p)


def crash_point(name: str) -> None:
    """Die here, as abruptly as a power cut, if this point was asked for."""
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
