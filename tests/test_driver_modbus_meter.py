"""The Modbus energy meter driver: decoding from recorded frames, and reading through pymodbus's RTU server on ptys."""

from __future__ import annotations

import math
import os
import random
import re
import struct
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pymodbus.client import ModbusSerialClient
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from edge.drivers import modbus_meter as mm
from edge.drivers._modbus_meter_sim import SimulatedMeter, StreetLightCabinet
from edge.errors import DeviceUnavailable

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "modbus_meter"
DOC = ROOT / "docs" / "drivers" / "modbus_meter.md"
BANGKOK = timezone(timedelta(hours=7))
FAST = 0.3  # timeout_s where the meter is meant to stay silent; answers get the default 1 s (the machine may be busy)


def exchange(name: str) -> tuple[bytes, bytes]:
    """The (request, answer) frames of a fixture file."""
    lines = (FIXTURES / f"{name}.hex").read_text().splitlines()
    frames = {line[0]: bytes.fromhex(line[1:]) for line in lines if line[:1] in "<>"}
    return frames[">"], frames["<"]


def answer_pdu(frame: bytes) -> ModbusPDU | None:
    """What pymodbus's RTU framer makes of an answer (None when the CRC is wrong)."""
    _, pdu = FramerRTU(DecodePDU(False)).handleFrame(frame, 1, 0)
    return pdu


def row(quantity: str, address: int, **kwargs: Any) -> mm.Register:
    return mm.Register(quantity=quantity, address=address, **kwargs)


def config(**kwargs: Any) -> mm.Config:
    return mm.Config.model_validate({**mm.SAMPLE_CONFIG, **kwargs})


# -- frames -> values -----------------------------------------------------------------------------------------

DECODED = [
    ("sdm120_voltage_published", row("voltage", 0x0000), 230.20001),  # 0x43663334: not the float32 nearest 230.2
    ("sdm120_voltage", row("voltage", 0x0000), 230.1),
    ("sdm120_current", row("current", 0x0006), 10.87),
    ("sdm120_power", row("power", 0x000C), 2371.4),
    ("sdm120_frequency", row("frequency", 0x0046), 49.98),
    ("sdm120_energy_total", row("energy_total", 0x0156), 1520.37),
    ("swapped_words_voltage", row("voltage", 0x0000, word_order="little"), 230.1),
    ("holding_int16_voltage_x10", row("voltage", 0x0100, function="holding", type="int16", scale=0.1), 230.1),
    ("holding_int16_power_export", row("power", 0x0102, function="holding", type="int16"), -200.0),
    ("input_int32_little_energy_wh", row("energy_total", 0x0010, type="int32", word_order="little", scale=0.001),
     1520.37),
    ("input_uint32_counter", row("energy_total", 0x0020, type="uint32", scale=0.0001), 300000.0),
]


@pytest.mark.parametrize(("fixture", "register", "expected"), DECODED, ids=[d[0] for d in DECODED])
def test_recorded_answers_decode_to_what_the_meter_displays(fixture: str, register: mm.Register,
                                                            expected: float) -> None:
    request, answer = exchange(fixture)
    (block,) = mm.plan_reads([register])
    kind = {"input": ReadInputRegistersRequest, "holding": ReadHoldingRegistersRequest}[block.function]
    framer = FramerRTU(DecodePDU(False))
    assert framer.buildFrame(kind(address=block.address, count=block.count, dev_id=1)) == request
    pdu = answer_pdu(answer)
    assert pdu is not None and not pdu.isError()
    value = mm.decode_registers(pdu.registers, register.type, register.word_order, register.scale, register.offset)
    assert value == expected  # exactly: no 230.10000610351562 on the dashboard


def test_one_request_for_neighbouring_registers_decodes_each_quantity() -> None:
    rows = [row("voltage", 0x0000), row("current", 0x0006), row("power", 0x000C)]
    (block,) = mm.plan_reads(rows, max_gap_words=4)
    request, answer = exchange("sdm120_block_0000_000d")
    assert FramerRTU(DecodePDU(False)).buildFrame(ReadInputRegistersRequest(address=0, count=block.count,
                                                                            dev_id=1)) == request
    pdu = answer_pdu(answer)
    assert pdu is not None
    got = {r.quantity: mm.decode_registers(pdu.registers[r.address:r.address + r.words], r.type) for r in block.rows}
    assert got == {"voltage": 229.4, "current": 0.35, "power": 66.5}


def test_a_value_the_meter_does_not_have_is_nan() -> None:
    pdu = answer_pdu(exchange("sdm120_power_not_available")[1])
    assert pdu is not None
    assert math.isnan(mm.decode_registers(pdu.registers, "float32"))


