"""The ``gpio`` driver: SOS buttons, PIRs, LEDs and buzzers, on gpiozero's MockFactory (and on a real Pi, opt-in)."""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from edge import config
from edge.contract import Severity
from edge.drivers import DriverEvent, gpio
from edge.drivers._gpio import on_board
from edge.drivers._gpio_sim import Citizen
from edge.errors import ConfigError, DeviceUnavailable, NakhonError

FIXTURES = Path(__file__).parent / "fixtures" / "gpio"
ON_PI = os.environ.get("NAKHON_TEST_PI") == "1"


# -- helpers -------------------------------------------------------------------------------------

class Events:
    """What a driver emitted, with a way to wait for it."""

    def __init__(self) -> None:
        self.got: list[DriverEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: DriverEvent) -> None:
        with self._changed:
            self.got.append(event)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 3.0) -> list[DriverEvent]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.got) >= count, timeout):
                pytest.fail(f"expected {count} event(s) within {timeout} s, got {[e.event for e in self.got]}")
            return list(self.got)

    def named(self, name: str) -> list[DriverEvent]:
        return [e for e in self.got if e.event == name]


Start = Callable[..., tuple[gpio.Driver, Events]]


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


@pytest.fixture
def start(board: MockFactory) -> Iterator[Start]:
    """Start gpio drivers on the test's mock board; every one is stopped at the end."""
    started: list[gpio.Driver] = []

    def start_(**entry: Any) -> tuple[gpio.Driver, Events]:
        conf = gpio.Config.model_validate({"kind": "gpio", "name": f"dev{len(started)}", **entry})
        driver = gpio.Driver(on_board(conf, board))
        events = Events()
        driver.start(events)
        started.append(driver)
        return driver, events

    yield start_
    for driver in started:
        driver.stop()


def contact(pin: Any, closed: bool, gaps: tuple[float, ...] = (0.0004, 0.0007, 0.0004, 0.0008)) -> None:
    """Close or open a button wired to GND (pull-up): the contact chatters with ``gaps`` before it settles."""
    def drive(to_closed: bool) -> None:
        pin.drive_low() if to_closed else pin.drive_high()

    for gap in gaps:
        drive(closed)
        time.sleep(gap)
        drive(not closed)
        time.sleep(gap)
    drive(closed)


def level(pin: Any) -> bool:
    """The level a mock pin is at now."""
    return bool(pin.state)


def load_trace(name: str) -> list[tuple[float, bool]]:
    rows = [line.split() for line in (FIXTURES / name).read_text().splitlines() if line and not line.startswith("#")]
    return [(float(t), level == "1") for t, level in rows]


def replay(trace: list[tuple[float, bool]], bounce_s: float, hold_s: float) -> list[tuple[float, str, float]]:
    """Feed a contact trace to :class:`gpio.Contact` as the driver's thread would: settle whenever it is due."""
    c = gpio.Contact(bounce_s, hold_s)
    out: list[tuple[float, str, float]] = []

    def run_until(t: float) -> None:
        while (due := c.due()) is not None and due <= t:
            out.extend((round(due, 4), ch.what, round(ch.held_s, 4)) for ch in c.settle(due))

    for at, pressed in trace:
        run_until(at)
        c.edge(pressed, at)
    run_until(trace[-1][0] + 60)
    return out


# -- the contact, from fixture traces ------------------------------------------------------------

def test_a_bouncing_long_press_is_one_press_one_hold_and_one_release() -> None:
    assert replay(load_trace("sos_long_press.txt"), bounce_s=0.05, hold_s=3.0) == [
        (0.0536, "pressed", 0.0),   # 50 ms after the last bounce
        (3.0, "held", 3.0),         # hold_s after the first touch, while still down
        (3.4652, "released", 3.412),  # held_s runs from the first touch to the first release edge
    ]


def test_without_debounce_the_same_press_counts_many_times() -> None:
    changes = replay(load_trace("sos_long_press.txt"), bounce_s=0.0, hold_s=3.0)
    assert sum(what == "pressed" for _, what, _ in changes) == 6


def test_interference_spikes_shorter_than_bounce_s_are_not_presses() -> None:
    assert replay(load_trace("emi_spikes.txt"), bounce_s=0.05, hold_s=3.0) == []


