"""Simulated Modbus RTU energy meter: a pymodbus server on a pseudo-terminal, metering a street-light cabinet.

The driver opens :attr:`SimulatedMeter.path` as it would open ``/dev/ttyUSB0``. Behind it sit the RS-485 line and
the meter's transceiver (a thread carrying bytes between two ptys) and the meter's firmware (pymodbus's RTU server,
on its own asyncio loop in its own thread, on the second pty). Like a real meter it stays silent to frames for
another address or sent at another baud rate or parity, it can be powered off and on, and a noisy line can garble
its answers. The values come from :class:`StreetLightCabinet` at the moment each request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import select
import termios
import threading
import time
import tty
from collections.abc import Sequence
from typing import Final

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.drivers._serial import PtyDevice
from edge.drivers._simulation import DailyWalk
from edge.drivers.modbus_meter import DATA_TYPES, FUNCTIONS, Register, encode_registers
from edge.errors import DriverError

LOCAL_UTC_OFFSET_H: Final = 7.0
"""Thailand is UTC+7 all year."""

FRAME_GAP_S: Final = 0.01
"""Silence that ends an RTU frame on the pty (3.5 characters on a real line: 15 ms at 2400 baud)."""

SPEEDS: Final[dict[int, int]] = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600,
                                                                          115200)}
"""termios speed constant -> baud rate."""

_PHASE_SUFFIX = re.compile(r"_l[123]$")

_FUNCTION_OF_CODE: Final[dict[int, str]] = {code: function for function, (code, _) in FUNCTIONS.items()}


class StreetLightCabinet:
    """The load behind the meter: a controller, router and camera all day, 24 LED street lights from dusk to dawn.

    :meth:`sample` takes the simulated POSIX time, so tests can ask for any hour; energy is integrated between
    samples (trapezoids), the way a meter accumulates it.
    """

    LIGHTS_ON_HOUR: Final = 18.33
    LIGHTS_OFF_HOUR: Final = 6.0

    def __init__(self, rng: random.Random, energy_kwh: float = 1520.37, lamps: int = 24, lamp_w: float = 100.0,
                 standby_w: float = 65.0) -> None:
        self._rng = rng
        self._energy_kwh = energy_kwh
        self._lamps_w = lamps * lamp_w
        self._standby_w = standby_w
        self._voltage = DailyWalk(rng, 229.0, daily_swing=2.5, noise=0.3, low=207.0, high=253.0, peak_hour=3.0)
        self._frequency = DailyWalk(rng, 50.0, daily_swing=0.0, noise=0.01, low=49.5, high=50.5)
        self._last: tuple[float, float] | None = None

    def lights_on(self, at: float) -> bool:
        """Whether the photocell has the lights on at POSIX time ``at``."""
        hour = (at / 3600.0 + LOCAL_UTC_OFFSET_H) % 24.0
        return hour >= self.LIGHTS_ON_HOUR or hour < self.LIGHTS_OFF_HOUR

    def sample(self, at: float) -> dict[str, float]:
        """What the meter measures at POSIX time ``at`` (later than the previous sample)."""
        lights = self.lights_on(at)
        # the cabinet's own load pulls the feeder's voltage down a little when the lights come on
        voltage = self._voltage.sample(at) - (1.5 if lights else 0.0)
        standby_w = self._standby_w * self._rng.uniform(0.9, 1.1)
        lamps_w = self._lamps_w * self._rng.uniform(0.98, 1.0) if lights else 0.0
        power = standby_w + lamps_w
        apparent = standby_w / 0.85 + lamps_w / 0.96  # switch-mode standby load and LED drivers
        if self._last is not None:
            last_at, last_power = self._last
            self._energy_kwh += (power + last_power) / 2 * max(0.0, at - last_at) / 3.6e6
        self._last = (at, power)
        return {"voltage": voltage, "current": apparent / voltage, "power": power,
                "frequency": self._frequency.sample(at), "energy_total": self._energy_kwh,
                "power_factor": power / apparent}


def measured(quantity: str, sample: dict[str, float]) -> float | None:
    """The value served for a quantity of any register map: by name, then without a phase suffix
    (``voltage_l2`` -> ``voltage``); None for a quantity the cabinet does not measure (its registers stay 0)."""
    if quantity in sample:
        return sample[quantity]
    return sample.get(_PHASE_SUFFIX.sub("", quantity))


def _fit(value: float, row: Register) -> float:
    """Clamp a value into what the row's integer type can carry (meters saturate or wrap; this one saturates)."""
    code, size = DATA_TYPES[row.type]
    if code == "f":
        return value
    bits = 16 * size
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if code.islower() else (0, 2 ** bits - 1)
    ends = sorted(x * row.scale + row.offset for x in (low, high))
    return min(max(value, ends[0]), ends[1])


