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

    store = SQLiteStore(hub_data / "hub.sqlite", schemas=(accounts.ensure_schema, audit.ensure_schema))
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


class Demo:
    """The demo's processes and their order of start and stop."""

    def __init__(self, data: Path, http_port: int) -> None:
        self.data = data.resolve()
        self.http_port = http_port or free_port()
        self.kiosk_port = free_port()
        self.broker: Mosquitto | None = None
        self.hub: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = threading.Event()
        self.token: str | None = None

    @property
    def api(self) -> str:
        """The hub's API base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        logs = self.data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / log_name, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "nakhon.cli", *args], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                    start_new_session=True)

    def start(self) -> None:
        """Start broker, hub and fleet; return once the hub answers."""
        secrets_dir = self.data / "secrets"
        accounts = {HUB_USER: _secret(secrets_dir / f"{HUB_USER}.password")}
        _secret(secrets_dir / "bank.secret")
        self.token = _admin_account(self.data / "hub", secrets_dir)
        _secret(secrets_dir / "citizen-ref.key")
        accounts.update({n.device: _secret(secrets_dir / f"{n.device}.password") for n in FLEET})
        broker_port = free_port()
        self.broker = Mosquitto(BrokerSettings(directory=self.data / "broker", port=broker_port, accounts=accounts))
        self.broker.start()
        print(f"broker    mosquitto on 127.0.0.1:{broker_port} (log: {self.data / 'broker' / 'mosquitto.log'})")
        self.hub = self._spawn(
            ["hub", "serve", "--data", str(self.data / "hub"), "--broker-port", str(broker_port),
             "--username", HUB_USER, "--password-file", str(secrets_dir / f"{HUB_USER}.password"),
             "--bank-secret-file", str(secrets_dir / "bank.secret"), "--promptpay-demo",
             "--http-port", str(self.http_port)], "hub.log", {})
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
                            "NAKHON_DRIVERS__1__SIM_PAPER_LOG": str(self.data / "logs" / f"{node.device}-paper.log"),
                            "NAKHON_KIOSK__HTTP_PORT": str(self.kiosk_port)})
            self.agents[node.device] = self._spawn(["agent", "run", "--simulate", str(FIRMWARE_CONFIGS / node.config)],
                                                   f"{node.device}.log", env)
            print(f"agent     {node.device:<14} {node.config:<26} {node.site}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise BrokerError(f"the hub exited with {self.hub.returncode}; see {self.data / 'logs' / 'hub.log'}")
            try:
                _get_json(f"{self.api}/healthz")
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.2)
        raise BrokerError(f"the hub did not answer on {self.api} within 30 s; see {self.data / 'logs' / 'hub.log'}")

    def summary(self) -> str:
        """One line on the fleet as the hub sees it."""
        try:
            devices = _get_json(f"{self.api}/api/devices", self.token)
        except (urllib.error.URLError, OSError, ValueError) as err:
            return f"hub not answering: {err}"
        assert isinstance(devices, list)
        online = sum(1 for d in devices if d["state"] == "online")
        received = sum(d["received"] for d in devices)
        lost = sum(d["lost"] for d in devices)
        return f"{online}/{len(FLEET)} devices online, {received} messages stored, {lost} lost"

    def stop(self) -> None:
        """Agents first (they announce offline), then the hub, then the broker (which saves its state)."""
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            _wait(proc)
        if self.hub is not None:
            if self.hub.poll() is None:
                self.hub.send_signal(signal.SIGTERM)
            _wait(self.hub)
        if self.broker is not None:
            self.broker.stop()


def _wait(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_demo(data: Path, http_port: int = 0) -> int:
    """Run the demo until Ctrl-C (SIGINT) or SIGTERM."""
    demo = Demo(data, http_port)
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
        while not demo.stop_requested.wait(15):
            print(f"{time.strftime('%H:%M:%S')}  {demo.summary()}", flush=True)
    except BrokerError as err:
        print(f"nakhon demo: {err}", file=sys.stderr)
        demo.stop()
        return 1
    print("\nstopping the fleet, the hub and the broker...", flush=True)
    demo.stop()
    print(f"stopped; the next run reuses {demo.data}")
    return 0
