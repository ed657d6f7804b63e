"""GPIO devices of poles and kiosks on one pin each: an SOS button, a PIR motion sensor, an LED, a buzzer.

One ``[[drivers]]`` entry is one device on one BCM pin; its ``device`` key (``button``, ``motion``, ``led``,
``buzzer``) picks the keys that may follow. All four are event drivers: inputs emit events, outputs emit none and
are switched by the agent's command handlers through :meth:`Driver.set`, :meth:`Driver.blink` and
:meth:`Driver.beep`. The polled HC-SR04 distance sensor is its own kind, ``hcsr04``.

Button contacts are debounced here rather than by the pin library: gpiozero's ``bounce_time`` means a settle
time on lgpio, a lock-out on RPi.GPIO and nothing on the mock pins, and an SOS press must count once on all of
them. Pins come from the pin-factory seam in :mod:`edge.drivers._gpio`.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from gpiozero import LED, Buzzer, DigitalInputDevice, MotionSensor
from gpiozero.pins.mock import MockFactory
from pydantic import Discriminator, ModelWrapValidatorHandler, StringConstraints, Tag, TypeAdapter, model_validator
from pydantic import Field as PydanticField

from edge.contract import Scalar, Severity
from edge.drivers import DriverEvent, EmitEvent, Presence
from edge.drivers._gpio import FIXED_PULL_UP, BcmPin, GpioConfig, gpio_errors, gpio_present, on_board, pin_factory
from edge.drivers._gpio_sim import Citizen, Passersby
from edge.errors import ConfigError, DeviceUnavailable

EventBase = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$", max_length=48)]
"""The first part of an event name: ``sos`` gives ``sos.pressed``, ``sos.held``, ``sos.released``."""


class Config(GpioConfig):
    """A device on one GPIO pin; validating it yields the model of its ``device`` (ButtonConfig...)."""

    kind: Literal["gpio"] = "gpio"
    device: str
    pin: BcmPin

    @model_validator(mode="wrap")
    @classmethod
    def _as_its_device(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        """Validate an entry as the model its ``device`` names: the registry knows one Config, the TOML stays
        flat (``device = "button"`` next to ``pin = 17``)."""
        if cls is Config:
            return _DEVICE_CONFIGS.validate_python(data)
        return handler(data)

    def claims(self) -> set[str]:
        """The one pin this device holds."""
        return {f"gpio:{self.pin}"}


class _InputConfig(Config):
    pull_up: bool
    event: EventBase
    severity: Severity

    @model_validator(mode="after")
    def _pull_fits_the_pin(self) -> _InputConfig:
        if self.pin in FIXED_PULL_UP and not self.pull_up:
            raise ValueError(f"BCM {self.pin} has a fixed 1.8 kOhm pull-up (I2C): use pull_up = true or another pin")
        return self


class ButtonConfig(_InputConfig):
    """A push button (SOS on a pole, a key on a kiosk); ``pull_up = true`` wires it between the pin and GND."""

    device: Literal["button"]
    pull_up: bool = True
    bounce_s: Annotated[float, PydanticField(ge=0, le=1)] = 0.05
    hold_s: Annotated[float, PydanticField(gt=0, le=60)] = 3.0
    event: EventBase = "button"
    severity: Severity = Severity.CRITICAL


class MotionConfig(_InputConfig):
    """A PIR motion sensor (HC-SR501 and the like) whose output goes high while it sees someone."""

    device: Literal["motion"]
    pull_up: bool = False
    event: EventBase = "motion"
    severity: Severity = Severity.INFO


class LedConfig(Config):
    """An LED (through a resistor) or anything switched like one; ``active_high = false`` for active-low boards."""

    device: Literal["led"]
    active_high: bool = True


class BuzzerConfig(Config):
    """An active buzzer or siren, switched through a transistor or relay board."""

    device: Literal["buzzer"]
    active_high: bool = True


def _device_of(value: Any) -> Any:
    return value.get("device") if isinstance(value, dict) else getattr(value, "device", None)


_DEVICE_CONFIGS: TypeAdapter[Config] = TypeAdapter(Annotated[
    Annotated[ButtonConfig, Tag("button")] | Annotated[MotionConfig, Tag("motion")]
    | Annotated[LedConfig, Tag("led")] | Annotated[BuzzerConfig, Tag("buzzer")],
    Discriminator(_device_of, custom_error_type="gpio_device",
                  custom_error_message="device must be one of: button, motion, led, buzzer"),
])

SAMPLE_CONFIG = {"kind": "gpio", "name": "sos", "device": "button", "pin": 17, "event": "sos",
                 "severity": "critical", "bounce_s": 0.05, "hold_s": 3.0}


@dataclass(frozen=True)
class ContactChange:
    """What a button did, once debounced: ``pressed``, ``held`` or ``released``, and for how long it was down."""

    what: Literal["pressed", "held", "released"]
    held_s: float


class Contact:
    """A button's contact: turns raw, bouncing edges into debounced presses, holds and releases.

    Edges less than ``bounce_s`` apart make one burst; once the line has been quiet for ``bounce_s`` the burst
    is over and its last level counts (a settle filter). So a bouncing press is one press and a spike that comes
    back is nothing. Durations run from the first edge of a burst, so ``held_s`` is what the citizen did, not
    what the filter added. Pure: times are given, nothing waits; call :meth:`settle` with an edge's time before
    feeding it, and again whenever :meth:`due` comes.
    """

    def __init__(self, bounce_s: float, hold_s: float) -> None:
        self._bounce_s = bounce_s
        self._hold_s = hold_s
        self._raw = False
        self._raw_at = 0.0
        self._burst_at: float | None = None
        self._pressed = False
        self._pressed_at = 0.0
        self._held = False
        self.presses = 0

    @property
    def pressed(self) -> bool:
        """The debounced state."""
        return self._pressed

    def edge(self, pressed: bool, at: float) -> None:
        """The raw contact changed to ``pressed`` at time ``at``."""
        if pressed == self._raw:
            return
        self._raw, self._raw_at = pressed, at
        if self._burst_at is None:
            self._burst_at = at

    def due(self) -> float | None:
        """When :meth:`settle` has something to decide next; None while nothing is pending."""
        if self._burst_at is not None:
            return self._raw_at + self._bounce_s
        if self._pressed and not self._held:
            return self._pressed_at + self._hold_s
        return None

    def settle(self, at: float) -> list[ContactChange]:
        """The changes decided by time ``at``."""
        changes: list[ContactChange] = []
        if self._burst_at is not None and at >= self._raw_at + self._bounce_s:
            began, self._burst_at = self._burst_at, None
            if self._raw != self._pressed:  # else it was a spike that came back: nothing happened
                changes += self._press(began) if self._raw else self._release(began)
        if self._pressed and not self._held and self._burst_at is None and at >= self._pressed_at + self._hold_s:
            self._held = True
            changes.append(ContactChange("held", self._hold_s))
        return changes

    def _press(self, began: float) -> list[ContactChange]:
        self._pressed, self._pressed_at, self._held = True, began, False
        self.presses += 1
        return [ContactChange("pressed", 0.0)]

    def _release(self, began: float) -> list[ContactChange]:
        self._pressed = False
        held_s = began - self._pressed_at
        # The hold may have completed while the thread was busy: it still comes before the release.
        held = [ContactChange("held", self._hold_s)] if not self._held and held_s >= self._hold_s else []
        return [*held, ContactChange("released", held_s)]


class _Attached(Protocol):
    """A device put on its pin by :data:`_ATTACH`."""

    def state(self) -> dict[str, Scalar]:
        """What the device is doing now."""

    def close(self) -> None:
        """Release the pin."""


class _ButtonWatch:
    """A button on its pin: gpiozero's callbacks queue raw edges, a thread debounces them and emits events."""

    def __init__(self, config: ButtonConfig, factory: Any, emit: EmitEvent) -> None:
        self._config = config
        self._emit = emit
        self._contact = Contact(config.bounce_s, config.hold_s)
        self._edges: queue.SimpleQueue[tuple[bool, float] | None] = queue.SimpleQueue()
        self._input = DigitalInputDevice(config.pin, pull_up=config.pull_up, bounce_time=None, pin_factory=factory)
        self._input.when_activated = self._went_down
        self._input.when_deactivated = self._went_up
        if self._input.is_active:  # stuck or held at start-up: report it rather than wait for an edge
            self._went_down()
        self._thread = threading.Thread(target=self._run, name=f"gpio-{config.name}", daemon=True)
        self._thread.start()

    def _went_down(self) -> None:
        self._edges.put((True, time.monotonic()))

    def _went_up(self) -> None:
        self._edges.put((False, time.monotonic()))

    def _run(self) -> None:
        while True:
            due = self._contact.due()
            try:
                item = self._edges.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
            except queue.Empty:
                pass  # nothing moved: time alone settles a bounce or completes a hold
            else:
                if item is None:
                    return
                pressed, at = item
                self._deliver(self._contact.settle(at))
                self._contact.edge(pressed, at)
            self._deliver(self._contact.settle(time.monotonic()))

    def _deliver(self, changes: list[ContactChange]) -> None:
        for change in changes:
            self._emit(self._event(change))

    def _event(self, change: ContactChange) -> DriverEvent:
        data: dict[str, Any] = {"count": self._contact.presses}
        if change.what != "pressed":
            data["held_s"] = round(change.held_s, 3)
        # A release only closes the episode; the alarm is the press (and a long hold).
        severity = Severity.INFO if change.what == "released" else self._config.severity
        return DriverEvent(f"{self._config.event}.{change.what}", severity, data)

    def state(self) -> dict[str, Scalar]:
        """Whether the button is down (debounced)."""
        return {"pressed": self._contact.pressed}

    def close(self) -> None:
        """Release the pin, then let the thread finish."""
        self._input.close()
        self._edges.put(None)
        self._thread.join(timeout=5)


