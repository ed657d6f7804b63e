"""The agent keeps every task alive: a failing driver, a full disk, a value JSON cannot carry, a refused message.

The agent runs in this process (so that a test can break one of its drivers or fill its outbox) against a real
Mosquitto; what the test checks is what a technician sees: the log, the retained heartbeat, the outbox file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge import config as config_module
from edge.agents.agent import Agent, finite
from edge.agents.mqtt import publish_packet_size
from edge.agents.outbox import RecordClass, snapshot
from edge.contract import Ack, Event, Scalar, Severity, TxOutcome, TxStatus, now
from edge.drivers.sim_air_quality import Config as AirConfig
from edge.drivers.sim_air_quality import Driver as SimulatedAirQuality
from edge.errors import ConfigError
from tests.conftest import ROOT, Broker, agent_config, fast_air

pytestmark = pytest.mark.broker


class Heartbeats:
    """Every ``up/status`` the broker delivers for one device, as parsed JSON."""

    def __init__(self, port: int, device: str, topics: str = "up/status") -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sniff-{device}", protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"nakhon/{device}/{topics}", qos=1)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((message.topic, json.loads(message.payload)))

    def latest(self, suffix: str = "up/status") -> dict[str, Any] | None:
        with self._lock:
            found = [m for t, m in self.seen if t.endswith(suffix)]
        return found[-1] if found else None

    def count(self, suffix: str) -> int:
        with self._lock:
            return sum(1 for t, _ in self.seen if t.endswith(suffix))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def heartbeats(broker: Broker) -> Iterator[Callable[..., Heartbeats]]:
    """Sniffers of devices' messages on the test broker; all closed at the end."""
    made: list[Heartbeats] = []

    def make(device: str, topics: str = "up/status") -> Heartbeats:
        made.append(Heartbeats(broker.port, device, topics))
        return made[-1]

    yield make
    for sniffer in made:
        sniffer.close()


def _loaded(tmp_path: Path, device: str, port: int, driver: dict[str, Any]) -> config_module.LoadedConfig:
    path = agent_config(tmp_path / f"{device}.toml", device, port, drivers=[driver], heartbeat_s=0.3,
                        resend_after_s=1.0)
    return config_module.load(path, environ={})


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait (without blocking the agent's loop) until ``predicate()`` is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def run_agent(agent: Agent, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``agent`` while ``scenario`` runs, then stop it gracefully."""
    async def main() -> None:
        running = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.online, 20, "the agent connected")
            await scenario()
        finally:
            agent.request_stop()
            await asyncio.wait_for(running, 30)

    asyncio.run(main())


def _stored_seqs(agent: Agent) -> list[int]:
    return [r.seq for r in agent.outbox.pending(1_000_000)]


