"""Turns one received MQTT message into what the hub does with it: store it, apply it, or dead-letter it.

Pure functions, no I/O: the consumer feeds them, the tests drive them directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, cast

from pydantic import ValidationError
from pydantic_core import CoreSchema, PydanticCustomError, SchemaValidator

from edge.contract import (
    BOUND_ERRORS,
    BOUNDS_CHECKED,
    DEFAULT_ROOT,
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    MAX_TEXT,
    TOO_DEEP,
    Event,
    Reply,
    Status,
    Telemetry,
    Tx,
    check_bounds,
    is_seq,
    parse_topic,
    within_bounds,
)
from hub.store.base import DeadLetter, PlainReading, SeqMessage, StatusUpdate, epoch_ms


class Reason(StrEnum):
    """Why a message went to the dead-letter store."""

    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    DEVICE_MISMATCH = "device_mismatch"
    TOO_DEEP = "too_deep"
    OUT_OF_BOUNDS = "out_of_bounds"
    CLOCK_SKEW = "clock_skew"
    STORE_REJECTED = "store_rejected"
    KIND_NOT_ALLOWED = "kind_not_allowed"
    UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class ClockWindow:
    """How far a message's timestamps may be from the hub's clock (the time it received the message)."""

    ahead_s: float = 600.0
    behind_s: float = 366 * 86_400.0

    def refusal(self, stamps: Iterator[tuple[str, datetime]], now: float) -> str | None:
        """Why the first timestamp outside the window is refused, or None when all are inside."""
        for name, stamp in stamps:
            offset = stamp.timestamp() - now
            if offset > self.ahead_s:
                return (f"{name} {stamp.isoformat()} is {offset:.0f} s ahead of the hub's clock "
                        f"(at most {self.ahead_s:g} s allowed)")
            if -offset > self.behind_s:
                return (f"{name} {stamp.isoformat()} is {-offset:.0f} s behind the hub's clock "
                        f"(at most {self.behind_s:g} s allowed)")
        return None

    def holds(self, span: tuple[datetime, datetime], now: float) -> bool:
        """Whether the instants from ``span[0]`` to ``span[1]`` are all inside the window, 1 ms to spare: True
        means :meth:`refusal` finds nothing (two comparisons instead of a named walk of every timestamp; in
        seconds since the epoch, whose float rounding is far below the millisecond spared)."""
        return self.holds_s(span[0].timestamp(), span[1].timestamp(), now)

    def holds_s(self, first: float, last: float, now: float) -> bool:
        """:meth:`holds` for the earliest and latest instants in seconds since the epoch."""
        return now - self.behind_s + 0.001 <= first and last <= now + self.ahead_s - 0.001


def _telemetry_span(m: Any) -> tuple[datetime, datetime]:
    stamps = [r.ts for r in m.readings]
    stamps.append(m.sent_at)
    return min(stamps), max(stamps)


def _telemetry_stamps(m: Any) -> Iterator[tuple[str, datetime]]:
    yield "sent_at", m.sent_at
    for i, r in enumerate(m.readings):
        yield f"readings.{i}.ts", r.ts


_STAMPS: dict[type, Callable[[Any], Iterator[tuple[str, datetime]]]] = {
    Telemetry: _telemetry_stamps,
    Event: lambda m: iter((("ts", m.ts),)),
}
"""The timestamps of each model that the hub holds against its clock. A status is stamped on receipt; a
transaction's ``created_at`` is not refused (a citizen's payment must not fail on a kiosk's clock): finance
decides which time dates it."""
_SPANS: dict[type, Callable[[Any], tuple[datetime, datetime]]] = {
    Telemetry: _telemetry_span,
    Event: lambda m: (m.ts, m.ts),
}
"""The earliest and latest of those timestamps, for :meth:`ClockWindow.holds`."""


@dataclass(frozen=True)
class TxRequest:
    """A transaction to hand to the router."""

    tx: Tx
    received_at: float


@dataclass(frozen=True)
class TxRefused:
    """A transaction that breaks the contract but names its ``tx_id``: dead-lettered, and answered ``rejected``
    so that the kiosk stops sending it and tells the citizen."""

    letter: DeadLetter
    tx_id: str


_parse_topic = lru_cache(maxsize=16_384)(parse_topic)
""":func:`edge.contract.parse_topic` remembered for the topics seen last (a fleet publishes on a few per device;
a :class:`ParsedTopic` is immutable)."""

_CHECKED = {BOUNDS_CHECKED: True}
"""The context of a payload whose bytes show it within bounds: the models skip their walk of it."""

Classified = SeqMessage | StatusUpdate | TxRequest | TxRefused | DeadLetter

_MODELS: dict[str, type[Telemetry | Event | Reply | Tx | Status]] = {
    "up/telemetry": Telemetry,
    "up/event": Event,
    "up/reply": Reply,
    "up/tx": Tx,
    "up/status": Status,
}


def _unwalked(model: type[Telemetry | Event | Reply | Tx | Status]) -> SchemaValidator:
    """``model``'s validator without its one model-level before-validator, the :func:`check_bounds` walk that a
    :data:`BOUNDS_CHECKED` context skips: for a payload :func:`within_bounds` cleared it gives the same model,
    but pydantic-core types the JSON itself instead of first decoding it to Python objects for that validator."""
    schema = cast(dict[str, Any], model.__pydantic_core_schema__)
    inner = schema["schema"]
    if schema["type"] != "model" or inner["type"] != "function-before" or inner["schema"]["type"] != "model-fields":
        raise TypeError(f"{model.__name__}'s schema is not a model behind one before-validator")
    return SchemaValidator(cast(CoreSchema, {**schema, "schema": inner["schema"]}))


_UNWALKED = {suffix: _unwalked(model) for suffix, model in _MODELS.items()}
"""Per topic suffix: its model's validator for payloads within bounds (see :func:`_unwalked`)."""

