"""``nakhon demo``: the whole fleet on one machine, provisioned as a technician does (enrollment, mutual TLS),
stopped by Ctrl-C, continued by a second run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from hub.broker import free_port
from hub.provision import deployment, pki
from nakhon.demo import FLEET, Supervised
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.broker


def _processes_using(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


class DemoRun:
    """``nakhon demo`` on given ports, its output collected line by line from a reader thread."""

    def __init__(self, data: Path, hub_port: int, kiosk_port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "nakhon.cli", "demo", "--data", str(data),
                                      "--hub-port", str(hub_port), "--kiosk-port", str(kiosk_port)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def api(self) -> str:
        def announced() -> str | None:
            if self.proc.poll() is not None:
                pytest.fail("the demo exited:\n" + self.output())
            match = re.search(r"Hub API: (http://127\.0\.0\.1:\d+)", self.output())
            return match.group(1) if match else None

        url: str = wait_for(announced, 60, "the demo to print its API URL")
        return url

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return self.output()


def _pid_of(data: Path, *words: str) -> int:
    """The pid of the demo's process whose command line and environment mention ``data`` and every word."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            seen = [a.decode(errors="replace") for name in ("cmdline", "environ")
                    for a in Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")]
        except OSError:
            continue
        if any(str(data) in a for a in seen) and all(w in seen for w in words):
            return int(pid)
    pytest.fail(f"no process with {words} for {data}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _signed_in(api: str, data: Path) -> httpx.Client:
    """An HTTP client signed in as the demo's admin with the password the demo generated."""
    client = httpx.Client(base_url=api, timeout=10)
    password = (data / "secrets" / "admin.password").read_text().strip()
    assert client.post("/api/session", json={"name": "admin", "password": password}).status_code == 200
    return client


def assert_fleet_enrolled_over_tls(data: Path, paths: deployment.Paths, out: str,
                                   registry: dict[str, dict[str, str]]) -> None:
    """Every demo device enrolled by the technician (key made in its folder, a certificate with CN = its id from
    the deployment's issuing CA) and connected to the broker's mutual-TLS listener under that identity."""
    conf = paths.conf.read_text().splitlines()
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 "allow_anonymous false", f"crlfile {paths.crl}"):
        assert line in conf, line
    settings, _ = deployment.load(data / "deployment")
    issuing = pki.load_cert(paths.issuing_cert)
    log = paths.log.read_text(errors="replace")
    listener_of = dict(re.findall(r"New connection from (\S+) on port (\d+)\.", log))
    for node in FLEET:
        folder = data / "devices" / node.device
        assert (folder / "device.key").stat().st_mode & 0o077 == 0
        cert = pki.load_cert(folder / "device.pem")
        cert.verify_directly_issued_by(issuing)
        assert cert.subject.rfc4514_string() == f"CN={node.device},O=Nakhon demo"
        assert "tls = true" in (folder / "device.toml").read_text().splitlines()
        assert registry[node.device]["status"] == "active" and registry[node.device]["created_by"] == "technician"
        assert f"enrolled now as {node.device}" in out
        addresses = re.findall(rf"New client connected from (\S+) as {node.device} \(.*u'{node.device}'\)", log)
        assert addresses, f"{node.device} never connected"
        assert {listener_of[a] for a in addresses} == {str(settings.device_port)}, node.device


def test_a_process_that_keeps_failing_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    failing = Supervised("kk-bad-0001", ["agent", "check", str(tmp_path / "missing.toml")], tmp_path / "bad.log",
                         {"PYTHONPATH": str(ROOT)})
    failing.start()
    lines: list[str | None] = []
    now = time.monotonic()
    for delay in (1, 2, 4, 8, 16, 30, 30):
        assert failing.process is not None
        failing.process.wait(30)
        lines.append(failing.check(now))
        assert failing.check(now + delay - 0.01) is None  # not before its time
        now += delay
        lines.append(failing.check(now))
    failing.stop()
    assert lines[0] == f"kk-bad-0001 exited with status 2; starting it again in 1 s (log: {tmp_path / 'bad.log'})"
    delays = [re.findall(r"again in (\d+) s", line or "") for line in lines[0::2]]
    assert delays == [["1"], ["2"], ["4"], ["8"], ["16"], ["30"], ["30"]]
    assert lines[-1] == "kk-bad-0001 started again (restart 7)"
    assert "missing.toml" in (tmp_path / "bad.log").read_text()  # the log says why


