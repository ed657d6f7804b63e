"""The HTTP side of accounts: the guard every request passes, the actor dependency, sign-in and the audit API.

:func:`guarded_app` builds every hub app with :func:`guard` as an app-level dependency, which FastAPI runs
before each API route (included before or after) and before the body is validated. The guard looks up
(method, route path template) in :data:`hub.auth.policy.POLICY` and answers 401 (no valid session or token)
or 403 (wrong role, missing CSRF token, or a route with no entry), so nothing changes. Plain Starlette routes
(the OpenAPI page and document) do not run dependencies: :func:`protect` refuses to start unless they are public.
A session cookie needs the ``X-CSRF-Token`` header on every change; a bearer token does not (browsers never
send one on their own). Answers to a user without a personal-data role have personal fields removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.audit import Actor, AuditLog
from hub.auth import credentials
from hub.auth.accounts import SESSION_TTL_S, Accounts, User
from hub.auth.policy import PERSONAL_DATA_ROLES, PERSONAL_FIELDS, POLICY, Access
from hub.auth.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, verify
from hub.auth.throttle import SignInThrottle
from hub.errors import HubConfigError

log = logging.getLogger("nakhon.hub.auth")

COOKIE = "nakhon_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPES = (b"application/json", b"application/geo+json")


def policy_key(method: str, path: str) -> tuple[str, str]:
    """The table key of a request (HEAD is checked as GET)."""
    return ("GET" if method == "HEAD" else method, path)


def route_keys(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route of the app: its OpenAPI operations, the API routes left out of the
    OpenAPI document, and its plain routes."""
    keys = [(method.upper(), path) for path, item in app.openapi().get("paths", {}).items() for method in item]
    for route in app.routes:
        hidden = isinstance(route, APIRoute) and not route.include_in_schema
        if hidden or not isinstance(route, APIRoute):
            keys += [(m, getattr(route, "path", "")) for m in sorted(getattr(route, "methods", None) or ())
                     if m != "HEAD"]
    return keys


def unguarded(app: FastAPI) -> list[tuple[str, str]]:
    """API routes with no entry in the table: the guard refuses them to everyone."""
    return [key for key in route_keys(app) if key not in POLICY]


def open_plain_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Plain (non-API) routes the table does not mark public: the guard dependency never runs for them."""
    return [(m, route.path) for route in app.routes if not isinstance(route, APIRoute) and hasattr(route, "path")
            for m in sorted(getattr(route, "methods", None) or ()) if m != "HEAD"
            and not POLICY.get((m, route.path), Access()).public]


def redact(value: Any) -> Any:
    """``value`` without the personal fields, at any depth."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if k not in PERSONAL_FIELDS}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class GuardSettings:
    """What the guard needs, kept on ``app.state`` by :func:`protect`."""

    accounts: Accounts
    public_ogc: bool


BEARER = HTTPBearer(auto_error=False, description="a personal API token (nakhon hub token add NAME)")


async def guard(request: Request,
                bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None) -> None:
    """The dependency every API route runs first: look the route up in the table and admit or refuse.

    ``bearer`` declares the token scheme in the OpenAPI document, so ``/docs`` can send a token too."""
    settings = getattr(request.app.state, "nakhon_guard", None)
    route = request.scope.get("route")
    path = getattr(route, "path", "")
    access = POLICY.get(policy_key(request.method, path))
    if not isinstance(settings, GuardSettings) or access is None:
        raise HTTPException(403, f"no access rule for {request.method} {path}: refused")
    address = request.client.host if request.client else "unknown"
    if access.public or access.signed or (access.ogc and settings.public_ogc):
        request.state.actor = Actor(user="bank" if access.signed else "anonymous", address=address,
                                    via="signature" if access.signed else "public")
        return
    user, via, problem = await _authenticate(settings.accounts, request, bearer)
    if user is None:
        raise HTTPException(401, problem, headers={"WWW-Authenticate": 'Bearer realm="nakhon"'})
    if not access.admits(user.roles):
        needed = ", ".join(sorted(access.roles))
        raise HTTPException(403, f"{user.name} lacks the role for {request.method} {path} (needs {needed})")
    if problem:
        raise HTTPException(403, problem)
    request.state.actor = Actor(user=user.name, address=address, roles=user.roles, via=via)


