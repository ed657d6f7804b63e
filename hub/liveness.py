"""Liveness of a device in three levels: the link, the agent, and each sensor's data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from edge.contract import Timestamp
from hub.store.base import DeviceRecord

AGENT_GRACE = 2.5
"""An agent is stale after this many heartbeat periods without a status."""
DATA_GRACE = 3.0
"""A sensor is stale after this many of its intervals without a reading."""


class SensorLiveness(BaseModel):
    """Whether a sensor's data keeps coming."""

    state: Literal["fresh", "stale", "unavailable", "no_data"]
    interval_s: float | None
    last_reading: Timestamp | None
    age_s: float | None


class Liveness(BaseModel):
    """The three levels, each judged on its own evidence."""

    link: Literal["online", "offline", "lost", "unknown"]
    agent: Literal["ok", "stale", "down", "unknown"]
    heartbeat_age_s: float | None
    data: dict[str, SensorLiveness]


def assess(device: DeviceRecord, latest: dict[tuple[str, str], datetime], at: datetime | None = None) -> Liveness:
    """Judge a device from its registry record and the time of its newest readings."""
    now = at or datetime.now(UTC)
    link = device.state if device.state in ("online", "offline", "lost") else "unknown"
    heartbeat = device.heartbeat or {}
    period = heartbeat.get("heartbeat_s")
    age = now.timestamp() - device.last_status_at if device.last_status_at is not None else None
    agent: Literal["ok", "stale", "down", "unknown"]
    if link != "online":
        agent = "down" if link in ("offline", "lost") else "unknown"
    elif age is None or not period:
        agent = "unknown"
    else:
        agent = "ok" if age <= AGENT_GRACE * float(period) else "stale"

    newest: dict[str, datetime] = {}
    for (sensor, _quantity), ts in latest.items():
        if sensor not in newest or ts > newest[sensor]:
            newest[sensor] = ts
    streams: dict[str, dict[str, object]] = heartbeat.get("streams") or {}
    data: dict[str, SensorLiveness] = {}
    for sensor in sorted(set(newest) | set(streams)):
        stream = streams.get(sensor, {})
        interval = stream.get("interval_s")
        last = newest.get(sensor)
        if interval is None and last is None:
            continue  # an event stream (a button): silence is normal
        sensor_age = (now - last).total_seconds() if last else None
        state: Literal["fresh", "stale", "unavailable", "no_data"]
        if stream.get("state") == "unavailable":
            state = "unavailable"
        elif last is None or sensor_age is None:
            state = "no_data"
        elif isinstance(interval, int | float) and sensor_age > DATA_GRACE * interval + 5:
            state = "stale"
        else:
            state = "fresh"
        data[sensor] = SensorLiveness(state=state, interval_s=interval if isinstance(interval, int | float) else None,
                                      last_reading=last, age_s=None if sensor_age is None else round(sensor_age, 3))
    return Liveness(link=link, agent=agent,
                    heartbeat_age_s=None if age is None else round(age, 3), data=data)
