"""Thai AQI (Pollution Control Department, B.E. 2566): band tables as data, sub-indices and the overall index.

Each pollutant's concentration is rounded to the table's precision, placed in its band and interpolated linearly
inside it; the overall AQI is the highest sub-index. The notification judges PM2.5 and PM10 on 24-hour averages
that need at least 12 hours of data; :func:`daily_average` computes them from samples, :func:`hourly_average` the
value of the last hour that displays show. Above the last bounded band the index keeps the slope of the band
below it (the notification gives no upper bound; the value is only ever shown as "> 200, red").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel


@dataclass(frozen=True)
class Band:
    """One row of the table: an index range, its meaning and colour, and each pollutant's concentration range."""

    low: int
    high: int | None
    colour: str
    meaning_th: str
    meaning_en: str


@dataclass(frozen=True)
class AqiTable:
    """A published AQI table: its bands and, per pollutant, the concentration range of each band."""

    name: str
    effective: date
    bands: tuple[Band, ...]
    breakpoints: dict[str, tuple[tuple[float, float | None], ...]]
    precision: dict[str, int]
    """Decimal places a concentration is rounded to before it is placed in a band."""


PCD_2023 = AqiTable(
    name="PCD B.E. 2566 (2023)",
    effective=date(2023, 6, 1),
    bands=(
        Band(0, 25, "blue", "คุณภาพอากาศดีมาก", "very good"),
        Band(26, 50, "green", "คุณภาพอากาศดี", "good"),
        Band(51, 100, "yellow", "ปานกลาง", "moderate"),
        Band(101, 200, "orange", "เริ่มมีผลกระทบต่อสุขภาพ", "starting to affect health"),
        Band(201, None, "red", "มีผลกระทบต่อสุขภาพ", "affects health"),
    ),
    breakpoints={
        "pm2_5": ((0.0, 15.0), (15.1, 25.0), (25.1, 37.5), (37.6, 75.0), (75.1, None)),
        "pm10": ((0.0, 50.0), (51.0, 80.0), (81.0, 120.0), (121.0, 180.0), (181.0, None)),
    },
    precision={"pm2_5": 1, "pm10": 0},
)
"""The table in force since 1 June 2023 (24-hour averages of PM2.5 and PM10, µg/m³)."""

PCD_2018_PM25 = AqiTable(
    name="PCD 2018 (PM2.5 bands before June 2023)",
    effective=date(2018, 10, 1),
    bands=PCD_2023.bands,
    breakpoints={"pm2_5": ((0.0, 25.0), (26.0, 37.0), (38.0, 50.0), (51.0, 90.0), (91.0, None))},
    precision={"pm2_5": 0},
)
"""The older PM2.5 bands many Thai sites still show; kept for comparisons, not used by default."""

TABLES = (PCD_2023, PCD_2018_PM25)
MIN_HOURS = 12
"""A 24-hour average needs data in at least this many of its hours."""


class AqiValue(BaseModel):
    """The Thai AQI of a place and what it means."""

    aqi: int
    band: int
    colour: str
    meaning_th: str
    meaning_en: str
    sub_indices: dict[str, int]
    table: str
    effective: date


def _rounded(value: float, places: int) -> float:
    return float(Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def sub_index(pollutant: str, concentration: float, table: AqiTable = PCD_2023) -> tuple[int, int]:
    """The sub-index of one pollutant and the band it falls in (0-based)."""
    if pollutant not in table.breakpoints:
        raise KeyError(f"{table.name} has no bands for {pollutant!r}")
    if concentration < 0:
        raise ValueError(f"a concentration cannot be negative: {concentration}")
    x = _rounded(concentration, table.precision[pollutant])
    ranges = table.breakpoints[pollutant]
    for i, ((x_lo, x_hi), band) in enumerate(zip(ranges, table.bands, strict=True)):
        if x_hi is not None and x > x_hi:
            continue
        if x_hi is None or band.high is None:
            prev_lo, prev_hi = ranges[i - 1]
            below = table.bands[i - 1]
            slope = (float(below.high or 0) - below.low) / (float(prev_hi or 0) - prev_lo)
            return int(_rounded(band.low + slope * (x - x_lo), 0)), i
        value = (band.high - band.low) / (x_hi - x_lo) * (max(x, x_lo) - x_lo) + band.low
        return int(_rounded(value, 0)), i
    raise AssertionError("the last band is open-ended")


def band_of(aqi: int, table: AqiTable = PCD_2023) -> int:
    """The band (0-based) an index value falls in."""
    for i, band in enumerate(table.bands):
        if band.high is None or aqi <= band.high:
            return i
    raise AssertionError("the last band is open-ended")


def thai_aqi(concentrations: dict[str, float], table: AqiTable = PCD_2023) -> AqiValue | None:
    """The overall AQI from the pollutants given (the highest sub-index); None when none is in the table."""
    subs = {p: sub_index(p, c, table)[0] for p, c in concentrations.items() if p in table.breakpoints}
    if not subs:
        return None
    aqi = max(subs.values())
    i = band_of(aqi, table)
    band = table.bands[i]
    return AqiValue(aqi=aqi, band=i, colour=band.colour, meaning_th=band.meaning_th, meaning_en=band.meaning_en,
                    sub_indices=subs, table=table.name, effective=table.effective)


def _hour_means(samples: Iterable[tuple[float, float]], start: float, end: float) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    for ts, value in samples:
        if start <= ts < end:
            acc = sums.setdefault(int((ts - start) // 3600), [0.0, 0.0])
            acc[0] += value
            acc[1] += 1
    return {hour: total / n for hour, (total, n) in sums.items()}


def daily_average(samples: Iterable[tuple[float, float]], at: float) -> float | None:
    """The 24-hour average ending at ``at`` (unix seconds) as the mean of hourly means; None below 12 hours."""
    hours = _hour_means(samples, at - 86_400, at)
    if len(hours) < MIN_HOURS:
        return None
    return sum(hours.values()) / len(hours)


def hourly_average(samples: Iterable[tuple[float, float]], at: float) -> float | None:
    """The mean of the hour ending at ``at``, for display; None without data in it."""
    hours = _hour_means(samples, at - 3600, at)
    return hours.get(0)
