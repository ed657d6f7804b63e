"""``nakhon agent check --connect`` against a real Mosquitto: each broken setup gets its own line and exit 1."""

from __future__ import annotations

import getpass
import ipaddress
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.agents import check
from edge.agents.check import Account, Outcome, Verdict
from hub.broker import free_port
from tests.conftest import ROOT, Broker, wait_for

DEVICE = "kk-aq-0001"


def synced() -> tuple[bool | None, str]:
    """A clock probe that says synchronised (the test machine's own clock state must not decide a test)."""
    return True, "test clock"


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    cert: Path
    key: Path


class CertAuthority:
    """A certificate authority made with ``cryptography`` for one test."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = datetime.now(UTC) - timedelta(days=1)
        self.name = subject
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(start).not_valid_after(start + timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, days: float = 365, expired: bool = False, server: tuple[str, ...] = ()) -> Issued:
        """A leaf certificate for ``cn``; ``expired`` ended yesterday; ``server`` names (DNS or IP) make it a
        server's."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.now(UTC) - timedelta(days=10 if expired else 1)
        end = datetime.now(UTC) - timedelta(days=1) if expired else datetime.now(UTC) + timedelta(days=days)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in server]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{cn}-{'expired' if expired else int(days)}"
        issued = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued


@dataclass
class TlsBroker:
    """Mosquitto with one TLS listener that requires a client certificate and takes its CN as user name."""

    port: int
    ca: CertAuthority
    process: subprocess.Popen[bytes]


