"""DL/T 645-2007 (and the 1997 identifiers) codec: bytes to typed frames and readings, and back.

Pure functions only. Addresses are handled as the 12 characters printed on the meter (the wire
carries them low byte first), data bytes are returned with the +33H offset already removed, and
values come out in the unit the standard defines for each data identifier (DI).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, time

from gateway.protocols import sumframe
from gateway.protocols.base import FrameError

OFFSET = 0x33
BROADCAST = "999999999999"
WILDCARD = "AAAAAAAAAAAA"

# Control byte: D7 direction (1 = meter to master), D6 abnormal reply, D5 follow-up frame, D4..D0 function.
DIRECTION = 0x80
ABNORMAL = 0x40
MORE = 0x20
FUNCTION = 0x1F

TIME_SYNC = 0x08
READ = 0x11
READ_FOLLOW_UP = 0x12
READ_ADDRESS = 0x13
WRITE = 0x14
WRITE_ADDRESS = 0x15
READ_1997 = 0x01
READ_FOLLOW_UP_1997 = 0x02

FUNCTIONS = {
    READ_1997: "read data (1997)",
    READ_FOLLOW_UP_1997: "read follow-up data (1997)",
    0x03: "re-read data (1997)",
    0x04: "write data (1997)",
    TIME_SYNC: "broadcast time sync",
    0x0A: "write address (1997)",
    0x0C: "change baud rate (1997)",
    0x0F: "change password (1997)",
    0x10: "clear maximum demand (1997)",
    READ: "read data",
    READ_FOLLOW_UP: "read follow-up data",
    READ_ADDRESS: "read communication address",
    WRITE: "write data",
    WRITE_ADDRESS: "write communication address",
    0x16: "freeze",
    0x17: "change baud rate",
    0x18: "change password",
    0x19: "clear maximum demand",
    0x1A: "clear meter",
    0x1B: "clear events",
    0x1C: "relay control",
}

ERROR_BITS_2007 = (
    "other error",
    "no requested data",
    "password error or not authorised",
    "baud rate cannot be changed",
    "too many year time zones",
    "too many daily time slots",
    "too many tariffs",
)
ERROR_BITS_1997 = (
    "illegal data",
    "wrong data identifier",
    "password error",
    "reserved",
    "too many year time zones",
    "too many daily time slots",
    "too many tariffs",
)


def _header_ok(header: bytes) -> bool:
    return header[7] == sumframe.START


LAYOUT = sumframe.Layout("DL/T 645", length_pos=9, header_ok=_header_ok, max_data=200)


# --- addresses -------------------------------------------------------------------------------------


def normalize_address(address: str | int) -> str:
    """The 12 printed characters of a meter address; shorter numbers are padded with zeros.

    Digits and the wildcard letter A are allowed (abbreviated addresses fill high bytes with AA).
    """
    text = f"{address:012d}" if isinstance(address, int) else address.replace(" ", "").upper()
    if isinstance(address, int) and address < 0:
        raise ValueError(f"DL/T 645 address must not be negative: {address}")
    if len(text) < 12 and text.isdigit():
        text = text.zfill(12)
    if len(text) != 12 or any(c not in "0123456789A" for c in text):
        raise ValueError(f"DL/T 645 address must be up to 12 digits (or A for wildcard), got {address!r}")
    return text


def address_to_wire(address: str | int) -> bytes:
    return bytes.fromhex(normalize_address(address))[::-1]


def address_from_wire(wire: bytes) -> str:
    return wire[::-1].hex().upper()


# --- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645 frame; ``data`` is without the +33H offset."""

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
    def follow_up(self) -> bool:
        return bool(self.control & MORE)

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def version(self) -> str:
        """Which edition the function code belongs to (read functions differ, others are shared)."""
        return "1997" if self.function in (READ_1997, READ_FOLLOW_UP_1997, 0x03, 0x04) else "2007"


