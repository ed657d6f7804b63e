"""What the benchmarks share: a private Mosquitto, the hub as a subprocess, forked children and their clean-up."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.context import ForkProcess
from multiprocessing.queues import Queue
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import QOS, DeviceState, Status, now, topic
from hub.broker import BrokerSettings, Mosquitto, free_port

HOST = "127.0.0.1"
ROOT = "nakhon"
POLL_S = 0.1
STALL_S = 60.0
"""How long a benchmark waits for progress (a child's report, a count that moves) before it gives up."""
START_S = 30.0
PROBE_DEVICE = "bench-probe"
REPO = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")


class BenchError(Exception):
    """A run could not complete (a process died or stalled, the broker or the hub did not start, a loss)."""


def progress(line: str) -> None:
    """One progress line per phase, on stderr so that stdout holds only the results."""
    print(line, file=sys.stderr, flush=True)


def child_signals() -> None:
    """Forked children leave Ctrl-C to the parent, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def terminate(process: ForkProcess) -> None:
    """SIGTERM a child, SIGKILL it if it lingers."""
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
    process.join()


def receive(source: Queue[Any], children: list[ForkProcess], what: str) -> Any:
    """The next item from a child, or BenchError when a child fails or nothing comes for STALL_S."""
    deadline = time.monotonic() + STALL_S
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            return source.get(timeout=POLL_S)
        failed = [c.exitcode for c in children if c.exitcode not in (None, 0)]
        if failed:
            raise BenchError(f"a child process exited with {failed[0]} while waiting for {what}")
    raise BenchError(f"timed out after {STALL_S:.0f} s waiting for {what}")


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) used so far by a process and its descendants still running, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        for task in tasks:
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return total


def start_child(stack: contextlib.ExitStack, target: Callable[..., None], *args: Any) -> ForkProcess:
    """Fork a child that the stack terminates on exit."""
    process = FORK.Process(target=target, args=args, daemon=True)
    process.start()
    stack.callback(terminate, process)
    return process


def work_dir(stack: contextlib.ExitStack) -> Path:
    """A temporary directory for one run, removed when the stack exits."""
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nakhon-bench-")))


def start_broker(stack: contextlib.ExitStack, directory: Path) -> Mosquitto:
    """A private anonymous Mosquitto on 127.0.0.1 that queues everything, stopped when the stack exits."""
    broker = Mosquitto(BrokerSettings(directory=directory, port=free_port(HOST), host=HOST, root=ROOT,
                                      accounts=None, max_queued_messages=1_000_000,
                                      autosave_interval_s=86_400))
    stack.callback(broker.stop)
    broker.start()
    return broker


class LoggedProcess:
    """A benchmark's child process with its log file: stopped gracefully, the end of its log shown if it dies."""

    name = "the process"
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop gracefully, kill after 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check(self) -> None:
        """Raise with the end of the log if the process has exited."""
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


class HubProcess(LoggedProcess):
    """``nakhon hub serve`` as a subprocess, stopped by SIGTERM (SIGKILL when it lingers)."""

    name = "the hub"

    def __init__(self, stack: contextlib.ExitStack, data: Path, broker_port: int, extra: Sequence[str] = (),
                 log_name: str = "hub.log") -> None:
        self.data = data
        self.log = data.parent / log_name
        self.http_port = free_port(HOST)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nakhon.cli", "hub", "serve", "--data", str(data),
                 "--broker-host", HOST, "--broker-port", str(broker_port),
                 "--http-host", HOST, "--http-port", str(self.http_port), "--root", ROOT, *extra],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        stack.callback(self.stop)

    def wait_healthy(self) -> None:
        """Wait for GET /healthz to answer 200 (store open, broker connected)."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            self.check()
            url = f"http://{HOST}:{self.http_port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"the hub was not healthy within {START_S:.0f} s")

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the hub's store."""
        return sqlite3.connect(f"file:{self.data / 'hub.sqlite'}?mode=ro", uri=True)

    def wait_subscribed(self, broker_port: int) -> None:
        """Publish a status probe until the hub has stored it: its subscription is then in place."""
        probe = Status(device=PROBE_DEVICE, state=DeviceState.ONLINE, at=now()).to_json()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=PROBE_DEVICE, protocol=mqtt.MQTTv5)
        client.connect(HOST, broker_port)
        deadline = time.monotonic() + START_S
        try:
            with contextlib.closing(self.db()) as db:
                while time.monotonic() < deadline:
                    self.check()
                    client.publish(topic(ROOT, PROBE_DEVICE, "up/status"), probe, qos=QOS)
                    for _ in range(4):
                        client.loop(POLL_S)
                    if db.execute("SELECT 1 FROM devices WHERE device = ?", (PROBE_DEVICE,)).fetchone():
                        return
        finally:
            client.disconnect()
        raise BenchError(f"the hub did not store a probe within {START_S:.0f} s")


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [f"{row[0]:<{widths[0]}}  "
            + "  ".join(f"{cell:>{width}}" for cell, width in zip(row[1:], widths[1:], strict=True))
            for row in rows]


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that every started process is cleaned up, as on Ctrl-C."""

    def handler(signum: int, _: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(work: Callable[[], None], errors: tuple[type[Exception], ...] = (BenchError,)) -> int | None:
    """Run the scenarios with SIGTERM unwinding; None when done, else 2 on ``errors`` or 130 on Ctrl-C."""
    try:
        with _sigterm_unwinds():
            work()
    except errors as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    return None
