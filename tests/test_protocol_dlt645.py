"""DL/T 645 codec against the captured vectors (tests/vectors), plus framing, BCD and encoder round trips."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols import dlt645
from gateway.protocols.base import FrameError
from tests.conftest import VECTORS

ALL = json.loads((VECTORS / "dlt645.json").read_text(encoding="utf-8"))["vectors"]
GOOD = [v for v in ALL if v["checksum_ok"]]
BAD = [v for v in ALL if not v["checksum_ok"]]


def _frame(v: dict) -> bytes:
    return bytes.fromhex(v["hex"])


def _ids(vs: list[dict]) -> list[str]:
    return [f"{i}-{v['direction']}-{v['parsed']['control']}" for i, v in enumerate(vs)]


def _corrupt_checksum(raw: bytes) -> bytes:
    return raw[:-2] + bytes([(raw[-2] + 1) & 0xFF]) + raw[-1:]


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_vector_frame_fields(vector: dict) -> None:
    parsed, expected = vector["parsed"], vector["expected"]
    frame = dlt645.parse_frame(_frame(vector))
    assert frame.address == parsed["address"]
    if "address" in expected:
        assert frame.address == expected["address"]
    assert f"{frame.control:02X}" == parsed["control"]
    assert frame.is_reply == parsed["dir_slave_to_master"]
    assert frame.is_error == parsed["slave_error"]
    assert frame.follow_up == parsed["follow_up"]
    assert f"{frame.function:02X}" == parsed["function"]
    assert frame.data == bytes.fromhex(parsed["data_minus_33"])
    assert frame.version == vector["version"]
    if "di" in expected:
        di_len = 4 if frame.version == "2007" else 2
        di = int.from_bytes(frame.data[:di_len], "little")
        assert dlt645.format_di(di, frame.version) == expected["di"]


READ_REPLIES = [v for v in GOOD if v["direction"] == "response" and "value" in v["expected"]]


@pytest.mark.parametrize("vector", READ_REPLIES, ids=_ids(READ_REPLIES))
def test_vector_read_values(vector: dict) -> None:
    expected = vector["expected"]
    read = dlt645.decode_read(dlt645.parse_frame(_frame(vector), replies_only=True))
    assert dlt645.format_di(read.di, read.version) == expected["di"]
    assert read.follow_up == bool(expected.get("follow_up", False))
    if isinstance(expected["value"], str):  # a date
        assert read.when == date.fromisoformat(expected["value"])
        assert read.weekday == expected["weekday"]
        return
    assert read.values[0] == pytest.approx(expected["value"], abs=1e-9)
    if "unit" in expected:
        assert read.item is not None and read.item.unit == expected["unit"]


ERROR_REPLIES = [v for v in GOOD if "error_word" in v["expected"]]


@pytest.mark.parametrize("vector", ERROR_REPLIES, ids=_ids(ERROR_REPLIES))
def test_vector_error_replies_name_their_bits(vector: dict) -> None:
    expected = vector["expected"]
    frame = dlt645.parse_frame(_frame(vector))
    assert frame.data[0] == int(expected["error_word"], 16)
    names = dlt645.error_bits(frame)
    assert expected["error"].split(" (")[0] in names
    with pytest.raises(FrameError) as err:
        dlt645.decode_read(frame)
    assert err.value.kind == "error_reply"
    assert expected["error"].split(" (")[0] in str(err.value)


def test_vector_broadcast_time_sync_decodes_and_encodes() -> None:
    vector = next(v for v in GOOD if v["parsed"]["control"] == "08")
    frame = dlt645.parse_frame(_frame(vector))
    when = dlt645.decode_time_sync(frame)
    assert when == datetime.fromisoformat(vector["expected"]["datetime"])
    assert dlt645.encode_time_sync(when, preamble=0) == _frame(vector)


@pytest.mark.parametrize("vector", BAD + GOOD, ids=_ids(BAD) + [f"corrupted-{i}" for i in _ids(GOOD)])
def test_bad_checksum_is_rejected(vector: dict) -> None:
    raw = _frame(vector) if not vector["checksum_ok"] else _corrupt_checksum(_frame(vector))
    with pytest.raises(FrameError) as err:
        dlt645.parse_frame(raw)
    assert err.value.kind == "checksum"
    # The field decoder can still look inside.
    assert dlt645.parse_frame(raw, strict=False).address == vector["parsed"]["address"]


@pytest.mark.parametrize("vector", GOOD[:6], ids=_ids(GOOD[:6]))
def test_every_prefix_is_truncated(vector: dict) -> None:
    raw = _frame(vector)
    for cut in range(len(raw)):
        with pytest.raises(FrameError) as err:
            dlt645.parse_frame(raw[:cut])
        assert err.value.kind == "truncated", cut


def test_frame_found_after_garbage_and_before_trailing_bytes() -> None:
    raw = bytes.fromhex("68 61 01 00 00 00 00 68 91 07 33 33 36 35 45 58 33 6B 16")
    noisy = bytes.fromhex("00 68 13 FF 16 68 FE") + b"\xfe\xfe" + raw + b"\x00\x68"
    frame = dlt645.parse_frame(noisy)
    assert frame.address == "000000000161"
    assert dlt645.decode_read(frame).values == (0.2512,)


def test_garbage_only_and_no_terminator() -> None:
    with pytest.raises(FrameError) as err:
        dlt645.parse_frame(bytes(range(0x20, 0x40)))
    assert err.value.kind == "garbage"
    raw = bytearray(bytes.fromhex("68 61 01 00 00 00 00 68 11 04 33 34 35 35 18 16"))
    raw[-1] = 0x17
    with pytest.raises(FrameError) as err:
        dlt645.parse_frame(bytes(raw))
    assert err.value.kind == "garbage"
    assert "16H" in str(err.value)


def test_reply_length_waits_for_the_whole_reply_past_noise() -> None:
    reply = bytes.fromhex("FE FE 68 72 00 32 09 17 20 68 91 08 33 33 34 33 B9 34 33 33 6D 16")
    buf = b"\x00\x68\x55" + reply
    lengths = [dlt645.reply_length(buf[:k]) for k in range(len(buf))]
    assert lengths == [None] * len(buf)
    assert dlt645.reply_length(buf) == len(buf)
    assert dlt645.reply_length(buf + b"\x99\x98") == len(buf)


def test_reply_length_and_parse_skip_a_tx_echo() -> None:
    request = dlt645.encode_read("201709320072", 0x00010000)
    reply = bytes.fromhex("FE FE 68 72 00 32 09 17 20 68 91 08 33 33 34 33 B9 34 33 33 6D 16")
    assert dlt645.reply_length(request) is None
    assert dlt645.reply_length(request + reply[:10]) is None
    assert dlt645.reply_length(request + reply) == len(request) + len(reply)
    assert dlt645.parse_frame(request + reply, replies_only=True).is_reply
    with pytest.raises(FrameError) as err:
        dlt645.parse_frame(request, replies_only=True)
    assert err.value.kind == "unexpected"


def test_reply_length_returns_a_bad_checksum_frame_instead_of_waiting() -> None:
    bad = _corrupt_checksum(bytes.fromhex("68 37 03 00 92 81 39 68 D1 01 35 5D 16"))
    assert dlt645.reply_length(bad) == len(bad)


REQUESTS = [v for v in GOOD if v["direction"] == "request" and v["parsed"]["control"] in ("11", "01")]


@pytest.mark.parametrize("vector", REQUESTS, ids=_ids(REQUESTS))
def test_read_encoder_reproduces_captured_requests(vector: dict) -> None:
    parsed = vector["parsed"]
    version = vector["version"]
    di = dlt645.parse_di(vector["expected"]["di"], version)
    frame = dlt645.encode_read(parsed["address"], di, version, preamble=parsed["preamble_fe"])
    assert frame == _frame(vector)


def test_read_address_encoder_and_reply() -> None:
    vector = next(v for v in GOOD if v["parsed"]["control"] == "13")
    assert dlt645.encode_read_address(preamble=3) == _frame(vector)
    reply = dlt645.encode_frame(dlt645.Frame("000102030425", 0x93, dlt645.address_to_wire("000102030425")))
    assert dlt645.decode_address_reply(dlt645.parse_frame(reply)) == "000102030425"


def test_follow_up_request_and_reply() -> None:
    request = dlt645.parse_frame(dlt645.encode_read_follow_up("000000000161", 0x0001FF00, 2))
    assert request.function == dlt645.READ_FOLLOW_UP
    assert request.data == bytes.fromhex("00 FF 01 00 02")
    body = (0x0001FF00).to_bytes(4, "little") + bytes.fromhex("00 10 00 00") + b"\x02"
    read = dlt645.decode_read(
        dlt645.parse_frame(dlt645.encode_frame(dlt645.Frame("000000000161", 0x92, body)))
    )
    assert read.seq == 2 and not read.follow_up and read.values == (10.0,)


# A follow-up exchange written by hand from the frame layout (protocols: DL/T 645-2007 frame and
# control codes, docs/references.md), not produced by the encoder: meter 000000000161 (wire order
# 61 01 00 00 00 00), DI 0203FF00, the active power block (total, A, B, C; 3 bytes XX.XXXX kW each,
# sign in bit 7 of the top byte), sent DI0 first as 00 FF 03 02, which is 33 32 36 35 after +33H.
#   total  1.6512 kW: BCD 01 65 12, low byte first 12 65 01, +33H: 45 98 34
#   A      0.8000 kW: 00 80 00 -> 00 80 00 -> 33 B3 33   (80H in the middle byte is a digit, not a sign)
#   B      0.9012 kW: 00 90 12 -> 12 90 00 -> 45 C3 33
#   C     -0.0500 kW: 80 05 00 -> 00 05 80 -> 33 38 B3   (exporting: sign bit set)
# 11H gets B1H (more follows) with total and A; 12H with SEQ 1 (34 on the wire) gets B2H with B and
# SEQ 1; 12H with SEQ 2 (35) gets 92H with C and SEQ 2 and ends the exchange. Each CS is the sum of
# the bytes from the first 68H to the last data byte, mod 256, worked out below in _sum_mod_256.
FOLLOW_UP_EXCHANGE = {
    "read": "68 61 01 00 00 00 00 68 11 04 33 32 36 35 17 16",
    "B1": "68 61 01 00 00 00 00 68 B1 0A 33 32 36 35 45 98 34 33 B3 33 E7 16",
    "follow 1": "68 61 01 00 00 00 00 68 12 05 33 32 36 35 34 4D 16",
    "B2": "68 61 01 00 00 00 00 68 B2 08 33 32 36 35 45 C3 33 34 2B 16",
    "follow 2": "68 61 01 00 00 00 00 68 12 05 33 32 36 35 35 4E 16",
    "92": "68 61 01 00 00 00 00 68 92 08 33 32 36 35 33 38 B3 35 EF 16",
    "D2": "68 61 01 00 00 00 00 68 D2 01 35 3A 16",  # abnormal follow-up reply, ERR bit1: no such data
}


def _sum_mod_256(frame: bytes) -> int:
    """The DL/T 645 checksum by plain arithmetic: 68H through the last data byte, mod 256."""
    total = 0
    for b in frame[: 10 + frame[9]]:
        total += b
    return total % 256


@pytest.mark.parametrize("name", list(FOLLOW_UP_EXCHANGE))
def test_hand_written_follow_up_frames_are_well_formed(name: str) -> None:
    raw = bytes.fromhex(FOLLOW_UP_EXCHANGE[name])
    assert len(raw) == 10 + raw[9] + 2 and raw[-1] == 0x16
    assert raw[-2] == _sum_mod_256(raw)
    frame = dlt645.parse_frame(raw)
    control = {"read": 0x11, "follow 1": 0x12, "follow 2": 0x12}.get(name) or int(name, 16)
    assert (frame.address, frame.control) == ("000000000161", control)


def test_hand_written_follow_up_exchange_decodes() -> None:
    ex = {k: bytes.fromhex(v) for k, v in FOLLOW_UP_EXCHANGE.items()}
    first = dlt645.decode_read(dlt645.parse_frame(ex["B1"], replies_only=True))
    assert (first.di, first.seq, first.follow_up, first.values) == (0x0203FF00, None, True, (1.6512, 0.8))
    second = dlt645.decode_read(dlt645.parse_frame(ex["B2"], replies_only=True))
    assert (second.di, second.seq, second.follow_up, second.values) == (0x0203FF00, 1, True, (0.9012,))
    last = dlt645.decode_read(dlt645.parse_frame(ex["92"], replies_only=True))
    assert (last.di, last.seq, last.follow_up, last.values) == (0x0203FF00, 2, False, (-0.05,))
    for seq, name in ((1, "follow 1"), (2, "follow 2")):  # the encoder writes the same bytes, FE aside
        assert dlt645.encode_read_follow_up("000000000161", 0x0203FF00, seq, preamble=0) == ex[name]
    assert dlt645.encode_read("000000000161", 0x0203FF00, preamble=0) == ex["read"]
    with pytest.raises(FrameError) as err:
        dlt645.decode_read(dlt645.parse_frame(ex["D2"], replies_only=True))
    assert err.value.kind == "error_reply"
    corrupt = ex["B2"][:-2] + bytes([(ex["B2"][-2] + 1) % 256]) + ex["B2"][-1:]
    with pytest.raises(FrameError):
        dlt645.parse_frame(corrupt)


@pytest.mark.parametrize(
    ("raw", "decimals", "signed", "value"),
    [
        ("34 12 80", 3, True, -1.234),  # sign and magnitude in the top byte
        ("12 25 00", 4, True, 0.2512),
        ("01 05 80", 3, True, -0.501),
        ("26 80 22 11", 2, True, 112280.26),  # 80H in the middle is plain BCD
        ("00 00 80", 4, True, 0.0),  # negative zero is zero
        ("FF FF FF FF", 2, False, None),  # meters send FF for items they lack
        ("EE EE", 1, False, None),
        ("99 99 99 79", 2, True, 799999.99),
    ],
)
def test_bcd_values(raw: str, decimals: int, signed: bool, value: float | None) -> None:
    assert dlt645.bcd_value(bytes.fromhex(raw), decimals, signed) == value


def test_block_with_invalid_phase_gives_none_for_that_phase() -> None:
    body = (0x0201FF00).to_bytes(4, "little") + bytes.fromhex("00 23 FF FF 10 22")
    read = dlt645.decode_read(
        dlt645.parse_frame(dlt645.encode_frame(dlt645.Frame("000000000161", 0x91, body)))
    )
    assert read.values == (230.0, None, 221.0)


def test_wrong_data_length_for_a_fixed_item_is_unexpected() -> None:
    body = (0x00010000).to_bytes(4, "little") + bytes.fromhex("00 10 00")
    frame = dlt645.parse_frame(dlt645.encode_frame(dlt645.Frame("000000000161", 0x91, body)))
    with pytest.raises(FrameError) as err:
        dlt645.decode_read(frame)
    assert err.value.kind == "unexpected"


def test_time_reply() -> None:
    body = (0x04000102).to_bytes(4, "little") + bytes.fromhex("51 22 10")
    read = dlt645.decode_read(
        dlt645.parse_frame(dlt645.encode_frame(dlt645.Frame("000000000161", 0x91, body)))
    )
    assert read.when is not None and read.when.isoformat() == "10:22:51"


@pytest.mark.parametrize(
    ("given_address", "printed"),
    [
        (161, "000000000161"),
        ("161", "000000000161"),
        ("aaaaaaaaa123", "AAAAAAAAA123"),
        ("0001 0203 0425", "000102030425"),
    ],
)
def test_address_normalisation(given_address: str | int, printed: str) -> None:
    assert dlt645.normalize_address(given_address) == printed
    assert dlt645.address_from_wire(dlt645.address_to_wire(given_address)) == printed


@pytest.mark.parametrize("bad", ["1234567890123", "12345678901X", -1, ""])
def test_bad_addresses_raise_value_error(bad: str | int) -> None:
    with pytest.raises(ValueError):
        dlt645.normalize_address(bad)


def test_parse_di_accepts_spaced_text_and_rejects_wrong_length() -> None:
    assert dlt645.parse_di("02 01 FF 00") == 0x0201FF00
    assert dlt645.parse_di("B611", "1997") == 0xB611
    for bad in ("0201FF", "zz01FF00", "B611"):
        with pytest.raises(ValueError):
            dlt645.parse_di(bad)


ADDRESSES = st.text(alphabet="0123456789", min_size=12, max_size=12)


@given(ADDRESSES, st.integers(0, 0xFF), st.binary(max_size=200), st.integers(0, 4))
def test_encode_parse_round_trip(address: str, control: int, data: bytes, preamble: int) -> None:
    frame = dlt645.Frame(address, control, data)
    raw = dlt645.encode_frame(frame, preamble)
    assert dlt645.parse_frame(raw) == frame
    assert dlt645.reply_length(raw) == (len(raw) if control & 0x80 else None)


@given(ADDRESSES, st.sampled_from(sorted(k[1] for k in dlt645.DATA_ITEMS if k[0] == "2007")))
def test_read_request_round_trip(address: str, di: int) -> None:
    frame = dlt645.parse_frame(dlt645.encode_read(address, di))
    assert (frame.address, frame.control, frame.data) == (address, 0x11, di.to_bytes(4, "little"))
