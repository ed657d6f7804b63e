"""Readings summarised on the server: min, avg and max per time bucket, so a chart of a week of 10-second data
gets a few hundred buckets instead of 60,000 points; and the quantities a device has sent."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from edge.contract import DeviceId, Timestamp
from hub.api.bounds import Instant, Name
from hub.records.session import Session
from hub.store.base import SqlStore

DEFAULT_SPAN: Final = timedelta(days=1)
"""The window when the request gives no ``since``."""
MAX_BUCKETS: Final = 2000


class Bucket(BaseModel):
    """The numeric readings of one time bucket."""

    t: Timestamp
    """The bucket's start."""
    min: float
    avg: float
    max: float
    count: int


class Aggregate(BaseModel):
    """A quantity of a device over a window, in equal buckets (empty buckets left out)."""

    device: str
    quantity: str
    unit: str | None
    bucket_s: float
    buckets: list[Bucket]


class Quantity(BaseModel):
    """A quantity a device has sent, with its sensor and the time of its newest reading."""

    sensor: str
    quantity: str
    unit: str | None
    last: Timestamp


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _buckets(db: Session, device: str, quantity: str, since: int, until: int,
             size: int) -> tuple[str | None, list[Bucket]]:
    rows = db.execute(
        "SELECT (ts - ?1) / ?2 AS b, MIN(value), AVG(value), MAX(value), COUNT(*), MAX(unit) FROM readings "
        "WHERE device = ?3 AND quantity = ?4 AND ts >= ?1 AND ts < ?5 AND is_bool = 0 "
        "AND typeof(value) IN ('integer', 'real') GROUP BY b ORDER BY b",
        (since, size, device, quantity, until)).fetchall()
    unit = next((r[5] for r in rows if r[5] is not None), None)
    start = datetime.fromtimestamp(since / 1000, UTC)
    return unit, [Bucket(t=start + timedelta(milliseconds=b * size), min=lo, avg=mean, max=hi, count=n)
                  for b, lo, mean, hi, n, _ in rows]


def create_router(store: SqlStore) -> APIRouter:
    """The aggregate readings and quantities routes."""
    api = APIRouter(tags=["devices"])

    def known(device: str) -> None:
        if store.device(device) is None:
            raise HTTPException(404, f"no device {device!r} in the registry")

    @api.get("/api/devices/{device}/readings/aggregate")
    def aggregate(device: DeviceId, quantity: Name, since: Instant | None = None, until: Instant | None = None,
                  buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS)] = 300) -> Aggregate:
        """Min, avg and max of a numeric quantity per bucket: ``buckets`` equal buckets from ``since`` (inclusive,
        default a day before ``until``) to ``until`` (exclusive, default now); a bucket's ``t`` is its start."""
        known(device)
        end = until or datetime.now(UTC)
        start = since or end - DEFAULT_SPAN
        if start >= end:
            raise HTTPException(422, "since must be before until")
        first, last = _ms(start), _ms(end)
        size = max(1, math.ceil((last - first) / buckets))
        unit, found = store.read(lambda db: _buckets(db, device, quantity, first, last, size))
        return Aggregate(device=device, quantity=quantity, unit=unit, bucket_s=size / 1000, buckets=found)

    @api.get("/api/devices/{device}/quantities")
    def quantities(device: DeviceId) -> list[Quantity]:
        """Every (sensor, quantity) the device has sent, with its unit and newest reading time."""
        known(device)

        def work(db: Session) -> list[Any]:
            return db.execute(
                "SELECT l.sensor, l.quantity, l.ts, (SELECT unit FROM readings r WHERE r.device = l.device "
                "AND r.quantity = l.quantity AND r.ts = l.ts LIMIT 1) FROM latest l WHERE l.device = ? "
                "ORDER BY l.sensor, l.quantity", (device,)).fetchall()

        return [Quantity(sensor=s, quantity=q, unit=u, last=datetime.fromtimestamp(ts / 1000, UTC))
                for s, q, ts, u in store.read(work)]

    return api