class _MotionWatch:
    """A PIR on its pin, sampled by gpiozero's MotionSensor thread, which emits the events."""

    def __init__(self, config: MotionConfig, factory: Any, emit: EmitEvent) -> None:
        self._config = config
        self._emit = emit
        self._count = 0
        self._since = 0.0
        self._sensor = MotionSensor(config.pin, pull_up=config.pull_up, pin_factory=factory)
        self._sensor.when_motion = self._detected
        self._sensor.when_no_motion = self._cleared
        # gpiozero takes its first sample as the starting state without a callback; someone already in view
        # is still worth an event (reading the state waits for that first sample, 0.1 s at most).
        if self._sensor.motion_detected:
            self._detected()

    def _detected(self) -> None:
        self._count += 1
        self._since = time.monotonic()
        self._emit(DriverEvent(f"{self._config.event}.detected", self._config.severity, {"count": self._count}))

    def _cleared(self) -> None:
        active_s = round(time.monotonic() - self._since, 3)
        self._emit(DriverEvent(f"{self._config.event}.cleared", self._config.severity,
                               {"count": self._count, "active_s": active_s}))

    def state(self) -> dict[str, Scalar]:
        """Whether the PIR sees motion now."""
        return {"motion": bool(self._sensor.motion_detected)}

    def close(self) -> None:
        """Stop sampling and release the pin."""
        self._sensor.close()


