"""The field engineers' frame decoder: every shared vector through ``decode_frame`` and the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli import frame_app
from gateway.frame import decode_frame, parse_hex
from tests.conftest import VECTORS


def _vectors(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))["vectors"]


DLT = _vectors("dlt645.json")
CJT = _vectors("cjt188.json")
RTU = _vectors("modbus_rtu.json")


def _ok(v: dict) -> bool:
    return bool(v.get("checksum_ok", v.get("crc_ok")))


@pytest.mark.parametrize("vector", DLT, ids=[f"dlt645-{i}" for i in range(len(DLT))])
def test_dlt645_vectors(vector: dict) -> None:
    out = decode_frame("dlt645", vector["hex"])
    expected, parsed = vector["expected"], vector["parsed"]
    assert out["valid"] is _ok(vector)
    assert out["direction"] == vector["direction"]
    assert out["address"] == parsed["address"] == expected.get("address", parsed["address"])
    assert out["control"] == parsed["control"]
    if "di" in expected:
        assert out["di"] == expected["di"]
    if isinstance(expected.get("value"), int | float):
        assert out["values"][0] == pytest.approx(expected["value"])
    if "unit" in expected:
        assert out["unit"] == expected["unit"]
    if "error_word" in expected:
        assert out["error_code"] == expected["error_word"]
        assert expected["error"].split(" (")[0] in out["error_bits"]
    if "datetime" in expected:
        assert out["datetime"] == expected["datetime"]
    if expected.get("follow_up"):
        assert out["follow_up"] is True


@pytest.mark.parametrize("vector", CJT, ids=[f"cjt188-{i}" for i in range(len(CJT))])
def test_cjt188_vectors(vector: dict) -> None:
    out = decode_frame("cjt188", vector["hex"])
    expected, parsed = vector["expected"], vector["parsed"]
    assert out["valid"] is _ok(vector)
    assert out["direction"] == vector["direction"]
    assert out["meter_type"] == parsed["meter_type"]
    assert out["address"] == parsed["address"]
    assert out["control"] == parsed["control"]
    if "di" in expected:
        assert out["di"] == expected["di"].split()[0]
    for key in ("current_flow", "settlement_flow"):
        if key in expected:
            assert out[key] == pytest.approx(expected[key])
    if "cumulative_flow" in expected:
        assert out["current_flow"] == pytest.approx(expected["cumulative_flow"])
        assert out["heat"]["supply_temp_c"] == expected["supply_temp_C"]
    if "unit" in expected and expected["unit"].startswith("2C"):
        assert out["unit"] == "m3"
    if "st" in expected:
        assert out["status"]["st1"] + " " + out["status"]["st2"] == expected["st"]
    if "datetime" in expected:
        assert out["datetime"] == expected["datetime"]


@pytest.mark.parametrize("vector", RTU, ids=[f"modbus-{i}" for i in range(len(RTU))])
def test_modbus_vectors(vector: dict) -> None:
    out = decode_frame("modbus-rtu", vector["hex"])
    expected, parsed = vector["expected"], vector["parsed"]
    assert out["valid"] is _ok(vector)
    if not out["valid"]:
        assert out["error_kind"] == "truncated" and "165" in out["error"]
        return
    assert out["direction"] == vector["direction"]
    assert out["unit_id"] == parsed["unit"]
    assert out["function"] == int(parsed["fc"], 16)
    if vector["direction"] == "request":
        assert (out["start"], out["count"]) == (expected["start"], expected["count"])
    else:
        assert len(out["registers"]) * 2 == expected.get("byte_count", len(out["registers"]) * 2)
        if "registers" in expected:
            assert out["registers"] == expected["registers"]


VALID = [("dlt645", v) for v in DLT] + [("cjt188", v) for v in CJT] + [("modbus-rtu", v) for v in RTU]
VALID = [(p, v) for p, v in VALID if _ok(v)]


@pytest.mark.parametrize(
    ("protocol", "vector"), VALID, ids=[f"auto-{p}-{i}" for i, (p, _) in enumerate(VALID)]
)
def test_auto_guesses_the_protocol_of_every_valid_vector(protocol: str, vector: dict) -> None:
    out = decode_frame("auto", vector["hex"])
    assert (out["protocol"], out["valid"]) == (protocol, True)
    assert out == decode_frame(protocol, vector["hex"])


def test_auto_reports_the_most_specific_error_for_broken_frames() -> None:
    truncated = next(v for v in RTU if not v["crc_ok"])
    out = decode_frame("auto", truncated["hex"])
    assert (out["protocol"], out["valid"], out["error_kind"]) == ("modbus-rtu", False, "truncated")
    bad_sum = "68 61 01 00 00 00 00 68 11 04 33 34 35 35 19 16"
    out = decode_frame("auto", bad_sum)
    assert (out["protocol"], out["valid"], out["error_kind"]) == ("dlt645", False, "checksum")
    assert out["di"] == "02020100"  # still decoded as far as it goes


def test_bad_checksum_frames_are_invalid_but_described() -> None:
    out = decode_frame("cjt188", "68 10 01 00 00 05 08 00 00 01 03 1F 90 00 3A 16")
    assert not out["valid"] and out["error_kind"] == "checksum"
    assert "39" in out["error"] and out["address"] == "00000805000001"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no hex"), ("68 1", "odd number"), ("68 zz", "not a hex digit"), ("--", "no hex")],
)
def test_bad_hex_gives_an_error_not_a_traceback(text: str, message: str) -> None:
    for protocol in ("auto", "dlt645", "cjt188", "modbus-rtu"):
        out = decode_frame(protocol, text)
        assert out["valid"] is False and message in out["error"] and out["error_kind"] == "bad_hex"


def test_hex_separators_are_optional() -> None:
    assert (
        parse_hex("01 04 00 00")
        == parse_hex("01040000")
        == parse_hex("01:04:00:00")
        == parse_hex("0x01,0x04,0x00,0x00")
    )
    assert decode_frame("modbus-rtu", "010400000002 71CB") == decode_frame(
        "modbus-rtu", "01 04 00 00 00 02 71 CB"
    )


def test_wrong_protocol_is_invalid() -> None:
    out = decode_frame("dlt645", "01 04 00 00 00 02 71 CB")
    assert not out["valid"] and out["error_kind"] == "garbage"
    out = decode_frame("profibus", "01 04")
    assert not out["valid"] and "unknown protocol" in out["error"]


RUNNER = CliRunner()


def test_cli_prints_one_json_object_and_exits_0_when_valid() -> None:
    hex_words = "FE FE FE FE 68 61 01 00 00 00 00 68 91 07 33 34 35 35 67 45 B3 FA 16".split()
    result = RUNNER.invoke(frame_app, ["decode", "--protocol", "dlt645", *hex_words])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["protocol"], out["valid"], out["di"], out["values"], out["unit"]) == (
        "dlt645", True, "02020100", [-1.234], "A"
    )  # fmt: skip


def test_cli_exit_1_when_invalid_and_auto_by_default() -> None:
    result = RUNNER.invoke(frame_app, ["decode", "01040046000290E1"])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert (out["protocol"], out["valid"], out["error_kind"]) == ("modbus-rtu", False, "checksum")
    result = RUNNER.invoke(frame_app, ["decode", "-p", "cjt188", "not hex"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error_kind"] == "bad_hex"


def test_cli_rejects_unknown_protocol_names() -> None:
    result = RUNNER.invoke(frame_app, ["decode", "--protocol", "mbus", "10 40 01 41 16"])
    assert result.exit_code == 2
