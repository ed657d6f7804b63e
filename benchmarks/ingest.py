"""Ingest throughput: messages/s the hub stores against a bare paho subscriber, on a private Mosquitto.

Run by hand (not a test): ``.venv/bin/python benchmarks/ingest.py --help``; see ``benchmarks/README.md``.
``--hubs 2`` runs two hub processes in one share group on one store; ``--backend postgresql+victoriametrics``
stores into a throw-away PostgreSQL and VictoriaMetrics (the tests' fixtures start them from Debian's packages).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from _harness import (
    FORK,
    HOST,
    POLL_S,
    PROBE_DEVICE,
    REPO,
    ROOT,
    STALL_S,
    START_S,
    BenchError,
    HubProcess,
    LoggedProcess,
    child_signals,
    process_cpu,
    progress,
    receive,
    run_guarded,
    start_broker,
    start_child,
    table,
    work_dir,
)
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import QOS, Reading, Telemetry, now, topic

BACKENDS = ("sqlite", "postgresql+victoriametrics")
SHARE_GROUP = "bench"
BAR = 0.9
"""The issue's bar: the hub stores at least this fraction of the bare subscriber's rate (and more than Node-RED's
SQLite flow when ``--peers`` runs it)."""
PUBLISH_INFLIGHT = 1000


@dataclass(frozen=True)
class Params:
    """The workload: who publishes how much."""

    devices: int
    messages: int
    readings: int
    runs: int
    processes: int
    hubs: int = 1
    backend: str = "sqlite"

    @property
    def total(self) -> int:
        """Messages published per run."""
        return self.devices * self.messages


@dataclass(frozen=True)
class RunResult:
    """One scenario run: the consumer's rate and how fast the broker took the publishes."""

    scenario: str
    run: int
    messages: int
    readings: int
    seconds: float
    publish_seconds: float
    cpu_seconds: float
    """CPU the consumer used for the run (its processes, from the first publish until it had every message)."""

    @property
    def msg_per_s(self) -> float:
        """Messages per second over the measured span."""
        return self.messages / self.seconds

    @property
    def readings_per_s(self) -> float:
        """Readings per second over the measured span."""
        return self.readings / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        """Microseconds of the consumer's CPU per message."""
        return self.cpu_seconds / self.messages * 1e6


def device_ids(count: int) -> list[str]:
    """The simulated devices' ids."""
    return [f"bench-{i:04d}" for i in range(count)]


def build_payloads(device: str, messages: int, readings: int) -> list[bytes]:
    """Every telemetry payload of one device, seq 1..messages, serialised up front."""
    start = now()
    payloads = []
    for seq in range(1, messages + 1):
        ts = start + timedelta(milliseconds=seq)
        batch = [Reading(ts=ts, sensor="bench", quantity=f"q{i}", value=20.0 + (seq + i) % 100 / 10, unit="u")
                 for i in range(readings)]
        payloads.append(Telemetry(device=device, seq=seq, sent_at=ts, readings=batch).to_json())
    return payloads


class _Publisher:
    """One simulated device: a paho client publishing its payloads at QoS 1 and counting the PUBACKs."""

    def __init__(self, port: int, device: str, expected: int) -> None:
        self.device = device
        self.expected = expected
        self.acked = 0
        self.connected = threading.Event()
        self.done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(PUBLISH_INFLIGHT)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _on_publish(self, *_: Any) -> None:
        self.acked += 1
        if self.acked == self.expected:
            self.done.set()

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _publish_worker(port: int, payloads: dict[str, list[bytes]], ready: Queue[int], go: Event,
                    results: Queue[tuple[float, float]]) -> None:
    """Connect some devices, wait for the go, publish round-robin; report (first publish, last PUBACK)."""
    child_signals()
    pubs = [_Publisher(port, device, len(p)) for device, p in payloads.items()]
    if not all(p.connected.wait(START_S) for p in pubs):
        return
    topics = [(p.client, topic(ROOT, p.device, "up/telemetry"), payloads[p.device]) for p in pubs]
    ready.put(os.getpid())
    go.wait()
    first = time.monotonic()
    for seq in range(max(len(p) for p in payloads.values())):
        for client, name, device_payloads in topics:
            if seq < len(device_payloads):
                client.publish(name, device_payloads[seq], qos=QOS)
    for p in pubs:
        p.done.wait()
    results.put((first, time.monotonic()))
    for p in pubs:
        p.close()


