"""Telemetry payloads of a polled sample written directly: the JSON object ``Telemetry.to_json`` gives, fewer steps.

A polled stream commits a message for every sample. Building a ``Reading`` model per value and a ``Telemetry``
per message, then serialising it, was about 40% of the Python work of a sample on the agent. For what the
contract takes without question (numbers inside its bounds, short ASCII strings, a UTC timestamp) this module
writes the same JSON object in one step; anything else goes through the models, which validate (or refuse) it
as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime

from edge.contract import INT64_MAX, INT64_MIN, MAX_TEXT, Scalar, format_timestamp, now

MAX_NAME = 64
"""Longest quantity name a ``Reading`` takes."""


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


class TelemetryPayload:
    """One sample's readings, encoded; called with the seq the outbox gives it, as :meth:`Outbox.append` does."""

    def __init__(self, device: str, readings: str) -> None:
        self._head = '{"v":1,"device":' + json.dumps(device) + ',"seq":'
        self._readings = readings

    def __call__(self, seq: int) -> bytes:
        """The message's JSON, stamped ``sent_at`` now."""
        return f'{self._head}{seq},"sent_at":"{format_timestamp(now())}","readings":{self._readings}}}'.encode()


def encode(device: str, sensor: str, units: Mapping[str, str | None], values: Mapping[str, Scalar], ts: datetime,
           clock: str) -> TelemetryPayload | None:
    """The payload of a sample's ``values``; None when one of them needs the models (to be validated there)."""
    if ts.tzinfo is None or not all(type(q) is str and 0 < len(q) <= MAX_NAME and q.isascii() and _plain(v)
                                    for q, v in values.items()):
        return None
    stamp = format_timestamp(ts)
    readings = [{"ts": stamp, "sensor": sensor, "quantity": q, "value": v, "unit": units.get(q), "clock": clock}
                for q, v in values.items()]
    return TelemetryPayload(device, json.dumps(readings, separators=(",", ":"), ensure_ascii=False))
