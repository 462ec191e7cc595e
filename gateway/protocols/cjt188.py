"""CJ/T 188-2004 and -2018 codec (water, heat and gas meters): bytes to typed frames and back.

Pure functions only. What varies between real meters -- the byte order of the data identifier,
whether the unit code comes before or after a value, the status bit map -- is a ``Cjt188Model``,
so a new meter model is a data change, not a code change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.protocols import sumframe
from gateway.protocols.base import FrameError
from gateway.protocols.dlt645 import bcd_number

WILDCARD_TYPE = 0xAA
WILDCARD = "AAAAAAAAAAAAAA"

METER_TYPES = {
    0x10: "cold water",
    0x11: "domestic hot water",
    0x12: "direct-drinking water",
    0x13: "reclaimed water",
    0x20: "heat meter (heat)",
    0x21: "heat meter (cooling)",
    0x22: "heat meter (heat and cooling)",
    0x30: "gas",
    0x40: "custom / electricity",
    WILDCARD_TYPE: "wildcard",
}
METER_TYPE_NAMES = {
    "cold_water": 0x10,
    "hot_water": 0x11,
    "drinking_water": 0x12,
    "reclaimed_water": 0x13,
    "heat": 0x20,
    "cooling": 0x21,
    "heat_cooling": 0x22,
    "gas": 0x30,
}
HEAT_TYPES = frozenset({0x20, 0x21, 0x22})
GAS_TYPES = frozenset({0x30})
WATER_TYPES = frozenset({0x10, 0x11, 0x12, 0x13})


def carrier(meter_type: int) -> str:
    """What a meter type measures, as a campusmon meter kind: water, gas or heat."""
    if meter_type in HEAT_TYPES:
        return "heat"
    if meter_type in GAS_TYPES:
        return "gas"
    if meter_type in WATER_TYPES:
        return "water"
    raise ValueError(f"CJ/T 188 meter type {meter_type:02X}H is not a water, gas or heat meter")

DIRECTION = 0x80
ABNORMAL = 0x40
FUNCTION = 0x3F
READ = 0x01
READ_ADDRESS = 0x03
WRITE = 0x04
FUNCTIONS = {
    READ: "read data",
    READ_ADDRESS: "read address",
    WRITE: "write data",
    0x09: "read key version",
    0x15: "write address",
    0x16: "write motor sync data",
}

DI_METER_DATA = 0x901F
DI_ADDRESS = 0x810A
KNOWN_DIS = frozenset({DI_METER_DATA, DI_ADDRESS, 0xA017, 0xA018})

# Unit code -> (label, canonical unit, factor to canonical).
UNITS: dict[int, tuple[str, str, float]] = {
    0x01: ("J", "kWh", 1 / 3.6e6),
    0x02: ("Wh", "kWh", 1e-3),
    0x05: ("kWh", "kWh", 1.0),
    0x08: ("MWh", "kWh", 1e3),
    0x0A: ("MWh*100", "kWh", 1e5),
    0x0B: ("kJ", "kWh", 1 / 3.6e3),
    0x0E: ("MJ", "kWh", 1 / 3.6),
    0x11: ("GJ", "kWh", 1e3 / 3.6),
    0x13: ("GJ*100", "kWh", 1e5 / 3.6),
    0x14: ("W", "kW", 1e-3),
    0x17: ("kW", "kW", 1.0),
    0x1A: ("MW", "kW", 1e3),
    0x29: ("L", "m3", 1e-3),
    0x2C: ("m3", "m3", 1.0),
    0x32: ("L/h", "m3/h", 1e-3),
    0x35: ("m3/h", "m3/h", 1.0),
}


@dataclass(frozen=True, slots=True)
class Cjt188Model:
    """How one meter model deviates: DI order, unit placement, status bits, sequence numbers."""

    name: str = "2004"
    di_order: str = "big"  # big: 90 1F on the wire (2004); little: 1F 90 (2018)
    unit_first: bool = False  # unit code precedes each value (seen on JY heat meters)
    valve_mask: int = 0x03
    valve_states: tuple[tuple[int, str], ...] = ((0, "open"), (1, "closed"), (3, "abnormal"))
    battery_mask: int = 0x04
    increment_ser: bool = True

    def __post_init__(self) -> None:
        if self.di_order not in ("big", "little"):
            raise ValueError(f"di_order must be 'big' or 'little', got {self.di_order!r}")
        if not 0 < self.valve_mask <= 0xFF or not 0 <= self.battery_mask <= 0xFF:
            raise ValueError("valve_mask must be 1..FF and battery_mask 0..FF")

    def valve(self, st1: int) -> str:
        shift = (self.valve_mask & -self.valve_mask).bit_length() - 1
        code = (st1 & self.valve_mask) >> shift
        return dict(self.valve_states).get(code, f"unknown ({code})")

    def battery_low(self, st1: int) -> bool:
        return bool(st1 & self.battery_mask)


MODELS: dict[str, Cjt188Model] = {
    m.name: m
    for m in (
        Cjt188Model("2004"),
        Cjt188Model("2018", di_order="little"),
        Cjt188Model("jy-heat", unit_first=True),
        Cjt188Model("reversed-status", valve_mask=0xC0, battery_mask=0x20),
    )
}


def _header_ok(header: bytes) -> bool:
    return True


LAYOUT = sumframe.Layout("CJ/T 188", length_pos=10, header_ok=_header_ok)


# --- addresses and frames ---------------------------------------------------------------------------


def normalize_address(address: str | int) -> str:
    """The 14 printed characters (A6..A0); shorter numbers are padded with zeros."""
    if isinstance(address, int):
        if address < 0:
            raise ValueError(f"CJ/T 188 address must not be negative: {address}")
        text = f"{address:014d}"
    else:
        text = address.replace(" ", "").upper()
    if len(text) < 14 and text.isdigit():
        text = text.zfill(14)
    if len(text) != 14 or any(c not in "0123456789A" for c in text):
        raise ValueError(f"CJ/T 188 address must be up to 14 digits (or A for wildcard), got {address!r}")
    return text


def meter_type_code(meter_type: str | int) -> int:
    """A meter type from config: a name (``cold_water``), or a code (``0x10``, ``"10"``)."""
    if isinstance(meter_type, int):
        code = meter_type
    elif meter_type in METER_TYPE_NAMES:
        code = METER_TYPE_NAMES[meter_type]
    else:
        try:
            code = int(meter_type.removeprefix("0x"), 16)
        except ValueError:
            names = ", ".join(METER_TYPE_NAMES)
            raise ValueError(
                f"unknown CJ/T 188 meter type {meter_type!r} (use {names} or a hex code)"
            ) from None
    if code not in METER_TYPES:
        raise ValueError(f"unknown CJ/T 188 meter type code {code:02X}")
    return code


@dataclass(frozen=True, slots=True)
class Frame:
    meter_type: int
    address: str
    control: int
    data: bytes = b""

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & FUNCTION


def encode_frame(frame: Frame, preamble: int = 4) -> bytes:
    if len(frame.data) > 255:
        raise ValueError("CJ/T 188 data field is at most 255 bytes")
    body = (
        bytes([sumframe.START, frame.meter_type])
        + bytes.fromhex(normalize_address(frame.address))[::-1]
        + bytes([frame.control, len(frame.data)])
        + frame.data
    )
    return bytes([sumframe.PREAMBLE]) * preamble + body + bytes([sumframe.checksum(body), sumframe.END])


def _frame_of(raw: bytes) -> Frame:
    return Frame(raw[1], raw[2:9][::-1].hex().upper(), raw[9], raw[11 : 11 + raw[10]])


def _raw_is_reply(raw: bytes) -> bool:
    return bool(raw[9] & DIRECTION)


def parse_frame(buf: bytes, *, replies_only: bool = False, strict: bool = True) -> Frame:
    """The first frame in ``buf``, past FE preambles, noise and (with ``replies_only``) TX echoes."""
    accept = _raw_is_reply if replies_only else None
    return _frame_of(sumframe.extract(buf, LAYOUT, accept, strict=strict))


def reply_length(buf: bytes) -> int | None:
    return sumframe.reply_length(buf, LAYOUT, _raw_is_reply)


# --- data identifiers -------------------------------------------------------------------------------


def di_to_wire(di: int, order: str) -> bytes:
    return di.to_bytes(2, order)  # type: ignore[arg-type]


def di_from_wire(wire: bytes) -> tuple[int, str]:
    """The DI and the byte order it was sent in; either order is accepted for known DIs."""
    big = int.from_bytes(wire, "big")
    little = int.from_bytes(wire, "little")
    if big not in KNOWN_DIS and little in KNOWN_DIS:
        return little, "little"
    return big, "big"


def encode_read(
    meter_type: int, address: str | int, ser: int = 0, model: Cjt188Model = MODELS["2004"], preamble: int = 4
) -> bytes:
    """Read the current metering data (DI 901F) in the model's DI byte order."""
    data = di_to_wire(DI_METER_DATA, model.di_order) + bytes([ser & 0xFF])
    return encode_frame(Frame(meter_type, normalize_address(address), READ, data), preamble)


def encode_read_address(ser: int = 0, preamble: int = 4) -> bytes:
    """Read-address (DI 810A) to the all-AA wildcard: only valid with one meter on the bus."""
    data = di_to_wire(DI_ADDRESS, "big") + bytes([ser & 0xFF])
    return encode_frame(Frame(WILDCARD_TYPE, WILDCARD, READ_ADDRESS, data), preamble)


# --- replies ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """A value with its unit code; ``canonical`` is in ``canonical_unit`` (None if not convertible)."""

    value: float | None
    unit_code: int

    @property
    def unit(self) -> str:
        return UNITS[self.unit_code][0] if self.unit_code in UNITS else f"unknown unit {self.unit_code:02X}"

    @property
    def canonical_unit(self) -> str | None:
        return UNITS[self.unit_code][1] if self.unit_code in UNITS else None

    @property
    def canonical(self) -> float | None:
        if self.value is None or self.unit_code not in UNITS:
            return None
        return round(self.value * UNITS[self.unit_code][2], 9)


@dataclass(frozen=True, slots=True)
class Status:
    st1: int
    st2: int
    valve: str
    battery_low: bool


@dataclass(frozen=True, slots=True)
class MeterData:
    """Decoded 901F reply. Water and gas meters fill the flow fields, heat meters all of them."""

    meter_type: int
    address: str
    di_order: str
    ser: int
    current_flow: Measure | None = None
    settlement_flow: Measure | None = None
    clock: datetime | None = None
    status: Status | None = None
    heat: dict[str, Measure | float | None] = field(default_factory=dict)


