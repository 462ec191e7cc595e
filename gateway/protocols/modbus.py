"""Modbus RTU for meters: pymodbus frames, PDUs and CRC, plus YAML meter profiles and read planning.

pymodbus does the protocol (request PDUs, response decoding, CRC, register-to-number conversion);
this module adds what a meter gateway needs on top: frame hunting past noise and adapter echoes,
typed errors, profiles that map registers onto the campusmon vocabulary, and a planner that reads
contiguous registers in as few requests as possible.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from campusmon.quantities import QUANTITIES, UnitError, convert
from gateway.protocols.base import FrameError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
MAX_REGISTERS = 125  # per read request (Modbus application protocol limit for FC03/04)

_REQUESTS = DecodePDU(is_server=True)
_RESPONSES = DecodePDU(is_server=False)
_FRAMER = FramerRTU(_RESPONSES)
_DT = ModbusClientMixin.DATATYPE
DATA_TYPES = {
    "int16": _DT.INT16,
    "uint16": _DT.UINT16,
    "int32": _DT.INT32,
    "uint32": _DT.UINT32,
    "int64": _DT.INT64,
    "uint64": _DT.UINT64,
    "float32": _DT.FLOAT32,
    "float64": _DT.FLOAT64,
}
READ_FUNCTIONS = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}


EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_name(code: int) -> str:
    return EXCEPTIONS.get(code, "unknown exception")


# --- frames -----------------------------------------------------------------------------------------


def crc_ok(frame: bytes) -> bool:
    """CRC-16/MODBUS over all but the last two bytes, which carry it low byte first."""
    return len(frame) >= 4 and FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))


def encode_read(unit_id: int, function: int, start: int, count: int) -> bytes:
    """A read holding (3) or input (4) registers request."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"Modbus read function must be 3 or 4, got {function}")
    if not 0 <= unit_id <= 247:
        raise ValueError(f"Modbus unit id must be 0..247, got {unit_id}")
    if not 1 <= count <= MAX_REGISTERS or not 0 <= start <= 0xFFFF:
        raise ValueError(f"Modbus read of {count} registers at {start} is out of range")
    return _FRAMER.buildFrame(READ_FUNCTIONS[function](address=start, count=count, dev_id=unit_id))


def _frame_size(decoder: DecodePDU, data: bytes) -> int | None:
    """Bytes of the RTU frame starting at data[0] as pymodbus sizes it; 0 = not enough bytes yet.

    None when pymodbus knows no such PDU. pymodbus parses hostile bytes here, so any of its
    exceptions just means "not a frame".
    """
    try:
        cls = decoder.lookupPduClass(data)
        return cls.calculateRtuFrameSize(data) if cls else None
    except Exception:  # third-party parser on arbitrary bytes
        return None


def _decode_pdu(decoder: DecodePDU, frame: bytes) -> ModbusPDU | None:
    try:
        pdu = decoder.decode(frame[1:-2])
    except Exception:  # third-party parser on arbitrary bytes
        return None
    if pdu is not None:
        pdu.dev_id = frame[0]
    return pdu


def _reply_candidates(
    buf: bytes, unit_id: int, function: int, byte_counts: Collection[int] | None = None
) -> Iterator[tuple[int, int]]:
    """(start, size) wherever a reply from ``unit_id`` to ``function`` could begin; size 0 = not known yet.

    ``byte_counts`` narrows normal replies to the sizes the requests asked for, which keeps a TX
    echo of the request (``01 04 00 00 ...`` reads as a zero-length reply) from passing as one.
    """
    for i in range(len(buf) - 1):
        if buf[i] != unit_id or buf[i + 1] not in (function, function | 0x80):
            continue
        normal = buf[i + 1] == function
        if normal and byte_counts is not None and i + 2 < len(buf) and buf[i + 2] not in byte_counts:
            continue
        size = _frame_size(_RESPONSES, buf[i:])
        if size is not None:
            yield i, size


