"""Provisioning end to end on a real Mosquitto with mutual TLS: init, registry, enrollment, refusals, rotation."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.agents.outbox import snapshot
from hub.audit import AuditLog
from hub.broker import free_port
from hub.provision import config as config_templates
from hub.provision import deployment, pki
from hub.provision.registry import code_digest
from nakhon.enroll import enroll
from nakhon.hubclient import Hub as HubClient
from tests.conftest import ROOT, Broker, Hub, HubApp, Proc, agent_config, fast_air, user_token, wait_for

NOT_AUTHORIZED = 0x87


class TlsBroker:
    """The deployment's own broker, run from the config ``provision init`` wrote."""

    def __init__(self, paths: deployment.Paths, port: int) -> None:
        self.paths = paths
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.paths.conf)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)

        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, 15, "the TLS broker to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.paths.log.read_text(errors="replace") if self.paths.log.exists() else ""


class TlsHub(Hub):
    """``nakhon hub serve --deployment DIR``: HTTPS with the deployment's certificate."""

    def __init__(self, data: Path, base: Path, log_path: Path) -> None:
        super().__init__(data, 1, ["--deployment", str(base)], log_path)
        self.chain = ssl.create_default_context(cafile=str(base / "broker" / "ca.pem"))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.http_port}"

    def start(self) -> None:
        Proc.start(self)

        def healthy() -> bool:
            if not self.alive():
                pytest.fail(f"hub exited:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2, verify=self.chain).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, "the hub to be healthy over HTTPS")

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, verify=self.chain, timeout=60, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        r = self.call("GET", path, params=params)
        r.raise_for_status()
        return r.json()


@dataclass
class Site:
    """A provisioned deployment with its broker and hub running, and a technician's token."""

    base: Path
    paths: deployment.Paths
    broker: TlsBroker
    hub: TlsHub
    tech_token_file: Path
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def tech(self) -> str:
        return self.tech_token_file.read_text().strip()

    def client(self) -> HubClient:
        return HubClient(self.hub.url, self.paths.chain, self.tech)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nakhon.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                            **(env or {})})

    def tech_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, "--hub", self.hub.url, "--ca", str(self.paths.chain),
                        "--token-file", str(self.tech_token_file))

    def register(self, device: str, node: str = "air-quality-pole") -> str:
        """Register a device through the API; its enrollment code."""
        r = self.hub.call("POST", "/api/provision/devices", self.tech,
                          json={"device": device, "node": node, "site": "test site", "lat": 16.4, "lon": 102.8})
        assert r.status_code == 201, r.text
        return str(r.json()["code"])

    def enrolled(self, device: str) -> Path:
        """Register and enroll a device into its own folder (key made here, as on a Pi)."""
        folder = self.tmp / device
        enroll(self.client(), self.register(device), folder)
        return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One deployment for the module: ``provision init`` through the CLI, its broker, its hub."""
    tmp = tmp_path_factory.mktemp("provisioning")
    base = tmp / "deployment"
    device_port, hub_port = free_port(), free_port()
    done = subprocess.run([sys.executable, "-m", "nakhon.cli", "provision", "init", str(base), "--device-port",
                           str(device_port), "--hub-port", str(hub_port), "--broker-user", "root"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "root CA's key" in done.stderr and "offline" in done.stderr
    _, paths = deployment.load(base)
    broker = TlsBroker(paths, device_port)
    broker.start()
    data = tmp / "hub"
    token_file = tmp / "tech.token"
    token_file.write_text(user_token(data, "tech", ("technician",)))
    token_file.chmod(0o600)
    hub = TlsHub(data, base, tmp / "hub.log")
    hub.start()
    s = Site(base, paths, broker, hub, token_file, tmp)
    yield s
    for p in reversed(s.procs):
        if p.alive():
            p.kill()
    hub.kill()
    broker.stop()


@dataclass
class Mqtt:
    """A paho client with a certificate; records CONNACK and PUBACK reason codes."""

    client: mqtt.Client
    acks: dict[int, int] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        mid = self.client.publish(topic, payload, qos=1).mid
        return int(wait_for(lambda: self.acks.get(mid, -1) + 1, 10, f"PUBACK of {topic}")) - 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device_client(port: int, chain: Path, cert: Path, key: Path) -> Mqtt:
    """Connect with a client certificate; ``connected`` is set on success, ``refused`` filled on failure."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ignored", protocol=mqtt.MQTTv5)
    m = Mqtt(c)
    ctx = ssl.create_default_context(cafile=str(chain))
    ctx.load_cert_chain(str(cert), str(key))
    c.tls_set_context(ctx)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            m.refused.append(str(rc))
        else:
            m.connected.set()

    c.on_connect = on_connect
    c.on_publish = lambda client, userdata, mid, rc, props: m.acks.__setitem__(mid, rc.value)
    try:
        c.connect("127.0.0.1", port, keepalive=30)
    except (ssl.SSLError, OSError) as err:
        m.refused.append(f"{type(err).__name__}: {err}")
        return m
    c.loop_start()
    return m


