"""The edge's exception tree: each error also inherits the builtin category it belongs to."""

from __future__ import annotations


class NakhonError(Exception):
    """Base of every error the edge raises on purpose."""


class ConfigError(NakhonError, ValueError):
    """A device configuration is missing, malformed or inconsistent."""


class DriverError(NakhonError, OSError):
    """A driver could not open, read or close its device."""


class DeviceUnavailable(DriverError):
    """The device is absent or not answering; the agent retries with backoff."""


class OutboxError(NakhonError, OSError):
    """The durable outbox could not take or give back a record."""


class OutboxFull(OutboxError):
    """The outbox cannot take a record of a class that is never dropped (a transaction)."""


class OutboxDiskFull(OutboxError):
    """The disk holding the outbox has no space left; writes succeed again once space returns."""


class PublishRefused(NakhonError, ConnectionError):
    """The broker answered a PUBLISH with a failure reason code (>= 0x80)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused publish on {topic}: {reason} (0x{reason_code:02X})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """True when sending the same message again cannot succeed (see :data:`PERMANENT_REFUSALS`)."""
        return self.reason_code in PERMANENT_REFUSALS


class PublishTooLarge(PublishRefused):
    """A message is larger than the maximum packet size the broker announced; it was not sent."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(topic, 0x95, f"packet of {size} bytes over the broker's maximum packet size of {limit}")
        self.size = size
        self.limit = limit


PERMANENT_REFUSALS: dict[int, str] = {
    0x83: "implementation specific error",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x99: "payload format invalid",
}
"""MQTT v5 reason codes that refuse the message itself: resending it is pointless, the agent sets it aside.
Other failures (0x87 not authorized, 0x97 quota exceeded, 0x80 unspecified) can pass once the broker's
configuration or load changes, so the message stays in the outbox and is retried with backoff."""