_OUTPUT_CLASSES: dict[str, Callable[..., Any]] = {"led": LED, "buzzer": Buzzer}


class _Output:
    """An LED or buzzer: on, off, or blinking in gpiozero's background thread; it has no events to emit."""

    def __init__(self, config: LedConfig | BuzzerConfig, factory: Any, emit: EmitEvent) -> None:
        self._device = _OUTPUT_CLASSES[config.device](config.pin, active_high=config.active_high,
                                                      initial_value=False, pin_factory=factory)
        self._blinking_until = 0.0

    def set(self, on: bool) -> None:
        """Switch on or off; stops any blinking."""
        self._blinking_until = 0.0
        if on:
            self._device.on()
        else:
            self._device.off()

    def blink(self, on_s: float, off_s: float, n: int | None) -> None:
        """Blink ``n`` times (for ever when None), then stay off."""
        self._device.blink(on_time=on_s, off_time=off_s, n=n, background=True)
        self._blinking_until = math.inf if n is None else time.monotonic() + n * (on_s + off_s)

    def state(self) -> dict[str, Scalar]:
        """Whether the output is on at this instant and whether it is blinking."""
        return {"on": bool(self._device.is_active), "blinking": time.monotonic() < self._blinking_until}

    def close(self) -> None:
        """Stop blinking, switch off and release the pin (a released line may keep its last level)."""
        self._device.off()
        self._device.close()