def refused_at_handshake(port: int, chain: Path, cert: Path, key: Path) -> bool:
    """True when the broker refuses the TLS handshake (or closes at once) for this certificate."""
    m = device_client(port, chain, cert, key)
    try:
        if m.refused:
            return True
        return not m.connected.wait(3)
    finally:
        m.close()


def code_in(printed: str) -> str:
    """The enrollment code ``provision device add`` / ``rotate`` printed."""
    found = re.search(r"single use, expires [^)]+\):\n\n    (\S+)\n", printed)
    assert found, printed
    return found.group(1)


def write_identity(folder: Path, name: str, key: Any, cert: Any) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pki.write_private(folder / f"{name}.key", pki.key_pem(key))
    pki.write_private(folder / f"{name}.pem", pki.cert_pem(cert))
    return folder / f"{name}.pem", folder / f"{name}.key"


def test_init_writes_a_private_ca_and_a_production_broker_config(site: Site) -> None:
    p = site.paths
    for secret in (p.root_key, p.issuing_key, p.hub_password, p.https_key):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    for shared in (p.server_key, p.passwd, p.conf):
        assert shared.stat().st_mode & 0o007 == 0, shared
    conf = p.conf.read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 f"crlfile {p.crl}", "allow_anonymous false", "max_packet_size 1048576", "persistence true",
                 "max_queued_messages 10000", f"listener {deployment.load(site.base)[0].hub_port} 127.0.0.1"):
        assert line in conf.splitlines(), line
    assert "hub: loopback only" in conf
    refused = site.cli("provision", "init", str(site.base))
    assert refused.returncode == 1 and "refusing to overwrite its CA" in refused.stderr


