"""The provisioning API: register, enroll, suspend, revoke, retire devices; list expiring certificates.

Technicians call it with their own account (role ``technician``), so every step is in the audit log; the
enrollment route is public, authenticated by the single-use code it redeems.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, ValidationError

from edge.contract import DeviceId
from hub.auth.throttle import SignInThrottle
from hub.auth.web import CurrentActor
from hub.provision import config
from hub.provision.registry import CODE_TTL_S, EnrollmentRefused, Entry, Registry, RegistryError, Status

log = logging.getLogger("nakhon.hub.provision")

Text = Annotated[str, Field(min_length=1, max_length=200)]
Lat = Annotated[float, Field(ge=-90, le=90)]
Lon = Annotated[float, Field(ge=-180, le=180)]
MAX_IMPORT = 1000


class NewDevice(BaseModel):
    """A device to register (pending until it enrolls)."""

    device: DeviceId
    node: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
    site: Text
    lat: Lat | None = None
    lon: Lon | None = None
    code_ttl_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = CODE_TTL_S
    issue_code: bool = True


class ImportRow(BaseModel):
    """One row of a bulk import: checked one by one, so a bad row is refused alone."""

    device: Annotated[str, Field(max_length=100)] = ""
    node: Annotated[str, Field(max_length=100)] = ""
    site: Annotated[str, Field(max_length=200)] = ""
    lat: Annotated[str, Field(max_length=40)] = ""
    lon: Annotated[str, Field(max_length=40)] = ""


class Enrollment(BaseModel):
    """A device redeeming its code with the CSR of the key it generated."""

    code: Annotated[str, Field(min_length=8, max_length=64)]
    csr: Annotated[str, Field(min_length=100, max_length=8000)]


class CodeRequest(BaseModel):
    """How long a new enrollment code (for a first enrollment or a rotation) stays valid."""

    ttl_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = CODE_TTL_S


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _check_row(row: ImportRow) -> NewDevice:
    """Validate an import row as a :class:`NewDevice`; raise RegistryError with the first problem."""
    try:
        lat, lon = (float(v) if v else None for v in (row.lat, row.lon))
    except ValueError as err:
        raise RegistryError(f"lat/lon: not a number ({err})", 400) from err
    try:
        model = NewDevice(device=row.device, node=row.node, site=row.site, lat=lat, lon=lon)
    except ValidationError as err:
        first = err.errors()[0]
        raise RegistryError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", 400) from err
    if model.node not in config.nodes():
        raise RegistryError(f"node: no template {model.node!r} in firmware-configs/", 400)
    return model


def create_router(registry: Registry, broker_host: str, broker_port: int) -> APIRouter:
    """The provisioning routes on ``registry``; enrolled devices are told to reach the broker there."""
    router = APIRouter(prefix="/api/provision")

    def refused(err: RegistryError) -> HTTPException:
        return HTTPException(err.status, str(err))

    def rendered(entry: Entry) -> str:
        return config.render(entry, broker_host, broker_port, registry.root)

    @router.post("/devices", status_code=201)
    def add(body: NewDevice, actor: CurrentActor) -> dict[str, Any]:
        """Register a device as pending; answers its agent config and (unless turned off) an enrollment code."""
        if body.node not in config.nodes():
            raise HTTPException(400, f"no template for node {body.node!r} (known: {', '.join(config.nodes())})")
        try:
            entry = registry.add(actor, body.device, body.node, body.site, body.lat, body.lon)
            out: dict[str, Any] = {**entry.as_dict(), "config": rendered(entry)}
            if body.issue_code:
                code, expires = registry.issue_code(actor, body.device, body.code_ttl_s)
                out |= {"code": code, "code_expires_at": _iso(expires), "ca_sha256": registry.ca_fingerprint()}
        except RegistryError as err:
            raise refused(err) from err
        return out

    @router.post("/devices/import")
    def bulk(rows: Annotated[list[ImportRow], Field(max_length=MAX_IMPORT)],
             actor: CurrentActor) -> list[dict[str, str]]:
        """Register many devices (no codes: issue them with ``/code`` when each is installed); one result a row."""
        results = []
        for i, row in enumerate(rows, start=1):
            try:
                model = _check_row(row)
            except RegistryError as err:
                results.append({"row": str(i), "device": row.device, "result": "refused", "reason": str(err)})
                continue
            (result,) = registry.import_rows(actor, [model.model_dump()])
            results.append({**result, "row": str(i)})
        return results

    @router.get("/devices")
    def listing(status: Status | None = None) -> list[dict[str, Any]]:
        """The registry, by device id."""
        return [e.as_dict() for e in registry.entries(status)]

    @router.post("/devices/{device}/code", status_code=201)
    def code(device: DeviceId, body: CodeRequest, actor: CurrentActor) -> dict[str, Any]:
        """A new single-use enrollment code: for a pending device, or an active one rotating its certificate."""
        try:
            value, expires = registry.issue_code(actor, device, body.ttl_s)
        except RegistryError as err:
            raise refused(err) from err
        return {"device": device, "code": value, "code_expires_at": _iso(expires),
                "ca_sha256": registry.ca_fingerprint()}

    @router.get("/ca")
    def ca() -> dict[str, Any]:
        """The deployment's CA chain (public): a device fetches it before it trusts the hub, and pins it against
        the root's SHA-256 fingerprint its enrollment code carries."""
        if not registry.chain:
            raise HTTPException(404, "this hub has no deployment CA (serve it with --deployment DIR)")
        return {"chain": registry.chain.decode(), "sha256": registry.ca_fingerprint()}

    @router.get("/devices/{device}/config", response_model=None)
    def device_config(device: DeviceId) -> dict[str, Any]:
        """The device's agent config as enrollment hands it out."""
        entry = registry.entry(device)
        if entry is None:
            raise HTTPException(404, f"no device {device!r} in the registry")
        return {"device": device, "config": rendered(entry)}

    def _status_route(verb: str, to: Status, revoke: bool = False) -> None:
        def change(device: DeviceId, actor: CurrentActor) -> dict[str, Any]:
            try:
                return registry.set_status(actor, device, to, revoke).as_dict()
            except RegistryError as err:
                raise refused(err) from err

        change.__doc__ = {"suspend": "Suspend: its broker access ends at once; resume brings it back.",
                          "resume": "Resume a suspended device with its certificate.",
                          "revoke": "Revoke its certificates (the CRL, which the broker reloads) and its access "
                                    "(at once); it must enroll again with a new code."}[verb]
        router.add_api_route(f"/devices/{{device}}/{verb}", change, methods=["POST"], name=f"device_{verb}")

    _status_route("suspend", Status.SUSPENDED)
    _status_route("resume", Status.ACTIVE)
    _status_route("revoke", Status.PENDING, revoke=True)

    throttle = SignInThrottle()

    @router.post("/enroll")
    async def enroll(body: Enrollment, actor: CurrentActor) -> dict[str, Any]:
        """Redeem an enrollment code with a CSR: the device's certificate, the CA chain and its config.

        Refusals from one address slow its next attempts as failed sign-ins do (after 3, 1 s doubling to 30 s).
        """
        key = f"enroll:{actor.address}"
        wait = throttle.delay(key, actor.address)
        if wait:
            log.info("enrollment from %s held %.1f s after repeated refusals", actor.address, wait)
            await asyncio.sleep(wait)
        try:
            done = await asyncio.to_thread(registry.enroll, actor, body.code, body.csr.encode())
        except EnrollmentRefused as err:
            throttle.failed(key, actor.address)
            raise refused(err) from err
        except RegistryError as err:
            raise refused(err) from err
        throttle.succeeded(key)
        entry = registry.entry(done.device)
        assert entry is not None
        return {"device": done.device, "certificate": done.certificate.decode(), "ca": done.chain.decode(),
                "config": rendered(entry)}

    @router.get("/certificates")
    def certificates(expiring_days: Annotated[float | None, Query(gt=0, le=3650)] = None) -> list[dict[str, Any]]:
        """Valid device certificates, soonest expiry first (only those ending within ``expiring_days``)."""
        return registry.certificates(None if expiring_days is None else expiring_days * 86_400)

    return router


def retire_route(registry: Registry) -> APIRouter:
    """``DELETE /api/devices/{device}``: retire a device (certificates revoked, access withdrawn, id kept)."""
    router = APIRouter()

    @router.delete("/api/devices/{device}")
    def retire(device: DeviceId, actor: CurrentActor) -> dict[str, Any]:
        """Retire a device for good: its id stays taken, its certificates are revoked."""
        try:
            return registry.set_status(actor, device, Status.RETIRED).as_dict()
        except RegistryError as err:
            raise HTTPException(err.status, str(err)) from err

    return router
