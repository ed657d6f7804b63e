"""``records`` and ``timeseries`` URLs pick the hub's stores; a URL no engine takes, or a missing engine, says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hub.backends import open_backends, redact
from hub.errors import HubConfigError
from hub.store.sqlite import SQLiteStore
from hub.timeseries.sqlite import SQLiteTimeSeries
from nakhon.cli import main


def test_the_default_is_one_sqlite_file_for_records_and_readings(tmp_path: Path) -> None:
    backends = open_backends(None, None, tmp_path)
    assert isinstance(backends.records, SQLiteStore) and backends.records.path == tmp_path / "hub.sqlite"
    assert backends.timeseries is backends.records.timeseries and not backends.separate
    same = open_backends(f"sqlite:///{tmp_path / 'x.sqlite'}", f"sqlite:///{tmp_path / 'x.sqlite'}", tmp_path)
    assert not same.separate


def test_a_sqlite_time_series_of_its_own_is_written_apart_from_the_records(tmp_path: Path) -> None:
    backends = open_backends(None, f"sqlite:///{tmp_path / 'readings.sqlite'}", tmp_path)
    assert backends.separate and isinstance(backends.timeseries, SQLiteTimeSeries)
    assert backends.timeseries.store.path == tmp_path / "readings.sqlite"
    backends.open()
    try:
        assert (tmp_path / "hub.sqlite").exists() and (tmp_path / "readings.sqlite").exists()
        assert backends.timeseries.healthy()
    finally:
        backends.close()


@pytest.mark.parametrize(("records", "timeseries", "module"), [
    ("postgresql://nakhon@127.0.0.1:5432/nakhon", "victoriametrics+http://127.0.0.1:8428", "hub.records.postgresql"),
    (None, "victoriametrics+http://127.0.0.1:8428", "hub.timeseries.victoria"),
])
def test_an_engine_that_is_not_installed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  records: str | None, timeseries: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the module were not there
    with pytest.raises(HubConfigError, match=f"needs the module {module}"):
        open_backends(records, timeseries, tmp_path)


@pytest.mark.parametrize(("records", "timeseries", "says"), [
    ("mysql://db/nakhon", None, "expected sqlite:///PATH or postgresql://"),
    (None, "influx://127.0.0.1", "expected sqlite, sqlite:///PATH or victoriametrics"),
    ("postgresql://nakhon:secret@db/nakhon", None, "keeps readings in the SQLite records file"),
    ("sqlite:///", None, "no file after"),
])
def test_urls_no_engine_takes_are_refused_without_their_password(tmp_path: Path, records: str | None,
                                                                 timeseries: str | None, says: str) -> None:
    with pytest.raises(HubConfigError, match=says) as refused:
        open_backends(records, timeseries, tmp_path)
    assert "secret" not in str(refused.value)


def test_passwords_are_redacted_from_urls_for_logs() -> None:
    assert redact("postgresql://nakhon:s3cret@db.example:5432/nakhon") == "postgresql://nakhon:***@db.example:5432/nakhon"
    assert redact("postgresql://nakhon@db/nakhon") == "postgresql://nakhon@db/nakhon"


def test_hub_migrate_takes_a_records_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    assert main(["hub", "migrate", "--records", url]) == 0
    assert capsys.readouterr().out.startswith("applied 0001 initial\n")
    assert (tmp_path / "elsewhere.sqlite").exists()
    assert main(["hub", "migrate", "--records", "mysql://db/x"]) == 2