def test_enrollment_end_to_end_code_csr_certificate_readings_reach_the_hub(site: Site) -> None:
    added = site.tech_cli("provision", "device", "add", "kk-aq-0501", "--node", "air-quality-pole", "--site",
                          "Bueng Kaen Nakhon", "--lat", "16.41", "--lon", "102.83", "--out", str(site.tmp))
    assert added.returncode == 0, added.stderr
    code = code_in(added.stdout)
    assert "▀" in added.stdout or "█" in added.stdout  # the QR code in the terminal
    assert (site.tmp / "kk-aq-0501.toml").read_text().count('device = "kk-aq-0501"') == 1
    taken = site.tech_cli("provision", "device", "add", "kk-aq-0501", "--node", "air-quality-pole", "--site", "x")
    assert taken.returncode == 1 and "already taken" in taken.stderr

    pi = site.tmp / "pi-0501"
    done = site.cli("agent", "enroll", "--hub", site.hub.url, "--code", code, "--ca", str(site.paths.chain),
                    "--dir", str(pi))
    assert done.returncode == 0, done.stderr
    assert (pi / "device.key").stat().st_mode & 0o777 == 0o600
    cert = pki.load_cert(pi / "device.pem")
    assert cert.subject.rfc4514_string().startswith("CN=kk-aq-0501")
    again = site.cli("agent", "enroll", "--hub", site.hub.url, "--code", code, "--ca", str(site.paths.chain),
                     "--dir", str(site.tmp / "pi-0501-again"))
    assert again.returncode == 1 and "already used" in again.stderr

    agent = Proc(["agent", "run", str(pi / "device.toml"), "--simulate"], site.tmp / "agent-0501.log",
                 env={"NAKHON_OUTBOX__PATH": str(pi / "outbox.sqlite"), "NAKHON_AGENT__HEARTBEAT_S": "1"})
    site.procs.append(agent)
    agent.start()
    wait_for(lambda: site.hub.get("/api/devices/kk-aq-0501/readings")["count"] > 0
             if any(d["device"] == "kk-aq-0501" for d in site.hub.get("/api/devices")) else False,
             90, "readings of the enrolled device at the hub")
    agent.stop()
    (entry,) = [e for e in site.hub.get("/api/provision/devices") if e["device"] == "kk-aq-0501"]
    assert entry["status"] == "active" and entry["created_by"] == "tech"
    actions = [(a["user"], a["action"]) for a in site.hub.get("/api/audit", object="device")]
    assert ("tech", "device.register") in actions and ("anonymous", "device.enroll") in actions
    assert ("anonymous", "device.enroll_refused") in actions

    assert [c["device"] for c in site.hub.get("/api/provision/certificates", expiring_days=30)] == []
    expiring = site.tech_cli("provision", "certs", "expiring", "--days", "400")
    assert "kk-aq-0501" in expiring.stdout and expiring.returncode == 1
    metrics = httpx.get(f"{site.hub.url}/metrics", headers=site.hub.auth, verify=site.hub.chain).text
    series = 'nakhon_device_cert_expiry_seconds{device="kk-aq-0501"}'
    line = next(m for m in metrics.splitlines() if m.startswith(series))
    assert 396 * 86_400 < float(line.split()[-1]) <= 397 * 86_400
    crl = next(m for m in metrics.splitlines() if m.startswith("nakhon_crl_expiry_seconds "))
    assert 364 * 86_400 < float(crl.split()[-1]) <= 365 * 86_400


def test_an_expired_code_is_refused_and_audited(site: Site) -> None:
    r = site.hub.call("POST", "/api/provision/devices", site.tech,
                      json={"device": "kk-aq-0502", "node": "air-quality-pole", "site": "x", "code_ttl_s": 0.5})
    code = r.json()["code"]
    time.sleep(1.0)  # the code's own lifetime, half a second, has to pass: no state to wait on
    with pytest.raises(Exception, match="expired"):
        enroll(site.client(), code, site.tmp / "pi-0502")
    refusals = [a["after"]["reason"] for a in site.hub.get("/api/audit", object="device/enrollment")]
    assert "enrollment code of kk-aq-0502 expired" in refusals


def test_refused_at_the_broker_expired_foreign_ca_and_other_devices_topics(site: Site) -> None:
    chain, port = site.paths.chain, site.broker.port
    issuer = pki.Issuer.load(site.paths.issuing_key, site.paths.issuing_cert)
    key = pki.new_key()
    old = issuer.client("kk-aq-0503", key.public_key(), days=1, now=datetime.now(UTC) - timedelta(days=3))
    assert refused_at_handshake(port, chain, *write_identity(site.tmp / "bad", "expired", key, old))
    other_key, other_cert = pki.create_ca("Another town")
    foreign = pki.Issuer(other_key, other_cert).client("kk-aq-0503", key.public_key())
    assert refused_at_handshake(port, chain, *write_identity(site.tmp / "bad", "foreign", key, foreign))

    # a certificate of the right CA for a device the registry does not know: it connects, and may publish nothing
    stranger = issuer.client("kk-aq-0599", key.public_key())
    unknown = device_client(port, chain, *write_identity(site.tmp / "bad", "stranger", key, stranger))
    assert unknown.connected.wait(10), unknown.refused
    assert unknown.publish("nakhon/kk-aq-0599/up/status") == NOT_AUTHORIZED
    unknown.close()

    a, b = site.enrolled("kk-aq-0504"), site.enrolled("kk-aq-0505")
    assert b.exists()
    client = device_client(port, chain, a / "device.pem", a / "device.key")
    assert client.connected.wait(10), client.refused
    assert client.publish("nakhon/kk-aq-0504/up/status", b"{}") == 0
    assert client.publish("nakhon/kk-aq-0505/up/status", b"{}") == NOT_AUTHORIZED
    client.close()


