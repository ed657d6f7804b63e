"""The configuration base the agent and the hub share: neutral ground, one overlay rule, secrets kept private."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nakhon import settings
from tests.test_layers import _imports

ROOT = Path(__file__).resolve().parents[1]


def test_the_settings_base_imports_neither_the_edge_nor_the_hub() -> None:
    found = {m.split(".")[0] for m in _imports(ROOT / "nakhon" / "settings.py")}
    assert not found & {"edge", "hub"}, found


def test_the_environment_overlays_nested_keys_and_existing_list_entries_as_toml_values() -> None:
    data = {"broker": {"port": 1883}, "drivers": [{"name": "pm"}]}
    merged = settings.overlay_env(data, {"NAKHON_BROKER__PORT": "8883", "NAKHON_DRIVERS__0__INTERVAL_S": "2.5",
                                         "NAKHON_SITE": "Ton Tan market", "NAKHON_LOG_LEVEL": "DEBUG",
                                         "NAKHON_TLS": "true"}, "NAKHON_", frozenset({"NAKHON_LOG_LEVEL"}))
    assert merged == {"broker": {"port": 8883}, "drivers": [{"name": "pm", "interval_s": 2.5}],
                      "site": "Ton Tan market", "tls": True}
    assert data["broker"] == {"port": 1883}  # the parsed file is left as it was
    with pytest.raises(settings.InvalidSettings, match="environment NAKHON_DRIVERS__1__NAME: no list entry '1'"):
        settings.overlay_env(data, {"NAKHON_DRIVERS__1__NAME": "x"}, "NAKHON_")


def test_a_secret_others_can_read_is_a_warning_for_the_agent_and_refused_for_the_hub(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        assert settings.read_secret(secret, "device.toml", "broker.password_file", private=False) == "s3cret"
    assert f"run: chmod 600 {secret}" in caplog.text and "s3cret" not in caplog.text
    with pytest.raises(settings.InvalidSettings) as err:
        settings.read_secret(secret, "hub.toml", "password_file", private=True)
    assert str(err.value).startswith("hub.toml: password_file: secret file") and "s3cret" not in str(err.value)
    secret.chmod(0o600)
    secret.write_text("\n")
    with pytest.raises(settings.InvalidSettings, match="is empty"):
        settings.read_secret(secret, "hub.toml", "password_file", private=True)