def _bcd(raw: bytes, decimals: int) -> float | None:
    number = bcd_number(raw)
    return None if number is None else number / 10**decimals


def _clock(raw: bytes) -> datetime | None:
    """ss mm hh DD MM YYlo YYhi; meters without a clock send anything here."""
    parts = [bcd_number(raw[i : i + 1]) for i in range(7)]
    if any(p is None for p in parts):
        return None
    ss, mi, hh, dd, mm, ylo, yhi = (int(p or 0) for p in parts)
    try:
        return datetime(yhi * 100 + ylo, mm, dd, hh, mi, ss)
    except ValueError:
        return None


class _Reader:
    """Walks a reply's data field; running past its end is a truncated frame."""

    def __init__(self, data: bytes, unit_first: bool) -> None:
        self.data = data
        self.pos = 0
        self.unit_first = unit_first

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FrameError(
                "truncated", f"CJ/T 188 data field ends at {len(self.data)} bytes, needed {self.pos + n}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def measure(self, size: int, decimals: int) -> Measure:
        if self.unit_first:
            unit = self.take(1)[0]
            return Measure(_bcd(self.take(size), decimals), unit)
        raw = self.take(size)
        return Measure(_bcd(raw, decimals), self.take(1)[0])


WATER_DATA_LEN = 0x16
HEAT_DATA_LEN = 0x2E


def decode_meter_data(frame: Frame, model: Cjt188Model = MODELS["2004"]) -> MeterData:
    """Decode a 901F reply. The layout follows the data length (22 water/gas, 46 heat)."""
    if frame.is_error:
        raise FrameError(
            "error_reply",
            f"meter {frame.address} answered {frame.control:02X} (abnormal): {frame.data.hex(' ')}",
        )
    if frame.control != DIRECTION | READ:
        raise FrameError("unexpected", f"control {frame.control:02X} is not a read-data reply (81)")
    reader = _Reader(frame.data, model.unit_first)
    di, order = di_from_wire(reader.take(2))
    if di != DI_METER_DATA:
        raise FrameError("unexpected", f"reply carries DI {di:04X}, expected 901F")
    ser = reader.take(1)[0]
    if len(frame.data) == HEAT_DATA_LEN:
        heat: dict[str, Measure | float | None] = {
            "settlement_heat": reader.measure(4, 2),
            "current_heat": reader.measure(4, 2),
            "heat_power": reader.measure(4, 2),
            "flow_rate": reader.measure(4, 4),
        }
        flow = reader.measure(4, 2)
        heat["supply_temp_c"] = _bcd(reader.take(3), 2)
        heat["return_temp_c"] = _bcd(reader.take(3), 2)
        heat["work_hours"] = _bcd(reader.take(3), 0)
        clock = _clock(reader.take(7))
        st = reader.take(2)
        status = Status(st[0], st[1], model.valve(st[0]), model.battery_low(st[0]))
        return MeterData(frame.meter_type, frame.address, order, ser, flow, None, clock, status, heat)
    if len(frame.data) != WATER_DATA_LEN:
        raise FrameError(
            "unexpected", f"901F reply with {len(frame.data)} data bytes (expected 22 water/gas or 46 heat)"
        )
    current = reader.measure(4, 2)
    settlement = reader.measure(4, 2)
    clock = _clock(reader.take(7))
    st = reader.take(2)
    status = Status(st[0], st[1], model.valve(st[0]), model.battery_low(st[0]))
    return MeterData(frame.meter_type, frame.address, order, ser, current, settlement, clock, status)


def decode_address_reply(frame: Frame) -> tuple[int, str]:
    """(meter type, address) from the 83H reply to a read-address request."""
    if frame.control != DIRECTION | READ_ADDRESS:
        raise FrameError("unexpected", f"control {frame.control:02X} is not a read-address reply (83)")
    return frame.meter_type, frame.address
