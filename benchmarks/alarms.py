"""Alarm latency: simulated poles press SOS at random moments under normal telemetry; how long from the press at
the agent to the alarm on the SSE stream and to a local LINE-compatible server (bar: p99 <= 1 s).

Every pole is a real ``nakhon agent run --simulate`` with the gpio driver's SOS button, on which the driver's own
citizen simulator presses about every ``--gap`` seconds, and a simulated air-quality sensor reporting every
``--telemetry-s`` seconds. The hub runs with a rules file whose SOS rule notifies the local LINE server. A reader
on ``/api/stream`` times each raised alarm against the press time the agent stamped on the event, and clears the
alarm through the API so the pole's next press raises a new one; the LINE server times each push and finds its
alarm by the acknowledgement link in the text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from _harness import (
    HOST,
    REPO,
    BenchError,
    HubProcess,
    progress,
    run_guarded,
    start_broker,
    table,
    work_dir,
)

from hub.auth import accounts
from hub.store.sqlite import SQLiteStore

BAR_S = 1.0
LAUNCH = """
import sys
from edge.drivers import gpio
from edge.drivers._gpio_sim import Citizen
gpio._WORLDS["button"] = lambda board, config: Citizen(board.pin(config.pin), pressed_level=not config.pull_up,
                                                         mean_gap_s=float(sys.argv[2]), long_presses=0.0)
from nakhon.cli import main
sys.exit(main(["agent", "run", sys.argv[1], "--simulate"]))
"""
"""The real agent on the gpio driver's citizen simulator, pressing every ``gap`` seconds instead of 90."""


class LineSink:
    """A LINE-compatible push endpoint that times every accepted push."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.requests = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.time()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                found = re.search(r"/api/alarms/(\d+)/ack", body["messages"][0]["text"])
                sink.requests += 1
                if found:
                    sink.arrivals.setdefault(int(found.group(1)), at)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rules(directory: Path, sink: LineSink) -> Path:
    token = directory / "line.token"
    token.write_text("bench-token\n")
    token.chmod(0o600)
    path = directory / "rules.toml"
    path.write_text(
        f'[[channels]]\nid = "line"\ntype = "line"\nto = "Cbench"\ntoken_file = "{token}"\nbase_url = "{sink.url}"\n\n'
        '[[rules]]\nid = "sos"\ntype = "event"\nevents = ["sos.pressed"]\nseverity = "critical"\n'
        'title_th = "มีผู้กดปุ่ม SOS"\ntitle_en = "SOS"\nescalation = [{ after_s = 0, channels = ["line"] }]\n')
    return path


def _pole(directory: Path, device: str, broker_port: int, gap_s: float, telemetry_s: float,
          ) -> subprocess.Popen[bytes]:
    config = directory / f"{device}.toml"
    config.write_text(
        f'device = "{device}"\nnode = "air-quality-pole"\nsite = "bench"\nconfig_version = 1\n\n'
        f'[broker]\nhost = "{HOST}"\nport = {broker_port}\n\n[agent]\nheartbeat_s = 30\n\n'
        f'[outbox]\npath = "{directory / (device + ".sqlite")}"\n\n'
        '[[drivers]]\nkind = "gpio"\nname = "sos"\ndevice = "button"\npin = 17\nevent = "sos"\n'
        f'\n[[drivers]]\nkind = "sim_air_quality"\nname = "pm"\ninterval_s = {telemetry_s}\n')
    with open(directory / f"{device}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", LAUNCH, str(config), str(gap_s)], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _operator_token(data: Path) -> str:
    """An operator in the (not yet started) hub's store, and a new API token of theirs."""
    store = SQLiteStore(data / "hub.sqlite")
    store.open()
    try:
        users = accounts.Accounts(store)
        users.add_user("bench", ["operator"], secrets.token_urlsafe(24))
        return users.add_token("bench", "benchmarks/alarms.py")[1]
    finally:
        store.close()


