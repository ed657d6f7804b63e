"""The wire contract: typed models of every MQTT topic and payload that devices and the hub exchange.

This module is the one thing the edge and the hub share. Fields are added, never renamed or retyped;
every payload is a JSON object with ``"v": 1`` and may carry more fields than the ones declared here
(``extra="allow"``), so that newer devices keep working with older hubs and the other way round.
See ``docs/protocol.md`` for the prose version with an example of each payload.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

DEFAULT_ROOT: Final = "nakhon"
DEVICE_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{2,62}$"
_DEVICE_ID_RE: Final = re.compile(DEVICE_ID_PATTERN)


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_DEPTH: Final = 32
"""Deepest nesting of objects and arrays in a payload (the payload object itself is level 1)."""
MAX_TEXT: Final = 4096
"""Longest string (value or object key) anywhere in a payload, in characters."""
OUT_OF_BOUNDS: Final = "out_of_bounds"
TOO_DEEP: Final = "too_deep"
BOUND_ERRORS: Final = frozenset({OUT_OF_BOUNDS, TOO_DEEP, "finite_number"})
"""Validation error types that mean "outside what the hub can hold" rather than "not this schema"."""


def _out_of_bounds(what: str, path: tuple[str | int, ...] = ()) -> PydanticCustomError:
    where = f" at {'.'.join(str(p) for p in path)}" if path else ""
    return PydanticCustomError(OUT_OF_BOUNDS, "{what}{where}", {"what": what, "where": where})


def _bound_scalar(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Refuse a JSON scalar the store cannot hold: an integer outside int64, NaN or an infinity, a huge string."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise _out_of_bounds("integer outside the 64-bit range [-2^63, 2^63-1]", path)
    if isinstance(value, float) and not math.isfinite(value):
        raise _out_of_bounds("number is not finite (NaN and infinities are refused)", path)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise _out_of_bounds(f"string of {len(value)} characters, longer than {MAX_TEXT}", path)


def check_bounds(data: Any) -> None:
    """Walk a decoded payload (without recursion) and refuse what breaks the contract's bounds.

    Nesting deeper than :data:`MAX_DEPTH` raises a ``too_deep`` error, every other bound ``out_of_bounds``.
    Values that are not plain JSON (models, datetimes built by a sender) are left to their own validators.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list):
            if len(path) >= MAX_DEPTH:
                raise PydanticCustomError(TOO_DEEP, "objects and arrays nested deeper than {limit} levels",
                                          {"limit": MAX_DEPTH})
            if isinstance(value, dict):
                for key, item in value.items():
                    _bound_scalar(key, path)
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(value))
        else:
            _bound_scalar(value, path)


BOUNDS_CHECKED: Final = "bounds_checked"
"""Validation context key: the caller has shown with :func:`within_bounds` that the raw payload breaks no bound,
so the models skip :func:`check_bounds` and the per-value bound of seqs and reading values (the schema's
other per-field validators still run)."""
_DIGITS_AS_9: Final = bytes.maketrans(b"0123456789E", b"9999999999e")
"""Every digit as ``9`` and ``E`` as ``e``: what :func:`within_bounds` looks for becomes a few plain substrings
(``bytes.translate`` and ``in`` take a microsecond where a regular expression over the payload takes tens)."""
_NINETEEN_DIGITS: Final = b"9" * 19


def within_bounds(payload: bytes) -> bool:
    """Whether the raw JSON ``payload`` cannot break a bound of :func:`check_bounds`, decided from its bytes alone
    (conservative: False only means "walk it"). No string in it is longer than the payload, no nesting deeper than
    its brackets, no integer outside int64 without 19 digits in a row, no infinity without a 3-digit exponent,
    ``NaN`` or ``Inf``."""
    if len(payload) > MAX_TEXT or payload.count(b"{") + payload.count(b"[") >= MAX_DEPTH:
        return False
    shape = payload.translate(_DIGITS_AS_9)  # 19 digits in a row, a 3-digit exponent, NaN, Infinity
    return (_NINETEEN_DIGITS not in shape and b"e999" not in shape and b"e+999" not in shape
            and b"e-999" not in shape and b"NaN" not in shape and b"Inf" not in shape)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a time zone (RFC 3339 with a 'Z' suffix)")
    try:
        return value.astimezone(UTC)
    except OverflowError as err:
        raise _out_of_bounds("timestamp outside the years 1 to 9999 in UTC") from err


def format_timestamp(value: datetime) -> str:
    """Render a timestamp as the contract wants it: RFC 3339, UTC, millisecond precision, 'Z' suffix."""
    return _to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
"""A device id: lower-case letters, digits and dashes, 3 to 63 characters (``kk-aq-0007``)."""

Timestamp = Annotated[
    datetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]
"""An RFC 3339 instant; always held in UTC and written with a ``Z`` suffix."""

def _bounded_value(value: Any, info: ValidationInfo) -> Any:
    # a payload that within_bounds cleared holds no scalar out of bounds, so this one is not either
    if not (info.context and info.context.get(BOUNDS_CHECKED)):
        _bound_scalar(value)
    return value


