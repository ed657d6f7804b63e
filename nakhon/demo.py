"""``nakhon demo``: a private Mosquitto, the hub and a simulated fleet of sensor nodes, on one machine.

Everything runs as real processes on the embedded defaults: Mosquitto with per-device passwords and
``%u`` ACLs on a free port, ``nakhon hub serve`` on SQLite, and one ``nakhon agent run`` per device from the
configs in ``firmware-configs/``. The data directory keeps the broker's state, the hub's store, each
device's outbox and the generated passwords, so a second run continues where the first stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hub.broker import BrokerSettings, Mosquitto, free_port
from hub.errors import BrokerError
from hub.store.sqlite import SQLiteStore


class DemoError(RuntimeError):
    """The demo cannot start (a port in use, the hub not answering)."""


FIRMWARE_CONFIGS = Path(__file__).resolve().parents[1] / "firmware-configs"
HUB_USER = "nakhon-hub"


@dataclass(frozen=True)
class DemoNode:
    """One device of the demo fleet, run on its drivers' simulators."""

    device: str
    config: str
    site: str
    lat: float
    lon: float


FLEET = (
    DemoNode("kk-aq-0001", "air-quality-pole.toml", "Bueng Kaen Nakhon", 16.4139, 102.8313),
    DemoNode("kk-aq-0002", "air-quality-pole.toml", "Ton Tan market", 16.4469, 102.8391),
    DemoNode("kk-wl-0001", "water-level-node.toml", "Nong Khot canal", 16.4470, 102.8205),
    DemoNode("kk-bus-0007", "bus-tracker.toml", "City bus line 8", 16.4320, 102.8270),
    DemoNode("kk-em-0001", "energy-meter-node.toml", "Streetlight cabinet, Srichan Road", 16.4321, 102.8290),
    DemoNode("kk-kiosk-0001", "service-kiosk.toml", "City Hall, ground floor", 16.4322, 102.8236),
)


def _secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(value + "\n")
    return value


def broker_settings(data: Path, port: int) -> BrokerSettings:
    """The demo's Mosquitto: the hub and one account per device of the fleet, passwords kept in ``data/secrets``."""
    secrets_dir = data / "secrets"
    accounts = {HUB_USER: _secret(secrets_dir / f"{HUB_USER}.password")}
    accounts.update({n.device: _secret(secrets_dir / f"{n.device}.password") for n in FLEET})
    return BrokerSettings(directory=data / "broker", port=port, accounts=accounts)


def _get_json(url: str, token: str | None = None) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (our own loopback URL)
        return json.loads(response.read())


ADMIN = "admin"


def _admin_account(hub_data: Path, secrets_dir: Path) -> str:
    """Create the demo's ``admin`` user (password in ``secrets/admin.password``) and an API token for it
    (``secrets/admin.token``, used for the status line) on the first run; returns the token."""
    from hub import audit
    from hub.auth import accounts

    store = SQLiteStore(hub_data / "hub.sqlite")
    store.open()
    try:
        users = accounts.Accounts(store)
        if users.user(ADMIN) is None:
            users.add_user(ADMIN, ["admin"], _secret(secrets_dir / f"{ADMIN}.password"))
            audit.AuditLog(store).record(audit.CLI, "user.add", f"user/{ADMIN}", None, {"roles": ["admin"]})
        token_file = secrets_dir / f"{ADMIN}.token"
        if not token_file.exists():
            token_file.write_text(users.add_token(ADMIN, "nakhon demo")[1] + "\n")
            token_file.chmod(0o600)
        return token_file.read_text().strip()
    finally:
        store.close()


DEFAULT_HUB_PORT = 8080
DEFAULT_KIOSK_PORT = 8088
"""Stable ports, so a bookmark of the API and of the kiosk screen works from one run to the next."""
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0
"""A process that ran this long before it exited starts again after the shortest delay."""


def _port_or_free(port: int, flag: str) -> int:
    """``port`` if nothing listens on it (0: any free port); else a :class:`DemoError` naming the flag."""
    if port == 0:
        return free_port()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise DemoError(f"port {port} is in use ({err.strerror}); choose another with {flag} PORT "
                            f"(0 for any free port)") from err
    return port