def encode_frame(frame: Frame, preamble: int = 4) -> bytes:
    """Wire bytes of ``frame``, led by ``preamble`` FE wake-up bytes (not part of the checksum)."""
    if len(frame.data) > 255:
        raise ValueError("DL/T 645 data field is at most 255 bytes")
    body = (
        bytes([sumframe.START])
        + address_to_wire(frame.address)
        + bytes([sumframe.START, frame.control, len(frame.data)])
        + bytes((b + OFFSET) & 0xFF for b in frame.data)
    )
    return bytes([sumframe.PREAMBLE]) * preamble + body + bytes([sumframe.checksum(body), sumframe.END])


def _frame_of(raw: bytes) -> Frame:
    length = raw[9]
    return Frame(
        address_from_wire(raw[1:7]), raw[8], bytes((b - OFFSET) & 0xFF for b in raw[10 : 10 + length])
    )


def _raw_is_reply(raw: bytes) -> bool:
    return bool(raw[8] & DIRECTION)


def parse_frame(buf: bytes, *, replies_only: bool = False, strict: bool = True) -> Frame:
    """The first frame in ``buf``, past FE preambles, noise and (with ``replies_only``) TX echoes."""
    accept = _raw_is_reply if replies_only else None
    return _frame_of(sumframe.extract(buf, LAYOUT, accept, strict=strict))


def reply_length(buf: bytes) -> int | None:
    """How many bytes of ``buf`` the reply takes (leading noise included), or None if not yet known."""
    return sumframe.reply_length(buf, LAYOUT, _raw_is_reply)


# --- data identifiers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataItem:
    """What a DI returns: element size and BCD format, unit, and the campusmon quantity per element.

    ``quantities`` has one entry per element (None where the vocabulary has no name for it). A
    ``variable`` block returns as many elements as the meter has (e.g. total plus its tariffs).
    """

    di: int
    version: str
    name: str
    size: int
    decimals: int = 0
    unit: str = ""
    signed: bool = False
    quantities: tuple[str | None, ...] = (None,)
    variable: bool = False
    kind: str = "value"  # value | date | time | digits

    @property
    def di_text(self) -> str:
        return format_di(self.di, self.version)


def format_di(di: int, version: str = "2007") -> str:
    return f"{di:08X}" if version == "2007" else f"{di:04X}"