def _bare_subscriber(port: int, expected: int, ready: Event, count: Any,
                     results: Queue[tuple[float, float]]) -> None:
    """The baseline: a threaded paho subscriber that only counts; reports its first and last receipt."""
    child_signals()
    subscribed = threading.Event()
    done = threading.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_message(*_: Any) -> None:
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = time.monotonic()
        if state["count"] == expected:
            state["last"] = time.monotonic()
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(f"{ROOT}/+/up/#", qos=QOS)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(HOST, port)
    client.loop_start()
    if subscribed.wait(START_S):
        ready.set()
        while not done.wait(POLL_S):
            count.value = state["count"]
        count.value = state["count"]
        results.put((state["first"], state["last"]))
    client.disconnect()
    client.loop_stop()


class Publishers:
    """The publishing processes, a few devices each, released together."""

    def __init__(self, stack: contextlib.ExitStack, port: int, payloads: dict[str, list[bytes]],
                 processes: int) -> None:
        devices = list(payloads)
        groups = [devices[i::processes] for i in range(min(processes, len(devices)))]
        self.go = FORK.Event()
        self.ready: Queue[int] = FORK.Queue()
        self.results: Queue[tuple[float, float]] = FORK.Queue()
        self.processes = [start_child(stack, _publish_worker, port, {d: payloads[d] for d in group}, self.ready,
                                      self.go, self.results) for group in groups]

    def release(self) -> None:
        """Wait until every device is connected, then start publishing."""
        for _ in self.processes:
            receive(self.ready, self.processes, "the publishers to connect")
        self.go.set()

    def span(self) -> tuple[float, float]:
        """(first publish, last PUBACK) over every process, in time.monotonic()."""
        spans = [receive(self.results, self.processes, "the publishers' PUBACKs") for _ in self.processes]
        return min(s[0] for s in spans), max(s[1] for s in spans)


COUNT_POLL_S = 0.01
"""How often a store's count is polled: the end of a stored run is known to within this (the bare subscriber
stamps its last message itself). A count of the hub's or Node-RED's ``received`` table takes about 20 µs."""


def wait_for_count(count: Callable[[], int], total: int, what: str) -> float:
    """Poll ``count`` until it reaches ``total``; return time.monotonic() of that poll."""
    seen, moved = -1, time.monotonic()
    while True:
        value = count()
        at = time.monotonic()
        if value >= total:
            return at
        if value != seen:
            seen, moved = value, at
        elif at - moved > STALL_S:
            raise BenchError(f"{what} stalled at {value} of {total} messages for {STALL_S:.0f} s")
        time.sleep(COUNT_POLL_S)


def run_baseline(params: Params, payloads: dict[str, list[bytes]], run: int) -> RunResult:
    """Bare paho subscriber: rate from its first to its last message."""
    label = f"[baseline {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        port = start_broker(stack, work / "broker").settings.port
        ready, results = FORK.Event(), FORK.Queue()
        count = FORK.Value("q", 0, lock=False)
        subscriber = start_child(stack, _bare_subscriber, port, params.total, ready, count, results)
        if not ready.wait(START_S):
            raise BenchError("the bare subscriber did not subscribe")
        publishers = Publishers(stack, port, payloads, params.processes)
        progress(f"{label} broker on {HOST}:{port}, subscriber ready, {len(publishers.processes)} publisher "
                 f"processes forked")
        cpu_before = process_cpu(subscriber.pid or 0)
        publishers.release()

        def received() -> int:
            value = int(count.value)
            if value < params.total and subscriber.exitcode is not None:
                raise BenchError(f"the bare subscriber exited with {subscriber.exitcode}")
            return value

        wait_for_count(received, params.total, "the bare subscriber")
        first, last = receive(results, [subscriber], "the bare subscriber's timings")
        cpu = process_cpu(subscriber.pid or 0) - cpu_before  # its end waits for the stack: still readable
        published = publishers.span()
    result = RunResult("baseline", run, params.total, params.total * params.readings, last - first,
                       published[1] - published[0], cpu)
    progress(f"{label} published {params.total} in {result.publish_seconds:.2f} s; received all in "
             f"{result.seconds:.2f} s: {result.msg_per_s:,.0f} msg/s")
    return result


