"""Outbox replay: how fast an agent drains a backlog to the hub, against a plain paho publisher to the same hub.

Run by hand (not a test): ``.venv/bin/python benchmarks/replay.py --help``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _harness import (
    FORK,
    HOST,
    REPO,
    ROOT,
    STALL_S,
    START_S,
    BenchError,
    HubProcess,
    child_signals,
    progress,
    receive,
    run_guarded,
    start_broker,
    start_child,
    table,
    work_dir,
)
from paho.mqtt.enums import CallbackAPIVersion

from edge.agents.outbox import Outbox, RecordClass
from edge.config import OutboxConfig
from edge.contract import QOS, Reading, Telemetry, now, topic

BAR = 0.5
"""The issue's bar: the agent drains its outbox at least at this fraction of the plain publisher's rate."""
POLL_S = 0.02
DEVICE = "bench-replay"


@dataclass(frozen=True)
class Params:
    """The workload."""

    records: int
    readings: int
    window: int
    runs: int


@dataclass(frozen=True)
class RunResult:
    """One scenario run: the hub's first and last stored message, and (agent) when its outbox was empty."""

    scenario: str
    run: int
    messages: int
    seconds: float
    """From the poll that saw the first message stored to the poll that saw the scenario done."""
    stored_seconds: float
    cpu_seconds: float
    """CPU time the sender (publisher child or agent) spent over the same span."""
    hub_acks: int
    """``down/ack`` messages the hub sent to the device during the run."""

    @property
    def msg_per_s(self) -> float:
        """Messages per second over the measured span."""
        return self.messages / self.seconds


def build_payloads(records: int, readings: int) -> list[bytes]:
    """The plain publisher's payloads, seq 1..records, the same shape as the agent's records."""
    start = now()
    return [Telemetry(device=DEVICE, seq=seq, sent_at=start, readings=[
        Reading(ts=start + timedelta(milliseconds=seq), sensor="bench", quantity=f"q{i}",
                value=20.0 + (seq + i) % 100 / 10, unit="u") for i in range(readings)]).to_json()
            for seq in range(1, records + 1)]


def _telemetry(sent_at: datetime, readings: list[Reading], seq: int) -> Telemetry:
    return Telemetry(device=DEVICE, seq=seq, sent_at=sent_at, readings=readings)


def fill_outbox(path: Path, records: int, readings: int) -> None:
    """Queue ``records`` telemetry records in a fresh outbox, as an agent does during an outage."""
    start = now()
    with Outbox(path, OutboxConfig(path=path)) as outbox:
        for n in range(1, records + 1):
            batch = [Reading(ts=start + timedelta(milliseconds=n), sensor="bench", quantity=f"q{i}",
                             value=20.0 + (n + i) % 100 / 10, unit="u") for i in range(readings)]
            outbox.append(RecordClass.TELEMETRY, partial(_telemetry, start, batch))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _plain_publisher(port: int, payloads: list[bytes], window: int, ready: Queue[int], go: Any,
                     done: Queue[int]) -> None:
    """A bare paho client: every payload at QoS 1, ``window`` in flight, as fast as the broker takes them."""
    child_signals()
    acked = threading.Event()
    count = 0

    def on_publish(*_: Any) -> None:
        nonlocal count
        count += 1
        if count == len(payloads):
            acked.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(HOST, port)
    client.loop_start()
    ready.put(os.getpid())
    go.wait()
    name = topic(ROOT, DEVICE, "up/telemetry")
    for payload in payloads:
        client.publish(name, payload, qos=QOS)
    acked.wait(STALL_S * 5)
    done.put(count)
    client.disconnect()
    client.loop_stop()


