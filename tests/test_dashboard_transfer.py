"""What the dashboard costs on the wire, against a real hub subprocess: compressed answers (never the SSE
stream)."""

from __future__ import annotations

import functools
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import QOS, DeviceState, Status, now, topic
from hub.dashboard import STATIC
from tests.conftest import Broker, Hub, wait_for

pytestmark = pytest.mark.broker

Procs = dict[str, Callable[..., Any]]


class Publisher:
    """A plain MQTT client that publishes devices' status messages as their agents would."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-status", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def status(self, device: str, state: str) -> float:
        """Publish ``device``'s status; the time it was acknowledged by the broker."""
        self.client.publish(topic("nakhon", device, "up/status"), Status(
            device=device, state=DeviceState(state), at=now(), heartbeat_s=30, node="air-quality-pole",
            site=f"Site of {device}").to_json(), qos=QOS).wait_for_publish(10)
        return time.monotonic()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    """Status messages published straight to the test broker."""
    p = Publisher(broker.port)
    yield p
    p.close()


def _fleet(hub: Hub, publisher: Publisher, n: int) -> None:
    for i in range(n):
        publisher.status(f"kk-aq-{i:04d}", "online")
    wait_for(lambda: len(hub.get("/api/devices")) == n, 30, f"{n} devices in the registry")


def test_the_dashboard_files_and_the_api_answers_arrive_compressed(broker: Broker, procs: Procs,
                                                                    publisher: Publisher) -> None:
    hub = procs["hub"](broker.port)
    _fleet(hub, publisher, 20)
    gzipped = {"Accept-Encoding": "gzip"}
    script = httpx.get(f"{hub.url}/ui/app.js", headers=gzipped, timeout=10)
    assert script.headers["content-encoding"] == "gzip" and "accept-encoding" in script.headers["vary"].lower()
    assert script.content == (STATIC / "ui" / "app.js").read_bytes()  # httpx undid the gzip
    assert int(script.headers["content-length"]) < len(script.content) / 2
    assert httpx.get(f"{hub.url}/ui/app.css", headers=gzipped, timeout=10).headers["content-encoding"] == "gzip"
    devices = httpx.get(f"{hub.url}/api/devices", headers={**hub.auth, **gzipped}, timeout=10)
    assert devices.headers["content-encoding"] == "gzip"
    assert len(devices.json()) == 20
    # a client that does not ask for gzip gets the plain bytes
    plain = httpx.get(f"{hub.url}/ui/app.js", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "content-encoding" not in plain.headers and plain.content == script.content
    # already compressed: the font goes as it is
    font = httpx.get(f"{hub.url}/vendor/noto-sans-thai/files/noto-sans-thai-thai-400-normal.woff2", headers=gzipped,
                     timeout=10)
    assert font.status_code == 200 and "content-encoding" not in font.headers
    # the raw bytes really are gzip
    with httpx.stream("GET", f"{hub.url}/ui/app.js", headers=gzipped, timeout=10) as r:
        assert gzip.decompress(b"".join(r.iter_raw())) == script.content


def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


def test_the_event_stream_is_not_compressed_and_each_event_arrives_at_once(broker: Broker, procs: Procs,
                                                                          publisher: Publisher) -> None:
    hub = procs["hub"](broker.port)
    _fleet(hub, publisher, 1)
    arrived: list[tuple[str, str, float]] = []
    headers: dict[str, str] = {}
    opened = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{hub.url}/api/stream", headers={**hub.auth, "Accept-Encoding": "gzip"},
                          timeout=httpx.Timeout(10, read=30)) as r:
            headers.update(r.headers)
            opened.set()
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "device":
                    data = json.loads(line[5:])
                    arrived.append((data["device"], data["state"], time.monotonic()))
                    if len(arrived) == 3:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10), "the stream did not open"
    assert headers["content-type"].startswith("text/event-stream") and "content-encoding" not in headers
    for n, state in enumerate(("offline", "online", "offline"), start=1):
        sent = publisher.status("kk-aq-0000", state)
        # each event reaches the client on its own, while the stream stays open (a gzip buffer would hold it)
        wait_for(functools.partial(_at_least, arrived, n), 5, f"{state} on the stream")
        assert arrived[-1][2] - sent < 2.0
    reader.join(10)
    assert [(d, s) for d, s, _ in arrived] == [("kk-aq-0000", s) for s in ("offline", "online", "offline")]