NODE_RED_PACKAGES = ("node-red@4", "node-red-node-sqlite@1")
NODE_RED_BATCH = 500
_NODE_RED_FUNCTION = """
const rows = context.get('rows') || [];
context.set('rows', rows);
rows.push(JSON.parse(msg.payload));
const q = s => s === null || s === undefined ? 'NULL' : "'" + String(s).replace(/'/g, "''") + "'";
const flush = () => {
  const batch = rows.splice(0);
  if (!batch.length) return null;
  const readings = [];
  batch.forEach(m => (m.readings || []).forEach((r, i) => readings.push(
    '(' + [q(m.device), Number(m.seq), i, q(r.ts), q(r.sensor), q(r.quantity), Number(r.value), q(r.unit)].join(',')
    + ')')));
  let sql = 'BEGIN; INSERT OR IGNORE INTO received (device, seq) VALUES '
    + batch.map(m => '(' + q(m.device) + ',' + Number(m.seq) + ')').join(',') + ';';
  if (readings.length) sql += ' INSERT OR IGNORE INTO readings VALUES ' + readings.join(',') + ';';
  return {topic: sql + ' COMMIT;'};
};
if (rows.length >= BATCH) { clearTimeout(context.get('timer')); context.set('timer', null); return flush(); }
if (!context.get('timer')) context.set('timer', setTimeout(() => {
  context.set('timer', null); const out = flush(); if (out) node.send(out); }, 200));
return null;
"""
_NODE_RED_SCHEMA = """
CREATE TABLE received (device TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID;
CREATE TABLE readings (device TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, ts TEXT NOT NULL,
                       sensor TEXT NOT NULL, quantity TEXT NOT NULL, value, unit TEXT,
                       PRIMARY KEY (device, seq, idx)) WITHOUT ROWID;
"""


def install_node_red(folder: Path) -> Path:
    """Node-RED and its SQLite node from npm into ``folder`` (once); returns Node-RED's red.js."""
    red = folder / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError("--peers needs npm (and Node.js 18 or later) on the PATH")
        folder.mkdir(parents=True, exist_ok=True)
        progress(f"installing {' '.join(NODE_RED_PACKAGES)} from npm into {folder} (once)")
        done = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                               "--loglevel=error", *NODE_RED_PACKAGES], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0 or not red.exists():
            raise BenchError(f"npm install failed:\n{done.stderr[-2000:]}")
    return red


def node_red_flow(broker_port: int, db_path: Path) -> list[dict[str, Any]]:
    """mqtt in (QoS 1) -> a function that batches 500 messages into one SQL transaction -> sqlite (batch)."""
    function = _NODE_RED_FUNCTION.replace("BATCH", str(NODE_RED_BATCH))
    return [
        {"id": "tab", "type": "tab", "label": "bench"},
        {"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": HOST, "port": str(broker_port),
         "clientid": "bench-node-red", "autoConnect": True, "usetls": False, "protocolVersion": "4",
         "keepalive": "60", "cleansession": True},
        {"id": "in", "type": "mqtt in", "z": "tab", "topic": f"{ROOT}/+/up/telemetry", "qos": "1",
         "datatype": "utf8", "broker": "broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
         "wires": [["batch"]]},
        {"id": "batch", "type": "function", "z": "tab", "func": function, "outputs": 1, "wires": [["store"]]},
        {"id": "db", "type": "sqlitedb", "db": str(db_path), "mode": "RWC"},
        {"id": "store", "type": "sqlite", "z": "tab", "mydb": "db", "sqlquery": "batch", "wires": [[]]},
    ]


