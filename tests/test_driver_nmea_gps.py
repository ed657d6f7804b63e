"""nmea_gps: recorded NMEA lines -> fixes, and the driver on a real pty against the simulated bus in Khon Kaen.

The recordings in tests/fixtures/nmea_gps/ (one sentence per line, as the receiver sent them):
drive_srichan_gp.nmea (NEO-6M, east along Srichan Rd at 35 km/h, then standing at the CentralPlaza stop),
cold_start_gp.nmea (boot banner, no time, then time but no fix), bad_checksum_gp.nmea (a garbled digit, a cut-off
checksum, a sentence's tail, the stream at the wrong baud rate), gn_talker_m8.nmea (NEO-M8N, GN talker, SBAS
differential fix), overpass_fix_loss_gp.nmea (westbound under the elevated railway by Bueng Kaen Nakhon).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.agents.clock import AgentClock
from edge.contract import ClockState
from edge.drivers._nmea_gps_sim import KHON_KAEN_LOOP, BusGps, Route, sentence
from edge.drivers._serial import PtyDevice
from edge.drivers.nmea_gps import (
    BadSentence,
    ChecksumMismatch,
    Config,
    Driver,
    FixAccumulator,
    Gga,
    Rmc,
    parse_sentence,
)
from edge.errors import DeviceUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "nmea_gps"
ROUTE = Route(KHON_KAEN_LOOP)
UNDER_THE_RAILWAY = "Srichan Rd under the elevated railway"
CENTRAL_PLAZA_STOP = "CentralPlaza Khon Kaen stop, Srichan Rd"
POSITION = {"latitude", "longitude", "altitude", "speed", "heading"}


def recorded(name: str) -> list[str]:
    """The lines of a recording, decoded the way the driver decodes the wire."""
    return [raw.decode("ascii", errors="replace") for raw in (FIXTURES / name).read_bytes().splitlines()]


def replay(lines: list[str]) -> dict[str, Any]:
    """The quantities after merging every RMC and GGA of ``lines``."""
    fix = FixAccumulator()
    for line in lines:
        parsed = parse_sentence(line)
        if parsed is not None:
            fix.add(parsed)
    assert fix.fix is not None
    return fix.fix.quantities()


# -- recorded sentences -----------------------------------------------------------------------------------


def test_a_drive_along_srichan_road_gives_position_speed_in_kmh_and_heading() -> None:
    lines = recorded("drive_srichan_gp.nmea")
    rmc = parse_sentence(lines[0])
    assert isinstance(rmc, Rmc)
    assert rmc.talker == "GP" and rmc.valid
    assert rmc.utc == datetime(2026, 3, 14, 3, 15, 42, tzinfo=UTC)
    assert rmc.latitude == pytest.approx(16 + 25.983 / 60) and rmc.longitude == pytest.approx(102 + 49.198 / 60)
    # the first epoch: RMC, VTG, GGA, GSA, three GSV, GLL
    assert replay(lines[:8]) == {"fix": True, "fix_quality": 1, "satellites": 9, "latitude": 16.43305,
                                 "longitude": 102.819967, "altitude": 167.4, "speed": 35.0, "heading": 93.2}
    assert [parse_sentence(line) for line in lines[1:8] if not line.startswith("$GPGGA")] == [None] * 6


def test_standing_at_a_stop_reports_no_heading() -> None:
    values = replay(recorded("drive_srichan_gp.nmea"))
    assert values == {"fix": True, "fix_quality": 1, "satellites": 6, "latitude": 16.43275, "longitude": 102.82575,
                      "altitude": 168.1, "speed": 0.2}


def test_a_cold_start_reports_satellites_but_no_fix_and_no_position() -> None:
    lines = recorded("cold_start_gp.nmea")
    rmcs = [s for s in map(parse_sentence, lines) if isinstance(s, Rmc)]
    assert [(r.valid, r.utc) for r in rmcs] == [(False, None),
                                                (False, datetime(2026, 3, 14, 3, 12, 1, tzinfo=UTC))]
    assert replay(lines) == {"fix": False, "fix_quality": 0, "satellites": 3}


def test_bad_checksums_and_noise_are_refused_and_never_reach_the_fix() -> None:
    good_rmc, garbled, cut_off, tail, wrong_baud, good_gga = recorded("bad_checksum_gp.nmea")
    with pytest.raises(ChecksumMismatch):
        parse_sentence(garbled)
    with pytest.raises(ChecksumMismatch):
        parse_sentence(cut_off)
    for line in (tail, wrong_baud):
        with pytest.raises(BadSentence) as err:
            parse_sentence(line)
        assert not isinstance(err.value, ChecksumMismatch)
    assert isinstance(err.value, ValueError)
    assert replay([good_rmc, good_gga])["altitude"] == 167.4  # not the garbled 187.4


def test_a_multi_gnss_receiver_talks_gn_and_reports_a_differential_fix() -> None:
    lines = recorded("gn_talker_m8.nmea")
    rmc, gga = parse_sentence(lines[0]), parse_sentence(lines[2])
    assert isinstance(rmc, Rmc) and isinstance(gga, Gga)
    assert (rmc.talker, gga.talker, rmc.quality, gga.quality) == ("GN", "GN", 2, 2)
    values = replay(lines)
    assert {k: values[k] for k in ("fix", "fix_quality", "satellites", "speed", "altitude")} == {
        "fix": True, "fix_quality": 2, "satellites": 14, "speed": 24.6, "altitude": 166.2}
    assert values["heading"] == pytest.approx(181.35, abs=0.051)
    assert (values["latitude"], values["longitude"]) == (16.41255, 102.8299)


def test_under_an_overpass_the_position_disappears_and_comes_back() -> None:
    lines = recorded("overpass_fix_loss_gp.nmea")
    epochs = [replay(lines[: i + 2]) for i in range(0, len(lines), 2)]
    assert [e["fix"] for e in epochs] == [True, True, False, False, False, True]
    assert epochs[2:5] == [{"fix": False, "fix_quality": 0, "satellites": n} for n in (2, 1, 3)]
    assert epochs[5]["satellites"] == 5 and epochs[5]["heading"] == 267.9
    assert epochs[5]["longitude"] < epochs[1]["longitude"]  # still heading west


def test_half_an_epoch_the_newest_sentence_wins() -> None:
    lines = recorded("overpass_fix_loss_gp.nmea")
    # GGA of 03:27:11 still had a fix, the RMC of 03:27:12 has lost it
    assert replay(lines[3:5]) == {"fix": False, "fix_quality": 0, "satellites": 7}


@pytest.mark.parametrize("body", [
    "GPRMC,031542.00,A,16x5.98300,N,10249.19800,E,18.903,93.20,140326,,,A",  # not a number
    "GPRMC,031542.00,A,9100.00000,N,10249.19800,E,18.903,93.20,140326,,,A",  # latitude past the pole
    "GPRMC,031542.00,X,1625.98300,N,10249.19800,E,18.903,93.20,140326,,,A",  # status neither A nor V
    "GPRMC,031542.00,A,1625.98300,N,10249.19800,E,18.903,93.20,310226,,,A",  # 31 February
    "GPGGA,251542.00,1625.98300,N,10249.19800,E,1,09,0.98,167.4,M,-27.9,M,,",  # 25 o'clock
    "GPGGA,031542.00,1625.98300,Q,10249.19800,E,1,09,0.98,167.4,M,-27.9,M,,",  # no such hemisphere
])
def test_fields_that_pass_the_checksum_but_make_no_sense_are_refused(body: str) -> None:
    with pytest.raises(BadSentence):
        parse_sentence(sentence(body).decode())


def test_config_claims_its_port_and_refuses_an_odd_baud_rate() -> None:
    assert Config(name="gps", port="/dev/ttyAMA0").claims() == {"serial:/dev/ttyAMA0"}
    with pytest.raises(ValidationError, match="baudrate"):
        Config(name="gps", baudrate=9601)


# -- the driver on a pty, against the simulated bus -------------------------------------------------------

class Replay(PtyDevice):
    """Sends recorded bytes once, a moment after the driver opened the port."""

    def __init__(self, data: bytes) -> None:
        super().__init__("nmea_gps-replay")
        self.data = data

    def serve(self) -> None:
        if not self.stopping.wait(0.3):
            self.write(self.data)
            self.stopping.wait()


def test_a_recording_on_the_wire_read_from_the_middle_of_a_sentence() -> None:
    """The port opens mid-sentence: that tail is skipped without counting it as a bad line."""
    recording = (FIXTURES / "drive_srichan_gp.nmea").read_bytes().replace(b"\n", b"\r\n")
    with Replay(recording[30:]) as wire:
        driver = Driver(Config(name="gps", port=wire.path, read_timeout_s=2.0))
        driver.open()
        try:
            values = driver.read()
        finally:
            driver.close()
    # everything arrived at once: the latest epoch wins, standing at the CentralPlaza stop
    assert values == {"fix": True, "fix_quality": 1, "satellites": 6, "latitude": 16.43275,
                      "longitude": 102.82575, "altitude": 168.1, "speed": 0.2, "bad_sentences": 0}
    utc, _ = driver.time_offer() or (None, 0.0)
    assert utc == datetime(2026, 3, 14, 3, 16, 22, tzinfo=UTC)


def test_a_receiver_configured_without_rmc_and_gga_is_unavailable_with_a_hint() -> None:
    others = [line for line in recorded("drive_srichan_gp.nmea") if not line.startswith(("$GPRMC", "$GPGGA"))]
    with Replay("\r\n".join(["", *others, ""]).encode()) as wire:
        driver = Driver(Config(name="gps", port=wire.path, read_timeout_s=0.8))
        driver.open()
        try:
            with pytest.raises(DeviceUnavailable, match="turn RMC and GGA output on"):
                driver.read()
        finally:
            driver.close()


FAST = {"rate_hz": 10.0, "baudrate": 115200, "cold_start_s": 0.0, "seed": 7}


@contextlib.contextmanager
def bus(read_timeout_s: float = 1.0, **simulator: Any) -> Iterator[tuple[BusGps, Driver]]:
    """A simulated receiver (10 epochs a second) and the driver opened on its pty."""
    sim = BusGps(**{**FAST, **simulator})
    with sim:
        driver = Driver(Config(name="gps", port=sim.path, baudrate=115200, read_timeout_s=read_timeout_s))
        driver.open()
        try:
            yield sim, driver
        finally:
            driver.close()


def test_a_moving_bus_reports_where_it_goes_in_kmh_and_degrees() -> None:
    start = ROUTE.arrival_s(UNDER_THE_RAILWAY) - 60  # cruising east on Srichan Rd
    with bus(start_s=start, time_scale=10) as (_, driver):
        first: dict[str, Any] = driver.read()
        time.sleep(0.5)
        later: dict[str, Any] = driver.read()
    for values in (first, later):
        assert values["fix"] is True and values["fix_quality"] == 1 and values["satellites"] >= 4
        assert 30 <= values["speed"] <= 40
        assert 88 <= values["heading"] <= 98
        assert values["latitude"] == pytest.approx(16.433, abs=0.001)
        assert values["bad_sentences"] == 0
    assert later["longitude"] - first["longitude"] > 0.0003  # at least 30 m further east


def test_a_bus_standing_at_a_stop_has_a_fix_but_no_heading() -> None:
    with bus(talker="GN", start_s=ROUTE.arrival_s(CENTRAL_PLAZA_STOP) + 5) as (_, driver):  # a NEO-M8
        values: dict[str, Any] = driver.read()
    assert values["fix"] is True and values["speed"] < 2
    assert "heading" not in values
    assert values["satellites"] <= 8  # between the hotels


def test_under_the_elevated_railway_the_fix_is_lost_then_regained() -> None:
    with bus(start_s=ROUTE.arrival_s(UNDER_THE_RAILWAY), time_scale=2) as (_, driver):
        lost = driver.read()
        deadline = time.monotonic() + 10
        regained: dict[str, Any] = driver.read()
        while not regained["fix"] and time.monotonic() < deadline:
            time.sleep(0.1)
            regained = driver.read()
    assert lost["fix"] is False and lost["fix_quality"] == 0 and "satellites" in lost
    assert not POSITION & set(lost)
    assert regained["fix"] is True and set(regained) >= POSITION
    assert regained["longitude"] > 102.8233  # it came out on the east side


def test_garbled_sentences_are_skipped_and_counted() -> None:
    with bus(start_s=ROUTE.arrival_s(UNDER_THE_RAILWAY) - 60) as (sim, driver):
        assert driver.read()["bad_sentences"] == 0
        sim.corrupt(7)
        reads: list[dict[str, Any]] = [driver.read() for _ in range(6)]
    assert sum(r["bad_sentences"] for r in reads) == 7
    assert all(r["fix"] is True and "latitude" in r for r in reads)


def test_a_silent_receiver_is_unavailable_and_reads_again_when_it_talks() -> None:
    with bus(read_timeout_s=0.5) as (sim, driver):
        driver.read()
        sim.mute()
        time.sleep(0.2)  # what was already on the wire is drained by the next read
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable, match="silent"):
            driver.read()
        assert 0.5 <= time.monotonic() - started < 1.5
        sim.unmute()
        assert driver.read()["fix"] is True


def test_a_stream_of_noise_is_unavailable_with_a_hint_about_the_baud_rate() -> None:
    with bus(read_timeout_s=0.5, corrupt_rate=1.0) as (_, driver), \
            pytest.raises(DeviceUnavailable, match="baud rate"):
        driver.read()


def test_the_time_offer_is_the_receivers_time_not_the_system_clocks() -> None:
    # the Pi booted without network: its clock is two days behind the satellites
    gps_ahead = timedelta(days=2, minutes=13).total_seconds()
    with bus(clock=lambda: time.time() + gps_ahead) as (sim, driver):
        assert driver.time_offer() is None
        driver.read()
        offer = driver.time_offer()
        assert offer is not None
        utc, at = offer
        gps_now = utc + timedelta(seconds=time.monotonic() - at)
        assert abs((gps_now - sim.now()).total_seconds()) < 1.0
        assert gps_now - datetime.now(UTC) > timedelta(days=2)
        clock = AgentClock(system_state=lambda: ClockState(source="system", synchronized=False))
        clock.offer("nmea_gps", utc, at)
        stamp, source = clock.now()
        assert source == "nmea_gps" and abs((stamp - sim.now()).total_seconds()) < 1.0


def test_a_receiver_that_knows_the_time_but_has_no_fix_offers_no_time() -> None:
    # halfway through a cold start the receiver prints the time, but it may still be seconds off
    with bus(cold_start_s=60, time_scale=100) as (_, driver):
        time.sleep(0.4)
        values = driver.read()
        assert values["fix"] is False and driver.time_offer() is None


def test_a_second_reader_of_the_same_port_is_refused() -> None:
    with bus() as (sim, _):
        second = Driver(Config(name="gps2", port=sim.path))
        with pytest.raises(DeviceUnavailable, match="exclusively"):
            second.open()
        second.close()


def test_a_closed_or_missing_port_is_unavailable() -> None:
    driver = Driver(Config(name="gps", port="/dev/nakhon-no-such-gps"))
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()
    with pytest.raises(DeviceUnavailable, match="cannot open"):
        driver.open()
    driver.close()
    driver.close()
