"""``nakhon agent enroll``: on the Pi, make the device's key, send a CSR with the enrollment code, install the answer.

The key is generated here and never leaves the device. The files land beside the config (``/etc/nakhon`` by
default): ``device.key`` (600), ``device.pem``, ``ca.pem`` and ``device.toml``. A rotation (a new code for an
active device) replaces the key and certificate atomically; the running agent keeps its connection on the old
certificate, which stays valid, and uses the new one from its next connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from hub.provision import config, pki
from nakhon.hubclient import Hub

CONFIG_FILE = "device.toml"


@dataclass(frozen=True)
class Installed:
    """What an enrollment wrote."""

    device: str
    directory: Path
    files: tuple[Path, ...]


def _write(path: Path, data: bytes, mode: int) -> None:
    pki.write_private(path, data, mode)


def pin_ca(hub: Hub, expected: str, directory: Path) -> Hub:
    """Trust on first use, checked: fetch the hub's CA chain without trust, check it against the fingerprint
    the enrollment code carries (:func:`pki.pinned_chain`), keep it as ``ca.pem``; the hub checked with it."""
    if hub.ca is not None:  # a CA file from the bundle: it must be the pinned one too
        pki.pinned_chain(hub.ca.read_bytes(), expected)
        return hub
    answer = replace(hub, verify=False).call("GET", "/api/provision/ca")
    chain = str(answer.get("chain", "") if isinstance(answer, dict) else "").encode()
    pki.pinned_chain(chain, expected)
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    _write(directory / config.CA_FILE, chain, 0o644)
    return replace(hub, ca=directory / config.CA_FILE)


def enroll(hub: Hub, code: str, directory: Path, keep_config: bool = False,
           ca_sha256: str | None = None) -> Installed:
    """Enroll with ``code``; write key, certificate, CA chain and (unless ``keep_config``) the config.

    With ``ca_sha256`` (from the enrollment code's QR) the hub is trusted only through the CA of that fingerprint.
    """
    if ca_sha256 is not None:
        hub = pin_ca(hub, pki.normal_fingerprint(ca_sha256), directory)
    key = pki.new_key()
    answer = hub.call("POST", "/api/provision/enroll",
                      {"code": code.strip(), "csr": pki.make_csr("nakhon-device", key).decode()})
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    written = [directory / config.KEY_FILE, directory / config.CERT_FILE, directory / config.CA_FILE]
    # the key first: a connection between the two replacements fails once and retries with the pair
    _write(written[0], pki.key_pem(key), 0o600)
    _write(written[1], answer["certificate"].encode(), 0o644)
    _write(written[2], answer["ca"].encode(), 0o644)
    if not keep_config or not (directory / CONFIG_FILE).exists():
        _write(directory / CONFIG_FILE, answer["config"].encode(), 0o640)
        written.append(directory / CONFIG_FILE)
    if os.geteuid() == 0:
        _hand_to_service_user(directory, written)
    return Installed(answer["device"], directory, tuple(written))


def _hand_to_service_user(directory: Path, files: list[Path]) -> None:
    """Run as root on a Pi: the agent's ``nakhon`` user (when it exists) owns its key (600) and reads its config."""
    import pwd

    try:
        entry = pwd.getpwnam("nakhon")
    except KeyError:
        return
    for path in [directory, *files]:
        os.chown(path, 0, entry.pw_gid)
    os.chown(directory / config.KEY_FILE, entry.pw_uid, entry.pw_gid)
