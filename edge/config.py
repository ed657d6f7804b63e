"""Device configuration: one TOML file per device, overridable from the environment, secrets kept apart.

Read through the configuration base the hub shares (:mod:`nakhon.settings`). Loading validates everything,
every ``[[drivers]]`` entry included, before any device is opened, and a problem is reported as
``FILE: KEY: what was expected`` so that a field technician can fix it on the spot.

Environment overrides: ``NAKHON_<KEY>``, with ``__`` between nested keys and list indices as numbers,
for instance ``NAKHON_BROKER__PORT=8883``, ``NAKHON_OUTBOX__PATH=/data/outbox.sqlite`` or
``NAKHON_DRIVERS__0__INTERVAL_S=5``. Values are read as TOML values (``5``, ``true``, ``"text"``) and
fall back to plain strings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from edge import drivers
from edge.contract import DEFAULT_ROOT, DeviceId, Location
from edge.errors import ConfigError
from nakhon.settings import FileSettings, InvalidSettings, describe, location, read_secret

ENV_PREFIX = "NAKHON_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Section):
    """How the agent reaches the MQTT broker."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    root: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$")] = DEFAULT_ROOT
    username: str | None = Field(default=None, description="defaults to the device id")
    password_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class AgentSettings(_Section):
    """Timing of the agent's loops."""

    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    resend_after_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    max_inflight: Annotated[int, Field(ge=1, le=10_000)] = 200
    backoff_min_s: Annotated[float, Field(gt=0)] = 0.25
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    driver_backoff_max_s: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _backoff_order(self) -> AgentSettings:
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s must not be below backoff_min_s")
        return self


class OutboxConfig(_Section):
    """Where the durable outbox lives and how much each class of record may hold."""

    path: Path = Path("/var/lib/nakhon/outbox.sqlite")
    synchronous: Literal["normal", "full"] = "normal"
    telemetry_max_rows: Annotated[int, Field(ge=10)] = 200_000
    telemetry_max_age_s: Annotated[float, Field(gt=0)] = 30 * 86_400
    event_max_rows: Annotated[int, Field(ge=10)] = 50_000
    event_max_age_s: Annotated[float, Field(gt=0)] = 90 * 86_400
    reply_max_rows: Annotated[int, Field(ge=10)] = 1_000
    reply_max_age_s: Annotated[float, Field(gt=0)] = 86_400
    tx_max_rows: Annotated[int, Field(ge=1)] = 10_000


class KioskService(_Section):
    """A fee the kiosk offers (copied from the hub's fee catalogue by provisioning)."""

    code: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,40}$")]
    name_th: str
    name_en: str
    amount_satang: Annotated[int, Field(gt=0)]
    anonymous: bool = False
    methods: list[Literal["cash", "promptpay"]] = Field(default_factory=lambda: list[Literal["cash", "promptpay"]](
        ("cash", "promptpay")))


class KioskZone(_Section):
    """A municipal zone as the kiosk names it (copied from the hub's zones GeoJSON by provisioning)."""

    code: Annotated[str, Field(min_length=1, max_length=64)]
    name_th: Annotated[str, Field(min_length=1, max_length=200)]
    name_en: Annotated[str, Field(min_length=1, max_length=200)]


class KioskSettings(_Section):
    """A service kiosk: its office, its screen, and which drivers are its card reader and printer."""

    office: Annotated[str, Field(min_length=1)]
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8088
    card_reader: str | None = Field(default=None, description="name of the thai_id_card driver entry")
    printer: str | None = Field(default=None, description="name of the escpos_printer driver entry")
    answer_timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    idle_reset_s: Annotated[float, Field(gt=0)] = 120.0
    error_reset_s: Annotated[float, Field(gt=0)] = Field(
        default=20.0, description="how long an error screen stays before the kiosk returns to the start")
    reports: bool = Field(default=True, description="offer problem reports at the kiosk's location")
    services: list[KioskService] = Field(default_factory=list)
    zones: list[KioskZone] = Field(default_factory=list, description="names of the zones a report may land in")


class DeviceConfig(FileSettings):
    """A whole device configuration file."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX)
    env_ignored: ClassVar[frozenset[str]] = frozenset({"NAKHON_CONFIG", "NAKHON_LOG_LEVEL", "NAKHON_DATA"})

    device: DeviceId
    site: str | None = None
    node: str | None = Field(default=None, description="what kind of node this is, e.g. air-quality-pole")
    config_version: Annotated[int, Field(ge=0)] = 0
    location: Location | None = Field(default=None, description="where the device is installed (WGS 84)")
    broker: BrokerConfig = BrokerConfig()
    agent: AgentSettings = AgentSettings()
    outbox: OutboxConfig = OutboxConfig()
    drivers: list[dict[str, Any]] = Field(default_factory=list)
    kiosk: KioskSettings | None = None

    @property
    def username(self) -> str:
        """The broker username: the device id unless set."""
        return self.broker.username or self.device


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration with its drivers resolved and its secrets read."""

    path: Path
    device: DeviceConfig
    drivers: tuple[tuple[drivers.DriverKind, drivers.DriverConfig], ...]
    password: str | None

    def resolve(self, named: Path) -> Path:
        """A path the config names: relative paths are relative to the config file's folder."""
        return named if named.is_absolute() else self.path.parent / named


