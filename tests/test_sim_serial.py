"""Simulated serial meters and bus, driven with request frames written here by hand.

The requests come from the protocol texts (docs/references.md#meter-protocols) and tests/vectors (or are assembled below with the
protocol's own rules); nothing here uses the gateway's codecs, so these tests check the simulators
against the protocol text, and the gateway's tests can then check the gateway against the simulators.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import serial
from pymodbus.client import AsyncModbusTcpClient, ModbusSerialClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse

from campusmon.services import free_port
from firmware_sim.serial import (
    Cjt188Meter,
    Dlt645Meter,
    FaultError,
    ModbusMeter,
    PymodbusServer,
    SimBus,
    SimClock,
    SpecError,
    build_bus,
    load_bus,
)
from firmware_sim.serial.faults import parse_fault_specs
from tests.conftest import ROOT, VECTORS

START = datetime(2024, 5, 17, 10, 0, 0, tzinfo=UTC).timestamp()
DLT_A, DLT_B, DLT_C = "000000000161", "652022122018", "000102030425"
WATER = "78330011223344"
WATER_1F90 = "00000805000001"


# -- frames by hand, from the protocol text --------------------------------------------------------


def bcd(data: bytes) -> int:
    """Little-endian packed BCD."""
    return int("".join(f"{b:02X}" for b in reversed(data)))


def signed_bcd(data: bytes) -> int:
    top = data[-1]
    return -bcd(data[:-1] + bytes([top & 0x7F])) if top & 0x80 else bcd(data)


def dlt_request(address: str, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    wire = bytes.fromhex(address)[::-1]
    body = bytes([0x68, *wire, 0x68, control, len(data)]) + bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


def dlt_read(address: str, di: str) -> bytes:
    return dlt_request(address, 0x11, bytes.fromhex(di)[::-1])


def parse_dlt(raw: bytes) -> dict:
    frame = raw.lstrip(b"\xfe")
    assert frame[0] == 0x68 and frame[7] == 0x68, raw.hex(" ")
    n = frame[9]
    assert len(frame) == 12 + n, raw.hex(" ")
    assert frame[-1] == 0x16
    assert sum(frame[:-2]) & 0xFF == frame[-2], "checksum"
    data = bytes((b - 0x33) & 0xFF for b in frame[10 : 10 + n])
    return {
        "address": frame[1:7][::-1].hex(),
        "control": frame[8],
        "data": data,
        "preamble": len(raw) - len(frame),
    }


def cjt_request(meter_type: int, address: str, control: int, data: bytes) -> bytes:
    body = bytes([0x68, meter_type, *bytes.fromhex(address)[::-1], control, len(data)]) + data
    return b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])


def parse_cjt(raw: bytes) -> dict:
    frame = raw.lstrip(b"\xfe")
    assert frame[0] == 0x68 and frame[-1] == 0x16
    n = frame[10]
    assert len(frame) == 13 + n
    assert sum(frame[:-2]) & 0xFF == frame[-2], "checksum"
    return {
        "type": frame[1],
        "address": frame[2:9][::-1].hex(),
        "control": frame[9],
        "data": frame[11 : 11 + n],
    }


def crc16(data: bytes) -> bytes:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def modbus_request(unit: int, function: int, start: int, count: int) -> bytes:
    pdu = bytes([unit, function]) + start.to_bytes(2, "big") + count.to_bytes(2, "big")
    return pdu + crc16(pdu)


def read_dlt_frame(port: serial.Serial) -> bytes:
    """One DL/T 645 reply (with its FE preamble), or b'' when nothing comes."""
    out = bytearray()
    while (b := port.read(1)) == b"\xfe":
        out += b
    if not b:
        return bytes(out)
    out += b + port.read(9)
    if len(out.lstrip(b"\xfe")) < 10:
        return bytes(out)
    return bytes(out + port.read(out[-1] + 2))


def read_cjt_frame(port: serial.Serial) -> bytes:
    out = bytearray()
    while (b := port.read(1)) == b"\xfe":
        out += b
    if not b:
        return b""
    out += b + port.read(10)
    return bytes(out + port.read(out[-1] + 2))


def vector(file: str, hex_prefix: str) -> dict:
    data = json.loads((VECTORS / file).read_text())
    matches = [v for v in data["vectors"] if v["hex"].upper().startswith(hex_prefix.upper())]
    assert len(matches) == 1, hex_prefix
    return matches[0]


def vhex(v: dict) -> bytes:
    return bytes.fromhex(v["hex"])


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START, frozen=True)


def mixed_meters(clock: SimClock) -> list:
    return [
        Dlt645Meter(DLT_A, clock=clock),
        Dlt645Meter(DLT_B, clock=clock, profile="pv"),
        Dlt645Meter(DLT_C, clock=clock, phases=1, preamble=0),
        Cjt188Meter(WATER, clock=clock),
        Cjt188Meter(WATER_1F90, clock=clock, di_order="1F90", accept_any_di_order=False),
        ModbusMeter(1, clock=clock),
        ModbusMeter(5, clock=clock),
        ModbusMeter(9, model="sdm120", clock=clock),
    ]


@pytest.fixture
def bus(clock: SimClock) -> Iterator[SimBus]:
    b = SimBus(mixed_meters(clock), clock=clock, pace=False)
    b.serve_pty()
    b.serve_tcp()
    yield b
    b.stop()


@pytest.fixture(params=["pty", "tcp"])
def port(request: pytest.FixtureRequest, bus: SimBus) -> Iterator[serial.Serial]:
    url = bus.pty_path if request.param == "pty" else bus.tcp_url
    p = serial.serial_for_url(url, baudrate=2400, bytesize=8, parity="N", stopbits=1, timeout=0.4)
    yield p
    p.close()


# -- DL/T 645 ------------------------------------------------------------------------------------------


def test_dlt645_vector_requests_get_the_model_values(bus: SimBus, port: serial.Serial) -> None:
    meter = bus.meter(DLT_A)
    regs = meter.registers()
    port.write(vhex(vector("dlt645.json", "68 61 01 00 00 00 00 68 11 04 33 34 35 35")))  # 02020100
    r = parse_dlt(read_dlt_frame(port))
    assert (r["address"], r["control"], r["data"][:4]) == (DLT_A, 0x91, bytes.fromhex("00010202"))
    assert signed_bcd(r["data"][4:7]) / 1000 == regs["current_l1_a"]
    assert meter.served["current_l1_a"][1] == regs["current_l1_a"]

    port.write(
        vhex(vector("dlt645.json", "FE FE FE FE 68 18 20 12 22 20 65 68 11 04 33 32 34 35"))
    )  # 0201FF00
    r = parse_dlt(read_dlt_frame(port))
    regs_b = bus.meter(DLT_B).registers()
    volts = [bcd(r["data"][4 + 2 * i : 6 + 2 * i]) / 10 for i in range(3)]
    assert (r["address"], r["preamble"]) == (DLT_B, 4)
    assert volts == [regs_b["voltage_l1_v"], regs_b["voltage_l2_v"], regs_b["voltage_l3_v"]]

    port.write(
        vhex(vector("dlt645.json", "FE FE FE FE 68 61 01 00 00 00 00 68 11 04 35 33 B3 35"))
    )  # 02800002
    r = parse_dlt(read_dlt_frame(port))
    assert bcd(r["data"][4:6]) / 100 == regs["frequency_hz"]


def test_dlt645_values_equal_registers(bus: SimBus, port: serial.Serial) -> None:
    for address in (DLT_A, DLT_B):
        regs = bus.meter(address).registers()
        got = {}
        for di, name, size, scale, signed in [
            ("00010000", "energy_kwh", 4, 100, False),
            ("00020000", "export_energy_kwh", 4, 100, False),
            ("02030000", "power_w", 3, 10, True),  # 0.0001 kW = 0.1 W
            ("02030200", "power_l2_w", 3, 10, True),
            ("02060000", "power_factor", 2, 1000, True),
            ("02020300", "current_l3_a", 3, 1000, True),
        ]:
            port.write(dlt_read(address, di))
            r = parse_dlt(read_dlt_frame(port))
            assert r["control"] == 0x91 and r["data"][:4] == bytes.fromhex(di)[::-1]
            field = r["data"][4 : 4 + size]
            got[name] = (signed_bcd(field) if signed else bcd(field)) / scale
        assert got == {k: regs[k] for k in got}
    # the PV meter exports at 10:00: negative power and current come back sign-and-magnitude
    assert bus.meter(DLT_B).registers()["power_w"] < 0


def test_dlt645_single_phase_meter_has_no_phase_b(bus: SimBus, port: serial.Serial) -> None:
    regs = bus.meter(DLT_C).registers()
    assert "voltage_v" in regs and "voltage_l2_v" not in regs
    port.write(dlt_read(DLT_C, "02010100"))
    r = parse_dlt(read_dlt_frame(port))
    assert r["preamble"] == 0 and bcd(r["data"][4:6]) / 10 == regs["voltage_v"]
    port.write(dlt_read(DLT_C, "02010200"))
    r = parse_dlt(read_dlt_frame(port))
    assert (r["control"], r["data"]) == (0xD1, b"\x02")


def test_dlt645_tariffs_history_and_follow_up_frames(clock: SimClock) -> None:
    meter = Dlt645Meter(DLT_A, clock=clock, max_data_len=60)
    with SimBus([meter], clock=clock, pace=False) as b:
        p = serial.Serial(b.serve_pty(), 2400, timeout=0.4)
        port_values = []
        p.write(dlt_read(DLT_A, "0001FF00"))  # total + T1..T4: 20 bytes, one frame
        r = parse_dlt(read_dlt_frame(p))
        block = [bcd(r["data"][4 + 4 * i : 8 + 4 * i]) / 100 for i in range(5)]
        assert r["control"] == 0x91 and block == meter.di_values("0001FF00")
        assert abs(block[0] - sum(block[1:])) <= 0.05

        p.write(dlt_read(DLT_A, "0001FFFF"))  # 13 periods x 5 tariffs = 260 bytes: needs follow-ups
        r = parse_dlt(read_dlt_frame(p))
        assert r["control"] == 0xB1 and r["data"][:4] == bytes.fromhex("0001FFFF")[::-1]
        payload = r["data"][4:]
        seq, frames = 1, 1
        while True:
            p.write(dlt_request(DLT_A, 0x12, bytes.fromhex("0001FFFF")[::-1] + bytes([seq])))
            r = parse_dlt(read_dlt_frame(p))
            frames += 1
            assert r["control"] in (0xB2, 0x92) and r["data"][-1] == seq and len(r["data"]) <= 60
            payload += r["data"][4:-1]
            if r["control"] == 0x92:
                break
            seq += 1
        port_values = [bcd(payload[i : i + 4]) / 100 for i in range(0, len(payload), 4)]
        first, rest = (60 - 4) // 4, (60 - 5) // 4  # items per frame: DI, and DI + SEQ in follow-ups
        assert frames == 1 + math.ceil((65 - first) / rest) and port_values == meter.di_values("0001FFFF")
        assert port_values[:5] == block
        history_totals = port_values[::5]
        assert history_totals == sorted(history_totals, reverse=True)  # older settlements are smaller

        p.write(dlt_request(DLT_A, 0x12, bytes.fromhex("0001FFFF")[::-1] + b"\x07"))  # nothing pending
        assert parse_dlt(read_dlt_frame(p))["control"] == 0xD2
        p.close()


def test_dlt645_errors_and_addressing(bus: SimBus, port: serial.Serial) -> None:
    port.write(dlt_read(DLT_A, "02990000"))  # no such data identifier
    r = parse_dlt(read_dlt_frame(port))
    assert (r["address"], r["control"], r["data"]) == (DLT_A, 0xD1, b"\x02")
    port.write(dlt_read("000000000999", "00010000"))  # nobody has this address
    assert port.read(1) == b""
    for abbreviated in ("AAAAAAAA0161", "AAAAAAAAA161"):  # high bytes, or digits, left as A
        port.write(dlt_read(abbreviated, "00010000"))
        assert parse_dlt(read_dlt_frame(port))["address"] == DLT_A
    port.write(dlt_request(DLT_A, 0x14, b"\x00" * 12))  # writes are refused: not authorised
    assert (r := parse_dlt(read_dlt_frame(port)))["control"] == 0xD4 and r["data"] == b"\x04"
    port.write(dlt_request(DLT_A, 0x11, b"\x00\x00\x01")[:-2] + b"\x00\x16")  # bad checksum: ignored
    assert port.read(1) == b""


def test_dlt645_read_address_wildcard(clock: SimClock) -> None:
    with SimBus([Dlt645Meter(DLT_A, clock=clock)], clock=clock, pace=False) as b:
        p = serial.serial_for_url(b.serve_tcp(), timeout=0.4)
        p.write(vhex(vector("dlt645.json", "FE FE FE 68 AA AA AA AA AA AA 68 13 00")))
        r = parse_dlt(read_dlt_frame(p))
        assert (r["control"], r["data"], r["address"]) == (0x93, bytes.fromhex(DLT_A)[::-1], DLT_A)
        p.close()
    two = SimBus([Dlt645Meter(DLT_A, clock=clock), Dlt645Meter(DLT_B, clock=clock)], clock=clock, pace=False)
    with two:
        p = serial.serial_for_url(two.serve_tcp(), timeout=0.4)
        p.write(dlt_request("AAAAAAAAAAAA", 0x13))  # two meters answer at once: the line is garbled
        raw = p.read(100)
        assert raw and two.stats["collisions"] == 1 and two.transactions[-1].collision
        with pytest.raises(AssertionError):
            parse_dlt(raw)
        p.close()


def test_dlt645_broadcast_time_set(bus: SimBus, port: serial.Serial) -> None:
    sync = vector("dlt645.json", "68 99 99 99 99 99 99 68 08 06")
    assert sync["expected"]["datetime"] == "2017-06-05 10:22:51"
    port.write(vhex(sync))
    assert port.read(1) == b""  # broadcasts are never answered
    for address in (DLT_A, DLT_B, DLT_C):
        assert bus.meter(address).time_syncs == 1
        port.write(dlt_read(address, "04000101"))
        date = parse_dlt(read_dlt_frame(port))["data"][4:]
        port.write(dlt_read(address, "04000102"))
        clock_time = parse_dlt(read_dlt_frame(port))["data"][4:]
        assert f"{bcd(date):08d}" == "17060501"  # YYMMDDWW: 5 June 2017 was a Monday
        assert f"{bcd(clock_time):06d}" == "102251"  # the frozen simulator clock adds nothing
    assert bus.meter(WATER).meter_time().year == 2024  # other protocols are not touched


# -- CJ/T 188 ------------------------------------------------------------------------------------------


def test_cjt188_vector_request_and_reply_layout(bus: SimBus, port: serial.Serial) -> None:
    meter = bus.meter(WATER)
    snap = meter.snapshot()
    port.write(vhex(vector("cjt188.json", "FE FE FE FE 68 10 44 33 22 11 00 33 78 01 03 1F 90 00")))
    r = parse_cjt(read_cjt_frame(port))
    d = r["data"]
    assert (r["type"], r["address"], r["control"], len(d)) == (0x10, WATER, 0x81, 22)
    assert d[:3] == bytes([0x90, 0x1F, 0x00])  # answers in its own DI order, echoes SER
    assert (bcd(d[3:7]) / 100, d[7]) == (snap["current_flow"], 0x2C)
    assert (bcd(d[8:12]) / 100, d[12]) == (snap["settlement_flow"], 0x2C)
    assert bcd(d[8:12]) <= bcd(d[3:7])
    rtc = d[13:20]  # ss mm hh DD MM YY(lo) YY(hi)
    assert datetime(bcd(rtc[5:7]), bcd(rtc[4:5]), bcd(rtc[3:4]), bcd(rtc[2:3]), bcd(rtc[1:2]), bcd(rtc[0:1]),
                    tzinfo=UTC) == snap["clock"]  # fmt: skip
    assert d[20:22] == b"\x00\x00"
    assert meter.registers()["volume_m3"] == bcd(d[3:7]) / 100


def test_cjt188_di_order_status_and_errors(bus: SimBus, port: serial.Serial) -> None:
    strict = bus.meter(WATER_1F90)
    port.write(vhex(vector("cjt188.json", "68 10 01 00 00 05 08 00 00 01 03 1F 90 00")))
    r = parse_cjt(read_cjt_frame(port))
    assert r["control"] == 0x81 and r["data"][:2] == b"\x1f\x90"
    port.write(cjt_request(0x10, WATER_1F90, 0x01, b"\x90\x1f\x05"))  # the other order: refused
    r = parse_cjt(read_cjt_frame(port))
    assert (r["control"], r["data"]) == (0xC1, b"\x05\x00\x00")  # SER ST1 ST2
    strict.valve, strict.battery_low = "closed", True
    port.write(cjt_request(0x10, WATER_1F90, 0x01, b"\x1f\x90\x06"))
    assert parse_cjt(read_cjt_frame(port))["data"][20:22] == b"\x05\x00"  # valve closed (01) + battery (04)
    port.write(cjt_request(0x10, WATER, 0x04, b"\xa0\x17\x07\x99"))  # valve close command
    r = parse_cjt(read_cjt_frame(port))
    assert r["control"] == 0x84 and bus.meter(WATER).valve == "closed"
    port.write(cjt_request(0x11, WATER, 0x01, b"\x90\x1f\x00"))  # hot-water type: not this meter
    assert port.read(1) == b""
    port.write(vhex(vector("cjt188.json", "fe fe fe fe 68 aa aa aa aa aa aa aa aa 03 03 81 0a")))
    raw = port.read(200)  # wildcard read-address with two water meters: they collide
    assert raw and bus.transactions[-1].collision


def test_cjt188_litre_unit_and_msb_status(clock: SimClock) -> None:
    m = Cjt188Meter(WATER, clock=clock, unit=0x29, status_layout="msb", preamble=2)
    m.battery_low = True
    reply = asyncio.run(m.respond(cjt_request(0x10, WATER, 0x01, b"\x90\x1f\x01")[4:]))
    r = parse_cjt(reply)
    assert reply[:3] == b"\xfe\xfe\x68" and r["data"][7] == 0x29
    assert bcd(r["data"][3:7]) / 100 / 1000 == pytest.approx(m.registers()["volume_m3"], abs=1e-9)
    assert r["data"][20] == 0x20  # battery bit in the bit-reversed layout


# -- Modbus RTU ----------------------------------------------------------------------------------------


def float_abcd(data: bytes) -> float:
    return struct.unpack(">f", data)[0]


def test_modbus_vector_request_and_batch_read(bus: SimBus, port: serial.Serial) -> None:
    port.write(vhex(vector("modbus_rtu.json", "01 04 00 00 00 02 71 CB")))
    reply = port.read(9)
    assert reply[:3] == b"\x01\x04\x04" and crc16(reply[:-2]) == reply[-2:]
    assert float_abcd(reply[3:7]) == bus.meter(1).registers()["voltage_l1_v"]

    port.write(vhex(vector("modbus_rtu.json", "05 04 00 00 00 50 F1 B2")))  # 80 registers in one read
    reply = port.read(165)
    assert len(reply) == 165 and reply[:3] == b"\x05\x04\xa0" and crc16(reply[:-2]) == reply[-2:]
    regs = bus.meter(5).registers()
    values = [float_abcd(reply[3 + 4 * i : 7 + 4 * i]) for i in range(40)]
    assert values[0x00 // 2 : 0x12 // 2] == [regs[k] for k in (
        "voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a", "current_l2_a", "current_l3_a",
        "power_l1_w", "power_l2_w", "power_l3_w")]  # fmt: skip
    assert (values[0x34 // 2], values[0x3E // 2], values[0x46 // 2]) == (
        regs["power_w"],
        regs["power_factor"],
        regs["frequency_hz"],
    )
    assert (values[0x48 // 2], values[0x4A // 2]) == (regs["energy_kwh"], regs["export_energy_kwh"])
    assert values[0x32 // 2] == 0.0  # unmapped cell inside the batch range

    port.write(vhex(vector("modbus_rtu.json", "01 04 01 56 00 02 90 27")))  # total kWh, outside the batch
    reply = port.read(9)
    assert float_abcd(reply[3:7]) > 0 and crc16(reply[:-2]) == reply[-2:]


def test_modbus_exceptions_and_unit_selection(bus: SimBus, port: serial.Serial) -> None:
    port.write(modbus_request(9, 4, 0x00, 0x50))  # SDM120: the batch touches holes in its map
    assert port.read(5) == bytes([9, 0x84, 0x02]) + crc16(bytes([9, 0x84, 0x02]))
    port.write(modbus_request(9, 4, 0x48, 2))
    reply = port.read(9)
    assert float_abcd(reply[3:7]) == bus.meter(9).registers()["energy_kwh"]
    port.write(modbus_request(5, 3, 0x14, 2))  # SDM holding register: meter id
    assert float_abcd(port.read(9)[3:7]) == 5.0
    port.write(modbus_request(5, 1, 0, 8))  # coils: illegal function
    assert port.read(5)[:3] == bytes([5, 0x81, 0x01])
    port.write(modbus_request(77, 4, 0, 2))  # no such unit
    assert port.read(1) == b""
    bad = modbus_request(5, 4, 0, 2)
    port.write(bad[:-1] + bytes([bad[-1] ^ 1]))  # CRC error: silence
    assert port.read(1) == b""


def test_pymodbus_client_reads_the_meters_on_a_pty(bus: SimBus) -> None:
    client = ModbusSerialClient(bus.pty_path, framer=FramerType.RTU, baudrate=9600, parity="N", timeout=1)
    assert client.connect()
    try:
        rr = client.read_input_registers(0x0C, count=2, device_id=5)
        assert not rr.isError()
        p1 = client.convert_from_registers(rr.registers, data_type=client.DATATYPE.FLOAT32)
        assert p1 == bus.meter(5).registers()["power_l1_w"]
        rr = client.read_input_registers(0x0C, count=2, device_id=9)
        p = client.convert_from_registers(rr.registers, data_type=client.DATATYPE.FLOAT32)
        assert p == bus.meter(9).registers()["power_w"]
        rr = client.read_input_registers(0x02, count=2, device_id=9)
        assert rr.isError() and isinstance(rr, ExceptionResponse) and rr.exception_code == 2
    finally:
        client.close()


def test_pymodbus_server_serves_the_same_meters(clock: SimClock) -> None:
    meters = [ModbusMeter(5, clock=clock), ModbusMeter(6, model="xintai", clock=clock)]
    server = PymodbusServer(meters, tcp=("127.0.0.1", free_port()))
    server.start()

    async def read() -> tuple[float, float, float]:
        client = AsyncModbusTcpClient("127.0.0.1", port=server._tcp[1], framer=FramerType.RTU, timeout=2)  # type: ignore[index]
        await client.connect()
        try:
            rr = await client.read_input_registers(0x48, count=2, device_id=5)
            kwh = client.convert_from_registers(rr.registers, data_type=client.DATATYPE.FLOAT32)
            rr = await client.read_holding_registers(0x01, count=6, device_id=6)  # DCBA floats
            raw = b"".join(r.to_bytes(2, "big") for r in rr.registers)
            volume = struct.unpack("<f", raw[0:4])[0]
            flow = struct.unpack("<f", raw[8:12])[0]
            return kwh, volume, flow
        finally:
            client.close()

    try:
        kwh, volume, flow = asyncio.run(read())
    finally:
        server.stop()
    assert kwh == meters[0].registers()["energy_kwh"]
    assert (volume, flow) == (meters[1].registers()["volume_m3"], meters[1].registers()["flow_m3h"])


# -- faults --------------------------------------------------------------------------------------------


def good_reply(port: serial.Serial, address: str, di: str = "00010000") -> bytes:
    port.write(dlt_read(address, di))
    return read_dlt_frame(port)


def test_no_reply_and_counted_faults(bus: SimBus, port: serial.Serial) -> None:
    meter = bus.meter(DLT_A)
    meter.set_fault("no_reply")
    port.write(dlt_read(DLT_A, "00010000"))
    assert port.read(1) == b""
    assert parse_dlt(good_reply(port, DLT_B))["address"] == DLT_B  # the others still answer
    assert "energy_kwh" not in meter.served  # the silent meter served nothing
    meter.clear_fault("no_reply")
    assert parse_dlt(good_reply(port, DLT_A))["address"] == DLT_A
    meter.set_fault("no_reply", count=2)
    port.write(dlt_read(DLT_A, "00010000") * 1)
    assert port.read(1) == b""
    port.write(dlt_read(DLT_A, "00010000"))
    assert port.read(1) == b""
    assert parse_dlt(good_reply(port, DLT_A))["control"] == 0x91  # the fault was used up
    assert meter.faults() == {}


def test_bad_checksum_truncated_and_garbage(bus: SimBus, port: serial.Serial) -> None:
    meter = bus.meter(DLT_A)
    good = good_reply(port, DLT_A)
    meter.set_fault("bad_checksum")
    bad = good_reply(port, DLT_A)
    assert len(bad) == len(good) and bad[:-2] == good[:-2] and bad[-2] != good[-2] and bad[-1] == 0x16
    meter.clear_fault()
    meter.set_fault("truncated", keep=9)
    port.write(dlt_read(DLT_A, "00010000"))
    assert port.read(100) == good[:9]
    meter.clear_fault()
    meter.set_fault("garbage", nbytes=5)
    port.write(dlt_read(DLT_A, "00010000"))
    raw = port.read(len(good) + 10)
    assert len(raw) == len(good) + 10 and raw[5:-5] == good
    meter.set_fault("garbage", nbytes=12, reply=False, where="after")
    port.write(dlt_read(DLT_A, "00010000"))
    assert len(port.read(100)) == 12
    meter.clear_fault()
    # noise from the master side between frames does not stop the bus finding the next request
    port.write(bytes([0x68, 0x12, 0x00, 0x68, 0xFF, 0x16, 0x99]) + dlt_read(DLT_B, "00010000"))
    assert parse_dlt(read_dlt_frame(port))["address"] == DLT_B


def test_modbus_and_cjt188_faults(bus: SimBus, port: serial.Serial) -> None:
    bus.meter(5).set_fault("bad_checksum", count=1)
    port.write(modbus_request(5, 4, 0, 2))
    reply = port.read(9)
    assert len(reply) == 9 and crc16(reply[:-2]) != reply[-2:]
    port.write(modbus_request(5, 4, 0, 2))
    reply = port.read(9)
    assert crc16(reply[:-2]) == reply[-2:]
    bus.meter(WATER).set_fault("no_reply")
    port.write(cjt_request(0x10, WATER, 0x01, b"\x90\x1f\x00"))
    assert port.read(1) == b""


def test_late_reply(clock: SimClock) -> None:
    meter = Dlt645Meter(DLT_A, clock=clock)
    with SimBus([meter], clock=clock, pace=False) as b:
        p = serial.Serial(b.serve_pty(), 2400, timeout=2)
        meter.set_fault("late_reply", delay_s=0.6)
        t0 = time.monotonic()
        p.write(dlt_read(DLT_A, "00010000"))
        assert parse_dlt(read_dlt_frame(p))["control"] == 0x91
        assert time.monotonic() - t0 >= 0.6
        p.close()


def test_rollover_replacement_and_clock_skew(clock: SimClock) -> None:
    meter = Dlt645Meter(DLT_A, clock=clock, profile="constant")
    water = Cjt188Meter(WATER, clock=clock, profile="constant")
    with SimBus([meter, water], clock=clock, pace=False) as b:
        p = serial.serial_for_url(b.serve_tcp(), timeout=0.4)

        def energy() -> float:
            return bcd(parse_dlt(good_reply(p, DLT_A))["data"][4:8]) / 100

        meter.set_fault("rollover", margin=0.05)
        assert energy() == 999999.95 == meter.registers()["energy_kwh"]
        power_kw = meter.registers()["power_w"] / 1000
        clock.advance(3600)
        after = energy()
        assert after == meter.registers()["energy_kwh"] and after < 5  # wrapped past 999999.99
        assert after == pytest.approx(power_kw - 0.05, abs=0.02)  # energy integrates the power

        meter.set_fault("replaced")
        assert energy() == 0.0
        clock.advance(1800)
        assert energy() == pytest.approx(power_kw / 2, abs=0.02)

        water.set_fault("rollover", margin=0.2)
        clock.advance(3600)  # about 0.3..0.7 m3/h on the constant profile
        assert water.registers()["volume_m3"] < 1.0

        meter.set_fault("clock_skew", seconds=3600)
        t = bcd(parse_dlt(good_reply(p, DLT_A, "04000102"))["data"][4:7])
        expected = datetime.fromtimestamp(clock.now() + 3600, UTC)
        assert f"{t:06d}" == f"{expected:%H%M%S}"
        meter.clear_fault("clock_skew")
        assert meter.faults() == {}
        assert [e[1] for e in meter.events] == ["rollover", "replaced", "clock_skew"]
        p.close()


def test_malformed_frames_never_stop_the_bus(bus: SimBus) -> None:
    """Noise and well-framed nonsense (valid checksums, odd contents) get an error reply or silence."""
    import random

    rng = random.Random(5)
    junk = [bytes(rng.randrange(256) for _ in range(400)), b"\x68" * 50, b"\xfe" * 30]
    for _ in range(60):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        junk.append(
            dlt_request(rng.choice([DLT_A, "AAAAAAAAAAAA", "999999999999"]), rng.randrange(0x20), data)
        )
        junk.append(cjt_request(rng.choice([0x10, 0xAA]), WATER, rng.randrange(0x40), data))
        pdu = (
            bytes([rng.choice([1, 5, 9, 0]), rng.choice([1, 2, 3, 4, 5, 6, 8, 15, 16, 17, 22, 23, 43])])
            + data
        )
        junk.append(pdu + crc16(pdu))
    p = serial.serial_for_url(bus.tcp_url, timeout=0.7)
    p.write(b"".join(junk))
    while p.read(65536):  # drain the replies until the line has been quiet long enough
        pass  # for any abandoned partial frame to expire too
    assert parse_dlt(good_reply(p, DLT_A))["control"] == 0x91
    p.write(modbus_request(5, 4, 0, 2))
    assert crc16((r := p.read(9))[:-2]) == r[-2:]
    p.close()
    assert bus.stats["errors"] == 0 and bus.stats["requests"] >= 60 + 60 + 2  # every well-framed one


# -- pacing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["pty", "tcp"])
def test_byte_pacing_takes_the_wire_time(clock: SimClock, where: str) -> None:
    b = SimBus([Dlt645Meter(DLT_A, clock=clock), ModbusMeter(5, clock=clock)], clock=clock, baud=2400,
               parity="E", turnaround_s=0.02)  # fmt: skip
    with b:
        url = b.serve_pty() if where == "pty" else b.serve_tcp()
        p = serial.serial_for_url(url, baudrate=2400, timeout=3)  # ptys ignore parity: 8N1 on the port
        request = dlt_read(DLT_A, "00010000")
        t0 = time.monotonic()
        p.write(request)
        reply = read_dlt_frame(p)
        elapsed = time.monotonic() - t0
        assert parse_dlt(reply)["control"] == 0x91
        char = 11 / 2400  # 8E1: start + 8 data + parity + stop
        assert b.char_time == char
        assert elapsed >= (len(request) + len(reply)) * char + 0.02  # 44 bytes: >= 221.7 ms

        t0 = time.monotonic()
        p.write(modbus_request(5, 4, 0, 0x50))
        reply = p.read(165)
        elapsed = time.monotonic() - t0
        assert len(reply) == 165 and elapsed >= (8 + 165) * char + 0.02
        tx = b.transactions[-1]
        assert (tx.wire_in, tx.wire_out) == (8, 165)
        p.close()


# -- bus descriptions and the command line ---------------------------------------------------------


def test_yaml_bus_description(tmp_path: Path) -> None:
    spec = tmp_path / "bus.yaml"
    spec.write_text(
        "baud: 9600\nparity: E\npace: false\nseed: 3\ntz: Asia/Shanghai\n"
        "clock: {start: '2024-05-17T08:00:00+08:00', frozen: true}\n"
        "meters:\n"
        "  - {protocol: dlt645, address: '000000000001', count: 4, profile: dorm, faults: [no_reply]}\n"
        "  - {protocol: cjt188, address: '78330011223344', di_order: '1F90', unit: 0x29}\n"
        "  - {protocol: modbus, unit: 5, count: 2, model: sdm120, turnaround_ms: 50,\n"
        "     faults: {late_reply: {delay_s: 0.3}}}\n"
    )
    b = load_bus(spec)
    assert [m.address for m in b.meters] == ["000000000001", "000000000002", "000000000003", "000000000004",
                                             WATER, "5", "6"]  # fmt: skip
    assert (b.baud, b.parity, b.pace, b.char_time) == (9600, "E", False, 11 / 9600)
    assert (
        b.meter("000000000003").faults() == {"no_reply": {"remaining": None}}
        and b.meter(WATER).faults() == {}
    )
    assert b.meter(6).faults()["late_reply"]["delay_s"] == 0.3 and b.meter(6).turnaround_s == 0.05
    assert b.meter(WATER).unit == 0x29 and b.meter("000000000001").meter_time().hour == 8
    # same seed and clock: the same values; another seed: others
    assert load_bus(spec).meter(5).registers() == b.meter(5).registers()
    other = build_bus({"seed": 4, "clock": {"start": "2024-05-17T08:00:00+08:00", "frozen": True},
                       "meters": [{"protocol": "modbus", "unit": 5, "model": "sdm120"}]})  # fmt: skip
    assert other.meter(5).registers() != b.meter(5).registers()


def test_demo_bus_file_serves_every_protocol() -> None:
    b = load_bus(ROOT / "firmware_sim" / "serial" / "buses" / "demo.yaml")
    assert len(b.meters) == 11 and b.char_time == 11 / 2400
    with b:
        p = serial.serial_for_url(b.serve_tcp(), timeout=2)
        p.write(dlt_read("000000000006", "00010000"))
        r = parse_dlt(read_dlt_frame(p))
        assert bcd(r["data"][4:8]) / 100 == b.meter("000000000006").served["energy_kwh"][1]
        p.write(cjt_request(0x10, "00000000000002", 0x01, b"\x1f\x90\x00"))
        assert parse_cjt(read_cjt_frame(p))["data"][:2] == b"\x1f\x90"
        p.write(modbus_request(2, 4, 0x48, 2))
        reply = p.read(9)
        assert float_abcd(reply[3:7]) == b.meter(2).served["energy_kwh"][1]
        p.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"meters": [{"protocol": "dlt645", "address": "123"}]}, "12 decimal digits"),
        ({"meters": [{"protocol": "dlt645", "address": "000000000001", "colour": 1}]}, "unknown option"),
        ({"meters": [{"protocol": "modbus"}]}, "needs 'unit'"),
        ({"meters": [{"protocol": "modbus", "unit": 300}]}, "1..247"),
        ({"meters": [{"protocol": "cjt188", "address": WATER, "faults": ["melt"]}]}, "unknown fault"),
        ({"meters": [{"protocol": "mbus", "address": "1"}]}, "protocol"),
        ({"parity": "Q"}, "parity"),
        ({"meters": [{"protocol": "dlt645", "address": "000000000001", "count": 2},
                     {"protocol": "dlt645", "address": "000000000002"}]}, "already on this bus"),
    ],
)  # fmt: skip
def test_bad_bus_descriptions_say_what_is_wrong(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_bus(data)


def test_fault_specs_from_the_command_line() -> None:
    assert parse_fault_specs("000000000001=late_reply:1.5, 5=garbage:16,7=no_reply") == [
        ("000000000001", "late_reply", {"delay_s": 1.5}),
        ("5", "garbage", {"nbytes": 16, "where": "both", "reply": True}),
        ("7", "no_reply", {}),
    ]
    for bad in ("x", "1=melt", "1=late_reply:soon", "1=no_reply:3", "=no_reply", "1=truncated:-1"):
        with pytest.raises(FaultError):
            parse_fault_specs(bad)


def test_cli_serves_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    link = tmp_path / "ttySIM0"
    code = "import typer; from firmware_sim.serial.cli import sim_serial; typer.run(sim_serial)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--meters", "3", "--baud", "9600", "--tcp", f"127.0.0.1:{port}",
         "--pty", str(link), "--faults", "000000000002=no_reply", "--seed", "7"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(7)]  # type: ignore[union-attr]
        text = "".join(lines)
        assert f"socket://127.0.0.1:{port}" in text and "000000000003" in text and "no_reply" in text
        assert link.is_symlink()
        p = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=1)
        p.write(dlt_read("000000000003", "00010000"))
        assert parse_dlt(read_dlt_frame(p))["address"] == "000000000003"
        p.write(dlt_read("000000000002", "00010000"))
        assert p.read(1) == b""
        p.close()
        q = serial.Serial(str(link), 9600, timeout=1)
        q.write(dlt_read("000000000001", "02800002"))
        assert parse_dlt(read_dlt_frame(q))["control"] == 0x91
        q.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped: 3 requests, 2 replies" in out
    assert not link.exists()


def test_cli_rejects_bad_input() -> None:
    code = "import typer; from firmware_sim.serial.cli import sim_serial; typer.run(sim_serial)"
    for args, message in [(["--faults", "000000000009=no_reply"], "no meter with address"),
                          (["--protocol", "mbus"], "unknown protocol")]:  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr


def test_simulators_do_not_use_the_gateway() -> None:
    probe = (
        "import sys, firmware_sim.serial, firmware_sim.serial.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    sources = [p.read_text() for p in (ROOT / "firmware_sim" / "serial").glob("*.py")]
    assert not any("import gateway" in s or "from gateway" in s for s in sources)


def test_model_is_deterministic_and_consistent(clock: SimClock) -> None:
    a = Dlt645Meter(DLT_A, clock=clock, seed=1)
    b = Dlt645Meter(DLT_A, clock=SimClock(START, frozen=True), seed=1)
    c = Dlt645Meter(DLT_B, clock=SimClock(START, frozen=True), seed=1)
    assert a.registers() == b.registers() != c.registers()
    before = a.registers()["energy_kwh"]
    clock.advance(6 * 3600)
    b.clock.advance(6 * 3600)
    assert a.registers() == b.registers()
    assert a.registers()["energy_kwh"] > before
    # another process (another str-hash seed) builds the same meter with the same values
    probe = (
        "import json; from firmware_sim.serial import Dlt645Meter, SimClock\n"
        f"m = Dlt645Meter('{DLT_A}', clock=SimClock({START + 6 * 3600}, frozen=True), seed=1)\n"
        "print(json.dumps(m.registers()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30)
    fresh = Dlt645Meter(DLT_A, clock=SimClock(START + 6 * 3600, frozen=True), seed=1)
    assert json.loads(out.stdout) == fresh.registers()
