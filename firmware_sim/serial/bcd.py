"""BCD and checksum helpers shared by the DL/T 645 and CJ/T 188 meter models.

Written here rather than borrowed from the gateway so that the simulators check the gateway's codecs
instead of mirroring them.
"""

from __future__ import annotations


def to_bcd_le(value: int, nbytes: int, *, signed: bool = False) -> bytes:
    """``value`` as ``nbytes`` of packed BCD, least significant byte first.

    Signed values use sign-and-magnitude: bit 7 of the most significant byte is the sign, as in
    DL/T 645-2007 (so the magnitude is limited to 7 in the top digit).
    """
    negative = value < 0
    magnitude = -value if negative else value
    limit = 10 ** (2 * nbytes)
    if signed:
        limit = 8 * 10 ** (2 * nbytes - 1)
    if magnitude >= limit:
        raise ValueError(f"{value} does not fit in {nbytes} BCD bytes")
    digits = f"{magnitude:0{2 * nbytes}d}"
    big_endian = bytearray(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
    if signed and negative:
        big_endian[0] |= 0x80
    return bytes(reversed(big_endian))


def from_bcd_le(data: bytes) -> int:
    """Unsigned packed BCD, least significant byte first (used to read request fields)."""
    digits = "".join(f"{b:02X}" for b in reversed(data))
    if not digits.isdigit():
        raise ValueError(f"not BCD: {data.hex(' ')}")
    return int(digits)


def address_to_wire(address: str, nbytes: int) -> bytes:
    """Printed meter number (most significant digits first) to wire order (low byte first)."""
    if len(address) != 2 * nbytes or not address.isdigit():
        raise ValueError(f"address must be {2 * nbytes} decimal digits, got {address!r}")
    return bytes(int(address[i : i + 2], 16) for i in range(len(address) - 2, -1, -2))


def wire_to_address(wire: bytes) -> str:
    """Wire-order address bytes to the printed form (wildcard bytes print as ``AA``)."""
    return "".join(f"{b:02X}" for b in reversed(wire))


def sum8(data: bytes) -> int:
    return sum(data) & 0xFF