def test_a_damaged_answer_is_not_taken() -> None:
    assert answer_pdu(exchange("sdm120_voltage_bad_crc")[1]) is None
    assert answer_pdu(exchange("sdm120_voltage")[1]) is not None


def test_an_exception_answer_becomes_a_message_naming_the_registers() -> None:
    pdu = answer_pdu(exchange("sdm120_illegal_address")[1])
    assert pdu is not None and pdu.isError()
    (block,) = mm.plan_reads([row("power_l1", 0x0300)])
    err = mm.refusal(pdu.exception_code, "meter 1 on /dev/ttyUSB0 at 2400 8N1", block)
    assert isinstance(err, mm.MeterError)
    assert "illegal data address" in str(err) and "input registers 0x0300-0x0301" in str(err)
    assert isinstance(mm.refusal(6, "meter 1", block), DeviceUnavailable)  # busy: the agent simply retries


def test_decoding_refuses_the_wrong_number_of_registers() -> None:
    with pytest.raises(ValueError, match="float32 takes 2"):
        mm.decode_registers([0x4366], "float32")


@pytest.mark.parametrize("dtype", list(mm.DATA_TYPES))
@pytest.mark.parametrize("order", ["big", "little"])
def test_encoding_agrees_with_pymodbus_and_decodes_back(dtype: mm.DataType, order: mm.WordOrder) -> None:
    value = {"float32": -1234.5, "int16": -1234, "uint16": 51234, "int32": -123456789, "uint32": 3123456789}[dtype]
    words = mm.encode_registers(value, dtype, order)
    kind = getattr(ModbusSerialClient.DATATYPE, dtype.upper())
    assert words == ModbusSerialClient.convert_to_registers(value, kind, word_order=order)
    assert mm.decode_registers(words, dtype, order) == value
    assert mm.decode_registers(mm.encode_registers(230.1, "int16", order, 0.1), "int16", order, 0.1) == 230.1
    with pytest.raises(ValueError, match="does not fit"):
        mm.encode_registers(1e40, dtype, order)


# -- the register map -----------------------------------------------------------------------------------------

def test_without_registers_the_sdm120_map_is_read() -> None:
    conf = config()
    assert [(r.quantity, r.unit, r.address) for r in conf.registers] == [
        ("voltage", "V", 0x0000), ("current", "A", 0x0006), ("power", "W", 0x000C), ("frequency", "Hz", 0x0046),
        ("energy_total", "kWh", 0x0156)]
    assert all(r.function == "input" and r.type == "float32" and r.word_order == "big" for r in conf.registers)
    assert conf.claims() == {"serial:/dev/ttyUSB0"}
    assert [f.quantity for f in mm.Driver(conf).TELEMETRY] == ["voltage", "current", "power", "frequency",
                                                               "energy_total"]


def test_requests_are_planned_from_the_map() -> None:
    sdm120 = mm.SDM120_REGISTERS
    assert [(b.address, b.count) for b in mm.plan_reads(sdm120)] == [(0x0000, 2), (0x0006, 2), (0x000C, 2),
                                                                      (0x0046, 2), (0x0156, 2)]
    assert [(b.address, b.count) for b in mm.plan_reads(sdm120, 4)] == [(0x0000, 14), (0x0046, 2), (0x0156, 2)]
    three_phase = [row(f"{q}_l{n}", base + 2 * (n - 1)) for q, base in (("voltage", 0), ("current", 6))
                   for n in (1, 2, 3)]
    assert [(b.address, b.count) for b in mm.plan_reads(three_phase)] == [(0x0000, 12)]
    mixed = [row("a", 0x0000), row("b", 0x0002, function="holding")]
    assert [(b.function, b.address) for b in mm.plan_reads(mixed, 10)] == [("holding", 2), ("input", 0)]
    wide = [row(f"q{i}", 2 * i) for i in range(40)]
    assert [b.count for b in mm.plan_reads(wide)] == [mm.MAX_READ_WORDS, 80 - mm.MAX_READ_WORDS]