def reply_length(
    buf: bytes, unit_id: int, function: int, byte_counts: Collection[int] | None = None
) -> int | None:
    """Bytes up to the end of the reply in ``buf`` (noise and TX echo included), None while unknown.

    A CRC failure counts as the end only when it is the last thing received, so noise that happens
    to look like a short reply does not end the read early.
    """
    pending = False
    bad_end: int | None = None
    for start, size in _reply_candidates(buf, unit_id, function, byte_counts):
        end = start + size
        if size == 0 or end > len(buf):
            pending = True
        elif crc_ok(buf[start:end]):
            return end
        elif end == len(buf):
            bad_end = end
    return None if pending else bad_end


def decode_read_reply(buf: bytes, unit_id: int, function: int, count: int) -> list[int]:
    """The registers of the reply to a read of ``count`` registers; FrameError for anything else."""
    bad: bytes | None = None
    truncated = 0
    for start, size in _reply_candidates(buf, unit_id, function):
        if size == 0 or start + size > len(buf):
            truncated = max(truncated, size)
            continue
        frame = buf[start : start + size]
        if not crc_ok(frame):
            bad = bad or frame
            continue
        pdu = _decode_pdu(_RESPONSES, frame)
        if isinstance(pdu, ExceptionResponse):
            code = pdu.exception_code
            name = exception_name(code)
            raise FrameError(
                "error_reply",
                f"unit {unit_id} answered function {function:02X} with exception {code:02X} ({name})",
            )
        if pdu is None:
            continue
        if len(pdu.registers) != count:
            raise FrameError("unexpected", f"asked for {count} registers, got {len(pdu.registers)}")
        return list(pdu.registers)
    if bad is not None:
        calc = FramerRTU.compute_CRC(bad[:-2]).to_bytes(2, "big")
        raise FrameError(
            "checksum", f"Modbus CRC mismatch: frame has {bad[-2:].hex(' ')}, computed {calc.hex(' ')}"
        )
    if truncated:
        raise FrameError("truncated", f"Modbus reply cut short: {len(buf)} bytes received")
    try:
        other = parse_frame(buf)
    except FrameError:
        other = None
    if other is not None and other.direction == "response" and other.unit_id != unit_id:
        raise FrameError("address", f"reply from unit {other.unit_id}, expected unit {unit_id}")
    if other is not None and other.direction == "response":
        raise FrameError("unexpected", f"reply to function {other.function:02X}, expected {function:02X}")
    if not buf:
        raise FrameError("truncated", "no reply bytes")
    raise FrameError("garbage", f"no Modbus reply from unit {unit_id} in {len(buf)} bytes")


@dataclass(frozen=True, slots=True)
class RtuFrame:
    """Any Modbus RTU frame, for the field decoder."""

    unit_id: int
    function: int  # without the exception bit
    direction: str  # request | response
    pdu: ModbusPDU | None
    crc_ok: bool
    raw: bytes

    @property
    def exception_code(self) -> int | None:
        return self.pdu.exception_code if isinstance(self.pdu, ExceptionResponse) else None


def _interpretations(buf: bytes, start: int) -> Iterator[tuple[str, DecodePDU, int | None]]:
    if len(buf) - start < 4:
        return
    for direction, decoder in (("request", _REQUESTS), ("response", _RESPONSES)):
        if buf[start + 1] & 0x80 and direction == "request":
            continue
        yield direction, decoder, _frame_size(decoder, buf[start:])


def parse_frame(buf: bytes, strict: bool = True) -> RtuFrame:
    """The first frame in ``buf`` that pymodbus can decode with a good CRC.

    A frame is a request or a response depending on which reading gives the right length and CRC.
    With ``strict=False`` a frame of exactly the buffer's length with a wrong CRC is still decoded.
    """
    for start in range(len(buf)):
        found: list[RtuFrame] = []
        for direction, decoder, size in _interpretations(buf, start):
            if not size or start + size > len(buf):
                continue
            frame = buf[start : start + size]
            if crc_ok(frame) and (pdu := _decode_pdu(decoder, frame)) is not None:
                found.append(RtuFrame(frame[0], frame[1] & 0x7F, direction, pdu, True, frame))
        if found:
            exact = [f for f in found if len(f.raw) == len(buf) - start]
            return (exact or found)[0]
    sizes = [(d, dec, s) for d, dec, s in _interpretations(buf, 0)]
    for direction, decoder, size in sizes:
        if size == len(buf):
            calc = FramerRTU.compute_CRC(buf[:-2]).to_bytes(2, "big")
            if not strict:
                return RtuFrame(buf[0], buf[1] & 0x7F, direction, _decode_pdu(decoder, buf), False, buf)
            raise FrameError(
                "checksum", f"Modbus CRC mismatch: frame has {buf[-2:].hex(' ')}, computed {calc.hex(' ')}"
            )
    longer = [s for _, _, s in sizes if s and s > len(buf)]
    if longer:
        raise FrameError("truncated", f"Modbus frame announces {min(longer)} bytes, got {len(buf)}")
    if len(buf) < 4:
        raise FrameError("truncated", f"Modbus frame needs at least 4 bytes, got {len(buf)}")
    raise FrameError("garbage", "no Modbus RTU frame with a valid CRC found")


