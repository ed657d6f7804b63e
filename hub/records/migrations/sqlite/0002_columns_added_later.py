"""Tables made by hubs older than some columns get them: command outcomes, payment expiry, who did what."""

from __future__ import annotations

from hub.records.session import Session
from hub.records.sqlite import columns

ADDED = {
    "commands": ("outcome TEXT", "expires_at REAL", "published_at REAL", "replays INTEGER NOT NULL DEFAULT 0"),
    "ledger": ("paid_at TEXT", "by_user TEXT"),
    "payments": ("kiosk_at TEXT", "expires_at TEXT", "ended_at TEXT"),
    "reconciliations": ("recorded_by TEXT",),
    "report_history": ("by_user TEXT",),
}


def upgrade(session: Session) -> None:
    """Add the missing columns, give old commands an outcome and let old payments expire or be cancelled."""
    for table, added in ADDED.items():
        have = columns(session, table)
        for column in added:
            if column.split()[0] not in have:
                session.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    session.execute(
        "UPDATE commands SET outcome = CASE WHEN ok IS NULL THEN 'timeout' WHEN ok THEN 'ok' ELSE 'error' END, "
        "published_at = coalesce(published_at, sent_at) WHERE outcome IS NULL")
    old_sql = session.execute("SELECT sql FROM sqlite_master WHERE name = 'payments'").fetchone()[0]
    if "'expired'" not in old_sql:
        new_sql = old_sql.replace("IN ('pending', 'paid')", "IN ('pending', 'paid', 'expired', 'cancelled')")
        session.execute("ALTER TABLE payments RENAME TO payments_before_expiry")
        session.execute(new_sql)
        session.execute("INSERT INTO payments SELECT * FROM payments_before_expiry")
        session.execute("DROP TABLE payments_before_expiry")
