"""Every driver module honours the driver contract: strict config, a valid sample, open/read/close or start/stop."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from pydantic import ValidationError

from edge import drivers
from edge.drivers import DriverEvent, EventDriver, PolledDriver
from edge.errors import DeviceUnavailable, NakhonError

KINDS = drivers.available_kinds()


def test_the_registry_finds_the_simulated_sensors() -> None:
    assert {"sim_air_quality", "sim_temperature_humidity", "sim_water_level", "sim_button"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_config_forbids_unknown_keys_and_the_sample_validates(kind: str) -> None:
    k = drivers.load(kind)
    conf = k.config_model.model_validate(k.sample_config)
    assert conf.kind == kind
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        k.config_model.model_validate({**k.sample_config, "not_a_key": 1})


@pytest.mark.parametrize("kind", KINDS)
def test_driver_opens_reads_and_closes_on_its_simulator(kind: str) -> None:
    """Only the project's own errors may come out of a driver; a polled driver must read within 30 tries."""
    k = drivers.load(kind)
    conf = k.config_model.model_validate(k.sample_config)
    with k.simulate(conf) if k.simulate else contextlib.nullcontext(conf) as simulated:
        driver = k.build(simulated)
        if isinstance(driver, PolledDriver):
            values = []
            driver.open()
            try:
                for _ in range(30):
                    try:
                        values.append(driver.read())
                    except DeviceUnavailable:
                        time.sleep(0.2)  # a simulator may be warming up or silent for a while
                        continue
                    if len(values) >= 3:
                        break
            finally:
                driver.close()
            driver.close()  # idempotent
            assert values, f"{kind} never read on its simulator"
            declared = {f.quantity: f for f in driver.TELEMETRY}
            for sample in values:
                assert set(sample) <= set(declared)
                for quantity, value in sample.items():
                    assert isinstance(value, declared[quantity].type), (quantity, value)
        else:
            assert isinstance(driver, EventDriver)
            got: list[DriverEvent] = []
            driver.start(got.append)
            time.sleep(0.5)
            driver.stop()
            driver.stop()  # idempotent
            for event in got:
                assert isinstance(event, DriverEvent)


def test_the_button_simulator_presses() -> None:
    k = drivers.load("sim_button")
    seen = threading.Event()
    got: list[DriverEvent] = []
    driver = k.build(k.config_model.model_validate({**k.sample_config, "seed": 1, "mean_gap_s": 0.01}))
    driver.start(lambda e: (got.append(e), seen.set()))  # type: ignore[union-attr]
    try:
        assert seen.wait(5)
    finally:
        driver.stop()  # type: ignore[union-attr]
    assert got[0].event == "sos.pressed"


def test_an_outage_raises_the_projects_own_error() -> None:
    k = drivers.load("sim_air_quality")
    driver = k.build(k.config_model.model_validate({**k.sample_config, "outage_rate": 1.0}))
    driver.open()
    with pytest.raises(DeviceUnavailable) as err:
        driver.read()  # type: ignore[union-attr]
    assert isinstance(err.value, NakhonError) and isinstance(err.value, OSError)
    driver.close()  # type: ignore[union-attr]


def test_reading_a_closed_driver_is_a_driver_error() -> None:
    k = drivers.load("sim_water_level")
    driver = k.build(k.config_model.model_validate(k.sample_config))
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()  # type: ignore[union-attr]