@dataclass
class Supervised:
    """A demo process that is started again, with backoff, whenever it exits on its own."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    delay_s: float = BACKOFF_MIN_S
    restarts: int = 0
    stopping: bool = False

    def start(self) -> None:
        """Spawn ``nakhon ARGS`` with its output appended to its log."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "nakhon.cli", *self.args], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                            start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self, now: float) -> str | None:
        """Restart the process when it is due; a line for the operator when something happened."""
        if self.process is None or self.stopping:
            return None
        if self.restart_at is not None:
            if now < self.restart_at:
                return None
            self.restarts += 1
            self.start()
            return f"{self.name} started again (restart {self.restarts})"
        status = self.process.poll()
        if status is None:
            return None
        if now - self.started_at >= STABLE_S:
            self.delay_s = BACKOFF_MIN_S
        delay, self.delay_s = self.delay_s, min(BACKOFF_MAX_S, self.delay_s * 2)
        self.restart_at = now + delay
        return f"{self.name} exited with status {status}; starting it again in {delay:g} s (log: {self.log})"

    def terminate(self) -> None:
        """SIGTERM (once): the process stops cleanly; it is not started again."""
        if self.process is not None and self.process.poll() is None and not self.stopping:
            self.process.send_signal(signal.SIGTERM)
        self.stopping = True

    def stop(self) -> None:
        """SIGTERM unless sent already, then SIGKILL after 15 s."""
        self.terminate()
        proc, self.process = self.process, None
        if proc is not None:
            _wait(proc)


class Demo:
    """The demo's processes, their order of start and stop, and their supervision."""

    def __init__(self, data: Path, hub_port: int = DEFAULT_HUB_PORT, kiosk_port: int = DEFAULT_KIOSK_PORT) -> None:
        self.data = data.resolve()
        self.http_port = hub_port
        self.kiosk_port = kiosk_port
        self.broker: Mosquitto | None = None
        self.hub: Supervised | None = None
        self.agents: dict[str, Supervised] = {}
        self.stop_requested = threading.Event()
        self.token: str | None = None

    @property
    def api(self) -> str:
        """The hub's API base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Check the ports, start broker, hub and fleet; return once the hub answers."""
        self.http_port = _port_or_free(self.http_port, "--hub-port")
        self.kiosk_port = _port_or_free(self.kiosk_port, "--kiosk-port")
        secrets_dir = self.data / "secrets"
        logs = self.data / "logs"
        _secret(secrets_dir / "bank.secret")
        self.token = _admin_account(self.data / "hub", secrets_dir)
        _secret(secrets_dir / "citizen-ref.key")
        broker_port = free_port()
        self.broker = Mosquitto(broker_settings(self.data, broker_port))
        self.broker.start()
        print(f"broker    mosquitto on 127.0.0.1:{broker_port} (log: {self.data / 'broker' / 'mosquitto.log'})")
        self.hub = Supervised("hub", [
            "hub", "serve", "--data", str(self.data / "hub"), "--broker-port", str(broker_port),
            "--username", HUB_USER, "--password-file", str(secrets_dir / f"{HUB_USER}.password"),
            "--bank-secret-file", str(secrets_dir / "bank.secret"), "--promptpay-demo",
            "--http-port", str(self.http_port)],
            logs / "hub.log", {})
        self.hub.start()
        for node in FLEET:
            env = {
                "NAKHON_DEVICE": node.device,
                "NAKHON_SITE": f'"{node.site}"',
                "NAKHON_BROKER__HOST": "127.0.0.1",
                "NAKHON_BROKER__PORT": str(broker_port),
                "NAKHON_BROKER__PASSWORD_FILE": str(secrets_dir / f"{node.device}.password"),
                "NAKHON_OUTBOX__PATH": str(self.data / "devices" / node.device / "outbox.sqlite"),
                "NAKHON_AGENT__HEARTBEAT_S": "10",
                "NAKHON_LOCATION__LAT": str(node.lat),
                "NAKHON_LOCATION__LON": str(node.lon),
            }
            if node.config == "service-kiosk.toml":
                env.update({"NAKHON_DRIVERS__0__HMAC_KEY_FILE": str(secrets_dir / "citizen-ref.key"),
                            "NAKHON_DRIVERS__1__SIM_PAPER_LOG": str(logs / f"{node.device}-paper.log"),
                            "NAKHON_KIOSK__HTTP_PORT": str(self.kiosk_port)})
            agent = Supervised(node.device, ["agent", "run", "--simulate", str(FIRMWARE_CONFIGS / node.config)],
                               logs / f"{node.device}.log", env)
            agent.start()
            self.agents[node.device] = agent
            print(f"agent     {node.device:<14} {node.config:<26} {node.site}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.hub.process is not None
            if self.hub.process.poll() is not None:
                raise DemoError(f"the hub exited with {self.hub.process.returncode}; see {self.hub.log}")
            try:
                _get_json(f"{self.api}/healthz")
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.2)
        raise DemoError(f"the hub did not answer on {self.api} within 30 s; see {self.hub.log}")

    def supervise(self) -> list[str]:
        """Restart whatever exited (the broker at once, the hub and agents with backoff); what to tell the operator."""
        lines = []
        if self.broker is not None and self.broker.process is not None and self.broker.process.poll() is not None:
            status = self.broker.process.returncode
            self.broker.stop()
            self.broker.start()  # same port and data: the fleet and the hub reconnect by themselves
            lines.append(f"broker exited with status {status}; started it again (log: "
                         f"{self.data / 'broker' / 'mosquitto.log'})")
        now = time.monotonic()
        for proc in ([self.hub] if self.hub else []) + list(self.agents.values()):
            line = proc.check(now)
            if line:
                lines.append(line)
        return lines

    def summary(self) -> str:
        """One line on the fleet as the hub sees it."""
        try:
            devices = _get_json(f"{self.api}/api/devices", self.token)
        except (urllib.error.URLError, OSError, ValueError) as err:
            restarting = self.hub is not None and self.hub.restart_at is not None
            hint = "it is being restarted" if restarting else f"see {self.data / 'logs' / 'hub.log'}"
            return f"hub not answering ({err}); {hint}"
        assert isinstance(devices, list)
        online = sum(1 for d in devices if d["state"] == "online")
        received = sum(d["received"] for d in devices)
        lost = sum(d["lost"] for d in devices)
        return f"{online}/{len(FLEET)} devices online, {received} messages stored, {lost} lost"

    def stop(self) -> None:
        """Agents first (they announce offline), then the hub, then the broker (which saves its state)."""
        for agent in self.agents.values():
            agent.terminate()
        for agent in self.agents.values():
            agent.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.broker is not None:
            self.broker.stop()


