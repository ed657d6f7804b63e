"""The hub's HTTP API (FastAPI): devices, readings, dead letters, commands, health and metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.contract import DeviceId, Timestamp
from hub.api.bounds import INT64_MAX, Instant, Name
from hub.api.docs import add_offline_docs
from hub.api.validation import validation_error
from hub.audit import AuditLog
from hub.auth.web import NO_PERSONAL_KEYS, CurrentActor, guarded_app
from hub.commands import CommandDesk
from hub.errors import BrokerError, CommandInvalid, MessageTooLarge, StoreError
from hub.liveness import Liveness, assess
from hub.metrics import HubMetrics, WriterState
from hub.store.base import CommandOutcome, CommandRecord, DeviceRecord, ReadingKey, Store
from hub.timeseries.base import TimeSeries


class DeviceView(BaseModel):
    """A device in the registry, with its liveness."""

    device: str
    node: str | None
    site: str | None
    state: str
    first_seen: Timestamp
    last_seen: Timestamp
    last_seq: int | None
    received: int
    lost: int
    dropped_at_edge: int
    duplicates: int
    liveness: Liveness
    heartbeat: dict[str, Any] | None


class ReadingView(BaseModel):
    """A stored reading, with its original timestamp."""

    ts: Timestamp
    sensor: str
    quantity: str
    value: bool | int | float | str
    unit: str | None
    seq: int


class ReadingsView(BaseModel):
    """A page of readings."""

    device: str
    count: int
    readings: list[ReadingView]
    truncated: bool = False
    """True when ``limit`` cut the page: more readings match, from ``next`` on."""
    next: str | None = None
    """The ``after`` of the next page when ``truncated``."""


class ReadingColumnsView(BaseModel):
    """A page of one quantity's readings as columns, what a chart library (uPlot) takes: ``ts[i]`` and
    ``value[i]`` are one reading."""

    device: str
    quantity: str
    sensor: str | None
    """The sensor of every reading here; null when several sensors send the quantity (see ``sensors``)."""
    unit: str | None
    """The unit of every reading here; null when they have none, or several (see ``units``)."""
    sensors: list[str]
    units: list[str | None]
    count: int
    truncated: bool
    """True when ``limit`` cut the page: more readings match, from ``next`` on."""
    next: str | None
    """The ``after`` of the next page when ``truncated``."""
    ts: list[int]
    """The readings' times in milliseconds since 1970-01-01 UTC, in time order."""
    value: list[bool | int | float | str]
    """Their values as sent."""


COLUMNS_SPAN: Final = timedelta(days=1)
"""The window of a columns request without ``since``: the day before ``until``."""


class BucketView(BaseModel):
    """The numeric readings of one quantity in one time bucket."""

    start: Timestamp
    count: int
    min: float
    avg: float
    max: float


class AggregateView(BaseModel):
    """Readings of one quantity summed up per time bucket, oldest first."""

    device: str
    quantity: str
    bucket_s: int
    count: int
    buckets: list[BucketView]
    truncated: bool
    """True when ``limit`` cut the answer: more buckets follow, from ``next`` on."""
    next: Timestamp | None
    """The ``since`` of the next page when ``truncated``."""


_CURSOR = re.compile(r"(-?\d{1,19})\.(\d{1,19})\.(\d{1,9})")
Cursor = Annotated[str, StringConstraints(max_length=60, pattern=_CURSOR.pattern)]
"""Where a page of readings starts: the ``next`` of the page before."""


def _cursor(key: ReadingKey) -> str:
    return ".".join(str(part) for part in key)


def _after(cursor: str) -> ReadingKey:
    match = _CURSOR.fullmatch(cursor)
    parts = [int(part) for part in match.groups()] if match else []
    if len(parts) != 3 or max(abs(part) for part in parts) > INT64_MAX:
        raise HTTPException(422, "after: not a cursor this API gave")
    return parts[0], parts[1], parts[2]


class DeadLetterView(BaseModel):
    """A refused message: where it came from, why, and its (cut) payload."""

    id: int
    topic: str
    reason: str
    detail: str
    received_at: Timestamp
    size: int
    payload_text: str | None
    payload_base64: str | None