@pytest.fixture
def tls_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TlsBroker]:
    """A TLS Mosquitto on a free loopback port, stopped by PID at the end; its certificate names localhost and
    127.0.0.1 unless the test gives other names (indirect parametrisation)."""
    folder = tmp_path / "tls-broker"
    folder.mkdir()
    ca = CertAuthority(folder, "city-ca")
    server = ca.issue("broker", server=getattr(request, "param", ("localhost", "127.0.0.1")))
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join([
        "per_listener_settings false", f"listener {port} 127.0.0.1", f"user {getpass.getuser()}",
        f"cafile {ca.path}", f"certfile {server.cert}", f"keyfile {server.key}", "require_certificate true",
        "use_identity_as_username true", "allow_anonymous false", f"log_dest file {folder / 'mosquitto.log'}",
    ]) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)

    def listening() -> bool:
        assert process.poll() is None, (folder / "mosquitto.log").read_text(errors="replace")
        return "listen socket on port" in (folder / "mosquitto.log").read_text(errors="replace") \
            if (folder / "mosquitto.log").exists() else False

    wait_for(listening, 10, "the TLS broker to listen")
    yield TlsBroker(port, ca, process)
    process.send_signal(signal.SIGTERM)
    process.wait(10)


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Write a device config with one simulated sensor and the given ``[broker]`` lines and extra drivers."""

    def write(broker: dict[str, object], drivers: str = "", device: str = DEVICE) -> Path:
        lines = [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str | Path) else f"{k} = {str(v).lower()}"
                 for k, v in broker.items()]
        path = tmp_path / f"{device}.toml"
        path.write_text(f'device = "{device}"\n[broker]\nhost = "127.0.0.1"\n' + "\n".join(lines) +
                        f'\n[outbox]\npath = "{tmp_path / "outbox" / "outbox.sqlite"}"\n'
                        '[[drivers]]\nkind = "sim_air_quality"\nname = "pm"\n' + drivers)
        return path

    return write


def outcomes(path: Path) -> list[Outcome]:
    """Every step of the check, run in this process as the current user with a synchronised clock."""
    return list(check.run(path, account=Account.default(), clock=synced, read_timeout=20))


def failed(path: Path) -> dict[str, Outcome]:
    """The failed steps by name."""
    return {o.step: o for o in outcomes(path) if o.verdict is Verdict.FAIL}


def exit_code(path: Path) -> tuple[int, str]:
    """What ``check.main`` returns and prints (synchronised clock)."""
    printed: list[str] = []
    rc = check.main(path, False, None, printed.append, clock=synced)
    return rc, "\n".join(printed)


def device_tls(tls_broker: TlsBroker, issued: Issued, ca: Path | None = None) -> dict[str, object]:
    """``[broker]`` settings for a TLS device."""
    return {"port": tls_broker.port, "tls": True, "ca_file": str(ca or tls_broker.ca.path),
            "cert_file": str(issued.cert), "key_file": str(issued.key)}


@pytest.mark.broker
def test_tls_device_passes_every_step(tls_broker: TlsBroker, write_config: ConfigWriter) -> None:
    issued = tls_broker.ca.issue(DEVICE)
    path = write_config(device_tls(tls_broker, issued))
    seen = outcomes(path)
    assert [o for o in seen if o.verdict is not Verdict.OK] == []
    steps = [o.step for o in seen]
    for step in ("config", "file broker.ca_file", "file broker.key_file", "outbox folder", "device pm", "reading pm",
                 "broker DNS", "broker TCP", "certificate", "TLS", "MQTT login", "status publish", "clock"):
        assert step in steps
    assert f"nakhon/{DEVICE}/up/status acknowledged" in next(o.detail for o in seen if o.step == "status publish")
    rc, printed = exit_code(path)
    assert rc == 0, printed
    assert "all " in printed and "✗" not in printed


@pytest.mark.broker
def test_expired_certificate(tls_broker: TlsBroker, write_config: ConfigWriter) -> None:
    path = write_config(device_tls(tls_broker, tls_broker.ca.issue(DEVICE, expired=True)))
    bad = failed(path)
    assert list(bad) == ["certificate"]
    assert "the device certificate expired on" in bad["certificate"].detail
    assert "rotate" in (bad["certificate"].fix or "")
    assert exit_code(path)[0] == 1


@pytest.mark.broker
def test_certificate_expiring_soon_warns(tls_broker: TlsBroker, write_config: ConfigWriter) -> None:
    path = write_config(device_tls(tls_broker, tls_broker.ca.issue(DEVICE, days=10)))
    cert = next(o for o in outcomes(path) if o.step == "certificate")
    assert cert.verdict is Verdict.WARN
    assert "expires in 9 day(s)" in cert.detail or "expires in 10 day(s)" in cert.detail
    assert exit_code(path)[0] == 0


@pytest.mark.broker
def test_wrong_ca(tls_broker: TlsBroker, write_config: ConfigWriter, tmp_path: Path) -> None:
    other = CertAuthority(tmp_path, "another-ca")
    path = write_config(device_tls(tls_broker, tls_broker.ca.issue(DEVICE), ca=other.path))
    bad = failed(path)
    assert list(bad) == ["TLS"]
    assert "not signed by the CA in broker.ca_file" in bad["TLS"].detail
    assert "wrong CA file" in (bad["TLS"].fix or "")
    assert exit_code(path)[0] == 1


@pytest.mark.broker
def test_certificate_from_another_ca_is_refused_by_the_broker(tls_broker: TlsBroker, write_config: ConfigWriter,
                                                               tmp_path: Path) -> None:
    stranger = CertAuthority(tmp_path, "stranger-ca").issue(DEVICE)
    path = write_config(device_tls(tls_broker, stranger))
    bad = failed(path)
    assert list(bad) == ["TLS"]
    assert "refused the device certificate" in bad["TLS"].detail


@pytest.mark.broker
def test_tls_device_on_a_plain_port(broker: Broker, tls_broker: TlsBroker, write_config: ConfigWriter) -> None:
    settings = {**device_tls(tls_broker, tls_broker.ca.issue(DEVICE)), "port": broker.port}
    bad = failed(write_config(settings))
    assert list(bad) == ["TLS"]
    assert "plain MQTT listener" in (bad["TLS"].fix or "")


@pytest.mark.broker
def test_wrong_password(broker_factory: Callable[..., Broker], write_config: ConfigWriter, tmp_path: Path) -> None:
    b = broker_factory(accounts={DEVICE: "the-right-password"})
    secret = tmp_path / "broker.password"
    secret.write_text("not-the-password\n")
    secret.chmod(0o600)
    path = write_config({"port": b.port, "password_file": str(secret)})
    bad = failed(path)
    assert list(bad) == ["MQTT login"]
    assert "wrong user name or password" in bad["MQTT login"].detail
    assert "broker.password_file" in (bad["MQTT login"].fix or "")
    assert exit_code(path)[0] == 1
    secret.write_text("the-right-password\n")
    assert failed(path) == {}


@pytest.mark.broker
def test_another_devices_credentials_cannot_publish(broker_factory: Callable[..., Broker],
                                                    write_config: ConfigWriter, tmp_path: Path) -> None:
    b = broker_factory(accounts={DEVICE: "pw-1", "kk-aq-0002": "pw-2"})
    secret = tmp_path / "broker.password"
    secret.write_text("pw-2\n")
    secret.chmod(0o600)
    bad = failed(write_config({"port": b.port, "password_file": str(secret), "username": "kk-aq-0002"}))
    assert list(bad) == ["status publish"]
    assert f"refused a publish on nakhon/{DEVICE}/up/status" in bad["status publish"].detail


def test_wrong_port(write_config: ConfigWriter) -> None:
    path = write_config({"port": free_port()})
    bad = failed(path)
    assert list(bad) == ["broker TCP"]
    assert "nothing listens on 127.0.0.1:" in bad["broker TCP"].detail
    assert "broker.port" in (bad["broker TCP"].fix or "")
    seen = {o.step: o.verdict for o in outcomes(path)}
    assert "MQTT login" not in seen


def test_unknown_broker_host(write_config: ConfigWriter, tmp_path: Path) -> None:
    path = write_config({"port": 1883})
    path.write_text(path.read_text().replace('host = "127.0.0.1"', 'host = "no-such-hub.invalid"'))
    bad = failed(path)
    assert list(bad) == ["broker DNS"]
    assert "cannot resolve 'no-such-hub.invalid'" in bad["broker DNS"].detail


@pytest.mark.broker
def test_missing_serial_device(broker: Broker, write_config: ConfigWriter, tmp_path: Path) -> None:
    port = tmp_path / "ttyNOPE"
    path = write_config({"port": broker.port}, drivers=f'[[drivers]]\nkind = "pms5003"\nname = "dust"\n'
                                                         f'port = "{port}"\n')
    seen = {o.step: o for o in outcomes(path)}
    assert seen["device dust"].verdict is Verdict.FAIL
    assert f"serial port {port} does not exist" in seen["device dust"].detail
    assert "raspi-config" in (seen["device dust"].fix or "")
    assert seen["reading dust"].verdict is Verdict.SKIP
    assert [s for s, o in seen.items() if o.verdict is Verdict.FAIL] == ["device dust"]
    assert exit_code(path)[0] == 1


@pytest.mark.broker
def test_simulated_serial_device_gives_a_reading(broker: Broker, write_config: ConfigWriter) -> None:
    path = write_config({"port": broker.port}, drivers='[[drivers]]\nkind = "pms5003"\nname = "dust"\n'
                                                       'port = "/dev/nakhon-no-such-port"\nmode = "active"\n')
    seen = {o.step: o for o in check.run(path, simulate=True, account=Account.default(), clock=synced)}
    assert seen["device dust"].detail == "simulated (--simulate)"
    assert seen["reading dust"].verdict is Verdict.OK
    assert "pm2_5=" in seen["reading dust"].detail


def test_unreadable_key_and_unwritable_outbox(write_config: ConfigWriter, tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    key.write_text("secret")
    key.chmod(0o600)
    cert = tmp_path / "device.crt"
    cert.write_text("x")
    path = write_config({"port": free_port(), "cert_file": str(cert), "key_file": str(key)})
    me = Account.default()
    stranger = Account("stranger", me.uid + 4242, frozenset({me.uid + 4242}))
    seen = {o.step: o for o in check.run(path, account=stranger, clock=synced)}
    assert seen["file broker.key_file"].verdict is Verdict.FAIL
    assert f"{key} is not readable by user stranger" in seen["file broker.key_file"].detail
    assert seen["outbox folder"].verdict is Verdict.FAIL
    assert seen["file broker.key_file"].fix == f"sudo chown stranger {key} && sudo chmod 600 {key}"
    mine = {o.step: o.verdict for o in check.run(path, account=me, clock=synced)}
    assert mine["file broker.key_file"] is Verdict.OK
    assert mine["outbox folder"] is Verdict.OK


def test_unsynchronised_clock_fails_unless_a_gps_gives_the_time(write_config: ConfigWriter) -> None:
    path = write_config({"port": free_port()})
    steps = {o.step: o for o in check.run(path, account=Account.default(), clock=lambda: (False, "probe"))}
    assert steps["clock"].verdict is Verdict.FAIL
    assert "not synchronised (probe)" in steps["clock"].detail
    assert "NTP" in (steps["clock"].fix or "")


def test_invalid_config_stops_at_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('device = "kk-aq-0001"\n[broker]\nport = 0\n')
    seen = outcomes(path)
    assert [(o.step, o.verdict) for o in seen] == [("config", Verdict.FAIL)]
    assert "broker.port" in seen[0].detail


def test_cli_connect_flag_prints_lines_and_fails(write_config: ConfigWriter) -> None:
    path = write_config({"port": free_port()})
    done = subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", "--connect", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "✓ config:" in done.stdout
    assert "✗ broker TCP: nothing listens on" in done.stdout
    assert "check(s) failed" in done.stdout
    plain = subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode == 0, plain.stderr
    assert "valid; device kk-aq-0001" in plain.stdout
    alone = subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", "--simulate", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert alone.returncode == 2
    assert "--simulate and --user go with --connect" in alone.stderr


def test_missing_password_file_has_its_own_line_and_the_rest_still_runs(write_config: ConfigWriter,
                                                                         tmp_path: Path) -> None:
    secret = tmp_path / "secrets" / "broker.password"
    path = write_config({"port": free_port(), "password_file": str(secret)})
    seen = {o.step: o for o in outcomes(path)}
    assert seen["config"].verdict is Verdict.OK
    assert seen["file broker.password_file"].verdict is Verdict.FAIL
    assert f"{secret} does not exist" in seen["file broker.password_file"].detail
    assert seen["reading pm"].verdict is Verdict.OK
    assert seen["broker"].verdict is Verdict.SKIP
    assert [s for s, o in seen.items() if o.verdict is Verdict.FAIL] == ["file broker.password_file"]


def test_driver_presence_checks_without_simulate(write_config: ConfigWriter, tmp_path: Path) -> None:
    w1 = tmp_path / "w1"
    w1.mkdir()
    drivers = (f'[[drivers]]\nkind = "ds18b20"\nname = "air-temp"\ndevices_dir = "{w1}"\n'
               '[[drivers]]\nkind = "gpio"\nname = "sos"\ndevice = "button"\npin = 17\nevent = "sos"\n'
               'pin_factory = "mock"\n'
               '[[drivers]]\nkind = "modbus_meter"\nname = "meter"\nport = "socket://127.0.0.1:1"\n')
    path = write_config({"port": free_port()}, drivers=drivers)
    seen = {o.step: o for o in outcomes(path)}
    assert seen["device air-temp"].verdict is Verdict.FAIL
    assert f"no 1-wire probe 28-* in {w1}" in seen["device air-temp"].detail
    assert "dtoverlay=w1-gpio" in (seen["device air-temp"].fix or "")
    assert seen["device sos"].verdict is Verdict.OK and "mock pins" in seen["device sos"].detail
    assert seen["device meter"].verdict is Verdict.OK and "nothing to look for" in seen["device meter"].detail
    assert seen["device pm"].detail == "sim_air_quality needs no device file"
    probe = w1 / "28-0316a2799cff"
    probe.mkdir()
    (probe / "w1_slave").write_text("f1 01 4b 46 7f ff 0c 10 2d : crc=2d YES\nf1 01 4b 46 7f ff 0c 10 2d t=31062\n")
    seen = {o.step: o for o in outcomes(path)}
    assert seen["device air-temp"].detail == f"1-wire probe 28-0316a2799cff in {w1}"
    assert seen["reading air-temp"].detail == "temperature=31.062"


def test_gps_time_passes_the_clock_step_when_the_system_clock_is_not_synchronised(write_config: ConfigWriter) -> None:
    from edge.drivers._nmea_gps_sim import BusGps

    with BusGps(cold_start_s=0.0, rate_hz=5.0, seed=3) as receiver:
        path = write_config({"port": free_port()}, drivers=f'[[drivers]]\nkind = "nmea_gps"\nname = "gps"\n'
                                                           f'port = "{receiver.path}"\nvehicle_id = "kk-bus-07"\n')
        seen = {o.step: o for o in check.run(path, account=Account.default(), clock=lambda: (False, "probe"))}
    assert seen["device gps"].verdict is Verdict.OK
    assert "fix=True" in seen["reading gps"].detail
    assert seen["clock"].verdict is Verdict.OK
    assert "not synchronised (probe), but the GPS gives the time" in seen["clock"].detail


def test_card_reader_presence(tmp_path: Path) -> None:
    from edge.drivers import thai_id_card

    key = tmp_path / "citizen-ref.key"
    key.write_text("00" * 32 + "\n")
    conf = thai_id_card.Config(kind="thai_id_card", name="id-card", hmac_key_file=key, reader="Kiosk reader",
                               backend=thai_id_card.Backend.SIMULATED)
    gone = thai_id_card.present(conf)
    assert not gone.ok
    assert "pcscd does not answer" in gone.detail
    assert "systemctl enable --now pcscd.socket" in (gone.fix or "")
    with thai_id_card.simulate(conf) as running:
        found = thai_id_card.present(running)
        assert found.ok, found
        assert found.detail == f"card reader {running.reader} through pcscd"


@pytest.mark.broker
@pytest.mark.parametrize("tls_broker", [("hub.khonkaen.example",)], indirect=True)
def test_broker_host_not_in_the_brokers_certificate(tls_broker: TlsBroker, write_config: ConfigWriter) -> None:
    bad = failed(write_config(device_tls(tls_broker, tls_broker.ca.issue(DEVICE))))
    assert list(bad) == ["TLS"]
    assert "broker.host does not match the names in the broker's certificate" in bad["TLS"].detail