def test_quick_presses_each_count_once_with_their_own_hold_time() -> None:
    changes = replay(load_trace("short_presses.txt"), bounce_s=0.05, hold_s=3.0)
    assert [what for _, what, _ in changes] == ["pressed", "released"] * 3
    assert [held for _, what, held in changes if what == "released"] == [0.21, 0.21, 0.21]


def test_a_hold_that_completed_is_reported_even_when_the_release_is_seen_first() -> None:
    c = gpio.Contact(bounce_s=0.05, hold_s=1.0)
    c.edge(True, 0.0)
    assert [ch.what for ch in c.settle(0.1)] == ["pressed"]
    c.edge(False, 2.0)  # the thread was busy: the release edge arrives before the hold was settled
    assert [(ch.what, ch.held_s) for ch in c.settle(2.1)] == [("held", 1.0), ("released", 2.0)]


# -- inputs on the mock board --------------------------------------------------------------------

def test_a_bouncing_sos_press_is_one_critical_event_and_the_release_tells_how_long(
        board: MockFactory, start: Start) -> None:
    driver, events = start(device="button", pin=17, event="sos", bounce_s=0.05, hold_s=5)
    pin = board.pin(17)
    pressed_at = time.monotonic()
    contact(pin, closed=True)
    events.wait(1)
    assert driver.state() == {"pressed": True}
    time.sleep(0.3)
    held_s = time.monotonic() - pressed_at
    contact(pin, closed=False)
    got = events.wait(2)
    assert [(e.event, e.severity) for e in got] == [("sos.pressed", Severity.CRITICAL), ("sos.released", Severity.INFO)]
    assert got[0].data == {"count": 1}
    assert got[1].data["held_s"] == pytest.approx(held_s, abs=0.02)
    time.sleep(0.2)
    assert len(events.got) == 2, "bounces leaked through as extra events"
    assert driver.state() == {"pressed": False}


def test_with_bounce_s_zero_the_bouncing_contact_presses_many_times(board: MockFactory, start: Start) -> None:
    _, events = start(device="button", pin=17, event="sos", bounce_s=0)
    contact(board.pin(17), closed=True)
    events.wait(9)  # five closings, four openings
    assert len(events.named("sos.pressed")) == 5


def test_holding_the_button_emits_held_while_it_is_still_down(board: MockFactory, start: Start) -> None:
    _, events = start(device="button", pin=5, event="kiosk_help", severity="warning", hold_s=0.3)
    pressed_at = time.monotonic()
    contact(board.pin(5), closed=True)
    got = events.wait(2, timeout=2)  # pressed, then held: before the test lets go
    assert time.monotonic() - pressed_at >= 0.3
    assert [(e.event, e.severity) for e in got] == [("kiosk_help.pressed", Severity.WARNING),
                                                     ("kiosk_help.held", Severity.WARNING)]
    assert got[1].data == {"count": 1, "held_s": 0.3}
    time.sleep(0.3)
    held_s = time.monotonic() - pressed_at
    contact(board.pin(5), closed=False)
    release = events.wait(3)[2]
    assert release.event == "kiosk_help.released"
    assert release.data["held_s"] == pytest.approx(held_s, abs=0.02)


def test_a_short_spike_on_the_line_is_not_a_press(board: MockFactory, start: Start) -> None:
    _, events = start(device="button", pin=17, bounce_s=0.05)
    pin = board.pin(17)
    pin.drive_low()
    time.sleep(0.005)
    pin.drive_high()
    time.sleep(0.3)
    assert events.got == []


def test_every_press_of_a_simulated_citizen_counts_once(board: MockFactory, start: Start) -> None:
    _, events = start(device="button", pin=17, event="sos", bounce_s=0.05, hold_s=1.0)
    with Citizen(board.pin(17), pressed_level=False, mean_gap_s=0.15, long_presses=0.0,
                 rng=random.Random(4)) as citizen:
        time.sleep(3)
    time.sleep(0.2)  # the last release settles
    assert citizen.presses >= 3
    assert len(events.named("sos.pressed")) == citizen.presses
    assert len(events.named("sos.released")) == citizen.presses