Seq = Annotated[int, Field(ge=1, strict=True), AfterValidator(_bounded_value)]
"""The per-device outbox sequence number: strictly increasing, never reused; a JSON integer in [1, 2^63-1]
(``true``, ``"5"`` and ``5.0`` are refused)."""


def is_seq(value: Any) -> bool:
    """Whether a decoded JSON value is a valid seq (a strict integer in [1, 2^63-1])."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= INT64_MAX


Scalar = bool | int | float | str
"""A reading's value: a number, a boolean or a string."""

ReadingValue = Annotated[Scalar, BeforeValidator(_bounded_value)]
"""A reading's value as the contract bounds it: integers in int64, finite floats, strings up to MAX_TEXT."""


def now() -> datetime:
    """The current instant in UTC, cut to the millisecond precision the wire carries."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class Message(BaseModel):
    """Base of every payload: version 1, unknown fields kept (the contract only ever adds)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    v: Literal[1] = 1

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any, info: ValidationInfo) -> Any:
        if not (info.context and info.context.get(BOUNDS_CHECKED)):
            check_bounds(data)
        return data

    def to_json(self) -> bytes:
        """Serialise for the wire (UTF-8 JSON)."""
        return self.model_dump_json(exclude_none=False).encode()


class DeviceState(StrEnum):
    """Link state of a device as told by its retained status message."""

    ONLINE = "online"
    OFFLINE = "offline"
    LOST = "lost"


class Severity(StrEnum):
    """How urgently an operator should look at an event."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class TxStatus(StrEnum):
    """Outcome of a service transaction."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING = "pending"


class ClockState(BaseModel):
    """Which clock stamps the device's readings and whether it is synchronised."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str = "system"
    synchronized: bool | None = None


class StreamHealth(BaseModel):
    """State of one sensor stream of a device, carried in its heartbeat."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    state: Literal["ok", "unavailable", "starting"]
    interval_s: float | None = None
    error: str | None = None
    refused_values: int | None = Field(default=None, description="NaN or infinite values refused at the edge")


class TaskHealth(BaseModel):
    """State of one of the agent's own tasks (connection, publisher, heartbeat...), carried in its heartbeat."""

    model_config = ConfigDict(extra="allow", frozen=True)

    state: Literal["ok", "unavailable"]
    error: str | None = Field(default=None, description="the last unexpected error, kept after a restart")
    restarts: int = 0


class Location(BaseModel):
    """A WGS 84 point."""

    model_config = ConfigDict(extra="allow", frozen=True)

    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class Status(Message):
    """``up/status`` (retained): birth ``online``, graceful ``offline``, last will ``lost``.

    While online, the agent re-publishes it every heartbeat period with the optional heartbeat fields.
    """

    device: DeviceId
    state: DeviceState
    at: Timestamp
    uptime_s: float | None = None
    heartbeat_s: float | None = None
    outbox_depth: int | None = None
    dropped: int | None = Field(default=None, description="records dropped at the edge since first start")
    clock: ClockState | None = None
    config_version: int | None = None
    streams: dict[str, StreamHealth] | None = None
    publish_errors: int | None = None
    last_error: str | None = None
    node: str | None = None
    site: str | None = None
    location: Location | None = None
    tasks: dict[str, TaskHealth] | None = Field(default=None, description="agent tasks that failed at least once")
    outbox_error: str | None = Field(default=None, description="why the outbox cannot take records right now")
    unstored: int | None = Field(default=None, description="records lost because the outbox could not take them")
    set_aside: int | None = Field(default=None, description="records the broker refused for good, kept locally")


class Reading(BaseModel):
    """One measured value of one quantity from one sensor."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ts: Timestamp
    sensor: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    quantity: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    value: ReadingValue
    unit: str | None
    clock: str | None = Field(default=None, description="the clock that stamped ts: system, gps...")


class Telemetry(Message):
    """``up/telemetry``: a batch of readings under one outbox sequence number."""

    device: DeviceId
    seq: Seq
    sent_at: Timestamp
    readings: Annotated[list[Reading], Field(min_length=1)]


class Event(Message):
    """``up/event``: one thing that happened (an SOS button, a card inserted, paper low, tamper)."""

    device: DeviceId
    seq: Seq
    ts: Timestamp
    sensor: str
    event: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")]
    severity: Severity
    data: dict[str, Any]


class CitizenRef(BaseModel):
    """A citizen, by keyed hash only: a raw citizen id never leaves the kiosk."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ref: Annotated[str, StringConstraints(min_length=16, max_length=128)]


class Tx(Message):
    """``up/tx``: a service transaction request from a kiosk, applied at most once per ``tx_id``."""

    device: DeviceId
    seq: Seq
    tx_id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")]
    created_at: Timestamp
    data: dict[str, Any]
    citizen: CitizenRef | None = None
    location: Location | None = None


