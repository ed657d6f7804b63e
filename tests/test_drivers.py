"""Every driver module honours the driver contract: strict config, a valid sample, open/read/close or start/stop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import pytest
from pydantic import ValidationError

from edge import drivers
from edge.drivers import DriverEvent, EventDriver, PolledDriver
from edge.errors import DeviceUnavailable, NakhonError
from tests.conftest import wait_for

KINDS = drivers.available_kinds()


def _nothing(config: Any) -> None:
    """No stimulus: the simulator's world acts by itself."""


def _press_the_button(config: Any) -> None:
    """Press the simulated button and hold it (the sample is pulled up: pressed is low)."""
    pin = config._board.pin(config.pin)
    pin.drive_high()
    pin.drive_low()


@dataclass(frozen=True)
class Stimulus:
    """How a test makes an event driver's simulated device emit: config changes, an act, the event that follows."""

    expected: str
    overrides: dict[str, Any] = dc_field(default_factory=dict)
    act: Callable[[Any], None] = _nothing
    start_refused: bool = False
    """The device is unusable: ``start`` raises DeviceUnavailable after emitting ``expected``."""


EVENT_ON_SIMULATOR: dict[str, Stimulus] = {
    "escpos_printer": Stimulus("printer.offline", {"port": "/dev/null/no-printer"}, start_refused=True),
    "gpio": Stimulus("sos.pressed", act=_press_the_button),
    "serial_scanner": Stimulus("scan.read"),  # the simulated citizen scans every 8 s on average
    "sim_button": Stimulus("sos.pressed", {"seed": 1, "mean_gap_s": 0.01}),
    "thai_id_card": Stimulus("reader.ready"),
}


def test_every_event_driver_says_how_to_make_its_simulator_emit() -> None:
    assert sorted(EVENT_ON_SIMULATOR) == [k for k in KINDS if not drivers.load(k).polled]


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
            stimulus = EVENT_ON_SIMULATOR[kind]
            driver = k.build(simulated.model_copy(update=stimulus.overrides))  # a copy keeps the simulated board
            assert isinstance(driver, EventDriver)
            got: list[DriverEvent] = []
            try:
                if stimulus.start_refused:
                    with pytest.raises(DeviceUnavailable):
                        driver.start(got.append)
                else:
                    driver.start(got.append)
                stimulus.act(simulated)
                wait_for(lambda: any(e.event == stimulus.expected for e in got), 60,
                         f"{kind} to emit {stimulus.expected}")
            finally:
                driver.stop()
            driver.stop()  # idempotent
            assert all(isinstance(event, DriverEvent) for event in got)
            count = len(got)
            stimulus.act(simulated)
            assert len(got) == count, f"{kind} emitted after stop()"


def test_the_button_simulator_presses() -> None:
    k = drivers.load("sim_button")
    seen = threading.Event()
    got: list[DriverEvent] = []
    driver = k.build(k.config_model.model_validate({**k.sample_config, "seed": 1, "mean_gap_s": 0.01}))
    assert isinstance(driver, EventDriver)

    def emit(event: DriverEvent) -> None:
        got.append(event)
        seen.set()

    driver.start(emit)
    try:
        assert seen.wait(5)
    finally:
        driver.stop()
    assert got[0].event == "sos.pressed"


def test_an_outage_raises_the_projects_own_error() -> None:
    k = drivers.load("sim_air_quality")
    driver = k.build(k.config_model.model_validate({**k.sample_config, "outage_rate": 1.0}))
    assert isinstance(driver, PolledDriver)
    driver.open()
    with pytest.raises(DeviceUnavailable) as err:
        driver.read()
    assert isinstance(err.value, NakhonError) and isinstance(err.value, OSError)
    driver.close()


def test_reading_a_closed_driver_is_a_driver_error() -> None:
    k = drivers.load("sim_water_level")
    driver = k.build(k.config_model.model_validate(k.sample_config))
    assert isinstance(driver, PolledDriver)
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()