GZIP_MIN_BYTES: Final = 1024
"""Answers smaller than this go as they are: compressing them saves less than it costs."""
NOT_COMPRESSED: Final = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/vnd.pmtiles")
"""Sent as they are: the SSE stream (``text/event-stream``: gzip would hold events back in its buffer), files
compressed already (images, fonts, a basemap whose tiles are compressed one by one)."""

MAX_ARGS_DEPTH: Final = 16
"""How deeply a command's arguments may nest objects and arrays."""


def _shallow(args: dict[str, Any]) -> dict[str, Any]:
    """Refuse arguments nested deeper than :data:`MAX_ARGS_DEPTH` (counted without recursion)."""
    level: list[Any] = [args]
    for _ in range(MAX_ARGS_DEPTH):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)
                 if isinstance(v, dict | list)]
        if not level:
            return args
    raise ValueError(f"args nest deeper than {MAX_ARGS_DEPTH} levels")


class CommandRequest(BaseModel):
    """A command for a device: sent now and waited for, or queued until the device is online."""

    name: Annotated[str, Field(min_length=1, max_length=64, examples=["ping"])]
    args: Annotated[dict[str, Any], AfterValidator(_shallow)] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    queue: bool = Field(default=False, description="queue the command until the device is online (answered 202 "
                        "at once; its outcome shows in GET .../commands)")
    expires_in_s: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = Field(
        default=None, description='how long a queued command stays valid (with "queue": true; default 3600)')


class CommandAnswer(BaseModel):
    """The device's reply, a timeout, or the queued command."""

    cmd_id: str
    device: str
    outcome: Literal["ok", "error", "timeout", "expired", "late", "queued", "sent"]
    result: dict[str, Any] | None = None
    error: str | None = None
    expires_at: Timestamp | None = None


class CommandView(BaseModel):
    """A command the hub sent or holds, with its outcome and the device's first reply."""

    cmd_id: str
    device: str
    name: str
    args: dict[str, Any]
    outcome: CommandOutcome
    requested_at: Timestamp
    published_at: Timestamp | None
    expires_at: Timestamp | None
    replied_at: Timestamp | None
    result: dict[str, Any] | None
    error: str | None
    replays: int


QUEUED_COMMAND_LIFETIME_S: Final = 3600.0
"""How long a queued command waits for its device when the request does not say."""

MAX_BODY_BYTES: Final = 262_144
"""The largest request body any endpoint reads."""

_COMMAND_STATUS: Final[dict[CommandOutcome, int]] = {
    CommandOutcome.OK: 200, CommandOutcome.ERROR: 200, CommandOutcome.EXPIRED: 200, CommandOutcome.QUEUED: 202,
    CommandOutcome.SENT: 202, CommandOutcome.TIMEOUT: 504, CommandOutcome.LATE: 504,
}
"""HTTP status of a command's answer by its outcome."""


def _command_view(c: CommandRecord) -> CommandView:
    return CommandView(cmd_id=c.cmd_id, device=c.device, name=c.name, args=c.args, outcome=c.outcome,
                       requested_at=_when(c.requested_at), published_at=_opt_when(c.published_at),
                       expires_at=_opt_when(c.expires_at), replied_at=_opt_when(c.replied_at), result=c.result,
                       error=c.error, replays=c.replays)


class BodyTooLarge(HTTPException):
    """A request body over the limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: this API takes at most {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, from its Content-Length before anything is read, or
    as soon as a streamed (chunked) body passes the limit; the rest of it is never read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request within the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": BodyTooLarge(self.limit).detail}, status_code=413,
                                headers={"Connection": "close"})
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _opt_when(ts: float | None) -> datetime | None:
    return None if ts is None else _when(ts)


def _device_view(series: TimeSeries, d: DeviceRecord) -> DeviceView:
    return DeviceView(device=d.device, node=d.node, site=d.site, state=d.state, first_seen=_when(d.first_seen),
                      last_seen=_when(d.last_seen), last_seq=d.last_seq, received=d.received, lost=d.lost,
                      dropped_at_edge=d.dropped_at_edge, duplicates=d.duplicates,
                      liveness=assess(d, series.latest(d.device)), heartbeat=d.heartbeat)


def compress(app: FastAPI) -> None:
    """Compress the app's answers with gzip for clients that ask (not :data:`NOT_COMPRESSED`). Call it last: the
    middleware added last is the outermost, and compression must come after every middleware that reads or
    rewrites an answer's body (the personal-data filter)."""
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=6,
                       exclude_content_types=NOT_COMPRESSED)