_CHECKED_ELSEWHERE = frozenset({"_bounded", "_bounded_value"})
"""The contract's function validators the plain schema does without: the bounds walk and the per-value bound,
which the plain schema's own bounds replace (see :func:`_plain_schema`)."""
_UTC_STAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$"
"""The one timestamp form the plain schema takes, what agents send (RFC 3339 in UTC, 'Z', at most microseconds):
a string the standard library reads as the models do. Any other form the models take leaves the message to them."""


def _plain_schema(schema: dict[str, Any], in_union: bool = False) -> dict[str, Any]:
    """A model's core schema as typed dicts of its declared fields only (an unknown field fails it), every
    timestamp a :data:`_UTC_STAMP` string, and the contract's bounds (:func:`edge.contract.check_bounds`) put on
    each scalar instead of the validators of :data:`_CHECKED_ELSEWHERE`: integers in int64, finite floats,
    strings of at most :data:`MAX_TEXT` characters, and nesting no deeper than the declared fields'. What it
    takes, the models take with the same values. An integer among a union's choices is left unbounded (bounded,
    the union would take an integer outside int64 as a float): :func:`_plain_telemetry` bounds the reading's
    value. Any other function validator raises TypeError, so a rule added to the contract cannot be skipped."""
    kind = schema["type"]
    if kind == "model":
        if set(schema.get("config", {})) - {"extra_fields_behavior", "title"}:
            raise TypeError(f"the plain telemetry schema does not know the config of {schema['cls'].__name__}")
        return _plain_schema(schema["schema"])
    if kind == "model-fields":
        return {"type": "typed-dict", "extra_behavior": "forbid",
                "fields": {name: {"type": "typed-dict-field", "required": f["schema"]["type"] != "default",
                                  "schema": _plain_schema(f["schema"])}
                           for name, f in schema["fields"].items()}}
    if kind.startswith("function-"):
        name = getattr(schema["function"]["function"], "__name__", "")
        if name == "_to_utc" and schema["schema"]["type"] == "datetime":
            return {"type": "str", "pattern": _UTC_STAMP}
        if name not in _CHECKED_ELSEWHERE:
            raise TypeError(f"the plain telemetry schema does not know the validator {name!r}")
        return _plain_schema(schema["schema"], in_union)
    plain = {k: v for k, v in schema.items() if k not in ("serialization", "ref", "metadata")}
    if kind == "int":
        if not in_union:
            plain["ge"] = max(plain.get("ge", INT64_MIN), INT64_MIN)
            plain["le"] = min(plain.get("le", INT64_MAX), INT64_MAX)
    elif kind == "float":
        plain["allow_inf_nan"] = False
    elif kind == "str":
        plain["max_length"] = min(plain.get("max_length", MAX_TEXT), MAX_TEXT)
    elif kind not in _PLAIN_KINDS:
        raise TypeError(f"the plain telemetry schema does not know the schema type {kind!r}")
    for key in ("schema", "items_schema"):
        if key in plain:
            plain[key] = _plain_schema(plain[key], in_union)
    if "choices" in plain:
        plain["choices"] = [_plain_schema(c, in_union=True) for c in plain["choices"]]
    return plain


