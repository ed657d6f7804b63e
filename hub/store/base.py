"""The hub's records store interface: what ingest and the API need, so another engine can replace SQLite
(readings have their own interface, :mod:`hub.timeseries.base`).

Ingest hands the store one :class:`IngestBatch` at a time and acknowledges to devices only what
:meth:`Store.ingest` returned after its commit. Deduplication by ``(device, seq)`` happens inside that
commit, so a message delivered twice, even to two hub processes, is stored once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from edge.contract import Event, Reading, Reply, Status, Tx, TxOutcome
from hub.records.migrate import Migration
from hub.records.session import Session

if TYPE_CHECKING:
    from hub.records.unit import RecordsUnit

T = TypeVar("T")


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime, rounded to the nearest (half away from zero)."""
    t = value.timestamp() * 1000
    return int(t + 0.5) if t >= 0 else int(t - 0.5)


class PlainReading:
    """One reading of an accepted telemetry message as the writer, the stores and the alarm engine read it: its
    time in milliseconds since the epoch (what the stores keep) and its plain values, no model object."""

    __slots__ = ("quantity", "sensor", "ts_ms", "unit", "value")

    def __init__(self, ts_ms: int, sensor: str, quantity: str, value: bool | int | float | str,
                 unit: str | None) -> None:
        self.ts_ms = ts_ms
        self.sensor = sensor
        self.quantity = quantity
        self.value = value
        self.unit = unit

    @classmethod
    def of(cls, reading: Reading) -> PlainReading:
        """The plain form of a validated :class:`edge.contract.Reading`."""
        return cls(epoch_ms(reading.ts), reading.sensor, reading.quantity, reading.value, reading.unit)

    @property
    def ts(self) -> datetime:
        """The reading's time as a UTC datetime (millisecond precision)."""
        return datetime.fromtimestamp(self.ts_ms / 1000, UTC)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlainReading):
            return NotImplemented
        return (self.ts_ms, self.sensor, self.quantity, self.value, self.value.__class__, self.unit) == (
            other.ts_ms, other.sensor, other.quantity, other.value, other.value.__class__, other.unit)

    def __repr__(self) -> str:
        return (f"PlainReading(ts_ms={self.ts_ms!r}, sensor={self.sensor!r}, quantity={self.quantity!r}, "
                f"value={self.value!r}, unit={self.unit!r})")


@dataclass(frozen=True)
class SeqMessage:
    """An accepted uplink message that carries a seq: telemetry, event or command reply.

    A telemetry message's readings are in ``readings`` (plain, as ingest's fast path gives them); one built with
    ``telemetry`` (models, as tests and tools build it) gets its ``readings`` from them.
    """

    device: str
    seq: int
    received_at: float
    telemetry: list[Reading] | None = None
    sent_at: datetime | None = None
    event: Event | None = None
    reply: Reply | None = None
    readings: list[PlainReading] | None = None

    def __post_init__(self) -> None:
        if self.readings is None and self.telemetry is not None:
            object.__setattr__(self, "readings", [PlainReading.of(r) for r in self.telemetry])


@dataclass(frozen=True)
class DeadLetter:
    """A message the hub refused, kept for an operator to look at."""

    topic: str
    reason: str
    detail: str
    received_at: float
    size: int
    payload: bytes
    device: str | None = None
    seq: int | None = None
    """Set when the device and seq could be trusted: the seq is then acknowledged so it is not resent."""


@dataclass(frozen=True)
class StatusUpdate:
    """A status message as received."""

    status: Status
    received_at: float


@dataclass
class IngestBatch:
    """Everything one ingest round commits in one transaction."""

    messages: list[SeqMessage] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages) + len(self.deadletters) + len(self.statuses)


@dataclass
class IngestOutcome:
    """What the commit did: the seqs to acknowledge per device and what was new."""

    acks: dict[str, list[int]] = field(default_factory=dict)
    new_messages: int = 0
    duplicates: int = 0
    readings_stored: int = 0
    replies: list[Reply] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the registry knows it."""

    device: str
    node: str | None
    site: str | None
    state: str
    first_seen: float
    last_seen: float
    last_status_at: float | None
    last_seq: int | None
    received: int
    lost: int
    dropped_at_edge: int
    duplicates: int
    heartbeat: dict[str, Any] | None


@dataclass(frozen=True)
class StoredReading:
    """A reading as stored, with the seq of the message that brought it."""

    ts: datetime
    sensor: str
    quantity: str
    value: bool | int | float | str
    unit: str | None
    seq: int


ReadingKey = tuple[int, int, int]
"""Where a reading sorts: its time (ms since the epoch), its message's seq, its place in the message."""


@dataclass(frozen=True)
class ReadingsPage:
    """A page of readings, each already one JSON object as the API writes it, and where the next page starts."""

    rows: list[str]
    next_after: ReadingKey | None
    """The key of the last reading of a page cut by its limit (None: the page holds the rest)."""


