"""Which stores the hub runs on, from two URLs: ``records`` (everything transactional) and ``timeseries`` (readings).

=====================================  ==========================================================================
``records``                            the records store
=====================================  ==========================================================================
(none)                                 ``sqlite:///<data>/hub.sqlite``, the embedded default
``sqlite:///PATH``                     a SQLite file (``sqlite:////abs/path`` or ``sqlite:///relative/path``)
``postgresql://USER@HOST:PORT/DB``     PostgreSQL (module ``hub.records.postgresql``)
=====================================  ==========================================================================

=====================================  ==========================================================================
``timeseries``                         the time-series store
=====================================  ==========================================================================
(none), ``sqlite``                     the ``readings`` table of the SQLite records file (one transaction per batch)
``sqlite:///PATH``                     a SQLite file of its own
``victoriametrics+http://HOST:PORT``   VictoriaMetrics (module ``hub.timeseries.victoria``)
=====================================  ==========================================================================

An engine module outside the embedded default is imported only when its URL is used; it provides
``records_store(url, *, deadletter_keep_bytes) -> SqlStore`` (records) or ``timeseries_store(url) -> TimeSeries``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit, urlunsplit

from hub.errors import HubConfigError
from hub.store.base import SqlStore
from hub.store.sqlite import SQLiteStore
from hub.timeseries.base import TimeSeries
from hub.timeseries.sqlite import SQLiteTimeSeries

SQLITE_PREFIX: Final = "sqlite:///"


@dataclass(frozen=True)
class Backends:
    """The hub's two stores (built, not opened: the hub opens them at start-up)."""

    records: SqlStore
    timeseries: TimeSeries
    separate: bool
    """The readings live apart from the records: ingest writes them first, then commits the records, then acks.
    False: the records store keeps them in its own commit (the embedded SQLite file)."""

    def open(self) -> None:
        """Open the records store (applying its migrations), then the time-series store."""
        self.records.open()
        if self.separate:
            self.timeseries.open()

    def close(self) -> None:
        """Close both (idempotent)."""
        if self.separate:
            self.timeseries.close()
        self.records.close()


def redact(url: str) -> str:
    """``url`` fit for a log line: any password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _engine_module(module: str, url: str, role: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            raise HubConfigError(f"{role} = {redact(url)!r} needs the module {module}, which this installation "
                                 f"does not have") from err
        raise HubConfigError(f"{role} = {redact(url)!r}: {module} cannot be imported: {err}") from err


def _sqlite_path(url: str) -> Path:
    path = url[len(SQLITE_PREFIX):]
    if not path:
        raise HubConfigError(f"{url!r}: no file after {SQLITE_PREFIX}")
    return Path(path)


def open_backends(records_url: str | None, timeseries_url: str | None, data_dir: Path,
                  deadletter_keep_bytes: int = 4096) -> Backends:
    """Build the stores the two URLs name (see the module's tables); a URL no engine takes, or an engine that is
    not installed, is a :class:`hub.errors.HubConfigError` naming what is missing."""
    records_url = records_url or f"{SQLITE_PREFIX}{data_dir / 'hub.sqlite'}"
    timeseries_url = timeseries_url or "sqlite"
    records_path = _sqlite_path(records_url) if records_url.startswith(SQLITE_PREFIX) else None
    series_path = _sqlite_path(timeseries_url) if timeseries_url.startswith(SQLITE_PREFIX) else None
    embedded = timeseries_url == "sqlite" or (series_path is not None and series_path == records_path)
    records: SqlStore
    if records_path is not None:
        records = SQLiteStore(records_path, deadletter_keep_bytes, readings=embedded)
        if embedded:
            return Backends(records, records.timeseries, separate=False)
    elif not records_url.startswith(("postgresql://", "postgres://")):
        raise HubConfigError(f"records = {redact(records_url)!r}: expected sqlite:///PATH or postgresql://...")
    elif embedded:
        raise HubConfigError(f"timeseries = 'sqlite' keeps readings in the SQLite records file, but records = "
                             f"{redact(records_url)!r}: name a time-series store (sqlite:///PATH or "
                             f"victoriametrics+http://HOST:PORT)")
    else:
        make = cast(Callable[..., SqlStore], _engine_module("hub.records.postgresql", records_url,
                                                              "records").records_store)
        records = make(records_url, deadletter_keep_bytes=deadletter_keep_bytes)
    series: TimeSeries
    if series_path is not None:
        series = SQLiteTimeSeries(SQLiteStore(series_path), owns_store=True)
    elif timeseries_url.startswith("victoriametrics+http://") or timeseries_url.startswith("victoriametrics+https://"):
        make_series = cast(Callable[[str], TimeSeries], _engine_module("hub.timeseries.victoria", timeseries_url,
                                                                        "timeseries").timeseries_store)
        series = make_series(timeseries_url.removeprefix("victoriametrics+"))
    else:
        raise HubConfigError(f"timeseries = {redact(timeseries_url)!r}: expected sqlite, sqlite:///PATH or "
                             f"victoriametrics+http://HOST:PORT")
    return Backends(records, series, separate=True)