@pytest.mark.parametrize(("change", "complaint"), [
    ({"baudrate": 2401}, "baudrate"),
    ({"parity": "X"}, "parity"),
    ({"unit_id": 0}, "unit_id"),
    ({"registers": []}, "registers"),
    ({"registers": [{"quantity": "voltage", "address": 0}, {"quantity": "voltage", "address": 6}]}, "twice"),
    ({"registers": [{"quantity": "voltage", "address": 0xFFFF}]}, "past 0xFFFF"),
    ({"registers": [{"quantity": "voltage", "address": 0, "scale": 0}]}, "non-zero"),
    ({"registers": [{"quantity": "voltage", "address": 0, "type": "float64"}]}, "type"),
    ({"registers": [{"quantity": "voltage", "address": 0, "adress": 1}]}, "Extra inputs"),
])
def test_a_bad_config_is_refused_before_anything_opens(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        mm.Config.model_validate({**mm.SAMPLE_CONFIG, **change})


def test_every_config_example_in_the_documentation_validates() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    entries = [d for block in blocks for d in tomllib.loads(block).get("drivers", [])]
    assert len(entries) >= 2
    for entry in entries:
        conf = mm.Config.model_validate(entry)
        assert mm.plan_reads(conf.registers, conf.max_gap_words)


# -- the simulated cabinet ------------------------------------------------------------------------------------

def local(hour: int, minute: int = 0) -> float:
    return datetime(2026, 3, 12, hour, minute, tzinfo=BANGKOK).timestamp()


def test_the_street_lights_come_on_at_dusk_and_the_meter_counts_their_energy() -> None:
    cabinet = StreetLightCabinet(random.Random(3))
    noon = cabinet.sample(local(12))
    assert 40 < noon["power"] < 100 and noon["current"] < 1
    before = cabinet.sample(local(18))["energy_total"]
    night = [cabinet.sample(local(18, 30) + 60 * m) for m in range(61)]
    assert all(2000 < s["power"] < 2600 and 9 < s["current"] < 13 for s in night)
    assert 0.9 < night[-1]["power_factor"] <= 1
    assert night[-1]["energy_total"] - night[0]["energy_total"] == pytest.approx(2.45, abs=0.1)  # one hour
    assert night[0]["energy_total"] > before


# -- through pymodbus's RTU server on a pty pair ------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(t.name.startswith("sim-modbus_meter") for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("sim-modbus_meter")]


@pytest.fixture
def drivers() -> Iterator[list[mm.Driver]]:
    """Drivers made by a test, all closed at the end."""
    made: list[mm.Driver] = []
    yield made
    for driver in made:
        driver.close()


def opened(made: list[mm.Driver], conf: mm.Config) -> mm.Driver:
    driver = mm.Driver(conf)
    made.append(driver)
    driver.open()
    return driver


def test_the_sdm120_simulator_gives_all_five_quantities_with_sane_values(drivers: list[mm.Driver]) -> None:
    with mm.simulate(config()) as conf:
        assert os.path.realpath(conf.port).startswith("/dev/pts/")
        driver = opened(drivers, conf)
        started = time.monotonic()
        values = driver.read()
        assert time.monotonic() - started < conf.timeout_s
    assert set(values) == {"voltage", "current", "power", "frequency", "energy_total"}
    assert all(isinstance(v, float) for v in values.values())
    voltage, current, power = float(values["voltage"]), float(values["current"]), float(values["power"])
    assert 207 <= voltage <= 253 and 49.5 <= float(values["frequency"]) <= 50.5
    assert 0 < power <= voltage * current * 1.001  # P = V I pf, pf <= 1
    assert 0 < current < 45 and float(values["energy_total"]) > 1000


def test_energy_total_increases_between_reads(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers, speed=3600, start_at=local(12), seed=1) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path}))
        first = driver.read()["energy_total"]
        time.sleep(0.3)  # 18 simulated minutes at about 65 W
        second = driver.read()["energy_total"]
    assert isinstance(first, float) and isinstance(second, float)
    assert 0.005 < second - first < 1.0


def test_dusk_shows_on_the_meter(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers, speed=300, start_at=local(18, 16), seed=2) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path}))
        before = driver.read()["power"]
        while meter.now() < local(18, 21):  # the photocell switches at 18:20
            time.sleep(0.05)
        after = driver.read()["power"]
    assert isinstance(before, float) and isinstance(after, float)
    assert before < 100 < 2000 < after


def test_a_wrong_unit_id_is_unavailable_with_a_message_for_the_technician(drivers: list[mm.Driver]) -> None:
    conf = config(timeout_s=FAST)
    with SimulatedMeter(conf.registers, unit_id=1) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path, "unit_id": 7}))
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable) as err:
            driver.read()
        assert time.monotonic() - started < FAST + 0.5  # one silent request ends the read
        assert meter.requests == 0
    message = str(err.value)
    assert f"no answer from meter 7 on {meter.path} at 2400 8N1 within {FAST} s" in message
    assert "A/B wiring" in message and "address is 7" in message


