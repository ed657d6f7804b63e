"""Alarm rules from simulated readings, events and liveness; the lifecycle; escalation; the API actions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.contract import DeviceState, Event, Reading, Severity, Status, StreamHealth
from hub import audit
from hub.alarms import api as alarms_api
from hub.alarms import store as alarms_store
from hub.alarms.engine import AlarmEngine
from hub.alarms.feed import Feed
from hub.alarms.rules import DEMO_RULES, RulesFile, load_rules
from hub.auth import accounts
from hub.auth.web import guarded_app, protect
from hub.errors import HubConfigError
from hub.store.base import IngestBatch, SeqMessage, StatusUpdate
from hub.store.sqlite import SQLiteStore
from tests.conftest import TEST_PASSWORD, Broker, fast_air, wait_for

T0 = 1_790_000_000.0
WEBHOOK = {"id": "hook-a", "type": "webhook", "url": "http://127.0.0.1:9/a", "secret_file": "/nonexistent"}
WEBHOOK_B = {**WEBHOOK, "id": "hook-b", "url": "http://127.0.0.1:9/b"}


def rule(rule_id: str, rule_type: str, **kwargs: Any) -> dict[str, Any]:
    """A rule's TOML table as a dict."""
    return {"id": rule_id, "type": rule_type, "title_th": f"เหตุ {rule_id}", "title_en": f"alarm {rule_id}", **kwargs}


class Rig:
    """An engine on a real SQLite store with a clock the test moves, fed batches as ingest would."""

    def __init__(self, tmp_path: Path, rules: list[dict[str, Any]],
                 channels: list[dict[str, Any]] | None = None) -> None:
        self.now = T0
        self.store = SQLiteStore(tmp_path / "hub.sqlite")
        self.store.open()
        self.feed = Feed()
        config = RulesFile.model_validate({"rules": rules, "channels": channels or []})
        self.engine = AlarmEngine(self.store, config, self.feed, clock=lambda: self.now,
                                  timeseries=self.store.timeseries)
        self.engine.open()
        self.seq = 0
        self._app: FastAPI | None = None

    def close(self) -> None:
        self.store.close()

    def api(self, *roles: str, name: str = "tester") -> TestClient:
        """A TestClient of the alarm API, guarded as the hub does, signed in as ``name`` with ``roles``."""
        if self._app is None:
            self._app = guarded_app()
            self._app.include_router(alarms_api.create_router(self.engine, audit.AuditLog(self.store)))
            protect(self._app, accounts.Accounts(self.store), audit.AuditLog(self.store))
        users = accounts.Accounts(self.store)
        if users.user(name) is None:
            users.add_user(name, list(roles or ("admin",)), TEST_PASSWORD)
        return TestClient(self._app, headers={"Authorization": f"Bearer {users.add_token(name, 'tests')[1]}"})

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def batch(self, batch: IngestBatch) -> None:
        """Commit through the real store, then hand to the engine (what ingest does)."""
        self.store.ingest(batch)
        self.engine.committed(batch)

    def reading(self, device: str, quantity: str, value: float, at: float, sensor: str = "s") -> None:
        r = Reading(ts=datetime.fromtimestamp(at, UTC), sensor=sensor, quantity=quantity, value=value, unit=None)
        self.now = max(self.now, at)
        self.batch(IngestBatch(messages=[SeqMessage(device, self._next(), at, telemetry=[r])]))

    def event(self, device: str, name: str, seq: int | None = None, sensor: str = "sos") -> None:
        e = Event(device=device, seq=seq or self._next(), ts=datetime.fromtimestamp(self.now, UTC), sensor=sensor,
                  event=name, severity=Severity.CRITICAL, data={})
        self.batch(IngestBatch(messages=[SeqMessage(device, e.seq, self.now, event=e)]))

    def status(self, device: str, state: DeviceState, **streams: float) -> None:
        s = Status(device=device, state=state, at=datetime.fromtimestamp(self.now, UTC), site="Khon Kaen",
                   node="pole", streams={k: StreamHealth(kind="sim", state="ok", interval_s=v)
                                         for k, v in streams.items()} or None)
        self.batch(IngestBatch(statuses=[StatusUpdate(s, self.now)]))

    def tick(self, at: float) -> None:
        self.now = at
        self.engine.tick()

    def alarms(self, **filters: str | None) -> list[dict[str, Any]]:
        full = {"state": None, "severity": None, "device": None, "rule": None, **filters}
        return self.store.read(lambda db: alarms_store.alarms(db, full, 100))

    def states(self) -> list[tuple[str, str, str]]:
        return sorted((a["rule"], a["device"], a["state"]) for a in self.alarms())

    def notifications(self) -> list[tuple[int, str, int]]:
        return sorted((n["alarm_id"], n["channel"], n["step"]) for n in self.store.read(
            lambda db: alarms_store.notifications(db, None, None, None, 100)))


