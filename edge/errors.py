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


class PublishRefused(NakhonError, ConnectionError):
    """The broker answered a PUBLISH with a failure reason code (>= 0x80)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused publish on {topic}: {reason} (0x{reason_code:02X})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason
