"""Meter drivers through ``make_driver``: polls, reply lengths, decoded quantities and typed errors."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from campusmon.quantities import QUANTITIES
from gateway.protocols import cjt188, dlt645, modbus
from gateway.protocols.base import FrameError, Request
from gateway.protocols.drivers import DriverConfigError, dlt645_time_sync, make_driver
from tests.conftest import VECTORS
from tests.test_protocol_dlt645 import FOLLOW_UP_EXCHANGE

DLT = {v["hex"]: v for v in json.loads((VECTORS / "dlt645.json").read_text(encoding="utf-8"))["vectors"]}
CJT = json.loads((VECTORS / "cjt188.json").read_text(encoding="utf-8"))["vectors"]


def _dlt_vector(di: str, control: str = "91", address: str = "000000000161") -> bytes:
    def fits(v: dict) -> bool:
        parsed = v["parsed"]
        return v["expected"].get("di") == di and parsed["control"] == control and parsed["address"] == address

    v = next(v for v in DLT.values() if fits(v))
    return bytes.fromhex(v["hex"])


def _dlt_reply(address: str, control: int, di: int, payload: str) -> bytes:
    return dlt645.encode_frame(
        dlt645.Frame(address, control, di.to_bytes(4, "little") + bytes.fromhex(payload))
    )


def _only(requests: list[Request]) -> Request:
    assert len(requests) == 1
    return requests[0]


# --- DL/T 645 ---------------------------------------------------------------------------------------


def test_dlt645_default_poll_reads_energy_blocks_pf_and_frequency() -> None:
    driver = make_driver("dlt645", "e1", "000000000161", {})
    frames = [dlt645.parse_frame(r.frame) for r in driver.poll()]
    assert all(f.address == "000000000161" and f.control == dlt645.READ for f in frames)
    dis = [int.from_bytes(f.data, "little") for f in frames]
    assert dis == [0x00010000, 0x0201FF00, 0x0202FF00, 0x0203FF00, 0x02060000, 0x02800002]
    quantities = {q for di in dis for q in dlt645.data_item(di).quantities if q}  # type: ignore[union-attr]
    assert {
        "energy_kwh",
        "voltage_l1_v",
        "current_l3_a",
        "power_w",
        "power_l2_w",
        "power_factor",
    } <= quantities
    assert quantities <= set(QUANTITIES)


@pytest.mark.parametrize(
    ("di", "quantity", "value"),
    [("00010000", "energy_kwh", 0.26), ("02030000", "power_w", 251.2), ("02020100", "current_l1_a", -1.234)],
)
def test_dlt645_vectors_decode_to_quantities_in_canonical_units(di: str, quantity: str, value: float) -> None:
    driver = make_driver("dlt645", "e1", "000000000161", {"dis": [di]})
    request = _only(driver.poll())
    reply = _dlt_vector(di)
    assert driver.reply_length(reply) == len(reply)
    decoded = driver.decode(request, reply)
    assert decoded.values == {quantity: value}
    assert decoded.follow_up == ()


def test_dlt645_single_phase_meter_uses_base_quantity_names() -> None:
    driver = make_driver("dlt645", "e1", 161, {"dis": ["0201FF00", "02020100"], "phases": 1})
    voltage, current = driver.poll()
    block = _dlt_reply("000000000161", 0x91, 0x0201FF00, "00 23 00 00 00 00")
    assert driver.decode(voltage, block).values == {"voltage_v": 230.0}
    assert driver.decode(current, _dlt_vector("02020100")).values == {"current_a": -1.234}


def test_dlt645_1997_meter() -> None:
    driver = make_driver("dlt645", "e2", "138000130754", {"version": "1997", "dis": ["9010"]})
    request = _only(driver.poll())
    assert dlt645.parse_frame(request.frame).control == dlt645.READ_1997
    assert driver.decode(request, _dlt_vector("9010", "81", "138000130754")).values == {"energy_kwh": 0.01}


def test_dlt645_reply_errors_are_typed() -> None:
    driver = make_driver("dlt645", "e1", "000000000162", {"dis": ["00010000"]})
    request = _only(driver.poll())
    with pytest.raises(FrameError) as err:
        driver.decode(request, _dlt_vector("00010000"))  # meter ...161 answered
    assert err.value.kind == "address"
    other = make_driver("dlt645", "e1", "000000000161", {"dis": ["02060000"]})
    with pytest.raises(FrameError) as err:
        other.decode(_only(other.poll()), _dlt_vector("00010000"))
    assert err.value.kind == "unexpected"
    error = bytes.fromhex("FE FE FE FE 68 61 01 00 00 00 00 68 D1 01 34 38 16")
    with pytest.raises(FrameError) as err:
        other.decode(_only(other.poll()), error)
    assert err.value.kind == "error_reply"
    with pytest.raises(FrameError) as err:
        other.decode(_only(other.poll()), error[:-3])
    assert err.value.kind == "truncated"


def test_dlt645_follow_up_frames_continue_a_block() -> None:
    address = "000000000161"
    driver = make_driver("dlt645", "e1", address, {"dis": ["0203FF00"]})
    request = _only(driver.poll())
    first = _dlt_reply(address, 0xB1, 0x0203FF00, "00 50 01 00 00 01")  # total, phase A; more follows
    decoded = driver.decode(request, first)
    assert decoded.values == {"power_w": 1500.0, "power_l1_w": 1000.0}
    follow = _only(list(decoded.follow_up))
    frame = dlt645.parse_frame(follow.frame)
    assert (frame.control, frame.data) == (dlt645.READ_FOLLOW_UP, bytes.fromhex("00 FF 03 02 01"))
    second = _dlt_reply(address, 0xB2, 0x0203FF00, "00 30 00 01")  # phase B, seq 1, more follows
    decoded = driver.decode(follow, second)
    assert decoded.values == {"power_l2_w": 300.0}
    follow2 = _only(list(decoded.follow_up))
    assert dlt645.parse_frame(follow2.frame).data[-1] == 2
    last = _dlt_reply(address, 0x92, 0x0203FF00, "00 20 80 02")  # phase C exporting, seq 2, done
    decoded = driver.decode(follow2, last)
    assert decoded.values == {"power_l3_w": -200.0}
    assert decoded.follow_up == ()


def test_dlt645_follow_up_exchange_written_by_hand() -> None:
    """The driver's requests equal the hand-written ones byte for byte; the hand-written replies decode."""
    ex = {k: bytes.fromhex(v) for k, v in FOLLOW_UP_EXCHANGE.items()}
    fe = bytes.fromhex("FE FE FE FE")  # the driver's wake-up preamble, outside the checksum
    driver = make_driver("dlt645", "e1", "000000000161", {"dis": ["0203FF00"]})
    request = _only(driver.poll())
    assert request.frame == fe + ex["read"]
    decoded = driver.decode(request, ex["B1"])
    assert decoded.values == {"power_w": 1651.2, "power_l1_w": 800.0}
    follow = _only(list(decoded.follow_up))
    assert follow.frame == fe + ex["follow 1"]
    decoded = driver.decode(follow, ex["B2"])
    assert decoded.values == {"power_l2_w": 901.2}
    follow2 = _only(list(decoded.follow_up))
    assert follow2.frame == fe + ex["follow 2"]
    decoded = driver.decode(follow2, ex["92"])
    assert decoded.values == {"power_l3_w": -50.0}
    assert decoded.follow_up == ()
    with pytest.raises(FrameError) as err:
        driver.decode(follow2, ex["D2"])
    assert err.value.kind == "error_reply"


def test_dlt645_endless_follow_ups_are_cut_off() -> None:
    address = "000000000161"
    driver = make_driver("dlt645", "e1", address, {"dis": ["0001FF00"]})
    request = _only(driver.poll())
    with pytest.raises(FrameError) as err:
        for seq in range(1, 100):
            reply = _dlt_reply(
                address,
                0xB2 if seq > 1 else 0xB1,
                0x0001FF00,
                "00 00 00 00" + (f" {seq - 1:02X}" if seq > 1 else ""),
            )
            request = _only(list(driver.decode(request, reply).follow_up))
    assert err.value.kind == "unexpected"


def test_dlt645_reply_after_echo_and_noise() -> None:
    driver = make_driver("dlt645", "e1", "000000000161", {"dis": ["02030000"]})
    request = _only(driver.poll())
    buf = request.frame + b"\x00\x13" + _dlt_vector("02030000")
    assert driver.reply_length(request.frame) is None
    assert driver.reply_length(buf) == len(buf)
    assert driver.decode(request, buf).values == {"power_w": 251.2}


def test_dlt645_time_sync_is_a_broadcast_without_reply() -> None:
    request = dlt645_time_sync(datetime(2017, 6, 5, 10, 22, 51), preamble=0)
    assert not request.expects_reply
    assert request.frame == bytes.fromhex("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16")


# --- CJ/T 188 ---------------------------------------------------------------------------------------


def test_cjt188_vector_reply_gives_volume() -> None:
    vector = next(v for v in CJT if v["expected"].get("current_flow") == 0.6)
    driver = make_driver("cjt188", "w1", vector["expected"]["address"], {"meter_type": "cold_water"})
    request = _only(driver.poll())
    frame = cjt188.parse_frame(request.frame)
    assert (frame.meter_type, frame.control, frame.data[:2]) == (0x10, cjt188.READ, b"\x90\x1f")
    reply = bytes.fromhex(vector["hex"])
    assert driver.reply_length(reply) == len(reply)
    assert driver.decode(request, reply).values == {"volume_m3": 0.6}


def test_cjt188_sequence_numbers_and_di_order_follow_the_model() -> None:
    counting = make_driver("cjt188", "w1", "12", {})
    sers = [cjt188.parse_frame(_only(counting.poll()).frame).data[2] for _ in range(3)]
    assert sers == [0, 1, 2]
    fixed = make_driver("cjt188", "w1", "12", {"model": "2018", "increment_ser": False})
    frames = [cjt188.parse_frame(_only(fixed.poll()).frame) for _ in range(2)]
    assert [f.data for f in frames] == [bytes.fromhex("1F 90 00")] * 2


def test_cjt188_reply_in_the_other_di_order_is_accepted() -> None:
    vector = next(v for v in CJT if v["expected"].get("di_wire") == "1F 90" and v["direction"] == "response")
    driver = make_driver("cjt188", "w1", vector["expected"]["address"], {})
    assert driver.decode(_only(driver.poll()), bytes.fromhex(vector["hex"])).values == {"volume_m3": 0.0}


def test_cjt188_heat_meter_with_unit_first_model() -> None:
    vector = next(v for v in CJT if v["parsed"]["L"] == 46)
    driver = make_driver("cjt188", "h1", "00000040314132", {"meter_type": "heat", "model": "jy-heat"})
    decoded = driver.decode(_only(driver.poll()), bytes.fromhex(vector["hex"]))
    assert decoded.values == {
        "heat_energy_kwh": 20.0,  # 0.02 MWh
        "heat_power_w": 0.0,
        "heat_flow_m3h": 0.0,
        "heat_volume_m3": 10.34,
        "supply_temp_c": 25.35,
        "return_temp_c": 25.66,
    }


def test_cjt188_litres_and_wrong_units_and_addresses() -> None:
    driver = make_driver("cjt188", "w1", "12", {})
    request = _only(driver.poll())
    body = "90 1F 00 00 00 15 00 29 00 00 00 00 29 00 00 00 00 00 00 00 00 00"
    litres = cjt188.encode_frame(cjt188.Frame(0x10, "12", 0x81, bytes.fromhex(body)))
    assert driver.decode(request, litres).values == {"volume_m3": 1.5}
    energy = cjt188.encode_frame(cjt188.Frame(0x10, "12", 0x81, bytes.fromhex(body.replace("29", "05"))))
    with pytest.raises(FrameError) as err:
        driver.decode(request, energy)
    assert err.value.kind == "unexpected"
    stranger = cjt188.encode_frame(cjt188.Frame(0x10, "13", 0x81, bytes.fromhex(body)))
    with pytest.raises(FrameError) as err:
        driver.decode(request, stranger)
    assert err.value.kind == "address"


def test_cjt188_model_overrides() -> None:
    options = {
        "valve_mask": "C0",
        "battery_mask": 0x20,
        "di_order": "little",
        "valve_states": {"0": "open", "1": "shut"},
    }
    driver = make_driver("cjt188", "w1", "12", options)
    model = driver.model  # type: ignore[attr-defined]
    assert (model.valve_mask, model.battery_mask, model.di_order) == (0xC0, 0x20, "little")
    assert model.valve(0x40) == "shut"


# --- Modbus RTU -------------------------------------------------------------------------------------


def _rtu(unit: int, words: list[int], function: int = 4) -> bytes:
    cls = ReadInputRegistersResponse if function == 4 else ReadHoldingRegistersResponse
    return FramerRTU(DecodePDU(False)).buildFrame(cls(registers=words, dev_id=unit))


def test_modbus_sdm630_reads_everything_in_one_request() -> None:
    driver = make_driver("modbus-rtu", "p1", "5", {"profile": "eastron_sdm630"})
    request = _only(driver.poll())
    frame = modbus.parse_frame(request.frame)
    assert frame.pdu is not None
    assert (frame.unit_id, frame.function, frame.pdu.address, frame.pdu.count) == (5, 4, 0, 76)
    vector = json.loads((VECTORS / "modbus_rtu.json").read_text(encoding="utf-8"))["vectors"]
    full = next(v for v in vector if v["parsed"]["len"] == 165)
    words = modbus.decode_read_reply(bytes.fromhex(full["hex"]), 1, 4, 80)[:76]
    reply = b"\x00" + _rtu(5, words)
    assert [driver.reply_length(reply[:k]) for k in range(len(reply))] == [None] * len(reply)
    assert driver.reply_length(reply) == len(reply)
    values = driver.decode(request, reply).values
    assert len(values) == 14
    assert values["voltage_l1_v"] == pytest.approx(221.917, abs=1e-3)
    assert values["energy_kwh"] == pytest.approx(12345.67, abs=1e-2)


def test_modbus_xintai_water_meter() -> None:
    driver = make_driver("modbus-rtu", "w2", 3, {"profile": "kaifeng_xintai_water"})
    request = _only(driver.poll())
    frame = modbus.parse_frame(request.frame)
    assert frame.pdu is not None and (frame.function, frame.pdu.address, frame.pdu.count) == (3, 1, 6)
    # forward flow 12.5 m3 (0x41480000) and flow 0.545 m3/h, both DCBA; reverse flow between them.
    words = [0x0000, 0x4841, 0x0000, 0x0000, 0x1E85, 0x0B3F]
    assert driver.decode(request, _rtu(3, words, function=3)).values == {"volume_m3": 12.5, "flow_m3h": 0.545}


def test_modbus_errors_are_typed() -> None:
    driver = make_driver("modbus-rtu", "p1", 1, {"profile": "eastron_sdm120"})
    request = _only(driver.poll())
    exception = bytes.fromhex("01 84 02 C2 C1")
    assert driver.reply_length(exception) == len(exception)
    with pytest.raises(FrameError) as err:
        driver.decode(request, exception)
    assert err.value.kind == "error_reply"
    with pytest.raises(FrameError) as err:
        driver.decode(request, _rtu(2, [0] * 76))
    assert err.value.kind == "address"
    with pytest.raises(FrameError) as err:
        driver.decode(request, _rtu(1, [0] * 76)[:-4])
    assert err.value.kind == "truncated"


def test_modbus_options_override_the_plan() -> None:
    driver = make_driver("modbus-rtu", "p1", 1, {"profile": "eastron_sdm120", "max_gap": 0, "unit_id": "7"})
    frames = [modbus.parse_frame(r.frame) for r in driver.poll()]
    assert {f.unit_id for f in frames} == {7}
    assert [(f.pdu.address, f.pdu.count) for f in frames if f.pdu] == [
        (0, 2),
        (6, 2),
        (12, 2),
        (30, 2),
        (70, 6),
    ]


# --- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "address", "options", "message"),
    [
        ("mbus", "1", {}, "unknown protocol"),
        ("dlt645", "1", {"dis": ["00010000"], "colour": "red"}, "unknown dlt645 options"),
        ("dlt645", "12345678901234", {}, "up to 12 digits"),
        ("dlt645", "999999999999", {}, "broadcast"),
        ("dlt645", "1", {"dis": ["04000101"]}, "no campusmon quantity"),
        ("dlt645", "1", {"dis": ["0201"]}, "8 hex digits"),
        ("dlt645", "1", {"dis": "00010000"}, "list"),
        ("dlt645", "1", {"version": "2020"}, "version"),
        ("dlt645", "1", {"phases": 2}, "phases"),
        ("dlt645", "1", {"preamble": 9}, "preamble"),
        ("cjt188", "1", {"meter_type": "steam"}, "meter type"),
        ("cjt188", "1", {"model": "acme"}, "unknown CJ/T 188 model"),
        ("cjt188", "1", {"di_order": "middle"}, "di_order"),
        ("cjt188", "1", {"valve_mask": "zz"}, "valve_mask"),
        ("cjt188", "AAAAAAAAAAAAAA", {}, "wildcard"),
        ("modbus-rtu", "1", {}, "needs a profile"),
        ("modbus-rtu", "1", {"profile": "acme_meter"}, "unknown Modbus profile"),
        ("modbus-rtu", "0", {"profile": "eastron_sdm120"}, "1..247"),
        ("modbus-rtu", "300", {"profile": "eastron_sdm120"}, "1..247"),
        ("modbus-rtu", "x", {"profile": "eastron_sdm120"}, "integer"),
        ("modbus-rtu", "1", {"profile": "eastron_sdm120", "max_count": 200}, "max_count"),
    ],
)
def test_bad_configuration_names_meter_and_problem(
    protocol: str, address: str, options: dict, message: str
) -> None:
    with pytest.raises(DriverConfigError, match=message) as err:
        make_driver(protocol, "m9", address, options)
    assert "m9" in str(err.value)


def test_decode_rejects_requests_from_elsewhere() -> None:
    driver = make_driver("dlt645", "e1", "1", {"dis": ["00010000"]})
    with pytest.raises(FrameError) as err:
        driver.decode(Request(b"", context="foreign"), b"")
    assert err.value.kind == "unexpected"
