"""The wire contract: every model round-trips, the documented examples validate, and the rules hold."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.contract import (
    TOPICS,
    Ack,
    Command,
    DesiredConfig,
    DeviceState,
    Event,
    Reading,
    Reply,
    Severity,
    Status,
    Telemetry,
    Tx,
    TxOutcome,
    TxStatus,
    format_timestamp,
    parse_topic,
    seq_ranges,
    topic,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
T = datetime(2026, 11, 20, 3, 15, 0, 123000, tzinfo=UTC)

SAMPLES = [
    Status(device="kk-aq-0007", state=DeviceState.ONLINE, at=T, uptime_s=12.5, outbox_depth=3, dropped=0),
    Telemetry(device="kk-aq-0007", seq=42, sent_at=T, readings=[
        Reading(ts=T, sensor="pm", quantity="pm2_5", value=37.5, unit="ug/m3"),
        Reading(ts=T, sensor="gauge", quantity="above_bank", value=False, unit=None),
        Reading(ts=T, sensor="door", quantity="state", value="open", unit=None)]),
    Event(device="kk-aq-0007", seq=43, ts=T, sensor="sos", event="sos.pressed", severity=Severity.CRITICAL,
          data={"held_s": 1.2}),
    Tx(device="kk-kiosk-0001", seq=7, tx_id="tx-0001-abcdef", kind="fee.payment", created_at=T,
       data={"service": "garbage", "amount_satang": 4000}, citizen={"ref": "a" * 64},
       location={"lat": 16.4419, "lon": 102.8360}),
    TxOutcome(tx_id="tx-0001-abcdef", status=TxStatus.ACCEPTED, duplicate=False, reason=None,
              result={"receipt": "KK-2570-000001"}),
    Command(cmd_id="c1", name="set_interval", args={"sensor": "pm", "interval_s": 5}),
    Reply(device="kk-aq-0007", seq=44, cmd_id="c1", ok=True, result={"interval_s": 5}),
    Command(cmd_id="c2", name="ping", expires_at=T),
    Reply(device="kk-aq-0007", seq=45, cmd_id="c2", ok=False, error="command expired", code="expired"),
    DesiredConfig(version=3, heartbeat_s=60, intervals={"pm": 30}),
    Ack(acked=[(1, 40), (42, 44)]),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_round_trips_through_json(message: object) -> None:
    wire = message.to_json()  # type: ignore[attr-defined]
    again = type(message).model_validate_json(wire)  # type: ignore[attr-defined]
    assert again == message
    assert again.to_json() == wire
    assert b'"v":1' in wire


def test_every_topic_has_a_model_and_samples_cover_them() -> None:
    assert {type(m) for m in SAMPLES} == {spec.model for spec in TOPICS.values()}


def test_timestamps_are_utc_with_z_and_milliseconds() -> None:
    bangkok = timezone(timedelta(hours=7))
    t = Telemetry(device="kk-aq-0007", seq=1, sent_at=datetime(2026, 11, 20, 10, 15, tzinfo=bangkok),
                  readings=[Reading(ts="2026-11-20T03:15:00.5Z", sensor="pm", quantity="pm2_5", value=1, unit=None)])
    data = t.model_dump(mode="json")
    assert data["sent_at"] == "2026-11-20T03:15:00.000Z"
    assert data["readings"][0]["ts"] == "2026-11-20T03:15:00.500Z"
    assert format_timestamp(T) == "2026-11-20T03:15:00.123Z"
    with pytest.raises(ValidationError, match="time zone"):
        Reading(ts="2026-11-20T03:15:00", sensor="pm", quantity="pm2_5", value=1, unit=None)


def test_unknown_fields_are_kept_so_the_contract_can_grow() -> None:
    raw = b'{"v":1,"device":"kk-aq-0007","state":"online","at":"2026-11-20T03:15:00Z","firmware":"1.2"}'
    status = Status.model_validate_json(raw)
    assert status.model_dump()["firmware"] == "1.2"


@pytest.mark.parametrize("bad", [
    {"device": "KK-AQ", "seq": 1},          # upper case, too short
    {"device": "kk-aq-0007", "seq": 0},     # seq starts at 1
    {"device": "kk-aq-0007", "seq": True},  # a seq is a strict JSON integer
    {"device": "kk-aq-0007", "seq": "5"},
    {"device": "kk-aq-0007", "seq": 5.0},
    {"device": "kk-aq-0007", "seq": 2**63},  # within int64
    {"device": "kk-aq-0007", "seq": 1, "v": 2},
    {"device": "kk-aq-0007", "seq": 1, "readings": []},
    {"device": "kk-aq-0007", "seq": 1, "readings": [{"ts": "2026-11-20T03:15:00Z", "sensor": "pm",
                                                     "quantity": "pm2_5", "value": [1], "unit": None}]},
])
def test_invalid_telemetry_is_refused(bad: dict[str, object]) -> None:
    base: dict[str, object] = {"v": 1, "device": "kk-aq-0007", "seq": 1, "sent_at": "2026-11-20T03:15:00Z",
            "readings": [{"ts": "2026-11-20T03:15:00Z", "sensor": "pm", "quantity": "pm2_5", "value": 1,
                          "unit": "ug/m3"}]}
    with pytest.raises(ValidationError):
        Telemetry.model_validate({**base, **bad})
    with pytest.raises(ValidationError):
        Telemetry.model_validate_json(json.dumps({**base, **bad}))


def test_a_raw_citizen_id_does_not_fit_the_citizen_ref() -> None:
    with pytest.raises(ValidationError):
        Tx(device="kk-kiosk-0001", seq=1, tx_id="tx-00000001", kind="fee.payment", created_at=T, data={},
           citizen={"ref": "1101700230705"})


def test_topics_build_and_parse() -> None:
    assert topic("nakhon", "kk-aq-0007", "up/telemetry") == "nakhon/kk-aq-0007/up/telemetry"
    parsed = parse_topic("nakhon/kk-aq-0007/up/telemetry")
    assert parsed is not None and parsed.device == "kk-aq-0007" and parsed.spec is TOPICS["up/telemetry"]
    assert parse_topic("nakhon/KK/up/telemetry") is None
    assert parse_topic("other/kk-aq-0007/up/telemetry") is None
    assert parse_topic("nakhon/kk-aq-0007/up/telemetry/extra") is None
    with pytest.raises(ValueError, match="unknown topic suffix"):
        topic("nakhon", "kk-aq-0007", "up/firmware")


def test_seq_ranges_compress_and_sort() -> None:
    assert seq_ranges([5, 1, 2, 3, 9, 10, 3]) == [(1, 3), (5, 5), (9, 10)]
    assert seq_ranges([]) == []


def _doc_examples() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"```json topic=(\S+)\n(.*?)```", text, flags=re.S)


def test_protocol_doc_has_an_example_of_every_topic() -> None:
    assert {suffix for suffix, _ in _doc_examples()} == set(TOPICS)


@pytest.mark.parametrize("suffix,body", _doc_examples() if DOC.exists() else [])
def test_protocol_doc_examples_validate(suffix: str, body: str) -> None:
    TOPICS[suffix].model.model_validate_json(body)
