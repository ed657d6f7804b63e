"""Retention of citizens' personal data: ``nakhon hub purge`` strips it from records older than the setting.

The records stay (the ledger is the municipality's accounts, reports are its map of problems); what goes is
what ties them to a person: the keyed hash of the ID card, free text a citizen or an officer typed about a
closed case, and names or contact details an older kiosk put into events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from edge.contract import format_timestamp
from hub.records.dialect import Dialect, dialect_of
from hub.records.session import Session

PERSONAL_EVENT_KEYS = ("name_th", "name_en", "citizen_id", "citizen_id_masked", "holder", "address", "birth_date",
                       "photo", "phone", "contact")
"""Keys of an event's ``data`` that name or reach a person."""


@dataclass(frozen=True)
class Strip:
    """One kind of personal field: which rows hold it, how it is erased, and which column dates the row."""

    table: str
    field: str
    holds: str
    erase: str
    dated_by: str
    millis: bool = False
    """``dated_by`` is milliseconds since the epoch (else RFC 3339 text in UTC, as the contract writes it)."""
    personal_keys: tuple[str, ...] = ()
    """The field is a JSON object: the rows that hold any of these keys lose them (``holds`` and ``erase``
    then come from the engine's dialect)."""

    def sql(self, dialect: Dialect) -> tuple[str, str]:
        """The condition of the rows that hold the field and the assignment that erases it."""
        if not self.personal_keys:
            return self.holds, self.erase
        return (dialect.json_keys_present(self.field, self.personal_keys),
                f"{self.field} = {dialect.json_without_keys(self.field, self.personal_keys)}")


STRIPS = (
    Strip("payments", "citizen_ref", "citizen_ref IS NOT NULL", "citizen_ref = NULL", "created_at"),
    Strip("ledger", "citizen_ref", "citizen_ref IS NOT NULL", "citizen_ref = NULL", "at"),
    Strip("reports", "citizen_ref", "citizen_ref IS NOT NULL", "citizen_ref = NULL", "created_at"),
    Strip("reports", "description", "status = 'resolved' AND description != ''", "description = ''", "updated_at"),
    Strip("report_history", "note", "note IS NOT NULL", "note = NULL", "at"),
    Strip("events", "data", "", "", "ts", millis=True, personal_keys=PERSONAL_EVENT_KEYS),
)
"""Every personal field the hub keeps; a resolved report's description goes because it may hold a phone number."""


def purge(db: Session, older_than: datetime, dry_run: bool = False) -> dict[str, int]:
    """Erase personal fields of rows dated before ``older_than`` (inside the caller's transaction); returns how
    many rows each ``table.field`` lost (or would lose, with ``dry_run``)."""
    removed: dict[str, int] = {}
    dialect = dialect_of(db)
    for s in STRIPS:
        holds, erase = s.sql(dialect)
        cutoff: int | str = int(older_than.timestamp() * 1000) if s.millis else format_timestamp(older_than)
        where = f"{s.dated_by} < ? AND ({holds})"
        if dry_run:
            count = db.execute(f"SELECT count(*) FROM {s.table} WHERE {where}", (cutoff,)).fetchone()[0]  # noqa: S608
        else:
            count = db.execute(f"UPDATE {s.table} SET {erase} WHERE {where}", (cutoff,)).rowcount  # noqa: S608
        key = f"{s.table}.{s.field}"
        removed[key] = removed.get(key, 0) + int(count)
    return removed

