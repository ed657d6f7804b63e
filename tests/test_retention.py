"""Retention: ``nakhon hub purge`` strips personal fields from old records, keeps the records, and says what it did."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.contract import Location, Tx, format_timestamp
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.gis.reports import DEMO_ZONES, ReportRoute, Zones
from hub.records.session import Session
from hub.router import Router
from hub.store.sqlite import SQLiteStore
from nakhon.cli import main

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
CITIZEN = {"ref": "ab12" * 16}


def _fill(data: Path) -> None:
    """Two cash payments by a citizen (400 days ago and now), a resolved old report and an old card event."""
    store = SQLiteStore(data / "hub.sqlite")
    store.open()
    catalogue = load_catalogue(DEMO_FEES)
    for i, at in enumerate((OLD, NOW)):
        route = ledger.FinanceRoute(catalogue, PromptPaySettings(), clock=lambda at=at: at)
        tx = Tx(device="kk-kiosk-0001", seq=i + 1, tx_id=f"kk-kiosk-0001-tx-{i:06d}", kind="fee.payment",
                created_at=at, citizen=CITIZEN, data={"office": "kkc-hq", "service": "garbage-monthly",
                                                      "amount_satang": 4000, "method": "cash"})
        store.apply_tx(tx, at.timestamp(), Router({"fee.payment": route}).decide)
    report = Tx(device="kk-kiosk-0001", seq=3, tx_id="kk-kiosk-0001-r-000001", kind="issue.report", created_at=OLD,
                citizen=CITIZEN, data={"category": "drain", "description": "โทร 081-234-5678 ได้ค่ะ"},
                location=Location(lat=16.45, lon=102.8))
    store.apply_tx(report, OLD.timestamp(), Router({"issue.report": ReportRoute(Zones(DEMO_ZONES))}).decide)
    old = format_timestamp(OLD)

    def backdate(db: Session) -> None:
        db.execute("UPDATE reports SET status = 'resolved', created_at = ?, updated_at = ?", (old, old))
        db.execute("UPDATE report_history SET at = ?, note = 'called the citizen back'", (old,))
        db.execute("INSERT INTO events (device, seq, ts, sensor, event, severity, data) VALUES "
                   "('kk-kiosk-0001', 4, ?, 'card', 'card.inserted', 'info', ?)",
                   (int(OLD.timestamp() * 1000), json.dumps({"name_th": "สมชาย ใจดี", "name_en": "Somchai Jaidee",
                                                              "reader": "vpcd 0"})))

    store.write(backdate)
    store.close()


def _db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "hub.sqlite")


def test_purge_strips_personal_fields_of_old_records_only_and_reports_per_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path)
    assert main(["hub", "purge", "--data", str(tmp_path), "--retention-days", "365", "--dry-run"]) == 0
    assert f"{'ledger.citizen_ref':<28} would strip from 1 rows" in capsys.readouterr().out
    with _db(tmp_path) as db:
        assert db.execute("SELECT count(citizen_ref) FROM ledger").fetchone()[0] == 2  # a dry run changes nothing

    assert main(["hub", "purge", "--data", str(tmp_path), "--retention-days", "365"]) == 0
    out = capsys.readouterr().out
    for field, rows in (("payments.citizen_ref", 1), ("ledger.citizen_ref", 1), ("reports.citizen_ref", 1),
                        ("reports.description", 1), ("report_history.note", 1), ("events.data", 1)):
        assert f"{field:<28} stripped from {rows} rows" in out, out
    with _db(tmp_path) as db:
        assert db.execute("SELECT tx_id, citizen_ref, amount_satang FROM ledger ORDER BY id").fetchall() == [
            ("kk-kiosk-0001-tx-000000", None, 4000), ("kk-kiosk-0001-tx-000001", CITIZEN["ref"], 4000)]
        assert db.execute("SELECT citizen_ref FROM payments ORDER BY tx_id").fetchall() == [(None,), (CITIZEN["ref"],)]
        assert db.execute("SELECT citizen_ref, description, category FROM reports").fetchone() == (None, "", "drain")
        assert json.loads(db.execute("SELECT data FROM events").fetchone()[0]) == {"reader": "vpcd 0"}
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE ledger SET citizen_ref = 'someone else'")
        audited = db.execute("SELECT user, action, after FROM audit").fetchall()  # one row: the dry run added none
        assert [(u, a, json.loads(after)["stripped"]["ledger.citizen_ref"]) for u, a, after in audited] == [
            ("cli", "data.purge", 1)]
    assert main(["hub", "purge", "--data", str(tmp_path), "--retention-days", "365"]) == 0
    assert f"{'ledger.citizen_ref':<28} stripped from 0 rows" in capsys.readouterr().out


def test_purge_refuses_a_missing_store_and_a_meaningless_retention(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "purge", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no hub store" in capsys.readouterr().err
    assert main(["hub", "purge", "--data", str(tmp_path), "--retention-days", "-1"]) == 2
    assert "--retention-days" in capsys.readouterr().err
