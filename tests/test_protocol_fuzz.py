"""Hostile bytes: every decoder either returns a result or raises FrameError, nothing else.

Random bytes alone rarely get past a checksum, so the structured strategies wrap random payloads
in correctly framed and checksummed frames to reach the field decoders too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from gateway.frame import decode_frame
from gateway.protocols import cjt188, dlt645, modbus
from gateway.protocols.base import FrameError, Request
from gateway.protocols.drivers import make_driver

FUZZ = settings(max_examples=300, deadline=None)
DLT_ADDRESS = "000000000161"
CJT_ADDRESS = "00000000000012"

DRIVERS = [
    make_driver("dlt645", "e", DLT_ADDRESS, {}),
    make_driver("dlt645", "e97", DLT_ADDRESS, {"version": "1997"}),
    make_driver("cjt188", "w", CJT_ADDRESS, {}),
    make_driver("cjt188", "h", CJT_ADDRESS, {"meter_type": "heat", "model": "jy-heat"}),
    make_driver("modbus-rtu", "p", 1, {"profile": "eastron_sdm630"}),
    make_driver("modbus-rtu", "x", 1, {"profile": "kaifeng_xintai_water"}),
]

NOISE = st.binary(max_size=64)
DLT_DIS = sorted({di for (_, di) in dlt645.DATA_ITEMS} | {0x12345678})


def _only_frame_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except FrameError as exc:
        assert exc.kind in {"truncated", "checksum", "address", "garbage", "error_reply", "unexpected"}
        return None


@st.composite
def dlt645_frames(draw: st.DrawFn) -> bytes:
    control = draw(
        st.sampled_from([0x91, 0xB1, 0x92, 0xB2, 0xD1, 0x81, 0xC1, 0x93, 0x08, 0x11, 0x12])
        | st.integers(0, 255)
    )
    di_len = draw(st.sampled_from([4, 2, 0]))
    di = draw(st.sampled_from(DLT_DIS)) & ((1 << (8 * di_len)) - 1) if di_len else 0
    data = di.to_bytes(di_len, "little") + draw(st.binary(max_size=40))
    frame = dlt645.encode_frame(dlt645.Frame(DLT_ADDRESS, control, data[:200]), draw(st.integers(0, 4)))
    return draw(NOISE) + frame + draw(NOISE)


@st.composite
def cjt188_frames(draw: st.DrawFn) -> bytes:
    control = draw(st.sampled_from([0x81, 0x81, 0x81, 0xC1, 0x83, 0x01]) | st.integers(0, 255))
    di = draw(st.sampled_from([b"\x90\x1f", b"\x1f\x90", b"\x81\x0a"]) | st.binary(min_size=0, max_size=2))
    body = draw(st.sampled_from([22, 22, 46, 46]) | st.integers(0, 60))
    data = (di + draw(st.binary(min_size=body, max_size=body)))[:body]
    meter_type = draw(st.sampled_from([0x10, 0x20, 0x30]))
    return (
        draw(NOISE) + cjt188.encode_frame(cjt188.Frame(meter_type, CJT_ADDRESS, control, data)) + draw(NOISE)
    )


@st.composite
def modbus_frames(draw: st.DrawFn) -> bytes:
    unit = draw(st.sampled_from([1, 2]))
    function = draw(st.sampled_from([3, 4, 0x83, 0x84, 6, 16]) | st.integers(0, 255))
    body = draw(st.binary(min_size=4, max_size=4) | st.binary(max_size=200))
    if draw(st.booleans()) and function in (3, 4):
        body = bytes([len(body) & 0xFF]) + body
    frame = bytes([unit, function]) + body
    return draw(NOISE) + frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big") + draw(NOISE)


ANY_FRAME = st.binary(max_size=300) | dlt645_frames() | cjt188_frames() | modbus_frames()


@FUZZ
@given(ANY_FRAME)
def test_codecs_raise_only_frame_errors(buf: bytes) -> None:
    frame = _only_frame_errors(dlt645.parse_frame, buf)
    if frame is not None:
        _only_frame_errors(dlt645.decode_read, frame)
        _only_frame_errors(dlt645.decode_address_reply, frame)
        dlt645.decode_time_sync(frame)
        dlt645.error_bits(frame)
    frame = _only_frame_errors(cjt188.parse_frame, buf)
    if frame is not None:
        for model in cjt188.MODELS.values():
            _only_frame_errors(cjt188.decode_meter_data, frame, model)
    _only_frame_errors(modbus.parse_frame, buf)
    _only_frame_errors(modbus.decode_read_reply, buf, 1, 4, 2)


@FUZZ
@given(ANY_FRAME)
def test_reply_length_never_raises_and_stays_in_the_buffer(buf: bytes) -> None:
    for length in (
        dlt645.reply_length(buf),
        cjt188.reply_length(buf),
        modbus.reply_length(buf, 1, 4),
        modbus.reply_length(buf, 1, 3, {12}),
    ):
        assert length is None or 0 < length <= len(buf)


@FUZZ
@given(st.sampled_from(DRIVERS), ANY_FRAME)
def test_drivers_raise_only_frame_errors(driver: Any, buf: bytes) -> None:
    length = driver.reply_length(buf)
    assert length is None or 0 < length <= len(buf)
    for request in driver.poll():
        decoded = _only_frame_errors(driver.decode, request, buf)
        if decoded is not None:
            assert all(isinstance(v, float) for v in decoded.values.values())
            assert all(isinstance(r, Request) for r in decoded.follow_up)


@FUZZ
@given(
    st.sampled_from(["auto", "dlt645", "cjt188", "modbus-rtu", "bogus"]),
    st.text(max_size=80) | ANY_FRAME.map(bytes.hex),
)
def test_frame_decoder_always_answers_with_a_verdict(protocol: str, text: str) -> None:
    result = decode_frame(protocol, text)
    assert isinstance(result["valid"], bool)
    assert result["valid"] or result["error"]
