"""The field engineers' frame decoder: one hex frame in, one JSON-ready dict out, never a traceback.

Each protocol's dict always carries the same keys (null when a frame does not have the field), so
scripts can rely on them. A frame with a wrong checksum is still decoded as far as its structure
allows, with ``valid`` false and the reason in ``error``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.protocols import cjt188, dlt645, modbus
from gateway.protocols.base import FrameError

PROTOCOLS = ("dlt645", "cjt188", "modbus-rtu")
_SEPARATORS = re.compile(r"[\s,:;-]+")
# When no protocol decodes a frame cleanly, the most specific complaint wins.
_ERROR_RANK = {"checksum": 0, "error_reply": 0, "address": 1, "truncated": 2, "unexpected": 3, "garbage": 4}


def parse_hex(text: str) -> bytes:
    """Bytes from hex with or without separators (spaces, colons, commas, dashes, 0x prefixes)."""
    tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
    digits = "".join(t[2:] if t[:2].lower() == "0x" else t for t in tokens)
    if not digits:
        raise ValueError("no hex digits given")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)})")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        bad = next(c for c in digits if c not in "0123456789abcdefABCDEF")
        raise ValueError(f"not a hex digit: {bad!r}") from None


def _base(protocol: str, keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "protocol": protocol,
        "valid": False,
        "error": None,
        "error_kind": None,
        "direction": None,
    }
    out.update(dict.fromkeys(keys))
    return out


def _parse_lenient(parse: Callable[..., Any], buf: bytes) -> tuple[Any, FrameError | None]:
    """The frame, and the checksum error if it only parses with the checksum ignored."""
    try:
        return parse(buf), None
    except FrameError as exc:
        if exc.kind != "checksum":
            raise
        return parse(buf, strict=False), exc


# --- DL/T 645 ---------------------------------------------------------------------------------------

_DLT645_KEYS = (
    "address", "control", "function", "version", "di", "item", "values", "unit", "error_code", "error_bits",
    "follow_up", "seq", "datetime", "weekday", "data",
)  # fmt: skip


def decode_dlt645(buf: bytes) -> dict[str, Any]:
    out = _base("dlt645", _DLT645_KEYS)
    try:
        frame, bad = _parse_lenient(dlt645.parse_frame, buf)
    except FrameError as exc:
        return {**out, "error": str(exc), "error_kind": exc.kind}
    out.update(
        direction="response" if frame.is_reply else "request",
        address=frame.address,
        control=f"{frame.control:02X}",
        function=dlt645.FUNCTIONS.get(frame.function, f"unknown ({frame.function:02X})"),
        version=frame.version,
        follow_up=frame.follow_up,
        data=frame.data.hex(" ").upper(),
        values=[],
    )
    try:
        _dlt645_fields(frame, out)
    except FrameError as exc:
        bad = bad or exc
    if bad is not None:
        return {**out, "error": str(bad), "error_kind": bad.kind}
    return {**out, "valid": True, "error_kind": None}


def _dlt645_fields(frame: dlt645.Frame, out: dict[str, Any]) -> None:
    fn = frame.function
    if frame.is_error:
        out["error_code"] = f"{frame.data[0]:02X}" if frame.data else None
        out["error_bits"] = list(dlt645.error_bits(frame))
        return
    if fn == dlt645.TIME_SYNC:
        when = dlt645.decode_time_sync(frame)
        out["datetime"] = when.isoformat(sep=" ") if when else None
        return
    if fn == dlt645.READ_ADDRESS and frame.is_reply:
        out["values"] = []
        out["item"] = "communication address " + dlt645.decode_address_reply(frame)
        return
    if fn not in (dlt645.READ, dlt645.READ_FOLLOW_UP, dlt645.READ_1997):
        return
    di_len = 4 if frame.version == "2007" else 2
    if len(frame.data) >= di_len:
        di = int.from_bytes(frame.data[:di_len], "little")
        item = dlt645.data_item(di, frame.version)
        out["di"] = dlt645.format_di(di, frame.version)
        out["item"] = item.name if item else None
        out["unit"] = item.unit if item and item.kind == "value" else None
        if fn == dlt645.READ_FOLLOW_UP and not frame.is_reply and len(frame.data) > di_len:
            out["seq"] = frame.data[di_len]
    if not frame.is_reply:
        return
    read = dlt645.decode_read(frame)
    out["values"] = list(read.values)
    out["seq"] = read.seq
    out["weekday"] = read.weekday
    if read.when is not None:
        out["datetime"] = read.when.isoformat()
    if read.digits is not None:
        out["item"] = f"{out['item']} {read.digits}"


# --- CJ/T 188 ---------------------------------------------------------------------------------------

_CJT188_KEYS = (
    "meter_type", "meter_type_name", "address", "control", "function", "di", "di_order", "ser",
    "current_flow", "settlement_flow", "unit", "settlement_unit", "datetime", "status", "heat", "abnormal",
    "data",
)  # fmt: skip


def _measure(m: cjt188.Measure | None) -> tuple[float | None, str | None]:
    return (None, None) if m is None else (m.value, m.unit)


def _meter_data(frame: cjt188.Frame) -> cjt188.MeterData:
    """Decode with the standard layout, or unit-first when only that gives known unit codes."""
    first = cjt188.decode_meter_data(frame, cjt188.MODELS["2004"])
    if _units_known(first):
        return first
    alt = cjt188.decode_meter_data(frame, cjt188.MODELS["jy-heat"])
    return alt if _units_known(alt) else first


def _units_known(data: cjt188.MeterData) -> bool:
    measures = [data.current_flow, data.settlement_flow, *data.heat.values()]
    return all(m.unit_code in cjt188.UNITS for m in measures if isinstance(m, cjt188.Measure))


def decode_cjt188(buf: bytes) -> dict[str, Any]:
    out = _base("cjt188", _CJT188_KEYS)
    try:
        frame, bad = _parse_lenient(cjt188.parse_frame, buf)
    except FrameError as exc:
        return {**out, "error": str(exc), "error_kind": exc.kind}
    out.update(
        direction="response" if frame.is_reply else "request",
        meter_type=f"{frame.meter_type:02X}",
        meter_type_name=cjt188.METER_TYPES.get(frame.meter_type, "unknown"),
        address=frame.address,
        control=f"{frame.control:02X}",
        function=cjt188.FUNCTIONS.get(frame.function, f"unknown ({frame.function:02X})"),
        data=frame.data.hex(" ").upper(),
        abnormal=frame.is_error,
    )
    if len(frame.data) >= 2:
        di, order = cjt188.di_from_wire(frame.data[:2])
        out.update(di=f"{di:04X}", di_order=order, ser=frame.data[2] if len(frame.data) > 2 else None)
    if frame.is_reply and frame.function == cjt188.READ and out["di"] == "901F":
        try:
            data = _meter_data(frame)
        except FrameError as exc:
            bad = bad or exc
        else:
            out["current_flow"], out["unit"] = _measure(data.current_flow)
            out["settlement_flow"], out["settlement_unit"] = _measure(data.settlement_flow)
            out["datetime"] = data.clock.isoformat(sep=" ") if data.clock else None
            if data.status is not None:
                st = data.status
                out["status"] = {"st1": f"{st.st1:02X}", "st2": f"{st.st2:02X}", "valve": st.valve,
                                 "battery_low": st.battery_low}  # fmt: skip
            if data.heat:
                out["heat"] = {
                    k: ({"value": v.value, "unit": v.unit} if isinstance(v, cjt188.Measure) else v)
                    for k, v in data.heat.items()
                }
    if bad is not None:
        return {**out, "error": str(bad), "error_kind": bad.kind}
    return {**out, "valid": True, "error_kind": None}


# --- Modbus RTU -------------------------------------------------------------------------------------

_MODBUS_KEYS = ("unit_id", "function", "start", "count", "registers", "exception_code", "exception")


def decode_modbus(buf: bytes) -> dict[str, Any]:
    out = _base("modbus-rtu", _MODBUS_KEYS)
    try:
        frame, bad = _parse_lenient(modbus.parse_frame, buf)
    except FrameError as exc:
        return {**out, "error": str(exc), "error_kind": exc.kind}
    out.update(direction=frame.direction, unit_id=frame.unit_id, function=frame.function)
    pdu = frame.pdu
    if frame.exception_code is not None:
        out.update(exception_code=frame.exception_code, exception=modbus.exception_name(frame.exception_code))
    elif pdu is not None and frame.direction == "request":
        out.update(start=pdu.address, count=pdu.count)
        if frame.function in (6, 16):
            out["registers"] = list(pdu.registers)
    elif pdu is not None:
        out["registers"] = list(pdu.registers) if frame.function in (3, 4, 23) else None
    if bad is not None:
        return {**out, "error": str(bad), "error_kind": bad.kind}
    return {**out, "valid": True, "error_kind": None}


DECODERS: dict[str, Callable[[bytes], dict[str, Any]]] = {
    "dlt645": decode_dlt645,
    "cjt188": decode_cjt188,
    "modbus-rtu": decode_modbus,
}


def decode_frame(protocol: str, hex_text: str) -> dict[str, Any]:
    """Decode one frame; ``protocol="auto"`` returns the first protocol that decodes it cleanly."""
    if protocol != "auto" and protocol not in DECODERS:
        return {
            **_base(protocol, ()),
            "error": f"unknown protocol {protocol!r} (use auto, {', '.join(PROTOCOLS)})",
        }
    try:
        buf = parse_hex(hex_text)
    except ValueError as exc:
        keys = () if protocol == "auto" else _keys(protocol)
        return {**_base(protocol, keys), "error": f"bad hex input: {exc}", "error_kind": "bad_hex"}
    if protocol != "auto":
        return DECODERS[protocol](buf)
    results = [decoder(buf) for decoder in DECODERS.values()]
    for result in results:
        if result["valid"]:
            return result
    return min(results, key=lambda r: _ERROR_RANK.get(r.get("error_kind") or "", 9))


def _keys(protocol: str) -> tuple[str, ...]:
    return {"dlt645": _DLT645_KEYS, "cjt188": _CJT188_KEYS, "modbus-rtu": _MODBUS_KEYS}[protocol]
