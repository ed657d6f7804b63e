"""Telemetry payloads of a polled sample written directly: the JSON object ``Telemetry.to_json`` gives, fewer steps.

A polled stream commits a message for every sample. Building a ``Reading`` model per value and a ``Telemetry``
per message, then serialising it, was about 40% of the Python work of a sample on the agent. For what the
contract takes without question (numbers inside its bounds, short ASCII strings, a time in milliseconds since the
epoch) a stream's :class:`SampleEncoder` writes the same JSON object from string pieces it builds once: no
``datetime`` and no dictionary per reading, and no JSON encoder for numbers. At 10 samples a second each sample
runs on cold caches, where that took a sample's payload from about 220 to 90 µs (benchmarks/README.md). Anything
else goes through the models, which validate (or refuse) it as before.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from edge.contract import INT64_MAX, INT64_MIN, MAX_TEXT, Scalar, format_timestamp

MAX_NAME = 64
"""Longest quantity name a ``Reading`` takes."""
_LAST_MS = 253_402_300_800_000
"""The first millisecond of the year 10000: the contract's four-digit years end before it."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _plain(value: object) -> bool:
    """Whether ``value`` is a reading value the contract takes as it is and JSON writes one way."""
    if isinstance(value, bool):
        return True
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if isinstance(value, int):
        return type(value) is int and INT64_MIN <= value <= INT64_MAX
    if isinstance(value, str):
        return type(value) is str and len(value) <= MAX_TEXT and value.isascii()
    return False


def _value(value: Scalar) -> str:
    """A plain value in JSON, as ``json.dumps`` writes it (``float.__repr__`` for a finite float)."""
    kind = value.__class__
    if kind is float:
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class _Stamps:
    """Epoch milliseconds as the contract writes them (``2026-12-01T09:30:15.123Z``); the part up to the second is
    formatted once a second."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        if not 0 <= ms < _LAST_MS:  # outside four-digit years after 1970: the contract's own formatter
            return format_timestamp(datetime_of_ms(ms))
        second, milli = divmod(ms, 1000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{milli:03d}Z"


def now_ms() -> int:
    """The current instant in milliseconds since the epoch (cut, as ``edge.contract.now`` cuts)."""
    return time.time_ns() // 1_000_000


class TelemetryPayload:
    """One sample's readings, encoded; called with the seq the outbox gives it, as :meth:`Outbox.append` does."""

    __slots__ = ("_head", "_readings", "_stamps")

    def __init__(self, head: str, readings: str, stamps: _Stamps) -> None:
        self._head = head
        self._readings = readings
        self._stamps = stamps

    def __call__(self, seq: int) -> bytes:
        """The message's JSON, stamped ``sent_at`` now."""
        return f'{self._head}{seq},"sent_at":"{self._stamps(now_ms())}","readings":[{self._readings}]}}'.encode()


class SampleEncoder:
    """A polled stream's telemetry writer: the device, the sensor and each quantity's unit, encoded once."""

    MAX_QUANTITIES = 256
    """Quantities whose pieces are kept (a driver reports a fixed few; beyond this they are built each time)."""

    def __init__(self, device: str, sensor: str, units: Mapping[str, str | None]) -> None:
        self._head = '{"v":1,"device":' + json.dumps(device, ensure_ascii=False) + ',"seq":'
        self._sensor = json.dumps(sensor, ensure_ascii=False)
        self._units = dict(units)
        self._pieces: dict[tuple[str, str], tuple[str, str]] = {}
        self._stamps = _Stamps()

    def _piece(self, quantity: str, clock: str) -> tuple[str, str]:
        """What a reading of ``quantity`` writes before and after its value (after its time stamp)."""
        key = (quantity, clock)
        piece = self._pieces.get(key)
        if piece is None:
            piece = (f'","sensor":{self._sensor},"quantity":{json.dumps(quantity)},"value":',
                     f',"unit":{json.dumps(self._units.get(quantity), ensure_ascii=False)},'
                     f'"clock":{json.dumps(clock, ensure_ascii=False)}}}')
            if len(self._pieces) < self.MAX_QUANTITIES:
                self._pieces[key] = piece
        return piece

    def encode(self, values: Mapping[str, Scalar], ts_ms: int, clock: str) -> TelemetryPayload | None:
        """The payload of a sample's ``values`` taken at ``ts_ms``; None when one of them needs the models."""
        stamp = '{"ts":"' + self._stamps(ts_ms)
        readings = []
        for q, v in values.items():
            if not (q.__class__ is str and 0 < len(q) <= MAX_NAME and q.isascii() and _plain(v)):
                return None
            before, after = self._piece(q, clock)
            readings.append(f"{stamp}{before}{_value(v)}{after}")
        return TelemetryPayload(self._head, ",".join(readings), self._stamps)


def encode(device: str, sensor: str, units: Mapping[str, str | None], values: Mapping[str, Scalar], ts: datetime,
           clock: str) -> TelemetryPayload | None:
    """The payload of a sample's ``values`` at ``ts`` (one sample; a stream keeps a :class:`SampleEncoder`)."""
    if ts.tzinfo is None:
        return None
    return SampleEncoder(device, sensor, units).encode(values, ms_since_epoch(ts), clock)


def ms_since_epoch(ts: datetime) -> int:
    """An aware ``ts`` in whole milliseconds since the epoch (exact: integer arithmetic on its parts)."""
    return (ts - EPOCH) // _MS


def datetime_of_ms(ms: int) -> datetime:
    """The UTC instant ``ms`` milliseconds after the epoch (the inverse of :func:`ms_since_epoch`)."""
    return EPOCH + ms * _MS