# --- profiles ---------------------------------------------------------------------------------------


class ProfileError(ValueError):
    """A meter profile that cannot be used; the message names the file and entry."""


@dataclass(frozen=True, slots=True)
class Register:
    """One value in a meter's register map."""

    name: str
    address: int
    quantity: str | None = None
    function: int = 4
    data_type: str = "float32"
    byte_order: str = "big"  # within each register
    word_order: str = "big"  # between registers
    scale: float = 1.0
    unit: str | None = None

    @property
    def count(self) -> int:
        return {"int16": 1, "uint16": 1, "int64": 4, "uint64": 4, "float64": 4}.get(self.data_type, 2)

    def decode(self, words: Sequence[int]) -> float:
        """The value in the register's unit, scale applied (float32 kept to its 7 significant digits)."""
        if self.byte_order == "little":
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        raw = ModbusClientMixin.convert_from_registers(
            list(words), DATA_TYPES[self.data_type], self.word_order
        )  # type: ignore[arg-type]
        value = float(raw)  # type: ignore[arg-type]
        if self.data_type == "float32" and math.isfinite(value):
            value = float(f"{value:.7g}")
        return value * self.scale if self.scale != 1.0 else value


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    registers: tuple[Register, ...]
    description: str = ""
    max_count: int = MAX_REGISTERS
    max_gap: int = 0
    serial: dict[str, Any] = field(default_factory=dict)
    inter_request_delay_s: float = 0.0


_REGISTER_KEYS = {
    "name",
    "address",
    "quantity",
    "function",
    "type",
    "byte_order",
    "word_order",
    "scale",
    "unit",
}
_PROFILE_KEYS = {"name", "description", "manufacturer", "model", "defaults", "registers", "max_count",
                 "max_gap", "serial", "inter_request_delay_s"}  # fmt: skip


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ProfileError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ProfileError(f"{what}: expected an integer, got {value!r}")


def _register(entry: Any, defaults: dict[str, Any], where: str) -> Register:
    if not isinstance(entry, dict):
        raise ProfileError(f"{where}: a register entry must be a mapping")
    unknown = set(entry) - _REGISTER_KEYS
    if unknown:
        raise ProfileError(f"{where}: unknown keys {sorted(unknown)}")
    merged = {**defaults, **entry}
    name = merged.get("name")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}: every register needs a name")
    where = f"{where} ({name})"
    if "address" not in merged:
        raise ProfileError(f"{where}: missing address")
    address = _int(merged["address"], f"{where} address")
    function = _int(merged.get("function", 4), f"{where} function")
    data_type = str(merged.get("type", "float32"))
    byte_order = str(merged.get("byte_order", "big"))
    word_order = str(merged.get("word_order", "big"))
    quantity = merged.get("quantity")
    unit = merged.get("unit")
    scale = merged.get("scale", 1.0)
    if function not in READ_FUNCTIONS:
        raise ProfileError(f"{where}: function must be 3 (holding) or 4 (input), got {function}")
    if data_type not in DATA_TYPES:
        raise ProfileError(f"{where}: type must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    if byte_order not in ("big", "little") or word_order not in ("big", "little"):
        raise ProfileError(f"{where}: byte_order and word_order must be 'big' or 'little'")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale == 0
    ):
        raise ProfileError(f"{where}: scale must be a non-zero number, got {scale!r}")
    if unit is not None and not isinstance(unit, str):
        raise ProfileError(f"{where}: unit must be text, got {unit!r}")
    if quantity is not None:
        if quantity not in QUANTITIES:
            raise ProfileError(f"{where}: unknown quantity {quantity!r}")
        try:
            convert(QUANTITIES[quantity], 1.0, unit)
        except UnitError as exc:
            raise ProfileError(f"{where}: {exc}") from None
    reg = Register(name, address, quantity, function, data_type, byte_order, word_order, float(scale), unit)
    if not 0 <= address or address + reg.count > 0x10000:
        raise ProfileError(f"{where}: address {address} out of range")
    return reg