_ATTACH: dict[str, Callable[[Any, Any, EmitEvent], _Attached]] = {
    "button": _ButtonWatch,
    "motion": _MotionWatch,
    "led": _Output,
    "buzzer": _Output,
}
"""How each kind of device is put on its pin."""


def _check_blink(on_s: float, off_s: float, n: int | None) -> None:
    if not (0 < on_s <= 3600 and 0 < off_s <= 3600):
        raise ConfigError(f"on_s and off_s must be seconds in (0, 3600] (got {on_s}, {off_s})")
    if n is not None and n < 1:
        raise ConfigError(f"n must be a number of blinks >= 1, or none to blink until told otherwise (got {n})")


class Driver:
    """One GPIO device: inputs emit events from their own thread, outputs are switched by the agent's commands.

    ``start(emit)`` claims the pin (through the config's pin factory) and ``stop()`` releases it; both follow
    :class:`edge.drivers.EventDriver`. :meth:`set`, :meth:`blink` and :meth:`beep` are for the agent's command
    handlers: they return the output's state for the command's reply and raise :class:`ConfigError` when the
    sensor is not an output (or the arguments are out of range), :class:`DeviceUnavailable` when it is stopped.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._where = f"{config.name}: {config.device} on BCM {config.pin}"
        self._attached: _Attached | None = None
        self._lock = threading.Lock()

    def start(self, emit: EmitEvent) -> None:
        """Claim the pin and begin watching (inputs) or stand ready for commands (outputs)."""
        with self._lock:
            if self._attached is not None:
                return
            with gpio_errors(self._where):
                self._attached = _ATTACH[self._config.device](self._config, pin_factory(self._config), emit)

    def stop(self) -> None:
        """Release the pin; an output is switched off. Safe to call twice or after a failed start."""
        with self._lock:
            attached, self._attached = self._attached, None
            if attached is not None:
                with gpio_errors(self._where):
                    attached.close()

    def state(self) -> dict[str, Scalar]:
        """The device's state: ``pressed`` for a button, ``motion`` for a PIR, ``on``/``blinking`` for outputs."""
        return self._running().state()

    def set(self, on: bool) -> dict[str, Scalar]:
        """Switch the LED or buzzer on or off (stops blinking); returns its state."""
        output = self._output()
        with gpio_errors(self._where):
            output.set(on)
        return output.state()

    def blink(self, on_s: float = 0.5, off_s: float = 0.5, n: int | None = None) -> dict[str, Scalar]:
        """Blink the LED or buzzer ``n`` times (until told otherwise when None); returns its state."""
        _check_blink(on_s, off_s, n)
        output = self._output()
        with gpio_errors(self._where):
            output.blink(on_s, off_s, n)
        return output.state()

    def beep(self, on_s: float = 0.2, off_s: float = 0.2, n: int | None = 3) -> dict[str, Scalar]:
        """Sound the buzzer in ``n`` short beeps; returns its state."""
        if self._config.device != "buzzer":
            raise ConfigError(f"sensor {self._config.name!r} is a {self._config.device}; only a buzzer beeps")
        return self.blink(on_s, off_s, n)

    def _running(self) -> _Attached:
        attached = self._attached
        if attached is None:
            raise DeviceUnavailable(f"{self._where}: not started")
        return attached

    def _output(self) -> _Output:
        attached = self._running()
        if not isinstance(attached, _Output):
            raise ConfigError(f"sensor {self._config.name!r} is a {self._config.device}, not an output: "
                              f"only led and buzzer entries can be switched")
        return attached


_WORLDS: dict[str, Callable[[MockFactory, Any], Citizen | Passersby]] = {
    "button": lambda board, config: Citizen(board.pin(config.pin), pressed_level=not config.pull_up),
    "motion": lambda board, config: Passersby(board.pin(config.pin), active_level=not config.pull_up),
}
"""The simulated world on an input's pin; outputs have none (their mock pin records what the driver did)."""


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Put the device on a mock board, with citizens pressing the button or people walking past the PIR."""
    board = MockFactory()
    world = _WORLDS.get(config.device)
    try:
        with world(board, config) if world is not None else nullcontext():
            yield on_board(config, board)
    finally:
        board.close()


def present(config: Config) -> Presence:
    """Whether the GPIO controller is there (``nakhon agent check --connect``)."""
    return gpio_present(config)