class NodeRedProcess(LoggedProcess):
    """Node-RED on a flow file, its editor and HTTP nodes off, stopped by SIGTERM (SIGKILL when it lingers)."""

    name = "Node-RED"

    def __init__(self, stack: contextlib.ExitStack, red: Path, work: Path, broker_port: int) -> None:
        self.db_path = work / "node-red.sqlite"
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_NODE_RED_SCHEMA)
        user = work / "node-red"
        user.mkdir()
        (user / "flows.json").write_text(json.dumps(node_red_flow(broker_port, self.db_path)))
        (user / "settings.js").write_text(
            "module.exports = {uiHost: '127.0.0.1', uiPort: 0, httpAdminRoot: false, httpNodeRoot: false, "
            "flowFile: 'flows.json', credentialSecret: false, logging: {console: {level: 'info'}}};\n")
        self.log = work / "node-red.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["node", str(red), "--userDir", str(user), "--settings", str(user / "settings.js")],
                cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(self.stop)


    def db(self) -> sqlite3.Connection:
        """A read-only connection to the flow's store."""
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)

    def wait_subscribed(self, broker_port: int) -> None:
        """Publish a telemetry probe until the flow has stored it (its batch flushes after 200 ms)."""
        probe = build_payloads(PROBE_DEVICE, 1, 1)[0]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=PROBE_DEVICE, protocol=mqtt.MQTTv5)
        client.connect(HOST, broker_port)
        deadline = time.monotonic() + 2 * START_S
        try:
            with contextlib.closing(self.db()) as db:
                while time.monotonic() < deadline:
                    self.check()
                    client.publish(topic(ROOT, PROBE_DEVICE, "up/telemetry"), probe, qos=QOS)
                    for _ in range(5):
                        client.loop(POLL_S)
                    if db.execute("SELECT 1 FROM received WHERE device = ?", (PROBE_DEVICE,)).fetchone():
                        return
        finally:
            client.disconnect()
        raise BenchError(f"Node-RED did not store a probe within {2 * START_S:.0f} s")


def run_node_red(params: Params, payloads: dict[str, list[bytes]], run: int, red: Path) -> RunResult:
    """Node-RED's SQLite flow: rate from the first publish until its store holds every message; zero loss."""
    label = f"[node-red {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        port = start_broker(stack, work / "broker").settings.port
        flow = NodeRedProcess(stack, red, work, port)
        flow.wait_subscribed(port)
        publishers = Publishers(stack, port, payloads, params.processes)
        progress(f"{label} broker on {HOST}:{port}, Node-RED flow subscribed, {len(publishers.processes)} "
                 f"publisher processes forked")
        db = stack.enter_context(contextlib.closing(flow.db()))

        def stored() -> int:
            flow.check()
            return int(db.execute("SELECT COUNT(*) FROM received WHERE device != ?", (PROBE_DEVICE,)).fetchone()[0])

        cpu_before = process_cpu(flow.process.pid)
        publishers.release()
        done = wait_for_count(stored, params.total, "Node-RED")
        cpu = process_cpu(flow.process.pid) - cpu_before
        first, last_ack = publishers.span()
        readings = check_loss(db, payloads, params)
    result = RunResult("node-red", run, params.total, readings, done - first, last_ack - first, cpu)
    progress(f"{label} zero loss: {params.total} messages and {readings} readings stored; "
             f"{result.msg_per_s:,.0f} msg/s")
    return result


