"""Property-based fuzz of the hub's whole OpenAPI document (schemathesis, in-process over ASGI): no answer is a
500, and every documented answer matches its schema.

Each operation gets its own hub over a store in tmp_path (one kiosk, a payment and a report in it) and a bounded
number of valid and invalid requests, derandomised so that a failure reproduces. Every request is signed in as an
admin, and the bank's confirmations are signed with the bank's secret, so the fuzz reaches each route's own code
rather than stopping at a 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.auth import signature
from hub.auth.throttle import SignInThrottle
from hub.serve import build
from tests.test_api_input import BANK_SECRET, HubApp, hub_settings, make_hub_app

EXAMPLES = 30
DOCUMENTED_5XX = {"GET /healthz": {503}}
"""The test hub has no broker: ``/healthz`` truly answers 503 (degraded); any other 5xx is a defect."""


def _operations() -> list[str]:
    """Every path and method the hub documents (building the app opens nothing)."""
    app, _, _ = build(hub_settings(Path("unused")))
    return [f"{method.upper()} {path}" for path, methods in app.openapi()["paths"].items() for method in methods]


OPERATIONS = _operations()


class BankSigner:
    """ASGI wrapper signing the body of each payment confirmation as the bank does (other requests pass as they
    are), so that fuzzed bodies reach the confirmation itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/confirm"):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        signed = [(k.lower().encode(), v.encode()) for k, v in signature.headers(BANK_SECRET, body).items()]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": [*scope["headers"], *signed]}, replay, send)


def test_the_fuzz_covers_every_module_of_the_api() -> None:
    for prefix in ("/api/devices", "/api/deadletters", "/api/finance/", "/api/gis/", "/ogc/collections/{cid}/items"):
        assert any(prefix in label for label in OPERATIONS), prefix


@pytest.fixture
def fuzzed_hub(tmp_path: Path) -> Iterator[HubApp]:
    """The hub's app over its store; the store is closed after the test's teardown has ended the app's lifespan
    (schemathesis ends it in its ``pytest_runtest_teardown``, while fixtures are alive): closing it in the test
    itself left the alarm threads the lifespan started reading from a closed store."""
    hub = make_hub_app(tmp_path)
    yield hub
    hub.store.close()


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_input_makes_the_api_fail_or_answer_off_its_schema(fuzzed_hub: HubApp, label: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # failed sign-ins are fuzzed too; the slowdown they earn has its own test (tests/test_auth.py)
    monkeypatch.setattr(SignInThrottle, "delay", lambda self, name, address: 0.0)
    hub = fuzzed_hub
    schema = schemathesis.openapi.from_asgi("/openapi.json", BankSigner(hub.app))
    operation = next(op.ok() for op in schema.get_all_operations() if isinstance(op, Ok) and op.ok().label == label)
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def answers_well(case: Case[Any]) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {hub.token}"},
                                          checks=[response_schema_conformance])
        assert response.status_code < 500 or response.status_code in DOCUMENTED_5XX.get(label, set()), (
            f"{case.as_curl_command()} answered {response.status_code}: {response.text[:500]}")

    answers_well()