REPORT_CATEGORIES: Final[dict[str, tuple[str, str]]] = {
    "streetlight": ("ไฟฟ้าสาธารณะชำรุด", "Streetlight out"),
    "pothole": ("ถนนชำรุด / หลุมบ่อ", "Pothole or damaged road"),
    "flooding": ("น้ำท่วมขัง", "Flooding"),
    "garbage": ("ขยะตกค้าง", "Garbage not collected"),
    "drain": ("ท่อระบายน้ำอุดตัน", "Blocked drain"),
    "tree": ("ต้นไม้ล้ม / กิ่งไม้", "Fallen tree or branches"),
    "other": ("อื่น ๆ", "Other"),
}
"""The ``category`` of an ``issue.report`` transaction, with its Thai and English names."""


def tx_reference(tx_id: str) -> str:
    """The short reference of a transaction that staff, slips and the bank use: the last 20 letters and digits of
    its id, in upper case (also the PromptPay ref1)."""
    return "".join(c for c in tx_id.upper() if c.isalnum())[-20:]


class TxOutcome(Message):
    """``down/tx``: the outcome of a transaction; re-sent identically (``duplicate: true``) on redelivery."""

    tx_id: str
    status: TxStatus
    duplicate: bool
    reason: str | None
    result: dict[str, Any]


class Command(Message):
    """``down/cmd``: an operator's command to a device."""

    cmd_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)
    expires_at: Timestamp | None = Field(
        default=None, description="the device refuses the command after this instant (reply code ``expired``)")


class Reply(Message):
    """``up/reply``: a device's answer to a command (``result`` when ok, ``error`` otherwise)."""

    device: DeviceId
    seq: Seq
    cmd_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] | None = Field(
        default=None, description="why it failed, for machines: ``expired`` when the command came too late")


REPLY_EXPIRED: Final = "expired"
"""The reply ``code`` of a command that reached the device after its ``expires_at``."""


class DesiredConfig(Message):
    """``down/config`` (retained): settings a device may take remotely, under an increasing version."""

    version: Annotated[int, Field(ge=0)]
    heartbeat_s: Annotated[float, Field(gt=0)] | None = None
    intervals: dict[str, Annotated[float, Field(gt=0)]] | None = None


SeqRange = tuple[Seq, Seq]


class Ack(Message):
    """``down/ack``: seq ranges (inclusive) the hub has durably stored or applied."""

    acked: list[SeqRange]


def seq_ranges(seqs: list[int] | set[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers into sorted inclusive ``[first, last]`` ranges."""
    ranges: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return ranges


class Direction(StrEnum):
    """Which way a topic flows: ``up`` from the device, ``down`` to it."""

    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic table."""

    direction: Direction
    name: str
    model: type[Message]
    retained: bool


TOPICS: Final[dict[str, TopicSpec]] = {
    f"{spec.direction}/{spec.name}": spec
    for spec in (
        TopicSpec(Direction.UP, "status", Status, retained=True),
        TopicSpec(Direction.UP, "telemetry", Telemetry, retained=False),
        TopicSpec(Direction.UP, "event", Event, retained=False),
        TopicSpec(Direction.UP, "tx", Tx, retained=False),
        TopicSpec(Direction.UP, "reply", Reply, retained=False),
        TopicSpec(Direction.DOWN, "cmd", Command, retained=False),
        TopicSpec(Direction.DOWN, "tx", TxOutcome, retained=False),
        TopicSpec(Direction.DOWN, "config", DesiredConfig, retained=True),
        TopicSpec(Direction.DOWN, "ack", Ack, retained=False),
    )
}
"""Every topic suffix (``up/telemetry``...) with its direction, payload model and retain flag."""

QOS: Final = 1
"""Every topic of the contract is published at QoS 1."""


def topic(root: str, device: str, suffix: str) -> str:
    """Build ``{root}/{device}/{suffix}`` for a suffix of the topic table."""
    if suffix not in TOPICS:
        raise ValueError(f"unknown topic suffix {suffix!r}")
    return f"{root}/{device}/{suffix}"


@dataclass(frozen=True)
class ParsedTopic:
    """A topic split into its parts."""

    root: str
    device: str
    suffix: str

    @property
    def spec(self) -> TopicSpec | None:
        """The topic table row, or None when the suffix is not in the contract."""
        return TOPICS.get(self.suffix)


def parse_topic(value: str, root: str = DEFAULT_ROOT) -> ParsedTopic | None:
    """Split ``{root}/{device}/{dir}/{name}``; None when it does not have that shape or the device id is bad."""
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != root or not _DEVICE_ID_RE.match(parts[1]):
        return None
    return ParsedTopic(root=parts[0], device=parts[1], suffix=f"{parts[2]}/{parts[3]}")


UPLINK_WITH_SEQ: Final[dict[str, type[Telemetry | Event | Tx | Reply]]] = {
    "up/telemetry": Telemetry,
    "up/event": Event,
    "up/tx": Tx,
    "up/reply": Reply,
}
"""The uplink topics whose messages pass through the device outbox and carry a ``seq``."""