def test_a_driver_raising_an_unexpected_error_is_logged_reported_and_restarted(
        tmp_path: Path, broker: Broker, heartbeats: Callable[..., Heartbeats],
        caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(_loaded(tmp_path, "kk-aq-0101", broker.port, fast_air(interval_s=0.05)))
    stream = agent.streams["pm"]
    broken = threading.Event()

    class Flaky(SimulatedAirQuality):
        """The simulator, but a bug (a KeyError) while ``broken`` is set."""

        def read(self) -> dict[str, Scalar]:
            if broken.is_set():
                raise KeyError("pm2_5")
            return super().read()

    assert isinstance(stream.config, AirConfig)
    stream.driver = Flaky(stream.config)
    status = heartbeats("kk-aq-0101")

    async def scenario() -> None:
        await until(lambda: (s := status.latest()) and s["streams"]["pm"]["state"] == "ok", 20, "a healthy stream")
        broken.set()
        unavailable = await until(
            lambda: (s := status.latest()) and s["streams"]["pm"]["state"] == "unavailable" and s, 20,
            "the heartbeat to show the stream unavailable")
        assert unavailable["streams"]["pm"]["error"] == "KeyError: 'pm2_5'"
        assert unavailable["state"] == "online"
        before = agent.outbox.last_seq()
        broken.clear()
        await until(lambda: (s := status.latest()) and s["streams"]["pm"]["state"] == "ok", 20,
                    "the stream back in the heartbeat")
        await until(lambda: agent.outbox.last_seq() > before + 3, 20, "readings again")

    with caplog.at_level(logging.INFO, logger="nakhon.agent"):
        run_agent(agent, scenario)
    failures = [r for r in caplog.records if r.getMessage().startswith("task stream-pm failed")]
    assert failures, "no log line for the failed stream"
    with_traceback = [r for r in failures if r.exc_info is not None]
    assert len(with_traceback) == 1  # the traceback once; a repeat of the same error is one line
    assert with_traceback[0].exc_info is not None and with_traceback[0].exc_info[0] is KeyError


def test_a_failing_downlink_handler_is_reported_and_the_downlink_comes_back(
        tmp_path: Path, broker: Broker, heartbeats: Callable[..., Heartbeats],
        caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(_loaded(tmp_path, "kk-kiosk-0105", broker.port, fast_air(interval_s=0.1)))
    answered: list[str] = []

    async def receipt_printer(outcome: TxOutcome) -> None:
        """A listener with a bug on its first answer (what a kiosk's receipt code could do)."""
        answered.append(outcome.tx_id)
        if len(answered) == 1:
            raise RuntimeError("receipt layout bug")

    agent.tx_listeners.append(receipt_printer)
    status = heartbeats("kk-kiosk-0105")
    hub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-hub", protocol=mqtt.MQTTv5)
    hub.connect("127.0.0.1", broker.port)
    hub.loop_start()

    def answer(tx_id: str) -> None:
        outcome = TxOutcome(tx_id=tx_id, status=TxStatus.REJECTED, duplicate=False, reason="test", result={})
        hub.publish("nakhon/kk-kiosk-0105/down/tx", outcome.to_json(), qos=1).wait_for_publish(10)

    async def scenario() -> None:
        answer("kk-kiosk-0105-first")
        failed = await until(lambda: (s := status.latest()) and (s.get("tasks") or {}).get("downlink") and s, 20,
                             "the downlink failure in the heartbeat")
        assert failed["tasks"]["downlink"]["error"] == "RuntimeError: receipt layout bug"
        await until(lambda: (s := status.latest()) and s["tasks"]["downlink"]["state"] == "ok"
                    and s["tasks"]["downlink"]["restarts"] == 1, 20, "the downlink restarted")
        answer("kk-kiosk-0105-second")
        await until(lambda: len(answered) == 2, 20, "the restarted downlink handling the next answer")
        depth = agent.outbox.depth()
        assert depth > 0
        hub.publish("nakhon/kk-kiosk-0105/down/ack", Ack(acked=[(1, agent.outbox.last_seq())]).to_json(), qos=1)
        await until(lambda: agent.outbox.depth() < depth, 20, "acknowledgements handled again")

    try:
        with caplog.at_level(logging.INFO, logger="nakhon.agent"):
            run_agent(agent, scenario)
    finally:
        hub.loop_stop()
        hub.disconnect()
    tracebacks = [r for r in caplog.records if r.exc_info is not None and "task downlink failed" in r.getMessage()]
    assert len(tracebacks) == 1


def _fill_disk(agent: Agent, free_pages: int) -> None:
    """Cap the outbox file at its current size plus ``free_pages``: SQLite then fails writes with SQLITE_FULL,
    exactly as it does on a full disk."""
    box: Any = agent.outbox
    with box._lock:
        pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
        box._conn.execute(f"PRAGMA max_page_count = {pages + free_pages}")


def test_a_full_disk_is_reported_and_the_outbox_recovers_when_space_returns(
        tmp_path: Path, broker: Broker, heartbeats: Callable[..., Heartbeats],
        caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(_loaded(tmp_path, "kk-aq-0102", broker.port, fast_air(interval_s=0.02)))
    status = heartbeats("kk-aq-0102")
    before_full: list[int] = []

    async def scenario() -> None:
        await until(lambda: agent.outbox.last_seq() >= 20, 20, "some readings")
        _fill_disk(agent, free_pages=2)
        report = await until(lambda: (s := status.latest()) and s["outbox_error"] and s, 20,
                             "the heartbeat to report the full disk")
        assert "disk is full" in report["outbox_error"]
        assert report["unstored"] >= 1
        assert report["streams"]["pm"]["state"] == "ok"  # the sensor is fine: only the outbox is not
        before_full.extend(_stored_seqs(agent))
        _fill_disk(agent, free_pages=1_000_000)  # space is back
        last = agent.outbox.last_seq()
        await until(lambda: agent.outbox.last_seq() > last + 10, 20, "new readings committed")
        await until(lambda: (s := status.latest()) and s["outbox_error"] is None, 20,
                    "the heartbeat to clear the error")

    with caplog.at_level(logging.INFO, logger="nakhon.agent"):
        run_agent(agent, scenario)
    assert "outbox cannot take records" in caplog.text and "outbox takes records again" in caplog.text
    kept = list(snapshot(agent.cfg.outbox.path).waiting)
    assert set(before_full) <= set(kept)  # nothing measured before the disk filled was lost
    assert kept == list(range(1, len(kept) + 1))  # and no hole in the sequence


def test_nan_and_infinite_values_are_refused_counted_and_never_published_as_null(
        tmp_path: Path, broker: Broker, heartbeats: Callable[..., Heartbeats]) -> None:
    agent = Agent(_loaded(tmp_path, "kk-aq-0103", broker.port, fast_air(interval_s=0.05)))
    stream = agent.streams["pm"]
    reads = 0

    class Glitchy(SimulatedAirQuality):
        """The simulator, but PM2.5 is always NaN and PM10 is infinite every other read."""

        def read(self) -> dict[str, Scalar]:
            nonlocal reads
            reads += 1
            values: dict[str, Scalar] = super().read()
            values["pm2_5"] = math.nan
            if reads % 2:
                values["pm10"] = -math.inf
            return values

    assert isinstance(stream.config, AirConfig)
    stream.driver = Glitchy(stream.config)
    seen = heartbeats("kk-aq-0103", "up/#")

    async def scenario() -> None:
        await until(lambda: seen.count("up/telemetry") >= 3, 20, "telemetry")
        hb = await until(lambda: (s := seen.latest()) and (s["streams"]["pm"].get("refused_values") or 0) >= 4
                         and s, 20, "refused values in the heartbeat")
        assert hb["streams"]["pm"]["state"] == "ok"

    run_agent(agent, scenario)
    with seen._lock:
        telemetry = [m for t, m in seen.seen if t.endswith("up/telemetry")]
    values = [r["value"] for m in telemetry for r in m["readings"]]
    assert values and None not in values and all(math.isfinite(v) for v in values)
    assert {r["quantity"] for m in telemetry for r in m["readings"]} == {"pm10"}  # the good values still flow
    assert not finite(math.nan) and not finite(math.inf) and finite(1.5) and finite("text")


def test_a_message_over_the_broker_maximum_packet_size_is_set_aside_and_the_rest_flows(
        tmp_path: Path, broker_factory: Callable[..., Broker], caplog: pytest.LogCaptureFixture) -> None:
    small = broker_factory(max_packet_size=4096)
    agent = Agent(_loaded(tmp_path, "kk-aq-0104", small.port, fast_air(interval_s=0.1)))
    agent.outbox.open()
    big = agent.outbox.append(RecordClass.EVENT, lambda seq: Event(
        device="kk-aq-0104", seq=seq, ts=now(), sensor="pm", event="sensor.dump", severity=Severity.INFO,
        data={f"part{i}": "x" * 2_000 for i in range(5)}))  # strings within the contract's bound, 10 kB in all
    agent.outbox.close()
    seen = Heartbeats(small.port, "kk-aq-0104", "up/#")

    async def scenario() -> None:
        await until(lambda: agent.set_aside == 1, 20, "the oversize record set aside")
        await until(lambda: seen.count("up/telemetry") >= 10, 20, "telemetry flowing past it")
        hb = await until(lambda: (s := seen.latest()) and s.get("set_aside") == 1 and s, 20,
                         "the heartbeat to count it")
        assert "maximum packet size of 4096" in hb["last_error"]

    try:
        with caplog.at_level(logging.INFO, logger="nakhon.agent"):
            run_agent(agent, scenario)
    finally:
        seen.close()
    assert caplog.text.count("connected to broker") == 1  # never sent: the broker had no reason to disconnect
    assert f"record seq {big.seq} set aside" in caplog.text
    with sqlite3.connect(agent.cfg.outbox.path) as db:
        aside = db.execute("SELECT seq, reason FROM set_aside").fetchall()
    queued = snapshot(agent.cfg.outbox.path).waiting
    assert [seq for seq, _ in aside] == [big.seq] and big.seq not in queued
    assert "maximum packet size of 4096" in aside[0][1]


def test_a_record_the_broker_refuses_for_now_is_kept_and_retried_with_a_growing_delay(
        tmp_path: Path, broker_factory: Callable[..., Broker]) -> None:
    guarded = broker_factory(accounts={"kk-aq-0002": "secret-two"})
    secret = tmp_path / "two.pw"
    secret.write_text("secret-two\n")
    secret.chmod(0o600)
    # kk-aq-0002's credentials on a device that claims to be kk-aq-0001: the ACL refuses it (0x87, not authorized)
    path = agent_config(tmp_path / "kk-aq-0001.toml", "kk-aq-0001", guarded.port, drivers=[], username="kk-aq-0002",
                        password_file=secret, heartbeat_s=3600, resend_after_s=0.5)
    agent = Agent(config_module.load(path, environ={}))
    agent.outbox.open()
    agent.outbox.append(RecordClass.EVENT, lambda seq: Event(device="kk-aq-0001", seq=seq, ts=now(), sensor="sos",
                                                             event="sos.pressed", severity=Severity.CRITICAL, data={}))
    agent.outbox.close()

    async def scenario() -> None:
        started = time.monotonic()
        await until(lambda: agent.publish_errors >= 4, 30, "the birth and three refusals of the record")
        # resent after 1 s, then 2 s (0.5 s each without the backoff): a refusal is never a tight loop
        assert time.monotonic() - started >= 2.5
        assert agent.outbox.depth() == 1 and agent.set_aside == 0  # kept: fixing the ACL lets it through
        assert "Not authorized" in str(agent.last_error)

    run_agent(agent, scenario)


def test_packet_size_counts_the_mqtt_framing() -> None:
    assert publish_packet_size("a/b", b"") == 1 + 1 + 2 + 3 + 2 + 1
    assert publish_packet_size("t", b"x" * 200) == 1 + 2 + 2 + 1 + 2 + 1 + 200


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_agent_check_fails_for_every_file_the_config_names_that_is_missing(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by check\n")
    path = agent_config(tmp_path / "kk-kiosk-0102.toml", "kk-kiosk-0102", 8883, password_file=secret, drivers=[
        {"kind": "thai_id_card", "name": "id-card", "hmac_key_file": str(tmp_path / "citizen-ref.key"),
         "sim_citizens": str(tmp_path / "only-for-the-simulator.json")}])
    path.write_text(path.read_text().replace("port = 8883", 'port = 8883\ntls = true\nca_file = "ca.pem"\n'
                                             'cert_file = "device.crt"'))
    run = _check(path)
    assert run.returncode == 2
    assert f"{path}: broker.cert_file: no such file {tmp_path / 'device.crt'}" in run.stderr
    assert f"drivers[0].hmac_key_file (id-card): no such file {tmp_path / 'citizen-ref.key'}" in run.stderr
    assert "ca_file" not in run.stderr and "sim_citizens" not in run.stderr
    (tmp_path / "device.crt").write_text("cert\n")
    (tmp_path / "citizen-ref.key").write_bytes(b"k" * 32)
    run = _check(path)
    assert run.returncode == 0, run.stderr
    (tmp_path / "device.crt").unlink()
    with pytest.raises(ConfigError, match=r"broker\.cert_file: no such file"):
        config_module.load(path, environ={})  # `agent run` refuses it at start-up too