@dataclass(frozen=True)
class ReadingBucket:
    """The numeric readings of one quantity within one time bucket."""

    start: datetime
    count: int
    min: float
    avg: float
    max: float


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as stored."""

    id: int
    topic: str
    reason: str
    detail: str
    received_at: float
    size: int
    payload: bytes


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored."""

    device: str
    seq: int
    ts: int
    """Milliseconds since the epoch, as the events' order and cursors use it."""
    sensor: str
    event: str
    severity: str
    data: dict[str, Any]


class CommandOutcome(StrEnum):
    """Where a command stands: waiting (``queued``, ``sent``) or settled (every other value)."""

    QUEUED = "queued"
    """Held by the hub until its device is online (``"queue": true``)."""
    SENT = "sent"
    """Published; no reply yet."""
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    """No reply before the caller gave up or the command expired."""
    EXPIRED = "expired"
    """Never carried out: it expired in the hub's queue, or the device refused it as expired."""
    LATE = "late"
    """The device's reply came after the timeout."""


@dataclass(frozen=True)
class CommandRecord:
    """A command as the hub keeps it, with its outcome and the first reply."""

    cmd_id: str
    device: str
    name: str
    args: dict[str, Any]
    outcome: CommandOutcome
    requested_at: float
    published_at: float | None
    expires_at: float | None
    replied_at: float | None
    result: dict[str, Any] | None
    error: str | None
    replays: int
    """Replies that came after the first one (QoS 1 redeliveries, replays): counted, never stored."""


TxDecision = Callable[[Tx, "RecordsUnit"], TxOutcome]
"""Applies a transaction through the repositories of the store's database transaction and returns its outcome
(:meth:`hub.router.Router.decide`)."""


class Store(Protocol):
    """Where the hub keeps readings, the device registry, dead letters, commands and transactions."""

    def open(self) -> None:
        """Create or open the store."""

    def close(self) -> None:
        """Release the store (idempotent)."""

    def ingest(self, batch: IngestBatch) -> IngestOutcome:
        """Commit one batch atomically, dropping seqs already stored; return what to acknowledge."""

    def apply_tx(self, tx: Tx, received_at: float, decide: TxDecision) -> tuple[TxOutcome, bool]:
        """Apply ``tx`` exactly once: returns its outcome and whether it had been applied before."""

    def tx_outcome(self, tx_id: str, device: str) -> TxOutcome | None:
        """The recorded outcome of ``device``'s transaction ``tx_id``, or None if it was never applied."""

    def devices(self) -> list[DeviceRecord]:
        """Every device in the registry."""

    def device(self, device: str) -> DeviceRecord | None:
        """One device, or None."""


    def deadletters(self, limit: int, reason: str | None = None) -> list[StoredDeadLetter]:
        """The newest dead letters first."""

    def deadletter_counts(self) -> dict[str, int]:
        """How many dead letters per reason."""

    def events(self, limit: int, device: str | None = None, sensor: str | None = None, event: str | None = None,
               event_prefix: str | None = None, severity: str | None = None, since: int | None = None,
               until: int | None = None, before: tuple[int, str, int] | None = None) -> list[StoredEvent]:
        """Events newest first (by time, device, seq), at most ``limit``, matching every filter given: ``since``
        inclusive and ``until`` exclusive (ms), ``before`` the (ts, device, seq) of the last event of the
        previous page."""

    def record_command(self, cmd_id: str, device: str, name: str, args: dict[str, Any], sent_at: float,
                       expires_at: float | None = None, queued: bool = False) -> None:
        """Remember a command before it is published (``sent``), or ``queued`` until its device is online."""

    def command(self, cmd_id: str) -> CommandRecord | None:
        """A command with its outcome and reply, if any."""

    def commands(self, device: str, limit: int) -> list[CommandRecord]:
        """A device's commands, newest first."""

    def settle_command(self, cmd_id: str, outcome: CommandOutcome, error: str | None = None,
                       only_from: tuple[CommandOutcome, ...] = (CommandOutcome.SENT,)) -> bool:
        """Give a command its outcome if it is still in one of ``only_from``; False when it was settled before."""

    def due_commands(self, now: float) -> list[CommandRecord]:
        """Queued, unexpired commands of devices whose link is online, oldest first."""

    def mark_command_published(self, cmd_id: str, at: float) -> bool:
        """Move a queued command to ``sent``; False when it is no longer queued."""

    def expire_commands(self, now: float, reply_grace_s: float = 0.0) -> int:
        """Settle what outlived its expiry: queued commands become ``expired``, sent ones without a reply
        ``reply_grace_s`` after it ``timeout``."""


class SqlStore(Store, Protocol):
    """A store whose domain modules (finance, GIS) run their own SQL inside its transactions.

    ``write`` runs ``work`` in one write transaction (committed when it returns, rolled back when it raises) and
    ``read`` on a read connection; both return what ``work`` returned. Finance and GIS depend on this interface,
    never on an engine module, so another engine can sit behind the same code. :meth:`open` applies the pending
    migrations (:mod:`hub.records.migrate`) and keeps the list of those it applied in ``applied``.
    """

    applied: list[Migration]

    def write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction."""
        ...

    def read(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` on a read connection."""
        ...

    def replace_tx_outcome(self, db: Session, tx_id: str, outcome: TxOutcome) -> str:
        """Inside :meth:`write`: store the later outcome of a transaction; returns the device to answer."""
        ...