def test_a_port_in_use_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "nakhon.cli", "demo", "--data", str(tmp_path / "demo"),
                               "--hub-port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr and "--hub-port" in done.stderr
    assert not (tmp_path / "demo" / "broker").exists()  # refused before anything started


def test_demo_runs_a_fleet_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    hub_port, kiosk_port = free_port(), free_port()
    run = DemoRun(data, hub_port, kiosk_port)
    try:
        api = run.api()
        assert api == f"http://127.0.0.1:{hub_port}"
        assert f"Kiosk screen: http://127.0.0.1:{kiosk_port}/" in run.output()
        assert httpx.get(f"{api}/api/devices", timeout=10).status_code == 401
        hub = _signed_in(api, data)

        def online() -> set[str]:
            got = {d["device"] for d in hub.get("/api/devices", timeout=10).json()
                   if d["state"] == "online" and d["received"] > 0}
            return got if len(got) == 6 else set()

        assert {"kk-aq-0001", "kk-wl-0001"} <= wait_for(online, 60, "the six devices online with data")
        wait_for(lambda: hub.get("/api/devices/kk-aq-0001/readings", params={"quantity": "pm2_5"},
                                   timeout=10).json()["count"] > 0, 60, "PM2.5 readings")
        wait_for(lambda: _answers(f"http://127.0.0.1:{kiosk_port}/"), 30, "the kiosk screen to answer")
        assert "0/0" not in run.output()

        os.kill(_pid_of(data, "hub", "serve"), signal.SIGKILL)
        wait_for(lambda: "hub exited with status -9; starting it again in" in run.output(), 30,
                 "the demo to say it restarts the hub")
        wait_for(lambda: "hub started again (restart 1)" in run.output(), 30, "the hub to be started again")
        wait_for(lambda: _answers(f"{api}/healthz"), 60, "the restarted hub to answer on the same port")
        os.kill(_pid_of(data, "agent", "run", str(data / "devices" / "kk-wl-0001" / "device.toml")), signal.SIGKILL)
        wait_for(lambda: "kk-wl-0001 started again (restart 1)" in run.output(), 30, "the agent to be restarted")
        os.kill(_pid_of(data, "-c"), signal.SIGKILL)
        wait_for(lambda: "broker exited with status -9; started it again" in run.output(), 30,
                 "the demo to start the broker again")

        def stored() -> int:
            return sum(d["received"] for d in hub.get("/api/devices", timeout=10).json())

        before = stored()
        wait_for(lambda: stored() > before + 5, 60, "the fleet's data to flow again through the restarted broker")
        first_seq = hub.get("/api/devices/kk-aq-0001", timeout=10).json()["last_seq"]
        registry = {e["device"]: e for e in hub.get("/api/provision/devices", timeout=10).json()}
    finally:
        out = run.stop()
    assert run.proc.returncode == 0, out
    assert "stopped; the next run reuses" in out
    assert f"Sign in as 'admin' with the password in {data / 'secrets' / 'admin.password'}" in out
    assert _processes_using(data) == []
    secrets_before = {p.name: p.read_text() for p in (data / "secrets").iterdir()}
    _, paths = deployment.load(data / "deployment")
    assert_fleet_enrolled_over_tls(data, paths, out, registry)
    access = json.loads(paths.dynsec.read_text())
    assert access["defaultACLAccess"]["subscribe"] is False
    assert {c["username"] for c in access["clients"]} == {"nakhon-hub", *(n.device for n in FLEET)}
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in (data / "secrets").iterdir())
    certificates = {d: (data / "devices" / d / "device.pem").read_bytes() for d in (n.device for n in FLEET)}

    run = DemoRun(data, hub_port, kiosk_port)
    try:
        api = run.api()
        hub = _signed_in(api, data)
        wait_for(lambda: (hub.get("/api/devices/kk-aq-0001", timeout=10).json().get("last_seq") or 0)
                 > first_seq, 60, "the second run to continue the seq")
        device = hub.get("/api/devices/kk-aq-0001", timeout=10).json()
        assert device["lost"] == 0
        # seqs 1..last_seq each stored once, over both runs: a resend counted as new would break the equality
        assert device["received"] == device["last_seq"]
    finally:
        out = run.stop()
    assert run.proc.returncode == 0, out
    assert {p.name: p.read_text() for p in (data / "secrets").iterdir()} == secrets_before
    # the second run enrolled nobody again: same certificates, each device said it was enrolled before
    assert {d: (data / "devices" / d / "device.pem").read_bytes() for d in certificates} == certificates
    assert out.count("enrolled before, certificate until") == len(FLEET) and "enrolled now" not in out
    assert _processes_using(data) == []
