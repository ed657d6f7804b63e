"""The agent's footprint (issue 12): what keeps its CPU and memory small stays in place.

Each polled stream samples in a thread of its own (the loop hears once per sample), the MQTT client writes a
packet at once instead of waking the loop to register a writer, the hub's acks skip the message queue, start-up
memory goes back to the system, a sample's telemetry is written without a model per value (the same message),
and ``nakhon agent run`` leaves the hub's and provisioning's modules out, and pydantic's plugin scan.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from edge import config as config_module
from edge.agents import memory, telemetry
from edge.agents.agent import Agent
from edge.agents.mqtt import CheckedClient
from edge.contract import MAX_TEXT, Reading, Scalar, Telemetry, format_timestamp
from edge.drivers.sim_air_quality import Driver as SimulatedAirQuality
from tests.conftest import Broker, agent_config, fast_air
from tests.test_agent_supervision import run_agent, until

CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])  # session not present, success, no properties
DEVICE = "kk-aq-0301"


def _publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT v5 PUBLISH at QoS 0 without properties, as a broker sends it."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + b"\x00" + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def _fake_broker(listener: socket.socket, after_connack: Callable[[socket.socket], None]) -> None:
    """Accept one client, answer its CONNECT, then hand the connection to ``after_connack``."""
    conn, _ = listener.accept()
    with conn:
        conn.recv(4096)  # CONNECT
        conn.sendall(CONNACK_V5)
        after_connack(conn)


def _with_fake_broker(after_connack: Callable[[socket.socket], None],
                      session: Callable[[int], Any]) -> Any:
    listener = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=_fake_broker, args=(listener, after_connack), daemon=True)
    server.start()
    try:
        return asyncio.run(asyncio.wait_for(session(listener.getsockname()[1]), 60))
    finally:
        listener.close()
        server.join(10)


def test_a_publish_on_the_loop_is_written_before_the_loop_runs_again() -> None:
    received = threading.Event()

    def read_publish(conn: socket.socket) -> None:
        while data := conn.recv(4096):
            if data[0] >> 4 == 3:  # PUBLISH
                received.set()
                return

    async def session(port: int) -> bool:
        client = CheckedClient(hostname="127.0.0.1", port=port, identifier=DEVICE,
                               protocol=aiomqtt.ProtocolVersion.V5, timeout=10, connect_timeout=10)
        async with client:
            codes: list[ReasonCode] = []
            client.publish_nowait(f"nakhon/{DEVICE}/up/telemetry", b"{}", codes.append)
            # the loop does not run while this thread waits: only a packet already written can arrive
            return received.wait(5)

    assert _with_fake_broker(read_publish, session), "the PUBLISH waited for the event loop"


def test_messages_on_a_direct_topic_go_to_their_handler_and_not_to_the_queue() -> None:
    ack, cmd = f"nakhon/{DEVICE}/down/ack", f"nakhon/{DEVICE}/down/cmd"

    def send_two(conn: socket.socket) -> None:
        conn.sendall(_publish_packet(ack, b'{"v":1,"acked":[[1,3]]}') + _publish_packet(cmd, b"{}"))
        while conn.recv(4096):
            pass

    async def session(port: int) -> tuple[list[bytes], list[str]]:
        handled: list[bytes] = []
        client = CheckedClient(hostname="127.0.0.1", port=port, identifier=DEVICE,
                               protocol=aiomqtt.ProtocolVersion.V5, timeout=10, connect_timeout=10,
                               direct={ack: handled.append})
        async with client:
            queued = [str((await anext(aiter(client.messages))).topic)]
            return handled, queued

    handled, queued = _with_fake_broker(send_two, session)
    assert handled == [b'{"v":1,"acked":[[1,3]]}']
    assert queued == [cmd]


@pytest.mark.broker
def test_each_polled_stream_samples_in_a_thread_of_its_own(tmp_path: Path, broker: Broker) -> None:
    path = agent_config(tmp_path / f"{DEVICE}.toml", DEVICE, broker.port,
                        drivers=[fast_air("pm", 0.05), fast_air("pm-b", 0.05)])
    agent = Agent(config_module.load(path, environ={}))
    threads: dict[str, set[str]] = {"pm": set(), "pm-b": set()}

    class Recording(SimulatedAirQuality):
        """The simulator, noting the thread each read runs on."""

        def read(self) -> dict[str, Scalar]:
            threads[self._config.name].add(threading.current_thread().name)
            return super().read()

    for name in threads:
        stream = agent.streams[name]
        stream.driver = Recording(stream.config)  # type: ignore[arg-type]

    async def scenario() -> None:
        await until(lambda: agent.outbox.last_seq() >= 10, 20, "samples of both streams")

    run_agent(agent, scenario)
    assert all(len(names) == 1 for names in threads.values()), threads
    assert [next(iter(threads[n])).startswith(f"sensor-{n}_") for n in threads] == [True, True], threads


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_releasing_free_memory_hands_the_heap_back_to_the_system() -> None:
    blocks = [bytes(16384) for _ in range(4096)]  # 64 MB from malloc's heap (larger than pymalloc's blocks)
    kept = blocks[::8]  # a live block every 128 kB: glibc cannot give the free space back by shrinking the heap
    del blocks
    before = _rss_anon_mb()
    assert memory.release_free_memory()
    after = _rss_anon_mb()
    assert before - after > 20, f"RssAnon {before:.1f} MB before, {after:.1f} MB after"
    assert len(kept) == 512


def test_agent_run_leaves_the_hub_and_provisioning_out(tmp_path: Path) -> None:
    script = ("import json, sys\nfrom nakhon import cli\n"
              f"code = cli.main(['agent', 'run', {str(tmp_path / 'missing.toml')!r}])\n"
              "print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] == 'hub'"
              " or m.startswith(('nakhon.provision', 'nakhon.hubclient')))]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    code, loaded = json.loads(done.stdout.splitlines()[-1])
    assert code == 2, done.stderr  # the missing config is refused
    assert loaded == []


def test_agent_run_skips_pydantics_plugin_scan(tmp_path: Path) -> None:
    script = ("import json, sys\nfrom nakhon import cli\n"
              f"code = cli.main(['agent', 'run', {str(tmp_path / 'missing.toml')!r}])\n"
              "from pydantic.plugin import _loader\n"
              "print(json.dumps([code, _loader._plugins is None]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
                          env=env)
    code, never_scanned = json.loads(done.stdout.splitlines()[-1])
    assert code == 2, done.stderr
    assert never_scanned, "pydantic read every package's entry points for plugins"


STAMP = datetime(2026, 12, 1, 9, 30, 15, 123000, tzinfo=UTC)
PLAIN: list[Scalar] = [31.5, 0.1, 1e-7, 1e16, -0.0, 2**63 - 1, -(2**63), 0, True, False, "ok", "", "x" * MAX_TEXT]


@pytest.mark.parametrize("value", PLAIN, ids=[f"plain-{i}" for i in range(len(PLAIN))])
def test_a_sample_written_directly_is_the_message_the_models_write(value: Scalar) -> None:
    units = {"pm2_5": "µg/m3", "flag": None}
    payload = telemetry.encode("kk-aq-0001", "pm", units, {"pm2_5": value, "flag": value}, STAMP, "gps")
    assert payload is not None
    raw = payload(42)
    direct = Telemetry.model_validate_json(raw)
    expected = Telemetry(device="kk-aq-0001", seq=42, sent_at=direct.sent_at, readings=[
        Reading(ts=STAMP, sensor="pm", quantity=q, value=value, unit=u, clock="gps") for q, u in units.items()])
    assert json.loads(raw) == json.loads(expected.to_json())
    assert direct == expected
    assert [type(r["value"]) for r in json.loads(raw)["readings"]] == [type(value)] * 2  # true stays true, not 1


def test_one_streams_encoder_writes_each_sample_as_the_models_do() -> None:
    units = {"pm2_5": "µg/m3", "pm10": "µg/m3", 'odd"name\\': None}
    encoder = telemetry.SampleEncoder("kk-aq-0001", "pm", units)
    samples: list[tuple[Scalar, str]] = [(31.5, "system"), (7, "gps"), (True, "system"), ("ok", "gps")]
    for i, (value, clock) in enumerate(samples):
        ts = STAMP + timedelta(milliseconds=999 * i)
        values: dict[str, Scalar] = {q: value for q in units}
        payload = encoder.encode(values, telemetry.ms_since_epoch(ts), clock)
        assert payload is not None
        raw = payload(i + 1)
        direct = Telemetry.model_validate_json(raw)
        expected = Telemetry(device="kk-aq-0001", seq=i + 1, sent_at=direct.sent_at, readings=[
            Reading(ts=ts, sensor="pm", quantity=q, value=value, unit=u, clock=clock) for q, u in units.items()])
        assert json.loads(raw) == json.loads(expected.to_json())
        assert abs((direct.sent_at - datetime.now(UTC)).total_seconds()) < 60


@pytest.mark.parametrize("ms", [0, 999, 1000, 1_764_581_415_123, 1_764_581_415_999, 1_764_581_416_000,
                                951_782_400_000, 4_102_444_799_999, 253_402_300_799_999, 253_402_300_800_000 - 1,
                                -1, -86_400_001])
def test_a_time_in_milliseconds_is_written_as_the_contract_writes_it(ms: int) -> None:
    stamps = telemetry.SampleEncoder("kk-aq-0001", "pm", {})._stamps
    at = telemetry.EPOCH + timedelta(milliseconds=ms)
    assert stamps(ms) == format_timestamp(at)
    assert stamps(ms) == format_timestamp(at)  # the second's prefix, kept, gives the same
    assert telemetry.ms_since_epoch(at) == ms


def test_the_millisecond_stamps_follow_the_clock_across_seconds() -> None:
    stamps = telemetry.SampleEncoder("kk-aq-0001", "pm", {})._stamps
    start = 1_764_581_415_000
    for ms in range(start - 2_500, start + 2_500, 7):
        assert stamps(ms) == format_timestamp(telemetry.EPOCH + timedelta(milliseconds=ms))


NEEDS_MODELS: list[tuple[dict[str, Any], datetime]] = [
    ({"pm2_5": Decimal("1.5")}, STAMP), ({"pm2_5": 2**63}, STAMP), ({"state": "ฝน"}, STAMP),
    ({"state": "x" * (MAX_TEXT + 1)}, STAMP), ({"": 1.0}, STAMP), ({"q" * 65: 1.0}, STAMP),
    ({"pm2_5": 1.0}, STAMP.replace(tzinfo=None)),
]


@pytest.mark.parametrize(("values", "ts"), NEEDS_MODELS, ids=[f"models-{i}" for i in range(len(NEEDS_MODELS))])
def test_a_value_out_of_the_plain_cases_is_left_to_the_models(values: dict[str, Any], ts: datetime) -> None:
    assert telemetry.encode("kk-aq-0001", "pm", {}, cast(dict[str, Scalar], values), ts, "system") is None