def check_loss(db: sqlite3.Connection, payloads: dict[str, list[bytes]], params: Params) -> int:
    """Raise unless the store holds exactly the published (device, seq)s and their readings; return readings."""
    got = set(db.execute("SELECT device, seq FROM received WHERE device != ?", (PROBE_DEVICE,)))
    readings = int(db.execute("SELECT COUNT(*) FROM readings WHERE device != ?", (PROBE_DEVICE,)).fetchone()[0])
    return _compare(got, readings, payloads, params)


def _compare(got: set[tuple[str, int]], readings: int, payloads: dict[str, list[bytes]], params: Params) -> int:
    """Raise unless ``got`` is exactly the published (device, seq)s and ``readings`` their readings."""
    expected = {(device, seq) for device in payloads for seq in range(1, params.messages + 1)}
    if got != expected or readings != params.total * params.readings:
        raise BenchError(f"loss or surplus: {len(expected - got)} messages missing, {len(got - expected)} "
                         f"unexpected, {readings} readings instead of {params.total * params.readings}")
    return readings


@dataclass(frozen=True)
class Stores:
    """Where one run's hubs store, what ``hub serve`` is told of it, and how the benchmark reads it back."""

    flags: list[str]
    received: Callable[[], int]
    """Messages stored (rows of ``received``), polled while the run is timed."""
    check: Callable[[dict[str, list[bytes]], Params], int]
    """The zero-loss check after the run; returns the readings stored."""


def sqlite_stores(stack: contextlib.ExitStack, data: Path) -> Stores:
    """The embedded store: ``hub.sqlite`` in the (shared) data directory, read with a read-only connection."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data / "hub.sqlite"
    conn: list[sqlite3.Connection] = []

    def db() -> sqlite3.Connection:
        if not conn:
            conn.append(stack.enter_context(contextlib.closing(
                sqlite3.connect(f"file:{path}?mode=ro", uri=True))))
        return conn[0]

    return Stores([], lambda: int(db().execute("SELECT COUNT(*) FROM received").fetchone()[0]),
                  lambda payloads, params: check_loss(db(), payloads, params))


def production_stores(stack: contextlib.ExitStack, work: Path) -> Stores:
    """A throw-away PostgreSQL (records) and VictoriaMetrics (readings), started by the tests' fixture code."""
    sys.path.insert(0, str(REPO))  # the repository's tests package, not a namespace package of the same name
    from tests.fixtures.postgres import PostgresServer
    from tests.fixtures.victoria import Victoria, victoria_binary

    usage = subprocess.run([sys.executable, "-m", "nakhon.cli", "hub", "serve", "--help"], capture_output=True,
                           text=True, check=False, cwd=REPO).stdout
    if "--records" not in usage or "--timeseries" not in usage:
        raise BenchError("this hub's `hub serve` takes no --records/--timeseries yet: it cannot run on "
                         "PostgreSQL and VictoriaMetrics")
    server = PostgresServer()
    stack.callback(server.stop)
    server.start()
    name = server.create_database()
    vm = Victoria(victoria_binary(), work / "victoria")
    stack.callback(vm.stop)
    vm.start()
    db = stack.enter_context(psycopg.connect(server.conninfo(name), autocommit=True))

    def received() -> int:
        row = db.execute("SELECT COUNT(*) FROM received").fetchone()
        return int(row[0]) if row else 0

    def check(payloads: dict[str, list[bytes]], params: Params) -> int:
        got = {(str(d), int(s)) for d, s in db.execute("SELECT device, seq FROM received WHERE device != %s",
                                                       (PROBE_DEVICE,))}
        return _compare(got, _vm_readings(vm.url), payloads, params)

    return Stores(["--records", server.url(name), "--timeseries", vm.timeseries_url], received, check)


