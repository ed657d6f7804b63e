"""The live feed behind ``GET /api/stream``: stored rows with increasing ids, a bounded in-memory ring of the
newest, and one bounded queue per connected client.

Every change worth streaming (a device's link state, an event, an alarm change, a new citizen report) is written
to the ``feed`` table in the same transaction as the change itself, so its id is durable. Ids come from a
one-row counter (``feed_counter``) taken in that transaction: the row lock makes ids follow commit order without
gaps, also across several hub processes on one PostgreSQL, where a sequence would let id 12 commit before id 11.
A hub follows the table (:meth:`Feed.follow`): one thread reads the rows after the newest it has, when this
process committed one and at least every :data:`FOLLOW_S` for those other hub processes wrote, and hands them in
id order to the ring and to every subscriber, so a browser on any hub process sees every change once.

A client that reconnects with ``Last-Event-ID: N`` gets the rows after N from the ring when the ring still
reaches back to N, else from the table (after a hub restart, or after a long absence), and then the live rows;
rows it already has are skipped by id. A client too slow to keep its queue below :data:`QUEUE_MAX` is
disconnected and catches up the same way when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hub.records.session import Session

RING_MAX = 2_000
QUEUE_MAX = 1_000
BACKLOG_MAX = 10_000
"""Rows replayed at most on one reconnect; older ones are in ``/api/events`` and ``/api/alarms``."""
log = logging.getLogger("nakhon.hub.feed")

KEEP_S = 7 * 86_400
FOLLOW_S = 0.25
"""How often a following feed reads rows other hub processes committed."""


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
    feed_id = int(db.execute("UPDATE feed_counter SET last = last + 1 WHERE id = 1 RETURNING last").fetchone()[0])
    row = db.execute("INSERT INTO feed (id, at, type, key, data) VALUES (?, ?, ?, ?, ?) "
                     "ON CONFLICT (key) DO NOTHING RETURNING id", (feed_id, at, kind, key, text)).fetchone()
    if row is None:  # the id goes back: the counter's row is still locked by this transaction
        db.execute("UPDATE feed_counter SET last = last - 1 WHERE id = 1")
        return None
    return FeedItem(feed_id, kind, text)


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


Reader = Callable[[int], list[FeedItem]]
"""Stored feed rows after an id, oldest first (:func:`backlog` in a read)."""


class Feed:
    """Fans committed feed rows out to subscribers and keeps the newest in a ring."""

    def __init__(self) -> None:
        self._ring: deque[FeedItem] = deque(maxlen=RING_MAX)
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def follow(self, read: Reader, after: int) -> None:
        """Start handing out the rows the table gets after ``after``, whichever hub process wrote them."""
        if self._follower is not None:
            return
        self._stop.clear()
        self._follower = threading.Thread(target=self._follow, args=(read, after), name="feed-follower",
                                          daemon=True)
        self._follower.start()

    def unfollow(self) -> None:
        """Stop following the table (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None

    def _follow(self, read: Reader, after: int) -> None:
        while not self._stop.is_set():
            self._wake.wait(FOLLOW_S)
            self._wake.clear()
            # The follower is a supervisor: if it died every stream of this process would go silent, so a
            # failed read (a locked or restarting store) is logged with its traceback and read again next round.
            try:
                items = read(after)
            except Exception:
                log.exception("reading the feed failed; reading again in %.2f s", FOLLOW_S)
                continue
            if items:
                self.publish(items)
                after = items[-1].id
            if len(items) >= BACKLOG_MAX:
                self._wake.set()  # a full page: read on at once

    def committed(self, items: list[FeedItem]) -> None:
        """Rows this process just committed: read them now when following the table, else hand them out."""
        if self._follower is not None:
            self._wake.set()
        else:
            self.publish(items)

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


def newest(db: Session) -> int:
    """The id of the newest stored row (0 for none)."""
    return int(db.execute("SELECT coalesce(max(id), 0) FROM feed").fetchone()[0])
