"""The agent's clock: system time when synchronised, a device's time (GPS) when not, and which one stamped."""

from __future__ import annotations

from datetime import UTC, datetime

from edge.agents.clock import AgentClock, system_clock_state
from edge.contract import ClockState


class Fake:
    def __init__(self) -> None:
        self.t = 1000.0
        self.synced: bool | None = False

    def monotonic(self) -> float:
        return self.t

    def state(self) -> ClockState:
        return ClockState(source="system", synchronized=self.synced)


def test_unsynchronised_system_clock_uses_the_gps_offer_and_says_so() -> None:
    fake = Fake()
    clock = AgentClock(fake.state, fake.monotonic)
    _, source = clock.now()
    assert source == "system"  # nothing better yet
    gps = datetime(2026, 11, 20, 3, 15, 0, tzinfo=UTC)
    clock.offer("nmea_gps", gps, fake.t)
    fake.t += 2.5
    stamp, source = clock.now()
    assert source == "nmea_gps"
    assert stamp == datetime(2026, 11, 20, 3, 15, 2, 500000, tzinfo=UTC)
    assert clock.state() == ClockState(source="nmea_gps", synchronized=True)
    assert clock.now_ms() == (1_795_144_502_500, "nmea_gps")  # the same instant in milliseconds
    fake.t += AgentClock.OFFER_MAX_AGE_S + 1  # a stale offer is not trusted
    assert clock.now()[1] == "system"
    assert clock.now_ms()[1] == "system"


def test_a_synchronised_system_clock_wins() -> None:
    fake = Fake()
    fake.synced = True
    clock = AgentClock(fake.state, fake.monotonic)
    clock.offer("nmea_gps", datetime(2020, 1, 1, tzinfo=UTC), fake.t)
    stamp, source = clock.now()
    assert source == "system" and stamp.year >= 2026
    ms, source = clock.now_ms()
    assert source == "system" and 0 <= ms - int(stamp.timestamp() * 1000) < 5_000


def test_the_kernel_is_asked_about_synchronisation() -> None:
    state = system_clock_state()
    assert state.source == "system"
    assert state.synchronized in (True, False, None)
