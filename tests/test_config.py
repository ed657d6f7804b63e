"""Device configs: validated whole before any device opens, errors a technician can act on, env overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge import config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
device = "kk-aq-0007"
[broker]
port = 1883
[outbox]
path = "/tmp/outbox.sqlite"
[[drivers]]
kind = "sim_air_quality"
name = "pm"
interval_s = 10
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_a_good_config_loads_with_its_drivers(tmp_path: Path) -> None:
    loaded = config.load(_write(tmp_path, GOOD), environ={})
    assert loaded.device.device == "kk-aq-0007"
    assert [(k.kind, c.name) for k, c in loaded.drivers] == [("sim_air_quality", "pm")]
    assert loaded.device.username == "kk-aq-0007"


def test_every_shipped_firmware_config_validates(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("x\n")
    secret.chmod(0o600)
    configs = sorted((ROOT / "firmware-configs").glob("*.toml"))
    assert configs
    for path in configs:
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("/etc/nakhon/secrets/broker.password", str(secret)))
        assert config.load(copy, environ={}).drivers


@pytest.mark.parametrize("text,expected", [
    (GOOD.replace('"kk-aq-0007"', '"KK AQ 7"'), "device: String should match pattern"),
    (GOOD.replace("port = 1883", "port = 99999"),
     "broker.port: Input should be less than or equal to 65535 (got 99999)"),
    (GOOD.replace("port = 1883", "port = 1883\nhots = 'x'"), "broker.hots: Extra inputs are not permitted"),
    (GOOD.replace("interval_s = 10", "interval_s = -1"), "drivers[0].interval_s: Input should be greater than 0"),
    (GOOD.replace('kind = "sim_air_quality"', 'kind = "pms9000"'), "drivers[0].kind: unknown driver kind 'pms9000'"),
    (GOOD.replace('name = "pm"', 'name = "pm"\nbaud = 9600'), "drivers[0].baud: Extra inputs are not permitted"),
    (GOOD + '[[drivers]]\nkind = "sim_water_level"\nname = "pm"\n',
     "drivers[1].name: 'pm' is already the name of drivers[0]"),
    ("device = [", "not valid TOML"),
])
def test_a_bad_config_names_the_file_the_key_and_what_was_expected(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_every_driver_entry_is_checked_before_any_is_opened(tmp_path: Path) -> None:
    text = GOOD + '[[drivers]]\nkind = "sim_water_level"\nname = "gauge"\ninterval_s = 0\n' \
        '[[drivers]]\nkind = "nope"\nname = "x"\n'
    with pytest.raises(ConfigError) as err:
        config.load(_write(tmp_path, text), environ={})
    assert "drivers[1].interval_s" in str(err.value) and "drivers[2].kind" in str(err.value)


def test_environment_overrides_nested_keys_and_list_entries(tmp_path: Path) -> None:
    loaded = config.load(_write(tmp_path, GOOD), environ={
        "NAKHON_BROKER__PORT": "8883", "NAKHON_BROKER__HOST": "hub.khonkaen.local",
        "NAKHON_DRIVERS__0__INTERVAL_S": "2.5", "NAKHON_SITE": "Bueng Kaen Nakhon", "OTHER": "x"})
    assert loaded.device.broker.port == 8883
    assert loaded.device.broker.host == "hub.khonkaen.local"
    assert loaded.drivers[0][1].interval_s == 2.5
    assert loaded.device.site == "Bueng Kaen Nakhon"
    with pytest.raises(ConfigError, match="NAKHON_DRIVERS__5__NAME"):
        config.load(_write(tmp_path, GOOD), environ={"NAKHON_DRIVERS__5__NAME": "x"})
    with pytest.raises(ConfigError, match=r"broker\.port"):
        config.load(_write(tmp_path, GOOD), environ={"NAKHON_BROKER__PORT": "many"})


def test_the_broker_password_comes_from_its_own_file(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = GOOD.replace("port = 1883", 'port = 1883\npassword_file = "broker.password"')
    assert config.load(_write(tmp_path, text), environ={}).password == "s3cret"
    secret.unlink()
    with pytest.raises(ConfigError, match=r"broker\.password_file: cannot read secret file"):
        config.load(_write(tmp_path, text), environ={})


def test_agent_check_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("interval_s = 10", "interval_s = 'often'"))
    run = subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"{path}: drivers[0].interval_s: Input should be a valid number" in run.stderr
    good = _write(tmp_path, GOOD)
    run = subprocess.run([sys.executable, "-m", "nakhon.cli", "agent", "check", str(good)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "valid; device kk-aq-0007, drivers: pm (sim_air_quality)" in run.stdout
