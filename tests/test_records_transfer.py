"""``nakhon hub migrate-store``: an embedded deployment's records moved to PostgreSQL, counted on both sides,
ids kept and sequences continued; a target with rows is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.contract import Location, Reading, Tx, TxStatus, now
from hub.finance import ledger
from hub.finance.catalogue import DEMO_FEES, load_catalogue
from hub.finance.promptpay import PromptPaySettings
from hub.finance.repository import SqlBook
from hub.gis.reports import DEMO_ZONES, ReportRoute, Zones
from hub.gis.repository import SqlReportBook
from hub.records.postgresql import PostgresRecords
from hub.records.session import Session
from hub.records.transfer import sqlite_path
from hub.records.unit import RecordsUnit
from hub.store.base import IngestBatch, SeqMessage
from hub.store.sqlite import SQLiteStore
from hub.timeseries.sqlite import SQLiteTimeSeries
from nakhon.cli import main

CITIZEN = {"ref": "9f2c" * 16}
T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
ROUTE = ledger.FinanceRoute(load_catalogue(DEMO_FEES), PromptPaySettings(target="0801234567"))


def _payment(n: int) -> Tx:
    return Tx(device="kk-kiosk-0001", seq=n, tx_id=f"TX-MOVE-{n:04d}", kind="fee.payment", created_at=now(),
              citizen=CITIZEN, data={"office": "kkc-hq", "service": "garbage-monthly", "amount_satang": 4000,
                                     "method": "cash"})


def _embedded_deployment(path: Path) -> None:
    """A hub.sqlite with a bit of everything: payments and a void, a report moved along, users, audit, fleet."""
    store = SQLiteStore(path)
    store.open()
    try:
        receipts = [store.write(lambda s, n=n: ROUTE.apply(_payment(n), RecordsUnit(s))).result["receipt_no"]  # type: ignore[misc]
                    for n in (1, 2)]
        store.write(lambda s: SqlBook(s).reverse(receipts[0], "void", "wrong fee", datetime.now(UTC), by="malee"))
        report = Tx(device="kk-kiosk-0001", seq=3, tx_id="TX-MOVE-REPORT", kind="issue.report", created_at=now(),
                    data={"category": "streetlight", "description": "dark corner"},
                    location=Location(lat=16.45, lon=102.8))
        outcome = store.write(lambda s: ReportRoute(Zones(DEMO_ZONES)).apply(report, RecordsUnit(s)))
        assert outcome.status is TxStatus.ACCEPTED
        store.write(lambda s: SqlReportBook(s).change_status(int(outcome.result["report_id"]), "assigned", "team-1",
                                                             "go", "malee"))

        def fleet(s: Session) -> None:
            s.execute("INSERT INTO users (name, password_hash, roles, disabled, created_at, changed_at) "
                      "VALUES ('malee', 'hash', 'finance', 0, 1.0, 1.0)")
            s.execute("INSERT INTO api_tokens (digest, user, label, created_at) VALUES ('d1', 'malee', 'night', 2.0)")
            s.execute("INSERT INTO audit (at, user, address, action, object) "
                      "VALUES ('2026-12-01T00:00:00.000Z', 'cli', 'local', 'user.add', 'user/malee')")
            s.execute("INSERT INTO devices (device, first_seen, last_seen, min_seq, max_seq, received) "
                      "VALUES ('kk-aq-0001', 1.0, 2.0, 1, 3, 3)")
            s.executemany("INSERT INTO received (device, seq, kind) VALUES ('kk-aq-0001', ?, 'telemetry')",
                          [(n,) for n in range(1, 2501)])
            s.execute("INSERT INTO deadletters (received_at, topic, reason, detail, size, payload) "
                      "VALUES (1.0, 'nakhon/x/up/telemetry', 'schema', 'bad', 3, ?)", (b"\x00\xff{",))
            s.execute("INSERT INTO registry (device, node, site, status, created_at, created_by, changed_at) "
                      "VALUES ('kk-aq-0001', 'air-quality', 'kkc-hq', 'active', 1.0, 'admin', 1.0)")
        store.write(fleet)
        store.ingest(IngestBatch(messages=[SeqMessage(device="kk-aq-0002", seq=n, received_at=1.0 + n, telemetry=[
            Reading(ts=T0 + timedelta(seconds=n), sensor="pm", quantity="pm2_5", value=10.0 + n, unit="ug/m3"),
            Reading(ts=T0 + timedelta(seconds=n), sensor="door", quantity="open", value=n % 2 == 0, unit=None)])
            for n in range(1, 6)]))
        store.record_command("cmd-1", "kk-aq-0001", "ping", {}, 5.0)
    finally:
        store.close()


def test_migrate_store_copies_every_records_table_and_verifies_the_counts(
        tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hub.sqlite"
    _embedded_deployment(path)
    series = tmp_path / "series.sqlite"
    assert main(["hub", "migrate-store", "--from", f"sqlite:///{path}", "--to", postgres_url,
                 "--timeseries", f"sqlite:///{series}"]) == 0
    out, err = capsys.readouterr()
    assert "received" in err and "[" + "#" * 30 + "] 2505/2505" in err
    counts = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:-1]}
    assert counts["ledger"] == ["3", "3"] and counts["received"] == ["2505", "2505"]
    assert counts["readings"] == ["10", "10"]
    assert counts["report_history"] == ["2", "2"] and counts["deadletters"] == ["1", "1"]
    assert all(source == target for source, target in counts.values())
    assert out.splitlines()[-1].endswith("verified")

    records = PostgresRecords(postgres_url)
    records.open()
    try:
        copied = records.read(lambda s: s.execute(
            "SELECT (SELECT payload FROM deadletters), (SELECT refers_to FROM ledger WHERE entry = 'void'), "
            "(SELECT ST_AsText(geom) FROM reports), (SELECT user FROM api_tokens)").fetchone())
        assert copied == (b"\x00\xff{", 1, "POINT(102.8 16.45)", "malee")
        history = records.read(lambda s: s.execute(
            "SELECT status FROM report_history ORDER BY rowid").fetchall())
        assert history == [("new",), ("assigned",)]
        receipt = records.write(lambda s: ROUTE.apply(_payment(9), RecordsUnit(s))).result["receipt_no"]
        assert str(receipt).endswith("-000003")  # the counter came along: no number given twice
        assert records.read(lambda s: s.execute("SELECT max(id) FROM ledger").fetchone()) == (4,)
    finally:
        records.close()
    moved = SQLiteTimeSeries(SQLiteStore(series), owns_store=True)
    moved.open()
    try:
        page = moved.readings_page("kk-aq-0002", None, None, None, 100)
        assert [json.loads(r)["value"] for r in page.rows][:4] == [11.0, False, 12.0, True]
    finally:
        moved.close()

    assert main(["hub", "migrate-store", "--from", f"sqlite:///{path}", "--to", postgres_url]) == 1
    assert "not empty" in capsys.readouterr().err


def test_migrate_store_refuses_a_missing_source_without_creating_it(tmp_path: Path, postgres_url: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing" / "hub.sqlite"
    assert main(["hub", "migrate-store", "--from", f"sqlite:///{missing}", "--to", postgres_url]) == 1
    assert "no such SQLite file" in capsys.readouterr().err and not missing.parent.exists()
    assert sqlite_path("sqlite:////var/lib/nakhon/hub/hub.sqlite") == Path("/var/lib/nakhon/hub/hub.sqlite")
    assert sqlite_path("sqlite:///data/hub.sqlite") == Path("data/hub.sqlite")
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        sqlite_path("postgresql://x@y/z")