def create_app(store: Store, metrics: HubMetrics, commands: CommandDesk,
               broker_connected: Any = None, writer_state: Callable[[], WriterState] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, *, audit: AuditLog, timeseries: TimeSeries) -> FastAPI:
    """Build the API over a records store and a time-series store; ``broker_connected()`` tells ``/healthz``
    whether ingest has the broker, ``writer_state()`` whether its writer runs and keeps up."""
    app = guarded_app(title="Nakhon hub", version="1", summary="Fleet registry, telemetry, dead letters and commands "
                  "of a Nakhon deployment.")
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)

    def _known(device: str) -> DeviceRecord:
        record = store.device(device)
        if record is None:
            raise HTTPException(404, f"no device {device!r} in the registry")
        return record

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers, ingest holds the broker and its writer keeps up; 503 otherwise."""
        try:
            store.deadletter_counts()
            store_ok = True
        except StoreError:
            store_ok = False
        broker_ok = bool(broker_connected()) if broker_connected else None
        writer = writer_state() if writer_state else None
        writer_ok = writer.healthy if writer else None
        ok = store_ok and broker_ok is not False and writer_ok is not False
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "store": store_ok, "broker": broker_ok,
                                "writer": writer_ok}
        if writer is not None:
            body.update(writer_running=writer.running, queue_depth=writer.queue_depth,
                        oldest_unwritten_s=round(writer.oldest_unwritten_s, 3))
            if writer.waiting_for is not None:
                body["reason"] = writer.waiting_for
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/devices")
    def devices() -> list[DeviceView]:
        """Every device in the registry with its liveness."""
        return [_device_view(timeseries, d) for d in store.devices()]

    @app.get("/api/devices/{device}")
    def device(device: DeviceId) -> DeviceView:
        """One device."""
        return _device_view(timeseries, _known(device))

    @app.get("/api/devices/{device}/readings", response_model=ReadingsView)
    def readings(device: DeviceId, quantity: Name | None = None, since: Instant | None = None,
                 until: Instant | None = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000, after: Cursor | None = None,
                 *, request: Request) -> Response:
        """Readings in time order with their original timestamps; ``since`` inclusive, ``until`` exclusive."""
        _known(device)
        setattr(request.state, NO_PERSONAL_KEYS, True)  # ReadingsView's keys only
        page = timeseries.readings_page(device, quantity, since, until, limit, _after(after) if after else None)
        cut = page.next_after is not None
        head = (f'{{"device":{json.dumps(device)},"count":{len(page.rows)},"truncated":{json.dumps(cut)},'
                f'"next":{json.dumps(_cursor(page.next_after) if page.next_after else None)},"readings":[')
        # built from SQLite's rendering of each row: a week of readings in pydantic objects takes 10x as long
        return Response("".join((head, ",".join(page.rows), "]}")), media_type="application/json")

    @app.get("/api/devices/{device}/readings/columns", response_model=ReadingColumnsView)
    def reading_columns(device: DeviceId, quantity: Name, sensor: Name | None = None, since: Instant | None = None,
                        until: Instant | None = None,
                        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000, after: Cursor | None = None,
                        *, request: Request) -> Response:
        """One quantity's readings (of one ``sensor``, if given) as two arrays, times and values, in time order;
        ``since`` inclusive (default a day before ``until``), ``until`` exclusive (default now)."""
        _known(device)
        end = until or datetime.now(UTC)
        start = since or end - COLUMNS_SPAN
        if start >= end:
            raise HTTPException(422, f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
        setattr(request.state, NO_PERSONAL_KEYS, True)  # ReadingColumnsView's keys only
        page = timeseries.readings_columns(device, quantity, sensor, start, end, limit,
                                           _after(after) if after else None)
        cut = page.next_after is not None
        one = {"sensor": page.sensors[0] if len(page.sensors) == 1 else None,
               "unit": page.units[0] if len(page.units) == 1 else None}
        head = json.dumps({"device": device, "quantity": quantity, **one, "sensors": page.sensors,
                           "units": page.units, "count": page.count, "truncated": cut,
                           "next": _cursor(page.next_after) if page.next_after else None}, ensure_ascii=False)
        # the columns come as JSON text from the store: a week of readings in one json.dumps per column
        return Response("".join((head[:-1], ',"ts":', page.ts, ',"value":', page.values, "}")),
                        media_type="application/json")

    @app.get("/api/devices/{device}/readings/buckets")
    def bucketed(device: DeviceId, quantity: Name, since: Instant | None = None, until: Instant | None = None,
                 bucket: Annotated[int, Query(ge=1, le=366 * 86_400)] = 3600,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> AggregateView:
        """Count, min, mean and max of a quantity's numeric readings per ``bucket`` seconds (aligned to the epoch,
        UTC); ``since`` inclusive, ``until`` exclusive."""
        _known(device)
        found = timeseries.aggregate(device, quantity, since, until, bucket, limit + 1)
        buckets = [BucketView(start=b.start, count=b.count, min=b.min, avg=b.avg, max=b.max) for b in found[:limit]]
        return AggregateView(device=device, quantity=quantity, bucket_s=bucket, count=len(buckets), buckets=buckets,
                             truncated=len(found) > limit, next=found[limit].start if len(found) > limit else None)

    @app.get("/api/deadletters")
    def deadletters(reason: Name | None = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[DeadLetterView]:
        """Refused messages, newest first, optionally of one reason."""
        out = []
        for d in store.deadletters(limit, reason):
            try:
                text: str | None = d.payload.decode("utf-8")
                b64 = None
            except UnicodeDecodeError:
                text, b64 = None, base64.b64encode(d.payload).decode()
            out.append(DeadLetterView(id=d.id, topic=d.topic, reason=d.reason, detail=d.detail,
                                      received_at=_when(d.received_at), size=d.size, payload_text=text,
                                      payload_base64=b64))
        return out

    @app.post("/api/devices/{device}/commands", responses={
        202: {"model": CommandAnswer, "description": "queued"}, 413: {"description": "command too large"},
        503: {"description": "the hub has no broker"}, 504: {"model": CommandAnswer}})
    async def command(device: DeviceId, request: CommandRequest, actor: CurrentActor) -> JSONResponse:
        """Send a command and wait for the reply (504 with ``outcome: timeout`` when none comes in time), or queue
        it with ``"queue": true`` (202) until the device is online."""
        await asyncio.to_thread(_known, device)
        if request.expires_in_s is not None and not request.queue:
            raise HTTPException(422, 'expires_in_s applies to queued commands ("queue": true); a command sent now '
                                "expires after timeout_s")
        try:
            if request.queue:
                record = await commands.enqueue(device, request.name, request.args,
                                                request.expires_in_s or QUEUED_COMMAND_LIFETIME_S)
            else:
                record = await commands.send(device, request.name, request.args, request.timeout_s)
        except MessageTooLarge as err:
            raise HTTPException(413, str(err)) from err
        except CommandInvalid as err:
            raise HTTPException(422, str(err)) from err
        except BrokerError as err:
            raise HTTPException(503, str(err)) from err
        await asyncio.to_thread(audit.record, actor, "device.command", f"device/{device}", None, {
            "cmd_id": record.cmd_id, "name": request.name, "args": request.args, "queue": request.queue,
            "outcome": record.outcome.value})
        error = record.error
        if record.outcome is CommandOutcome.TIMEOUT:
            error = f"no reply within {request.timeout_s:g} s; is the device online?"
        answer = CommandAnswer(cmd_id=record.cmd_id, device=device, outcome=record.outcome.value,
                               result=record.result, error=error, expires_at=_opt_when(record.expires_at))
        return JSONResponse(answer.model_dump(mode="json"), status_code=_COMMAND_STATUS[record.outcome])

    @app.get("/api/devices/{device}/commands")
    def device_commands(device: DeviceId,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[CommandView]:
        """The device's commands, newest first, each with its outcome."""
        _known(device)
        return [_command_view(c) for c in store.commands(device, limit)]

    add_offline_docs(app)
    return app
