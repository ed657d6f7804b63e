"""The live feed behind ``GET /api/stream``: stored rows with increasing ids, a bounded in-memory ring of the
newest, and one bounded queue per connected client.

Every change worth streaming (a device's link state, an event, an alarm change, a new citizen report) is written
to the ``feed`` table in the same transaction as the change itself, so its id is durable. After the commit the
row goes into the ring and to every subscriber. A client that reconnects with ``Last-Event-ID: N`` gets the rows
after N from the ring when the ring still reaches back to N, else from the table (after a hub restart, or after a
long absence), and then the live rows; rows it already has are skipped by id. A client too slow to keep its queue
below :data:`QUEUE_MAX` is disconnected and catches up the same way when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hub.records.session import Session

RING_MAX = 2_000
QUEUE_MAX = 1_000
BACKLOG_MAX = 10_000
"""Rows replayed at most on one reconnect; older ones are in ``/api/events`` and ``/api/alarms``."""
KEEP_S = 7 * 86_400


@dataclass(frozen=True)
class FeedItem:
    """One streamed change: ``type`` is ``device``, ``event``, ``alarm`` or ``report``."""

    id: int
    type: str
    data: str

    def sse(self) -> str:
        """The item as one Server-Sent Events message."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {self.data}\n\n"


def append(db: Session, at: float, kind: str, data: dict[str, Any], key: str | None = None,
           ) -> FeedItem | None:
    """Inside a write: add a row; returns None when ``key`` was already fed (a redelivered event)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    row = db.execute("INSERT INTO feed (at, type, key, data) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING "
                     "RETURNING id", (at, kind, key, text)).fetchone()
    return FeedItem(int(row[0]), kind, text) if row else None


def prune(db: Session, now: float) -> None:
    """Inside a write: forget rows older than :data:`KEEP_S`."""
    db.execute("DELETE FROM feed WHERE at < ?", (now - KEEP_S,))


@dataclass(eq=False)
class Subscriber:
    """One connected client's queue; ``None`` in it means "you fell behind, reconnect"."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[FeedItem | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX + 1))
    overflowed: bool = False

    def offer(self, item: FeedItem) -> None:
        """Queue a row on the client's loop; past QUEUE_MAX the client is told to reconnect instead."""
        if self.overflowed:
            return
        if self.queue.qsize() >= QUEUE_MAX:
            self.overflowed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(item)


class Feed:
    """Fans committed feed rows out to subscribers and keeps the newest in a ring."""

    def __init__(self) -> None:
        self._ring: deque[FeedItem] = deque(maxlen=RING_MAX)
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._closed = False

    def publish(self, items: list[FeedItem]) -> None:
        """Hand committed rows (in id order) to the ring and to every subscriber (thread-safe)."""
        if not items:
            return
        with self._lock:
            self._ring.extend(items)
            subscribers = list(self._subscribers)
        for sub in subscribers:
            for item in items:
                try:
                    sub.loop.call_soon_threadsafe(sub.offer, item)
                except RuntimeError:  # the client's loop is closed: it is gone
                    self.unsubscribe(sub)
                    break

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscriber:
        """Start receiving live rows (before reading the backlog, so nothing falls between the two)."""
        sub = Subscriber(loop)
        with self._lock:
            self._subscribers.add(sub)
            closed = self._closed
        if closed:
            sub.queue.put_nowait(None)
        return sub

    def close(self) -> None:
        """The hub is stopping: end every stream (clients reconnect with ``Last-Event-ID`` to the next hub),
        so the HTTP server is not left waiting for responses that never end."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
        for sub in subscribers:
            with contextlib.suppress(RuntimeError):  # that client's loop is already closed
                sub.loop.call_soon_threadsafe(sub.queue.put_nowait, None)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop sending to a client (idempotent)."""
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        """How many clients are connected."""
        with self._lock:
            return len(self._subscribers)

    def from_ring(self, after: int) -> list[FeedItem] | None:
        """Rows after ``after`` when the ring still reaches back to it, else None."""
        with self._lock:
            if not self._ring or self._ring[0].id > after + 1:
                return None
            return [item for item in self._ring if item.id > after]


def backlog(db: Session, after: int) -> list[FeedItem]:
    """Stored rows after ``after``, oldest first."""
    rows = db.execute("SELECT id, type, data FROM feed WHERE id > ? ORDER BY id LIMIT ?", (after, BACKLOG_MAX))
    return [FeedItem(int(i), str(t), str(d)) for i, t, d in rows]