def parse_profile(data: Any, source: str = "profile") -> Profile:
    """Validate a profile document (already loaded from YAML)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a mapping")
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise ProfileError(f"{source}: unknown keys {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - (_REGISTER_KEYS - {"name", "address", "quantity"}):
        raise ProfileError(
            f"{source}: defaults may set only function, type, byte_order, word_order, scale, unit"
        )
    entries = data.get("registers")
    if not isinstance(entries, list) or not entries:
        raise ProfileError(f"{source}: registers must be a non-empty list")
    registers = tuple(_register(e, defaults, f"{source} registers[{i}]") for i, e in enumerate(entries))
    names = [r.name for r in registers]
    if len(set(names)) != len(names):
        raise ProfileError(f"{source}: register names must be unique")
    mapped = [r.quantity for r in registers if r.quantity]
    if len(set(mapped)) != len(mapped):
        raise ProfileError(f"{source}: each quantity may be mapped by one register only")
    max_count = _int(data.get("max_count", MAX_REGISTERS), f"{source} max_count")
    max_gap = _int(data.get("max_gap", 0), f"{source} max_gap")
    if not 1 <= max_count <= MAX_REGISTERS or max_gap < 0:
        raise ProfileError(f"{source}: max_count must be 1..{MAX_REGISTERS} and max_gap >= 0")
    serial = data.get("serial") or {}
    if not isinstance(serial, dict):
        raise ProfileError(f"{source}: serial must be a mapping")
    delay = data.get("inter_request_delay_s", 0.0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ProfileError(f"{source}: inter_request_delay_s must be a number >= 0")
    name = str(data.get("name") or source)
    return Profile(
        name, registers, str(data.get("description", "")), max_count, max_gap, serial, float(delay)
    )


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``eastron_sdm630``) or any profile file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown Modbus profile {name_or_path!r} (shipped: {', '.join(profile_names())})"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from None
    return parse_profile(data, path.stem)


# --- read planning ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering several registers of the map."""

    function: int
    start: int
    count: int
    registers: tuple[Register, ...]

    def values(self, words: Sequence[int]) -> dict[str, float]:
        """Quantity -> value in the quantity's canonical unit; non-finite values are left out."""
        out: dict[str, float] = {}
        for reg in self.registers:
            if reg.quantity is None:
                continue
            offset = reg.address - self.start
            value = reg.decode(words[offset : offset + reg.count])
            if math.isfinite(value):
                out[reg.quantity] = round(convert(QUANTITIES[reg.quantity], value, reg.unit), 9)
        return out


def plan_reads(
    registers: Sequence[Register], max_count: int = MAX_REGISTERS, max_gap: int = 0
) -> list[ReadBlock]:
    """Group registers into as few requests as possible.

    Registers of one function code are merged while the request stays within ``max_count``
    registers and no hole between them is wider than ``max_gap`` (meters may reject reads that
    span unmapped addresses, so bridging holes is a per-profile choice).
    """
    blocks: list[ReadBlock] = []
    for function in sorted({r.function for r in registers}):
        regs = sorted((r for r in registers if r.function == function), key=lambda r: (r.address, r.count))
        group: list[Register] = []
        start = end = 0
        for reg in regs:
            reg_end = reg.address + reg.count
            if group and reg.address - end <= max_gap and max(end, reg_end) - start <= max_count:
                group.append(reg)
                end = max(end, reg_end)
                continue
            if group:
                blocks.append(ReadBlock(function, start, end - start, tuple(group)))
            group, start, end = [reg], reg.address, reg_end
        if group:
            blocks.append(ReadBlock(function, start, end - start, tuple(group)))
    return blocks
