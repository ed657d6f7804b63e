"""The hub skips the models' walk of a payload only when its bytes show that no bound can be broken."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from edge.contract import MAX_DEPTH, MAX_TEXT, check_bounds, format_timestamp, now, within_bounds
from hub.ingest.classify import classify

POLE = "kk-aq-0404"


def _telemetry(**extra: Any) -> dict[str, Any]:
    stamp = format_timestamp(now())
    return {"v": 1, "device": POLE, "seq": 3, "sent_at": stamp,
            "readings": [{"ts": stamp, "sensor": "pm", "quantity": "pm2_5", "value": 12.5, "unit": "ug/m3"}],
            **extra}


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("extra", [
    {"x": "a" * (MAX_TEXT + 1)},
    {"a" * (MAX_TEXT + 1): 1},
    {"x": _nested(MAX_DEPTH)},
    {"x": 2**63},
    {"x": -(2**63) - 1},
], ids=["long-string", "long-key", "deep", "int-too-big", "int-too-small"])
def test_a_payload_out_of_bounds_in_an_extra_field_is_still_dead_lettered(extra: dict[str, Any]) -> None:
    payload = json.dumps(_telemetry(**extra)).encode()
    assert not within_bounds(payload)
    letter = classify(f"nakhon/{POLE}/up/telemetry", payload, now().timestamp())
    assert getattr(letter, "reason", None) in ("out_of_bounds", "too_deep")


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1E+400"])
def test_non_finite_numbers_are_never_taken_as_within_bounds(raw: bytes) -> None:
    payload = json.dumps(_telemetry(x="PLACE")).encode().replace(b'"PLACE"', raw)
    assert not within_bounds(payload)
    letter = classify(f"nakhon/{POLE}/up/telemetry", payload, now().timestamp())
    assert getattr(letter, "reason", None) in ("out_of_bounds", "schema", "invalid_json")


def test_an_ordinary_telemetry_takes_the_fast_path_and_is_stored_the_same() -> None:
    payload = json.dumps(_telemetry(note="ok", nested={"a": [1, 2.5, None, True]})).encode()
    assert within_bounds(payload)
    item = classify(f"nakhon/{POLE}/up/telemetry", payload, now().timestamp())
    assert type(item).__name__ == "SeqMessage"


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 40 else 5)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**63, 10**rng.randrange(25), -(10**rng.randrange(25))])
    if kind == 1:
        return rng.choice([0.5, 1e308, 1e-300, 1.5e22, -2.5e-7, float(rng.randrange(10**6)) / 7])
    if kind == 2:
        return "x" * rng.choice([0, 5, MAX_TEXT - 10, MAX_TEXT, MAX_TEXT + 1])
    if kind in (3, 4):
        return rng.choice([True, False, None])
    if kind == 5:
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(3))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(1, 3))]


def test_within_bounds_never_vouches_for_a_payload_the_walk_refuses() -> None:
    rng = random.Random(7)
    vouched = 0
    for _ in range(3000):
        payload = json.dumps(_telemetry(x=_random_value(rng, 1))).encode()
        if within_bounds(payload):
            vouched += 1
            check_bounds(json.loads(payload))  # raises PydanticCustomError if the fast path were wrong
    assert vouched > 500
