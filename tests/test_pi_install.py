"""The Raspberry Pi install: the agent speaks systemd's notify protocol, the units verify, the script installs."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.agents import notify
from hub.broker import free_port
from tests.conftest import ROOT, Broker, fast_air, wait_for


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


def test_notify_sends_a_datagram_and_does_nothing_outside_systemd(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1"
    assert not notify.notify("READY=1", {})
    assert not notify.notify("READY=1", {"NOTIFY_SOCKET": str(Path(path).with_name("gone.sock"))})


def test_notify_abstract_socket() -> None:
    name = f"nakhon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_interval({}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None


def test_agent_says_ready_feeds_the_watchdog_and_says_stopping(notify_socket: tuple[socket.socket, str],
                                                               procs: dict[str, Callable[..., Any]]) -> None:
    sock, path = notify_socket
    agent = procs["agent"]("kk-aq-0001", free_port(), drivers=[fast_air(interval_s=1)], start=False)
    agent.env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    agent.start()
    seen: list[bytes] = []

    def received(wanted: bytes, count: int = 1) -> bool:
        seen.append(sock.recv(4096))
        return seen.count(wanted) >= count

    wait_for(lambda: received(b"READY=1"), 30, "READY=1 from the agent")
    wait_for(lambda: received(b"WATCHDOG=1", 3), 10, "three WATCHDOG=1 pings (every 0.1 s)")
    assert agent.stop() == 0
    wait_for(lambda: received(b"STOPPING=1"), 10, "STOPPING=1 from the agent")


SCRIPT = ROOT / "provisioning" / "install-agent.sh"


def install(tree: Path, *args: str) -> str:
    """Run install-agent.sh against the scratch tree ``tree``; its output."""
    done = subprocess.run(["bash", str(SCRIPT), "--root", str(tree), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def verify(tree: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of a unit installed in ``tree``, with the system's own units beside it."""
    units = tree / "usr" / "lib" / "systemd" / "system"
    if not units.exists():
        shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    return subprocess.run(["systemd-analyze", "verify", f"--root={tree}", f"/etc/systemd/system/{unit}"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_kiosk_install_into_a_scratch_tree(tmp_path: Path) -> None:
    tree = tmp_path / "pi"
    out = install(tree, "--node", "service-kiosk")
    packages = next(line for line in out.splitlines() if "apt-get install" in line)
    assert " pcscd " in packages + " "
    assert "fonts-thai-tlwg" in packages
    assert "would run: useradd --system" in out
    assert "usermod -aG dialout nakhon" in out
    assert (tree / "etc/nakhon/device.toml").read_text() == (ROOT / "firmware-configs/service-kiosk.toml").read_text()
    assert stat.S_IMODE((tree / "etc/nakhon/device.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE((tree / "etc/nakhon/secrets").stat().st_mode) == 0o750
    assert stat.S_IMODE((tree / "var/lib/nakhon").stat().st_mode) == 0o700
    assert (tree / "opt/nakhon/src/nakhon/cli.py").is_file()
    assert os.access(tree / "opt/nakhon/venv/bin/python", os.X_OK)
    wants = tree / "etc/systemd/system/multi-user.target.wants/nakhon-agent.service"
    assert wants.is_symlink()
    unit = (tree / "etc/systemd/system/nakhon-agent.service").read_text()
    for line in ("Type=notify", "Restart=always", "WatchdogSec=60", "User=nakhon", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/nakhon", "NoNewPrivileges=yes", "PrivateTmp=yes"):
        assert line in unit.splitlines()
    checked = verify(tree, "nakhon-agent.service")
    assert checked.returncode == 0, checked.stderr
    assert "nakhon agent check --connect /etc/nakhon/device.toml" in out


def test_pole_needs_no_card_reader_and_keeps_the_previous_config(tmp_path: Path) -> None:
    tree = tmp_path / "pi"
    out = install(tree, "--node", "air-quality-pole")
    packages = next(line for line in out.splitlines() if "apt-get install" in line)
    assert "pcscd" not in packages and "fonts-thai-tlwg" not in packages
    assert "usermod -aG dialout nakhon" in out and "usermod -aG gpio nakhon" in out
    mine = tmp_path / "kk-aq-0042.toml"
    mine.write_text((ROOT / "firmware-configs/air-quality-pole.toml").read_text().replace("kk-aq-0001", "kk-aq-0042"))
    install(tree, "--config", str(mine))
    assert 'device = "kk-aq-0042"' in (tree / "etc/nakhon/device.toml").read_text()
    assert 'device = "kk-aq-0001"' in (tree / "etc/nakhon/device.toml.previous").read_text()


def test_hub_install_and_its_unit_verifies(tmp_path: Path) -> None:
    tree = tmp_path / "hub"
    out = install(tree, "--hub")
    assert "mosquitto" in next(line for line in out.splitlines() if "apt-get install" in line)
    assert "NAKHON_HUB_BROKER_PORT=1883" in (tree / "etc/nakhon/hub.env").read_text()
    assert stat.S_IMODE((tree / "var/lib/nakhon-hub").stat().st_mode) == 0o700
    assert (tree / "etc/systemd/system/multi-user.target.wants/nakhon-hub.service").is_symlink()
    checked = verify(tree, "nakhon-hub.service")
    assert checked.returncode == 0, checked.stderr
    reload_path = (tree / "etc/systemd/system/nakhon-broker-reload.path").read_text()
    assert "PathChanged=/etc/nakhon/deployment/crl/crl.pem" in reload_path.splitlines()
    assert "ExecStart=/bin/systemctl reload mosquitto.service" in (
        tree / "etc/systemd/system/nakhon-broker-reload.service").read_text().splitlines()
    assert (tree / "etc/systemd/system/multi-user.target.wants/nakhon-broker-reload.path").is_symlink()
    checked = verify(tree, "nakhon-broker-reload.path")
    assert checked.returncode == 0, checked.stderr


def test_verify_catches_a_unit_whose_program_is_missing(tmp_path: Path) -> None:
    tree = tmp_path / "pi"
    install(tree, "--node", "bus-tracker")
    shutil.rmtree(tree / "opt/nakhon/venv")
    checked = verify(tree, "nakhon-agent.service")
    assert checked.returncode != 0
    assert "/opt/nakhon/venv/bin/python" in checked.stderr


def test_install_needs_a_config_or_a_node(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path / "pi")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "give --config FILE or --node NODE" in done.stderr


def unit_setting(unit: str, key: str) -> str:
    """The value of ``key=`` in a unit file's text (its only line for that key)."""
    return next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}="))


def test_agent_unit_runs_python_optimized_from_bytecode_the_installer_compiles(tmp_path: Path) -> None:
    tree = tmp_path / "pi"
    out = install(tree, "--node", "air-quality-pole")
    unit = (tree / "etc/systemd/system/nakhon-agent.service").read_text()
    assert unit_setting(unit, "ExecStart").startswith("/opt/nakhon/venv/bin/python -OO -m nakhon.cli agent run ")
    assert "PYTHONPYCACHEPREFIX=/opt/nakhon/pycache" in unit_setting(unit, "Environment").split()
    compile_line = next(line for line in out.splitlines() if "compileall" in line)
    assert "would run: env PYTHONPYCACHEPREFIX=/opt/nakhon/pycache /opt/nakhon/venv/bin/python -m compileall" \
        in compile_line
    assert " -o 2 " in compile_line and compile_line.endswith(" /opt/nakhon/venv/lib")
    assert "compileall" not in install(tmp_path / "hub", "--hub")  # the hub's unit runs without -OO


def test_agent_runs_under_the_units_optimization(tmp_path: Path, broker: Broker,
                                                 procs: dict[str, Callable[..., Any]]) -> None:
    unit = (ROOT / "provisioning/systemd/nakhon-agent.service").read_text()
    flags = unit_setting(unit, "ExecStart").split(" -m nakhon.cli ")[0].split()[1:]
    assert flags == ["-OO"]
    hub = procs["hub"](broker.port)
    agent = procs["agent"]("kk-aq-0311", broker.port, drivers=[fast_air(interval_s=0.1)], start=False)
    pycache = tmp_path / "pycache"
    # -OO as an environment; the bytecode it compiles is written where the test finds it
    agent.env = {"PYTHONOPTIMIZE": "2", "PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}
    agent.start()
    wait_for(lambda: sum(device == "kk-aq-0311" for device, _ in hub.stored()) >= 10, 30,
             "ten messages of the optimized agent stored at the hub")
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()
    assert "agent kk-aq-0311 stopped" in agent.log()
    assert list(pycache.rglob("edge/agents/agent.*.opt-2.pyc")), "the agent did not run at -OO"
