"""The hub's settings: hub.toml, NAKHON_HUB_* overrides, flags over both, secrets in private files, checked whole."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from hub import config
from hub.broker import free_port
from hub.errors import HubConfigError
from nakhon.cli import _parser
from tests.conftest import ROOT, Broker, Proc, wait_for

EXAMPLE = ROOT / "hub" / "hub.example.toml"


def _toml(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nakhon.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_file_alone_sets_the_hub(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'data = "/srv/hub"\nbroker_port = 8883\nshare = "ingest"\nhttp_port = 9080\n'
                           'records = "postgresql://nakhon@db.local:5432/nakhon"\n'
                           'timeseries = "victoriametrics+http://127.0.0.1:8428"\n')
    settings = config.load(path, {})
    assert (settings.data, settings.broker_port, settings.share, settings.http_port) == \
        (Path("/srv/hub"), 8883, "ingest", 9080)
    assert settings.records == "postgresql://nakhon@db.local:5432/nakhon"
    assert settings.timeseries == "victoriametrics+http://127.0.0.1:8428"
    assert settings.broker_host == "127.0.0.1"


def test_the_records_store_defaults_to_the_sqlite_file_in_the_data_directory(tmp_path: Path) -> None:
    settings = config.load(_toml(tmp_path, 'data = "/srv/hub"\n'), {})
    assert settings.records == "sqlite:////srv/hub/hub.sqlite" and settings.timeseries == "sqlite"


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "broker_port = 8883\nhttp_port = 9080\n")
    settings = config.load(path, {"NAKHON_HUB_HTTP_PORT": "9090", "NAKHON_HUB_PUBLIC_OGC": "1",
                                  "NAKHON_HUB_USERNAME": "1234", "NAKHON_HUB_URL": "https://hub.local",
                                  "NAKHON_HUB_CONFIG": str(path), "NAKHON_OTHER": "x"})
    assert (settings.broker_port, settings.http_port, settings.public_ogc, settings.username) == \
        (8883, 9090, True, "1234")


def test_flags_given_on_the_command_line_beat_the_environment_and_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'data = "/srv/hub"\nhttp_port = 9080\nbroker_port = 8883\n')
    args = _parser().parse_args(["hub", "serve", "--config", str(path), "--http-port", "7070", "--public-ogc"])
    flags = {k: v for k, v in vars(args).items() if k in config.HubSettings.model_fields}
    assert flags == {"http_port": 7070, "public_ogc": True}  # a flag not given leaves the file's value alone
    settings = config.load(config.config_path(args.config, {}), {"NAKHON_HUB_HTTP_PORT": "9090"}, flags)
    assert (settings.http_port, settings.public_ogc, settings.data, settings.broker_port) == \
        (7070, True, Path("/srv/hub"), 8883)


def test_nakhon_hub_config_names_the_config_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "http_port = 9080\n")
    assert config.config_path(None, {"NAKHON_HUB_CONFIG": str(path)}) == path
    assert config.config_path(tmp_path / "other.toml", {"NAKHON_HUB_CONFIG": str(path)}) == tmp_path / "other.toml"
    assert config.config_path(None, {}) is None


def test_secrets_come_from_private_files_and_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    broker = _secret(tmp_path / "hub.password", "s3cret-broker")
    bank = _secret(tmp_path / "bank.secret", "s3cret-bank")
    pg = _secret(tmp_path / "pg.password", "p@ss/word")
    path = _toml(tmp_path, f'password_file = "{broker}"\nbank_secret_file = "{bank}"\n'
                           f'records = "postgresql://nakhon@db.local/nakhon"\nrecords_password_file = "{pg}"\n')
    settings = config.load(path, {})
    secrets = config.read_secrets(settings, path, {})
    assert (secrets.password, secrets.bank_secret, secrets.records_password) == \
        ("s3cret-broker", "s3cret-bank", "p@ss/word")
    assert settings.records_store_url() == f"postgresql://nakhon@db.local/nakhon?password_file={pg}"
    bank.chmod(0o644)
    with pytest.raises(HubConfigError) as err:
        config.read_secrets(settings, path, {})
    assert str(err.value) == (f"{path}: bank_secret_file: secret file {bank} can be read by other users; "
                              f"run: chmod 600 {bank}")
    with pytest.raises(HubConfigError, match=r"^--password-file: cannot read secret file .*/nope"):
        config.read_secrets(config.load(None, {}, {"password_file": tmp_path / "nope"}), None, {},
                            {"password_file": tmp_path / "nope"})


@pytest.mark.parametrize("text,env,expected", [
    ("brokr_port = 1883\n", {}, "{path}: brokr_port: Extra inputs are not permitted (got 1883)"),
    ("http_port = 99999\n", {}, "{path}: http_port: Input should be less than or equal to 65535 (got 99999)"),
    ("", {"NAKHON_HUB_BROKER_PROT": "1"},
     "environment NAKHON_HUB_BROKER_PROT: broker_prot: Extra inputs are not permitted (got 1)"),
    ("ack_window = 9\n", {}, "{path}: ack_window: Input should be less than or equal to 5 (got 9)"),
    ('tiles = "https://tiles.local/x.png"\n', {}, "{path}: tiles: Value error, a tile URL is http(s)://... with"),
    ('registry = "closed"\n', {}, "{path}: registry: Input should be 'open' or 'enforce' (got 'closed')"),
    ("http_port = [\n", {}, "{path}: not valid TOML"),
])
def test_a_bad_setting_names_where_it_came_from_the_key_and_what_was_expected(
        tmp_path: Path, text: str, env: dict[str, str], expected: str) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(HubConfigError) as err:
        config.load(path, env)
    assert expected.format(path=path) in str(err.value)


@pytest.mark.parametrize("key,url,expected", [
    ("records", "mysql://nakhon@db/nakhon", "a records URL is sqlite:///PATH or postgresql://"),
    ("records", "sqlite:///", "sqlite:/// needs the database file's path"),
    ("records", "postgresql://nakhon@db.local", "names its host and database"),
    ("records", "postgresql://nakhon@db.local:99999/nakhon", "Port out of range"),
    ("timeseries", "influxdb://127.0.0.1:8086", "a time-series store is sqlite, sqlite:///PATH or victoriametrics+http://"),
    ("timeseries", "victoriametrics+http://127.0.0.1:8428/api", "with no user, path or query"),
])
def test_a_bad_store_url_is_refused(tmp_path: Path, key: str, url: str, expected: str) -> None:
    path = _toml(tmp_path, f'{key} = "{url}"\n')
    with pytest.raises(HubConfigError, match=rf"^{path}: {key}: ") as err:
        config.load(path, {})
    assert expected in str(err.value)


def test_a_password_in_the_records_url_is_refused_and_never_repeated(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError) as err:
        config.load(None, {}, {"records": "postgresql://nakhon:hunter2@db.local/nakhon"})
    assert str(err.value).startswith("--records: Value error, a password does not belong in the URL")
    assert "hunter2" not in str(err.value)


def test_the_example_file_has_every_key_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert config.load(EXAMPLE, {}) == config.load(None, {})
    written = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line and not line.startswith("#")}
    commented = [line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line
                 and line[2:].split(" = ")[0].isidentifier()]
    assert written | {line.split(" = ")[0] for line in commented} == set(config.HubSettings.model_fields)
    for line in commented:  # every example of a key without a default is a valid value
        assert config.load(_toml(tmp_path, line + "\n"), {}) != config.load(None, {}), line
    assert tomllib.loads(text)


def test_hub_config_check_prints_the_settings_with_secrets_hidden_and_exits_2_on_a_bad_file(tmp_path: Path) -> None:
    pw = _secret(tmp_path / "hub.password", "zq81-broker-value")
    path = _toml(tmp_path, f'password_file = "{pw}"\nhttp_port = 9080\n')
    run = _cli("hub", "config", "--check", "--config", str(path), env={"NAKHON_HUB_BROKER_PORT": "8883"})
    assert run.returncode == 0, run.stderr
    assert "http_port = 9080\n" in run.stdout and "broker_port = 8883\n" in run.stdout
    assert f'password_file = "{pw}"  # secret: ***' in run.stdout and "zq81" not in run.stdout + run.stderr
    assert tomllib.loads(run.stdout)["http_port"] == 9080  # the output is itself a hub.toml
    bad = _toml(tmp_path, "http_port = 'eighty'\n", "bad.toml")
    run = _cli("hub", "config", "--check", env={"NAKHON_HUB_CONFIG": str(bad)})
    assert run.returncode == 2
    assert f"{bad}: http_port: Input should be a valid integer" in run.stderr


def test_hub_serve_says_which_records_database_it_cannot_reach(tmp_path: Path) -> None:
    run = _cli("hub", "serve", "--data", str(tmp_path), "--records", "postgresql://nakhon@127.0.0.1:9/nakhon",
               "--timeseries", f"sqlite:///{tmp_path / 'readings.sqlite'}", "--http-port", "0")
    assert run.returncode != 0
    assert "cannot reach the records database postgresql://nakhon@127.0.0.1:9/nakhon" in run.stderr


@pytest.mark.broker
def test_a_hub_started_from_its_file_serves_on_the_port_the_file_names(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    path = _toml(tmp_path, f'data = "{tmp_path / "hub"}"\nbroker_port = {broker.port}\nhttp_port = {port}\n'
                           f'records = "sqlite:///{tmp_path / "hub" / "hub.sqlite"}"\n')
    hub = Proc(["hub", "serve", "--config", str(path)], tmp_path / "hub.log")
    hub.start()
    try:
        def healthy() -> bool:
            assert hub.alive(), hub.log()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, "the hub on the file's port")
        assert (tmp_path / "hub" / "hub.sqlite").exists()
    finally:
        assert hub.stop() == 0
