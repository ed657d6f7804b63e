"""Readings summarised on the server: min, avg and max per time bucket, so a chart of a week of 10-second data
gets a few hundred buckets instead of 60,000 points; and the quantities a device has sent."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from edge.contract import DeviceId, Timestamp
from hub.api.bounds import Instant, Name
from hub.store.base import Store
from hub.timeseries.base import TimeSeries

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


def create_router(store: Store, timeseries: TimeSeries) -> APIRouter:
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
        size = max(1, math.ceil((end - start) / timedelta(milliseconds=1) / buckets)) / 1000
        found = timeseries.aggregate(device, quantity, start, end, size, MAX_BUCKETS, origin=start)
        unit = next((u for _, q, u in timeseries.quantities(device, start, end) if q == quantity and u), None)
        return Aggregate(device=device, quantity=quantity, unit=unit, bucket_s=size, buckets=[
            Bucket(t=b.start, min=b.min, avg=b.avg, max=b.max, count=b.count) for b in found])

    @api.get("/api/devices/{device}/quantities")
    def quantities(device: DeviceId) -> list[Quantity]:
        """Every (sensor, quantity) the device has sent, with its unit and newest reading time."""
        known(device)
        newest = timeseries.latest(device)
        return [Quantity(sensor=s, quantity=q, unit=u, last=newest[(s, q)])
                for s, q, u in timeseries.quantities(device) if (s, q) in newest]

    return api
