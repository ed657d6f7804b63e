"""Which kinds of node may send which service transactions: the device's registered ``node`` decides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

TX_KINDS_BY_NODE: Final[Mapping[str, frozenset[str]]] = {
    "service-kiosk": frozenset({"fee.payment", "issue.report"}),
}
"""Node kind (``node`` in the device's config and status) -> the transaction kinds it may send; a node kind
that is not listed may send none."""


def tx_refusal(table: Mapping[str, frozenset[str]], device: str, node: str | None, kind: str) -> str | None:
    """Why ``device`` (registered as ``node``) may not send a ``kind`` transaction, or None when it may."""
    if kind in table.get(node or "", frozenset()):
        return None
    allowed = sorted(n for n, kinds in table.items() if kind in kinds)
    registered = f"registered as {node!r}" if node else "with no node kind registered (none in its up/status)"
    return (f"kind_not_allowed: device {device!r} {registered} may not send {kind!r} transactions "
            f"(allowed for: {', '.join(allowed) or 'no node kind'})")
