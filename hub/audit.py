"""The audit log: one append-only row per state change (who, when, from where, what, which object, before/after).

Like the ledger, the table refuses UPDATE and DELETE with triggers, so history cannot be rewritten through the
store. Other modules audit a change with one call, ``audit.record(actor, action, obj, before, after)``; pass
``db=`` the connection of a running records store's :meth:`write` to commit the row with the change itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge.contract import format_timestamp
from hub.records.session import Session
from hub.store.base import SqlStore


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a user (or ``bank``, ``cli``) with their roles, and the address they came from."""

    user: str
    address: str
    roles: frozenset[str] = frozenset()
    via: str = "token"
    """How they proved it: ``session``, ``token``, ``signature`` (the bank), ``cli`` or ``public``."""


CLI = Actor(user="cli", address="local", via="cli")
"""The actor of changes made with ``nakhon hub ...`` on the server itself."""


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    at: str
    user: str
    address: str
    action: str
    object: str
    before: Any
    after: Any


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


class AuditLog:
    """The audit log on the hub's SQLite store."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def record(self, actor: Actor, action: str, obj: str, before: Any = None, after: Any = None, *,
               db: Session | None = None) -> None:
        """Append one row; inside a running write when ``db`` is given, else in a commit of its own."""
        row = (format_timestamp(datetime.now(UTC)), actor.user, actor.address, action[:100], obj[:200],
               _json(before), _json(after))

        def work(conn: Session) -> None:
            conn.execute("INSERT INTO audit (at, user, address, action, object, before, after) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", row)

        if db is not None:
            work(db)
        else:
            self._store.write(work)

    def entries(self, user: str | None = None, obj: str | None = None, since: datetime | None = None,
                limit: int = 1000) -> list[AuditEntry]:
        """Rows oldest first, optionally of one user, one object (or objects under ``obj/``) and since a time."""
        sql = "SELECT id, at, user, address, action, object, before, after FROM audit WHERE 1 = 1"
        args: list[Any] = []
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        if obj is not None:
            sql += " AND (object = ? OR substr(object, 1, ?) = ?)"
            args += [obj, len(obj) + 1, obj + "/"]
        if since is not None:
            sql += " AND at >= ?"
            args.append(format_timestamp(since.astimezone(UTC)))
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        rows = self._store.read(lambda db: db.execute(sql, args).fetchall())
        return [AuditEntry(i, at, u, a, act, o, json.loads(b) if b else None, json.loads(af) if af else None)
                for i, at, u, a, act, o, b, af in rows]
