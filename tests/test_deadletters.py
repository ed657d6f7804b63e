"""Malformed traffic through a real broker: the hub stays up, dead-letters each one with its reason, stores the rest."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import Reading, Telemetry, now
from tests.conftest import Broker, wait_for

pytestmark = pytest.mark.broker


def _valid(device: str, seq: int) -> bytes:
    return Telemetry(device=device, seq=seq, sent_at=now(),
                     readings=[Reading(ts=now(), sensor="pm", quantity="pm2_5", value=12.5, unit="ug/m3")]).to_json()


def _malformed(rng: random.Random, i: int) -> tuple[str, str, bytes]:
    """(expected reason, topic, payload) for the i-th malformed message, cycling through every kind."""
    good = json.loads(_valid("kk-bad-0001", 10_000 + i))
    kind = i % 8
    if kind == 0:
        return "invalid_json", "nakhon/kk-bad-0001/up/telemetry", b'{"v": 1, "device": "kk-bad-0001", '
    if kind == 1:
        return "invalid_json", "nakhon/kk-bad-0001/up/event", bytes(rng.randrange(128, 256) for _ in range(40))
    if kind == 2:
        return "invalid_json", "nakhon/kk-bad-0001/up/telemetry", b"[1, 2, 3]"
    if kind == 3:
        broken = dict(good, readings=[])  # a batch must not be empty
        return "schema", "nakhon/kk-bad-0001/up/telemetry", json.dumps(broken).encode()
    if kind == 4:
        broken = dict(good, v=2, seq="seven")
        return "schema", "nakhon/kk-bad-0001/up/telemetry", json.dumps(broken).encode()
    if kind == 5:
        big = dict(good, padding="x" * 3000)
        return "oversize", "nakhon/kk-bad-0001/up/telemetry", json.dumps(big).encode()
    if kind == 6:
        return "device_mismatch", "nakhon/kk-bad-0001/up/telemetry", _valid("kk-aq-0001", 20_000 + i)
    return "bad_topic", "nakhon/kk-bad-0001/up/firmware", json.dumps(good).encode()


def test_a_thousand_malformed_payloads_interleaved_with_valid_traffic(broker: Broker, procs: dict[str, Any]) -> None:
    hub = procs["hub"](broker.port, "--max-payload", "2048")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzzer", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(500)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    rng = random.Random(2026)
    expected: Counter[str] = Counter()
    valid_seq = 0
    try:
        for i in range(1000):
            reason, topic, payload = _malformed(rng, i)
            expected[reason] += 1
            client.publish(topic, payload, qos=1)
            if i % 2 == 0:
                valid_seq += 1
                client.publish("nakhon/kk-good-0001/up/telemetry", _valid("kk-good-0001", valid_seq), qos=1)
        valid_seq += 1
        last = client.publish("nakhon/kk-good-0001/up/telemetry", _valid("kk-good-0001", valid_seq), qos=1)
        last.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()

    def counted() -> dict[str, int] | None:
        with hub.db() as db:
            got = dict(db.execute("SELECT reason, COUNT(*) FROM deadletters GROUP BY reason").fetchall())
        return got if sum(got.values()) >= 1000 else None

    got = wait_for(counted, 60, "1000 dead letters")
    assert got == dict(expected)
    assert hub.alive()
    assert hub.get("/healthz")["status"] == "ok"
    assert {s for d, s in hub.stored() if d == "kk-good-0001"} == set(range(1, valid_seq + 1))
    assert hub.get("/api/devices/kk-good-0001")["lost"] == 0

    letters = hub.get("/api/deadletters", limit=2000)
    assert len(letters) == 1000
    for letter in letters:
        assert letter["reason"] in expected
        assert letter["topic"].startswith("nakhon/kk-bad-0001/")
        assert letter["received_at"].endswith("Z")
        assert letter["detail"]
        assert letter["size"] > 0
        payload = letter["payload_text"] if letter["payload_text"] is not None else letter["payload_base64"]
        assert payload is not None and len(payload) <= 4096 * 2
    oversize = hub.get("/api/deadletters", reason="oversize", limit=1)[0]
    assert oversize["size"] > 3000 and "exceeds the hub's limit of 2048" in oversize["detail"]
    mismatch = hub.get("/api/deadletters", reason="device_mismatch", limit=1)[0]
    assert "kk-aq-0001" in mismatch["detail"]
    # nothing a stranger claimed for kk-aq-0001 was stored under that device
    assert not any(d == "kk-aq-0001" for d, _ in hub.stored())


def test_the_demo_broker_refuses_a_device_publishing_on_another_devices_topic(
        broker_factory: Any, procs: dict[str, Any], tmp_path: Any) -> None:
    accounts = {"nakhon-hub": "hub-secret", "kk-aq-0001": "secret-one", "kk-aq-0002": "secret-two"}
    broker = broker_factory(accounts=accounts)
    hub_pw = tmp_path / "hub.pw"
    hub_pw.write_text("hub-secret")
    hub_pw.chmod(0o600)
    hub = procs["hub"](broker.port, "--username", "nakhon-hub", "--password-file", str(hub_pw))
    pw2 = tmp_path / "two.pw"
    pw2.write_text("secret-two\n")
    pw2.chmod(0o600)
    pw1 = tmp_path / "one.pw"
    pw1.write_text("secret-one\n")
    pw1.chmod(0o600)
    # an honest device, and one whose credentials are kk-aq-0002's but which claims to be kk-aq-0001
    honest = procs["agent"]("kk-aq-0002", broker.port, password_file=pw2,
                            drivers=[{"kind": "sim_air_quality", "name": "pm", "interval_s": 0.2}])
    impostor = procs["agent"]("kk-aq-0001", broker.port, username="kk-aq-0002", password_file=pw2,
                              drivers=[{"kind": "sim_air_quality", "name": "pm", "interval_s": 0.2}])
    wait_for(lambda: "0x87" in impostor.log(), 30, "the impostor to report the refusal")
    log = impostor.log()
    assert "broker refused publish on nakhon/kk-aq-0001/up/" in log
    assert "Not authorized (0x87)" in log
    assert "Check that the broker credentials (user kk-aq-0002) belong to device kk-aq-0001" in log
    time.sleep(1.0)
    assert not any(d == "kk-aq-0001" for d, _ in hub.stored())
    assert impostor.alive()  # it reports and keeps its records, it does not crash
    assert impostor.outbox_state()[0] > 0
    impostor.stop()
    honest.stop()
    # the same device with its own credentials gets through and delivers what the impostor held back
    fixed = procs["agent"]("kk-aq-0001", broker.port, password_file=pw1, drivers=[])
    wait_for(lambda: fixed.outbox_state()[0] == 0, 30, "the outbox delivered")
    assert any(d == "kk-aq-0001" for d, _ in hub.stored())
    # the honest device's readings went through all along
    assert any(d == "kk-aq-0002" for d, _ in hub.stored())


def test_wrong_password_is_refused_and_the_agent_keeps_retrying(broker_factory: Any, procs: dict[str, Any],
                                                               tmp_path: Any) -> None:
    broker = broker_factory(accounts={"kk-aq-0003": "right"})
    pw = tmp_path / "bad.pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    agent = procs["agent"]("kk-aq-0003", broker.port, password_file=pw,
                           drivers=[{"kind": "sim_air_quality", "name": "pm", "interval_s": 0.2}])
    wait_for(lambda: agent.log().count("reconnecting in") >= 2, 30, "two refused connection attempts")
    assert "Bad user name or password" in agent.log() or "Not authorized" in agent.log()
    assert agent.alive()
    assert agent.outbox_state()[1] > 0  # it keeps measuring while refused
