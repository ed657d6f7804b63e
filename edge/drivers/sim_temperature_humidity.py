"""Simulated temperature and relative-humidity sensor with a tropical daily cycle."""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import Field as PydanticField

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field
from edge.drivers._simulation import DailyWalk, Outages, wall_clock
from edge.errors import DeviceUnavailable


class Config(DriverConfig):
    """A simulated temperature/humidity sensor."""

    kind: Literal["sim_temperature_humidity"] = "sim_temperature_humidity"
    temperature_mean_c: Annotated[float, PydanticField(ge=-40, le=60)] = 29.0
    seed: int | None = None
    outage_rate: Annotated[float, PydanticField(ge=0, le=1)] = 0.0
    outage_reads: Annotated[int, PydanticField(ge=1)] = 3


SAMPLE_CONFIG = {"kind": "sim_temperature_humidity", "name": "climate", "interval_s": 30}

TELEMETRY: tuple[Field, ...] = (
    Field("temperature", "degC", float, "air temperature"),
    Field("humidity", "%RH", float, "relative humidity"),
)


class Driver:
    """Reads temperature and humidity from a simulated sensor."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        rng = random.Random(config.seed)
        self._temperature = DailyWalk(rng, config.temperature_mean_c, daily_swing=4.0, noise=0.2,
                                      low=-40.0, high=60.0, peak_hour=15.0)
        self._humidity = DailyWalk(rng, 70.0, daily_swing=-15.0, noise=1.0, low=5.0, high=100.0,
                                   peak_hour=15.0)
        self._outages = Outages(rng, config.outage_rate, config.outage_reads)
        self._open = False

    def open(self) -> None:
        """Power the simulated sensor up."""
        self._open = True

    def read(self) -> dict[str, Scalar]:
        """One sample of both quantities."""
        if not self._open:
            raise DeviceUnavailable(f"{self._config.name}: sensor is not open")
        self._outages.check(self._config.name)
        at = wall_clock()
        return {"temperature": round(self._temperature.sample(at), 2),
                "humidity": round(self._humidity.sample(at), 1)}

    def close(self) -> None:
        """Power the simulated sensor down."""
        self._open = False
