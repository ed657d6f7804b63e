"""DS18B20 1-wire temperature probe, read through the Linux w1-gpio / w1-therm sysfs interface.

The kernel (``dtoverlay=w1-gpio`` in /boot/firmware/config.txt) exposes each probe as
``/sys/bus/w1/devices/28-XXXXXXXXXXXX/w1_slave``; reading that file runs a conversion and answers two lines:
the scratchpad with ``crc=.. YES`` (or ``NO``), then the scratchpad again with ``t=<millidegrees>``.
"""

from __future__ import annotations

import contextlib
import random
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field as PydanticField

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field, Presence
from edge.errors import DeviceUnavailable

W1_DEVICES = Path("/sys/bus/w1/devices")
POWER_ON_RESET_MC = 85_000
"""The probe answers 85.000 degC before its first conversion (or after a brown-out): not a reading."""


class Config(DriverConfig):
    """A DS18B20 probe on the 1-wire bus."""

    kind: Literal["ds18b20"] = "ds18b20"
    probe: Annotated[str, PydanticField(pattern=r"^28-[0-9a-f]{12}$")] | None = None
    """The probe's id (``28-0316a2799cff``); the first probe found when omitted."""
    devices_dir: Path = W1_DEVICES
    offset_c: Annotated[float, PydanticField(ge=-10, le=10)] = 0.0

    def claims(self) -> set[str]:
        """The probe (one driver per probe)."""
        return {f"w1:{self.probe}"} if self.probe else set()


SAMPLE_CONFIG = {"kind": "ds18b20", "name": "air-temp", "interval_s": 60}

TELEMETRY: tuple[Field, ...] = (Field("temperature", "degC", float, "temperature at the probe"),)

_CRC = re.compile(r"crc=[0-9a-f]{2} (YES|NO)")
_TEMP = re.compile(r"t=(-?\d+)")


class ProbeError(DeviceUnavailable):
    """The probe answered something that is not a valid temperature."""


def parse_w1_slave(text: str) -> float:
    """Degrees Celsius from the two lines of ``w1_slave``; raises :class:`ProbeError` on a bad or missing answer."""
    lines = text.strip().splitlines()
    if len(lines) != 2:
        raise ProbeError(f"expected two lines from the probe, got {len(lines)}")
    crc = _CRC.search(lines[0])
    if crc is None or crc.group(1) != "YES":
        raise ProbeError("CRC check failed (noise on the 1-wire line: check the 4.7 kOhm pull-up and the cable)")
    temp = _TEMP.search(lines[1])
    if temp is None:
        raise ProbeError("no t= value in the probe's answer")
    millidegrees = int(temp.group(1))
    if millidegrees == POWER_ON_RESET_MC:
        raise ProbeError("the probe answered its power-on value 85.0 degC (check its power supply)")
    return millidegrees / 1000


class Driver:
    """Reads one DS18B20 probe."""

    TELEMETRY: ClassVar[tuple[Field, ...]] = TELEMETRY

    def __init__(self, config: Config) -> None:
        self._config = config
        self._file: Path | None = None

    def open(self) -> None:
        """Find the probe's sysfs file."""
        d = self._config.devices_dir
        if self._config.probe:
            candidate = d / self._config.probe / "w1_slave"
            if not candidate.exists():
                raise DeviceUnavailable(f"{self._config.name}: no probe {self._config.probe} under {d} "
                                        "(is dtoverlay=w1-gpio set and the probe wired?)")
            self._file = candidate
            return
        found = sorted(d.glob("28-*/w1_slave")) if d.exists() else []
        if not found:
            raise DeviceUnavailable(f"{self._config.name}: no DS18B20 probe under {d} "
                                    "(is dtoverlay=w1-gpio set and the probe wired?)")
        self._file = found[0]

    def read(self) -> dict[str, Scalar]:
        """One conversion (the kernel takes ~750 ms)."""
        if self._file is None:
            raise DeviceUnavailable(f"{self._config.name}: probe not open")
        try:
            text = self._file.read_text(encoding="ascii", errors="replace")
        except OSError as err:
            raise DeviceUnavailable(f"{self._config.name}: cannot read {self._file}: {err.strerror}") from err
        return {"temperature": round(parse_w1_slave(text) + self._config.offset_c, 3)}

    def close(self) -> None:
        """Forget the probe (nothing is held open)."""
        self._file = None


def _answer(celsius: float, crc_ok: bool = True) -> str:
    raw = round(celsius * 16) & 0xFFFF
    lo, hi = raw & 0xFF, raw >> 8
    scratch = f"{lo:02x} {hi:02x} 4b 46 7f ff 0c 10 1c"
    return f"{scratch} : crc=1c {'YES' if crc_ok else 'NO'}\n{scratch} t={round(celsius * 16) * 1000 // 16}\n"


class ProbeSimulator:
    """A fake w1 sysfs tree whose probe follows a tropical day, with an occasional CRC error."""

    PROBE = "28-0316a2799cff"

    def __init__(self, directory: Path, crc_error_rate: float = 0.02, seed: int | None = None) -> None:
        self.directory = directory
        self._rng = random.Random(seed)
        self._crc_error_rate = crc_error_rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-ds18b20", daemon=True)
        self.celsius = 29.0

    def write(self) -> None:
        """Write the next answer of the probe."""
        self.celsius = min(45.0, max(15.0, self.celsius + self._rng.gauss(0, 0.05)))
        slave = self.directory / self.PROBE / "w1_slave"
        slave.parent.mkdir(parents=True, exist_ok=True)
        slave.write_text(_answer(self.celsius, self._rng.random() >= self._crc_error_rate))

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.write()

    def __enter__(self) -> ProbeSimulator:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated probe in a temporary sysfs tree and point the driver at it."""
    with tempfile.TemporaryDirectory(prefix="nakhon-w1-") as tmp, ProbeSimulator(Path(tmp)):
        yield config.model_copy(update={"devices_dir": Path(tmp), "probe": ProbeSimulator.PROBE})


def present(config: Config) -> Presence:
    """Whether the kernel shows the probe on the 1-wire bus (``nakhon agent check --connect``)."""
    folder = config.devices_dir
    probes = sorted(p.name for p in folder.glob("28-*")) if folder.is_dir() else []
    if config.probe in probes or (config.probe is None and probes):
        return Presence(True, f"1-wire probe {config.probe or probes[0]} in {folder}")
    return Presence(False, f"no 1-wire probe {config.probe or '28-*'} in {folder}",
                    "add dtoverlay=w1-gpio to /boot/firmware/config.txt, reboot, and check the probe's wiring and "
                    "its 4.7 kOhm pull-up")
