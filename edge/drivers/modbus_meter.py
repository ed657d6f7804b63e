"""Energy meter on Modbus RTU (RS-485): reads a register map given as a table, the Eastron SDM120 map by default.

The register map is data, not code: each row names a quantity, where it lives (input or holding registers, a
0-based address) and how to turn the registers into a value (data type, word order, scale and offset). Another
meter needs another ``registers`` table in the device config, nothing else. pymodbus does the RTU framing and the
CRC; this module plans the requests, decodes the words and translates pymodbus's failures into messages a
technician can act on.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import serial
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField
from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from edge.contract import Scalar
from edge.drivers import DriverConfig, Field, Presence
from edge.drivers._serial import open_serial, serial_present
from edge.errors import DeviceUnavailable, DriverError

DataType = Literal["float32", "int16", "uint16", "int32", "uint32"]
WordOrder = Literal["big", "little"]
Function = Literal["input", "holding"]

DATA_TYPES: Final[dict[str, tuple[str, int]]] = {
    "float32": ("f", 2),
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
}
"""Data type -> (struct code of the big-endian value, number of 16-bit registers it takes)."""

FUNCTIONS: Final[dict[str, tuple[int, str]]] = {
    "input": (4, "input registers"),
    "holding": (3, "holding registers"),
}
"""Register kind -> (Modbus function code that reads it, what a manual calls it)."""

MAX_READ_WORDS: Final = 64
"""Longest request the driver sends: Modbus allows 125 registers, many meters accept fewer."""


class MeterError(DriverError):
    """The meter answered but refused the request (a Modbus exception) or answered something unusable."""


@dataclass(frozen=True)
class Refusal:
    """One Modbus exception code: its name, what a technician should do, and how the agent should take it."""

    name: str
    hint: str
    error: type[DriverError]


EXCEPTION_CODES: Final[dict[int, Refusal]] = {
    1: Refusal("illegal function", "this meter has no {registers} there: check 'function' in the register map",
               MeterError),
    2: Refusal("illegal data address", "check the register map's addresses against the meter's manual "
               "(addresses are 0-based: register 30001 is address 0x0000)", MeterError),
    3: Refusal("illegal data value", "the meter refuses to read that many registers at once: set max_gap_words = 0",
               MeterError),
    4: Refusal("server device failure", "the meter reports an internal fault", MeterError),
    5: Refusal("acknowledge", "the meter is busy with a long operation; the agent will retry", DeviceUnavailable),
    6: Refusal("server device busy", "the meter is busy; the agent will retry", DeviceUnavailable),
    10: Refusal("gateway path unavailable", "the Modbus gateway has no route to the meter", DeviceUnavailable),
    11: Refusal("gateway target failed to respond", "the gateway got no answer from the meter: check its wiring "
                "and address", DeviceUnavailable),
}
"""Modbus exception code -> what it means; unknown codes are reported with their number."""


class Register(BaseModel):
    """One row of a register map: a quantity, where the meter keeps it and how to decode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: Annotated[str, PydanticField(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    unit: Annotated[str, PydanticField(min_length=1, max_length=16)] | None = None
    address: Annotated[int, PydanticField(ge=0, le=0xFFFF)]
    function: Function = "input"
    type: DataType = "float32"
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    description: str | None = None

    @property
    def words(self) -> int:
        """How many 16-bit registers the value takes."""
        return DATA_TYPES[self.type][1]

    @model_validator(mode="after")
    def _fits(self) -> Register:
        if self.address + self.words > 0x10000:
            raise ValueError(f"{self.quantity}: a {self.type} at address {self.address:#06x} runs past 0xFFFF")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError(f"{self.quantity}: scale must be a non-zero number and offset a number")
        return self


SDM120_REGISTERS: Final[tuple[Register, ...]] = (
    Register(quantity="voltage", unit="V", address=0x0000, description="line to neutral voltage"),
    Register(quantity="current", unit="A", address=0x0006, description="line current"),
    Register(quantity="power", unit="W", address=0x000C, description="active power (import positive)"),
    Register(quantity="frequency", unit="Hz", address=0x0046, description="line frequency"),
    Register(quantity="energy_total", unit="kWh", address=0x0156, description="total active energy"),
)
"""The Eastron SDM120's input registers (function 04, IEEE-754 float32, high word first): the default map."""


class Config(DriverConfig):
    """A Modbus RTU energy meter on a serial port (a USB-RS485 adapter or the Pi's UART with a transceiver)."""

    kind: Literal["modbus_meter"] = "modbus_meter"
    port: str = "/dev/ttyUSB0"
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 2400
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: Annotated[int, PydanticField(ge=1, le=247)] = 1
    timeout_s: Annotated[float, PydanticField(gt=0, le=10)] = 1.0
    max_gap_words: Annotated[int, PydanticField(ge=0, le=MAX_READ_WORDS)] = 0
    registers: Annotated[tuple[Register, ...], PydanticField(min_length=1)] = SDM120_REGISTERS

    @model_validator(mode="after")
    def _quantities_are_unique(self) -> Config:
        seen: set[str] = set()
        for row in self.registers:
            if row.quantity in seen:
                raise ValueError(f"registers: quantity {row.quantity!r} appears twice")
            seen.add(row.quantity)
        return self

    def claims(self) -> set[str]:
        """The serial port (the whole RS-485 line behind it)."""
        return {f"serial:{self.port}"}

    @property
    def line(self) -> str:
        """The line settings as a technician writes them: ``2400 8N1``."""
        return f"{self.baudrate} 8{self.parity}{self.stopbits}"


SAMPLE_CONFIG = {"kind": "modbus_meter", "name": "meter", "interval_s": 10, "port": "/dev/ttyUSB0",
                 "baudrate": 2400, "parity": "N", "stopbits": 1, "unit_id": 1, "timeout_s": 1.0}


def telemetry_of(registers: Sequence[Register]) -> tuple[Field, ...]:
    """The telemetry table of a register map: one float quantity per row."""
    return tuple(Field(r.quantity, r.unit, float, r.description or
                       f"{r.type} at {r.function} register {r.address:#06x}") for r in registers)


TELEMETRY: Final[tuple[Field, ...]] = telemetry_of(SDM120_REGISTERS)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32 (230.1, not 230.10000610351562)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def decode_registers(words: Sequence[int], dtype: DataType, order: WordOrder = "big", scale: float = 1.0,
                     offset: float = 0.0) -> float:
    """Registers -> value: ``raw * scale + offset``; bytes within a register are always big-endian (Modbus),
    ``order`` says whether the high word comes first ("big") or last ("little"). NaN passes through."""
    code, size = DATA_TYPES[dtype]
    if len(words) != size or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"a {dtype} takes {size} register(s) of 16 bits, got {list(words)}")
    ordered = list(words) if order == "big" else list(reversed(words))
    raw: float = struct.unpack(f">{code}", struct.pack(f">{size}H", *ordered))[0]
    if code == "f":
        raw = _shortest_float32(raw)
    if scale == 1 and offset == 0:
        return float(raw)
    # 12 significant digits drop the binary noise of the multiplication (2301 * 0.1) and keep what 32 bits carry
    return float(f"{raw * scale + offset:.12g}")


def encode_registers(value: float, dtype: DataType, order: WordOrder = "big", scale: float = 1.0,
                     offset: float = 0.0) -> list[int]:
    """Value -> registers, the inverse of :func:`decode_registers` (integers are rounded); ValueError when the
    value does not fit the type."""
    code, size = DATA_TYPES[dtype]
    raw = (value - offset) / scale
    try:
        packed = struct.pack(f">{code}", raw if code == "f" else round(raw))
    except (struct.error, OverflowError) as err:
        raise ValueError(f"{value} does not fit a {dtype} with scale {scale} and offset {offset}") from err
    words = list(struct.unpack(f">{size}H", packed))
    return words if order == "big" else words[::-1]


@dataclass(frozen=True)
class ReadBlock:
    """One request: a run of registers of one kind that holds one or more rows of the map."""

    function: Function
    address: int
    count: int
    rows: tuple[Register, ...]


def plan_reads(registers: Sequence[Register], max_gap_words: int = 0,
               max_words: int = MAX_READ_WORDS) -> list[ReadBlock]:
    """Group the map into as few requests as allowed: rows of one kind are read together when at most
    ``max_gap_words`` unlisted registers lie between them and the request stays within ``max_words``."""
    blocks: list[ReadBlock] = []
    for row in sorted(registers, key=lambda r: (r.function, r.address)):
        last = blocks[-1] if blocks else None
        if last is not None and last.function == row.function:
            end = max(last.address + last.count, row.address + row.words)
            if row.address - (last.address + last.count) <= max_gap_words and end - last.address <= max_words:
                blocks[-1] = ReadBlock(last.function, last.address, end - last.address, (*last.rows, row))
                continue
        blocks.append(ReadBlock(row.function, row.address, row.words, (row,)))
    return blocks


def refusal(code: int, where: str, block: ReadBlock) -> DriverError:
    """The error for a Modbus exception response to ``block``, with what to check."""
    what = FUNCTIONS[block.function][1]
    span = f"{what} {block.address:#06x}-{block.address + block.count - 1:#06x}"
    known = EXCEPTION_CODES.get(code)
    if known is None:
        return MeterError(f"{where} refused to read {span}: Modbus exception {code}")
    return known.error(f"{where} refused to read {span}: {known.name} (Modbus exception {code}): "
                       + known.hint.format(registers=what))


class Driver:
    """Polls one meter: one request per :class:`ReadBlock`, every row decoded into a float."""

    TELEMETRY: tuple[Field, ...] = TELEMETRY  # the SDM120's; each driver's follows its configured map

    def __init__(self, config: Config) -> None:
        self._config = config
        self.TELEMETRY = telemetry_of(config.registers)
        self._blocks = plan_reads(config.registers, config.max_gap_words)
        self._what = f"modbus meter {config.name}"
        self._meter = f"meter {config.unit_id} on {config.port} at {config.line}"
        self._port: serial.SerialBase | None = None
        self._client: ModbusSerialClient | None = None
        self._heard = False

    def open(self) -> None:
        """Open the serial port (no traffic yet: a meter is only asked when read)."""
        if self._client is not None:
            return
        c = self._config
        # the port goes through the project's serial seam so a failure says why (no such file, permission
        # denied, locked by another process); pymodbus's own connect() only logs the reason
        port = open_serial(c.port, baudrate=c.baudrate, timeout=c.timeout_s, what=self._what, bytesize=8,
                           parity=c.parity, stopbits=c.stopbits, exclusive=True)
        client = ModbusSerialClient(c.port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=8, parity=c.parity,
                                    stopbits=c.stopbits, timeout=c.timeout_s, retries=0, name=c.name,
                                    trace_packet=self._trace)
        client.socket = port
        self._port, self._client = port, client

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # bytes that came back but made no valid answer mean noise or a mismatched line, not silence
        if not sending and data:
            self._heard = True
        return data

    def read(self) -> dict[str, Scalar]:
        """Ask the meter for every block of the map; a NaN (value not available) leaves its quantity out."""
        if self._client is None:
            raise DeviceUnavailable(f"{self._what}: meter is not open")
        values: dict[str, Scalar] = {}
        for block in self._blocks:
            words = self._fetch(self._client, block)
            for row in block.rows:
                start = row.address - block.address
                value = decode_registers(words[start:start + row.words], row.type, row.word_order, row.scale,
                                         row.offset)
                if math.isfinite(value):
                    values[row.quantity] = value
        return values

    def _fetch(self, client: ModbusSerialClient, block: ReadBlock) -> list[int]:
        request = {"input": client.read_input_registers, "holding": client.read_holding_registers}[block.function]
        self._heard = False
        try:
            response = request(block.address, count=block.count, device_id=self._config.unit_id)
        except ModbusIOException as err:
            raise DeviceUnavailable(self._no_answer()) from err
        except (ModbusException, OSError) as err:
            raise DeviceUnavailable(f"{self._what}: lost serial port {self._config.port} ({err}): is the USB-RS485 "
                                    "adapter still plugged in?") from err
        if response.isError():
            raise refusal(response.exception_code, f"{self._what}: {self._meter}", block)
        words = list(response.registers)
        if len(words) != block.count:
            raise MeterError(f"{self._what}: {self._meter} answered {len(words)} registers when asked for "
                             f"{block.count}")
        return words

    def _no_answer(self) -> str:
        c = self._config
        if self._heard:
            return (f"{self._what}: unreadable answer from {self._meter} (bad CRC or another device answering): "
                    "check the 120 ohm termination at both ends of the line, the cable's twisted pair and shield, "
                    f"and that no two meters share address {c.unit_id}")
        return (f"{self._what}: no answer from {self._meter} within {c.timeout_s} s: check A/B wiring (swap A and B "
                f"if unsure), that the meter's address is {c.unit_id} and its baud rate and parity are {c.line}")

    def close(self) -> None:
        """Close the serial port (idempotent)."""
        port, self._port, self._client = self._port, None, None
        if port is not None:
            port.close()


@contextmanager
def simulate(config: Config) -> Iterator[Config]:
    """Run a simulated meter serving this config's register map and line settings on a pty; yield the config
    pointing the driver at it."""
    # imported here: pymodbus's server is only needed when simulating, not on a device reading a real meter
    from edge.drivers._modbus_meter_sim import SimulatedMeter

    with SimulatedMeter(config.registers, unit_id=config.unit_id, baudrate=config.baudrate, parity=config.parity,
                        stopbits=config.stopbits) as meter:
        yield config.model_copy(update={"port": meter.path})


def present(config: Config) -> Presence:
    """Whether the serial port is there (``nakhon agent check --connect``)."""
    return serial_present(config.port)