_BROKER_FILES = ("ca_file", "cert_file", "key_file")


def _broker_file_problems(device: DeviceConfig, resolve: Callable[[Path], Path]) -> list[str]:
    problems = []
    for key in _BROKER_FILES:
        named = getattr(device.broker, key)
        if named is not None and not resolve(named).is_file():
            problems.append(f"broker.{key}: no such file {resolve(named)}")
    if device.broker.key_file is not None and device.broker.cert_file is None:
        problems.append("broker.key_file: a client key needs its certificate in broker.cert_file")
    return problems


def _driver_file_problems(entries: list[tuple[int, drivers.DriverConfig]],
                          resolve: Callable[[Path], Path]) -> list[str]:
    """Path-valued driver settings that name nothing, except ``sim_*`` (used only under ``--simulate``)."""
    problems = []
    for index, conf in entries:
        for key, value in conf:
            if isinstance(value, Path) and not key.startswith("sim_") and not resolve(value).exists():
                problems.append(f"drivers[{index}].{key} ({conf.name}): no such file {resolve(value)}")
    return problems


def _describe(err: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[str]:
    return [line for _, line in describe(err, prefix)]


def load(path: Path | str, environ: Mapping[str, str] | None = None, check_files: bool = False,
         secrets: bool = True) -> LoadedConfig:
    """Read, override from the environment, and validate a device config; raise :class:`ConfigError`.

    The broker's files (password, CA, certificate, key) must exist and the password is read, unless
    ``secrets`` is False (``agent check --connect`` checks those files one by one); ``check_files``
    (``agent check``) also checks every file a driver setting names, which on a device means its hardware
    is in place.
    """
    path = Path(path)
    try:
        device = DeviceConfig.load(path, os.environ if environ is None else environ)
    except InvalidSettings as err:
        raise ConfigError(str(err)) from err
    except ValidationError as err:
        raise ConfigError(f"{path}: " + f"\n{path}: ".join(_describe(err))) from err

    problems: list[str] = []

    resolved: list[tuple[drivers.DriverKind, drivers.DriverConfig]] = []
    indexed: list[tuple[int, drivers.DriverConfig]] = []
    names: dict[str, int] = {}
    claimed: dict[str, int] = {}
    for index, entry in enumerate(device.drivers):
        where = ("drivers", index)
        kind_name = entry.get("kind")
        if not isinstance(kind_name, str):
            problems.append(f"{location((*where, 'kind'))}: Field required: one of "
                            f"{', '.join(drivers.available_kinds())}")
            continue
        try:
            kind = drivers.load(kind_name)
        except ConfigError as err:
            problems.append(f"{location((*where, 'kind'))}: {err}")
            continue
        try:
            config = kind.config_model.model_validate(entry)
        except ValidationError as err:
            problems.extend(_describe(err, where))
            continue
        if config.name in names:
            problems.append(f"{location((*where, 'name'))}: {config.name!r} is already the name of "
                            f"drivers[{names[config.name]}]; sensor names must be unique")
            continue
        names[config.name] = index
        for claim in sorted(config.claims()):
            if claim in claimed:
                other = claimed[claim]
                problems.append(f"{location((*where,))}: {config.name!r} claims {claim}, already claimed by "
                                f"drivers[{other}] ({device.drivers[other].get('name')!r}); one device per port or pin")
            else:
                claimed[claim] = index
        resolved.append((kind, config))
        indexed.append((index, config))
    if device.kiosk is not None:
        kinds = {conf.name: kind.kind for kind, conf in resolved}
        for key, kind_name in (("card_reader", "thai_id_card"), ("printer", "escpos_printer")):
            name = getattr(device.kiosk, key)
            if name is not None and kinds.get(name) != kind_name:
                problems.append(f"kiosk.{key}: {name!r} is not the name of a {kind_name} entry in [[drivers]]")
        if device.kiosk.reports and device.location is None:
            problems.append("kiosk.reports: problem reports need the kiosk's location = { lat = ..., lon = ... }")
    def relative(named: Path) -> Path:
        return named if named.is_absolute() else path.parent / named

    if secrets:
        problems += _broker_file_problems(device, relative)
    if check_files:
        problems += _driver_file_problems(indexed, relative)
        if device.broker.password_file is not None and not relative(device.broker.password_file).is_file():
            problems.append(f"broker.password_file: no such file {relative(device.broker.password_file)}")
    if problems:
        raise ConfigError(f"{path}: " + f"\n{path}: ".join(problems))

    password = None
    if device.broker.password_file is not None and secrets:
        secret = device.broker.password_file
        if not secret.is_absolute():
            secret = path.parent / secret
        try:
            password = read_secret(secret, str(path), "broker.password_file", private=False)
        except InvalidSettings as err:
            raise ConfigError(str(err)) from err
    return LoadedConfig(path=path, device=device, drivers=tuple(resolved), password=password)