class StreamTimer:
    """Reads ``/api/stream``: times raised alarms against their press and clears them for the next press."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.auth = {"Authorization": f"Bearer {token}"}
        self.pressed: dict[tuple[str, int], float] = {}
        self.raised: dict[int, tuple[float, float]] = {}
        """alarm id -> (press time at the agent, time on the stream)"""
        self._clear: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._clearer, daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(1)  # the reader may sit in a read until the next keepalive; it is a daemon

    def _read(self) -> None:
        last: str | None = None
        while not self._stop.is_set():
            headers = {**self.auth, "Last-Event-ID": last} if last else self.auth
            # the hub sends a keepalive every 15 s, so a read that waits 20 s only ends on a real loss
            with contextlib.suppress(httpx.HTTPError), httpx.stream(
                    "GET", f"{self.url}/api/stream", headers=headers, timeout=httpx.Timeout(5, read=20)) as r:
                fields: dict[str, str] = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line:
                        name, _, value = line.partition(": ")
                        fields[name] = value
                        continue
                    if fields.get("event") in ("event", "alarm"):
                        self._item(fields["event"], json.loads(fields["data"]), time.time())
                    last = fields.get("id", last)
                    fields = {}

    def _item(self, kind: str, data: dict[str, Any], at: float) -> None:
        if kind == "event" and data["event"] == "sos.pressed":
            self.pressed[(data["device"], data["seq"])] = data["ts"]
        elif kind == "alarm" and data["change"] == "raised":
            alarm = data["alarm"]
            press = self.pressed.get((alarm["device"], alarm["detail"]["seq"]))
            if press is not None:
                self.raised[alarm["id"]] = (press, at)
                self._clear.put(alarm["id"])

    def _clearer(self) -> None:
        with httpx.Client(timeout=10, headers=self.auth) as client:
            while not self._stop.is_set():
                try:
                    alarm_id = self._clear.get(timeout=0.5)
                except queue.Empty:
                    continue
                client.post(f"{self.url}/api/alarms/{alarm_id}/clear").raise_for_status()


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        raise BenchError(f"only {len(values)} measurement(s); run longer or press more often")
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98], max(values)


def run(args: argparse.Namespace) -> None:
    """One run: start everything, measure for ``--seconds``, print the table."""
    with contextlib.ExitStack() as stack:
        directory = work_dir(stack)
        broker = start_broker(stack, directory / "broker")
        sink = LineSink()
        stack.callback(sink.close)
        # the harness starts the hub with this environment; agents read NAKHON_* too, so it is gone before them
        os.environ["NAKHON_HUB_RULES"] = str(_rules(directory, sink))
        token = _operator_token(directory / "hub")
        try:
            hub = HubProcess(stack, directory / "hub", broker.settings.port)
        finally:
            del os.environ["NAKHON_HUB_RULES"]
        hub.wait_healthy()
        url = f"http://{HOST}:{hub.http_port}"
        progress(f"hub up; starting {args.poles} poles")
        poles = []
        for i in range(args.poles):
            process = _pole(directory, f"bench-pole-{i:04d}", broker.settings.port, args.gap, args.telemetry_s)
            stack.callback(_stop, process)
            poles.append(process)
        deadline = time.monotonic() + 60 + 2 * args.poles
        while True:
            hub.check()
            online = [d for d in httpx.get(f"{url}/api/devices", headers={"Authorization": f"Bearer {token}"},
                                           timeout=10).json() if d["state"] == "online"]
            if len(online) >= args.poles:
                break
            if time.monotonic() > deadline:
                tail = (directory / "bench-pole-0000.log").read_text(errors="replace")[-1500:]
                raise BenchError(f"only {len(online)} of {args.poles} poles came online; pole 0:\n{tail}")
            time.sleep(1)
        timer = StreamTimer(url, token)
        timer.start()
        stack.callback(timer.stop)
        progress(f"all poles online; measuring for {args.seconds:.0f} s")
        time.sleep(args.seconds)
        for process in poles:
            process.terminate()
        time.sleep(3)  # the last LINE pushes
        hub.check()
        measured = dict(timer.raised)
        sse = [at - press for press, at in measured.values()]
        line = [sink.arrivals[i] - press for i, (press, _) in measured.items() if i in sink.arrivals]
        rows = [["path", "alarms", "p50 ms", "p99 ms", "max ms", "p99 <= 1 s"]]
        result: dict[str, Any] = {"poles": args.poles, "seconds": args.seconds, "gap_s": args.gap,
                                  "telemetry_s": args.telemetry_s}
        for name, values in (("press -> SSE", sse), ("press -> LINE", line)):
            p50, p99, top = _percentiles(values)
            rows.append([name, str(len(values)), f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}", f"{top * 1000:.0f}",
                         "yes" if p99 <= BAR_S else "NO"])
            result[name] = {"count": len(values), "p50_s": p50, "p99_s": p99, "max_s": top}
        result["presses"] = len(timer.pressed)
        progress(f"{len(timer.pressed)} presses on the stream, {len(measured)} raised a new alarm "
                 "(the others came while their pole's alarm was still open)")
        print("\n".join(table(rows)))
        if args.json:
            print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--poles", type=int, default=50, help="simulated poles (default 50)")
    p.add_argument("--seconds", type=float, default=120, help="measuring time (default 120)")
    p.add_argument("--gap", type=float, default=30, help="mean seconds between presses at one pole (default 30)")
    p.add_argument("--telemetry-s", type=float, default=10, help="air-quality reading interval (default 10)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    args = p.parse_args(argv)
    return run_guarded(lambda: run(args), (BenchError, httpx.HTTPError)) or 0


if __name__ == "__main__":
    sys.exit(main())
