"""The time-series interface: what ingest writes and the API, the dashboard and retention read.

Ingest writes the points of a batch before the records commit and acknowledges only after both: a write that
returns is durable, one that cannot be made raises :class:`hub.errors.TimeSeriesUnavailable` and nothing is
acknowledged. A redelivered message writes the same points again; the store keeps one reading per
(device, seq, idx).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hub.store.base import ReadingBucket, ReadingKey, ReadingsPage, SeqMessage, StoredReading

__all__ = ["Point", "ReadingBucket", "ReadingColumns", "ReadingKey", "ReadingsPage", "StoredReading", "TimeSeries",
           "points_of", "sorted_units"]


@dataclass(frozen=True, slots=True)
class Point:
    """One reading as the time-series store keeps it: its message's (device, seq), its place in the message."""

    device: str
    seq: int
    idx: int
    ts: datetime
    sensor: str
    quantity: str
    value: bool | int | float | str
    unit: str | None


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """A page of one quantity's readings as two JSON arrays, what a chart library (uPlot) takes: their times and
    their values, index for index, with the sensors and units they came from and where the next page starts."""

    count: int
    ts: str
    """The readings' times as a JSON array of integers, milliseconds since the epoch, in (ts, seq, idx) order."""
    values: str
    """Their values as a JSON array (numbers, booleans and strings as sent; floats as Python writes them)."""
    sensors: tuple[str, ...]
    """The sensors of the page's readings, sorted (one, unless several sensors send the quantity)."""
    units: tuple[str | None, ...]
    """The units of the page's readings, no unit first, then sorted (one, unless the unit changed)."""
    next_after: ReadingKey | None
    """The key of the last reading of a page cut by its limit (None: the page holds the rest)."""


def points_of(messages: Sequence[SeqMessage]) -> list[Point]:
    """The readings of a batch's telemetry messages as points."""
    return [Point(m.device, m.seq, idx, r.ts, r.sensor, r.quantity, r.value, r.unit)
            for m in messages if m.readings is not None for idx, r in enumerate(m.readings)]


def sorted_units(units: Iterable[str | None]) -> tuple[str | None, ...]:
    """Distinct units in :attr:`ReadingColumns.units` order: no unit first, then sorted."""
    return tuple(sorted(set(units), key=lambda unit: (unit is not None, unit or "")))


class TimeSeries(Protocol):
    """Where the hub keeps readings."""

    def open(self) -> None:
        """Connect (or check the embedded table is there)."""

    def close(self) -> None:
        """Release what :meth:`open` took (idempotent)."""

    def write(self, points: Sequence[Point]) -> None:
        """Store ``points``, durable when this returns; points already stored are kept once. Raises
        :class:`hub.errors.TimeSeriesUnavailable` when the store cannot take them now."""

    def readings_page(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
                      limit: int, after: ReadingKey | None = None) -> ReadingsPage:
        """A device's readings in (ts, seq, idx) order, each one JSON object as the API writes it, starting after
        the reading ``after``; ``since`` inclusive, ``until`` exclusive."""

    def readings_columns(self, device: str, quantity: str, sensor: str | None, since: datetime, until: datetime,
                         limit: int, after: ReadingKey | None = None) -> ReadingColumns:
        """A quantity's readings (of one sensor, if given) in (ts, seq, idx) order as columns, starting after the
        reading ``after``; ``since`` inclusive, ``until`` exclusive; at most ``limit``."""

    def aggregate(self, device: str, quantity: str, since: datetime | None, until: datetime | None,
                  bucket_s: float, limit: int, origin: datetime | None = None) -> list[ReadingBucket]:
        """Count, min, mean and max of the numeric readings of ``quantity`` per ``bucket_s`` seconds, buckets
        aligned to ``origin`` (default the epoch, UTC), oldest first, at most ``limit``; empty buckets left out."""

    def latest(self, device: str) -> dict[tuple[str, str], datetime]:
        """Timestamp of the newest reading per (sensor, quantity) of a device."""

    def quantities(self, device: str, since: datetime | None = None,
                   until: datetime | None = None) -> list[tuple[str, str, str | None]]:
        """(sensor, quantity, unit) a device sent (within the window, if given), sorted."""

    def purge_before(self, cutoff: datetime) -> int:
        """Delete readings older than ``cutoff``; returns how many went."""

    def healthy(self) -> bool:
        """Whether the store answers now."""
