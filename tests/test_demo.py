"""``nakhon demo``: the whole fleet on one machine, stopped by Ctrl-C, continued by a second run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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


def _run_demo(data: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "nakhon.cli", "demo", "--data", str(data)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"Hub API: (http://127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1), lines
    proc.kill()
    pytest.fail("the demo printed no API URL:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def _signed_in(api: str, data: Path) -> httpx.Client:
    """An HTTP client signed in as the demo's admin with the password the demo generated."""
    client = httpx.Client(base_url=api, timeout=10)
    password = (data / "secrets" / "admin.password").read_text().strip()
    assert client.post("/api/session", json={"name": "admin", "password": password}).status_code == 200
    return client


def test_demo_runs_a_fleet_stops_cleanly_and_reuses_its_data(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc, api, lines = _run_demo(data)
    try:
        assert httpx.get(f"{api}/api/devices", timeout=10).status_code == 401
        hub = _signed_in(api, data)

        def online() -> set[str]:
            got = {d["device"] for d in hub.get("/api/devices", timeout=10).json()
                   if d["state"] == "online" and d["received"] > 0}
            return got if len(got) == 6 else set()

        assert {"kk-aq-0001", "kk-wl-0001"} <= wait_for(online, 60, "the six devices online with data")
        wait_for(lambda: hub.get("/api/devices/kk-aq-0001/readings", params={"quantity": "pm2_5"},
                                 timeout=10).json()["count"] > 0, 60, "PM2.5 readings")
        first_seq = hub.get("/api/devices/kk-aq-0001", timeout=10).json()["last_seq"]
        assert "0/0" not in "".join(lines)
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "stopped; the next run reuses" in out
    assert f"Sign in as 'admin' with the password in {data / 'secrets' / 'admin.password'}" in out
    assert _processes_using(data) == []
    secrets_before = {p.name: p.read_text() for p in (data / "secrets").iterdir()}
    conf = (data / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "use_username_as_clientid true" in conf
    assert "pattern write nakhon/%u/up/#" in (data / "broker" / "acl").read_text()
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in (data / "secrets").iterdir())

    proc, api, _ = _run_demo(data)
    try:
        hub = _signed_in(api, data)
        wait_for(lambda: (hub.get("/api/devices/kk-aq-0001", timeout=10).json().get("last_seq") or 0)
                 > first_seq, 60, "the second run to continue the seq")
        device = hub.get("/api/devices/kk-aq-0001", timeout=10).json()
        assert device["lost"] == 0
        assert device["duplicates"] >= 0
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert {p.name: p.read_text() for p in (data / "secrets").iterdir()} == secrets_before
    assert _processes_using(data) == []
