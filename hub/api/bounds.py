"""Bounded input types shared by every endpoint: what the store can hold, refused with a 4xx before it gets there.

SQLite integers are 64-bit signed and Python's datetimes end at years 1 and 9999: a path, query or body value
outside those ranges would otherwise reach the store or a conversion and answer 500. Each type here carries its
bounds into the OpenAPI document, so clients (and the fuzz test) see them too.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import AfterValidator, StringConstraints

from edge.contract import format_timestamp

INT64_MAX = 2**63 - 1

Int64 = Annotated[int, Ge(-INT64_MAX - 1), Le(INT64_MAX)]
"""Any integer the store can hold."""

PositiveId = Annotated[int, Ge(1), Le(INT64_MAX)]
"""A row id (report number, ledger entry): 1 to 2^63 - 1."""

Offset = Annotated[int, Ge(0), Le(INT64_MAX)]
"""How many rows a page skips."""

Satang = Annotated[int, Ge(0), Le(INT64_MAX)]
"""An amount of money in satang, never negative."""

FiscalYear = Annotated[int, Ge(2400), Le(9999 + 543)]
"""A Thai fiscal year in the Buddhist era (FY 2570 runs 1 Oct 2026 to 30 Sep 2027)."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
"""A short identifier or filter value: an office, a zone, a quantity, a reason code."""

Key = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""A key named in a path: a transaction id, a receipt number, a feature id."""

_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)


class InputError(ValueError):
    """A query value that is well-formed text but outside what the hub can use; answered 400."""


def _in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2026-11-20T03:00:00Z")
    # comparing aware datetimes works across the whole range; converting one near year 1 or 9999 to UTC may not
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError("must lie between years 1 and 9999 in UTC")
    return value.astimezone(UTC)


Instant = Annotated[datetime, AfterValidator(_in_range)]
"""A time-zoned timestamp whose UTC form exists (years 1 to 9999); returned in UTC."""


def parse_instant(text: str, name: str) -> datetime:
    """An RFC 3339 timestamp given as text (OGC ``datetime``), in UTC; :class:`InputError` when it is not one."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise InputError(f"{name} {text[:64]!r} is not an RFC 3339 timestamp") from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return _in_range(parsed)
    except ValueError as err:
        raise InputError(f"{name} {text[:64]!r} {err}") from err


def instant_text(text: str, name: str) -> str:
    """:func:`parse_instant` rendered as the contract renders timestamps."""
    return format_timestamp(parse_instant(text, name))


_BBOX_LIMITS = ((-180.0, 180.0), (-90.0, 90.0), (-180.0, 180.0), (-90.0, 90.0))


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minLon,minLat,maxLon,maxLat`` in WGS 84: four finite numbers in range, min before max."""
    shown = text[:100]
    try:
        parts = [float(p) for p in text.split(",", 4)]
    except ValueError as err:
        raise InputError(f"bbox must be minLon,minLat,maxLon,maxLat numbers, got {shown!r}") from err
    if len(parts) != 4 or not all(math.isfinite(p) for p in parts):
        raise InputError(f"bbox must be four finite numbers minLon,minLat,maxLon,maxLat, got {shown!r}")
    for value, (low, high) in zip(parts, _BBOX_LIMITS, strict=True):
        if not low <= value <= high:
            raise InputError(f"bbox {shown!r}: longitudes lie within -180..180 and latitudes within -90..90")
    if parts[0] > parts[2] or parts[1] > parts[3]:
        raise InputError(f"bbox must be minLon,minLat,maxLon,maxLat (min before max), got {shown!r}")
    return parts[0], parts[1], parts[2], parts[3]


_ROW_ID = re.compile(r"[1-9][0-9]{0,18}")


def row_id(text: str) -> int | None:
    """A row id written in ASCII digits within int64, or None (``²`` and ``99999999999999999999`` are not ids)."""
    if not _ROW_ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= INT64_MAX else None

