"""CJ/T 188 codec against the shared captured vectors, plus models, units and encoder round trips."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols import cjt188
from gateway.protocols.base import FrameError
from tests.conftest import VECTORS

ALL = json.loads((VECTORS / "cjt188.json").read_text(encoding="utf-8"))["vectors"]
GOOD = [v for v in ALL if v["checksum_ok"]]
BAD = [v for v in ALL if not v["checksum_ok"]]
HEAT = cjt188.MODELS["jy-heat"]


def _frame(v: dict) -> bytes:
    return bytes.fromhex(v["hex"])


def _ids(vs: list[dict]) -> list[str]:
    return [
        f"{i}-{v['direction']}-{v['parsed']['meter_type']}-{v['parsed']['control']}" for i, v in enumerate(vs)
    ]


def _corrupt_checksum(raw: bytes) -> bytes:
    return raw[:-2] + bytes([(raw[-2] + 1) & 0xFF]) + raw[-1:]


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_vector_frame_fields(vector: dict) -> None:
    parsed, expected = vector["parsed"], vector["expected"]
    frame = cjt188.parse_frame(_frame(vector))
    assert f"{frame.meter_type:02X}" == parsed["meter_type"]
    assert frame.address == parsed["address"]
    if "address" in expected:
        assert frame.address == expected["address"]
    assert f"{frame.control:02X}" == parsed["control"]
    assert frame.data == bytes.fromhex(parsed["data"])
    if "di_wire" in expected:
        assert frame.data[:2] == bytes.fromhex(expected["di_wire"])
    if "di" in expected:
        assert f"{cjt188.di_from_wire(frame.data[:2])[0]:04X}" == expected["di"].split()[0]
    if "ser" in expected:
        assert frame.data[2] == expected["ser"]


WATER_REPLIES = [v for v in GOOD if v["direction"] == "response" and v["parsed"]["L"] == 22]


@pytest.mark.parametrize("vector", WATER_REPLIES, ids=_ids(WATER_REPLIES))
def test_vector_water_replies(vector: dict) -> None:
    expected = vector["expected"]
    data = cjt188.decode_meter_data(cjt188.parse_frame(_frame(vector), replies_only=True))
    assert data.current_flow is not None and data.current_flow.value == pytest.approx(
        expected["current_flow"]
    )
    assert data.current_flow.unit == "m3"
    if "settlement_flow" in expected:
        assert data.settlement_flow is not None
        assert data.settlement_flow.value == pytest.approx(expected["settlement_flow"])
    if "unit" in expected:
        assert data.current_flow.unit_code == int(expected["unit"].split()[0], 16)
    if "datetime" in expected:
        assert data.clock == datetime.fromisoformat(expected["datetime"])
    if "st" in expected:
        assert data.status is not None
        assert bytes([data.status.st1, data.status.st2]) == bytes.fromhex(expected["st"])
    if expected.get("di_wire") == "1F 90":
        assert data.di_order == "little"


def test_vector_meter_without_clock_gives_no_clock() -> None:
    vector = next(v for v in WATER_REPLIES if "RTC" in v["note"])
    data = cjt188.decode_meter_data(cjt188.parse_frame(_frame(vector)))
    assert data.clock is None
    assert data.current_flow is not None and data.current_flow.value == 0.6


def test_vector_heat_meter_with_unit_first_model() -> None:
    vector = next(v for v in GOOD if v["parsed"]["L"] == 46)
    expected = vector["expected"]
    data = cjt188.decode_meter_data(cjt188.parse_frame(_frame(vector)), HEAT)
    heat = data.heat
    assert isinstance(heat["settlement_heat"], cjt188.Measure)
    assert heat["settlement_heat"].value == expected["settlement_heat"]
    assert heat["settlement_heat"].unit == "MWh"
    assert (
        isinstance(heat["current_heat"], cjt188.Measure)
        and heat["current_heat"].value == expected["current_heat"]
    )
    assert isinstance(heat["heat_power"], cjt188.Measure) and heat["heat_power"].unit == "kW"
    assert isinstance(heat["flow_rate"], cjt188.Measure) and heat["flow_rate"].unit == "m3/h"
    assert data.current_flow is not None and data.current_flow.value == expected["cumulative_flow"]
    assert data.current_flow.unit == "m3"
    assert heat["supply_temp_c"] == expected["supply_temp_C"]
    assert heat["return_temp_c"] == expected["return_temp_C"]
    assert heat["work_hours"] == expected["work_hours"]
    assert data.clock == datetime.fromisoformat(expected["datetime"])
    # The standard layout reads the same bytes into nonsense units: the model matters.
    standard = cjt188.decode_meter_data(cjt188.parse_frame(_frame(vector)))
    assert standard.current_flow is not None and standard.current_flow.unit_code not in cjt188.UNITS


@pytest.mark.parametrize("vector", BAD + GOOD, ids=_ids(BAD) + [f"corrupted-{i}" for i in _ids(GOOD)])
def test_bad_checksum_is_rejected(vector: dict) -> None:
    raw = _frame(vector) if not vector["checksum_ok"] else _corrupt_checksum(_frame(vector))
    with pytest.raises(FrameError) as err:
        cjt188.parse_frame(raw)
    assert err.value.kind == "checksum"


@pytest.mark.parametrize("vector", WATER_REPLIES[:2], ids=_ids(WATER_REPLIES[:2]))
def test_every_prefix_is_truncated_and_reply_length_waits(vector: dict) -> None:
    raw = b"\xfe\xfe" + _frame(vector)
    for cut in range(len(raw)):
        with pytest.raises(FrameError) as err:
            cjt188.parse_frame(raw[:cut])
        assert err.value.kind == "truncated", cut
        assert cjt188.reply_length(raw[:cut]) is None
    assert cjt188.reply_length(raw) == len(raw)
    assert cjt188.reply_length(raw + b"\x00\x00") == len(raw)


def test_tx_echo_is_skipped() -> None:
    reply = _frame(WATER_REPLIES[0])
    address = cjt188.parse_frame(reply).address
    echo = cjt188.encode_read(0x10, address, 1)
    assert cjt188.reply_length(echo) is None
    assert cjt188.reply_length(echo + reply) == len(echo) + len(reply)
    assert cjt188.parse_frame(echo + reply, replies_only=True).is_reply


def test_request_encoder_reproduces_captured_requests() -> None:
    first = next(v for v in GOOD if v["parsed"]["control"] == "01" and v["parsed"]["meter_type"] == "10")
    little = cjt188.MODELS["2018"]
    assert cjt188.encode_read(0x10, "78330011223344", 0, little) == _frame(first)
    heat = next(v for v in GOOD if v["parsed"]["control"] == "01" and v["parsed"]["meter_type"] == "20")
    assert cjt188.encode_read(0x20, "78330011223344", 1, little) == _frame(heat)
    big = cjt188.parse_frame(cjt188.encode_read(0x10, "78330011223344", 7))
    assert big.data == bytes.fromhex("90 1F 07")
    address = next(v for v in GOOD if v["parsed"]["control"] == "03")
    assert cjt188.encode_read_address() == _frame(address)


def test_liters_are_converted_and_status_bits_follow_the_model() -> None:
    body = bytes.fromhex("90 1F 05 00 60 00 00 29 00 50 00 00 29 00 00 00 00 00 00 00 05 00")
    frame = cjt188.parse_frame(cjt188.encode_frame(cjt188.Frame(0x10, "00000000000012", 0x81, body)))
    data = cjt188.decode_meter_data(frame)
    assert data.current_flow is not None
    assert (data.current_flow.value, data.current_flow.unit, data.current_flow.canonical) == (60.0, "L", 0.06)
    assert data.status == cjt188.Status(0x05, 0x00, "closed", True)
    reversed_bits = cjt188.decode_meter_data(frame, cjt188.MODELS["reversed-status"])
    assert reversed_bits.status is not None
    assert (reversed_bits.status.valve, reversed_bits.status.battery_low) == ("open", False)
    valve = cjt188.Cjt188Model(valve_mask=0xC0, valve_states=((2, "stuck"),))
    assert valve.valve(0x80) == "stuck"
    assert valve.valve(0x40).startswith("unknown")


def test_abnormal_wrong_di_and_odd_length_replies() -> None:
    abnormal = cjt188.encode_frame(
        cjt188.Frame(0x10, "00000000000012", 0xC1, bytes.fromhex("90 1F 01 00 04"))
    )
    with pytest.raises(FrameError) as err:
        cjt188.decode_meter_data(cjt188.parse_frame(abnormal))
    assert err.value.kind == "error_reply"
    other_di = cjt188.encode_frame(cjt188.Frame(0x10, "00000000000012", 0x81, bytes.fromhex("81 0A 00")))
    with pytest.raises(FrameError) as err:
        cjt188.decode_meter_data(cjt188.parse_frame(other_di))
    assert err.value.kind == "unexpected"
    short = cjt188.encode_frame(cjt188.Frame(0x10, "00000000000012", 0x81, bytes.fromhex("90 1F 00 00 00")))
    with pytest.raises(FrameError) as err:
        cjt188.decode_meter_data(cjt188.parse_frame(short))
    assert err.value.kind == "unexpected"


@pytest.mark.parametrize(
    ("given_type", "code"),
    [("cold_water", 0x10), ("heat", 0x20), ("gas", 0x30), (0x11, 0x11), ("0x21", 0x21), ("10", 0x10)],
)
def test_meter_type_codes(given_type: str | int, code: int) -> None:
    assert cjt188.meter_type_code(given_type) == code


@pytest.mark.parametrize("bad", ["steam", 0x55, "zz"])
def test_unknown_meter_types_raise_value_error(bad: str | int) -> None:
    with pytest.raises(ValueError):
        cjt188.meter_type_code(bad)


def test_model_validation() -> None:
    with pytest.raises(ValueError):
        cjt188.Cjt188Model(di_order="middle")
    with pytest.raises(ValueError):
        cjt188.Cjt188Model(valve_mask=0)


@given(
    st.sampled_from(sorted(cjt188.METER_TYPES)),
    st.text(alphabet="0123456789", min_size=14, max_size=14),
    st.integers(0, 0xFF),
    st.binary(max_size=255),
    st.integers(0, 4),
)
def test_encode_parse_round_trip(
    meter_type: int, address: str, control: int, data: bytes, preamble: int
) -> None:
    frame = cjt188.Frame(meter_type, address, control, data)
    raw = cjt188.encode_frame(frame, preamble)
    assert cjt188.parse_frame(raw) == frame
