"""Slows repeated failed sign-ins, per user name and per client address, without blocking anyone else.

A hub counts failures in the records store (:class:`StoredSignInThrottle`), so several hub processes behind one
load balancer slow the same guesser alike: spreading tries over the processes earns no extra ones.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.records.session import Session
from hub.store.base import SqlStore


@dataclass(frozen=True)
class ThrottleRule:
    """Failures within ``window_s`` beyond ``free`` double a delay from ``base_s`` up to ``max_s``."""

    free: int
    base_s: float = 1.0
    max_s: float = 30.0
    window_s: float = 900.0


BY_NAME = ThrottleRule(free=3)
BY_ADDRESS = ThrottleRule(free=10)
"""An address gets more free tries than a name: several clerks may sign in from behind one router."""

MAX_KEYS = 10_000


@dataclass
class SignInThrottle:
    """Counts failed sign-ins per name and per address; :meth:`delay` says how long to wait before the next."""

    by_name: ThrottleRule = BY_NAME
    by_address: ThrottleRule = BY_ADDRESS
    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def _recent(self, key: tuple[str, str], rule: ThrottleRule) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        cutoff = self.clock() - rule.window_s
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)

    @staticmethod
    def _delay(count: int, rule: ThrottleRule) -> float:
        over = count - rule.free
        return 0.0 if over < 0 else min(rule.max_s, rule.base_s * 2 ** over)

    def delay(self, name: str, address: str) -> float:
        """Seconds to wait before checking this attempt's password."""
        return max(self._delay(self._recent(("name", name), self.by_name), self.by_name),
                   self._delay(self._recent(("address", address), self.by_address), self.by_address))

    def failed(self, name: str, address: str) -> int:
        """Count a failure; returns how many this name had in its window."""
        if len(self._failures) > MAX_KEYS:  # bounded memory under a spray of names: forget the oldest keys
            for key in list(self._failures)[: MAX_KEYS // 2]:
                del self._failures[key]
        now = self.clock()
        for key in (("name", name), ("address", address)):
            self._failures.setdefault(key, deque(maxlen=64)).append(now)
        return self._recent(("name", name), self.by_name)

    def succeeded(self, name: str) -> None:
        """A good sign-in clears the name's count (the address keeps its own)."""
        self._failures.pop(("name", name), None)


class StoredSignInThrottle(SignInThrottle):
    """The throttle with its failures in the records store, shared by every hub process on it."""

    def __init__(self, store: SqlStore, by_name: ThrottleRule = BY_NAME, by_address: ThrottleRule = BY_ADDRESS,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(by_name, by_address, clock)
        self._store = store

    def _recent(self, key: tuple[str, str], rule: ThrottleRule) -> int:
        cutoff = self.clock() - rule.window_s
        return int(self._store.read(lambda db: db.execute(
            "SELECT count(*) FROM signin_failures WHERE scope = ? AND key = ? AND at >= ?",
            (*key, cutoff)).fetchone()[0]))

    def failed(self, name: str, address: str) -> int:
        """Count a failure; returns how many this name had in its window."""
        now = self.clock()
        oldest = now - max(self.by_name.window_s, self.by_address.window_s)

        def work(db: Session) -> None:
            db.execute("DELETE FROM signin_failures WHERE at < ?", (oldest,))  # bounded: only the window stays
            db.executemany("INSERT INTO signin_failures (scope, key, at) VALUES (?, ?, ?)",
                           [("name", name[:64], now), ("address", address[:64], now)])
        self._store.write(work)
        return self._recent(("name", name[:64]), self.by_name)

    def delay(self, name: str, address: str) -> float:
        """Seconds to wait before checking this attempt's password."""
        return super().delay(name[:64], address[:64])

    def succeeded(self, name: str) -> None:
        """A good sign-in clears the name's count (the address keeps its own)."""
        self._store.write(lambda db: db.execute("DELETE FROM signin_failures WHERE scope = 'name' AND key = ?",
                                                (name[:64],)))
