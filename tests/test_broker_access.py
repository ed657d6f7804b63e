"""The password-account broker config with a real Mosquitto: a device cannot join the hub's share group or read
others'."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.contract import Reading, Telemetry, now
from hub.broker import BrokerSettings, Mosquitto, free_port
from tests.conftest import Proc, wait_for

pytestmark = pytest.mark.broker

GROUP = "hubs"
UPLINK = f"$share/{GROUP}/nakhon/+/up/#"


class Account:
    """One MQTT v5 client logged in with a demo account; records what it receives."""

    def __init__(self, data: Path, port: int, user: str) -> None:
        self.user = user
        self.received: list[str] = []
        self.granted: list[ReasonCode] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, (data / "secrets" / f"{user}.password").read_text().strip())
        self.client.on_message = lambda _c, _u, message: self.received.append(message.topic)
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, codes: list[ReasonCode], _props: Any) -> None:
        self.granted = codes
        self._subscribed.set()

    def subscribe(self, topic_filter: str) -> ReasonCode:
        """Subscribe and return the broker's answer for the filter."""
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10), f"no SUBACK for {self.user}"
        return self.granted[0]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


HUB_USER = "nakhon-hub"


@pytest.fixture
def demo_broker(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A Mosquitto with generated accounts (passwords in ``secrets/``) and access control on a free port."""
    data = tmp_path / "demo"
    accounts = {user: f"secret-of-{user}" for user in (HUB_USER, "kk-aq-0001", "kk-aq-0002", "kk-wl-0001")}
    (data / "secrets").mkdir(parents=True)
    for user, password in accounts.items():
        (data / "secrets" / f"{user}.password").write_text(password)
        (data / "secrets" / f"{user}.password").chmod(0o600)
    broker = Mosquitto(BrokerSettings(directory=data / "broker", port=free_port(), accounts=accounts))
    broker.start()
    yield data, broker.settings.port
    broker.stop()


def _telemetry(device: str, seq: int) -> bytes:
    return Telemetry(device=device, seq=seq, sent_at=now(), readings=[
        Reading(ts=now(), sensor="pm", quantity="pm2_5", value=float(seq), unit="ug/m3")]).to_json()


def test_a_device_cannot_join_the_hubs_share_group(demo_broker: tuple[Path, int], procs: dict[str, Any]) -> None:
    data, port = demo_broker
    hub = procs["hub"](port, "--share", GROUP, "--username", HUB_USER,
                       "--password-file", str(data / "secrets" / f"{HUB_USER}.password"))
    intruder = Account(data, port, "kk-aq-0001")
    sender = Account(data, port, "kk-aq-0002")
    try:
        refused = intruder.subscribe(UPLINK)
        assert refused.is_failure and refused.getName() == "Not authorized", refused
        assert intruder.subscribe("nakhon/+/up/#").is_failure  # nor the plain uplink of the fleet
        assert not intruder.subscribe("nakhon/kk-aq-0001/down/#").is_failure  # its own downlink it may
        for seq in range(1, 101):
            sender.publish("nakhon/kk-aq-0002/up/telemetry", _telemetry("kk-aq-0002", seq))
        wait_for(lambda: len(hub.stored()) == 100, 30, "the hub to store all 100 messages")
        assert hub.stored() == {("kk-aq-0002", seq) for seq in range(1, 101)}
        assert intruder.received == []
    finally:
        intruder.close()
        sender.close()


def test_a_device_writes_only_its_own_uplink(demo_broker: tuple[Path, int]) -> None:
    data, port = demo_broker
    operator = Account(data, port, HUB_USER)
    spoofer = Account(data, port, "kk-wl-0001")
    try:
        assert not operator.subscribe(UPLINK).is_failure
        spoofer.publish("nakhon/kk-aq-0001/up/telemetry", _telemetry("kk-aq-0001", 1))
        spoofer.publish("nakhon/kk-wl-0001/up/telemetry", _telemetry("kk-wl-0001", 1))
        wait_for(lambda: operator.received, 10, "the device's own message")
        assert operator.received == ["nakhon/kk-wl-0001/up/telemetry"]
    finally:
        operator.close()
        spoofer.close()


def test_free_ports_come_from_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for span in (1, 2):
        port = free_port(span=span)
        assert port >= 10000 and port + span - 1 < low  # an outgoing connection cannot take it meanwhile
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            if span == 2:
                b.bind(("127.0.0.1", port + 1))


def test_a_hub_whose_subscription_is_refused_never_reports_the_broker_up(
        demo_broker: tuple[Path, int], procs: dict[str, Any]) -> None:
    """The hub is up once the broker has acknowledged its subscription, not at its CONNACK: with an account that may
    not read the fleet's uplink (a device's), ``/healthz`` stays 503 and the log says what to check."""
    data, port = demo_broker
    hub = procs["hub"](port, "--username", "kk-wl-0001",
                       "--password-file", str(data / "secrets" / "kk-wl-0001.password"), start=False)
    Proc.start(hub)  # not Hub.start, which waits for a healthy hub
    wait_for(lambda: "refused the hub's subscription" in hub.log(), 30, "the hub to log the refused subscription")
    health = httpx.get(f"{hub.url}/healthz", timeout=10)
    assert health.status_code == 503, health.text
    assert health.json()["broker"] is False
    assert "check its ACL for the hub's user" in hub.log()
    assert hub.alive()