_PLAIN_KINDS = frozenset({"bool", "literal", "nullable", "default", "list", "union"})
"""The other schema types the plain schema takes as they are (none can hold a value out of bounds itself)."""

_PLAIN_TELEMETRY = SchemaValidator(cast(CoreSchema, _plain_schema(
    cast(dict[str, Any], Telemetry.__pydantic_core_schema__))))
""":class:`Telemetry`'s fields, constraints and bounds as typed dicts (see :func:`_plain_schema`): a plain payload
validates to dicts and lists at a third of the models' cost, with no bytes check before it."""


def _plain_telemetry(device: str, payload: bytes, received_at: float, window: ClockWindow | None) -> SeqMessage | None:
    """The telemetry ``payload`` of ``device`` as a :class:`SeqMessage` of plain readings, or None when it is not
    plainly valid: the models then decide, and name what is wrong."""
    try:
        data = _PLAIN_TELEMETRY.validate_json(payload)
        sent_at = datetime.fromisoformat(data["sent_at"])
    except (ValidationError, ValueError):  # ValueError: a date that does not exist (the models refuse it too)
        return None
    if data["device"] != device:
        return None
    first = last = epoch_ms(sent_at)
    stamps = {data["sent_at"]: first}  # the readings of one message mostly share a timestamp
    readings: list[PlainReading] = []
    add = readings.append
    for r in data["readings"]:
        text = r["ts"]
        t = stamps.get(text)
        if t is None:
            try:
                t = stamps[text] = epoch_ms(datetime.fromisoformat(text))
            except ValueError:
                return None
            if t < first:
                first = t
            elif t > last:
                last = t
        value = r["value"]
        if value.__class__ is int and not INT64_MIN <= value <= INT64_MAX:
            return None
        add(PlainReading(t, r["sensor"], r["quantity"], value, r["unit"]))
    if window is not None and not window.holds_s(first / 1000, last / 1000, received_at):
        return None  # rounded to the ms, inside the window's spare ms: the models name the refused timestamp
    return SeqMessage(device=device, seq=data["seq"], received_at=received_at, sent_at=sent_at, readings=readings)


def _dead(topic: str, payload: bytes, at: float, reason: Reason, detail: str,
          device: str | None = None, seq: int | None = None) -> DeadLetter:
    return DeadLetter(topic=topic, reason=reason.value, detail=detail, received_at=at, size=len(payload),
                      payload=payload, device=device, seq=seq)


