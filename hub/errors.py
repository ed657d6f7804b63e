"""The hub's exception tree: each error also inherits the builtin category it belongs to."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class StoreError(HubError, OSError):
    """The store could not commit or answer."""


class BrokerError(HubError, ConnectionError):
    """The broker could not be reached, started or configured."""


class HubConfigError(HubError, ValueError):
    """The hub's settings are wrong."""


class AlarmError(HubError, ValueError):
    """An alarm action that its state does not allow (acknowledging a cleared alarm)."""


class NotifyError(HubError, ConnectionError):
    """A notification channel did not take a message."""


class MessageTooLarge(HubError, ValueError):
    """An outgoing message is larger than the hub or the broker accepts; it was not published."""


class RecordRejected(StoreError):
    """The store refused one record it was given (a value it cannot hold, a broken constraint): retrying the same
    records will not help, unlike a locked or full database."""


class CommandInvalid(HubError, ValueError):
    """A command breaks the wire contract's bounds (a string too long, a number out of range); it was not sent."""


class TimeSeriesUnavailable(StoreError):
    """The time-series store cannot take or answer readings now (down, unreachable, overloaded): ingest keeps the
    batch unacknowledged and tries again."""
