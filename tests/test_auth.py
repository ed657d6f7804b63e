"""Accounts, roles and sign-in: every route in the access table, 401/403 that change nothing, CSRF, tokens,
the sign-in slowdown, personal data hidden from viewers, the bank's signature window and the account commands."""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hub.audit import AuditLog
from hub.auth import signature
from hub.auth.accounts import Accounts
from hub.auth.policy import POLICY, PUBLIC, ROLES, Access
from hub.auth.throttle import SignInThrottle, ThrottleRule
from hub.auth.web import CSRF_HEADER, guarded_app, open_plain_routes, protect, route_keys, unguarded
from hub.errors import HubConfigError
from hub.ingest.consumer import IngestSettings
from hub.serve import HubSettings, build
from nakhon import cli
from tests.conftest import HUB_BANK_SECRET, TEST_PASSWORD, Broker, HubApp, build_hub_app, wait_for

_KEYS = route_keys(build(HubSettings(data=Path("/nonexistent"), ingest=IngestSettings()))[0])
"""Every (method, path) of the hub, from an app built but never started (no I/O)."""
GUARDED = [k for k in _KEYS if not (POLICY.get(k, Access()).public or POLICY.get(k, Access()).signed)]
CHANGES = [k for k in GUARDED if k[0] != "GET"]


def _path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "kk-x-0001", template)


def _dump(hub_app: HubApp) -> str:
    with contextlib.closing(sqlite3.connect(hub_app.store.path)) as db:
        return "\n".join(db.iterdump())


def test_every_route_of_the_hub_has_an_access_rule_and_every_rule_a_route(hub_app: HubApp) -> None:
    assert unguarded(hub_app.app) == []
    assert open_plain_routes(hub_app.app) == []
    assert sorted(set(POLICY) - set(route_keys(hub_app.app))) == []
    assert [k for k, a in POLICY.items() if a.public] == [
        ("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
        ("POST", "/api/session"), ("GET", "/"), ("GET", "/ui/{path:path}"), ("GET", "/vendor/{path:path}"),
        ("POST", "/api/provision/enroll"), ("GET", "/api/provision/ca")]


def test_a_route_missing_from_the_table_is_refused_even_to_admin(hub_app: HubApp) -> None:
    app = guarded_app()

    @app.post("/api/not-in-the-table")
    def sneaky() -> dict[str, str]:
        return {"changed": "yes"}

    protect(app, Accounts(hub_app.store), AuditLog(hub_app.store))
    assert unguarded(app) == [("POST", "/api/not-in-the-table")]
    token = hub_app.client("admin").headers["Authorization"]
    r = TestClient(app).post("/api/not-in-the-table", headers={"Authorization": token})
    assert r.status_code == 403 and "no access rule" in r.json()["detail"]
    with pytest.raises(HubConfigError, match="guarded_app"):
        protect(FastAPI(), Accounts(hub_app.store), AuditLog(hub_app.store))


@pytest.mark.parametrize(("method", "template"), CHANGES)
def test_a_change_without_credentials_or_with_the_wrong_role_is_refused_and_changes_nothing(
        hub_app: HubApp, method: str, template: str) -> None:
    access = POLICY[(method, template)]
    wrong = [r for r in ROLES if r != "admin" and r not in access.roles]
    clients = {401: hub_app.anonymous(), **({403: hub_app.client(wrong[0])} if wrong else {})}
    before = _dump(hub_app)
    for status, client in clients.items():
        r = client.request(method, _path(template), json={})
        assert r.status_code == status, (status, r.text)
    assert _dump(hub_app) == before


@pytest.mark.parametrize(("method", "template"), [k for k in GUARDED if k[0] == "GET"])
def test_every_read_needs_a_sign_in(hub_app: HubApp, method: str, template: str) -> None:
    r = hub_app.anonymous().get(_path(template))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_only_healthz_answers_without_sign_in(hub_app: HubApp) -> None:
    assert hub_app.anonymous().get("/healthz").status_code in (200, 503)
    assert hub_app.anonymous().get("/metrics").status_code == 401
    assert hub_app.client("viewer").get("/metrics").status_code == 200
    basic = hub_app.anonymous().get("/api/devices", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401 and "Bearer" in basic.json()["detail"]
    schemes = hub_app.app.openapi()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"  # so /docs can send a token


def test_a_cookie_session_needs_the_csrf_token_for_changes_and_ends_on_sign_out(hub_app: HubApp) -> None:
    hub_app.client("finance", name="malee")  # creates the user
    browser = hub_app.anonymous()
    assert browser.post("/api/session", json={"name": "malee", "password": "wrong password!"}).status_code == 401
    signed = browser.post("/api/session", json={"name": "malee", "password": TEST_PASSWORD})
    assert signed.status_code == 200
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    me = browser.get("/api/session").json()
    assert me["user"] == "malee" and me["roles"] == ["finance"] and me["csrf_token"] == signed.json()["csrf_token"]
    hub_app.store.write(lambda db: db.execute("INSERT INTO devices (device, first_seen, last_seen) "
                                              "VALUES ('kk-kiosk-0001', 1, 1)"))  # cash is counted from known kiosks
    count = {"device": "kk-kiosk-0001", "day": "2026-11-20", "counted_satang": 100, "counted_by": "Malee"}
    refused = browser.post("/api/finance/reconciliations", json=count)
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["detail"]
    wrong = browser.post("/api/finance/reconciliations", json=count, headers={CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403

    def counts() -> int:
        return int(hub_app.store.read(lambda db: db.execute("SELECT count(*) FROM reconciliations").fetchone()[0]))

    assert counts() == 0
    ok = browser.post("/api/finance/reconciliations", json=count, headers={CSRF_HEADER: me["csrf_token"]})
    assert ok.status_code == 200 and ok.json()["recorded_by"] == "malee" and counts() == 1
    assert browser.delete("/api/session", headers={CSRF_HEADER: me["csrf_token"]}).json() == {"signed_out": True}
    browser.cookies.set("nakhon_session", signed.cookies["nakhon_session"])  # a stolen copy is dead too
    assert browser.get("/api/session").status_code == 401


def test_sessions_and_tokens_are_kept_only_as_digests(hub_app: HubApp) -> None:
    client = hub_app.client("viewer", name="somsak")
    token = client.headers["Authorization"].removeprefix("Bearer ")
    session = hub_app.anonymous().post("/api/session", json={"name": "somsak", "password": TEST_PASSWORD})
    raw = (hub_app.store.path).read_bytes() + Path(f"{hub_app.store.path}-wal").read_bytes()
    for secret in (token, session.cookies["nakhon_session"], TEST_PASSWORD):
        assert secret.encode() not in raw
    assert b"$argon2id$" in raw


def test_a_viewer_does_not_see_personal_data(hub_app: HubApp) -> None:
    hub_app.store.write(lambda db: db.execute(
        "INSERT INTO payments (tx_id, device, office, service, method, amount_satang, citizen_ref, status, "
        "reference, created_at) VALUES ('kk-kiosk-0001-tx-1', 'kk-kiosk-0001', 'kkc-hq', 'garbage-monthly', "
        "'promptpay', 4000, 'ref-of-a-citizen-0001', 'pending', 'R1', '2026-11-20T03:00:00.000Z')"))
    as_finance = hub_app.client("finance").get("/api/finance/payments").json()
    as_viewer = hub_app.client("viewer").get("/api/finance/payments").json()
    assert as_finance[0]["citizen_ref"] == "ref-of-a-citizen-0001"
    assert "citizen_ref" not in as_viewer[0] and as_viewer[0]["tx_id"] == "kk-kiosk-0001-tx-1"


def test_public_ogc_opens_the_gis_layers_and_nothing_else(tmp_path: Path) -> None:
    closed = build_hub_app(tmp_path / "closed")
    opened = build_hub_app(tmp_path / "open", public_ogc=True)
    try:
        assert closed.anonymous().get("/ogc/collections").status_code == 401
        assert opened.anonymous().get("/ogc/collections").status_code == 200
        assert opened.anonymous().get("/ogc/collections/zones/items").json()["numberReturned"] == 4
        assert opened.anonymous().get("/api/gis/reports").status_code == 401
    finally:
        closed.store.close()
        opened.store.close()


def test_the_bank_signature_is_checked_on_the_raw_body_within_five_minutes() -> None:
    body, now = b'{"amount_satang": 4000, "bank_ref": "B1"}', 1_800_000_000
    good = signature.sign("s3cret", now, body)
    signature.verify("s3cret", str(now), good, body, now=now + 299)
    cases: list[tuple[str, str | None, str | None, bytes, float]] = [
        ("outside", str(now), good, body, now + 301),
        ("outside", str(now), good, body, now - 301),
        ("wrong signature", str(now), good, body.replace(b"4000", b"400"), now),
        ("wrong signature", str(now + 1), good, body, now),
        ("wrong signature", str(now), signature.sign("other", now, body), body, now),
        ("missing", None, good, body, now),
        ("Unix seconds", "1e9", good, body, now),
    ]
    for message, ts, sig, raw, at in cases:
        with pytest.raises(signature.SignatureError, match=message.replace("outside", "more than 300 s")):
            signature.verify("s3cret", ts, sig, raw, now=at)


def test_the_bank_callback_refuses_an_old_signature_and_needs_a_configured_secret(hub_app: HubApp,
                                                                                  tmp_path: Path) -> None:
    body = b'{"amount_satang": 4000, "bank_ref": "B1"}'
    url = "/api/finance/payments/kk-kiosk-0001-tx-none/confirm"
    old = signature.headers(HUB_BANK_SECRET, body, int(time.time()) - 600)
    r = hub_app.anonymous().post(url, content=body, headers={"Content-Type": "application/json", **old})
    assert r.status_code == 401 and "300 s" in r.json()["detail"]
    fresh = signature.headers(HUB_BANK_SECRET, body)
    assert hub_app.anonymous().post(url, content=body, headers={"Content-Type": "application/json",
                                                                  **fresh}).status_code == 404
    app, store, _ = build(HubSettings(data=tmp_path / "nosecret", ingest=IngestSettings()))
    store.open()
    try:
        assert TestClient(app).post(url, content=body, headers=dict(fresh)).status_code == 503
    finally:
        store.close()


def test_the_throttle_delays_per_name_and_per_address_and_forgets_after_its_window() -> None:
    clock = [0.0]
    throttle = SignInThrottle(by_name=ThrottleRule(free=2, base_s=1, max_s=8, window_s=60),
                              by_address=ThrottleRule(free=4, base_s=1, max_s=8, window_s=60),
                              clock=lambda: clock[0])
    delays = []
    for _ in range(6):
        delays.append(throttle.delay("somchai", "10.0.0.1"))
        throttle.failed("somchai", "10.0.0.1")
    assert delays == [0, 0, 1, 2, 4, 8]
    assert throttle.delay("malee", "10.0.0.1") == 4  # another name from the same address: its 6 failures
    assert throttle.delay("malee", "10.0.0.2") == 0
    throttle.succeeded("somchai")
    assert throttle.delay("somchai", "10.0.0.9") == 0
    clock[0] = 61
    assert throttle.delay("malee", "10.0.0.1") == 0


@pytest.mark.broker
def test_repeated_failed_sign_ins_are_slowed_without_blocking_the_hub_and_logged_without_the_password(
        broker: Broker, procs: dict[str, Callable[..., Any]]) -> None:
    hub = procs["hub"](broker.port)
    url = f"{hub.url}/api/session"
    password = "not-the-password-7f3a"
    for _ in range(3):  # free tries (the delays themselves: the test above, on a clock of its own)
        assert httpx.post(url, json={"name": "admin", "password": password}, timeout=30).status_code == 401
    answered_at: list[float] = []

    def health_while_waiting() -> None:
        time.sleep(0.2)
        httpx.get(f"{hub.url}/healthz", timeout=10)
        answered_at.append(time.monotonic())

    probe = threading.Thread(target=health_while_waiting)
    probe.start()
    started = time.monotonic()
    fourth = httpx.post(url, json={"name": "admin", "password": TEST_PASSWORD}, timeout=30)
    done = time.monotonic()
    probe.join()
    assert fourth.status_code == 200 and done - started >= 1.0  # even the right password waits its turn
    assert answered_at and answered_at[0] < done  # the hub answered others while the sign-in waited
    log = wait_for(lambda: hub.log() if "failed sign-in for 'admin'" in hub.log() else None, 10, "the log")
    assert "(3 in 15 min)" in log and password not in log and TEST_PASSWORD not in log


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["hub", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_user_and_token_commands_on_the_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = ["--data", str(tmp_path / "hub")]
    code, out = _cli(capsys, "user", "add", "somchai", "--role", "operator", "--role", "gis", *data)
    assert code == 0 and "roles gis, operator" in out
    password = out.split("keep it safe): ")[1].strip()
    assert _cli(capsys, "user", "add", "somchai", "--role", "viewer", *data) == (
        2, "nakhon: user 'somchai' exists already (use reset or disable)\n")
    assert _cli(capsys, "user", "add", "x", "--role", "viewer", *data)[0] == 2
    code, out = _cli(capsys, "token", "add", "somchai", "--label", "night script", *data)
    token = out.split("keep it safe): ")[1].strip()
    assert code == 0 and token.startswith("nkt_")
    code, listing = _cli(capsys, "token", "list", *data)
    assert "night script" in listing and "active" in listing and token not in listing
    code, users = _cli(capsys, "user", "list", *data)
    assert re.search(r"somchai\s+gis,operator\s+active", users) and password not in users

    app = build_hub_app(tmp_path / "hub")
    try:
        def status(tok: str) -> int:
            return int(app.anonymous().get("/api/devices", headers={"Authorization": f"Bearer {tok}"}).status_code)

        assert status(token) == 200
        signin = app.anonymous().post("/api/session", json={"name": "somchai", "password": password})
        assert signin.status_code == 200
        monkeypatch.setattr("sys.stdin", io.StringIO("a new long password\n"))
        assert _cli(capsys, "user", "reset", "somchai", "--password-stdin", *data)[0] == 0
        assert app.anonymous().post("/api/session", json={"name": "somchai", "password": password}).status_code == 401
        assert app.anonymous().post("/api/session",
                                    json={"name": "somchai", "password": "a new long password"}).status_code == 200
        assert _cli(capsys, "user", "disable", "somchai", *data)[0] == 0
        assert status(token) == 401
        assert _cli(capsys, "user", "reset", "somchai", *data)[0] == 0  # enabled again, new password printed
        assert status(token) == 200
        assert _cli(capsys, "token", "revoke", "1", *data)[0] == 0
        assert status(token) == 401
        assert _cli(capsys, "token", "revoke", "1", *data) == (2, "nakhon: no active token 1\n")
    finally:
        app.store.close()


def test_bank_sign_prints_curl_headers_the_hub_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "bank.secret"
    secret.write_text("s3cret\n")
    body = '{"amount_satang": 4000, "bank_ref": "DEMO"}'
    code, out = _cli(capsys, "bank-sign", "--secret-file", str(secret), body)
    match = re.fullmatch(r"-H X-Nakhon-Timestamp:(\d+) -H X-Nakhon-Signature:(sha256=[0-9a-f]{64})\n", out)
    assert code == 0 and match
    signature.verify("s3cret", match[1], match[2], body.encode())


def test_policy_roles_are_known() -> None:
    assert all(a.roles <= set(ROLES) for a in POLICY.values())
    assert PUBLIC.admits(frozenset()) is False and Access(roles=frozenset({"gis"})).admits(frozenset({"admin"}))



def test_a_session_expires_after_eight_hours_and_ends_when_the_user_is_disabled(hub_app: HubApp) -> None:
    clock = [1_800_000_000.0]
    users = Accounts(hub_app.store, clock=lambda: clock[0])
    users.add_user("noi", ["gis"], TEST_PASSWORD)
    first, second = users.open_session("noi", "10.0.0.7"), users.open_session("noi", "10.0.0.7")
    clock[0] += 8 * 3600 - 1
    assert users.session_user(first) is not None
    clock[0] += 2
    assert users.session_user(first) is None
    users.disable("noi")
    clock[0] -= 2
    assert users.session_user(second) is None
    assert users.verify("noi", TEST_PASSWORD) is None
