"""PMS5003 driver: frames parsed from recorded bytes, and the driver against the simulated sensor on a real pty."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.drivers import pms5003
from edge.drivers._pms5003_sim import PmsSensor
from edge.drivers.pms5003 import BadFrame, Config, Driver, PmsFrame, command, encode_frame, find_frames, parse_frame
from edge.errors import DeviceUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "pms5003"


def fixture(name: str) -> bytes:
    """Bytes of a hex fixture file ('#' starts a comment)."""
    lines = (line.split("#", 1)[0] for line in (FIXTURES / name).read_text().splitlines())
    return bytes.fromhex(" ".join(lines))


CLEAN_AIR = PmsFrame(pm1_0_cf1=18, pm2_5_cf1=25, pm10_cf1=31, pm1_0=18, pm2_5=25, pm10=31,
                     particles_0_3um=3951, particles_0_5um=1107, particles_1_0um=187, particles_2_5um=16,
                     particles_5_0um=5, particles_10um=2, reserved=0x9700)
HAZE = PmsFrame(pm1_0_cf1=119, pm2_5_cf1=172, pm10_cf1=203, pm1_0=79, pm2_5=115, pm10=135,
                particles_0_3um=18420, particles_0_5um=5391, particles_1_0um=1176, particles_2_5um=88,
                particles_5_0um=19, particles_10um=6, reserved=0x9700)


# -- bytes -> values ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("passive", "42 4D E1 00 00 01 70"),
    ("active", "42 4D E1 00 01 01 71"),
    ("read", "42 4D E2 00 00 01 71"),
    ("sleep", "42 4D E4 00 00 01 73"),
    ("wake", "42 4D E4 00 01 01 74"),
])
def test_host_commands_are_the_datasheet_bytes(name: str, expected: str) -> None:
    assert command(name) == bytes.fromhex(expected)


@pytest.mark.parametrize(("name", "expected"), [("clean_air.hex", CLEAN_AIR), ("haze.hex", HAZE)])
def test_recorded_frames_parse_to_their_values(name: str, expected: PmsFrame) -> None:
    raw = fixture(name)
    assert parse_frame(raw) == expected
    assert encode_frame(expected) == raw


def test_atmospheric_words_are_the_ones_reported() -> None:
    frame = parse_frame(fixture("haze.hex"))
    assert (frame.pm1_0, frame.pm2_5, frame.pm10) == (79, 115, 135)  # words 3-5, not the CF=1 words 0-2


@pytest.mark.parametrize(("name", "reason"), [
    ("bad_checksum.hex", "checksum"),
    ("wrong_length.hex", "length"),
])
def test_a_broken_frame_is_refused_and_counted(name: str, reason: str) -> None:
    raw = fixture(name)
    with pytest.raises(BadFrame, match=reason):
        parse_frame(raw)
    assert find_frames(raw) == ([], b"", 1)


def test_the_scanner_resyncs_after_garbage_and_keeps_a_partial_frame() -> None:
    raw = fixture("garbage_then_frame.hex")
    frames, rest, bad = find_frames(raw)
    assert frames == [HAZE]
    assert bad == 1  # the false header "42 4D 91 07" announces an impossible length
    assert rest == fixture("clean_air.hex")[:10]
    frames, rest, bad = find_frames(rest + fixture("clean_air.hex")[10:])
    assert (frames, rest, bad) == ([CLEAN_AIR], b"", 0)


def test_a_command_answer_is_not_a_bad_frame() -> None:
    assert find_frames(fixture("answer_then_frame.hex")) == ([CLEAN_AIR], b"", 0)


def test_frames_are_found_when_bytes_trickle_in_one_at_a_time() -> None:
    stream = fixture("garbage_then_frame.hex") + fixture("clean_air.hex")[10:] + fixture("bad_checksum.hex")
    found: list[PmsFrame] = []
    bad = 0
    rest = b""
    for byte in stream:
        frames, rest, n = find_frames(rest + bytes([byte]))
        found += frames
        bad += n
    assert found == [HAZE, CLEAN_AIR]
    assert bad == 2


# -- configuration --------------------------------------------------------------------------------

def test_sleeping_between_short_intervals_is_refused() -> None:
    with pytest.raises(ValidationError, match="sleep_between_reads needs interval_s"):
        Config(name="pm", interval_s=10, sleep_between_reads=True, warmup_s=30)
    assert Config(name="pm", interval_s=300, sleep_between_reads=True).warmup_s == 30


def test_the_driver_claims_its_port_and_the_baud_rate_is_fixed() -> None:
    assert Config(name="pm", port="/dev/ttyAMA0").claims() == {"serial:/dev/ttyAMA0"}
    with pytest.raises(ValidationError):
        Config(name="pm", baudrate=115200)


# -- through a pty --------------------------------------------------------------------------------

QUIET: dict[str, Any] = {"garbage_rate": 0.0, "bad_checksum_rate": 0.0, "silence_rate": 0.0}


@pytest.fixture
def sensor(request: pytest.FixtureRequest) -> Iterator[PmsSensor]:
    """A simulated sensor framing every 0.1 s; ``@pytest.mark.parametrize('sensor', [{...}], indirect=True)``
    changes its behaviour."""
    options = {"seed": 5, "frame_period_s": 0.1, **QUIET, **getattr(request, "param", {})}
    device = PmsSensor(**options)
    with device:
        yield device


@pytest.fixture
def open_driver() -> Iterator[Any]:
    """Open drivers on a port; all are closed at the end."""
    opened: list[Driver] = []

    def make(port: str, **options: Any) -> Driver:
        driver = Driver(Config(name="pm", port=port, **options))
        opened.append(driver)
        driver.open()
        return driver

    yield make
    for driver in opened:
        driver.close()


def timed_read(driver: Driver) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    values = driver.read()
    return values, time.monotonic() - started


def eventually(predicate: Any, timeout: float = 1.0) -> bool:
    """True once ``predicate()`` is; False after ``timeout`` (the simulator runs in its own thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_plausible(values: dict[str, Any]) -> None:
    assert set(values) == {f.quantity for f in pms5003.TELEMETRY}
    assert 5 <= values["pm2_5"] <= 80  # the simulator's air is around 30 ug/m3
    assert values["pm1_0"] <= values["pm2_5"] <= values["pm10"]
    counts = [values[q] for q in ("particles_0_3um", "particles_0_5um", "particles_1_0um", "particles_2_5um")]
    assert counts == sorted(counts, reverse=True)


def test_active_mode_reads_the_stream(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="active")
    readings = [driver.read() for _ in range(3)]
    for values in readings:
        assert_plausible(values)
        assert values["frames_rejected"] == 0
    assert sensor.commands[:2] == ["wake", "active"]
    assert "read" not in sensor.commands


def test_passive_mode_asks_for_each_frame(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="passive")
    assert_plausible(driver.read())
    sent = sensor.frames_sent
    time.sleep(0.5)
    assert sensor.frames_sent == sent  # a passive sensor speaks only when asked
    assert_plausible(driver.read())
    assert sensor.mode == "passive"
    assert sensor.commands == ["wake", "passive", "read", "read"]


@pytest.mark.parametrize("sensor", [{"garbage_rate": 1.0, "garbage_max": 40}], indirect=True)
def test_reads_resync_after_garbage_between_frames(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="active")
    for _ in range(5):
        assert_plausible(driver.read())


def test_frames_with_a_bad_checksum_are_skipped_and_counted(
        sensor: PmsSensor, open_driver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # only a spoilt answer may make the driver ask again, not a slow one on a loaded machine
    monkeypatch.setattr(pms5003, "_PASSIVE_RETRY_S", 60.0)
    driver = open_driver(sensor.path, mode="passive")
    # until the sensor has obeyed "passive" it still streams, and a streamed frame would take a spoilt checksum
    assert eventually(lambda: sensor.mode == "passive", timeout=10)
    sensor.corrupt_next(2)
    values = driver.read()
    assert values["frames_rejected"] == 2
    assert_plausible(values)
    assert sensor.commands.count("read") == 3


def test_a_silent_sensor_is_unavailable_then_comes_back(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="active", read_timeout_s=0.5)
    driver.read()
    sensor.go_silent(1.0)
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable, match=r"no valid frame within 0\.5 s"):
        driver.read()
    assert time.monotonic() - started < 1.0
    time.sleep(0.6)
    assert_plausible(driver.read())


@pytest.mark.parametrize("sensor", [{"warmup_s": 0.6}], indirect=True)
def test_the_fan_sleeps_between_reads_and_warms_up_before_each(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="passive", interval_s=1.5, sleep_between_reads=True, warmup_s=0.6)
    values, took = timed_read(driver)  # the driver cannot know how long the sensor was awake: it waits
    assert took >= 0.6
    assert_plausible(values)
    slept_at = time.monotonic()
    assert eventually(lambda: sensor.asleep)
    assert sensor.commands[-1] == "sleep"

    time.sleep(0.5)
    assert sensor.asleep  # resting until warmup_s before the next reading is due
    assert eventually(lambda: not sensor.asleep, timeout=1.5)
    woke_after = time.monotonic() - slept_at
    assert 0.8 <= woke_after <= 1.2  # interval_s - warmup_s after the reading

    time.sleep(max(0.0, slept_at + 1.5 - time.monotonic()))
    values, took = timed_read(driver)  # on schedule: already warm
    assert took < 0.4
    assert_plausible(values)

    values, took = timed_read(driver)  # early: the sensor is asleep, so the read wakes it and waits
    assert took >= 0.6
    assert_plausible(values)
    assert eventually(lambda: sensor.asleep)


@pytest.mark.parametrize("sensor", [{"warmup_s": 2.0}], indirect=True)
def test_without_warm_up_a_woken_sensor_reads_zero(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="passive", interval_s=1, sleep_between_reads=True, warmup_s=0)
    assert_plausible(driver.read())  # the simulated sensor was running before the driver opened it
    assert driver.read()["pm2_5"] == 0  # what a reading taken right after the wake looks like


@pytest.mark.parametrize("sensor", [{"warmup_s": 0.5}], indirect=True)
def test_close_interrupts_a_read_waiting_for_the_warm_up(sensor: PmsSensor, open_driver: Any) -> None:
    driver = open_driver(sensor.path, mode="passive", interval_s=60, sleep_between_reads=True, warmup_s=30)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            driver.read()
        except DeviceUnavailable as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    driver.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1 and "warming up" in str(errors[0])


def test_a_missing_port_is_the_projects_own_error() -> None:
    driver = Driver(Config(name="pm", port="/dev/nonexistent-pms5003"))
    with pytest.raises(DeviceUnavailable, match="cannot open serial port /dev/nonexistent-pms5003"):
        driver.open()
    driver.close()
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()


def test_the_packaged_simulator_serves_the_sample_config() -> None:
    conf = Config.model_validate(pms5003.SAMPLE_CONFIG)
    with pms5003.simulate(conf) as simulated:
        assert simulated.port != conf.port and os.path.realpath(simulated.port).startswith("/dev/pts/")
        driver = Driver(simulated)
        driver.open()
        try:
            assert_plausible(driver.read())
        finally:
            driver.close()
