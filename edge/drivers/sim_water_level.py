"""Simulated water-level gauge for a canal or retention pond: slow base level, storms that raise it."""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import Field as PydanticField

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field
from edge.drivers._simulation import Outages
from edge.errors import DeviceUnavailable


class Config(DriverConfig):
    """A simulated water-level gauge."""

    kind: Literal["sim_water_level"] = "sim_water_level"
    base_level_m: Annotated[float, PydanticField(ge=0, le=20)] = 1.2
    bank_level_m: Annotated[float, PydanticField(gt=0, le=30)] = 3.0
    storm_rate: Annotated[float, PydanticField(ge=0, le=1)] = 0.01
    seed: int | None = None
    outage_rate: Annotated[float, PydanticField(ge=0, le=1)] = 0.0
    outage_reads: Annotated[int, PydanticField(ge=1)] = 3


SAMPLE_CONFIG = {"kind": "sim_water_level", "name": "gauge", "interval_s": 60, "base_level_m": 1.2}

TELEMETRY: tuple[Field, ...] = (
    Field("water_level", "m", float, "water surface above the gauge datum"),
    Field("above_bank", None, bool, "true when the water is above the bank level"),
)


class Driver:
    """Reads the water level from a simulated gauge."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._outages = Outages(self._rng, config.outage_rate, config.outage_reads)
        self._level = config.base_level_m
        self._storm_left = 0
        self._open = False

    def open(self) -> None:
        """Power the simulated gauge up."""
        self._open = True

    def read(self) -> dict[str, Scalar]:
        """One sample: the level rises during a storm and drains back to the base level after."""
        if not self._open:
            raise DeviceUnavailable(f"{self._config.name}: gauge is not open")
        self._outages.check(self._config.name)
        if self._storm_left == 0 and self._rng.random() < self._config.storm_rate:
            self._storm_left = self._rng.randint(10, 60)
        if self._storm_left > 0:
            self._storm_left -= 1
            self._level += self._rng.uniform(0.01, 0.08)
        else:
            self._level += (self._config.base_level_m - self._level) * 0.05
        self._level = max(0.0, self._level + self._rng.gauss(0.0, 0.003))
        return {"water_level": round(self._level, 3), "above_bank": self._level > self._config.bank_level_m}

    def close(self) -> None:
        """Power the simulated gauge down."""
        self._open = False