def test_a_revoked_device_is_refused_at_once_and_cannot_reconnect_while_the_others_stay(site: Site) -> None:
    folder, other = site.enrolled("kk-aq-0506"), site.enrolled("kk-aq-0511")
    client = device_client(site.broker.port, site.paths.chain, folder / "device.pem", folder / "device.key")
    assert client.connected.wait(10), client.refused
    assert client.publish("nakhon/kk-aq-0506/up/status") == 0
    stays = device_client(site.broker.port, site.paths.chain, other / "device.pem", other / "device.key")
    assert stays.connected.wait(10), stays.refused
    wait_for(lambda: stays.publish("nakhon/kk-aq-0511/up/status") == 0, 20, "the other device's access")
    drops: list[object] = []
    stays.client.on_disconnect = lambda *args: drops.append(args)
    broker_pid = site.broker.process.pid if site.broker.process else 0
    reloads = site.broker.log().count("Reloading config.")
    done = site.tech_cli("provision", "device", "revoke", "kk-aq-0506")
    assert done.returncode == 0, done.stderr
    assert "cannot connect again" in done.stdout
    # the broker kicks it at once (its dynamic-security client is deleted), and paho's reconnections fail
    wait_for(lambda: not client.client.is_connected(), 20, "the revoked device to be disconnected")
    client.close()
    assert pki.load_cert(folder / "device.pem").serial_number in x509_crl(site.paths.crl)
    # the hub made the broker reload its CRL (SIGHUP), with no restart: the revoked certificate is refused at
    # its next handshake, and the other device never lost its connection nor its access
    wait_for(lambda: site.broker.log().count("Reloading config.") > reloads, 20, "the broker to reload")
    assert site.broker.process is not None and site.broker.process.pid == broker_pid
    assert refused_at_handshake(site.broker.port, site.paths.chain, folder / "device.pem", folder / "device.key")
    assert stays.publish("nakhon/kk-aq-0511/up/status") == 0
    assert drops == []
    stays.close()
    again = device_client(site.broker.port, site.paths.chain, other / "device.pem", other / "device.key")
    assert again.connected.wait(10), again.refused
    again.close()


def _hub_connected(site: Site) -> bool:
    return httpx.get(f"{site.hub.url}/healthz", verify=site.hub.chain, timeout=5).status_code == 200


def x509_crl(path: Path) -> set[int]:
    from cryptography import x509

    return {r.serial_number for r in x509.load_pem_x509_crl(path.read_bytes())}


def test_rotation_under_a_stream_loses_nothing_and_stores_nothing_twice(site: Site) -> None:
    folder = site.enrolled("kk-aq-0507")
    config = agent_config(folder / "stream.toml", "kk-aq-0507", site.broker.port, drivers=[fast_air()],
                          resend_after_s=1.0, heartbeat_s=1.0)
    tls = {"NAKHON_BROKER__TLS": "true", "NAKHON_BROKER__CA_FILE": "ca.pem",
           "NAKHON_BROKER__CERT_FILE": "device.pem", "NAKHON_BROKER__KEY_FILE": "device.key",
           "NAKHON_BROKER__HOST": "localhost"}
    agent = Proc(["agent", "run", str(config), "--simulate"], site.tmp / "agent-0507.log", env=tls)
    site.procs.append(agent)
    agent.start()

    def stored() -> int:
        return int(site.hub.get("/api/devices/kk-aq-0507")["received"])

    wait_for(lambda: _known(site, "kk-aq-0507") and stored() > 50, 60, "the stream to flow")
    old = pki.load_cert(folder / "device.pem")
    code = site.tech_cli("provision", "device", "rotate", "kk-aq-0507")
    assert code.returncode == 0, code.stderr
    value = code_in(code.stdout)
    assert printed_command(code.stdout)[-1] == "--keep-config"
    enroll(HubClient(site.hub.url, site.paths.chain), value, folder, keep_config=True)
    new = pki.load_cert(folder / "device.pem")
    assert new.serial_number != old.serial_number
    # make the old certificate unusable, then force a reconnection: only the new one can get the agent back
    issuer = pki.Issuer.load(site.paths.issuing_key, site.paths.issuing_cert)
    revoked = [(serial, datetime.now(UTC)) for serial in x509_crl(site.paths.crl) | {old.serial_number}]
    pki.write_private(site.paths.crl, pki.crl_pem(issuer.crl(revoked)), 0o644)
    before = stored()
    site.broker.restart()
    wait_for(lambda: stored() > before + 50, 60, "the stream to flow again on the new certificate")
    agent.stop()
    box = snapshot(folder / "kk-aq-0507-outbox.sqlite")
    waiting, last = set(box.waiting), box.last_seq
    with site.hub.db() as db:
        seqs = [s for (s,) in db.execute("SELECT seq FROM received WHERE device = 'kk-aq-0507' ORDER BY seq")]
        readings = db.execute("SELECT COUNT(*), COUNT(DISTINCT seq * 1000 + idx) FROM readings "
                              "WHERE device = 'kk-aq-0507'").fetchone()
    assert set(range(1, last + 1)) - set(seqs) - waiting == set(), "a seq is neither at the hub nor in the outbox"
    assert len(seqs) == len(set(seqs)) and readings[0] == readings[1] > 100