def test_a_pir_reports_motion_and_how_long_it_lasted(board: MockFactory, start: Start) -> None:
    driver, events = start(device="motion", pin=27)
    pin = board.pin(27)
    pin.drive_high()
    got = events.wait(1)
    detected_at = time.monotonic()
    assert (got[0].event, got[0].severity, got[0].data) == ("motion.detected", Severity.INFO, {"count": 1})
    assert driver.state() == {"motion": True}
    time.sleep(0.5)
    pin.drive_low()
    cleared = events.wait(2)[1]
    assert cleared.event == "motion.cleared"
    # gpiozero samples the PIR ten times a second: the end is seen within 0.1 s
    assert cleared.data["active_s"] == pytest.approx(time.monotonic() - detected_at, abs=0.15)


# -- outputs -------------------------------------------------------------------------------------

def test_an_led_follows_set_on_its_pin(board: MockFactory, start: Start) -> None:
    driver, events = start(device="led", pin=22)
    pin = board.pin(22)
    assert level(pin) is False
    assert driver.set(True) == {"on": True, "blinking": False}
    assert level(pin) is True
    assert driver.set(False) == {"on": False, "blinking": False}
    assert level(pin) is False
    assert events.got == []


def test_an_active_low_output_drives_its_pin_low_to_switch_on(board: MockFactory, start: Start) -> None:
    driver, _ = start(device="led", pin=22, active_high=False)
    pin = board.pin(22)
    assert level(pin) is True
    driver.set(True)
    assert level(pin) is False


def test_blink_toggles_the_pin_n_times_then_leaves_it_off(board: MockFactory, start: Start) -> None:
    driver, _ = start(device="led", pin=22)
    pin = board.pin(22)
    pin.clear_states()
    assert driver.blink(0.04, 0.04, n=3)["blinking"] is True
    time.sleep(0.5)
    assert driver.state() == {"on": False, "blinking": False}
    levels = [s.state for s in pin.states]
    assert levels == [False, True, False, True, False, True, False]


def test_a_buzzer_beeps(board: MockFactory, start: Start) -> None:
    driver, _ = start(device="buzzer", pin=13)
    pin = board.pin(13)
    pin.clear_states()
    driver.beep(0.03, 0.03, n=2)
    time.sleep(0.3)
    assert [s.state for s in pin.states] == [False, True, False, True, False]


def test_stopping_switches_an_output_off(board: MockFactory, start: Start) -> None:
    driver, _ = start(device="buzzer", pin=13)
    driver.set(True)
    driver.stop()
    assert level(board.pin(13)) is False, "a siren must not keep sounding when the agent stops"
    with pytest.raises(DeviceUnavailable, match="not started"):
        driver.set(True)


@pytest.mark.parametrize("entry,call,message", [
    ({"device": "button", "pin": 17}, lambda d: d.set(True), "is a button, not an output"),
    ({"device": "led", "pin": 22}, lambda d: d.beep(), "only a buzzer beeps"),
    ({"device": "led", "pin": 22}, lambda d: d.blink(0, 1), r"on_s and off_s must be seconds in \(0, 3600\]"),
    ({"device": "buzzer", "pin": 13}, lambda d: d.blink(0.1, 0.1, n=0), "n must be a number of blinks >= 1"),
])
def test_a_command_the_device_cannot_do_is_refused(start: Start, entry: dict[str, Any],
                                                   call: Callable[[gpio.Driver], Any], message: str) -> None:
    driver, _ = start(**entry)
    with pytest.raises(ConfigError, match=message):
        call(driver)


# -- config and errors ---------------------------------------------------------------------------

