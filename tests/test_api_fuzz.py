"""Property-based fuzz of the hub's whole OpenAPI document (schemathesis, in-process over ASGI): no answer is a
500, and every documented answer matches its schema.

Each operation gets its own hub over a store in tmp_path (one kiosk, a payment and a report in it) and a bounded
number of valid and invalid requests, derandomised so that a failure reproduces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from hub.serve import build
from tests.test_api_input import BANK_TOKEN, hub_settings, make_hub_app

EXAMPLES = 30
DOCUMENTED_5XX = {"GET /healthz": {503}}
"""The test hub has no broker: ``/healthz`` truly answers 503 (degraded); any other 5xx is a defect."""


def _operations() -> list[str]:
    """Every path and method the hub documents (building the app opens nothing)."""
    app, _, _ = build(hub_settings(Path("unused")))
    return [f"{method.upper()} {path}" for path, methods in app.openapi()["paths"].items() for method in methods]


OPERATIONS = _operations()


def test_the_fuzz_covers_every_module_of_the_api() -> None:
    for prefix in ("/api/devices", "/api/deadletters", "/api/finance/", "/api/gis/", "/ogc/collections/{cid}/items"):
        assert any(prefix in label for label in OPERATIONS), prefix


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_input_makes_the_api_fail_or_answer_off_its_schema(tmp_path: Path, label: str) -> None:
    hub = make_hub_app(tmp_path)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", hub.app)
        operation = next(op.ok() for op in schema.get_all_operations() if isinstance(op, Ok) and op.ok().label == label)
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def answers_well(case: Case[Any]) -> None:
            response = case.call_and_validate(headers={"Authorization": f"Bearer {BANK_TOKEN}"},
                                              checks=[response_schema_conformance])
            assert response.status_code < 500 or response.status_code in DOCUMENTED_5XX.get(label, set()), (
                f"{case.as_curl_command()} answered {response.status_code}: {response.text[:500]}")

        answers_well()
    finally:
        hub.store.close()
