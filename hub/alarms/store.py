"""The alarm tables and the SQL the engine and the notification worker run on them; :class:`AlarmRecords` is what
the API reads through, :func:`audited` how its changes commit with their audit rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hub.alarms.feed import FeedItem
from hub.alarms.feed import backlog as feed_backlog
from hub.audit import Actor, AuditLog
from hub.records.dialect import dialect_of
from hub.records.session import Session
from hub.store.base import SqlStore

ALARM_COLUMNS = ("id, rule, device, sensor, severity, state, latched, title_th, title_en, value, detail, count, "
                 "first_seen, last_seen, acked_by, acked_at, cleared_by, cleared_at, shelved_until, shelved_by, "
                 "next_step")


def alarm_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """An ``alarms`` row (in :data:`ALARM_COLUMNS` order) as a plain dict."""
    names = [c.strip() for c in ALARM_COLUMNS.split(",")]
    out = dict(zip(names, row, strict=True))
    out["latched"] = bool(out["latched"])
    out["detail"] = json.loads(out["detail"])
    return out


def alarm(db: Session, alarm_id: int) -> dict[str, Any] | None:
    """One alarm, or None."""
    row = db.execute(f"SELECT {ALARM_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()  # noqa: S608
    return alarm_dict(row) if row else None


def open_alarm(db: Session, rule: str, device: str) -> dict[str, Any] | None:
    """The open (not cleared) alarm of a rule on a device, or None."""
    row = db.execute(f"SELECT {ALARM_COLUMNS} FROM alarms WHERE rule = ? AND device = ? "  # noqa: S608
                     "AND state != 'cleared'", (rule, device)).fetchone()
    return alarm_dict(row) if row else None


_FILTERS = {"state": "state = ?", "severity": "severity = ?", "device": "device = ?", "rule": "rule = ?"}


def alarms(db: Session, filters: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
    """Alarms matching the given filters, newest first."""
    where = [(_FILTERS[k], v) for k, v in filters.items() if v is not None]
    sql = f"SELECT {ALARM_COLUMNS} FROM alarms"  # noqa: S608 (constant)
    if where:
        sql += " WHERE " + " AND ".join(w for w, _ in where)
    sql += " ORDER BY last_seen DESC, id DESC LIMIT ?"
    return [alarm_dict(r) for r in db.execute(sql, [v for _, v in where] + [limit])]


def history(db: Session, alarm_id: int) -> list[dict[str, Any]]:
    """Everything that happened to an alarm, oldest first."""
    rows = db.execute("SELECT at, action, user, comment, state FROM alarm_history WHERE alarm_id = ? "  # noqa: S608
                      f"ORDER BY at, {dialect_of(db).insertion_order}", (alarm_id,))
    return [dict(zip(("at", "action", "user", "comment", "state"), r, strict=True)) for r in rows]


def add_history(db: Session, alarm_id: int, at: float, action: str, user: str | None,
                comment: str | None, state: str) -> None:
    """Record one step of an alarm's life."""
    db.execute("INSERT INTO alarm_history (alarm_id, at, action, user, comment, state) VALUES (?, ?, ?, ?, ?, ?)",
               (alarm_id, at, action, user, comment, state))


NOTIFICATION_COLUMNS = ("id, alarm_id, channel, step, retry_key, language, subject, body, payload, state, attempts, "
                        "next_at, created_at, sent_at, last_error")


def notification_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``notifications`` row as a plain dict."""
    out = dict(zip([c.strip() for c in NOTIFICATION_COLUMNS.split(",")], row, strict=True))
    out["payload"] = json.loads(out["payload"])
    return out


def notifications(db: Session, alarm_id: int | None, channel: str | None, state: str | None,
                  limit: int) -> list[dict[str, Any]]:
    """Notifications with every attempt, newest first."""
    where = [(c, v) for c, v in (("alarm_id = ?", alarm_id), ("channel = ?", channel), ("state = ?", state))
             if v is not None]
    sql = f"SELECT {NOTIFICATION_COLUMNS} FROM notifications"  # noqa: S608 (constant)
    if where:
        sql += " WHERE " + " AND ".join(c for c, _ in where)
    sql += " ORDER BY id DESC LIMIT ?"
    out = [notification_dict(r) for r in db.execute(sql, [v for _, v in where] + [limit])]
    order = dialect_of(db).insertion_order
    for n in out:
        n["attempt_log"] = [dict(zip(("at", "ok", "detail", "elapsed_ms"), (at, bool(ok), d, ms), strict=True))
                            for at, ok, d, ms in db.execute(
                                "SELECT at, ok, detail, elapsed_ms FROM notification_attempts "  # noqa: S608
                                f"WHERE notification_id = ? ORDER BY at, {order}", (n["id"],))]
    return out


def due_notifications(db: Session, now: float, limit: int = 20) -> list[dict[str, Any]]:
    """Pending notifications whose next try is due, oldest first."""
    rows = db.execute(f"SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE state = 'pending' "  # noqa: S608
                      "AND next_at <= ? ORDER BY next_at, id LIMIT ?", (now, limit))
    return [notification_dict(r) for r in rows]


def next_due(db: Session) -> float | None:
    """When the next pending notification is due."""
    row = db.execute("SELECT min(next_at) FROM notifications WHERE state = 'pending'").fetchone()
    return float(row[0]) if row and row[0] is not None else None


Audited = Callable[[Session, Any, Any], None]
"""Called inside the transaction of an engine's change with the object before and after it."""


def audited(audit: AuditLog, actor: Actor, action: str, obj: str,
            shown: Callable[[Any, Any], tuple[Any, Any]] = lambda before, after: (before, after)) -> Audited:
    """The engine's ``audited`` callback: ``actor``'s audit row for ``action`` on ``obj`` commits with the change
    itself, before and after as ``shown`` renders them."""
    def record(db: Session, before: Any, after: Any) -> None:
        audit.record(actor, action, obj, *shown(before, after), db=db)
    return record


class AlarmRecords:
    """What the API reads of the alarms, over any :class:`hub.store.base.SqlStore`: alarms with their history and
    notifications, and the stored rows of the live feed."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def alarms(self, filters: dict[str, str | None], limit: int) -> list[dict[str, Any]]:
        """Alarms matching the filters (state, severity, device, rule), newest first."""
        return self._store.read(lambda db: alarms(db, filters, limit))

    def alarm(self, alarm_id: int) -> dict[str, Any] | None:
        """One alarm with its ``history`` (oldest first) and its newest 100 ``notifications``, or None."""
        def work(db: Session) -> dict[str, Any] | None:
            found = alarm(db, alarm_id)
            if found is not None:
                found["history"] = history(db, alarm_id)
                found["notifications"] = notifications(db, alarm_id, None, None, 100)
            return found
        return self._store.read(work)

    def notifications(self, alarm_id: int | None, channel: str | None, state: str | None,
                      limit: int) -> list[dict[str, Any]]:
        """Notifications with every attempt, newest first."""
        return self._store.read(lambda db: notifications(db, alarm_id, channel, state, limit))

    def feed_after(self, after: int) -> list[FeedItem]:
        """The feed's stored rows after ``after``, oldest first (a stream resuming past the ring)."""
        return self._store.read(lambda db: feed_backlog(db, after))