async def still_admitted(request: Request) -> bool:
    """Whether the request's session or token would still pass the guard: a long answer (the live stream) asks
    this now and then, so a sign-out, a revoked token or a disabled user ends it."""
    settings = getattr(request.app.state, "nakhon_guard", None)
    access = POLICY.get(policy_key(request.method, getattr(request.scope.get("route"), "path", "")))
    if not isinstance(settings, GuardSettings) or access is None:
        return False
    user, _, _ = await _authenticate(settings.accounts, request, await BEARER(request))
    return user is not None and access.admits(user.roles)


GUARD = [Depends(guard)]
"""App-level dependencies of every hub app: ``FastAPI(dependencies=GUARD)``, see :func:`guarded_app`."""


def guarded_app(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose every API route, included before or after, runs :func:`guard` first (and without
    ReDoc, which loads from a CDN: the hub serves ``/docs`` itself, see :mod:`hub.api.docs`)."""
    kwargs.setdefault("redoc_url", None)
    return FastAPI(dependencies=GUARD, **kwargs)


async def _authenticate(accounts: Accounts, request: Request,
                        bearer: HTTPAuthorizationCredentials | None) -> tuple[User | None, str, str]:
    """(user or None, how, problem): a problem along with a user is a CSRF refusal."""
    if request.headers.get("authorization"):
        if bearer is None or len(bearer.credentials) > 200:
            return None, "token", "Authorization must be 'Bearer <token>'"
        user = await to_thread.run_sync(accounts.token_user, bearer.credentials.strip())
        return user, "token", "" if user else "unknown, revoked or disabled token"
    session = request.cookies.get(COOKIE, "")[:100]
    if not session:
        return None, "", "sign in (POST /api/session) or send Authorization: Bearer <token>"
    user = await to_thread.run_sync(accounts.session_user, session)
    if user is None:
        return None, "session", "the session has ended: sign in again"
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), credentials.csrf_for(session).encode()):
            return user, "session", (f"a change made with a session cookie needs the {CSRF_HEADER} header "
                                     "from GET /api/session")
    return user, "session", ""


class PersonalDataFilter:
    """ASGI middleware removing personal fields from JSON answers to anyone without a personal-data role
    (viewers, and anonymous callers of public routes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        await self.app(scope, receive, _redacting(send, state))


NO_PERSONAL_KEYS = "nakhon_no_personal_keys"
"""Request state a route sets when its answer's keys are fixed and none is personal (readings: a week of them is
7 MB that redaction would decode and encode again for nothing)."""


def _needs_redaction(state: dict[str, Any]) -> bool:
    actor = state.get("actor")
    return isinstance(actor, Actor) and not actor.roles & PERSONAL_DATA_ROLES and not state.get(NO_PERSONAL_KEYS)


def _redacting(send: Send, state: dict[str, Any]) -> Send:
    """A ``send`` that removes personal fields from a JSON answer when the request's actor may not see them."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and _needs_redaction(state):
            ctype = dict(message.get("headers", [])).get(b"content-type", b"")
            if ctype.split(b";")[0].strip() in JSON_TYPES:
                start = message
                return
        elif message["type"] == "http.response.body" and start is not None:
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            raw = b"".join(chunks)
            if not raw:  # HEAD, or an empty answer
                await send(start)
                await send(message)
                return
            body = json.dumps(redact(json.loads(raw)), ensure_ascii=False).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return wrapped


def current_actor(request: Request) -> Actor:
    """The actor the guard admitted (user, roles, address), for routes that change or audit something."""
    actor = getattr(request.state, "actor", None)
    if not isinstance(actor, Actor):
        raise HTTPException(401, "not signed in")
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
"""Route parameter type: the actor of the request."""


def signed_by(secret: str | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing a request unless its raw body is signed with ``secret`` (see hub.auth.signature)."""
    async def check(request: Request) -> None:
        if secret is None:
            raise HTTPException(503, "no signing secret is configured on the hub (--bank-secret-file)")
        try:
            verify(secret, request.headers.get(TIMESTAMP_HEADER), request.headers.get(SIGNATURE_HEADER),
                   await request.body())
        except SignatureError as err:
            raise HTTPException(401, f"refused signature: {err}") from err

    return check


class SignIn(BaseModel):
    """A sign-in."""

    name: Annotated[str, Field(min_length=1, max_length=32)]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class AuditView(BaseModel):
    """One audit row."""

    id: int
    at: str
    user: str
    address: str
    action: str
    object: str
    before: Any
    after: Any


def _whoami(actor: Actor, session: str | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"user": actor.user, "roles": sorted(actor.roles), "via": actor.via}
    if session:
        answer["csrf_token"] = credentials.csrf_for(session)
        answer["csrf_header"] = CSRF_HEADER
    return answer


def create_router(accounts: Accounts, audit: AuditLog, throttle: SignInThrottle) -> APIRouter:
    """Sign-in, sign-out, who am I, and the audit log."""
    api = APIRouter(tags=["auth"])

    @api.post("/api/session")
    async def sign_in(body: SignIn, request: Request, response: Response) -> dict[str, Any]:
        """Sign in: sets an HTTP-only, SameSite=Strict session cookie and returns the CSRF token."""
        address = request.client.host if request.client else "unknown"
        wait = await to_thread.run_sync(throttle.delay, body.name, address)
        if wait:
            log.info("sign-in for %r from %s held %.1f s after repeated failures", body.name, address, wait)
            await asyncio.sleep(wait)
        user = await to_thread.run_sync(accounts.verify, body.name, body.password)
        if user is None:
            failures = await to_thread.run_sync(throttle.failed, body.name, address)
            log.warning("failed sign-in for %r from %s (%d in 15 min)", body.name, address, failures)
            raise HTTPException(401, "wrong name or password")
        await to_thread.run_sync(throttle.succeeded, body.name)
        session = await to_thread.run_sync(accounts.open_session, user.name, address)
        actor = Actor(user=user.name, address=address, roles=user.roles, via="session")
        await to_thread.run_sync(lambda: audit.record(actor, "session.open", f"user/{user.name}"))
        response.set_cookie(COOKIE, session, max_age=int(SESSION_TTL_S), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return {**_whoami(actor, session), "expires_in_s": int(SESSION_TTL_S)}

    @api.get("/api/session")
    def whoami(actor: CurrentActor, request: Request) -> dict[str, Any]:
        """Who I am, my roles and (signed in with a cookie) the CSRF token to send with changes."""
        return _whoami(actor, request.cookies.get(COOKIE) if actor.via == "session" else None)

    @api.delete("/api/session")
    def sign_out(actor: CurrentActor, request: Request, response: Response) -> dict[str, Any]:
        """Sign out: the session ends on the hub and the cookie is removed."""
        session = request.cookies.get(COOKIE)
        if actor.via == "session" and session:
            accounts.close_session(session)
            audit.record(actor, "session.close", f"user/{actor.user}")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return {"signed_out": actor.via == "session"}

    @api.get("/api/audit")
    def audit_log(user: Annotated[str | None, Query(max_length=32)] = None,
                  object: Annotated[str | None, Query(max_length=200)] = None,
                  since: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[AuditView]:
        """The audit log, oldest first: of one user, of one object (``receipt/KKC-2570-000001``, or a prefix
        like ``report``), since a time (RFC 3339 with a time zone)."""
        if since is not None and since.tzinfo is None:
            raise HTTPException(422, "since needs a time zone, e.g. 2026-11-20T03:00:00Z")
        return [AuditView(**dataclasses.asdict(e)) for e in audit.entries(user, object, since, limit)]

    return api


def protect(app: FastAPI, accounts: Accounts, audit: AuditLog, *, public_ogc: bool = False,
            throttle: SignInThrottle | None = None) -> None:
    """Add the sign-in and audit routes and guard every route of ``app`` with the access table."""
    if not any(d.dependency is guard for d in app.router.dependencies):
        raise HubConfigError("the app must be built with hub.auth.web.guarded_app() so every route is guarded")
    app.state.nakhon_guard = GuardSettings(accounts, public_ogc)
    app.include_router(create_router(accounts, audit, throttle or SignInThrottle()))
    app.add_middleware(PersonalDataFilter)
    plain = open_plain_routes(app)
    if plain:
        raise HubConfigError(f"routes the guard cannot reach must be public in hub.auth.policy.POLICY: {plain}")
    for method, path in unguarded(app):
        log.error("%s %s has no entry in hub.auth.policy.POLICY: it is refused to everyone", method, path)
