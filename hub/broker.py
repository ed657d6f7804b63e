"""A Mosquitto broker for a deployment: generated config, password and ACL files, and its process.

Devices authenticate with their device id as username (``use_username_as_clientid true`` stops one device
from taking over another's session); the dynamic security plugin's ACLs, one role per device, let a device
write only under ``{root}/{device}/up/`` and subscribe and read only under ``{root}/{device}/down/``. Only
operators (the hub) may subscribe elsewhere, shared subscriptions (``$share/GROUP/...``) included.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hub.errors import BrokerError

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS_FROM = 10000
"""Where :func:`free_port` starts looking, below the kernel's ephemeral ports (32768 and up on Linux)."""


def _ephemeral_from() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """A TCP port that is free right now on ``host`` (with the ``span - 1`` ports after it free too).

    It is picked at random below the kernel's ephemeral range: a port from that range (what binding port 0
    gives) can be taken by any outgoing connection on the machine in the moment between this choice and the
    server's bind, which happens when many tests or services start at once.
    """
    top = _ephemeral_from() - span
    for _ in range(200):
        port = random.randint(LISTEN_PORTS_FROM, top) if top > LISTEN_PORTS_FROM else 0
        try:
            with contextlib.ExitStack() as held:
                for offset in range(span if port else 1):
                    probe = held.enter_context(socket.socket())
                    probe.bind((host, port + offset))
                    port = port or int(probe.getsockname()[1])
        except OSError:
            continue
        return port
    raise BrokerError(f"no free TCP port on {host} after 200 tries")


@dataclass(frozen=True)
class BrokerSettings:
    """What goes into a generated ``mosquitto.conf``."""

    directory: Path
    port: int
    host: str = "127.0.0.1"
    root: str = "nakhon"
    accounts: Mapping[str, str] | None = None
    """username -> password; None allows anonymous clients (tests only)."""
    operators: tuple[str, ...] = ("nakhon-hub",)
    """Usernames that may read and write the whole root (the hub)."""
    max_queued_messages: int = 1000
    max_packet_size: int = 1_048_576
    autosave_interval_s: int = 60


DYNAMIC_SECURITY_PLUGINS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")
"""Where Debian's mosquitto package puts the plugin (a multiarch folder on amd64, arm64 and armhf)."""


def dynamic_security_plugin() -> Path:
    """The dynamic security plugin of the installed Mosquitto."""
    for pattern in DYNAMIC_SECURITY_PLUGINS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    raise BrokerError("mosquitto_dynamic_security.so not found (Debian: apt-get install mosquitto)")


def _acl(acltype: str, topic: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def access_control(settings: BrokerSettings, users: Iterable[str]) -> dict[str, object]:
    """The dynamic security plugin's config: every account's ACL, subscriptions included; the rest is refused.

    Mosquitto's ``acl_file`` does not check subscriptions at all (only each delivery), so a device could join the
    hub's shared subscription ``$share/GROUP/{root}/+/up/#``: the broker then handed it its share of the fleet's
    uplink, refused the delivery, and those messages were lost. The plugin checks every SUBSCRIBE against the
    whole filter, ``$share/GROUP/`` included, so only operators may join a share group. It has no ``%u``
    patterns (Mosquitto 2.0), hence one role per device naming its own topics. Passwords stay in ``password_file``.
    """
    root = settings.root
    roles: list[dict[str, object]] = [{"rolename": "operator", "acls": [
        _acl("publishClientSend", f"{root}/#"), _acl("publishClientReceive", f"{root}/#"),
        _acl("subscribePattern", f"{root}/#"), _acl("subscribePattern", f"$share/+/{root}/#")]}]
    clients: list[dict[str, object]] = []
    for user in sorted(users):
        if user in settings.operators:
            clients.append({"username": user, "roles": [{"rolename": "operator"}]})
            continue
        roles.append({"rolename": f"device-{user}", "acls": [
            _acl("publishClientSend", f"{root}/{user}/up/#"), _acl("publishClientReceive", f"{root}/{user}/down/#"),
            _acl("subscribePattern", f"{root}/{user}/down/#")]})
        clients.append({"username": user, "roles": [{"rolename": f"device-{user}"}]})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                 "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


def write_config(settings: BrokerSettings) -> Path:
    """Write ``mosquitto.conf`` (and the password and access control files) into the settings' directory."""
    d = settings.directory
    (d / "data").mkdir(parents=True, exist_ok=True)
    lines = [
        "# generated by Nakhon; edit the deployment settings, not this file",
        "per_listener_settings false",
        f"listener {settings.port} {settings.host}",
        "protocol mqtt",
        f"user {getpass.getuser()}",
        "persistence true",
        f"persistence_location {d / 'data'}/",
        f"autosave_interval {settings.autosave_interval_s}",
        f"max_queued_messages {settings.max_queued_messages}",
        f"max_packet_size {settings.max_packet_size}",
        "persistent_client_expiration 14d",
        "max_keepalive 600",
        "set_tcp_nodelay true",
        f"log_dest file {d / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if settings.accounts is None:
        lines.append("allow_anonymous true")
    else:
        passwd = d / "passwd"
        passwd.write_text("".join(f"{user}:{pw}\n" for user, pw in sorted(settings.accounts.items())))
        passwd.chmod(0o600)
        try:
            subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as err:
            raise BrokerError(f"mosquitto_passwd could not hash {passwd}: {err}; is mosquitto installed?") from err
        access = d / "dynamic-security.json"
        access.write_text(json.dumps(access_control(settings, settings.accounts), indent=1) + "\n")
        access.chmod(0o600)
        lines += ["allow_anonymous false", f"password_file {passwd}", "use_username_as_clientid true",
                  f"plugin {dynamic_security_plugin()}", f"plugin_opt_config_file {access}"]
    conf = d / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class Mosquitto:
    """A Mosquitto process run from a generated config (or from ``conf``, a config written already: a
    provisioned deployment's; then ``settings`` say only where it listens and its folder of logs)."""

    def __init__(self, settings: BrokerSettings, conf: Path | None = None) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self._given = conf
        self.conf: Path | None = conf

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Write the config and start the broker; return once it accepts connections."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.conf = self._given or write_config(self.settings)
        self.process = subprocess.Popen([binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.settings.directory / "mosquitto.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err.strip()} {tail.strip()}")
            try:
                with socket.create_connection((self.settings.host, self.settings.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.settings.host}:{self.settings.port} in {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: the broker saves its state); kill after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: whatever the broker held only in memory is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the password file (the access control file is read at start only)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)