def sqlite_ro(path: Path) -> Any:
    import sqlite3

    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _known(site: Site, device: str) -> bool:
    return any(d["device"] == device for d in site.hub.get("/api/devices"))


def test_bulk_import_of_500_then_a_rerun_creates_nothing(site: Site) -> None:
    path = site.tmp / "devices.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device", "node", "site", "lat", "lon"])
        for i in range(500):
            w.writerow([f"kk-bulk-{i:04d}", "air-quality-pole", f"pole {i}", "16.4", "102.8"])
    first = site.tech_cli("provision", "device", "import", str(path))
    assert first.returncode == 0, first.stderr
    assert "500 rows: 500 created, 0 skipped, 0 refused" in first.stdout
    again = site.tech_cli("provision", "device", "import", str(path))
    assert "500 rows: 0 created, 500 skipped, 0 refused" in again.stdout
    bad = site.tmp / "bad.csv"
    bad.write_text("device,node,site,lat,lon\nBAD ID,air-quality-pole,x,,\nkk-bulk-9001,no-such-node,x,,\n"
                   "kk-bulk-9002,air-quality-pole,x,91,0\nkk-bulk-9003,air-quality-pole,fine,,\n")
    mixed = site.tech_cli("provision", "device", "import", str(bad))
    assert mixed.returncode == 1
    assert "4 rows: 1 created, 0 skipped, 3 refused" in mixed.stdout
    assert "no template 'no-such-node'" in mixed.stdout and "kk-bulk-9003" in mixed.stdout
    sample = site.tech_cli("provision", "device", "import", str(ROOT / "provisioning" / "devices-sample.csv"))
    assert "0 refused" in sample.stdout, sample.stdout


