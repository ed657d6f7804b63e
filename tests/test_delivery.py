"""End to end through a real Mosquitto: agent -> broker -> hub -> store -> API, and what survives crashes."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.agents.outbox import snapshot
from edge.contract import Reading, Telemetry, now
from tests.conftest import Agent, Broker, Hub, fast_air, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("backend")]  # embedded and production stores


def drain(agents: list[Agent], procs: dict[str, Any], broker_port: int, hub: Hub,
          timeout: float = 60) -> set[tuple[str, int]]:
    """Stop the agents, restart each with no drivers so they only deliver their backlog, and wait for empty outboxes.

    Returns every (device, seq) the agents ever produced.
    """
    for a in agents:
        if a.process is not None:
            assert a.stop() == 0, a.log()[-2000:]
    idle = []
    for a in agents:
        device = a.config.stem
        idle.append(procs["agent"](device, broker_port, drivers=[], resend_after_s=1.0))
    wait_for(lambda: all("connected to broker" in a.log() and a.outbox_state()[0] == 0 for a in idle), timeout,
             "every outbox to be acknowledged by the hub")
    produced = set()
    for a in idle:
        _, last = a.outbox_state()
        produced |= {(a.config.stem, s) for s in range(1, last + 1)}
        assert a.stop() == 0
    return produced


def searchable_readings(hub: Hub, produced: set[tuple[str, int]], *, production: bool) -> list[tuple[str, int, str]]:
    """(device, seq, quantity) of every reading of the ``produced`` messages (two quantities each) in the hub's
    time-series store, waiting for them to be searchable (VictoriaMetrics shows a sample about a second after its
    ack); fails when one is missing or was not produced."""
    expected = {(d, s, q) for d, s in produced for q in ("pm2_5", "pm10")}
    need = len(expected)

    def found() -> list[tuple[str, int, str]]:
        return [(device, r["seq"], r["quantity"]) for device in {d for d, _ in produced}
                for r in hub.readings(device)]

    readings: list[tuple[str, int, str]] = wait_for(lambda: len(got := found()) >= need and got, 15,
                                                    "the acknowledged readings to be searchable")
    assert set(readings) <= expected
    return readings


def test_readings_reach_the_api_with_their_original_timestamps(broker: Broker, procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0101", broker.port, drivers=[fast_air(interval_s=0.2)])
    wait_for(lambda: hub.get("/api/devices/kk-aq-0101/readings", quantity="pm2_5")["count"] >= 5
             if any(d["device"] == "kk-aq-0101" for d in hub.get("/api/devices")) else False,
             30, "five PM2.5 readings in the API")
    agent.stop()
    api = hub.get("/api/devices/kk-aq-0101/readings")["readings"]
    # The outbox is empty after a graceful stop only if everything was acked; compare what the API returns
    # with what the hub stored from the device's own payloads.
    stored = {(r["seq"], r["ts"]) for r in hub.readings("kk-aq-0101")}
    assert {(r["seq"], r["ts"]) for r in api} == stored
    assert all(r["ts"].endswith("Z") and len(r["ts"]) == len("2026-11-20T03:15:00.123Z") for r in api)
    assert {r["quantity"] for r in api} == {"pm2_5", "pm10"}
    assert all(r["unit"] == "ug/m3" for r in api)
    device = hub.get("/api/devices/kk-aq-0101")
    assert device["state"] == "offline"  # graceful stop announced
    assert device["lost"] == 0


def test_readings_keep_the_time_they_were_measured_not_the_time_they_arrived(
        broker: Broker, procs: dict[str, Any]) -> None:
    agent = procs["agent"]("kk-aq-0102", broker.port, drivers=[fast_air(interval_s=0.1)])
    wait_for(lambda: agent.outbox_state()[1] >= 10, 30, "ten readings measured while no hub runs")
    agent.stop()
    measured_before = time.time()
    hub = procs["hub"](broker.port)
    produced = drain([agent], procs, broker.port, hub)
    assert hub.stored() == produced
    readings = hub.get("/api/devices/kk-aq-0102/readings")["readings"]
    stamps = [datetime.fromisoformat(r["ts"]).timestamp() for r in readings]
    assert stamps and max(stamps) < measured_before


def test_broker_killed_three_times_every_reading_stored_exactly_once(
        broker: Broker, procs: dict[str, Any], backend: list[str]) -> None:
    hub = procs["hub"](broker.port)
    agents = [procs["agent"](f"kk-aq-02{i:02d}", broker.port, drivers=[fast_air(interval_s=0.01)])
              for i in range(3)]
    for _ in range(3):
        time.sleep(1.5)
        broker.kill()
        time.sleep(0.5)
        broker.start()
    time.sleep(1.5)
    produced = drain(agents, procs, broker.port, hub, timeout=90)
    stored = hub.stored()
    assert len(produced) > 300
    assert stored == produced
    readings = searchable_readings(hub, produced, production=bool(backend))
    assert len(readings) == len(set(readings))  # none twice
    for device in {d for d, _ in produced}:
        assert hub.get(f"/api/devices/{device}")["lost"] == 0


def test_hub_down_longer_than_the_broker_queue_holds_loses_nothing(
        broker_factory: Any, procs: dict[str, Any]) -> None:
    broker = broker_factory(max_queued_messages=100)
    hub = procs["hub"](broker.port)
    agents = [procs["agent"](f"kk-aq-03{i:02d}", broker.port, drivers=[fast_air(interval_s=0.01)])
              for i in range(2)]
    time.sleep(1.0)
    assert hub.stop() == 0
    time.sleep(4.0)  # ~800 messages while the broker queues at most 100 for the hub
    hub.start()
    produced = drain(agents, procs, broker.port, hub, timeout=90)
    assert len(produced) > 500
    assert hub.stored() == produced
    assert "Outgoing messages are being dropped for client nakhon-hub" in broker.log()


def test_agent_killed_mid_stream_loses_nothing_and_continues_its_seq(
        broker: Broker, procs: dict[str, Any], backend: list[str]) -> None:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0401", broker.port, drivers=[fast_air(interval_s=0.01)])
    wait_for(lambda: agent.outbox_state()[1] > 150, 30, "150 records produced")
    agent.kill()
    _, last_before = agent.outbox_state()
    agent.start()
    wait_for(lambda: agent.outbox_state()[1] > last_before + 100, 30, "the restarted agent to produce")
    produced = drain([agent], procs, broker.port, hub)
    stored = hub.stored()
    assert stored == produced
    seqs = {seq for _, seq, _ in searchable_readings(hub, produced, production=bool(backend))}
    assert seqs <= set(range(1, len(produced) + 1))  # the restart reused no seq (skipping none: stored == produced)
    device = hub.get("/api/devices/kk-aq-0401")
    assert device["received"] == len(produced)  # a resend after the kill is counted once
    duplicates = device["duplicates"]
    _replay(broker.port, Telemetry(device="kk-aq-0401", seq=1, sent_at=now(), readings=[
        Reading(ts=now(), sensor="pm", quantity="pm2_5", value=1.0, unit="ug/m3")]))
    wait_for(lambda: hub.get("/api/devices/kk-aq-0401")["duplicates"] == duplicates + 1, 30,
             "the replayed seq 1 to count as a duplicate")
    assert hub.get("/api/devices/kk-aq-0401")["received"] == len(produced)
    assert hub.stored() == stored


def _replay(broker_port: int, message: Telemetry) -> None:
    """Publish one telemetry message as its device would, and wait for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    try:
        client.publish(f"nakhon/{message.device}/up/telemetry", message.to_json(), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_commands_reach_the_device_and_the_api_returns_its_reply(broker: Broker, procs: dict[str, Any]) -> None:
    import httpx

    hub = procs["hub"](broker.port)
    procs["agent"]("kk-aq-0501", broker.port, drivers=[fast_air(interval_s=1.0)])
    wait_for(lambda: any(d["device"] == "kk-aq-0501" and d["state"] == "online" for d in hub.get("/api/devices")),
             30, "the agent online")

    def command(name: str, args: dict[str, Any] | None = None, timeout_s: float = 10) -> httpx.Response:
        return httpx.post(f"{hub.url}/api/devices/kk-aq-0501/commands", headers=hub.auth,
                          json={"name": name, "args": args or {}, "timeout_s": timeout_s}, timeout=30)

    r = command("ping")
    assert r.status_code == 200 and r.json()["outcome"] == "ok" and r.json()["result"]["pong"] is True
    r = command("set_interval", {"sensor": "pm", "interval_s": 0.1})
    assert r.json()["outcome"] == "ok" and r.json()["result"]["sensors"] == ["pm"]
    before = hub.get("/api/devices/kk-aq-0501/readings", quantity="pm2_5")["count"]
    time.sleep(2)
    assert hub.get("/api/devices/kk-aq-0501/readings", quantity="pm2_5")["count"] >= before + 8
    r = command("set_interval", {"sensor": "nope", "interval_s": 1})
    assert r.json()["outcome"] == "error" and "no polled sensor named 'nope'" in r.json()["error"]
    r = command("self_destruct")
    assert r.status_code == 200 and r.json()["outcome"] == "error"
    assert "unknown command 'self_destruct'" in r.json()["error"]
    r = command("reload_config")
    assert r.json()["outcome"] == "ok" and r.json()["result"]["restart_required"] == []
    assert command("ping").json()["outcome"] == "ok"  # still alive after all that
    assert httpx.post(f"{hub.url}/api/devices/kk-zz-9999/commands", headers=hub.auth,
                      json={"name": "ping"}).status_code == 404
    audited = hub.get("/api/audit", object="device/kk-aq-0501")
    assert [(a["user"], a["after"]["name"], a["after"]["outcome"]) for a in audited][-3:] == [
        ("admin", "self_destruct", "error"), ("admin", "reload_config", "ok"), ("admin", "ping", "ok")]


def test_command_to_an_offline_device_times_out(broker: Broker, procs: dict[str, Any]) -> None:
    import httpx

    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0502", broker.port, drivers=[fast_air(interval_s=1.0)])
    wait_for(lambda: any(d["device"] == "kk-aq-0502" for d in hub.get("/api/devices")), 30, "the device known")
    agent.stop()
    r = httpx.post(f"{hub.url}/api/devices/kk-aq-0502/commands", headers=hub.auth,
                   json={"name": "ping", "timeout_s": 1}, timeout=30)
    assert r.status_code == 504
    assert r.json()["outcome"] == "timeout"


def test_liveness_has_link_agent_and_data_levels(broker: Broker, procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0601", broker.port, heartbeat_s=0.5,
                           drivers=[fast_air(interval_s=0.3), {"kind": "sim_air_quality", "name": "dead",
                                                                "interval_s": 0.3, "outage_rate": 1.0}])
    live = wait_for(lambda: next((d["liveness"] for d in hub.get("/api/devices") if d["device"] == "kk-aq-0601"
                                  and d["liveness"]["agent"] == "ok"
                                  # pm's first reading may not be stored yet (VictoriaMetrics: not yet searchable)
                                  and d["liveness"]["data"].get("pm", {}).get("state") not in (None, "no_data")
                                  # the first heartbeat may come before the dead sensor's first poll ("starting")
                                  and d["liveness"]["data"].get("dead", {}).get("state") not in (None, "no_data")),
                                 None), 30, "a heartbeat after both sensors were polled, and data")
    assert live["link"] == "online"
    assert live["data"]["pm"]["state"] == "fresh"
    assert live["data"]["dead"]["state"] == "unavailable"
    agent.kill()  # no graceful offline: the broker publishes the last will
    wait_for(lambda: hub.get("/api/devices/kk-aq-0601")["liveness"]["link"] == "lost", 60, "the last will")
    assert hub.get("/api/devices/kk-aq-0601")["liveness"]["agent"] == "down"


def test_metrics_count_received_stored_and_lag(broker: Broker, procs: dict[str, Any]) -> None:
    import httpx

    hub = procs["hub"](broker.port)
    procs["agent"]("kk-aq-0701", broker.port, drivers=[fast_air(interval_s=0.05)])
    wait_for(lambda: hub.get("/api/devices/kk-aq-0701/readings")["count"] > 20
             if any(d["device"] == "kk-aq-0701" for d in hub.get("/api/devices")) else False, 30, "readings")
    text = httpx.get(f"{hub.url}/metrics", headers=hub.auth).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["nakhon_messages_received_total"] > 10
    assert values["nakhon_readings_stored_total"] > 20
    assert 'nakhon_device_lost_messages{device="kk-aq-0701"}' in values
    assert "nakhon_ingest_lag_seconds" in values
    assert "nakhon_duplicates_total" in values


def test_openapi_lists_every_endpoint(broker: Broker, procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port)
    paths = hub.get("/openapi.json")["paths"]
    for path in ("/api/devices", "/api/devices/{device}", "/api/devices/{device}/readings", "/api/deadletters",
                 "/api/devices/{device}/commands", "/healthz", "/metrics"):
        assert path in paths


def test_two_hubs_share_the_load_and_store_everything_once(broker: Broker, procs: dict[str, Any],
                                                           tmp_path: Any) -> None:
    data = tmp_path / "shared-hub"
    hub1 = procs["hub"](broker.port, "--share", "ingest", "--client-id", "hub-a", data=data)
    hub2 = procs["hub"](broker.port, "--share", "ingest", "--client-id", "hub-b", data=data)
    agents = [procs["agent"](f"kk-aq-08{i:02d}", broker.port, drivers=[fast_air(interval_s=0.01)])
              for i in range(2)]
    time.sleep(3)
    produced = drain(agents, procs, broker.port, hub1)
    assert hub1.stored() == produced
    got = [_received(hub) for hub in (hub1, hub2)]
    assert all(n > 50 for n in got), got  # both processes took a share


def _received(hub: Hub) -> float:
    import httpx

    for line in httpx.get(f"{hub.url}/metrics", headers=hub.auth).text.splitlines():
        if line.startswith("nakhon_messages_received_total "):
            return float(line.split()[1])
    return 0.0


def test_outbox_file_shows_nothing_left_after_a_clean_run(broker: Broker, procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0901", broker.port, drivers=[fast_air(interval_s=0.05)])
    time.sleep(1.5)
    produced = drain([agent], procs, broker.port, hub)
    assert snapshot(agent.outbox).waiting == ()
    assert hub.stored() == produced


def test_an_output_is_driven_by_command(broker: Broker, procs: dict[str, Any]) -> None:
    import httpx

    hub = procs["hub"](broker.port)
    procs["agent"]("kk-kiosk-0501", broker.port, drivers=[
        {"kind": "gpio", "name": "status-led", "device": "led", "pin": 6, "pin_factory": "mock"},
        {"kind": "gpio", "name": "help", "device": "button", "pin": 5, "pin_factory": "mock"}])
    wait_for(lambda: any(d["device"] == "kk-kiosk-0501" and d["state"] == "online" for d in hub.get("/api/devices")),
             30, "the agent online")

    def command(args: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{hub.url}/api/devices/kk-kiosk-0501/commands", headers=hub.auth,
                       json={"name": "output", "args": args, "timeout_s": 10}, timeout=30)
        answer: dict[str, Any] = r.json()
        return answer

    on = command({"sensor": "status-led", "on": True})
    assert on["outcome"] == "ok" and on["result"]["state"]["on"] is True
    blink = command({"sensor": "status-led", "blink": {"on_s": 0.1, "off_s": 0.1, "n": 3}})
    assert blink["outcome"] == "ok"
    assert command({"sensor": "status-led", "on": False})["result"]["state"]["on"] is False
    refused = command({"sensor": "help", "on": True})
    assert refused["outcome"] == "error" and "is a button, not an output" in refused["error"]
    wrong = command({"sensor": "status-led", "blink": {"speed": "fast"}})
    assert wrong["outcome"] == "error" and "bad blink pattern" in wrong["error"]
