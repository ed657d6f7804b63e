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
