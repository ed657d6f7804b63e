"""DS18B20: the w1_slave answer parsed from recorded text, and the driver on a simulated sysfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load
from edge.drivers.ds18b20 import Config, Driver, ProbeError, ProbeSimulator, parse_w1_slave, simulate
from edge.errors import ConfigError, DeviceUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "ds18b20"


@pytest.mark.parametrize("name,expected", [("good.txt", 23.125), ("below_zero.txt", -10.125)])
def test_recorded_answers_parse(name: str, expected: float) -> None:
    assert parse_w1_slave((FIXTURES / name).read_text()) == expected


@pytest.mark.parametrize("name,message", [("bad_crc.txt", "CRC check failed"), ("power_on.txt", "power-on value")])
def test_bad_answers_are_the_projects_errors(name: str, message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        parse_w1_slave((FIXTURES / name).read_text())


def test_reads_the_simulated_probe_and_recovers_from_a_crc_error(tmp_path: Path) -> None:
    sim = ProbeSimulator(tmp_path, crc_error_rate=0.0, seed=3)  # driven by hand: no timing
    sim.write()
    driver = Driver(Config(name="t", devices_dir=tmp_path))
    driver.open()
    celsius = driver.read()["temperature"]
    assert isinstance(celsius, float)
    assert abs(celsius - sim.celsius) < 0.07  # 1/16 degC resolution
    slave = tmp_path / ProbeSimulator.PROBE / "w1_slave"
    slave.write_text((FIXTURES / "bad_crc.txt").read_text())
    with pytest.raises(DeviceUnavailable, match="CRC"):
        driver.read()
    sim.write()
    assert isinstance(driver.read()["temperature"], float)
    driver.close()


def test_a_missing_probe_says_what_to_check(tmp_path: Path) -> None:
    driver = Driver(Config(name="t", devices_dir=tmp_path))
    with pytest.raises(DeviceUnavailable, match="dtoverlay=w1-gpio"):
        driver.open()
    with simulate(Config(name="t")) as conf:
        named = Driver(conf.model_copy(update={"probe": "28-000000000000"}))
        with pytest.raises(DeviceUnavailable, match="no probe 28-000000000000"):
            named.open()


def test_two_drivers_on_one_probe_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('device = "kk-aq-0009"\n[[drivers]]\nkind = "ds18b20"\nname = "a"\nprobe = "28-0316a2799cff"\n'
                    '[[drivers]]\nkind = "ds18b20"\nname = "b"\nprobe = "28-0316a2799cff"\n')
    with pytest.raises(ConfigError, match="'b' claims w1:28-0316a2799cff, already claimed by drivers\\[0\\] \\('a'\\)"):
        load(path, environ={})