def _vm_readings(url: str) -> int:
    """Samples of ``reading_value`` VictoriaMetrics holds for the benchmark's devices (its raw export)."""
    total = 0
    with httpx.stream("POST", f"{url}/api/v1/export", data={"match[]": "reading_value"}, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                series = json.loads(line)
                if series["metric"].get("device") != PROBE_DEVICE:
                    total += len(series["values"])
    return total


def _wait_logged(hub: HubProcess, text: str) -> None:
    """Wait until the hub's log says ``text`` (its subscription was sent)."""
    deadline = time.monotonic() + START_S
    while text not in hub.log.read_text(errors="replace"):
        hub.check()
        if time.monotonic() > deadline:
            raise BenchError(f"the hub did not log {text!r} within {START_S:.0f} s")
        time.sleep(POLL_S)


def _wait_probe(port: int, stores: Stores) -> int:
    """Publish probe telemetry until the store holds some (a subscription is in place); returns how many the
    store holds once the probes stop."""
    probes = build_payloads(PROBE_DEVICE, 1000, 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=PROBE_DEVICE, protocol=mqtt.MQTTv5)
    client.connect(HOST, port)
    client.loop_start()
    try:
        for payload in probes:
            client.publish(topic(ROOT, PROBE_DEVICE, "up/telemetry"), payload, qos=QOS).wait_for_publish(START_S)
            time.sleep(POLL_S)
            if stores.received():
                break
        else:
            raise BenchError("the hub stored no probe")
    finally:
        client.loop_stop()
        client.disconnect()
    settled, seen = time.monotonic(), stores.received()
    while time.monotonic() - settled < 1.0:  # the probes still in flight land before the clock starts
        time.sleep(POLL_S)
        now_seen = stores.received()
        if now_seen != seen:
            settled, seen = time.monotonic(), now_seen
    return seen


STORES = {"sqlite": lambda stack, work: sqlite_stores(stack, work / "hub"),
          "postgresql+victoriametrics": production_stores}


def run_hub(params: Params, payloads: dict[str, list[bytes]], run: int) -> RunResult:
    """The hubs: rate from the first publish until the store holds every message, then check for loss."""
    label = f"[hub x{params.hubs} {params.backend} {run}/{params.runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        port = start_broker(stack, work / "broker").settings.port
        stores = STORES[params.backend](stack, work)
        share = ["--share", SHARE_GROUP] if params.hubs > 1 else []
        hubs = [HubProcess(stack, work / "hub", port,
                           [*stores.flags, *share, "--client-id", f"bench-hub-{i}"], f"hub-{i}.log")
                for i in range(params.hubs)]
        for hub in hubs:
            hub.wait_healthy()
            _wait_logged(hub, "subscribed")
        probes = _wait_probe(port, stores)
        publishers = Publishers(stack, port, payloads, params.processes)
        progress(f"{label} broker on {HOST}:{port}, {len(hubs)} hub(s) healthy and subscribed, "
                 f"{len(publishers.processes)} publisher processes forked")

        def stored() -> int:
            for hub in hubs:
                hub.check()
            return stores.received() - probes

        cpu_before = sum(process_cpu(hub.process.pid) for hub in hubs)
        publishers.release()
        done = wait_for_count(stored, params.total, "the hub")
        cpu = sum(process_cpu(hub.process.pid) for hub in hubs) - cpu_before
        first, last_ack = publishers.span()
        progress(f"{label} published {params.total} in {last_ack - first:.2f} s; stored all in "
                 f"{done - first:.2f} s; checking for loss")
        readings = stores.check(payloads, params)
    result = RunResult("hub", run, params.total, readings, done - first, last_ack - first, cpu)
    progress(f"{label} zero loss: {params.total} messages and {readings} readings stored; "
             f"{result.msg_per_s:,.0f} msg/s")
    return result


@dataclass(frozen=True)
class Summary:
    """Medians per scenario and the verdict against the bar."""

    baseline_msg_per_s: float
    baseline_readings_per_s: float
    hub_msg_per_s: float
    hub_readings_per_s: float
    baseline_cpu_us: float
    """The consumer's CPU per message (µs): the bare subscriber's process, the hub's processes, Node-RED's."""
    hub_cpu_us: float
    node_red_msg_per_s: float | None = None
    node_red_readings_per_s: float | None = None
    node_red_cpu_us: float | None = None

    @property
    def ratio(self) -> float:
        """Hub's stored rate over the bare subscriber's received rate."""
        return self.hub_msg_per_s / self.baseline_msg_per_s

    @property
    def passed(self) -> bool:
        """Whether the hub meets the issue's bar (and stores faster than Node-RED, when it ran)."""
        return self.ratio >= BAR and (self.node_red_msg_per_s is None or self.hub_msg_per_s > self.node_red_msg_per_s)


WRITER_BATCH = 1000
"""Messages per batch the in-process writer scenario hands the writer (what it takes from a backlog is up to 5,000)."""


def writer_cpu(params: Params, payloads: dict[str, list[bytes]]) -> float:
    """Microseconds of CPU per message of the hub's writer alone (``--writer``): the payloads, as the MQTT child
    hands them over, fed in batches straight into the writer's ``Ingest._process`` of a hub built and settled as
    ``hub serve`` does it; no broker, no publishers, so the machine's load moves the figure far less."""
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, build, settle_heap

    at = time.time()
    received = [(topic(ROOT, device, "up/telemetry"), ps[i], at) for i in range(params.messages)
                for device, ps in payloads.items()]
    with contextlib.ExitStack() as stack:
        _, store, ingest = build(HubSettings(data=work_dir(stack), ingest=IngestSettings(port=1)))
        store.open()
        stack.callback(store.close)
        settle_heap()
        start = time.process_time()
        for i in range(0, len(received), WRITER_BATCH):
            ingest._process(received[i:i + WRITER_BATCH])
        spent = time.process_time() - start
        stored = store.read(lambda db: db.execute("SELECT count(*) FROM readings").fetchone()[0])
    if stored != params.total * params.readings:
        raise BenchError(f"the writer stored {stored} readings of {params.total * params.readings}")
    return spent / params.total * 1e6


def summarise(results: list[RunResult]) -> Summary:
    """Medians of each scenario's runs."""

    def median(scenario: str, rate: Callable[[RunResult], float]) -> float | None:
        rates = [rate(r) for r in results if r.scenario == scenario]
        return statistics.median(rates) if rates else None

    def required(value: float | None) -> float:
        assert value is not None, "every run has a baseline and a hub scenario"
        return value

    return Summary(required(median("baseline", lambda r: r.msg_per_s)),
                   required(median("baseline", lambda r: r.readings_per_s)),
                   required(median("hub", lambda r: r.msg_per_s)), required(median("hub", lambda r: r.readings_per_s)),
                   required(median("baseline", lambda r: r.cpu_us_per_message)),
                   required(median("hub", lambda r: r.cpu_us_per_message)),
                   median("node-red", lambda r: r.msg_per_s), median("node-red", lambda r: r.readings_per_s),
                   median("node-red", lambda r: r.cpu_us_per_message))


def report(params: Params, summary: Summary) -> str:
    """The side-by-side table and the verdict."""
    rows = [("scenario", "messages", "msg/s", "readings/s", "hub/baseline", "CPU µs/msg"),
            ("baseline (bare paho, received)", f"{params.total:,}", f"{summary.baseline_msg_per_s:,.0f}",
             f"{summary.baseline_readings_per_s:,.0f}", "1.00", f"{summary.baseline_cpu_us:.0f}"),
            (f"hub x{params.hubs}, {params.backend} (stored, zero loss)", f"{params.total:,}",
             f"{summary.hub_msg_per_s:,.0f}",
             f"{summary.hub_readings_per_s:,.0f}", f"{summary.ratio:.2f}", f"{summary.hub_cpu_us:.0f}")]
    red, red_readings = summary.node_red_msg_per_s, summary.node_red_readings_per_s
    if red is not None and red_readings is not None:
        rows.append(("node-red (SQLite flow, zero loss)", f"{params.total:,}", f"{red:,.0f}", f"{red_readings:,.0f}",
                     f"{red / summary.baseline_msg_per_s:.2f}", f"{summary.node_red_cpu_us or 0:.0f}"))
    lines = table(rows)
    verdict = "PASS" if summary.passed else "FAIL"
    than = "" if red is None else f", {summary.hub_msg_per_s / red:.2f}x Node-RED's"
    lines.append(f"{verdict}: the hub stores {summary.ratio:.0%} of the bare-subscriber rate{than} "
                 f"(bar: at least {BAR:.0%}{'' if red is None else ' and more than Node-RED'}; medians of "
                 f"{params.runs} runs)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    p.add_argument("--messages", type=int, default=5000, help="telemetry messages per device (default 5000)")
    p.add_argument("--readings-per-message", type=int, default=3, help="readings in each message (default 3)")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of each scenario; medians are reported (default 3)")
    p.add_argument("--processes", type=int, default=4,
                   help="publisher processes, the devices split among them (default 4)")
    p.add_argument("--peers", action="store_true",
                   help="also run Node-RED's SQLite flow (installed from npm into --peers-dir the first time)")
    p.add_argument("--peers-dir", type=Path, default=Path.home() / ".cache" / "nakhon-bench" / "node-red",
                   help="where --peers installs Node-RED (default ~/.cache/nakhon-bench/node-red)")
    p.add_argument("--hubs", type=int, choices=(1, 2), default=1,
                   help=f"hub processes, in one share group ({SHARE_GROUP}) on one store (default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="sqlite",
                   help="where the hubs store: the embedded SQLite file, or a throw-away PostgreSQL for records "
                        "and VictoriaMetrics for readings (default sqlite)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    p.add_argument("--writer", action="store_true",
                   help="only time the hub's writer in this process (CPU per message, no broker), then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, print the table; exit 0 on PASS, 1 on FAIL, 2 when a run fails."""
    args = _parser().parse_args(argv)
    params = Params(args.devices, args.messages, args.readings_per_message, args.runs, args.processes, args.hubs,
                    args.backend)
    if min(params.devices, params.messages, params.readings, params.runs, params.processes) < 1:
        _parser().error("every count must be at least 1")
    progress(f"building {params.total:,} payloads ({params.devices} devices x {params.messages} messages x "
             f"{params.readings} readings)")
    payloads = {d: build_payloads(d, params.messages, params.readings) for d in device_ids(params.devices)}
    size = sum(len(p) for ps in payloads.values() for p in ps) / params.total
    progress(f"built; {size:.0f} bytes per message on average")
    if args.writer:
        spent: list[float] = []
        status = run_guarded(lambda: spent.extend(writer_cpu(params, payloads) for _ in range(params.runs)))
        if status is not None:
            return status
        print(f"writer: {statistics.median(spent):.1f} µs of CPU per message (median of {params.runs} runs: "
              f"{', '.join(f'{s:.1f}' for s in spent)}), zero loss")
        return 0
    results: list[RunResult] = []

    def scenarios() -> None:
        red = install_node_red(args.peers_dir) if args.peers else None
        for run in range(1, params.runs + 1):
            results.append(run_baseline(params, payloads, run))
            results.append(run_hub(params, payloads, run))
            if red is not None:
                results.append(run_node_red(params, payloads, run, red))

    status = run_guarded(scenarios)
    if status is not None:
        return status
    summary = summarise(results)
    print(report(params, summary))
    if args.json:
        runs = [{**asdict(r), "msg_per_s": r.msg_per_s, "readings_per_s": r.readings_per_s} for r in results]
        workload = {**asdict(params), "total": params.total, "bytes_per_message": round(size)}
        print(json.dumps({"params": workload, "runs": runs, "median": asdict(summary),
                          "ratio": summary.ratio, "bar": BAR, "pass": summary.passed}))
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
