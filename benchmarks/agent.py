"""Agent footprint: CPU-seconds per second and RSS of one agent at a steady rate, next to a bare aiomqtt publisher.

Run by hand (not a test): ``.venv/bin/python benchmarks/agent.py --help``; see ``benchmarks/README.md``.
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
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _harness import (
    HOST,
    REPO,
    ROOT,
    START_S,
    BenchError,
    HubProcess,
    progress,
    run_guarded,
    start_broker,
    table,
    work_dir,
)

from edge.agents.outbox import snapshot

CPU_BAR = 0.01
"""The issue's bar: at most this many CPU-seconds per second for the agent."""
RSS_BAR_MB = 40.0
AGENT = "bench-agent"
COMPARED = "bench-agent-compared"
"""The device id of the ``--compare`` tree's agent."""
BARE = "bench-bare"
COMPARED_SCENARIO = "agent (--compare)"
WARMUP_S = 5.0

BARE_PUBLISHER = """
import asyncio, json, sys, time
from datetime import datetime, timezone

import aiomqtt

async def main(port, interval):
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        seq, next_at = 0, time.monotonic()
        while True:
            seq += 1
            ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            readings = [{"ts": ts, "sensor": "pm", "quantity": q, "value": v, "unit": "ug/m3", "clock": "ntp"}
                        for q, v in (("pm2_5", 31.5), ("pm10", 48.0))]
            message = {"v": 1, "device": "bench-bare", "seq": seq, "sent_at": ts, "readings": readings}
            payload = json.dumps(message, separators=(",", ":"))
            await client.publish("nakhon/bench-bare/up/telemetry", payload, qos=1)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""
"""The baseline: aiomqtt publishing the same telemetry at the same rate, QoS 1, built with json.dumps."""


@dataclass(frozen=True)
class Sample:
    """One process over the measured span."""

    scenario: str
    run: int
    seconds: float
    cpu_s_per_s: float
    rss_mb: float
    """The highest VmRSS seen during the span."""
    messages: int
    """Messages the hub stored from the process during the span."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def agent_config(path: Path, port: int, interval: float, device: str = AGENT) -> Path:
    """A device TOML: one simulated air-quality sensor (two readings a message) every ``interval`` seconds, its
    outbox ``DEVICE-outbox.sqlite`` beside the file."""
    path.write_text("\n".join([
        f'device = "{device}"', "config_version = 1", "", "[broker]", f'host = "{HOST}"', f"port = {port}",
        f'root = "{ROOT}"', "", "[outbox]", f'path = "{outbox_of(path.parent, device)}"', "", "[[drivers]]",
        'kind = "sim_air_quality"', 'name = "pm"', f"interval_s = {interval}", "seed = 7", ""]))
    return path


def outbox_of(folder: Path, device: str) -> Path:
    """Where :func:`agent_config` puts the outbox of ``device`` whose config is in ``folder``."""
    return folder / f"{device}-outbox.sqlite"


PYCACHE = Path(tempfile.gettempdir()) / f"nakhon-bench-pycache-{sys.implementation.cache_tag}"
"""Bytecode at -OO for the agent (``PYTHONPYCACHEPREFIX``), as ``provisioning/install-agent.sh`` compiles it."""
SKIPPED = r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)/"
"""What the installer leaves out of that bytecode (``compileall -x``)."""


@dataclass(frozen=True)
class Setup:
    """How the measured processes run: their environments and the agent's interpreter flags."""

    bare_env: dict[str, str] | None
    agent_env: dict[str, str] | None
    agent_flags: tuple[str, ...] = ()
    compared: Path | None = None
    """Another checkout whose agent runs beside this tree's (``--compare``)."""


def installed(source: bool, plain: bool, compared: Path | None = None) -> Setup:
    """The processes as on a device: the agent with ``-OO`` from bytecode compiled at that level into
    :data:`PYCACHE` for the standard library, the venv and the project (as the installer does for its systemd
    unit); with ``plain``, without ``-OO``, the project byte-compiled in the tree (``compileall``, as pip leaves
    it); with ``source``, no bytecode of ``edge`` and ``nakhon`` (their ``__pycache__`` folders are removed),
    no ``-OO``, and the session's environment as it is (with ``PYTHONDONTWRITEBYTECODE`` the agent then
    compiles them at every start). A ``compared`` checkout is prepared the same way."""
    trees = [REPO, *([compared] if compared is not None else [])]
    if source:
        for tree in trees:
            for package in ("edge", "nakhon"):
                for cache in sorted((tree / package).rglob("__pycache__")):
                    shutil.rmtree(cache)
        return Setup(None, None, compared=compared)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "edge", "nakhon"], cwd=tree, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    if plain:
        return Setup(env, env, compared=compared)
    optimized = {**env, "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    paths = sysconfig.get_paths()
    progress(f"bytecode at -OO into {PYCACHE} (the first time takes a minute)")
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-o", "2", "-x", SKIPPED,
                        paths["stdlib"], paths["purelib"], paths["platlib"], "edge", "nakhon"], cwd=tree,
                       env=optimized, check=True, stdout=subprocess.DEVNULL)
    return Setup(env, optimized, ("-OO",), compared)


