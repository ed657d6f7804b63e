"""What the hub has received and its writer has not taken yet: the batches its MQTT process hands over, kept as
they come (one lock a batch, not one a message) and bounded by the number of messages they hold."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Backlog(Generic[T]):
    """A bounded first-in first-out queue of messages that takes and gives them in lists.

    :meth:`put` waits while ``limit`` messages are held (backpressure: the caller stops reading from the broker
    meanwhile), adding a list in parts when only part of it fits. :meth:`take` gives up to ``most`` messages in
    the order they came.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a backlog holds at least one message")
        self.limit = limit
        self._lists: deque[list[T]] = deque()
        self._held = 0
        self._puts = 0
        self._closed = False
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return self._held

    def put(self, items: list[T], timeout: float | None = None) -> int:
        """Add ``items`` in order as room appears (never more than ``limit`` held), waiting up to ``timeout``
        seconds in all (None: no limit); returns how many were added, the first ones (all of them unless the wait
        ran out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        added = 0
        with self._changed:
            while added < len(items):
                room = self.limit - self._held
                if room <= 0:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(left)
                    continue
                part = items[added:added + room] if added or room < len(items) else items
                self._lists.append(part)
                self._held += len(part)
                self._puts += 1
                added += len(part)
                self._changed.notify_all()
        return added

    def close(self) -> None:
        """No more messages will come: :meth:`take` gives what is held, then None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def take(self, most: int, timeout: float | None = None, gather_s: float = 0.0,
             fill: int | None = None, quiet_s: float = 0.005) -> list[T] | None:
        """Up to ``most`` messages, waiting up to ``timeout`` seconds (None: no limit) for the first; then, while
        messages keep coming (none for ``quiet_s`` ends it), up to ``gather_s`` more for ``fill`` (default
        ``most``) to be there. An empty list when the wait ended with none, None once the backlog is closed and
        empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._lists:
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._changed.wait(left)
            enough = most if fill is None else min(fill, most)
            end = time.monotonic() + gather_s
            while self._held < enough and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    break
                puts = self._puts
                self._changed.wait(min(quiet_s, left))
                if self._puts == puts and self._held < enough:
                    break  # nothing came for quiet_s: a burst is over, whatever the fill
            taken: list[T] = []
            while self._lists and len(taken) < most:
                head = self._lists[0]
                room = most - len(taken)
                if len(head) <= room:
                    taken.extend(self._lists.popleft())
                else:
                    taken.extend(head[:room])
                    self._lists[0] = head[room:]
            self._held -= len(taken)
            self._changed.notify_all()
            return taken
