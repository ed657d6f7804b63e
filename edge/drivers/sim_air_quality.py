"""Simulated particulate sensor (PM2.5 and PM10): hazy mornings, clearer afternoons, and outages."""

from __future__ import annotations

import random
from typing import Annotated, ClassVar, Literal

from pydantic import Field as PydanticField

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field
from edge.drivers._simulation import DailyWalk, Outages, wall_clock
from edge.errors import DeviceUnavailable


class Config(DriverConfig):
    """A simulated air-quality sensor."""

    kind: Literal["sim_air_quality"] = "sim_air_quality"
    pm2_5_mean: Annotated[float, PydanticField(ge=0, le=1000)] = 32.0
    seed: int | None = None
    outage_rate: Annotated[float, PydanticField(ge=0, le=1)] = 0.0
    outage_reads: Annotated[int, PydanticField(ge=1)] = 3


SAMPLE_CONFIG = {"kind": "sim_air_quality", "name": "pm", "interval_s": 10, "pm2_5_mean": 32.0}

TELEMETRY: tuple[Field, ...] = (
    Field("pm2_5", "ug/m3", float, "fine particulate matter (atmospheric), 24 h Thai limit 37.5"),
    Field("pm10", "ug/m3", float, "coarse particulate matter (atmospheric)"),
)


class Driver:
    """Reads PM2.5 and PM10 from a simulated sensor."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._walk = DailyWalk(self._rng, config.pm2_5_mean, daily_swing=-0.3 * config.pm2_5_mean,
                               noise=1.5, low=0.0, high=1000.0, peak_hour=14.0)
        self._outages = Outages(self._rng, config.outage_rate, config.outage_reads)
        self._open = False

    def open(self) -> None:
        """Power the simulated sensor up."""
        self._open = True

    def read(self) -> dict[str, Scalar]:
        """One sample of both quantities."""
        if not self._open:
            raise DeviceUnavailable(f"{self._config.name}: sensor is not open")
        self._outages.check(self._config.name)
        pm2_5 = self._walk.sample(wall_clock())
        return {"pm2_5": round(pm2_5, 1), "pm10": round(pm2_5 * self._rng.uniform(1.3, 1.7), 1)}

    def close(self) -> None:
        """Power the simulated sensor down."""
        self._open = False
