"""The GPIO seam: how the drivers on the Pi's 40-pin header reach their pins, and how pin errors become ours.

Every GPIO driver gets its pins from one gpiozero *pin factory*, chosen by its config's ``pin_factory`` key:

- ``"default"``: the real pins, through gpiozero's own choice of pin library (lgpio on a Raspberry Pi running
  Bookworm, or whatever ``GPIOZERO_PIN_FACTORY`` names), which gpiozero keeps for the whole process: there is one
  header;
- ``"mock"``: a :class:`gpiozero.pins.mock.MockFactory` of the driver's own, i.e. no hardware at all.

A simulator (``simulate(config)`` of a GPIO driver) builds its own MockFactory, wires its simulated world to the
mock pins, and hands that *board* to the driver with :func:`on_board`; tests do the same. A board is not a TOML
value, so it rides on the config object ``simulate()`` yields, as a private attribute; a config read from a file
never carries one. Nothing here sets ``gpiozero.Device.pin_factory``: every device gets ``pin_factory=``
explicitly, so two drivers (or two tests) on two mock boards never see each other's pins.
"""

from __future__ import annotations

import glob
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, TypeVar

from gpiozero.exc import BadPinFactory, GPIOPinInUse, GPIOZeroError, PinFixedPull, PinInvalidPin
from gpiozero.pins.mock import MockFactory
from pydantic import Field as PydanticField
from pydantic import PrivateAttr

from edge.drivers import DriverConfig, Presence
from edge.errors import DeviceUnavailable

BcmPin = Annotated[int, PydanticField(ge=2, le=27, description="BCM GPIO number (GPIO17 is 17), not the header pin")]
"""A GPIO of the 40-pin header by its BCM number; GPIO0 and GPIO1 are left to the HAT ID EEPROM."""

FIXED_PULL_UP = frozenset({2, 3})
"""BCM pins with a 1.8 kOhm pull-up to 3.3 V on the board (the I2C bus): they cannot be pulled down."""


class GpioConfig(DriverConfig):
    """Keys every driver on the GPIO header has: which pin factory reaches its pins."""

    pin_factory: Literal["default", "mock"] = "default"
    _board: Any = PrivateAttr(default=None)


C = TypeVar("C", bound=GpioConfig)


def on_board(config: C, board: MockFactory) -> C:
    """A copy of ``config`` whose driver will use the simulated ``board`` (what ``simulate()`` yields)."""
    simulated = config.model_copy(update={"pin_factory": "mock"})
    simulated._board = board
    return simulated


def pin_factory(config: GpioConfig) -> Any:
    """The gpiozero pin factory for ``config``'s devices; None means gpiozero's default (the real pins)."""
    if config._board is not None:
        return config._board
    return MockFactory() if config.pin_factory == "mock" else None


def _lgpio_errors() -> tuple[type[Exception], ...]:
    # lgpio raises its own ``lgpio.error`` (not an OSError) when a line is busy; it only exists on a Pi.
    try:
        return (importlib.import_module("lgpio").error,)
    except ImportError:
        return ()


GPIO_ERRORS: tuple[type[Exception], ...] = (GPIOZeroError, OSError, *_lgpio_errors())
"""What gpiozero and the libraries under it raise when a pin cannot be had or driven."""

_HINTS: dict[type[Exception], str] = {
    BadPinFactory: "no GPIO here (not a Raspberry Pi, or python3-lgpio is not installed); "
                   "use `nakhon agent run --simulate` or pin_factory = \"mock\" to run without hardware",
    GPIOPinInUse: "another device of this agent already holds the pin",
    PinFixedPull: "BCM 2 and 3 have fixed pull-ups (I2C); use another pin",
    PinInvalidPin: "this board has no such pin",
}
"""What a technician should do about the gpiozero errors that have a known cause."""


def _hint(err: Exception) -> str:
    for klass in type(err).__mro__:
        if klass in _HINTS:
            return f" ({_HINTS[klass]})"
    if "busy" in str(err).lower():
        return " (another process holds the pin: stop it, or check with `pinctrl get`)"
    return ""


@contextmanager
def gpio_errors(what: str) -> Iterator[None]:
    """Translate gpiozero and lgpio errors raised inside the block into :class:`DeviceUnavailable`."""
    try:
        yield
    except GPIO_ERRORS as err:
        raise DeviceUnavailable(f"{what}: {type(err).__name__}: {err}{_hint(err)}") from err


def gpio_present(config: GpioConfig) -> Presence:
    """Whether the header's GPIO controller is there (mock pins need none)."""
    if config.pin_factory == "mock":
        return Presence(True, "mock pins (pin_factory = \"mock\"), no hardware")
    chips = sorted(glob.glob("/dev/gpiochip*"))
    if not chips:
        return Presence(False, "no GPIO controller (/dev/gpiochip*) on this machine",
                        "run on the Raspberry Pi, or add --simulate to check the rest on a laptop")
    return Presence(True, f"GPIO controller {chips[0]} present", device_file=chips[0], group="gpio")