def test_bundle_suspend_resume_and_retire(site: Site) -> None:
    site.register("kk-aq-0508")
    out = site.tmp / "kk-aq-0508.tar"
    done = site.tech_cli("provision", "device", "bundle", "kk-aq-0508", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and "/etc/nakhon" in done.stdout
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["nakhon/ca.pem", "nakhon/device.key", "nakhon/device.pem",
                                          "nakhon/device.toml"]
        key = tar.getmember("nakhon/device.key")
        assert key.mode & 0o077 == 0
    for verb, status in (("suspend", "suspended"), ("resume", "active")):
        r = site.tech_cli("provision", "device", verb, "kk-aq-0508")
        assert r.returncode == 0 and f"kk-aq-0508: {status}" in r.stdout, r.stderr
    assert site.hub.call("DELETE", "/api/devices/kk-aq-0508", site.tech).status_code == 403
    assert site.hub.call("DELETE", "/api/devices/kk-aq-0508").json()["status"] == "retired"
    again = site.hub.call("POST", "/api/provision/devices", site.tech,
                          json={"device": "kk-aq-0508", "node": "air-quality-pole", "site": "x"})
    assert again.status_code == 409 and "retired" in again.text
    listed = site.tech_cli("provision", "device", "list")
    assert any(line.split()[:2] == ["kk-aq-0508", "retired"] for line in listed.stdout.splitlines()), listed.stdout
    no_code = site.tech_cli("provision", "device", "code", "kk-aq-0508")
    assert no_code.returncode == 1 and "is retired: no enrollment code" in no_code.stderr


def test_an_unregistered_devices_messages_are_dead_lettered_as_unregistered(
        broker_factory: Callable[..., Broker], procs: dict[str, Callable[..., Any]]) -> None:
    # a hub enforcing the registry on a broker that lets the device in (password accounts, no deployment)
    b = broker_factory(accounts={"nakhon-hub": "hub-secret", "kk-aq-0509": "dev-secret"})
    pw = b.settings.directory / "hub.pw"
    pw.write_text("hub-secret")
    pw.chmod(0o600)
    hub = procs["hub"](b.port, "--registry", "enforce", "--username", "nakhon-hub", "--password-file", str(pw))
    dpw = b.settings.directory / "dev.pw"
    dpw.write_text("dev-secret")
    dpw.chmod(0o600)
    procs["agent"]("kk-aq-0509", b.port, drivers=[fast_air(interval_s=0.2)], username="kk-aq-0509",
                   password_file=dpw)
    letters = wait_for(lambda: hub.get("/api/deadletters", reason="unregistered"), 30, "unregistered dead letters")
    assert letters[0]["topic"].startswith("nakhon/kk-aq-0509/up/")
    assert "not active in the registry" in letters[0]["detail"]
    assert [d for d in hub.get("/api/devices") if d["device"] == "kk-aq-0509"] == []
    metrics = httpx.get(f"{hub.url}/metrics", headers=hub.auth).text
    assert 'nakhon_deadletters_total{reason="unregistered"}' in metrics
    assert json.loads(json.dumps(letters))[0]["reason"] == "unregistered"


@pytest.mark.parametrize("node", config_templates.nodes())
def test_every_node_template_renders_a_valid_tls_config(tmp_path: Path, node: str) -> None:
    from edge import config as edge_config
    from hub.provision.registry import Entry, Status

    entry = Entry("kk-test-0001", node, "Khon Kaen \u0e02\u0e2d\u0e19\u0e41\u0e01\u0e48\u0e19", 16.4, 102.8,
                  Status.ACTIVE, 0.0, "tech")
    for name in (config_templates.CA_FILE, config_templates.CERT_FILE, config_templates.KEY_FILE):
        (tmp_path / name).write_text("x")
    (tmp_path / config_templates.KEY_FILE).chmod(0o600)
    path = tmp_path / "device.toml"
    path.write_text(config_templates.render(entry, "mqtt.example", 8883, "nakhon"))
    loaded = edge_config.load(path)
    assert loaded.device.device == "kk-test-0001" and loaded.device.broker.tls
    assert loaded.device.broker.port == 8883 and loaded.device.site == entry.site
    assert loaded.resolve(loaded.device.broker.cert_file or Path()) == tmp_path / "device.pem"


def test_a_broker_restored_without_the_devices_access_gets_it_back_from_the_registry(site: Site) -> None:
    folder = site.enrolled("kk-aq-0510")
    chosen, _ = deployment.load(site.base)
    site.broker.stop()
    site.paths.dynsec.write_text(json.dumps(deployment.access(chosen, [])))  # as init wrote it: no device
    site.broker.start()
    client = device_client(site.broker.port, site.paths.chain, folder / "device.pem", folder / "device.key")
    assert client.connected.wait(10), client.refused
    wait_for(lambda: client.publish("nakhon/kk-aq-0510/up/status") == 0, 30,
             "the hub to grant the active device its topics again")
    assert client.publish("nakhon/kk-aq-0504/up/status") == NOT_AUTHORIZED
    client.close()


def test_the_technician_role_registers_but_neither_retires_nor_commands(hub_app: HubApp) -> None:
    tech = hub_app.client("technician")
    body = {"device": "kk-aq-0601", "node": "air-quality-pole", "site": "x"}
    made = tech.post("/api/provision/devices", json=body)
    assert made.status_code == 201 and made.json()["status"] == "pending"
    assert re.fullmatch(r"[A-Z2-7]{24}", made.json()["code"])  # typed after --code: never a leading "-"
    assert code_digest(made.json()["code"].lower()) == code_digest(made.json()["code"])
    assert tech.post("/api/provision/devices", json=body).status_code == 409
    assert tech.post("/api/provision/devices", json={**body, "device": "kk-aq-0602", "node": "toaster"}
                     ).status_code == 400
    assert tech.delete("/api/devices/kk-aq-0601").status_code == 403
    assert tech.post("/api/devices/kk-aq-0601/commands", json={"name": "ping"}).status_code == 403
    assert hub_app.client("viewer").post("/api/provision/devices/kk-aq-0601/suspend").status_code == 403
    # a hub without a deployment has no CA to sign with: enrollment is refused, not failed
    csr = pki.make_csr("x", pki.new_key()).decode()
    refused = hub_app.anonymous().post("/api/provision/enroll", json={"code": made.json()["code"], "csr": csr})
    assert refused.status_code == 409 and "no issuing CA" in refused.text


def test_init_as_root_gives_the_broker_its_files_and_nobody_else(request: pytest.FixtureRequest) -> None:
    import grp
    import pwd

    # the services' users must reach the folder, as they reach /etc/nakhon (pytest's own tmp folders are 0700)
    reachable = Path(tempfile.mkdtemp(prefix="nakhon-init-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(reachable, ignore_errors=True))
    reachable.chmod(0o755)
    base = reachable / "deployment"
    notes = deployment.init(base, deployment.Deployment(device_port=free_port(), hub_port=free_port()),
                            hub_user="nobody")
    _, paths = deployment.load(base)
    conf = paths.conf.read_text().splitlines()
    if os.geteuid() != 0:
        assert f"user {pwd.getpwuid(os.geteuid()).pw_name}" in conf and "the broker runs as" in notes[-1]
        return
    assert "user mosquitto" in conf
    group = grp.getgrnam("mosquitto").gr_gid
    for path in (paths.conf, paths.server_key, paths.passwd):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, group, 0o640), path
    assert paths.data.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    assert paths.dynsec.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    assert (paths.root_key.stat().st_uid, paths.root_key.stat().st_mode & 0o777) == (0, 0o600)
    nobody = pwd.getpwnam("nobody").pw_uid
    for secret in (paths.issuing_key, paths.hub_password, paths.https_key):
        assert (secret.stat().st_uid, secret.stat().st_mode & 0o777) == (nobody, 0o600)
    assert (paths.crl.parent.stat().st_uid, paths.crl.parent.stat().st_gid) == (nobody, group)

    def as_user(user: str, script: str) -> int:
        return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script], capture_output=True,
                              timeout=30).returncode

    # the hub's service user reads what the hub needs and writes the CRL; the broker's reads its own files
    hub_reads = " && ".join(f"test -r {f}" for f in (paths.issuing_key, paths.hub_password, paths.https_key,
                                                     paths.chain, paths.settings, paths.issuing_cert))
    assert as_user("nobody", f"{hub_reads} && touch {paths.crl.parent}/.probe") == 0
    assert as_user("nobody", f"test -r {paths.root_key} || test -r {paths.server_key} || test -r {paths.conf}") != 0
    broker_reads = " && ".join(f"test -r {f}" for f in (paths.conf, paths.server_key, paths.crl, paths.chain,
                                                        paths.passwd))
    assert as_user("mosquitto", broker_reads) == 0
    assert as_user("mosquitto", f"test -r {paths.issuing_key} || test -r {paths.hub_password}") != 0


