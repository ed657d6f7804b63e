"""The time-series store interface: readings written in batches, read raw or in buckets, kept for a retention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hub.store.base import ReadingBucket, ReadingKey, ReadingsPage, StoredReading

__all__ = ["Point", "ReadingBucket", "ReadingKey", "ReadingsPage", "StoredReading", "TimeSeries"]


@dataclass(frozen=True)
class Point:
    """One reading as the time-series store keeps it: its device, message seq and place in the message."""

    device: str
    seq: int
    idx: int
    ts: datetime
    sensor: str
    quantity: str
    value: bool | int | float | str
    unit: str | None


class TimeSeries(Protocol):
    """Where the hub keeps readings; a redelivered point (same device, seq, idx) is stored once."""

    def open(self) -> None:
        """Create or connect to the store."""

    def close(self) -> None:
        """Release the store (idempotent)."""

    def write(self, points: Sequence[Point]) -> None:
        """Store ``points``; raises :class:`hub.errors.TimeSeriesUnavailable` when the store cannot take them."""

    def readings_page(self, device: str, quantity: str | None, since: datetime | None, until: datetime | None,
                      limit: int, after: ReadingKey | None = None) -> ReadingsPage:
        """A device's readings in (ts, seq, idx) order as the API's JSON objects, starting after ``after``."""

    def aggregate(self, device: str, quantity: str, since: datetime | None, until: datetime | None,
                  bucket_s: int, limit: int) -> list[ReadingBucket]:
        """Count, min, mean and max of the numeric readings of ``quantity`` per ``bucket_s`` (aligned to the
        epoch, UTC), oldest first, empty buckets left out, at most ``limit`` buckets."""

    def latest(self, device: str) -> dict[tuple[str, str], datetime]:
        """Timestamp of the newest reading per (sensor, quantity) of a device."""

    def quantities(self, device: str, since: datetime | None,
                   until: datetime | None) -> list[tuple[str, str, str | None]]:
        """The (sensor, quantity, unit) a device sent in a window."""

    def purge_before(self, cutoff: datetime) -> int:
        """Drop readings older than ``cutoff``; returns how many went."""

    def healthy(self) -> bool:
        """Whether the store answers."""
