"""The writer's plain telemetry path (typed dicts, no models) classifies every message exactly as the models do."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from edge.contract import Reading, format_timestamp
from hub.ingest import classify as classify_module
from hub.ingest.classify import ClockWindow, classify
from hub.store.base import DeadLetter, PlainReading, SeqMessage

POLE = "kk-aq-0042"
TOPIC = f"nakhon/{POLE}/up/telemetry"
AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
RECEIVED = AT.timestamp() + 2.0
WINDOW = ClockWindow()


def _reading(**change: Any) -> dict[str, Any]:
    return {"ts": "2026-12-01T10:00:00.250Z", "sensor": "pm", "quantity": "pm2_5", "value": 12.5, "unit": "ug/m3",
            **change}


def _telemetry(*readings: dict[str, Any], **change: Any) -> bytes:
    data = {"v": 1, "device": POLE, "seq": 7, "sent_at": "2026-12-01T10:00:01.000Z",
            "readings": list(readings) or [_reading()], **change}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def _ahead(seconds: float) -> str:
    return format_timestamp(datetime.fromtimestamp(RECEIVED + seconds, UTC))


PLAIN: dict[str, bytes] = {
    "float": _telemetry(),
    "three-readings": _telemetry(_reading(), _reading(quantity="pm10", value=20), _reading(sensor="t", value=-3.25)),
    "int": _telemetry(_reading(value=7)),
    "largest-int64": _telemetry(_reading(value=2**63 - 1)),
    "bool": _telemetry(_reading(value=True)),
    "false": _telemetry(_reading(value=False)),
    "string": _telemetry(_reading(value="open")),
    "thai-sensor": _telemetry(_reading(sensor="เซ็นเซอร์", value="ปกติ")),
    "no-unit": _telemetry(_reading(unit=None)),
    "clock-field": _telemetry(_reading(clock="gps")),
    "no-v": _telemetry(v=...),
    "no-fraction": _telemetry(_reading(ts="2026-12-01T10:00:00Z")),
    "microseconds": _telemetry(_reading(ts="2026-12-01T10:00:00.123456Z")),
    "half-a-millisecond": _telemetry(_reading(ts="2026-12-01T10:00:00.0005Z")),
    "duplicate-key": _telemetry()[:-1] + b', "seq": 8}',
    "reading-earlier-than-sent": _telemetry(_reading(ts="2026-11-30T10:00:00Z")),
    "smallest-int64": _telemetry(_reading(value=-(2**63))),
    "value-of-4096-characters": _telemetry(_reading(value="ก" * 4096)),
    "just-inside-ahead": _telemetry(sent_at=_ahead(WINDOW.ahead_s - 1)),
}
"""Valid telemetry that the plain path takes itself."""

REFUSED: dict[str, bytes] = {
    "naive-reading": _telemetry(_reading(ts="2026-12-01T10:00:00")),
    "naive-sent-at": _telemetry(sent_at="2026-12-01T10:00:01"),
    "year-1-east": _telemetry(sent_at="0001-01-01T00:00:00+01:00"),
    "year-9999-west": _telemetry(_reading(ts="9999-12-31T23:59:59-01:00")),
    "month-13": _telemetry(_reading(ts="2026-13-01T10:00:00Z")),
    "leap-second": _telemetry(_reading(ts="2026-12-31T23:59:60Z")),
    "ts-garbage": _telemetry(_reading(ts="yesterday")),
    "seq-0": _telemetry(seq=0),
    "seq-string": _telemetry(seq="7"),
    "seq-true": _telemetry(seq=True),
    "seq-float": _telemetry(seq=7.0),
    "seq-2^63": _telemetry(seq=2**63),
    "no-readings": _telemetry(readings=[]),
    "readings-not-a-list": _telemetry(readings={"ts": 1}),
    "missing-unit": _telemetry({k: v for k, v in _reading().items() if k != "unit"}),
    "empty-sensor": _telemetry(_reading(sensor="")),
    "long-quantity": _telemetry(_reading(quantity="q" * 65)),
    "null-value": _telemetry(_reading(value=None)),
    "object-value": _telemetry(_reading(value={"x": 1})),
    "value-2^63": _telemetry(_reading(value=2**63)),
    "nan": _telemetry().replace(b"12.5", b"NaN"),
    "value--2^63-1": _telemetry(_reading(value=-(2**63) - 1)),
    "value-1e400": _telemetry().replace(b"12.5", b"1e400"),
    "value-of-4097-characters": _telemetry(_reading(value="x" * 4097)),
    "unit-of-4097-characters": _telemetry(_reading(unit="u" * 4097)),
    "long-string-in-an-extra-field": _telemetry(note="x" * 5000),
    "nested-deep-in-an-extra-field": _telemetry()[:-1] + b', "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    "19-digits-in-an-extra-field": _telemetry(x=10**19),
    "v-2": _telemetry(v=2),
    "other-device": _telemetry(device="kk-aq-0043"),
    "bad-device-id": _telemetry(device="KK"),
    "ahead-of-the-clock": _telemetry(sent_at=_ahead(WINDOW.ahead_s + 5)),
    "behind-the-clock": _telemetry(_reading(ts="2025-01-01T00:00:00Z")),
    "a-list": b"[1, 2]",
    "broken-json": b'{"v": 1, "device": ',
}
"""Telemetry the models refuse (each kind of failure the tests know)."""

EDGES: dict[str, bytes] = {
    "extra-fields": _telemetry(_reading(extra={"a": [1, 2]}), firmware="1.2.3"),
    "extra-deep-but-in-bounds": _telemetry(extra=[[[[1]]]]),
    "unix-seconds": _telemetry(_reading(ts=1796119200)),
    "lower-case-z": _telemetry(_reading(ts="2026-12-01t10:00:00.250z")),
    "offset-zone": _telemetry(_reading(ts="2026-12-01T17:00:00.250+07:00")),
    "at-the-edge-ahead": _telemetry(_reading(ts=_ahead(WINDOW.ahead_s))),
    "at-the-edge-behind": _telemetry(_reading(ts=_ahead(-WINDOW.behind_s))),
}
"""Valid telemetry that the plain path leaves to the models: fields the contract does not declare, timestamps in
another form than UTC's 'Z', or within the clock window's spare millisecond."""


def _by_models(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patch:
        patch.setattr(classify_module, "_plain_telemetry", lambda *_: None)
        return classify(TOPIC, payload, RECEIVED, window=WINDOW)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_valid_telemetry_takes_the_plain_path_with_the_models_outcome(name: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    payload = PLAIN[name]
    plain = classify_module._plain_telemetry(POLE, payload, RECEIVED, WINDOW)
    assert isinstance(plain, SeqMessage)
    assert classify(TOPIC, payload, RECEIVED, window=WINDOW) == plain
    assert plain == _by_models(payload, monkeypatch)
    assert plain.readings is not None and plain.telemetry is None


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_the_models_refuse_the_plain_path_leaves_to_them(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = REFUSED[name]
    outcome = classify(TOPIC, payload, RECEIVED, window=WINDOW)
    assert classify_module._plain_telemetry(POLE, payload, RECEIVED, WINDOW) is None
    assert isinstance(outcome, DeadLetter)
    assert outcome == _by_models(payload, monkeypatch)


@pytest.mark.parametrize("name", ["year-1-east", "year-9999-west"])
def test_without_a_clock_window_a_time_outside_the_years_is_still_refused(name: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    payload = REFUSED[name]
    outcome = classify(TOPIC, payload, RECEIVED)
    assert classify_module._plain_telemetry(POLE, payload, RECEIVED, None) is None
    assert isinstance(outcome, DeadLetter) and outcome.reason == "out_of_bounds"
    with monkeypatch.context() as patch:
        patch.setattr(classify_module, "_plain_telemetry", lambda *_: None)
        assert outcome == classify(TOPIC, payload, RECEIVED)


@pytest.mark.parametrize("name", sorted(EDGES))
def test_other_timestamp_forms_and_the_clock_windows_edges_are_left_to_the_models(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = EDGES[name]
    outcome = classify(TOPIC, payload, RECEIVED, window=WINDOW)
    assert classify_module._plain_telemetry(POLE, payload, RECEIVED, WINDOW) is None
    assert isinstance(outcome, SeqMessage)
    assert outcome == _by_models(payload, monkeypatch)


def test_plain_readings_keep_the_value_type_and_the_time_in_ms() -> None:
    item = classify(TOPIC, PLAIN["three-readings"], RECEIVED, window=WINDOW)
    assert isinstance(item, SeqMessage) and item.readings is not None
    assert [(r.ts_ms, r.sensor, r.quantity, r.value, r.unit) for r in item.readings] == [
        (1796119200250, "pm", "pm2_5", 12.5, "ug/m3"), (1796119200250, "pm", "pm10", 20, "ug/m3"),
        (1796119200250, "t", "pm2_5", -3.25, "ug/m3")]
    assert type(item.readings[1].value) is int
    assert PlainReading(1, "s", "q", True, None) != PlainReading(1, "s", "q", 1, None)


def test_a_message_built_from_models_gets_its_plain_readings() -> None:
    reading = Reading(ts=datetime(2026, 12, 1, 10, 0, 0, 250_499, tzinfo=UTC), sensor="pm", quantity="pm2_5",
                      value=1, unit=None)
    message = SeqMessage(device=POLE, seq=1, received_at=RECEIVED, telemetry=[reading])
    assert message.readings == [PlainReading(1796119200250, "pm", "pm2_5", 1, None)]
    assert message.readings[0].ts == datetime(2026, 12, 1, 10, 0, 0, 250_000, tzinfo=UTC)