def _items() -> dict[tuple[str, int], DataItem]:
    items: list[DataItem] = []
    add = items.append
    phases = ("A", "B", "C")
    # 2007: energy (4 bytes XXXXXX.XX kWh)
    add(DataItem(0x00000000, "2007", "combined active energy, total", 4, 2, "kWh", True))
    add(DataItem(0x0000FF00, "2007", "combined active energy block", 4, 2, "kWh", True, variable=True))
    for base, label, total in (
        (0x00010000, "import", "energy_kwh"),
        (0x00020000, "export", "export_energy_kwh"),
    ):
        add(DataItem(base, "2007", f"{label} active energy, total", 4, 2, "kWh", quantities=(total,)))
        for t in range(1, 5):
            add(DataItem(base + (t << 8), "2007", f"{label} active energy, tariff {t}", 4, 2, "kWh"))
        block = base | 0xFF00
        add(DataItem(block, "2007", f"{label} active energy block (total, tariffs)", 4, 2, "kWh",
                     quantities=(total,), variable=True))  # fmt: skip
    # 2007: instantaneous values
    per_phase = (
        (0x02010000, "voltage", 2, 1, "V", False, "voltage_{}_v"),
        (0x02020000, "current", 3, 3, "A", True, "current_{}_a"),
    )
    for base, label, size, dec, unit, signed, qname in per_phase:
        names = tuple(qname.format(f"l{i}") for i in (1, 2, 3))
        for i, ph in enumerate(phases):
            add(
                DataItem(
                    base + ((i + 1) << 8), "2007", f"phase {ph} {label}", size, dec, unit, signed, (names[i],)
                )
            )
        add(DataItem(base | 0xFF00, "2007", f"{label} block (A, B, C)", size, dec, unit, signed, names))
    with_total = (
        (0x02030000, "active power", 3, 4, "kW", ("power_w", "power_l1_w", "power_l2_w", "power_l3_w")),
        (0x02040000, "reactive power", 3, 4, "kvar", (None,) * 4),
        (0x02050000, "apparent power", 3, 4, "kVA", (None,) * 4),
        (0x02060000, "power factor", 2, 3, "", ("power_factor", None, None, None)),
    )
    for base, label, size, dec, unit, names in with_total:
        add(DataItem(base, "2007", f"{label}, total", size, dec, unit, True, (names[0],)))
        for i, ph in enumerate(phases):
            add(
                DataItem(
                    base + ((i + 1) << 8),
                    "2007",
                    f"phase {ph} {label}",
                    size,
                    dec,
                    unit,
                    True,
                    (names[i + 1],),
                )
            )
        add(DataItem(base | 0xFF00, "2007", f"{label} block (total, A, B, C)", size, dec, unit, True, names))
    add(DataItem(0x02800001, "2007", "neutral current", 3, 3, "A", True))
    add(DataItem(0x02800002, "2007", "grid frequency", 2, 2, "Hz", quantities=("frequency_hz",)))
    add(DataItem(0x02800007, "2007", "meter temperature", 2, 1, "°C", True))
    add(DataItem(0x04000101, "2007", "date and weekday", 4, kind="date"))
    add(DataItem(0x04000102, "2007", "time", 3, kind="time"))
    add(DataItem(0x04000401, "2007", "communication address", 6, kind="digits"))
    add(DataItem(0x04000402, "2007", "meter number", 6, kind="digits"))
    # 1997: two-byte DIs, other formats, no sign bits
    for base, label, total in ((0x9010, "import", "energy_kwh"), (0x9020, "export", "export_energy_kwh")):
        add(DataItem(base, "1997", f"{label} active energy, total", 4, 2, "kWh", quantities=(total,)))
        for t in range(1, 5):
            add(DataItem(base + t, "1997", f"{label} active energy, tariff {t}", 4, 2, "kWh"))
        add(DataItem(base | 0xF, "1997", f"{label} active energy block (total, tariffs)", 4, 2, "kWh",
                     quantities=(total,), variable=True))  # fmt: skip
    for base, label, size, dec, unit, qname in (
        (0xB610, "voltage", 2, 0, "V", "voltage_{}_v"),
        (0xB620, "current", 2, 2, "A", "current_{}_a"),
    ):
        names = tuple(qname.format(f"l{i}") for i in (1, 2, 3))
        for i, ph in enumerate(phases):
            add(
                DataItem(base + i + 1, "1997", f"phase {ph} {label}", size, dec, unit, quantities=(names[i],))
            )
        add(DataItem(base | 0xF, "1997", f"{label} block (A, B, C)", size, dec, unit, quantities=names))
    for base, label, size, dec, unit, names in (
        (0xB630, "active power", 3, 4, "kW", ("power_w", "power_l1_w", "power_l2_w", "power_l3_w")),
        (0xB650, "power factor", 2, 3, "", ("power_factor", None, None, None)),
    ):
        add(DataItem(base, "1997", f"{label}, total", size, dec, unit, quantities=(names[0],)))
        for i, ph in enumerate(phases):
            add(
                DataItem(
                    base + i + 1, "1997", f"phase {ph} {label}", size, dec, unit, quantities=(names[i + 1],)
                )
            )
        add(DataItem(base | 0xF, "1997", f"{label} block", size, dec, unit, quantities=names, variable=True))
    add(DataItem(0xC010, "1997", "date and weekday", 4, kind="date"))
    add(DataItem(0xC011, "1997", "time", 3, kind="time"))
    return {(i.version, i.di): i for i in items}


DATA_ITEMS: dict[tuple[str, int], DataItem] = _items()

# What a poll reads when the configuration names no DIs: few frames, every quantity the meter has.
DEFAULT_DIS = {
    "2007": (0x00010000, 0x0201FF00, 0x0202FF00, 0x0203FF00, 0x02060000, 0x02800002),
    "1997": (0x9010, 0xB61F, 0xB62F, 0xB630, 0xB650),
}


