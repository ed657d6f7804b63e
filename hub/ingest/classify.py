"""Turns one received MQTT message into what the hub does with it: store it, apply it, or dead-letter it.

Pure functions, no I/O: the consumer feeds them, the tests drive them directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from edge.contract import (
    DEFAULT_ROOT,
    Event,
    Reply,
    Status,
    Telemetry,
    Tx,
    parse_topic,
)
from hub.store.base import DeadLetter, SeqMessage, StatusUpdate


class Reason(StrEnum):
    """Why a message went to the dead-letter store."""

    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    DEVICE_MISMATCH = "device_mismatch"


@dataclass(frozen=True)
class TxRequest:
    """A transaction to hand to the router."""

    tx: Tx
    received_at: float


Classified = SeqMessage | StatusUpdate | TxRequest | DeadLetter

_MODELS: dict[str, type[Telemetry | Event | Reply | Tx | Status]] = {
    "up/telemetry": Telemetry,
    "up/event": Event,
    "up/reply": Reply,
    "up/tx": Tx,
    "up/status": Status,
}


def _dead(topic: str, payload: bytes, at: float, reason: Reason, detail: str,
          device: str | None = None, seq: int | None = None) -> DeadLetter:
    return DeadLetter(topic=topic, reason=reason.value, detail=detail, received_at=at, size=len(payload),
                      payload=payload, device=device, seq=seq)


def _schema_detail(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(payload)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def classify(topic: str, payload: bytes, received_at: float, *, root: str = DEFAULT_ROOT,
             max_payload: int = 262_144) -> Classified:
    """Decide what a message is; anything that is not applicable becomes a :class:`DeadLetter`."""
    if len(payload) > max_payload:
        return _dead(topic, payload, received_at, Reason.OVERSIZE,
                     f"payload of {len(payload)} bytes exceeds the hub's limit of {max_payload}")
    parsed = parse_topic(topic, root)
    model = _MODELS.get(parsed.suffix) if parsed else None
    if parsed is None or model is None:
        return _dead(topic, payload, received_at, Reason.BAD_TOPIC,
                     f"not a device uplink topic of the contract ({root}/DEVICE/up/...)")
    try:
        message = model.model_validate_json(payload)
    except ValidationError as err:
        return _diagnose(topic, payload, received_at, parsed.device, err)
    if message.device != parsed.device:
        return _dead(topic, payload, received_at, Reason.DEVICE_MISMATCH,
                     f"payload device {message.device!r} published on the topic of {parsed.device!r}")
    if isinstance(message, Telemetry):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at,
                          telemetry=message.readings, sent_at=message.sent_at)
    if isinstance(message, Event):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at, event=message)
    if isinstance(message, Reply):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at, reply=message)
    if isinstance(message, Tx):
        return TxRequest(tx=message, received_at=received_at)
    return StatusUpdate(status=message, received_at=received_at)


def _diagnose(topic: str, payload: bytes, at: float, device: str, err: ValidationError) -> DeadLetter:
    try:
        data: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as json_err:
        return _dead(topic, payload, at, Reason.INVALID_JSON, f"not UTF-8 JSON: {json_err}")
    if not isinstance(data, dict):
        return _dead(topic, payload, at, Reason.INVALID_JSON, f"a JSON {type(data).__name__}, not an object")
    claimed = data.get("device")
    if isinstance(claimed, str) and claimed != device:
        return _dead(topic, payload, at, Reason.DEVICE_MISMATCH,
                     f"payload device {claimed!r} published on the topic of {device!r}")
    seq = data.get("seq")
    trusted = (claimed == device and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1
               and not topic.endswith("/up/tx"))
    return _dead(topic, payload, at, Reason.SCHEMA, _schema_detail(err),
                 device=device if trusted else None, seq=seq if trusted else None)
