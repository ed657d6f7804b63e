"""A device's agent config, written from its node's template in ``firmware-configs/``."""

from __future__ import annotations

import json
from pathlib import Path

from hub.provision.registry import Entry, RegistryError

TEMPLATES = Path(__file__).resolve().parents[2] / "firmware-configs"
_OWN_KEYS = ("device", "node", "site", "location", "config_version")
"""Top-level keys of a template that the registry decides."""

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "device.pem", "device.key"
"""Beside the config (``/etc/nakhon`` on a Pi): relative paths resolve against the config's folder."""


def nodes() -> list[str]:
    """The node kinds that have a template."""
    return sorted(p.stem for p in TEMPLATES.glob("*.toml"))


def _body(template: str) -> list[str]:
    """The template without the keys the registry sets and without its ``[broker]`` section."""
    out: list[str] = []
    section: str | None = None
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
        if section == "broker":
            continue
        if section is None and stripped.split("=")[0].strip() in _OWN_KEYS:
            continue
        if section is None and stripped.startswith("#"):
            continue
        out.append(line)
    while out and not out[0].strip():
        out.pop(0)
    return out


def render(entry: Entry, broker_host: str, broker_port: int, root: str) -> str:
    """The agent config of a registered device: mutual TLS to the broker, its id, site and location."""
    template = TEMPLATES / f"{entry.node}.toml"
    if not template.is_file():
        raise RegistryError(f"no template for node {entry.node!r} in firmware-configs/ "
                            f"(known: {', '.join(nodes())})", 400)
    lines = [f"# {entry.device}: written by Nakhon's provisioning from firmware-configs/{entry.node}.toml",
             f"device = {json.dumps(entry.device)}", f"node = {json.dumps(entry.node)}",
             f"site = {json.dumps(entry.site, ensure_ascii=False)}"]
    if entry.lat is not None and entry.lon is not None:
        lines.append(f"location = {{ lat = {entry.lat!r}, lon = {entry.lon!r} }}")
    lines += ["config_version = 1", "", "[broker]", f"host = {json.dumps(broker_host)}", f"port = {broker_port}",
              f"root = {json.dumps(root)}", "tls = true", f'ca_file = "{CA_FILE}"', f'cert_file = "{CERT_FILE}"',
              f'key_file = "{KEY_FILE}"', ""]
    return "\n".join(lines + _body(template.read_text(encoding="utf-8"))) + "\n"
