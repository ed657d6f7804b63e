"""Drivers: one module per kind of hardware, behind two small protocols and a registry by kind.

A driver module ``edge/drivers/<kind>.py`` exports:

- ``Config``: a pydantic model derived from :class:`DriverConfig` (unknown keys are refused);
- ``Driver``: a class built as ``Driver(config)`` that does no I/O in its constructor and follows
  either :class:`PolledDriver` (``open``, ``read``, ``close``) or :class:`EventDriver` (``start(emit)``, ``stop``);
- ``SAMPLE_CONFIG``: a ``[[drivers]]`` entry (as a dict) that validates, for docs and the contract tests;
- optionally ``present(config)``: a :class:`Presence` saying whether the device is there (its port, bus or
  reader), without opening it; ``nakhon agent check --connect`` prints it;
- optionally ``simulate(config)``: a context manager that starts the driver's simulator (speaking the device's
  real protocol, on a pty, a TCP port or a mock pin factory) and yields a config pointing the driver at it.
  ``nakhon agent run --simulate`` and the demo use it; a module without one is its own simulator.

Polled drivers also declare ``TELEMETRY``, a table of :class:`Field` rows naming each quantity they read.
Drivers are synchronous and know nothing about MQTT; agents run them in threads.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic import Field as PydanticField

from edge.contract import Scalar, Severity
from edge.errors import ConfigError

SensorName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class DriverConfig(BaseModel):
    """Keys every ``[[drivers]]`` entry has; each driver's ``Config`` adds its own and forbids the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    name: SensorName
    interval_s: Annotated[float, PydanticField(gt=0, le=86_400)] = 10.0

    def claims(self) -> set[str]:
        """Hardware this driver holds exclusively (``serial:/dev/ttyUSB0``, ``gpio:17``); two drivers of one
        device may not claim the same thing."""
        return set()


@dataclass(frozen=True)
class Field:
    """One row of a driver's telemetry table: a quantity it reads, its unit and value type."""

    quantity: str
    unit: str | None
    type: type[Scalar]
    description: str


@dataclass(frozen=True)
class DriverEvent:
    """Something an event driver saw; the agent stamps it, numbers it and sends it."""

    event: str
    severity: Severity = Severity.INFO
    data: Mapping[str, Any] = field(default_factory=dict)
    """What the event publishes: never personal data (events are kept by the hub and shown to staff)."""
    private: Mapping[str, Any] = field(default_factory=dict)
    """Personal data for the device's own flow (a card holder's name for the kiosk's receipt): handed to the
    agent's event listeners in memory only, never committed to the outbox nor published."""


EmitEvent = Callable[[DriverEvent], None]
"""Called by an event driver, from any thread, for each event."""


@runtime_checkable
class PolledDriver(Protocol):
    """A device the agent reads on a schedule.

    ``open`` acquires the device, ``read`` returns one value per quantity of ``TELEMETRY`` (a quantity may
    be missing when the device did not report it), ``close`` releases it and is safe to call twice or on a
    half-opened driver. Every failure is raised as :class:`edge.errors.DriverError`.
    """

    TELEMETRY: ClassVar[tuple[Field, ...]]

    def open(self) -> None:
        """Acquire the device."""

    def read(self) -> dict[str, Scalar]:
        """Read one sample: quantity -> value."""

    def close(self) -> None:
        """Release the device (idempotent)."""


@runtime_checkable
class EventDriver(Protocol):
    """A device that tells the agent when something happens.

    ``start(emit)`` acquires the device and calls ``emit`` from its own thread for each event;
    ``stop`` releases it and is idempotent. Failures are raised as :class:`edge.errors.DriverError`.
    """

    def start(self, emit: EmitEvent) -> None:
        """Acquire the device and begin emitting events."""

    def stop(self) -> None:
        """Stop emitting and release the device (idempotent)."""


@runtime_checkable
class ClockSource(Protocol):
    """A driver that can tell the time (a GPS receiver), offered to the agent when the system clock is not
    synchronised."""

    def time_offer(self) -> tuple[datetime, float] | None:
        """The latest UTC time the device reported and the ``time.monotonic()`` at which it arrived."""


@runtime_checkable
class HealthReporting(Protocol):
    """An event driver that can say, after ``start``, that its device failed (a reader unplugged)."""

    def health(self) -> str | None:
        """None while the device works, else what is wrong (the agent marks the stream unavailable)."""


@dataclass(frozen=True)
class Presence:
    """What a driver module's ``present(config)`` found, for a technician: the device is there, or what to do."""

    ok: bool
    detail: str
    fix: str | None = None
    device_file: str | None = None
    """The file the driver opens; ``agent check`` tests the service user's permissions on it."""
    group: str | None = None
    """The group that grants access to ``device_file`` (``dialout``, ``gpio``)."""


CheckPresent = Callable[[Any], Presence]
"""A driver module's ``present(config)``."""

Simulate = Callable[[Any], AbstractContextManager[Any]]
"""A driver module's ``simulate(config)``: runs the simulator while the context is open, yields the config to use."""


@dataclass(frozen=True)
class DriverKind:
    """A driver module found by the registry."""

    kind: str
    config_model: type[DriverConfig]
    driver_class: type[Any]
    sample_config: Mapping[str, Any]
    simulate: Simulate | None = None
    present: CheckPresent | None = None

    @property
    def polled(self) -> bool:
        """True for a polled driver, False for an event driver."""
        return hasattr(self.driver_class, "read")

    def build(self, config: DriverConfig) -> PolledDriver | EventDriver:
        """Construct the driver (no I/O happens here)."""
        driver: PolledDriver | EventDriver = self.driver_class(config)
        return driver


def available_kinds() -> list[str]:
    """The kinds of every driver module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(kind: str) -> DriverKind:
    """Import the driver module named ``kind`` and check it exports what a driver must."""
    if kind not in available_kinds():
        raise ConfigError(f"unknown driver kind {kind!r}; known kinds: {', '.join(available_kinds())}")
    module: ModuleType = importlib.import_module(f"{__name__}.{kind}")
    config_model = getattr(module, "Config", None)
    driver_class = getattr(module, "Driver", None)
    sample = getattr(module, "SAMPLE_CONFIG", None)
    if not (isinstance(config_model, type) and issubclass(config_model, DriverConfig)):
        raise ConfigError(f"driver module {kind!r} has no Config derived from DriverConfig")
    if driver_class is None or sample is None:
        raise ConfigError(f"driver module {kind!r} must export Driver and SAMPLE_CONFIG")
    return DriverKind(kind=kind, config_model=config_model, driver_class=driver_class, sample_config=sample,
                      simulate=getattr(module, "simulate", None), present=getattr(module, "present", None))
