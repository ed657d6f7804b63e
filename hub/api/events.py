"""Events and live updates: ``GET /api/events`` (newest first, cursor paging) and ``GET /api/stream`` (SSE)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, StringConstraints

from edge.contract import Timestamp
from hub.alarms.feed import Feed, FeedItem
from hub.alarms.store import AlarmRecords
from hub.api.bounds import INT64_MAX, Instant
from hub.auth.policy import PERSONAL_DATA_ROLES
from hub.auth.web import CurrentActor, redact, still_admitted
from hub.store.base import SqlStore

KEEPALIVE_S = 15.0
Filter = Annotated[str | None, StringConstraints(max_length=64)]


class EventView(BaseModel):
    """A stored event."""

    device: str
    seq: int
    ts: Timestamp
    sensor: str
    event: str
    severity: str
    data: dict[str, Any]


class EventPage(BaseModel):
    """A page of events, newest first; pass ``next`` as ``cursor`` for the following page."""

    events: list[EventView]
    next: str | None


def _cursor(ts: int, device: str, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, device, seq]).encode()).decode()


def _uncursor(value: str) -> tuple[int, str, int]:
    """The decoded cursor, or a 422 like any invalid query value's."""
    try:
        ts, device, seq = json.loads(base64.urlsafe_b64decode(value.encode()))
        cursor = int(ts), str(device), int(seq)
        if -INT64_MAX <= cursor[0] <= INT64_MAX and 0 <= cursor[2] <= INT64_MAX:
            return cursor
    except (ValueError, TypeError):
        pass
    raise RequestValidationError([{"type": "value_error", "loc": ("query", "cursor"), "input": value,
                                   "msg": "cursor is not one this API handed out"}])


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def create_router(store: SqlStore, feed: Feed) -> APIRouter:
    """The events and stream endpoints over the store's events table and the live feed."""
    router = APIRouter()
    alarms = AlarmRecords(store)

    @router.get("/api/events")
    def events(device: Filter = None, sensor: Filter = None, event: Filter = None,
               severity: Annotated[str | None, Query(pattern="^(info|warning|critical)$")] = None,
               since: Instant | None = None, until: Instant | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               cursor: Annotated[str | None, Query(max_length=400)] = None) -> EventPage:
        """Events newest first; ``event`` ending in ``.*`` matches a prefix (``sos.*``); ``until`` exclusive."""
        exact, prefix = (None, event[:-1]) if event is not None and event.endswith(".*") else (event, None)
        rows = store.events(limit + 1, device=device, sensor=sensor, severity=severity, event=exact,
                            event_prefix=prefix,
                            since=_ms(since) if since is not None else None,
                            until=_ms(until) if until is not None else None,
                            before=_uncursor(cursor) if cursor is not None else None)
        page = [EventView(device=e.device, seq=e.seq, ts=datetime.fromtimestamp(e.ts / 1000, UTC), sensor=e.sensor,
                          event=e.event, severity=e.severity, data=e.data) for e in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return EventPage(events=page, next=_cursor(last.ts, last.device, last.seq) if last else None)

    @router.get("/api/stream", response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}}}})
    async def stream(request: Request, actor: CurrentActor,
                     last_event_id: Annotated[int | None, Header(ge=0, le=2**62)] = None) -> StreamingResponse:
        """Server-Sent Events (``device``, ``event``, ``alarm``, ``report``); ``Last-Event-ID`` resumes. Signed in
        with the session cookie or a token; personal fields are left out for a user without a personal-data role."""
        out = _sse if actor.roles & PERSONAL_DATA_ROLES else _redacted_sse
        return StreamingResponse(_events(request, alarms, feed, last_event_id, out), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return router


def _sse(item: FeedItem) -> str:
    return item.sse()


def _redacted_sse(item: FeedItem) -> str:
    """The item without personal fields (as the API's JSON answers to a viewer)."""
    data = json.dumps(redact(json.loads(item.data)), ensure_ascii=False, separators=(",", ":"))
    return FeedItem(item.id, item.type, data).sse()


async def _events(request: Request, alarms: AlarmRecords, feed: Feed, after: int | None,
                  out: Callable[[FeedItem], str]) -> AsyncIterator[str]:
    sub = feed.subscribe(asyncio.get_running_loop())
    try:
        yield "retry: 1000\n\n"
        last = after if after is not None else -1
        if after is not None:
            items = feed.from_ring(after)
            if items is None:
                items = await asyncio.to_thread(alarms.feed_after, after)
            for item in items:
                yield out(item)
                last = item.id
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            try:
                got: FeedItem | None = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keepalive\n\n"
            else:
                if got is None:
                    return  # fell behind: the client reconnects with Last-Event-ID and catches up
                if got.id > last:
                    yield out(got)
                    last = got.id
            if loop.time() - checked >= KEEPALIVE_S:
                if not await still_admitted(request):
                    return  # signed out, token revoked or user disabled: the stream ends with the credentials
                checked = loop.time()
    finally:
        feed.unsubscribe(sub)