def test_a_wrong_baud_rate_gets_no_answer(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers, baudrate=2400) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path, "baudrate": 9600, "timeout_s": FAST}))
        with pytest.raises(DeviceUnavailable, match=r"no answer from meter 1 on .* at 9600 8N1"):
            driver.read()
        driver.close()
        assert opened(drivers, conf.model_copy(update={"port": meter.path})).read()


def test_a_noisy_line_is_told_apart_from_silence(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers, garble_rate=1.0) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path, "timeout_s": FAST}))
        with pytest.raises(DeviceUnavailable, match=r"unreadable answer from meter 1 .*\(bad CRC.*120 ohm termination"):
            driver.read()
        assert meter.requests == 1


def test_a_custom_map_reads_scaled_integers_from_holding_registers(drivers: list[mm.Driver]) -> None:
    registers = [
        {"quantity": "voltage", "unit": "V", "address": 0x0100, "function": "holding", "type": "int16", "scale": 0.1},
        {"quantity": "energy_total", "unit": "kWh", "address": 0x0101, "function": "holding", "type": "uint32",
         "word_order": "little", "scale": 0.01},
        {"quantity": "temperature", "unit": "degC", "address": 0x0103, "function": "holding", "type": "int16",
         "scale": 0.1, "offset": -40},
        {"quantity": "frequency", "unit": "Hz", "address": 0x0046},
    ]
    conf = config(registers=registers)
    with SimulatedMeter(conf.registers) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path}))
        values = driver.read()
        assert meter.requests == 2  # the three holding rows touch: one request, and one for the input row
    assert [f.quantity for f in driver.TELEMETRY] == ["voltage", "energy_total", "temperature", "frequency"]
    voltage = float(values["voltage"])
    assert 207 <= voltage <= 253 and round(voltage * 10) == pytest.approx(voltage * 10, abs=1e-6)
    assert float(values["energy_total"]) == pytest.approx(1520.37, abs=0.02)
    assert values["temperature"] == -40.0  # the cabinet has no thermometer: its register stays 0, -40 after offset
    assert 49.5 <= float(values["frequency"]) <= 50.5


def test_an_address_the_meter_does_not_have_is_a_meter_error(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers) as meter:
        wrong = conf.model_copy(update={"port": meter.path, "registers": (*conf.registers, row("power_l2", 0x0300))})
        with pytest.raises(mm.MeterError, match=r"refused to read input registers 0x0300-0x0301: illegal data "
                                                r"address \(Modbus exception 2\)"):
            opened(drivers, wrong).read()


def test_a_meter_that_loses_power_is_unavailable_then_read_again_after_reopening(drivers: list[mm.Driver]) -> None:
    conf = config()
    with SimulatedMeter(conf.registers) as meter:
        driver = opened(drivers, conf.model_copy(update={"port": meter.path}))
        assert len(driver.read()) == 5
        meter.power_off()
        with pytest.raises(DeviceUnavailable, match="no answer"):
            driver.read()
        driver.close()  # what the agent does before backing off
        meter.power_on()
        driver.open()
        assert len(driver.read()) == 5


def test_a_missing_adapter_fails_to_open_naming_the_port(drivers: list[mm.Driver], tmp_path: Path) -> None:
    driver = mm.Driver(config(port=str(tmp_path / "ttyUSB9")))
    drivers.append(driver)
    with pytest.raises(DeviceUnavailable, match=r"cannot open serial port .*ttyUSB9"):
        driver.open()
    with pytest.raises(DeviceUnavailable, match="not open"):
        driver.read()
    driver.close()


def test_the_float32_words_on_the_wire_are_the_sdm120_layout(drivers: list[mm.Driver]) -> None:
    """The simulator's answers are checked byte for byte by an independent decoder (struct, high word first)."""
    conf = config(registers=[{"quantity": "voltage", "address": 0}])
    heard: list[bytes] = []

    def trace(sending: bool, data: bytes) -> bytes:
        heard.append(data)
        return data

    with mm.simulate(conf) as simulated:
        client = ModbusSerialClient(simulated.port, baudrate=2400, timeout=1.0, retries=0, trace_packet=trace)
        try:
            assert client.connect()
            response = client.read_input_registers(0, count=2, device_id=1)
        finally:
            client.close()  # type: ignore[no-untyped-call]  # pymodbus leaves close() unannotated
    (voltage,) = struct.unpack(">f", bytes.fromhex("".join(f"{w:04x}" for w in response.registers)))
    assert 207 <= voltage <= 253
    assert heard[0] == bytes.fromhex("010400000002 71CB")  # the published request
