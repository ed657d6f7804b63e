"""Routes each service transaction to the module that owns its kind; an unknown kind is rejected with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from edge.contract import Tx, TxOutcome, TxStatus
from hub.records.unit import RecordsUnit


class Route(Protocol):
    """A module that applies transactions of some kinds inside the store's database transaction."""

    def apply(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
        """Apply ``tx`` through the repositories of ``unit`` (the store's current transaction) and return its
        outcome; never commit."""


class Router:
    """The routing table from transaction kind (``fee.payment``) to the module that applies it."""

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})

    def decide(self, tx: Tx, unit: RecordsUnit) -> TxOutcome:
        """The store's :data:`hub.store.base.TxDecision`: apply ``tx`` through its route, with the repositories of
        the store's current transaction, or reject it when no module owns its kind."""
        route = self.routes.get(tx.kind)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none configured"
            return TxOutcome(tx_id=tx.tx_id, status=TxStatus.REJECTED, duplicate=False,
                             reason=f"unknown transaction kind {tx.kind!r} (routed kinds: {known})", result={})
        return route.apply(tx, unit)
