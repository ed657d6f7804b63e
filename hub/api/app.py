"""The hub's HTTP API (FastAPI): devices, readings, dead letters, commands, health and metrics."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from edge.contract import DeviceId, Timestamp
from hub.audit import AuditLog
from hub.auth.web import CurrentActor, guarded_app
from hub.commands import CommandDesk
from hub.errors import StoreError
from hub.liveness import Liveness, assess
from hub.metrics import HubMetrics
from hub.store.base import DeviceRecord, Store


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


class CommandRequest(BaseModel):
    """A command for a device."""

    name: Annotated[str, Field(min_length=1, max_length=64, examples=["ping"])]
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class CommandAnswer(BaseModel):
    """The device's reply, or a timeout."""

    cmd_id: str
    device: str
    outcome: Literal["ok", "error", "timeout"]
    result: dict[str, Any] | None = None
    error: str | None = None


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _device_view(store: Store, d: DeviceRecord) -> DeviceView:
    return DeviceView(device=d.device, node=d.node, site=d.site, state=d.state, first_seen=_when(d.first_seen),
                      last_seen=_when(d.last_seen), last_seq=d.last_seq, received=d.received, lost=d.lost,
                      dropped_at_edge=d.dropped_at_edge, duplicates=d.duplicates,
                      liveness=assess(d, store.latest(d.device)), heartbeat=d.heartbeat)


def create_app(store: Store, metrics: HubMetrics, commands: CommandDesk,
               broker_connected: Any = None, *, audit: AuditLog) -> FastAPI:
    """Build the API over a store; ``broker_connected()`` tells ``/healthz`` whether ingest has the broker."""
    app = guarded_app(title="Nakhon hub", version="1", summary="Fleet registry, telemetry, dead letters and commands "
                  "of a Nakhon deployment.")

    def _known(device: str) -> DeviceRecord:
        record = store.device(device)
        if record is None:
            raise HTTPException(404, f"no device {device!r} in the registry")
        return record

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 when the store answers and ingest holds the broker, 503 otherwise."""
        try:
            store.deadletter_counts()
            store_ok = True
        except StoreError:
            store_ok = False
        broker_ok = bool(broker_connected()) if broker_connected else None
        ok = store_ok and broker_ok is not False
        return JSONResponse({"status": "ok" if ok else "degraded", "store": store_ok, "broker": broker_ok},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/devices")
    def devices() -> list[DeviceView]:
        """Every device in the registry with its liveness."""
        return [_device_view(store, d) for d in store.devices()]

    @app.get("/api/devices/{device}")
    def device(device: DeviceId) -> DeviceView:
        """One device."""
        return _device_view(store, _known(device))

    @app.get("/api/devices/{device}/readings")
    def readings(device: DeviceId, quantity: str | None = None, since: datetime | None = None,
                 until: datetime | None = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> ReadingsView:
        """Readings in time order with their original timestamps; ``since`` inclusive, ``until`` exclusive."""
        _known(device)
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, f"{name} needs a time zone, e.g. 2026-11-20T03:00:00Z")
        rows = store.readings(device, quantity, since, until, limit)
        return ReadingsView(device=device, count=len(rows), readings=[
            ReadingView(ts=r.ts, sensor=r.sensor, quantity=r.quantity, value=r.value, unit=r.unit, seq=r.seq)
            for r in rows])

    @app.get("/api/deadletters")
    def deadletters(reason: str | None = None,
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

    @app.post("/api/devices/{device}/commands", responses={504: {"model": CommandAnswer}})
    def command(device: DeviceId, request: CommandRequest, actor: CurrentActor) -> JSONResponse:
        """Send a command and wait for the reply; 504 with ``outcome: timeout`` when none comes in time."""
        _known(device)
        result = commands.send(device, request.name, request.args, request.timeout_s)
        outcome = "timeout" if result.reply is None else "ok" if result.reply.ok else "error"
        audit.record(actor, "device.command", f"device/{device}", None,
                     {"cmd_id": result.cmd_id, "name": request.name, "args": request.args, "outcome": outcome})
        if result.reply is None:
            answer = CommandAnswer(cmd_id=result.cmd_id, device=device, outcome="timeout",
                                   error=f"no reply within {request.timeout_s:g} s; is the device online?")
            return JSONResponse(answer.model_dump(mode="json"), status_code=504)
        reply = result.reply
        answer = CommandAnswer(cmd_id=result.cmd_id, device=device, outcome="ok" if reply.ok else "error",
                               result=reply.result, error=reply.error)
        return JSONResponse(answer.model_dump(mode="json"), status_code=200)

    return app
