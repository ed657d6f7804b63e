"""The alarm repository the API reads through (:class:`hub.alarms.store.AlarmRecords`), audit rows that commit with
an operator's action, and the AQI endpoint answering from the time-series store rather than the records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge.contract import Event, Reading, Severity
from hub.alarms import api as alarms_api
from hub.alarms.engine import AlarmEngine
from hub.alarms.feed import Feed
from hub.alarms.rules import RulesFile
from hub.alarms.store import AlarmRecords, audited
from hub.audit import Actor, AuditLog
from hub.auth.accounts import Accounts
from hub.auth.web import guarded_app, protect
from hub.store.base import IngestBatch, SeqMessage
from hub.store.sqlite import SQLiteStore
from tests.conftest import TEST_PASSWORD

T0 = 1_790_000_000.0
OPERATOR = Actor(user="somchai", address="127.0.0.1", roles=frozenset({"operator"}))


@dataclass
class Hub:
    """An alarm engine whose records and readings live in two stores, as with a separate time-series backend."""

    records: SQLiteStore
    series: SQLiteStore
    engine: AlarmEngine
    now: float = T0

    def api(self) -> TestClient:
        """The alarm API, guarded as the hub guards it, signed in as an operator."""
        app = guarded_app()
        app.include_router(alarms_api.create_router(self.engine, AuditLog(self.records)))
        users = Accounts(self.records)
        protect(app, users, AuditLog(self.records))
        if users.user("somchai") is None:
            users.add_user("somchai", ["operator"], TEST_PASSWORD)
        return TestClient(app, headers={"Authorization": f"Bearer {users.add_token('somchai', 'tests')[1]}"})


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    records = SQLiteStore(tmp_path / "records.sqlite", readings=False)
    series = SQLiteStore(tmp_path / "series.sqlite")
    records.open()
    series.open()
    rules = RulesFile.model_validate({"rules": [{"id": "sos", "type": "event", "events": ["sos.pressed"],
                                                 "title_th": "ขอความช่วยเหลือ", "title_en": "SOS"}]})
    out = Hub(records, series, AlarmEngine(records, rules, Feed(), clock=lambda: out.now,
                                           timeseries=series.timeseries))
    out.engine.open()
    yield out
    series.close()
    records.close()


def _pm(seq: int, at: float, pm2_5: float, pm10: float) -> SeqMessage:
    ts = datetime.fromtimestamp(at, UTC)
    return SeqMessage("aq-ts-1", seq, at, telemetry=[
        Reading(ts=ts, sensor="pm", quantity="pm2_5", value=pm2_5, unit="ug/m3"),
        Reading(ts=ts, sensor="pm", quantity="pm10", value=pm10, unit="ug/m3")])


def _sos(hub: Hub, seq: int) -> int:
    """Raise the SOS alarm of ``pole-1`` (ingest commits the event, then hands it to the engine); its id."""
    e = Event(device="pole-1", seq=seq, ts=datetime.fromtimestamp(hub.now, UTC), sensor="sos", event="sos.pressed",
              severity=Severity.CRITICAL, data={})
    batch = IngestBatch(messages=[SeqMessage("pole-1", seq, hub.now, event=e)])
    hub.records.ingest(batch)
    hub.engine.committed(batch)
    [alarm] = AlarmRecords(hub.records).alarms({"device": "pole-1"}, 10)
    return int(alarm["id"])


def test_the_aqi_endpoint_reads_the_hourly_means_from_the_time_series_store(hub: Hub) -> None:
    start = T0 - T0 % 3600
    messages = [_pm(1, start - 26 * 3600, 500.0, 500.0)]  # older than the day: left out
    # twelve hours, two readings in each whose mean is the hour's; the hours end a minute before the request
    messages += [_pm(2 + 2 * h + i, start + h * 3600 + offset, 37.5 + delta, 100.0)
                 for h in range(12) for i, (offset, delta) in enumerate(((600, -1.0), (1800, 1.0)))]
    hub.series.ingest(IngestBatch(messages=messages))
    hub.now = start + 12 * 3600 - 60
    body = hub.api().get("/api/devices/aq-ts-1/aqi").json()
    assert body["averages_24h"] == {"pm2_5": 37.5, "pm10": 100.0}
    assert body["averages_1h"] == {"pm2_5": 37.5, "pm10": 100.0}
    assert (body["aqi_1h"]["aqi"], body["aqi_24h"]["sub_indices"]["pm10"]) == (100, 75)
    assert hub.api().get("/api/devices/aq-elsewhere/aqi").status_code == 404


def test_an_alarm_reads_with_its_history_and_notifications_in_one_answer(hub: Hub) -> None:
    alarm_id = _sos(hub, 1)
    hub.now += 60
    hub.engine.act(alarm_id, "comment", "somchai", "on my way")
    found = AlarmRecords(hub.records).alarm(alarm_id)
    assert found is not None and found["state"] == "active"
    assert [(h["action"], h["user"], h["comment"]) for h in found["history"]] == [
        ("raised", None, None), ("commented", "somchai", "on my way")]
    assert found["notifications"] == []
    assert AlarmRecords(hub.records).alarm(alarm_id + 1) is None
    got = hub.api().get(f"/api/alarms/{alarm_id}").json()
    assert [h["at"] for h in got["history"]] == ["2026-09-21T14:13:20Z", "2026-09-21T14:14:20Z"]


def test_an_actions_audit_row_commits_with_the_change_or_not_at_all(hub: Hub) -> None:
    alarm_id = _sos(hub, 1)
    audit = AuditLog(hub.records)

    def refused(before: Any, after: Any) -> tuple[Any, Any]:
        raise ValueError("the audit row cannot be written")

    with pytest.raises(ValueError, match="audit row"):
        hub.engine.act(alarm_id, "ack", "somchai", audited=audited(audit, OPERATOR, "alarm.ack", "alarm/1", refused))
    rolled_back = AlarmRecords(hub.records).alarm(alarm_id)
    assert rolled_back is not None and rolled_back["state"] == "active"
    assert [h["action"] for h in rolled_back["history"]] == ["raised"]
    assert audit.entries(obj="alarm") == []
    hub.engine.act(alarm_id, "ack", "somchai", audited=audited(audit, OPERATOR, "alarm.ack", f"alarm/{alarm_id}"))
    [row] = audit.entries(obj="alarm")
    assert (row.user, row.action, row.before["state"], row.after["state"]) == (
        "somchai", "alarm.ack", "active", "acknowledged")