class Watch:
    """Polls the hub's store (and the agent's outbox) every POLL_S while a scenario runs."""

    def __init__(self, hub: HubProcess, total: int, alive: Callable[[], None]) -> None:
        self.db = hub.db()
        self.total = total
        self.alive = alive
        self.first: float | None = None
        self.stored: float | None = None

    def stored_count(self) -> int:
        """Messages of the device in the hub's store."""
        return int(self.db.execute("SELECT COUNT(*) FROM received WHERE device = ?", (DEVICE,)).fetchone()[0])

    def until(self, done: Callable[[], bool], what: str) -> float:
        """Poll until ``done()``; note the first and the last stored message on the way; return the time."""
        seen, moved = -1, time.monotonic()
        while True:
            self.alive()
            count = self.stored_count()
            at = time.monotonic()
            if count and self.first is None:
                self.first = at
            if count >= self.total and self.stored is None:
                self.stored = at
            if done():
                return at
            if count != seen:
                seen, moved = count, at
            elif at - moved > STALL_S:
                raise BenchError(f"{what} stalled at {count} of {self.total} stored for {STALL_S:.0f} s")
            time.sleep(POLL_S)

    def check_loss(self) -> None:
        """The hub holds seq 1..total of the device exactly."""
        got = {seq for (seq,) in self.db.execute("SELECT seq FROM received WHERE device = ?", (DEVICE,))}
        expected = set(range(1, self.total + 1))
        if got != expected:
            raise BenchError(f"loss or surplus: {len(expected - got)} missing, {len(got - expected)} unexpected")


class AckCounter:
    """Counts the hub's ``down/ack`` messages to the device (a QoS 0 listener in this process)."""

    def __init__(self, stack: contextlib.ExitStack, port: int) -> None:
        self.count = 0
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ack-counter", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda client, *_: client.subscribe(topic(ROOT, DEVICE, "down/ack"), qos=0)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()
        stack.callback(self.client.loop_stop)
        stack.callback(self.client.disconnect)
        if not subscribed.wait(START_S):
            raise BenchError("the ack counter did not subscribe")

    def _on_message(self, *_: Any) -> None:
        self.count += 1


def run_plain(params: Params, payloads: list[bytes], run: int) -> RunResult:
    """The plain publisher: from the first message the hub stored to the last."""
    label = f"[plain {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        port = start_broker(stack, work / "broker").settings.port
        hub = HubProcess(stack, work / "hub", port)
        hub.wait_healthy()
        hub.wait_subscribed(port)
        ready: Queue[int] = FORK.Queue()
        done: Queue[int] = FORK.Queue()
        go = FORK.Event()
        child = start_child(stack, _plain_publisher, port, payloads, params.window, ready, go, done)
        pid = receive(ready, [child], "the publisher to connect")
        progress(f"{label} broker on {HOST}:{port}, hub healthy and subscribed; publishing {params.records:,}")
        acks = AckCounter(stack, port)
        watch = Watch(hub, params.records, hub.check)
        stack.callback(watch.db.close)
        cpu0 = cpu_seconds(pid)
        go.set()
        end = watch.until(lambda: watch.stored is not None, "the plain publisher")
        cpu = cpu_seconds(pid) - cpu0
        receive(done, [child], "the publisher's PUBACKs")
        watch.check_loss()
    assert watch.first is not None
    result = RunResult("plain", run, params.records, end - watch.first, end - watch.first, cpu, acks.count)
    progress(f"{label} zero loss; {result.msg_per_s:,.0f} msg/s, publisher CPU {cpu:.2f} s, "
             f"{acks.count:,} hub acks")
    return result


def agent_config(path: Path, port: int, outbox: Path, window: int) -> Path:
    """A device TOML with no drivers: the agent only drains its outbox."""
    path.write_text("\n".join([
        f'device = "{DEVICE}"', "config_version = 1", "", "[broker]", f'host = "{HOST}"', f"port = {port}",
        f'root = "{ROOT}"', "", "[agent]", "heartbeat_s = 30", f"max_inflight = {window}", "", "[outbox]",
        f'path = "{outbox}"', ""]))
    return path