def _wait(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SUMMARY_EVERY_S = 15.0


def run_demo(data: Path, hub_port: int = DEFAULT_HUB_PORT, kiosk_port: int = DEFAULT_KIOSK_PORT) -> int:
    """Run the demo until Ctrl-C (SIGINT) or SIGTERM, restarting whatever exits."""
    demo = Demo(data, hub_port, kiosk_port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: demo.stop_requested.set())
    print(f"Nakhon demo, data in {demo.data}")
    try:
        demo.start()
        print(f"\nHub API: {demo.api}   (devices: {demo.api}/api/devices, docs: {demo.api}/docs)")
        print(f"Sign in as {ADMIN!r} with the password in {demo.data / 'secrets' / (ADMIN + '.password')} "
              f"(API token for scripts: {demo.data / 'secrets' / (ADMIN + '.token')})")
        print(f"Kiosk screen: http://127.0.0.1:{demo.kiosk_port}/   (receipts print to "
              f"{demo.data / 'logs' / 'kk-kiosk-0001-paper.log'})")
        print(f"GIS for QGIS/GDAL (OGC API - Features): {demo.api}/ogc")
        print("PromptPay: DEMO QR codes that pay no one; confirm one with POST "
              f"{demo.api}/api/finance/payments/TX_ID/confirm signed with the secret in "
              f"{demo.data / 'secrets' / 'bank.secret'} (nakhon hub bank-sign, see README)")
        print("Press Ctrl-C to stop.\n", flush=True)
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while not demo.stop_requested.wait(0.5):
            for line in demo.supervise():
                print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)
            if time.monotonic() >= next_summary:
                next_summary += SUMMARY_EVERY_S
                print(f"{time.strftime('%H:%M:%S')}  {demo.summary()}", flush=True)
    except (DemoError, BrokerError) as err:
        print(f"nakhon demo: {err}", file=sys.stderr)
        demo.stop()
        return 1
    print("\nstopping the fleet, the hub and the broker...", flush=True)
    demo.stop()
    print(f"stopped; the next run reuses {demo.data}")
    return 0