def parse_di(text: str | int, version: str = "2007") -> int:
    """A DI from config text such as ``02 01 FF 00`` or ``0201FF00`` (most significant first)."""
    digits = 8 if version == "2007" else 4
    if isinstance(text, int):
        value = text
    else:
        clean = text.replace(" ", "").replace("-", "").replace("_", "")
        if len(clean) != digits:
            raise ValueError(f"DL/T 645-{version} DI must be {digits} hex digits, got {text!r}")
        try:
            value = int(clean, 16)
        except ValueError:
            raise ValueError(f"DL/T 645 DI is not hex: {text!r}") from None
    if not 0 <= value < 1 << (4 * digits):
        raise ValueError(f"DL/T 645-{version} DI out of range: {text!r}")
    return value


def data_item(di: int, version: str = "2007") -> DataItem | None:
    return DATA_ITEMS.get((version, di))


# --- BCD -------------------------------------------------------------------------------------------


def bcd_byte(n: int) -> int:
    return ((n // 10) << 4) | (n % 10)


def bcd_number(raw: bytes, signed: bool = False) -> int | None:
    """Little-endian BCD to an integer; sign and magnitude in bit 7 of the top byte when signed.

    None means the field is not BCD (meters send FF or EE for items they do not have).
    """
    if not raw:
        return None
    b = bytearray(raw)
    negative = signed and bool(b[-1] & 0x80)
    if negative:
        b[-1] &= 0x7F
    digits = b[::-1].hex()
    if not digits.isdigit():
        return None
    value = int(digits)
    return -value if negative else value


def bcd_value(raw: bytes, decimals: int, signed: bool) -> float | None:
    number = bcd_number(raw, signed)
    if number is None:
        return None
    return number / 10**decimals if number else 0.0


def _date(raw: bytes) -> tuple[date | None, int | None]:
    """Sent WW DD MM YY."""
    parts = [bcd_number(raw[i : i + 1]) for i in range(4)]
    if any(p is None for p in parts):
        return None, None
    ww, dd, mm, yy = (int(p or 0) for p in parts)
    try:
        return date(2000 + yy, mm, dd), ww
    except ValueError:
        return None, ww


def _time(raw: bytes) -> time | None:
    """Sent ss mm hh."""
    parts = [bcd_number(raw[i : i + 1]) for i in range(3)]
    if any(p is None for p in parts):
        return None
    ss, mi, hh = (int(p or 0) for p in parts)
    try:
        return time(hh, mi, ss)
    except ValueError:
        return None


# --- requests --------------------------------------------------------------------------------------


def _di_bytes(di: int, version: str) -> bytes:
    return di.to_bytes(4 if version == "2007" else 2, "little")


def encode_read(address: str | int, di: int, version: str = "2007", preamble: int = 4) -> bytes:
    """Read data: 11H with a 4-byte DI (2007) or 01H with a 2-byte DI (1997)."""
    function = READ if version == "2007" else READ_1997
    return encode_frame(Frame(normalize_address(address), function, _di_bytes(di, version)), preamble)


def encode_read_follow_up(address: str | int, di: int, seq: int, preamble: int = 4) -> bytes:
    """12H: ask for frame ``seq`` (1, 2, ...) of a multi-frame reply."""
    data = _di_bytes(di, "2007") + bytes([seq & 0xFF])
    return encode_frame(Frame(normalize_address(address), READ_FOLLOW_UP, data), preamble)


def encode_read_address(preamble: int = 4) -> bytes:
    """13H to the wildcard address: only valid with one meter on the bus."""
    return encode_frame(Frame(WILDCARD, READ_ADDRESS), preamble)


def encode_time_sync(when: datetime, preamble: int = 4) -> bytes:
    """08H broadcast time set (ss mm hh DD MM YY); meters send no reply."""
    fields = (when.second, when.minute, when.hour, when.day, when.month, when.year % 100)
    return encode_frame(Frame(BROADCAST, TIME_SYNC, bytes(bcd_byte(f) for f in fields)), preamble)


def decode_time_sync(frame: Frame) -> datetime | None:
    if frame.function != TIME_SYNC or len(frame.data) != 6:
        return None
    parts = [bcd_number(frame.data[i : i + 1]) for i in range(6)]
    if any(p is None for p in parts):
        return None
    ss, mi, hh, dd, mm, yy = (int(p or 0) for p in parts)
    try:
        return datetime(2000 + yy, mm, dd, hh, mi, ss)
    except ValueError:
        return None


# --- replies ---------------------------------------------------------------------------------------


def error_bits(frame: Frame) -> tuple[str, ...]:
    """Names of the bits set in an abnormal reply's error byte."""
    if not frame.data:
        return ()
    names = ERROR_BITS_1997 if frame.version == "1997" else ERROR_BITS_2007
    word = frame.data[0]
    bits = tuple(name for i, name in enumerate(names) if word & (1 << i))
    return bits or (f"unknown error word {word:02X}",)


def raise_if_error(frame: Frame) -> None:
    if frame.is_error:
        code = f"{frame.data[0]:02X}" if frame.data else "none"
        named = ", ".join(error_bits(frame))
        raise FrameError(
            "error_reply", f"meter {frame.address} answered {frame.control:02X} (error {code}: {named})"
        )


@dataclass(frozen=True, slots=True)
class ReadReply:
    """The payload of a read reply: values in the DI's unit, None where the meter sent no BCD."""

    address: str
    version: str
    di: int
    item: DataItem | None
    values: tuple[float | None, ...] = ()
    when: date | time | None = None
    weekday: int | None = None
    digits: str | None = None
    seq: int | None = None
    follow_up: bool = False
    raw: bytes = b""


def decode_values(item: DataItem, raw: bytes) -> tuple[float | None, ...]:
    if len(raw) % item.size:
        raise FrameError(
            "unexpected", f"DI {item.di_text}: {len(raw)} data bytes is not a multiple of {item.size}"
        )
    return tuple(
        bcd_value(raw[i : i + item.size], item.decimals, item.signed) for i in range(0, len(raw), item.size)
    )


def decode_read(frame: Frame) -> ReadReply:
    """Decode a read reply (91H/B1H/92H/B2H, or 81H for 1997); abnormal replies raise ``error_reply``."""
    raise_if_error(frame)
    version = frame.version
    if not frame.is_reply or frame.function not in (READ, READ_FOLLOW_UP, READ_1997):
        raise FrameError("unexpected", f"control {frame.control:02X} is not a read reply")
    di_len = 4 if version == "2007" else 2
    if len(frame.data) < di_len:
        raise FrameError("truncated", f"read reply has {len(frame.data)} data bytes, no room for the DI")
    di = int.from_bytes(frame.data[:di_len], "little")
    body = frame.data[di_len:]
    seq = None
    if frame.function == READ_FOLLOW_UP:
        if not body:
            raise FrameError("truncated", "follow-up reply without its sequence byte")
        body, seq = body[:-1], body[-1]
    item = data_item(di, version)
    base = ReadReply(frame.address, version, di, item, seq=seq, follow_up=frame.follow_up, raw=body)
    if item is None:
        return base
    if item.kind == "value":
        partial = frame.follow_up or frame.function == READ_FOLLOW_UP
        if not item.variable and not partial and len(body) != item.size * len(item.quantities):
            raise FrameError(
                "unexpected",
                f"DI {item.di_text} ({item.name}): expected {item.size * len(item.quantities)} data bytes, "
                f"got {len(body)}",
            )
        return replace(base, values=decode_values(item, body))
    if len(body) != item.size:
        raise FrameError("unexpected", f"DI {item.di_text} ({item.name}): expected {item.size} data bytes")
    if item.kind == "date":
        day, weekday = _date(body)
        return replace(base, when=day, weekday=weekday)
    if item.kind == "time":
        return replace(base, when=_time(body))
    return replace(base, digits=body[::-1].hex().upper())


def decode_address_reply(frame: Frame) -> str:
    """The address a meter gives in its 93H reply to a read-address request."""
    raise_if_error(frame)
    if frame.control != DIRECTION | READ_ADDRESS:
        raise FrameError("unexpected", f"control {frame.control:02X} is not a read-address reply (93)")
    if len(frame.data) != 6:
        raise FrameError("unexpected", f"read-address reply carries {len(frame.data)} bytes, expected 6")
    return address_from_wire(frame.data)
