"""The hub's settings: ``hub.toml``, ``NAKHON_HUB_<KEY>`` variables and ``nakhon hub serve``'s flags, in one model.

Precedence: defaults < the file (``--config FILE`` or ``NAKHON_HUB_CONFIG``) < the environment < the flags
given on the command line. Keys are the flags' names with ``_`` (``--broker-port`` is ``broker_port`` in the
file and ``NAKHON_HUB_BROKER_PORT`` in the environment). Secrets are never in the file: ``password_file``,
``bank_secret_file`` and ``records_password_file`` name files readable by the hub's user only (``chmod 600``).
``hub/hub.example.toml`` lists every key with its default and meaning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import SettingsConfigDict

from edge.contract import DEFAULT_ROOT
from hub.errors import HubConfigError
from nakhon.settings import FileSettings, InvalidSettings, describe, read_secret

CONFIG_ENV = "NAKHON_HUB_CONFIG"
TIMESERIES_SCHEMES = ("victoriametrics+http", "victoriametrics+https")


def _records_url(url: str) -> str:
    """``sqlite:///PATH`` or ``postgresql://USER@HOST[:PORT]/DB``, the password kept out (it is a secret)."""
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///"):]:
            raise ValueError("sqlite:/// needs the database file's path, e.g. sqlite:////var/lib/nakhon/hub.sqlite")
        return url
    parts = urlsplit(url)
    if parts.scheme != "postgresql":
        raise ValueError("a records URL is sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    if parts.password is not None:
        raise ValueError("a password does not belong in the URL: put it in a file named by records_password_file")
    if not parts.hostname or not parts.path.strip("/"):
        raise ValueError("a PostgreSQL URL names its host and database: postgresql://USER@HOST:PORT/DB")
    _ = parts.port  # raises ValueError for a port out of range or not a number
    return url


def _timeseries_url(url: str) -> str:
    """``sqlite`` (the records file), ``sqlite:///PATH`` (a file of its own) or ``victoriametrics+http://HOST:PORT``."""
    if url == "sqlite":
        return url
    if url.startswith("sqlite:///"):
        if not url[len("sqlite:///"):]:
            raise ValueError("sqlite:/// needs the readings file's path, e.g. sqlite:////var/lib/nakhon/readings.sqlite")
        return url
    parts = urlsplit(url)
    if parts.scheme not in TIMESERIES_SCHEMES or not parts.hostname:
        raise ValueError("a time-series store is sqlite, sqlite:///PATH or victoriametrics+http://HOST:PORT")
    if parts.username is not None or parts.query or parts.path.strip("/"):
        raise ValueError("a VictoriaMetrics URL is victoriametrics+http://HOST:PORT, with no user, path or query")
    _ = parts.port
    return url


def _tile_url(value: str) -> str:
    """A basemap tile URL template: http(s), with {z}, {x} and {y}."""
    if not value.startswith(("http://", "https://")) or not all(p in value for p in ("{z}", "{x}", "{y}")):
        raise ValueError("a tile URL is http(s)://... with {z}, {x} and {y}")
    return value


Text = Annotated[str, Field(min_length=1, max_length=255)]
Seconds = Annotated[float, Field(gt=0, le=10 * 366 * 86_400)]


class HubSettings(FileSettings):
    """Everything ``nakhon hub serve`` takes, validated whole before anything opens."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix="NAKHON_HUB_",
                                      coerce_numbers_to_str=True)
    env_ignored: ClassVar[frozenset[str]] = frozenset({
        CONFIG_ENV, "NAKHON_HUB_URL", "NAKHON_HUB_CA",  # the config file itself; the API clients' hub
        "NAKHON_HUB_RETENTION_DAYS"})  # nakhon hub purge's

    data: Path = Field(Path("nakhon-data/hub"), description="data directory (made private, 0700)")
    broker_host: Text = "127.0.0.1"
    broker_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: Text | None = Field(None, description="broker username of the hub")
    password_file: Path | None = Field(None, description="file holding the hub's broker password")
    root: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")] = DEFAULT_ROOT
    client_id: Text | None = Field(None, description="MQTT client id; default nakhon-hub, with share "
                                                     "nakhon-hub-GROUP-PID")
    share: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    max_payload: Annotated[int, Field(ge=1024, le=268_435_455)] = 262_144
    max_clock_skew: Annotated[float, Field(ge=0, le=366 * 86_400)] = 600.0
    max_age: Seconds = 366 * 86_400.0
    max_unwritten: Seconds = 60.0
    ack_window: Annotated[float, Field(ge=0, le=5)] = 1.0
    fees: Path | None = Field(None, description="fee catalogue TOML; none: the demo catalogue")
    zones: Path | None = Field(None, description="zones GeoJSON; none: the demo zones of Khon Kaen")
    rules: Path | None = Field(None, description="alarm rules TOML; none: the demo rules")
    promptpay_biller: Text | None = None
    promptpay_target: Text | None = None
    promptpay_expiry_min: Annotated[float, Field(gt=0, le=7 * 1440)] = 15.0
    promptpay_demo: bool = False
    bank_secret_file: Path | None = None
    public_ogc: bool = False
    tiles: Annotated[str, Field(max_length=500), AfterValidator(_tile_url)] | None = None
    pmtiles: Path | None = Field(None, description="a local vector .pmtiles basemap for the dashboard map")
    deployment: Path | None = None
    plain_http: bool = Field(False, description="with deployment: the API over plain HTTP on a loopback http_host")
    registry: Literal["open", "enforce"] | None = None
    http_host: Text = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    records: Annotated[str, Field(max_length=1024), AfterValidator(_records_url)] = Field(
        default_factory=lambda given: f"sqlite:///{given['data']}/hub.sqlite",
        description="the records store; default sqlite:///DATA/hub.sqlite")
    records_password_file: Path | None = Field(None, description="file holding the PostgreSQL password")
    timeseries: Annotated[str, Field(max_length=1024), AfterValidator(_timeseries_url)] = "sqlite"

    def records_store_url(self) -> str:
        """The records URL as :mod:`hub.backends` opens it: a PostgreSQL password comes from
        ``records_password_file`` (``?password_file=``), never written into the URL."""
        if self.records_password_file is None or not self.records.startswith("postgresql://"):
            return self.records
        joiner = "&" if urlsplit(self.records).query else "?"
        return f"{self.records}{joiner}password_file={quote(str(self.records_password_file), safe='/')}"


@dataclass(frozen=True)
class HubSecrets:
    """The secrets the settings' files hold."""

    password: str | None
    bank_secret: str | None
    records_password: str | None


SECRET_FILES: dict[str, str] = {"password_file": "password", "bank_secret_file": "bank_secret",
                                "records_password_file": "records_password"}


def _problem(loc: tuple[int | str, ...], line: str, path: Path | None, environ: Mapping[str, str],
             flags: Mapping[str, Any]) -> str:
    """``line`` (``KEY: problem``) prefixed by what gave the key: its flag, its environment variable or the file."""
    key = str(loc[0]) if loc else ""
    if key in flags:
        return f"--{key.replace('_', '-')}{line[len(key):]}"
    if f"NAKHON_HUB_{key.upper()}" in environ:
        return f"environment NAKHON_HUB_{key.upper()}: {line}"
    return f"{path if path is not None else 'hub settings'}: {line}"


def load(path: Path | None, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> HubSettings:
    """The hub's settings from ``path`` (none: the defaults), the environment and the given flags.

    Raises :class:`HubConfigError` with one line per problem: ``FILE: KEY: problem``, or the environment
    variable or the flag instead of the file when one of those gave the value.
    """
    given = dict(flags or {})
    try:
        return HubSettings.load(path, environ, **given)
    except InvalidSettings as err:
        raise HubConfigError(str(err)) from err
    except ValidationError as err:
        raise HubConfigError("\n".join(_problem(loc, line, path, environ, given)
                                        for loc, line in describe(err, unquoted=frozenset({"records"})))) from err


def config_path(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file: ``--config``, else ``NAKHON_HUB_CONFIG``, else none."""
    if flag is not None:
        return flag
    named = environ.get(CONFIG_ENV)
    return Path(named) if named else None


def read_secrets(settings: HubSettings, path: Path | None, environ: Mapping[str, str],
                 flags: Mapping[str, Any] | None = None) -> HubSecrets:
    """Read every secret file the settings name; each must be private (mode 600) and not empty."""
    found: dict[str, str | None] = {}
    for key, name in SECRET_FILES.items():
        named: Path | None = getattr(settings, key)
        try:
            found[name] = None if named is None else read_secret(named, "", key, private=True)
        except InvalidSettings as err:
            # read_secret said ": KEY: problem"; say who named the file instead of the empty prefix
            raise HubConfigError(_problem((key,), str(err)[2:], path, environ, flags or {})) from err
    return HubSecrets(**found)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def render(settings: HubSettings, secrets: HubSecrets | None) -> str:
    """The effective settings as ``hub.toml`` lines; a secret read from its file shows as ``***``."""
    lines = []
    for key in HubSettings.model_fields:
        value = getattr(settings, key)
        if value is None:
            lines.append(f"# {key} (not set)")
            continue
        line = f"{key} = {_toml(value)}"
        if secrets is not None and key in SECRET_FILES:
            line += "  # secret: ***"
        lines.append(line)
    return "\n".join(lines) + "\n"