def test_repeated_refused_enrollments_from_one_address_are_slowed(tmp_path: Path) -> None:
    import getpass

    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, build
    from hub.store.sqlite import SQLiteStore

    deployment.init(tmp_path / "dep", deployment.Deployment(), broker_user=getpass.getuser())
    app, store, _ = build(HubSettings(data=tmp_path / "hub", ingest=IngestSettings(port=free_port()),
                                      deployment=tmp_path / "dep"))
    assert isinstance(store, SQLiteStore)
    store.open()
    try:
        client = HubApp(app, store).anonymous()
        csr = pki.make_csr("x", pki.new_key()).decode()

        def attempt() -> float:
            started = time.monotonic()
            r = client.post("/api/provision/enroll", json={"code": "not-a-code-at-all", "csr": csr})
            assert r.status_code == 403 and "unknown enrollment code" in r.text
            return time.monotonic() - started

        assert max(attempt() for _ in range(3)) < 0.9
        assert attempt() >= 0.9
        refusals = [a.action for a in AuditLog(store).entries(obj="device/enrollment")]
        assert refusals == ["device.enroll_refused"] * 4
    finally:
        store.close()


def printed_command(printed: str) -> list[str]:
    """The enroll command ``provision device add`` printed (the same text as its QR code), without ``sudo``."""
    found = re.search(r"on the device, run:\n    sudo nakhon (agent enroll [^\n]+)\n", printed)
    assert found, printed
    return found.group(1).split()


