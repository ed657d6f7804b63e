"""The ``hcsr04`` driver: echo timings to distance and water level, on gpiozero's MockFactory (a real Pi opt-in)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockTriggerPin

from edge import config
from edge.drivers import hcsr04
from edge.drivers._gpio import on_board
from edge.drivers._gpio_sim import NO_ECHO_S, EchoPin, Sonar, WaterSurface
from edge.errors import ConfigError, DeviceUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "hcsr04"
C_30 = hcsr04.speed_of_sound(30.0)


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads still running after the test: {left}"


@pytest.fixture
def board() -> Iterator[MockFactory]:
    b = MockFactory()
    yield b
    b.close()


def sensor(board: MockFactory, **keys: Any) -> hcsr04.Driver:
    conf = hcsr04.Config.model_validate({"kind": "hcsr04", "name": "canal", "trigger": 23, "echo": 24,
                                         "mount_height_m": 3.0, **keys})
    return hcsr04.Driver(on_board(conf, board))


class Target:
    """Something ``distance_m`` in front of a mock HC-SR04 at 30 C; None: nothing within its reach."""

    def __init__(self, distance_m: float | None) -> None:
        self.distance_m = distance_m

    def echo_s(self, at: float) -> float:
        return NO_ECHO_S if self.distance_m is None else 2 * self.distance_m / C_30


def facing(board: MockFactory, distance_m: float | None) -> Target:
    """A simulated HC-SR04 on BCM 23 (TRIG) and 24 (ECHO) of the mock board, in front of a target."""
    target = Target(distance_m)
    board.pin(23, pin_class=Sonar, echo_pin=board.pin(24, pin_class=EchoPin), surface=target)
    return target


def load_burst(name: str) -> list[float | None]:
    """The pulse of each ping of a fixture read (see the fixture's header for its format)."""
    pulses = []
    for line in (FIXTURES / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        edges = [] if line == "-" else [(float(t), lv == "1") for t, lv in (tok.split(":") for tok in line.split())]
        pulses.append(hcsr04.pulse_width(edges))
    return pulses


# -- pure ----------------------------------------------------------------------------------------

def test_sound_is_faster_on_a_thai_afternoon() -> None:
    assert hcsr04.speed_of_sound(20.0) == pytest.approx(343.2, abs=0.1)
    assert hcsr04.speed_of_sound(30.0) == pytest.approx(349.0, abs=0.1)
    # 3 m read with the 20 C figure on a 35 C afternoon: a water level 7.4 cm too high.
    assert 3.0 * (1 - hcsr04.speed_of_sound(20.0) / hcsr04.speed_of_sound(35.0)) == pytest.approx(0.074, abs=0.001)


@pytest.mark.parametrize("fixture,pulses_ok,distance", [
    ("canal_1m650.txt", 5, 1.650),
    ("bird_and_lost_ping.txt", 5, 2.099),  # the bird is outvoted, the 38 ms ping is beyond range
    ("nothing_in_range.txt", 5, None),
    ("silent.txt", 0, None),
])
def test_a_recorded_burst_gives_the_distance(fixture: str, pulses_ok: int, distance: float | None) -> None:
    pulses = load_burst(fixture)
    assert len(pulses) == 5 and sum(p is not None for p in pulses) == pulses_ok
    measured = hcsr04.measure(pulses, C_30, max_distance_m=4.0)
    assert measured == (None if distance is None else pytest.approx(distance, abs=0.001))


def test_a_ping_that_started_on_the_last_echos_falling_edge_still_measures_its_own_pulse() -> None:
    assert hcsr04.pulse_width([(0.0, False), (0.0004, True), (0.0124, False)]) == pytest.approx(0.012)
    assert hcsr04.pulse_width([(0.0, True)]) is None


def test_most_pings_must_come_back() -> None:
    good = 2 * 1.2 / C_30
    assert hcsr04.measure([good, good, good, None, None], C_30, 4.0) == pytest.approx(1.2)
    assert hcsr04.measure([good, good, None, None, NO_ECHO_S], C_30, 4.0) is None
    assert hcsr04.measure([good, good, good], C_30, max_distance_m=1.0) is None


# -- on the mock board ---------------------------------------------------------------------------

def test_the_water_level_is_the_mount_height_minus_the_distance(board: MockFactory) -> None:
    facing(board, 1.20)
    driver = sensor(board, mount_height_m=3.0)
    driver.open()
    try:
        sample = driver.read()
    finally:
        driver.close()
    assert sample["in_range"] is True
    assert sample["distance"] == pytest.approx(1.20, abs=0.005)
    assert sample["water_level"] == pytest.approx(1.80, abs=0.005)
    assert sample["water_level"] == pytest.approx(3.0 - float(sample["distance"]), abs=0.001)


def test_nothing_in_range_flags_the_reads_then_makes_the_sensor_unavailable(board: MockFactory) -> None:
    target = facing(board, None)  # the module times out at 38 ms: nothing came back
    driver = sensor(board, unavailable_after=3, pings=3)
    driver.open()
    try:
        assert driver.read() == {"in_range": False}
        assert driver.read() == {"in_range": False}
        with pytest.raises(DeviceUnavailable, match=r"nothing within 4.0 m for 3 reads in a row \(last read: 3 of 3"):
            driver.read()
    finally:
        driver.close()
    target.distance_m = 1.0  # the agent re-opens after its back-off: the count starts again
    driver.open()
    try:
        assert driver.read()["distance"] == pytest.approx(1.0, abs=0.005)
    finally:
        driver.close()


def test_beyond_max_distance_is_out_of_range_on_gpiozeros_own_trigger_mock(board: MockFactory) -> None:
    board.pin(23, pin_class=MockTriggerPin, echo_pin=board.pin(24), echo_time=2 * 3.2 / C_30)
    driver = sensor(board, max_distance_m=3.0, pings=3)
    driver.open()
    try:
        assert driver.read() == {"in_range": False}
    finally:
        driver.close()


def test_a_disconnected_echo_does_not_hang_the_read(board: MockFactory) -> None:
    board.pin(23)  # TRIG goes nowhere: ECHO never rises
    driver = sensor(board, unavailable_after=1)
    driver.open()
    started = time.monotonic()
    try:
        with pytest.raises(DeviceUnavailable, match="0 of 5 pings echoed"):
            driver.read()
    finally:
        driver.close()
    assert time.monotonic() - started < 1.5


def test_the_driver_follows_the_simulated_canal(board: MockFactory) -> None:
    surface = WaterSurface(3.0, C_30, base_level_m=1.1, rng=random.Random(11))
    board.pin(23, pin_class=Sonar, echo_pin=board.pin(24, pin_class=EchoPin), surface=surface)
    driver = sensor(board)
    driver.open()
    try:
        samples = [(driver.read(), surface.level_m) for _ in range(4)]
    finally:
        driver.close()
    for sample, level in samples:
        assert sample["in_range"] is True
        assert sample["water_level"] == pytest.approx(level, abs=0.01)


def test_reading_before_open_is_unavailable_and_close_is_idempotent(board: MockFactory) -> None:
    driver = sensor(board)
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()
    driver.close()
    driver.open()
    driver.close()
    driver.close()


def test_a_pin_held_by_another_device_is_unavailable(board: MockFactory) -> None:
    first, second = sensor(board), sensor(board)
    first.open()
    try:
        with pytest.raises(DeviceUnavailable, match="GPIOPinInUse"):
            second.open()
        second.close()
    finally:
        first.close()


def test_simulate_yields_a_mock_board_with_both_pins() -> None:
    conf = hcsr04.Config.model_validate(hcsr04.SAMPLE_CONFIG)
    with hcsr04.simulate(conf) as simulated:
        assert simulated.pin_factory == "mock" and simulated.claims() == {"gpio:23", "gpio:24"}
        driver = hcsr04.Driver(simulated)
        driver.open()
        try:
            sample = driver.read()
        finally:
            driver.close()
    assert 0 < float(sample.get("water_level", 1.0)) < 3.0


# -- config ---------------------------------------------------------------------------------------

def test_trigger_and_echo_must_be_two_pins() -> None:
    with pytest.raises(ValueError, match="trigger and echo must be two different pins"):
        hcsr04.Config.model_validate({**hcsr04.SAMPLE_CONFIG, "echo": 23})


def test_a_button_on_the_echo_pin_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('device = "kk-wl-0042"\n'
                    '[[drivers]]\nkind = "hcsr04"\nname = "canal"\ntrigger = 23\necho = 24\nmount_height_m = 3.0\n'
                    '[[drivers]]\nkind = "gpio"\nname = "sos"\ndevice = "button"\npin = 24\n')
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert "drivers[1]: 'sos' claims gpio:24, already claimed by drivers[0] ('canal')" in str(err.value)


# -- a real sensor -----------------------------------------------------------------------------------

@pytest.mark.pi
@pytest.mark.skipif(os.environ.get("NAKHON_TEST_PI") != "1" or "NAKHON_TEST_PI_HCSR04" not in os.environ,
                    reason="set NAKHON_TEST_PI=1 and NAKHON_TEST_PI_HCSR04=trigger,echo,distance_m on a Pi")
def test_a_real_sensor_measures_a_known_distance() -> None:
    """Point the sensor at a wall or board ``distance_m`` away (measured with a tape) and give the air temperature
    in NAKHON_TEST_PI_AIR_C (default 30)."""
    trigger, echo, distance = os.environ["NAKHON_TEST_PI_HCSR04"].split(",")
    conf = hcsr04.Config.model_validate({
        "kind": "hcsr04", "name": "bench", "trigger": int(trigger), "echo": int(echo), "mount_height_m": 5.0,
        "air_temperature_c": float(os.environ.get("NAKHON_TEST_PI_AIR_C", "30")), "pings": 9})
    driver = hcsr04.Driver(conf)
    driver.open()
    try:
        sample = driver.read()
    finally:
        driver.close()
    assert sample["distance"] == pytest.approx(float(distance), abs=0.03)