def spawn(stack: contextlib.ExitStack, argv: list[str], log: Path,
          env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    """A subprocess in its own session, stopped by SIGTERM (SIGKILL when it lingers) when the stack exits."""
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    stack.callback(stop)
    return process


def stored(db: sqlite3.Connection, device: str) -> int:
    """Messages of ``device`` in the hub's store."""
    return int(db.execute("SELECT COUNT(*) FROM received WHERE device = ?", (device,)).fetchone()[0])


def run_once(duration: float, interval: float, run: int, runs: int, setup: Setup) -> list[Sample]:
    """The agent and the bare publisher side by side on one hub, measured over the same ``duration``."""
    label = f"[run {run}/{runs}]"
    with contextlib.ExitStack() as stack:
        work = work_dir(stack)
        port = start_broker(stack, work / "broker").settings.port
        hub = HubProcess(stack, work / "hub", port)
        hub.wait_healthy()
        hub.wait_subscribed(port)
        def agent_argv(device: str) -> list[str]:
            config = agent_config(work / f"{device}.toml", port, interval, device)
            return [sys.executable, *setup.agent_flags, "-m", "nakhon.cli", "agent", "run", str(config)]

        agent = spawn(stack, agent_argv(AGENT), work / "agent.log", setup.agent_env)
        bare = spawn(stack, [sys.executable, "-c", BARE_PUBLISHER, str(port), str(interval)], work / "bare.log",
                     setup.bare_env)
        processes = {"agent": (agent, AGENT, work / "agent.log"), "bare aiomqtt": (bare, BARE, work / "bare.log")}
        if setup.compared is not None:  # the other tree's code first on its path, its own cwd
            env = {**(setup.agent_env if setup.agent_env is not None else os.environ),
                   "PYTHONPATH": str(setup.compared)}
            other = spawn(stack, agent_argv(COMPARED), work / "compared.log", env, cwd=setup.compared)
            processes[COMPARED_SCENARIO] = (other, COMPARED, work / "compared.log")
        db = stack.enter_context(contextlib.closing(hub.db()))

        def alive() -> None:
            hub.check()
            for name, (process, _, log) in processes.items():
                if process.poll() is not None:
                    raise BenchError(f"the {name} exited with {process.returncode}:\n"
                                     f"{log.read_text(errors='replace')[-2000:]}")

        deadline = time.monotonic() + START_S
        while not all(stored(db, device) for _, device, _ in processes.values()):
            alive()
            if time.monotonic() > deadline:
                raise BenchError(f"no telemetry reached the hub within {START_S:.0f} s")
            time.sleep(0.1)
        progress(f"{label} broker on {HOST}:{port}, hub, agent and bare publisher running; warming up "
                 f"{WARMUP_S:.0f} s, then measuring {duration:.0f} s")
        time.sleep(WARMUP_S)
        start = time.monotonic()
        cpu0 = {name: cpu_seconds(p.pid) for name, (p, _, _) in processes.items()}
        count0 = {name: stored(db, device) for name, (_, device, _) in processes.items()}
        peak = {name: 0.0 for name in processes}
        while time.monotonic() - start < duration:
            alive()
            for name, (p, _, _) in processes.items():
                peak[name] = max(peak[name], rss_mb(p.pid))
            time.sleep(1.0)
        seconds = time.monotonic() - start
        samples = [Sample(name, run, seconds, (cpu_seconds(p.pid) - cpu0[name]) / seconds, peak[name],
                          stored(db, device) - count0[name]) for name, (p, device, _) in processes.items()]
        for name, (process, device, _) in processes.items():
            if name != "bare aiomqtt":
                process.terminate()
                process.wait(20)
                check_agent_loss(db, outbox_of(work, device), device)
    for s in samples:
        progress(f"{label} {s.scenario}: {s.cpu_s_per_s:.4f} CPU-s/s, peak RSS {s.rss_mb:.1f} MB, "
                 f"{s.messages / s.seconds:.1f} msg/s stored")
    return samples


def check_agent_loss(db: sqlite3.Connection, outbox: Path, device: str = AGENT) -> None:
    """Every seq the agent ``device`` handed out is in the hub's store or still in its outbox."""
    box = snapshot(outbox)
    waiting, last = set(box.waiting), box.last_seq
    got = {seq for (seq,) in db.execute("SELECT seq FROM received WHERE device = ?", (device,))}
    missing = set(range(1, last + 1)) - got - waiting
    if missing or not got <= set(range(1, last + 1)):
        raise BenchError(f"the agent {device} lost {len(missing)} of {last} messages")


def report(samples: list[Sample], runs: int) -> tuple[str, bool]:
    """The side-by-side table of medians and the verdict."""

    def median(scenario: str, figure: str) -> float:
        return float(statistics.median(getattr(s, figure) for s in samples if s.scenario == scenario))

    rows = [("process", "CPU-s/s", "peak RSS (MB)", "msg/s stored", "CPU vs bare")]
    bare_cpu = median("bare aiomqtt", "cpu_s_per_s")
    for scenario in ("bare aiomqtt", "agent", COMPARED_SCENARIO):
        if not any(s.scenario == scenario for s in samples):
            continue
        rate = statistics.median(s.messages / s.seconds for s in samples if s.scenario == scenario)
        rows.append((scenario, f"{median(scenario, 'cpu_s_per_s'):.4f}", f"{median(scenario, 'rss_mb'):.1f}",
                     f"{rate:.1f}", f"{median(scenario, 'cpu_s_per_s') / bare_cpu:.2f}x"))
    cpu, rss = median("agent", "cpu_s_per_s"), median("agent", "rss_mb")
    passed = cpu <= CPU_BAR and rss <= RSS_BAR_MB
    lines = table(rows)
    lines.append(f"{'PASS' if passed else 'FAIL'}: the agent uses {cpu:.4f} CPU-s/s (bar {CPU_BAR}) and "
                 f"{rss:.1f} MB RSS (bar {RSS_BAR_MB:.0f}); medians of {runs} runs; no loss")
    return "\n".join(lines), passed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=120.0, help="seconds measured per run (default 120)")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second, two readings each (default 10)")
    p.add_argument("--runs", type=int, default=1, help="runs; medians are reported (default 1)")
    p.add_argument("--source", action="store_true",
                   help="remove the bytecode of edge/ and nakhon/ first: with PYTHONDONTWRITEBYTECODE set, the agent "
                        "compiles them at every start (more RSS than on a device, where pip compiled them); no -OO")
    p.add_argument("--plain", action="store_true",
                   help="run the agent without -OO and its bytecode (as before the systemd unit took -OO)")
    p.add_argument("--compare", type=Path, metavar="TREE",
                   help="also run the agent of another checkout (e.g. a git worktree of main) side by side, on the "
                        "same hub and schedule; reported as its own row, the verdict stays this tree's")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the agent and the bare publisher side by side; exit 0 on PASS, 1 on FAIL, 2 when a run fails."""
    args = _parser().parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.runs < 1:
        _parser().error("--duration and --rate must be positive, --runs at least 1")
    compared = args.compare.resolve() if args.compare is not None else None
    if compared is not None and not (compared / "nakhon" / "cli.py").is_file():
        _parser().error(f"--compare {args.compare}: not a checkout of this project (no nakhon/cli.py)")
    samples: list[Sample] = []

    def runs() -> None:
        setup = installed(args.source, args.plain, compared)
        for run in range(1, args.runs + 1):
            samples.extend(run_once(args.duration, 1.0 / args.rate, run, args.runs, setup))

    status = run_guarded(runs)
    if status is not None:
        return status
    text, passed = report(samples, args.runs)
    print(text)
    if args.json:
        print(json.dumps({"params": {"duration_s": args.duration, "rate": args.rate, "runs": args.runs,
                                     "source": args.source, "plain": args.plain,
                                     "compare": str(compared) if compared is not None else None},
                          "samples": [asdict(s) for s in samples], "cpu_bar": CPU_BAR, "rss_bar_mb": RSS_BAR_MB,
                          "pass": passed}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