def test_the_code_pins_the_deployments_ca_so_enroll_needs_no_ca_file(site: Site) -> None:
    root = pki.load_cert(site.paths.root_cert)
    openssl = subprocess.run(["openssl", "x509", "-in", str(site.paths.root_cert), "-noout", "-fingerprint",
                              "-sha256"], capture_output=True, text=True, check=True).stdout
    added = site.tech_cli("provision", "device", "add", "kk-aq-0512", "--node", "air-quality-pole", "--site", "x",
                          "--out", str(site.tmp))
    assert added.returncode == 0, added.stderr
    command = printed_command(added.stdout)
    pin = command[command.index("--ca-sha256") + 1]
    assert pin == pki.fingerprint(root) == pki.normal_fingerprint(openssl.split("=", 1)[1])
    assert "--ca" not in command

    wrong = site.tmp / "pi-0512-wrong"
    bad_pin = pki.fingerprint(pki.create_ca("Another town")[1])
    refused = site.cli(*[bad_pin if word == pin else word for word in command], "--dir", str(wrong))
    assert refused.returncode == 1
    assert "not your deployment's hub" in refused.stderr and bad_pin in refused.stderr, refused.stderr
    assert not (wrong / "device.key").exists()
    typo = site.cli(*[pin[:-1] if word == pin else word for word in command], "--dir", str(wrong))
    assert typo.returncode == 1 and "64 hex digits" in typo.stderr

    pi = site.tmp / "pi-0512"
    done = site.cli(*command, "--dir", str(pi))  # the code is still unused: the refusals sent nothing
    assert done.returncode == 0, done.stderr
    assert pki.root_of((pi / "ca.pem").read_bytes()) == root
    assert pki.load_cert(pi / "device.pem").subject.rfc4514_string().startswith("CN=kk-aq-0512")

    # --ca stays an alternative, checked against the pin when both are given
    code = site.tech_cli("provision", "device", "code", "kk-aq-0512")
    assert code.returncode == 0, code.stderr
    with_file = site.cli("agent", "enroll", "--hub", site.hub.url, "--code", code_in(code.stdout), "--ca",
                         str(site.paths.chain), "--ca-sha256", bad_pin, "--dir", str(site.tmp / "pi-0512-file"))
    assert with_file.returncode == 1 and "not your deployment's hub" in with_file.stderr


def test_a_pinned_root_does_not_vouch_for_a_ca_it_did_not_sign(site: Site) -> None:
    root = pki.load_cert(site.paths.root_cert)
    intruder = pki.create_ca("Someone in between")[1]
    chain = pki.cert_pem(root) + pki.cert_pem(intruder)
    with pytest.raises(pki.PinMismatch, match="did not sign"):
        pki.pinned_chain(chain, pki.fingerprint(root))
    assert pki.pinned_chain(site.paths.chain.read_bytes(), pki.fingerprint(root)) == root


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    from hub.errors import HubConfigError
    from hub.ingest.consumer import IngestSettings
    from hub.serve import HubSettings, serve

    settings = HubSettings(data=tmp_path / "hub", ingest=IngestSettings(port=free_port()), http_host="0.0.0.0",
                           deployment=tmp_path / "dep", https=False)
    with pytest.raises(HubConfigError, match="loopback"):
        serve(settings)
    assert not (tmp_path / "hub").exists()  # refused before anything was made
