"""Thai AQI (PCD 2023) at the band edges, the overall index, and the 24-hour averaging rule."""

from __future__ import annotations

import pytest

from hub import aqi


@pytest.mark.parametrize(("pm25", "index", "colour"), [
    (0.0, 0, "blue"), (15.0, 25, "blue"), (15.1, 26, "green"), (25.0, 50, "green"), (25.1, 51, "yellow"),
    (37.5, 100, "yellow"), (37.6, 101, "orange"), (75.0, 200, "orange"), (75.1, 201, "red"),
])
def test_pm25_band_edges_of_the_2023_table(pm25: float, index: int, colour: str) -> None:
    value = aqi.thai_aqi({"pm2_5": pm25})
    assert value is not None
    assert (value.aqi, value.colour) == (index, colour)
    assert value.effective.isoformat() == "2023-06-01"


def test_concentrations_are_rounded_to_the_tables_precision_before_banding() -> None:
    assert aqi.sub_index("pm2_5", 15.04) == (25, 0)
    assert aqi.sub_index("pm2_5", 15.05) == (26, 1)
    assert aqi.sub_index("pm10", 50.4) == (25, 0)
    assert aqi.sub_index("pm10", 50.5) == (26, 1)


def test_the_overall_index_is_the_highest_sub_index() -> None:
    value = aqi.thai_aqi({"pm2_5": 20.0, "pm10": 150.0})
    assert value is not None
    assert value.sub_indices == {"pm2_5": 38, "pm10": 150}
    assert (value.aqi, value.band, value.meaning_en) == (150, 3, "starting to affect health")


def test_the_old_pm25_table_is_kept_as_data_and_bands_differ() -> None:
    assert aqi.sub_index("pm2_5", 25.0, aqi.PCD_2018_PM25)[0] == 25
    assert aqi.sub_index("pm2_5", 25.0)[0] == 50


def test_a_24_hour_average_needs_12_hours_of_data() -> None:
    end = 100 * 86_400.0
    eleven = [(end - 3600 * h - 60, 30.0) for h in range(11)]
    assert aqi.daily_average(eleven, end) is None
    twelve = [*eleven, (end - 3600 * 11 - 60, 42.0)]
    assert aqi.daily_average(twelve, end) == pytest.approx(31.0)


def test_the_daily_average_is_the_mean_of_hourly_means_and_the_hourly_value_is_the_last_hour() -> None:
    end = 100 * 86_400.0
    samples = [(end - 3600 * h - s, 10.0 + h) for h in range(24) for s in (100, 200, 300)]
    samples += [(end - 50, 100.0)] * 30  # many samples in the last hour weigh as one hour
    daily = aqi.daily_average(samples, end)
    assert daily is not None
    assert daily < 30
    assert aqi.hourly_average(samples, end) == pytest.approx((10.0 * 3 + 100.0 * 30) / 33)
    assert aqi.hourly_average([], end) is None


def test_negative_or_unknown_pollutants_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        aqi.sub_index("pm2_5", -1)
    with pytest.raises(KeyError):
        aqi.sub_index("o3", 1.0)
    assert aqi.thai_aqi({"o3": 1.0}) is None