@pytest.fixture
def make_rig(tmp_path: Path) -> Any:
    rigs: list[Rig] = []

    def make(rules: list[dict[str, Any]], channels: list[dict[str, Any]] | None = None) -> Rig:
        r = Rig(tmp_path / f"rig{len(rigs)}", rules, channels)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_threshold_trips_after_its_minimum_duration_and_clears_only_past_the_hysteresis(make_rig: Any) -> None:
    rig = make_rig([rule("pm", "threshold", quantity="pm2_5", above=75, clear=70, for_s=600)])
    rig.reading("p1-x", "pm2_5", 80, T0)
    rig.reading("p1-x", "pm2_5", 90, T0 + 300)
    assert rig.states() == []
    rig.reading("p1-x", "pm2_5", 60, T0 + 400)  # back under: the pending period restarts
    rig.reading("p1-x", "pm2_5", 80, T0 + 500)
    rig.reading("p1-x", "pm2_5", 81, T0 + 1099)
    assert rig.states() == []
    rig.reading("p1-x", "pm2_5", 82, T0 + 1100)
    assert rig.states() == [("pm", "p1-x", "active")]
    rig.reading("p1-x", "pm2_5", 72, T0 + 1200)  # under the trip value, above the clear value: still on
    assert rig.states() == [("pm", "p1-x", "active")]
    rig.reading("p1-x", "pm2_5", 70, T0 + 1300)
    assert rig.states() == [("pm", "p1-x", "cleared")]
    assert rig.alarms()[0]["value"] == 82


def test_rate_of_change_raises_on_a_rise_within_the_window(make_rig: Any) -> None:
    rig = make_rig([rule("rise", "rate", quantity="water_level", change=0.2, within_s=900)])
    for i, level in enumerate([1.00, 1.05, 1.10, 1.15]):
        rig.reading("w1-x", "water_level", level, T0 + i * 300)
    assert rig.states() == []  # 0.15 m over 15 minutes
    rig.reading("w1-x", "water_level", 1.26, T0 + 1200)  # 1.26 - 1.05 within 900 s
    assert rig.states() == [("rise", "w1-x", "active")]
    rig.reading("w1-x", "water_level", 1.22, T0 + 2400)  # level steady: the window holds only this reading
    assert rig.states() == [("rise", "w1-x", "cleared")]


def test_no_data_after_n_intervals_and_offline_suppresses_it(make_rig: Any) -> None:
    rig = make_rig([rule("quiet", "no_data", intervals=3)])
    rig.status("d1-x", DeviceState.ONLINE, pm=10.0)
    rig.reading("d1-x", "pm2_5", 10, T0, sensor="pm")
    rig.tick(T0 + 30)
    assert rig.states() == []
    rig.tick(T0 + 31)
    assert rig.states() == [("quiet", "d1-x", "active")]
    assert rig.alarms()[0]["sensor"] == "pm"
    rig.reading("d1-x", "pm2_5", 10, T0 + 32, sensor="pm")
    rig.tick(T0 + 33)
    assert rig.states() == [("quiet", "d1-x", "cleared")]
    rig.status("d1-x", DeviceState.LOST)
    rig.tick(T0 + 500)
    assert rig.states() == [("quiet", "d1-x", "cleared")]  # offline: no new no-data alarm


def test_offline_alarm_waits_for_its_grace_period_and_clears_online(make_rig: Any) -> None:
    rig = make_rig([rule("down", "offline", grace_s=60, severity="major")])
    rig.status("d1-x", DeviceState.ONLINE)
    rig.status("d1-x", DeviceState.LOST)
    rig.tick(T0 + 59)
    assert rig.states() == []
    rig.tick(T0 + 60)
    rig.tick(T0 + 61)
    assert rig.states() == [("down", "d1-x", "active")]
    assert rig.alarms()[0]["count"] == 1
    rig.now = T0 + 70
    rig.status("d1-x", DeviceState.ONLINE)
    assert rig.states() == [("down", "d1-x", "cleared")]
    rig.status("d1-x", DeviceState.OFFLINE)
    rig.tick(T0 + 100)  # back within grace: nothing
    assert rig.states() == [("down", "d1-x", "cleared")]