def run_agent(params: Params, run: int) -> RunResult:
    """The agent with a full outbox: from the first message the hub stored until the outbox is empty."""
    label = f"[agent {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        outbox = work / "outbox.sqlite"
        fill_outbox(outbox, params.records, params.readings)
        port = start_broker(stack, work / "broker").settings.port
        hub = HubProcess(stack, work / "hub", port)
        hub.wait_healthy()
        hub.wait_subscribed(port)
        progress(f"{label} broker on {HOST}:{port}, hub healthy and subscribed; {params.records:,} records queued")
        acks = AckCounter(stack, port)
        log = work / "agent.log"
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "nakhon.cli", "agent", "run",
                 str(agent_config(work / "device.toml", port, outbox, params.window))],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def stop() -> None:
            if agent.poll() is None:
                agent.terminate()
                try:
                    agent.wait(20)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()

        stack.callback(stop)

        def alive() -> None:
            hub.check()
            if agent.poll() is not None:
                raise BenchError(f"the agent exited with {agent.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-2000:]}")

        box = stack.enter_context(contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)))

        def depth() -> int:
            return int(box.execute("SELECT COUNT(*) FROM records").fetchone()[0])

        watch = Watch(hub, params.records, alive)
        stack.callback(watch.db.close)
        watch.until(lambda: watch.first is not None, "the agent's first record")
        cpu0 = cpu_seconds(agent.pid)
        end = watch.until(lambda: watch.stored is not None and depth() == 0, "the agent")
        cpu = cpu_seconds(agent.pid) - cpu0
        watch.check_loss()
    assert watch.first is not None and watch.stored is not None
    result = RunResult("agent", run, params.records, end - watch.first, watch.stored - watch.first, cpu, acks.count)
    progress(f"{label} zero loss, outbox empty; {result.msg_per_s:,.0f} msg/s (all stored after "
             f"{result.stored_seconds:.2f} s, empty after {result.seconds:.2f} s), agent CPU {cpu:.2f} s, "
             f"{acks.count:,} hub acks")
    return result


def report(params: Params, results: list[RunResult]) -> tuple[str, float]:
    """The side-by-side table, the verdict and the ratio."""

    def median(scenario: str, figure: Callable[[RunResult], float]) -> float:
        return statistics.median(figure(r) for r in results if r.scenario == scenario)

    plain, agent = median("plain", lambda r: r.msg_per_s), median("agent", lambda r: r.msg_per_s)
    ratio = agent / plain
    rows = [("scenario", "messages", "seconds", "msg/s", "sender CPU s", "hub acks", "agent/plain"),
            ("plain paho publisher (hub stored all)", f"{params.records:,}",
             f"{median('plain', lambda r: r.seconds):.2f}", f"{plain:,.0f}",
             f"{median('plain', lambda r: r.cpu_seconds):.2f}", f"{median('plain', lambda r: r.hub_acks):,.0f}",
             "1.00"),
            ("agent (hub stored all, outbox empty)", f"{params.records:,}",
             f"{median('agent', lambda r: r.seconds):.2f}", f"{agent:,.0f}",
             f"{median('agent', lambda r: r.cpu_seconds):.2f}", f"{median('agent', lambda r: r.hub_acks):,.0f}",
             f"{ratio:.2f}")]
    lines = table(rows)
    lines.append(f"{'PASS' if ratio >= BAR else 'FAIL'}: the agent drains at {ratio:.0%} of the plain publisher's "
                 f"rate (bar: at least {BAR:.0%}; medians of {params.runs} runs; zero loss in every run)")
    return "\n".join(lines), ratio


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=20_000, help="records queued in the outbox (default 20000)")
    p.add_argument("--readings-per-message", type=int, default=2, help="readings in each record (default 2)")
    p.add_argument("--window", type=int, default=200,
                   help="messages in flight: the agent's max_inflight and the publisher's (default 200)")
    p.add_argument("--runs", type=int, default=3, help="runs of each scenario; medians are reported (default 3)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios in turns, print the table; exit 0 on PASS, 1 on FAIL, 2 when a run fails."""
    args = _parser().parse_args(argv)
    params = Params(args.records, args.readings_per_message, args.window, args.runs)
    if min(params.records, params.readings, params.window, params.runs) < 1:
        _parser().error("every count must be at least 1")
    progress(f"building {params.records:,} payloads ({params.readings} readings each); window {params.window}")
    payloads = build_payloads(params.records, params.readings)
    results: list[RunResult] = []

    def scenarios() -> None:
        for run in range(1, params.runs + 1):
            results.append(run_plain(params, payloads, run))
            results.append(run_agent(params, run))

    status = run_guarded(scenarios)
    if status is not None:
        return status
    text, ratio = report(params, results)
    print(text)
    if args.json:
        print(json.dumps({"params": asdict(params), "runs": [{**asdict(r), "msg_per_s": r.msg_per_s}
                                                             for r in results],
                          "ratio": ratio, "bar": BAR, "pass": ratio >= BAR}))
    return 0 if ratio >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
