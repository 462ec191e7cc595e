"""Modbus RTU through pymodbus: shared vectors, word/byte orders, profiles and read planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from gateway.protocols import modbus
from gateway.protocols.base import FrameError
from tests.conftest import VECTORS

ALL = json.loads((VECTORS / "modbus_rtu.json").read_text(encoding="utf-8"))["vectors"]
GOOD = [v for v in ALL if v["crc_ok"]]
BAD = [v for v in ALL if not v["crc_ok"]]

# SDM register addresses of the values named in the vectors (docs/references.md#modbus).
SDM_ADDRESS = {
    "V_L1": 0x00, "V_L2": 0x02, "V_L3": 0x04, "I_L1": 0x06, "P_L1_W": 0x0C, "Q_L1_var": 0x18,
    "Q_L3_var": 0x1C, "PF_L1": 0x1E, "phase_angle_L1": 0x24, "total_P_W": 0x34, "total_PF": 0x3E,
    "frequency_Hz": 0x46, "import_kWh_0x48": 0x48, "export_kWh_0x4A": 0x4A, "import_kvarh_0x4C": 0x4C,
}  # fmt: skip


def _frame(v: dict) -> bytes:
    return bytes.fromhex(v["hex"])


def _ids(vs: list[dict]) -> list[str]:
    return [f"{i}-{v['direction']}-{v['parsed']['len']}" for i, v in enumerate(vs)]


def _reply(unit: int, words: list[int]) -> bytes:
    """A read-input-registers reply built by pymodbus itself, independent of our decoder."""
    return FramerRTU(DecodePDU(False)).buildFrame(ReadInputRegistersResponse(registers=words, dev_id=unit))


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_vector_fields(vector: dict) -> None:
    expected, parsed = vector["expected"], vector["parsed"]
    frame = modbus.parse_frame(_frame(vector))
    assert frame.direction == vector["direction"]
    assert frame.unit_id == parsed["unit"] == expected.get("unit", parsed["unit"])
    assert frame.function == int(parsed["fc"], 16) == expected.get("fc", int(parsed["fc"], 16))
    assert frame.pdu is not None
    if vector["direction"] == "request":
        assert (frame.pdu.address, frame.pdu.count) == (expected["start"], expected["count"])
        return
    words = list(frame.pdu.registers)
    if "registers" in expected:
        assert words == expected["registers"]
    if "byte_count" in expected:
        assert len(words) * 2 == expected["byte_count"]
    if "float32_ABCD" in expected:
        assert modbus.Register("x", 0).decode(words) == pytest.approx(expected["float32_ABCD"], abs=5e-5)
    for key, address in SDM_ADDRESS.items():
        if key in expected:
            value = modbus.Register(key, address).decode(words[address : address + 2])
            assert value == pytest.approx(expected[key], rel=1e-4, abs=1e-4), key


@pytest.mark.parametrize("vector", BAD, ids=_ids(BAD))
def test_vectors_with_a_bad_crc_are_rejected(vector: dict) -> None:
    raw = _frame(vector)
    with pytest.raises(FrameError) as err:
        modbus.parse_frame(raw)
    assert err.value.kind == ("truncated" if vector["truncated_in_source"] else "checksum")
    with pytest.raises(FrameError):
        modbus.decode_read_reply(raw, vector["parsed"]["unit"], int(vector["parsed"]["fc"], 16), 80)


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_corrupted_crc_is_rejected(vector: dict) -> None:
    raw = bytearray(_frame(vector))
    raw[-1] ^= 0x5A
    with pytest.raises(FrameError) as err:
        modbus.parse_frame(bytes(raw))
    assert err.value.kind == "checksum"
    assert modbus.parse_frame(bytes(raw), strict=False).unit_id == vector["parsed"]["unit"]


REQUESTS = [v for v in GOOD if v["direction"] == "request"]


@pytest.mark.parametrize("vector", REQUESTS, ids=_ids(REQUESTS))
def test_request_encoder_reproduces_captured_requests(vector: dict) -> None:
    frame = modbus.parse_frame(_frame(vector))
    assert frame.pdu is not None
    assert modbus.encode_read(frame.unit_id, frame.function, frame.pdu.address, frame.pdu.count) == _frame(
        vector
    )


def test_exception_reply_is_an_error_reply() -> None:
    raw = bytes.fromhex("01 84 02 C2 C1")
    frame = modbus.parse_frame(raw)
    assert (frame.direction, frame.function, frame.exception_code) == ("response", 4, 2)
    assert modbus.reply_length(raw, 1, 4) == 5
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(raw, 1, 4, 2)
    assert err.value.kind == "error_reply"
    assert "illegal data address" in str(err.value)


def test_reply_hunting_past_noise_and_tx_echo() -> None:
    reply = _reply(1, [0x4366, 0x3334])
    echo = modbus.encode_read(1, 4, 0, 2)
    buf = b"\x00" + echo + reply
    assert [modbus.reply_length(buf[:k], 1, 4, {4}) for k in range(len(buf))] == [None] * len(buf)
    assert modbus.reply_length(buf, 1, 4, {4}) == len(buf)
    assert modbus.reply_length(buf + b"\xff", 1, 4, {4}) == len(buf)
    # Without knowing the expected size, the echo's first bytes read as an empty reply with a bad CRC.
    assert modbus.reply_length(buf[:6], 1, 4) == 6
    assert modbus.decode_read_reply(buf, 1, 4, 2) == [0x4366, 0x3334]


def test_reply_errors_are_specific() -> None:
    reply = _reply(2, [1, 2])
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(reply, 1, 4, 2)
    assert err.value.kind == "address"
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(reply, 2, 4, 3)
    assert err.value.kind == "unexpected"
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(reply[:-1], 2, 4, 2)
    assert err.value.kind == "truncated"
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(b"", 2, 4, 2)
    assert err.value.kind == "truncated"
    bad = reply[:-1] + bytes([reply[-1] ^ 1])
    assert modbus.reply_length(bad, 2, 4) == len(bad)
    with pytest.raises(FrameError) as err:
        modbus.decode_read_reply(bad, 2, 4, 2)
    assert err.value.kind == "checksum"


# 230.2 as float32 (0x43663334) in the four word orders (docs/references.md#modbus).
@pytest.mark.parametrize(
    ("wire", "byte_order", "word_order"),
    [("43 66 33 34", "big", "big"), ("33 34 43 66", "big", "little"),
     ("66 43 34 33", "little", "big"), ("34 33 66 43", "little", "little")],
)  # fmt: skip
def test_float_orders(wire: str, byte_order: str, word_order: str) -> None:
    raw = bytes.fromhex(wire)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in (0, 2)]
    reg = modbus.Register("v", 0, byte_order=byte_order, word_order=word_order)
    assert reg.decode(words) == pytest.approx(230.2, abs=1e-4)


def test_xintai_dcba_example() -> None:
    raw = bytes.fromhex("1E 85 0B 3F")
    words = [int.from_bytes(raw[i : i + 2], "big") for i in (0, 2)]
    profile = modbus.load_profile("kaifeng_xintai_water")
    flow = next(r for r in profile.registers if r.quantity == "flow_m3h")
    assert flow.decode(words) == pytest.approx(0.545)


@pytest.mark.parametrize(
    ("data_type", "words", "scale", "value"),
    [
        ("int16", [0xFFFE], 1.0, -2.0),
        ("uint16", [0xFFFE], 0.1, 6553.4),
        ("int32", [0xFFFF, 0xFF38], 0.01, -2.0),
        ("uint32", [0x0001, 0x0000], 1.0, 65536.0),
        ("float64", [0x4059, 0x0000, 0x0000, 0x0000], 1.0, 100.0),
        ("uint64", [0, 0, 1, 0], 1.0, 65536.0),
    ],
)
def test_integer_types_and_scale(data_type: str, words: list[int], scale: float, value: float) -> None:
    reg = modbus.Register("v", 0, data_type=data_type, scale=scale)
    assert reg.count == len(words)
    assert reg.decode(words) == pytest.approx(value)


def _regs(*spans: tuple[int, int, int]) -> list[modbus.Register]:
    """(function, address, count) -> registers of that width."""
    types = {1: "uint16", 2: "float32", 4: "float64"}
    return [modbus.Register(f"r{fc}_{a}", a, function=fc, data_type=types[n]) for fc, a, n in spans]


def _plan(blocks: list[modbus.ReadBlock]) -> list[tuple[int, int, int]]:
    return [(b.function, b.start, b.count) for b in blocks]


def test_planner_merges_contiguous_registers() -> None:
    regs = _regs((4, 0, 2), (4, 2, 2), (4, 4, 2), (4, 6, 1))
    assert _plan(modbus.plan_reads(regs)) == [(4, 0, 7)]


def test_planner_splits_at_gaps_unless_bridging_is_allowed() -> None:
    regs = _regs((4, 0, 2), (4, 10, 2), (4, 40, 2))
    assert _plan(modbus.plan_reads(regs)) == [(4, 0, 2), (4, 10, 2), (4, 40, 2)]
    assert _plan(modbus.plan_reads(regs, max_gap=8)) == [(4, 0, 12), (4, 40, 2)]
    assert _plan(modbus.plan_reads(regs, max_gap=30)) == [(4, 0, 42)]


def test_planner_respects_max_count_and_function_codes() -> None:
    regs = _regs(*[(4, a, 2) for a in range(0, 300, 2)], (3, 0, 2), (3, 2, 1))
    blocks = modbus.plan_reads(regs)
    assert _plan(blocks) == [(3, 0, 3), (4, 0, 124), (4, 124, 124), (4, 248, 52)]
    assert all(b.count <= modbus.MAX_REGISTERS for b in blocks)
    assert sum(len(b.registers) for b in blocks) == len(regs)
    small = modbus.plan_reads(_regs((4, 0, 2), (4, 2, 2), (4, 4, 2)), max_count=4)
    assert _plan(small) == [(4, 0, 4), (4, 4, 2)]


def test_planner_handles_overlapping_registers() -> None:
    regs = _regs((4, 0, 4), (4, 2, 2), (4, 4, 2))
    (block,) = modbus.plan_reads(regs)
    assert (block.start, block.count, len(block.registers)) == (0, 6, 3)


@pytest.mark.parametrize("name", modbus.profile_names())
def test_shipped_profiles_load_and_plan_into_one_request(name: str) -> None:
    profile = modbus.load_profile(name)
    mapped = [r for r in profile.registers if r.quantity]
    blocks = modbus.plan_reads(mapped, profile.max_count, profile.max_gap)
    assert len(blocks) == 1
    assert blocks[0].count <= modbus.MAX_REGISTERS


def test_shipped_profiles_are_the_required_ones() -> None:
    assert {"eastron_sdm630", "eastron_sdm120", "kaifeng_xintai_water"} <= set(modbus.profile_names())


def test_sdm630_block_values_from_the_full_vector() -> None:
    vector = next(v for v in GOOD if v["parsed"]["len"] == 165)
    words = modbus.decode_read_reply(_frame(vector), 1, 4, 80)
    profile = modbus.load_profile("eastron_sdm630")
    block = modbus.ReadBlock(4, 0, 80, tuple(r for r in profile.registers if r.quantity))
    values = block.values(words)
    assert values["voltage_l1_v"] == pytest.approx(221.917, abs=1e-3)
    assert values["power_w"] == pytest.approx(3079.91, abs=1e-2)
    assert values["power_factor"] == pytest.approx(0.9994, abs=1e-4)
    assert values["frequency_hz"] == pytest.approx(50.0214, abs=1e-4)
    assert values["energy_kwh"] == pytest.approx(12345.67, abs=1e-2)
    assert values["export_energy_kwh"] == 0.0
    assert set(values) == {r.quantity for r in block.registers}


def test_units_convert_to_the_quantity_unit(tmp_path: Path) -> None:
    path = tmp_path / "kw_meter.yaml"
    path.write_text(yaml.safe_dump({"registers": [
        {"name": "p", "address": 0, "quantity": "power_w", "unit": "kW"},
        {"name": "e", "address": 2, "quantity": "energy_kwh", "unit": "Wh", "type": "uint32"},
    ]}))  # fmt: skip
    profile = modbus.load_profile(path)
    (block,) = modbus.plan_reads(profile.registers)
    assert block.values([0x3F80, 0x0000, 0x0001, 0x86A0]) == {"power_w": 1000.0, "energy_kwh": 100.0}


def test_non_finite_values_are_left_out() -> None:
    (block,) = modbus.plan_reads([modbus.Register("v", 0, "voltage_v", unit="V")])
    assert block.values([0x7FC0, 0x0000]) == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"registers": [{"name": "v", "address": 0, "quantity": "voltage_v", "colour": 1}]}, "unknown keys"),
        ({"registers": [{"name": "v", "address": 0, "quantity": "volts"}]}, "unknown quantity"),
        ({"registers": [{"name": "v", "address": 0, "quantity": "voltage_v", "unit": "A"}]}, "does not fit"),
        ({"registers": [{"name": "v", "address": 0, "type": "float16"}]}, "type must be"),
        ({"registers": [{"name": "v", "address": 0, "function": 6}]}, "function must be"),
        ({"registers": [{"name": "v", "address": "zero"}]}, "expected an integer"),
        ({"registers": [{"name": "v", "address": 0, "word_order": "middle"}]}, "word_order"),
        ({"registers": [{"name": "v", "address": 0, "scale": 0}]}, "scale"),
        ({"registers": [{"name": "v", "address": 65535}]}, "out of range"),
        ({"registers": [{"name": "v", "address": 0}, {"name": "v", "address": 2}]}, "unique"),
        ({"registers": [{"name": "a", "address": 0, "quantity": "voltage_v"},
                        {"name": "b", "address": 2, "quantity": "voltage_v"}]}, "one register"),
        ({"registers": []}, "non-empty"),
        ({"registers": [{"address": 0}]}, "needs a name"),
        ({"max_count": 200, "registers": [{"name": "v", "address": 0}]}, "max_count"),
        ({"defaults": {"name": "x"}, "registers": [{"name": "v", "address": 0}]}, "defaults"),
        ([1, 2], "mapping"),
    ],
)  # fmt: skip
def test_bad_profiles_are_rejected_with_a_clear_message(doc: object, message: str) -> None:
    with pytest.raises(modbus.ProfileError, match=message):
        modbus.parse_profile(doc, "test")


def test_unknown_profile_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(modbus.ProfileError, match="shipped"):
        modbus.load_profile("no_such_meter")
    broken = tmp_path / "broken.yaml"
    broken.write_text("registers: [\n")
    with pytest.raises(modbus.ProfileError, match="cannot read"):
        modbus.load_profile(broken)


def test_encode_read_validates_its_arguments() -> None:
    for args in ((1, 6, 0, 1), (248, 4, 0, 1), (1, 4, 0, 126), (1, 4, 0, 0), (1, 4, 70000, 1)):
        with pytest.raises(ValueError):
            modbus.encode_read(*args)
