"""``nakhon agent check --connect``: everything a device needs before it goes live, one line per step.

Each step prints a tick (passed), ``!`` (passed with a warning), a cross (failed, with what to do next) or a
dot (skipped because an earlier step failed). The steps: the config is valid; every file it names is readable
by the service user and the outbox folder writable; each driver's device is present (or simulated); one
reading from each polled driver; the broker's name resolves and its port answers; the TLS handshake and the
device certificate's dates; MQTT authentication; a status publish acknowledged on the device's own topic;
the system clock synchronised (or a GPS clock source). The command exits 0 only when no step failed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pwd
import queue
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge import config as config_module
from edge.agents.clock import system_clock_state
from edge.contract import DeviceState, Status, now, topic
from edge.drivers import ClockSource, DriverConfig, DriverKind, PolledDriver
from edge.errors import ConfigError, DriverError

SERVICE_USER = "nakhon"
CERT_WARN_DAYS = 30
NET_TIMEOUT_S = 5.0
CERT_REFUSAL_WAIT_S = 1.0


class Verdict(StrEnum):
    """How a step ended."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


MARKS = {Verdict.OK: "✓", Verdict.WARN: "!", Verdict.FAIL: "✗", Verdict.SKIP: "·"}


@dataclass(frozen=True)
class Outcome:
    """One line of the check: the step, how it ended, what was seen, and what to do when it failed."""

    step: str
    verdict: Verdict
    detail: str
    fix: str | None = None

    def line(self) -> str:
        """The line as printed (and the fix below it, indented)."""
        text = f"{MARKS[self.verdict]} {self.step}: {self.detail}"
        return text + (f"\n    → {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Account:
    """The user the agent runs as, whose permissions the file checks apply."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> Account:
        """Look a user up in the system's user database; raise KeyError when there is none."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    @classmethod
    def default(cls) -> Account:
        """``nakhon`` when run as root on a device that has it, else the user running the check."""
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                return cls.named(SERVICE_USER)
        return cls.named(pwd.getpwuid(os.geteuid()).pw_name)

    def may(self, path: Path, want: int) -> bool:
        """True when the permission bits let this user ``want`` (``os.R_OK | os.W_OK | os.X_OK``) ``path``,
        every folder above it included (POSIX ACLs are not read)."""
        try:
            chain = [path, *[p for p in path.absolute().parents]]
            return all(self._bits(p, want if p == path else os.X_OK) for p in chain)
        except OSError:
            return False

    def _bits(self, path: Path, want: int) -> bool:
        if self.uid == 0:
            return True
        st = path.stat()
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return (st.st_mode >> shift) & want == want


ClockProbe = Callable[[], tuple[bool | None, str]]
"""Returns whether the system clock is synchronised (None: unknown) and what was asked."""


def probe_clock() -> tuple[bool | None, str]:
    """``timedatectl show -p NTPSynchronized`` where systemd runs, else the kernel's adjtimex status."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                              text=True, timeout=5, check=False)
        if done.returncode == 0 and done.stdout.strip() in {"yes", "no"}:
            return done.stdout.strip() == "yes", "timedatectl NTPSynchronized"
    return system_clock_state().synchronized, "the kernel's adjtimex status"


# -- files ---------------------------------------------------------------------------------------------
def _file_outcomes(loaded: config_module.LoadedConfig, account: Account) -> Iterator[Outcome]:
    broker = loaded.device.broker
    named: list[tuple[str, Path]] = [(f"broker.{key}", getattr(broker, key)) for key in
                                     ("ca_file", "cert_file", "key_file", "password_file")
                                     if getattr(broker, key) is not None]
    for index, (_, conf) in enumerate(loaded.drivers):
        named += [(f"drivers[{index}].{key}", value) for key, value in conf
                  if isinstance(value, Path) and not key.startswith("sim_") and key != "devices_dir"]
    for key, path in [("config", loaded.path), *[(k, loaded.resolve(p)) for k, p in named]]:
        if not path.is_file():
            yield Outcome(f"file {key}", Verdict.FAIL, f"{path} does not exist",
                          "copy it from the device's bundle, or correct the path in the config")
        elif not account.may(path, os.R_OK):
            yield Outcome(f"file {key}", Verdict.FAIL, f"{path} is not readable by user {account.name}",
                          f"sudo chown {account.name} {path} && sudo chmod 600 {path}")
        elif key in {"broker.key_file", "broker.password_file"} and path.stat().st_mode & 0o077:
            yield Outcome(f"file {key}", Verdict.WARN, f"{path} is readable by other users",
                          f"sudo chmod 600 {path}")
        else:
            yield Outcome(f"file {key}", Verdict.OK, f"{path} readable by {account.name}")
    outbox = loaded.resolve(loaded.device.outbox.path).parent
    existing = next(p for p in (outbox, *outbox.parents) if p.exists())
    if account.may(existing, os.W_OK | os.X_OK):
        yield Outcome("outbox folder", Verdict.OK, f"{outbox} writable by {account.name}")
    else:
        yield Outcome("outbox folder", Verdict.FAIL, f"{existing} is not writable by user {account.name}",
                      f"sudo install -d -o {account.name} -m 700 {outbox}")


# -- devices -------------------------------------------------------------------------------------------
def _device_outcome(kind: DriverKind, conf: DriverConfig, account: Account) -> Outcome:
    """The driver's own presence check, then the service user's permissions on the file it opens."""
    step = f"device {conf.name}"
    if kind.present is None:
        return Outcome(step, Verdict.OK, f"{kind.kind} needs no device file")
    found = kind.present(conf)
    if not found.ok:
        return Outcome(step, Verdict.FAIL, found.detail, found.fix)
    if found.device_file is not None and not account.may(Path(found.device_file), os.R_OK | os.W_OK):
        return Outcome(step, Verdict.FAIL, f"{found.device_file} exists but user {account.name} may not open it",
                       f"sudo usermod -aG {found.group or 'GROUP'} {account.name}, then restart the agent")
    return Outcome(step, Verdict.OK, found.detail)


def _read_once(kind: DriverKind, conf: DriverConfig, timeout: float) -> tuple[Outcome, Any]:
    driver = kind.build(conf)
    assert isinstance(driver, PolledDriver)
    step = f"reading {conf.name}"

    def sample() -> dict[str, Any]:
        driver.open()
        return driver.read()

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"check-{conf.name}")
    try:
        values = pool.submit(sample).result(timeout)
    except concurrent.futures.TimeoutError:
        return Outcome(step, Verdict.FAIL, f"no reading within {timeout:.0f} s",
                       "check the sensor's power and wiring (docs/drivers/)"), None
    except DriverError as err:
        return Outcome(step, Verdict.FAIL, str(err), "check the sensor's power and wiring (docs/drivers/)"), None
    finally:
        driver.close()
        pool.shutdown(wait=False)
    shown = ", ".join(f"{q}={v}" for q, v in values.items()) or "(no values this time)"
    return Outcome(step, Verdict.OK, shown), driver


# -- broker --------------------------------------------------------------------------------------------
_WRONG_CA = ("the broker's certificate is not signed by the CA in broker.ca_file",
             "wrong CA file: use the ca.pem of this deployment (from the device's bundle)")
_WRONG_HOST = ("broker.host does not match the names in the broker's certificate",
               "set broker.host to the name the hub operator gave (the one in the broker's certificate)")
VERIFY_ERRORS: dict[int, tuple[str, str]] = {
    10: ("the broker's certificate has expired", "the hub operator must renew the broker's certificate"),
    18: _WRONG_CA, 19: _WRONG_CA, 20: _WRONG_CA, 21: _WRONG_CA,
    62: _WRONG_HOST, 64: _WRONG_HOST,
}
"""OpenSSL verify codes -> what the technician reads and what to do."""

CONNACK_ERRORS: dict[int, tuple[str, str]] = {
    0x84: ("the broker does not speak MQTT v5", "the broker must be Mosquitto 2 or newer"),
    0x85: ("the broker refused the client id", "broker.username must be the device id"),
    0x86: ("wrong user name or password (or no such account on the broker)",
           "broker.password_file must hold this device's password, and broker.username (default: the device id) "
           "its account; ask the hub operator to check the device's account"),
    0x87: ("not authorised: the broker has no active account for this device",
           "ask the hub operator to register and approve the device (nakhon provision device add)"),
    0x88: ("the broker is unavailable", "try again; if it stays, tell the hub operator"),
    0x8A: ("this device is banned by the broker", "ask the hub operator why the device was suspended"),
}
"""MQTT v5 CONNACK reason codes -> what the technician reads and what to do."""


def _tls_context(loaded: config_module.LoadedConfig) -> ssl.SSLContext:
    b = loaded.device.broker
    ctx = ssl.create_default_context(cafile=str(loaded.resolve(b.ca_file)) if b.ca_file else None)
    if b.cert_file:
        ctx.load_cert_chain(str(loaded.resolve(b.cert_file)), str(loaded.resolve(b.key_file)) if b.key_file else None)
    return ctx


def _certificate_dates(path: Path, at: datetime) -> Outcome:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        return Outcome("certificate", Verdict.FAIL, f"{path} is not a PEM certificate ({err})",
                       "copy the certificate from the device's bundle again")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if end <= at:
        return Outcome("certificate", Verdict.FAIL, f"the device certificate expired on {end:%Y-%m-%d %H:%M} UTC",
                       "get a new certificate: on the hub, nakhon provision device rotate DEVICE (or a new bundle)")
    if start > at:
        return Outcome("certificate", Verdict.FAIL,
                       f"the device certificate is valid only from {start:%Y-%m-%d %H:%M} UTC; this clock says "
                       f"{at:%Y-%m-%d %H:%M} UTC", "set the clock right first (see the clock line)")
    left = end - at
    if left < timedelta(days=CERT_WARN_DAYS):
        return Outcome("certificate", Verdict.WARN, f"the device certificate expires in {left.days} day(s), "
                       f"on {end:%Y-%m-%d}", "rotate it soon: on the hub, nakhon provision device rotate DEVICE")
    return Outcome("certificate", Verdict.OK, f"valid until {end:%Y-%m-%d} ({left.days} days)")


class _Session:
    """A blocking paho MQTT v5 client for the check: connect, one publish, disconnect."""

    def __init__(self, loaded: config_module.LoadedConfig, tls: ssl.SSLContext | None) -> None:
        cfg = loaded.device
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.username}-check",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set(cfg.username, loaded.password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.events.put(("connack", rc))
        self.client.on_publish = lambda c, u, mid, rc, props: self.events.put(("puback", rc))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.events.put(("closed", rc))

    def next(self, timeout: float) -> tuple[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return "timeout", None


def _mqtt_outcomes(loaded: config_module.LoadedConfig, tls: ssl.SSLContext | None) -> Iterator[Outcome]:
    cfg = loaded.device
    b = cfg.broker
    session = _Session(loaded, tls)
    try:
        session.client.connect(b.host, b.port, keepalive=30)
    except (OSError, ssl.SSLError) as err:
        yield Outcome("MQTT login", Verdict.FAIL, f"could not open the MQTT session: {err}",
                      "run the check again; the broker may be restarting")
        return
    session.client.loop_start()
    try:
        kind, rc = session.next(10)
        if kind == "connack" and isinstance(rc, ReasonCode) and not rc.is_failure:
            yield Outcome("MQTT login", Verdict.OK, f"accepted as user {cfg.username}")
        elif kind == "connack" and isinstance(rc, ReasonCode):
            # Mosquitto 2.0 answers a wrong password with 0x87 too: with a password, that is the likely cause
            code = 0x86 if rc.value == 0x87 and loaded.password is not None else rc.value
            what, fix = CONNACK_ERRORS.get(code, (f"refused: {rc.getName()}", "tell the hub operator"))
            yield Outcome("MQTT login", Verdict.FAIL, f"{what} (user {cfg.username}, reason code "
                          f"0x{rc.value:02X})", fix)
            return
        else:
            refused = b.cert_file is not None
            yield Outcome("MQTT login", Verdict.FAIL,
                          "the broker closed the connection without answering" +
                          (": it refused the device certificate (revoked, expired, or from another CA)"
                           if refused else ""),
                          "ask the hub operator whether the device is active, and get a new certificate"
                          if refused else "check broker.tls and broker.port with the hub operator")
            return
        where = topic(b.root, cfg.device, "up/status")
        payload = Status(device=cfg.device, state=DeviceState.OFFLINE, at=now(), node=cfg.node,
                         site=cfg.site).to_json()
        info = session.client.publish(where, payload, qos=1)
        kind, rc = session.next(10)
        if info.rc != paho.MQTT_ERR_SUCCESS or kind != "puback" or not isinstance(rc, ReasonCode):
            yield Outcome("status publish", Verdict.FAIL, f"no acknowledgement for {where} (the broker closed the "
                          "connection: it may refuse this topic)", "ask the hub operator to check the device's ACL")
        elif rc.is_failure:
            yield Outcome("status publish", Verdict.FAIL,
                          f"the broker refused a publish on {where}: {rc.getName()} (0x{rc.value:02X})",
                          f"the account {cfg.username} may not write under {b.root}/{cfg.device}/up/: the "
                          "credentials belong to another device, or the device is not active")
        else:
            yield Outcome("status publish", Verdict.OK, f"{where} acknowledged ({rc.getName()})")
    finally:
        session.client.disconnect()
        session.client.loop_stop()


def _handshake(tls: ssl.SSLContext, raw: socket.socket, host: str, port: int, client_cert: bool) -> Outcome:
    """The TLS handshake, then a short wait: under TLS 1.3 a broker refuses a client certificate only after it."""
    refused_fix = "ask the hub operator whether the device is registered and active, and get a new certificate"
    plain_fix = "broker.tls is on but this port is a plain MQTT listener: use the TLS port (8883)"
    try:
        with tls.wrap_socket(raw, server_hostname=host) as wrapped:
            version = wrapped.version()
            wrapped.settimeout(CERT_REFUSAL_WAIT_S)
            try:
                closed = wrapped.recv(1) == b""
            except TimeoutError:
                closed = False
    except ssl.SSLCertVerificationError as err:
        what, fix = VERIFY_ERRORS.get(err.verify_code, (err.verify_message, "tell the hub operator"))
        return Outcome("TLS", Verdict.FAIL, f"{what} ({err.verify_message})", fix)
    except ssl.SSLError as err:
        if "ALERT" in str(err.reason):
            return Outcome("TLS", Verdict.FAIL, f"the broker refused the device certificate ({err.reason})",
                           refused_fix)
        return Outcome("TLS", Verdict.FAIL, f"no TLS on {host}:{port} ({err.reason or err})", plain_fix)
    except OSError as err:  # Mosquitto drops a TLS hello on a plain listener without a word
        return Outcome("TLS", Verdict.FAIL, f"the broker closed the connection during the TLS handshake "
                       f"({err.strerror or err})", "broker.tls is on but this port is probably a plain MQTT "
                       "listener: use the TLS port (8883)")
    if closed:
        return Outcome("TLS", Verdict.FAIL, "the broker closed the connection right after the handshake"
                       + (": it refused the device certificate" if client_cert else ""), refused_fix)
    return Outcome("TLS", Verdict.OK, f"handshake done ({version}), broker certificate verified against "
                   "broker.ca_file" + (", device certificate accepted" if client_cert else ""))


def _broker_outcomes(loaded: config_module.LoadedConfig, clock_now: datetime) -> Iterator[Outcome]:
    b = loaded.device.broker
    try:
        addresses = socket.getaddrinfo(b.host, b.port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        yield Outcome("broker DNS", Verdict.FAIL, f"cannot resolve {b.host!r} ({err.strerror})",
                      "check broker.host, the network cable or SIM, and /etc/resolv.conf")
        return
    yield Outcome("broker DNS", Verdict.OK, f"{b.host} is {addresses[0][4][0]}")
    try:
        raw = socket.create_connection((b.host, b.port), timeout=NET_TIMEOUT_S)
    except ConnectionRefusedError:
        yield Outcome("broker TCP", Verdict.FAIL, f"nothing listens on {b.host}:{b.port} (connection refused)",
                      "check broker.port (8883 for TLS devices, 1883 without) with the hub operator, and that "
                      "the broker runs")
        return
    except TimeoutError:
        yield Outcome("broker TCP", Verdict.FAIL, f"no answer from {b.host}:{b.port} in {NET_TIMEOUT_S:.0f} s",
                      "a firewall drops the connection, or broker.host is the wrong address")
        return
    except OSError as err:
        yield Outcome("broker TCP", Verdict.FAIL, f"cannot reach {b.host}:{b.port} ({err.strerror})",
                      "check the network (ip route; ping the hub)")
        return
    yield Outcome("broker TCP", Verdict.OK, f"{b.host}:{b.port} answers")
    tls: ssl.SSLContext | None = None
    with raw:
        if not b.tls:
            yield Outcome("TLS", Verdict.WARN, "broker.tls is off: the password travels unencrypted",
                          "a city deployment connects devices with TLS (broker.tls = true, port 8883)")
        else:
            if b.cert_file is not None:
                dates = _certificate_dates(loaded.resolve(b.cert_file), clock_now)
                yield dates
                if dates.verdict is Verdict.FAIL:
                    return
            try:
                tls = _tls_context(loaded)
            except ssl.SSLError as err:
                yield Outcome("TLS", Verdict.FAIL, f"the key does not fit the certificate or a file is damaged "
                              f"({err.reason or err})", "copy key and certificate from the same bundle")
                return
            handshake = _handshake(tls, raw, b.host, b.port, b.cert_file is not None)
            yield handshake
            if handshake.verdict is Verdict.FAIL:
                return
    yield from _mqtt_outcomes(loaded, tls)


# -- the whole check -----------------------------------------------------------------------------------
def run(path: Path, *, simulate: bool = False, account: Account | None = None, clock: ClockProbe = probe_clock,
        read_timeout: float = 45.0) -> Iterator[Outcome]:
    """Every step of the check in order; a step that cannot run because an earlier one failed is skipped."""
    try:
        loaded = config_module.load(path, secrets=False)
    except ConfigError as err:
        yield Outcome("config", Verdict.FAIL, str(err).replace("\n", "\n    "), "correct the lines above")
        return
    drivers = ", ".join(f"{c.name} ({k.kind})" for k, c in loaded.drivers) or "none"
    yield Outcome("config", Verdict.OK, f"{path} is valid; device {loaded.device.device}, drivers: {drivers}")
    who = account or Account.default()
    yield from _file_outcomes(loaded, who)

    clocks: list[ClockSource] = []
    with contextlib.ExitStack() as simulators:
        for kind, conf in loaded.drivers:
            if simulate and kind.simulate is not None:
                try:
                    conf = simulators.enter_context(kind.simulate(conf))
                except DriverError as err:
                    yield Outcome(f"device {conf.name}", Verdict.FAIL, f"its simulator did not start: {err}")
                    continue
                yield Outcome(f"device {conf.name}", Verdict.OK, "simulated (--simulate)")
            else:
                present = _device_outcome(kind, conf, who)
                yield present
                if present.verdict is Verdict.FAIL:
                    if kind.polled:
                        yield Outcome(f"reading {conf.name}", Verdict.SKIP, "skipped: its device is missing")
                    continue
            if kind.polled:
                reading, driver = _read_once(kind, conf, read_timeout)
                yield reading
                if isinstance(driver, ClockSource):
                    clocks.append(driver)
    clock_now = datetime.now(UTC)
    try:
        loaded = config_module.load(path)
    except ConfigError as err:
        first = str(err).splitlines()[0].split(": ", 1)[-1]
        yield Outcome("broker", Verdict.SKIP, f"skipped: its files are not usable yet ({first})")
    else:
        yield from _broker_outcomes(loaded, clock_now)

    synced, what = clock()
    gps = next((c for c in clocks if c.time_offer() is not None), None)
    if synced:
        yield Outcome("clock", Verdict.OK, f"synchronised ({what})")
    elif gps is not None:
        yield Outcome("clock", Verdict.OK, f"not synchronised ({what}), but the GPS gives the time: readings "
                      "are stamped with it")
    else:
        yield Outcome("clock", Verdict.FAIL, f"{'not synchronised' if synced is False else 'unknown'} ({what}); "
                      f"this clock says {clock_now:%Y-%m-%d %H:%M:%S} UTC",
                      "a Pi has no battery clock: it needs NTP. Check the network and timedatectl "
                      "timesync-status; set NTP= in /etc/systemd/timesyncd.conf to the municipality's time server")


def main(path: Path, simulate: bool, user: str | None, print_line: Callable[[str], None] = print,
         clock: ClockProbe = probe_clock) -> int:
    """Print every step; 0 when none failed, 1 otherwise."""
    try:
        account = Account.named(user) if user else Account.default()
    except KeyError:
        print_line(f"✗ service user: no user {user!r} on this machine (install-agent.sh creates {SERVICE_USER!r})")
        return 1
    print_line(f"checking {path} for user {account.name}")
    failed = passed = 0
    for outcome in run(path, simulate=simulate, account=account, clock=clock):
        print_line(outcome.line())
        failed += outcome.verdict is Verdict.FAIL
        passed += outcome.verdict in (Verdict.OK, Verdict.WARN)
    if failed:
        print_line(f"{failed} check(s) failed, {passed} passed: fix the lines marked ✗ and run the check again")
        return 1
    print_line(f"all {passed} checks passed: the device is ready to go live")
    return 0