class SimulatedMeter(PtyDevice):
    """An energy meter at ``unit_id`` with its own line settings, serving ``registers`` on a pty.

    ``speed`` runs the simulated clock faster than the wall clock (3600: an hour a second) from ``start_at``
    (default now); ``garble_rate`` is the share of answers a noisy, unterminated line corrupts.
    """

    def __init__(self, registers: Sequence[Register], *, unit_id: int = 1, baudrate: int = 2400, parity: str = "N",
                 stopbits: int = 1, speed: float = 1.0, start_at: float | None = None, seed: int | None = None,
                 garble_rate: float = 0.0) -> None:
        super().__init__("modbus_meter")
        self.unit_id = unit_id
        self.line = (baudrate, parity, stopbits)
        self.requests = 0
        self._registers = tuple(registers)
        self._noise = random.Random(seed)
        self._cabinet = StreetLightCabinet(random.Random(seed))
        self._speed = speed
        self._start = (time.monotonic(), time.time() if start_at is None else start_at)
        self._garble_rate = garble_rate
        self._meter_master = self._meter_slave = self._probe = -1
        self._meter_path = ""
        self._carrier: threading.Thread | None = None
        self._powered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusSerialServer | None = None
        self._firmware: threading.Thread | None = None

    # -- the line ------------------------------------------------------------------------------------------
    def __enter__(self) -> SimulatedMeter:
        try:
            self._meter_master, self._meter_slave = os.openpty()
            tty.setraw(self._meter_slave, termios.TCSANOW)
            self._meter_path = os.ttyname(self._meter_slave)
        except OSError as err:
            self.close()
            raise DriverError(f"modbus meter simulator: cannot create a pty: {err}") from err
        super().__enter__()
        try:
            # our own handle on the driver's end, to see the baud rate and parity its port was opened with
            self._probe = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as err:
            self.close()
            raise DriverError(f"modbus meter simulator: cannot open {self.path}: {err}") from err
        self._carrier = threading.Thread(target=self._carry_answers, name="sim-modbus_meter-answers", daemon=True)
        self._carrier.start()
        self.power_on()
        return self

    def close(self) -> None:
        """Power the meter off, stop the line and close every pty; safe to call twice."""
        self.power_off()
        self.stopping.set()
        if self._carrier is not None:  # before the ptys close: it writes to the driver's end
            self._carrier.join(timeout=5)
            self._carrier = None
        super().close()
        for fd in (self._probe, self._meter_master, self._meter_slave):
            if fd >= 0:
                with contextlib.suppress(OSError):  # already closed
                    os.close(fd)
        self._probe = self._meter_master = self._meter_slave = -1

    def serve(self) -> None:
        """Carry the driver's frames to the meter, as far as its transceiver and address filter let them."""
        frame = bytearray()
        while not self.stopping.is_set():
            chunk = self.read(timeout=FRAME_GAP_S if frame else 0.1)
            if chunk:
                frame += chunk
            elif frame:
                self._deliver(bytes(frame))
                frame.clear()

    def _deliver(self, frame: bytes) -> None:
        # pymodbus 3.16's simulated device answers other addresses with a device-failure exception, where a real
        # slave stays silent: the address filter lives here, in front of it
        if not self._powered.is_set() or frame[0] != self.unit_id or self.driver_line() != self.line:
            return
        os.write(self._meter_master, frame)

    def driver_line(self) -> tuple[int, str, int]:
        """The baud rate, parity and stop bits the driver opened its end with (a UART at other settings
        only sees framing errors)."""
        _, _, cflag, _, _, ospeed, _ = termios.tcgetattr(self._probe)
        parity = ("O" if cflag & termios.PARODD else "E") if cflag & termios.PARENB else "N"
        return SPEEDS.get(ospeed, 0), parity, 2 if cflag & termios.CSTOPB else 1

    def _carry_answers(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self._meter_master], [], [], 0.1)
            if not ready:
                continue
            answer = bytearray(os.read(self._meter_master, 4096))
            if answer and self._noise.random() < self._garble_rate:
                answer[self._noise.randrange(len(answer))] ^= 0x5A
            self.write(bytes(answer))

    # -- the meter -----------------------------------------------------------------------------------------
    def power_on(self) -> None:
        """Start the meter's firmware (the pymodbus server); it answers once this returns."""
        if self._firmware is not None:
            return
        started = threading.Event()
        failure: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._firmware = threading.Thread(target=self._run_firmware, args=(self._loop, started, failure),
                                          name="sim-modbus_meter-server", daemon=True)
        self._firmware.start()
        if not started.wait(5) or self._server is None:
            self.power_off()
            raise DriverError(f"modbus meter simulator: the Modbus server did not start on {self._meter_path}: "
                              f"{', '.join(failure) or 'no sign of life within 5 s'}")
        self._powered.set()

    def power_off(self) -> None:
        """Stop the meter's firmware; the line stays, the meter goes silent."""
        self._powered.clear()
        loop, server, thread = self._loop, self._server, self._firmware
        self._loop = self._server = self._firmware = None
        if loop is not None and server is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(TimeoutError, RuntimeError):  # the loop already ended
                stopped = server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
                asyncio.run_coroutine_threadsafe(stopped, loop).result(5)
        if thread is not None:
            thread.join(timeout=5)
        if loop is not None and not loop.is_running():
            loop.close()

    def _run_firmware(self, loop: asyncio.AbstractEventLoop, started: threading.Event, failure: list[str]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._firmware_main(started, failure))
        finally:
            started.set()

    async def _firmware_main(self, started: threading.Event, failure: list[str]) -> None:
        baudrate, parity, stopbits = self.line
        server = ModbusSerialServer(self._device(), framer=FramerType.RTU, port=self._meter_path, baudrate=baudrate,
                                    parity=parity, stopbits=stopbits)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus's way of saying it could not open the port
            failure.append(str(err))
            return
        self._server = server
        started.set()
        await server.serving

    def _device(self) -> SimDevice:
        """The meter's registers: for each kind, one run from its lowest to its highest row, gaps reading 0."""
        blocks: dict[str, list[SimData]] = {}
        for function in FUNCTIONS:
            rows = [r for r in self._registers if r.function == function]
            if rows:
                start = min(r.address for r in rows)
                end = max(r.address + r.words for r in rows)
                blocks[function] = [SimData(start, count=end - start, values=0, datatype=DataType.REGISTERS)]
            else:
                blocks[function] = [SimData(0, datatype=DataType.INVALID)]
        # a meter has no coils or discrete inputs, but pymodbus wants a block of each
        coils, inputs = [SimData(0, datatype=DataType.BITS)], [SimData(0, datatype=DataType.BITS)]
        return SimDevice(self.unit_id, simdata=(coils, inputs, blocks["holding"], blocks["input"]),
                         action=self._refresh)

    def now(self) -> float:
        """The simulated POSIX time."""
        started_mono, started_wall = self._start
        return started_wall + (time.monotonic() - started_mono) * self._speed

    async def _refresh(self, function_code: int, start_address: int, address: int, count: int,
                       registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus's hook on every request: measure now and write the values into the registers read."""
        if values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # like an SDM120 outside its set-up mode, it takes no writes
        function = _FUNCTION_OF_CODE.get(function_code)
        if function is None:
            return None
        self.requests += 1
        sample = self._cabinet.sample(self.now())
        for row in self._registers:
            if row.function != function:
                continue
            value = measured(row.quantity, sample)
            if value is not None and math.isfinite(value):
                start = row.address - start_address
                registers[start:start + row.words] = encode_registers(_fit(value, row), row.type, row.word_order,
                                                                      row.scale, row.offset)
        return None