def _device_toml(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text('device = "kk-aq-0042"\n' + "".join(f"[[drivers]]\n{e}\n" for e in entries))
    return path


def test_two_entries_on_one_pin_are_refused_naming_both(tmp_path: Path) -> None:
    path = _device_toml(tmp_path, 'kind = "gpio"\nname = "sos"\ndevice = "button"\npin = 17\nevent = "sos"',
                        'kind = "gpio"\nname = "lamp"\ndevice = "led"\npin = 17')
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert "drivers[1]: 'lamp' claims gpio:17, already claimed by drivers[0] ('sos')" in str(err.value)


@pytest.mark.parametrize("entry,expected", [
    ('device = "buzer"\npin = 13', "drivers[0]: device must be one of: button, motion, led, buzzer"),
    ("pin = 13", "drivers[0]: device must be one of: button, motion, led, buzzer"),
    ('device = "button"\npin = 28', "drivers[0].button.pin: Input should be less than or equal to 27"),
    ('device = "led"\npin = 22\npull_up = true', "drivers[0].led.pull_up: Extra inputs are not permitted"),
    ('device = "motion"\npin = 2', "BCM 2 has a fixed 1.8 kOhm pull-up (I2C): use pull_up = true or another pin"),
    ('device = "button"\npin = 17\nevent = "SOS!"', "drivers[0].button.event: String should match pattern"),
])
def test_a_bad_entry_says_what_was_expected(tmp_path: Path, entry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(_device_toml(tmp_path, f'kind = "gpio"\nname = "x"\n{entry}'), environ={})
    assert expected in str(err.value)


def test_an_entry_validates_as_its_device_and_claims_its_pin() -> None:
    conf = gpio.Config.model_validate(gpio.SAMPLE_CONFIG)
    assert isinstance(conf, gpio.ButtonConfig)
    assert (conf.event, conf.severity, conf.pull_up, conf.pin_factory) == ("sos", Severity.CRITICAL, True, "default")
    assert conf.claims() == {"gpio:17"}


def test_a_pin_held_by_another_device_is_unavailable_not_a_gpiozero_error(board: MockFactory, start: Start) -> None:
    start(device="button", pin=17)
    second = gpio.Driver(on_board(gpio.Config.model_validate(
        {"kind": "gpio", "name": "lamp", "device": "led", "pin": 17}), board))
    with pytest.raises(DeviceUnavailable, match=r"GPIOPinInUse.*another device of this agent already holds") as err:
        second.start(Events())
    assert isinstance(err.value, NakhonError) and isinstance(err.value, OSError)
    second.stop()


@pytest.mark.skipif(ON_PI or "GPIOZERO_PIN_FACTORY" in os.environ, reason="this machine has real GPIO")
def test_without_a_pi_the_real_pins_are_unavailable_with_what_to_do() -> None:
    driver = gpio.Driver(gpio.Config.model_validate(gpio.SAMPLE_CONFIG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpiozero warns about every pin library it tried
        with pytest.raises(DeviceUnavailable, match=r"sos: button on BCM 17: BadPinFactory.*--simulate"):
            driver.start(Events())
    driver.stop()


@pytest.mark.parametrize("device", ["button", "motion", "led", "buzzer"])
def test_simulate_puts_every_device_on_a_mock_board(device: str) -> None:
    conf = gpio.Config.model_validate({"kind": "gpio", "name": "x", "device": device, "pin": 26})
    with gpio.simulate(conf) as simulated:
        assert (simulated.pin_factory, simulated.claims(), type(simulated)) == ("mock", {"gpio:26"}, type(conf))
        driver = gpio.Driver(simulated)
        driver.start(Events())
        assert driver.state()
        driver.stop()


# -- the same loopback on the mock and on a real Pi -----------------------------------------------

@pytest.mark.parametrize("backend", ["mock", pytest.param("pi", marks=[
    pytest.mark.pi, pytest.mark.skipif(not ON_PI, reason="set NAKHON_TEST_PI=1 on a Raspberry Pi")])])
def test_an_output_wired_to_a_button_input_presses_it(backend: str) -> None:
    """On a Pi, put a jumper between the two pins of NAKHON_TEST_PI_LOOPBACK (BCM, default 20,21: header 38-40)."""
    out_pin, in_pin = (int(p) for p in os.environ.get("NAKHON_TEST_PI_LOOPBACK", "20,21").split(","))
    led_conf = gpio.Config.model_validate({"kind": "gpio", "name": "out", "device": "led", "pin": out_pin})
    button_conf = gpio.Config.model_validate({"kind": "gpio", "name": "in", "device": "button", "pin": in_pin,
                                              "pull_up": False, "event": "loop", "bounce_s": 0.01})
    board = None
    if backend == "mock":
        board = MockFactory()
        board.pin(out_pin, pin_class=MockConnectedPin, input_pin=board.pin(in_pin))
        led_conf, button_conf = on_board(led_conf, board), on_board(button_conf, board)
    led, button, events = gpio.Driver(led_conf), gpio.Driver(button_conf), Events()
    try:
        led.start(Events())
        button.start(events)
        led.set(True)
        assert events.wait(1)[0].event == "loop.pressed"
        led.set(False)
        assert events.wait(2)[1].event == "loop.released"
    finally:
        button.stop()
        led.stop()
        if board is not None:
            board.close()