def test_a_latched_event_repeats_into_one_alarm_and_never_clears_by_itself(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"], severity="critical"),
                    rule("paper", "event", events=["paper.out"], latched=False, clear_events=["paper.loaded"])])
    rig.event("p1-x", "sos.pressed")
    rig.now += 5
    rig.event("p1-x", "sos.pressed")
    rig.event("p1-x", "sos.released")
    rig.event("k1-x", "paper.out", sensor="printer")
    rig.event("k1-x", "paper.loaded", sensor="printer")
    rig.tick(T0 + 3600)
    assert rig.states() == [("paper", "k1-x", "cleared"), ("sos", "p1-x", "active")]
    sos = rig.alarms(rule="sos")[0]
    assert (sos["count"], sos["latched"], sos["last_seen"] - sos["first_seen"]) == (2, True, 5)


def test_a_redelivered_event_raises_nothing_twice(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.*"])])
    rig.event("p1-x", "sos.pressed", seq=7)
    rig.event("p1-x", "sos.pressed", seq=7)
    assert rig.alarms()[0]["count"] == 1


def test_scope_by_device_glob_kind_and_site(make_rig: Any) -> None:
    rig = make_rig([rule("a", "event", events=["x.y"], device="kk-*"), rule("b", "event", events=["x.y"], kind="kiosk"),
                    rule("c", "event", events=["x.y"], site="Khon Kaen")])
    rig.status("kk-1-x", DeviceState.ONLINE)  # node "pole", site "Khon Kaen"
    rig.event("kk-1-x", "x.y")
    rig.event("other", "x.y")
    assert rig.states() == [("a", "kk-1-x", "active"), ("c", "kk-1-x", "active")]


def test_escalation_notifies_the_next_channel_unless_acknowledged(make_rig: Any) -> None:
    steps = [{"after_s": 0, "channels": ["hook-a"]}, {"after_s": 300, "channels": ["hook-b"]}]
    rig = make_rig([rule("sos", "event", events=["sos.pressed"], escalation=steps)], [WEBHOOK, WEBHOOK_B])
    rig.event("p1-x", "sos.pressed")
    rig.event("p2-x", "sos.pressed")
    [a2, a1] = [a["id"] for a in rig.alarms()]
    assert rig.notifications() == [(a1, "hook-a", 0), (a2, "hook-a", 0)]
    rig.tick(T0 + 299)
    rig.engine.act(a2, "ack", "somchai")
    rig.tick(T0 + 300)
    rig.tick(T0 + 900)
    assert rig.notifications() == [(a1, "hook-a", 0), (a1, "hook-b", 1), (a2, "hook-a", 0)]


def test_a_shelved_alarm_does_not_escalate_and_returns_at_its_time(make_rig: Any) -> None:
    steps = [{"after_s": 0, "channels": ["hook-a"]}, {"after_s": 300, "channels": ["hook-b"]}]
    rig = make_rig([rule("sos", "event", events=["sos.pressed"], escalation=steps)], [WEBHOOK, WEBHOOK_B])
    rig.event("p1-x", "sos.pressed")
    alarm_id = rig.alarms()[0]["id"]
    rig.engine.act(alarm_id, "shelve", "malee", "under repair", until=T0 + 600)
    rig.tick(T0 + 400)
    assert rig.states() == [("sos", "p1-x", "shelved")]
    assert len(rig.notifications()) == 1
    rig.tick(T0 + 600)
    assert rig.states() == [("sos", "p1-x", "active")]
    rig.tick(T0 + 601)
    assert rig.notifications()[-1] == (alarm_id, "hook-b", 1)


def test_the_aqi_derived_quantity_drives_rules_once_12_hours_are_in(make_rig: Any) -> None:
    rig = make_rig([rule("aqi", "threshold", quantity="aqi_th", above=200, clear=150)])
    start = T0 - T0 % 3600
    for h in range(11):
        rig.reading("aq1-x", "pm2_5", 90.0, start + h * 3600 + 60)
    assert rig.states() == []
    assert rig.engine.aqi_of("aq1-x", start + 11 * 3600) is None
    rig.reading("aq1-x", "pm2_5", 90.0, start + 11 * 3600 + 60)
    assert rig.states() == [("aqi", "aq1-x", "active")]
    value = rig.engine.aqi_of("aq1-x", start + 11 * 3600 + 61)
    assert value is not None
    assert value.colour == "red"


def test_ack_and_clear_through_the_api_are_recorded_with_the_users_name(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"], severity="critical")])
    rig.event("p1-x", "sos.pressed")
    api, somchai, malee = rig.api(), rig.api("operator", name="somchai"), rig.api("operator", name="malee")
    [alarm] = api.get("/api/alarms", params={"state": "active", "severity": "critical"}).json()
    r = somchai.post(f"/api/alarms/{alarm['id']}/ack", json={"comment": "on my way"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["acked_by"]) == ("acknowledged", "somchai")
    assert somchai.post(f"/api/alarms/{alarm['id']}/ack").status_code == 409
    r = malee.post(f"/api/alarms/{alarm['id']}/clear")
    assert (r.json()["state"], r.json()["cleared_by"]) == ("cleared", "malee")
    history = api.get(f"/api/alarms/{alarm['id']}").json()["history"]
    assert [(h["action"], h["user"], h["comment"]) for h in history] == [
        ("raised", None, None), ("acknowledged", "somchai", "on my way"), ("cleared", "malee", None)]
    assert api.get("/api/alarms", params={"state": "active"}).json() == []
    assert api.post("/api/alarms/999/ack").status_code == 404
    rig.event("p1-x", "sos.pressed")  # after a clear, a new press is a new alarm
    assert [a["state"] for a in api.get("/api/alarms", params={"device": "p1-x"}).json()] == ["active", "cleared"]


def test_an_operators_ack_is_audited_with_their_name_and_a_viewers_ack_is_refused(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"], severity="critical")])
    rig.event("p1-x", "sos.pressed")
    admin, viewer = rig.api(), rig.api("viewer", name="vera")
    [alarm] = viewer.get("/api/alarms").json()
    refused = viewer.post(f"/api/alarms/{alarm['id']}/ack", json={"comment": "mine"})
    assert refused.status_code == 403, refused.text
    assert viewer.post(f"/api/alarms/{alarm['id']}/clear").status_code == 403
    assert viewer.get(f"/api/alarms/{alarm['id']}").json()["state"] == "active"
    assert [h["action"] for h in viewer.get(f"/api/alarms/{alarm['id']}").json()["history"]] == ["raised"]
    assert admin.get("/api/audit", params={"object": "alarm"}).json() == []
    assert rig.api("operator", name="somchai").post(f"/api/alarms/{alarm['id']}/ack",
                                                    json={"comment": "on my way"}).status_code == 200
    [row] = admin.get("/api/audit", params={"object": "alarm"}).json()
    assert (row["user"], row["action"], row["object"]) == ("somchai", "alarm.ack", f"alarm/{alarm['id']}")
    assert (row["before"]["state"], row["after"]["state"], row["after"]["comment"]) == (
        "active", "acknowledged", "on my way")
    assert admin.put("/api/alarm-rules/hot", json=rule("hot", "threshold", quantity="t", above=40,
                                                       clear=38)).status_code == 200
    [put] = admin.get("/api/audit", params={"object": "alarm-rule/hot"}).json()
    assert (put["user"], put["action"], put["before"], put["after"]["above"]) == ("tester", "alarm-rule.put", None, 40)
    assert viewer.get("/api/audit").status_code == 403


def test_shelve_and_comment_through_the_api(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"])])
    rig.event("p1-x", "sos.pressed")
    api, malee = rig.api(), rig.api("operator", name="malee")
    alarm_id = api.get("/api/alarms").json()[0]["id"]
    for bad in ({"comment": "x"}, {"until": "2026-12-01T12:00:00"}, {"for_s": 60, "until": "2026-12-01T12:00:00Z"}):
        refused = api.post(f"/api/alarms/{alarm_id}/shelve", json=bad)
        assert (refused.status_code, type(refused.json()["detail"])) == (422, list), bad
    assert api.post(f"/api/alarms/{alarm_id}/comment", json={"comment": ""}).status_code == 422
    assert api.post(f"/api/alarms/{2**63}/ack").status_code == 422
    r = malee.post(f"/api/alarms/{alarm_id}/shelve", json={"for_s": 3600, "comment": "technician on site"})
    assert (r.json()["state"], r.json()["shelved_by"]) == ("shelved", "malee")
    assert api.post(f"/api/alarms/{alarm_id}/comment", json={"comment": "cable cut"}).status_code == 200
    assert api.get(f"/api/alarms/{alarm_id}").json()["history"][-1]["comment"] == "cable cut"


def test_rules_through_the_api(make_rig: Any) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"])])
    api = rig.api()
    body = rule("hot", "threshold", quantity="temperature", above=40, clear=38)
    assert rig.api("operator", name="op").put("/api/alarm-rules/hot", json=body).status_code == 403
    assert api.put("/api/alarm-rules/hot", json=body).status_code == 200
    assert api.put("/api/alarm-rules/sos", json=rule("sos", "event", events=["x.y"])).status_code == 409
    bad = api.put("/api/alarm-rules/bad", json=rule("bad", "threshold", quantity="t", above=40, clear=45))
    assert bad.status_code == 422
    assert {(r["id"], r["source"]) for r in api.get("/api/alarm-rules").json()} == {("sos", "file"), ("hot", "api")}
    rig.reading("d1-x", "temperature", 41, T0)
    assert rig.states() == [("hot", "d1-x", "active")]
    assert api.delete("/api/alarm-rules/hot").status_code == 204
    assert api.delete("/api/alarm-rules/hot").status_code == 404


def test_rules_put_or_deleted_after_readings_judge_the_next_ones(make_rig: Any) -> None:
    rig = make_rig([rule("cold", "threshold", quantity="temperature", below=5, clear=6, kind="pole")])
    rig.reading("d1-x", "temperature", 41, T0)  # the engine has looked up this quantity's rules once
    rig.reading("d1-x", "temperature", 1, T0 + 1)
    assert rig.states() == []  # "cold" is for poles; d1-x has not said what it is yet
    rig.status("d1-x", DeviceState.ONLINE)  # now it is a pole
    rig.reading("d1-x", "temperature", 1, T0 + 2)
    assert rig.states() == [("cold", "d1-x", "active")]
    hot = RulesFile.model_validate({"rules": [rule("hot", "threshold", quantity="temperature", above=40,
                                                   clear=38)]}).rules[0]
    rig.engine.put_rule(hot, "admin")
    rig.reading("d1-x", "temperature", 41, T0 + 3)
    assert rig.states() == [("cold", "d1-x", "cleared"), ("hot", "d1-x", "active")]
    rig.reading("d1-x", "temperature", 30, T0 + 4)
    assert rig.engine.delete_rule("hot")
    rig.reading("d1-x", "temperature", 41, T0 + 5)
    assert rig.states() == [("cold", "d1-x", "cleared"), ("hot", "d1-x", "cleared")]


def test_api_rules_survive_a_restart(make_rig: Any, tmp_path: Path) -> None:
    rig = make_rig([])
    rig.engine.put_rule(load_rules(DEMO_RULES).rules[0].model_copy(update={"id": "sos2"}), "admin")
    again = AlarmEngine(rig.store, RulesFile(), rig.feed, clock=lambda: T0, timeseries=rig.store.timeseries)
    again.open()
    assert "sos2" in again.rules


def test_the_demo_rules_load_and_a_bad_file_says_where(tmp_path: Path) -> None:
    assert {r.id for r in load_rules(DEMO_RULES).rules} >= {"sos", "pm25-high", "no-data", "offline"}
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rules]]\nid = "x"\ntype = "threshold"\nquantity = "t"\ntitle_th = "a"\ntitle_en = "a"\n'
                   'clear = 1\n[[rules]]\nid = "y"\ntype = "event"\nevents = ["a.b"]\ntitle_th = "a"\ntitle_en = "a"\n'
                   'escalation = [{ channels = ["nowhere"] }]\n')
    with pytest.raises(HubConfigError, match=r"rules\.0\.threshold.*exactly one of above or below"):
        load_rules(bad)


def test_readings_that_change_no_alarm_cost_no_write_and_a_batch_trips_once(
        make_rig: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = make_rig([rule("hot", "threshold", quantity="temperature", above=40, clear=38)])
    writes: list[int] = []
    real_write = rig.store.write

    def counting(work: Any) -> Any:
        writes.append(1)
        return real_write(work)

    monkeypatch.setattr(rig.engine.store, "write", counting)
    readings = [Reading(ts=datetime.fromtimestamp(T0 + i, UTC), sensor="t", quantity="temperature",
                        value=20.0 + i % 3, unit="C") for i in range(50)]
    rig.engine.committed(IngestBatch(messages=[SeqMessage("dev-a", 1, T0, telemetry=readings)]))
    assert writes == []
    hot = [r.model_copy(update={"value": 45.0}) for r in readings[:3]]
    rig.engine.committed(IngestBatch(messages=[SeqMessage("dev-a", 2, T0, telemetry=hot)]))
    assert writes == [1]
    assert [(a["state"], a["count"]) for a in rig.alarms()] == [("active", 1)]


@pytest.mark.broker
def test_rules_on_a_real_agent_threshold_offline_with_grace_and_no_data_suppressed(
        tmp_path: Path, broker: Broker, procs: Any) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nid = "pm-any"\ntype = "threshold"\nquantity = "pm2_5"\nabove = 0\nclear = -1\nfor_s = 0.5\n'
        'title_th = "ฝุ่น"\ntitle_en = "dust"\n\n'
        '[[rules]]\nid = "quiet"\ntype = "no_data"\nintervals = 3\ntitle_th = "เงียบ"\ntitle_en = "quiet"\n\n'
        '[[rules]]\nid = "down"\ntype = "offline"\ngrace_s = 2\nseverity = "major"\ntitle_th = "หลุด"\n'
        'title_en = "down"\n')
    hub = procs["hub"](broker.port, "--rules", str(rules))
    agent = procs["agent"]("aq-real-1", broker.port, drivers=[fast_air(interval_s=0.2)], heartbeat_s=1.0)

    def states() -> dict[str, str]:
        return {a["rule"]: a["state"] for a in hub.get("/api/alarms", device="aq-real-1")}

    wait_for(lambda: states().get("pm-any") == "active", 30, "the threshold alarm from simulated PM2.5")
    agent.kill()  # no goodbye: the broker publishes the agent's last will, "lost"
    wait_for(lambda: hub.get("/api/devices/aq-real-1")["state"] == "lost", 30, "the last will")
    wait_for(lambda: states().get("down") == "active", 10, "the offline alarm after its grace")
    lost = hub.get("/api/alarms", rule="down")[0]
    assert lost["detail"]["link"] == "lost"
    assert "quiet" not in states(), "an offline device raised a no-data alarm"
    agent.start()
    wait_for(lambda: states().get("down") == "cleared", 30, "the offline alarm cleared by the device's return")


def test_the_aqi_endpoint_serves_the_24_hour_index_with_its_band_and_the_hourly_value(make_rig: Any) -> None:
    rig = make_rig([])
    start = T0 - T0 % 3600
    for h in range(11):
        rig.reading("aq-api-1", "pm2_5", 37.5, start + h * 3600 + 60, sensor="pm")
        rig.reading("aq-api-1", "pm10", 100.0, start + h * 3600 + 90, sensor="pm")
    api = rig.api("viewer", name="vera")
    partial = api.get("/api/devices/aq-api-1/aqi").json()
    assert partial["aqi_24h"] is None  # 11 hours are not enough
    assert partial["aqi_1h"]["aqi"] == 100  # the hour just gone: PM2.5 37.5
    rig.reading("aq-api-1", "pm2_5", 80.0, start + 11 * 3600 + 60, sensor="pm")
    rig.reading("aq-api-1", "pm10", 100.0, start + 11 * 3600 + 90, sensor="pm")
    rig.now = start + 11 * 3600 + 120
    body = api.get("/api/devices/aq-api-1/aqi").json()
    day = body["aqi_24h"]
    assert body["averages_24h"]["pm2_5"] == pytest.approx((37.5 * 11 + 80) / 12, abs=0.05)
    assert (day["aqi"], day["colour"], day["sub_indices"]["pm10"]) == (110, "orange", 75)
    assert day["effective"] == "2023-06-01"
    assert (body["aqi_1h"]["aqi"], body["aqi_1h"]["colour"]) == (214, "red")  # PM2.5 80 in the last hour
    assert api.get("/api/devices/nowhere-1/aqi").status_code == 404


def test_a_failing_evaluation_never_stops_ingest(make_rig: Any, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    rig = make_rig([rule("sos", "event", events=["sos.pressed"])])

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug in a rule")

    monkeypatch.setattr(rig.engine, "_evaluate", broken)
    rig.event("pole-x-1", "sos.pressed")  # would raise into ingest's writer thread
    assert "alarm evaluation of a batch failed" in caplog.text
    monkeypatch.undo()
    rig.event("pole-x-1", "sos.pressed")
    assert rig.states() == [("sos", "pole-x-1", "active")]