def _schema_detail(err: ValidationError, types: frozenset[str] | None = None) -> str:
    parts = []
    errors = [e for e in err.errors() if types is None or e["type"] in types]
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(payload)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def classify(topic: str, payload: bytes, received_at: float, *, root: str = DEFAULT_ROOT,
             max_payload: int = 262_144, window: ClockWindow | None = None,
             admits: Callable[[str], bool] | None = None) -> Classified:
    """Decide what a message is; anything that is not applicable becomes a :class:`DeadLetter`.

    ``window`` holds the message's timestamps against ``received_at`` (the hub's clock); None skips that check.
    ``admits`` says whether the registry takes messages from a device (None: every device, as without a
    provisioned deployment).
    """
    if len(payload) > max_payload:
        return _dead(topic, payload, received_at, Reason.OVERSIZE,
                     f"payload of {len(payload)} bytes exceeds the hub's limit of {max_payload}")
    parsed = _parse_topic(topic, root)
    model = _MODELS.get(parsed.suffix) if parsed else None
    if parsed is None or model is None:
        return _dead(topic, payload, received_at, Reason.BAD_TOPIC,
                     f"not a device uplink topic of the contract ({root}/DEVICE/up/...)")
    if admits is not None and not admits(parsed.device):
        return _dead(topic, payload, received_at, Reason.UNREGISTERED,
                     f"device {parsed.device!r} is not active in the registry (nakhon provision device list)")
    if model is Telemetry:
        fast = _plain_telemetry(parsed.device, payload, received_at, window)
        if fast is not None:
            return fast
    try:
        if within_bounds(payload):
            message = cast(Telemetry | Event | Reply | Tx | Status,
                           _UNWALKED[parsed.suffix].validate_json(payload, context=_CHECKED))
        else:
            message = model.model_validate_json(payload)
    except ValidationError as err:
        return _diagnose(topic, payload, received_at, parsed.device, err)
    if message.device != parsed.device:
        return _dead(topic, payload, received_at, Reason.DEVICE_MISMATCH,
                     f"payload device {message.device!r} published on the topic of {parsed.device!r}")
    stamps = _STAMPS.get(type(message))
    skew = None
    if stamps and window and not window.holds(_SPANS[type(message)](message), received_at):
        skew = window.refusal(stamps(message), received_at)
    if skew is not None:
        seq = message.seq if isinstance(message, Telemetry | Event) else None
        return _dead(topic, payload, received_at, Reason.CLOCK_SKEW, skew,
                     device=message.device if seq else None, seq=seq)
    if isinstance(message, Telemetry):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at,
                          sent_at=message.sent_at, readings=[PlainReading.of(r) for r in message.readings])
    if isinstance(message, Event):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at, event=message)
    if isinstance(message, Reply):
        return SeqMessage(device=message.device, seq=message.seq, received_at=received_at, reply=message)
    if isinstance(message, Tx):
        return TxRequest(tx=message, received_at=received_at)
    return StatusUpdate(status=message, received_at=received_at)


def _diagnose(topic: str, payload: bytes, at: float, device: str,
              err: ValidationError) -> DeadLetter | TxRefused:
    try:
        data: Any = json.loads(payload)
    except RecursionError:
        return _dead(topic, payload, at, Reason.TOO_DEEP,
                     f"objects and arrays nested deeper than {MAX_DEPTH} levels")
    except (UnicodeDecodeError, ValueError) as json_err:
        return _dead(topic, payload, at, Reason.INVALID_JSON, f"not UTF-8 JSON: {json_err}")
    if not isinstance(data, dict):
        return _dead(topic, payload, at, Reason.INVALID_JSON, f"a JSON {type(data).__name__}, not an object")
    claimed = data.get("device")
    if isinstance(claimed, str) and claimed != device:
        return _dead(topic, payload, at, Reason.DEVICE_MISMATCH,
                     f"payload device {claimed!r} published on the topic of {device!r}")
    reason, detail = _reason(err, data)
    seq = data.get("seq")
    is_tx = topic.endswith("/up/tx")
    trusted = claimed == device and is_seq(seq) and not is_tx
    letter = _dead(topic, payload, at, reason, detail,
                   device=device if trusted else None, seq=seq if trusted else None)
    tx_id = data.get("tx_id")
    if is_tx and claimed == device and isinstance(tx_id, str) and 8 <= len(tx_id) <= 64:
        return TxRefused(letter=letter, tx_id=tx_id)
    return letter


def _reason(err: ValidationError, data: Any) -> tuple[Reason, str]:
    """A bound broken anywhere in the payload names the reason; otherwise it is a schema failure."""
    types = {e["type"] for e in err.errors()}
    if TOO_DEEP in types:
        return Reason.TOO_DEEP, _schema_detail(err, frozenset({TOO_DEEP}))
    if types & BOUND_ERRORS:
        return Reason.OUT_OF_BOUNDS, _schema_detail(err, BOUND_ERRORS)
    try:
        check_bounds(data)  # the JSON parser of the models gives up on deep nesting before the bounds are seen
    except PydanticCustomError as bound:
        return Reason(bound.type), bound.message()
    return Reason.SCHEMA, _schema_detail(err)
