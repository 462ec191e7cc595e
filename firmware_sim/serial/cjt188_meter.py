"""A simulated CJ/T 188 water or gas meter (cold water, type 10H, by default; gas is type 30H).

It answers read data 901F (current and settlement-day volume with their unit codes, the meter clock,
status bytes ST1 ST2), read address (03H, DI 810A) and the valve command (04H, DI A017). The data
identifier's byte order on the wire is a per-meter setting (``90 1F`` as in the 2004 edition, or
``1F 90`` as many meters send); by default the meter accepts either order in a request and answers in
its own. An unknown DI gets an abnormal reply (C0H | function, data = SER ST1 ST2).

The status bit layout is a per-model setting because vendors disagree: ``standard`` puts the valve in
ST1 D1D0 (00 open, 01 closed, 11 abnormal) and low battery in D2; ``msb`` uses the bit-reversed masks
C0H (valve) and 20H (battery) seen in one public header.
"""

from __future__ import annotations

import math
from typing import Literal

from campusmon.quantities import MeterKind
from firmware_sim.serial.bcd import address_to_wire, sum8, to_bcd_le
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.meter import INCOMPLETE, INVALID, SerialMeter
from firmware_sim.serial.model import GAS_PROFILES, WATER_PROFILES, WaterModel

WILDCARD = 0xAA
WATER_TYPES = (0x10, 0x11, 0x12, 0x13, 0x30)  # the types whose 901F reply has the water/gas layout
GAS_TYPE = 0x30
READ_DATA, READ_ADDRESS, WRITE_DATA = 0x01, 0x03, 0x04
DI_METER_DATA, DI_ADDRESS, DI_VALVE = 0x901F, 0x810A, 0xA017

# Unit code -> how many of that unit make one m3.
UNITS_PER_M3: dict[int, float] = {0x2C: 1.0, 0x29: 1000.0}
VALVE_BITS: dict[str, int] = {"open": 0b00, "closed": 0b01, "abnormal": 0b11}

DiOrder = Literal["901F", "1F90"]
StatusLayout = Literal["standard", "msb"]


def encode_frame(meter_type: int, address_wire: bytes, control: int, data: bytes, preamble: int = 0) -> bytes:
    body = bytes([0x68, meter_type, *address_wire, control, len(data)]) + data
    return b"\xfe" * preamble + body + bytes([sum8(body), 0x16])


class Cjt188Meter(SerialMeter):
    """A CJ/T 188 meter with a 14-digit address, driven by a :class:`WaterModel`."""

    protocol = "cjt188"

    def __init__(
        self,
        address: str,
        *,
        meter_type: int = 0x10,
        profile: str = "dorm",
        di_order: DiOrder = "901F",
        accept_any_di_order: bool = True,
        unit: int = 0x2C,
        status_layout: StatusLayout = "standard",
        seed: int = 0,
        clock: SimClock | None = None,
        tz: str = "UTC",
        preamble: int = 0,
        settlement_day: int = 1,
        initial_m3: float | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        super().__init__(address, seed=seed, clock=clock, tz=tz, turnaround_s=turnaround_s)
        if meter_type not in WATER_TYPES:
            raise ValueError(
                f"meter type {meter_type:02X}H is not a water/gas type {[f'{t:02X}' for t in WATER_TYPES]}"
            )
        gas = meter_type == GAS_TYPE
        profiles = GAS_PROFILES if gas else WATER_PROFILES
        if profile not in profiles:
            what = "gas" if gas else "water"
            raise ValueError(f"unknown {what} profile {profile!r}; known: {', '.join(profiles)}")
        self._init_wire(
            meter_type, profile, di_order, accept_any_di_order, unit, UNITS_PER_M3, status_layout, preamble
        )
        self.quantity = "gas_volume_m3" if gas else "volume_m3"  # what the gateway stores it as
        self.model = WaterModel(
            self.seed,
            profiles[profile],
            clock=self.clock,
            tz=self.tz,
            settlement_day=settlement_day,
            initial_m3=initial_m3,
            kind=MeterKind.GAS if gas else MeterKind.WATER,
        )

    def _init_wire(
        self,
        meter_type: int,
        profile: str,
        di_order: DiOrder,
        accept_any_di_order: bool,
        unit: int,
        units: dict[int, float],
        status_layout: StatusLayout,
        preamble: int,
    ) -> None:
        """The wire settings every CJ/T 188 meter type shares, checked once for all of them."""
        if di_order not in ("901F", "1F90"):
            raise ValueError("di_order must be '901F' or '1F90'")
        if unit not in units:
            raise ValueError(f"unit code must be one of {[f'{u:02X}' for u in units]}")
        if status_layout not in ("standard", "msb"):
            raise ValueError("status_layout must be 'standard' or 'msb'")
        if not 0 <= preamble <= 4:
            raise ValueError("preamble must be 0..4 FE bytes")
        self.wire_address = address_to_wire(self.address, 7)
        self.meter_type = meter_type
        self.profile = profile
        self.di_order = di_order
        self.accept_any_di_order = accept_any_di_order
        self.unit = unit
        self.status_layout = status_layout
        self.preamble = preamble
        self.valve = "open"
        self.battery_low = False

    def describe(self) -> str:
        return f"{self.protocol} {self.address} type {self.meter_type:02X}H DI {self.di_order}"

    # -- framing --------------------------------------------------------------------------------------

    @classmethod
    def frame_length(cls, buf: bytes | bytearray, start: int) -> int:
        n = len(buf) - start
        if buf[start] != 0x68:
            return INVALID
        if n < 11:
            return INCOMPLETE
        if buf[start + 9] & 0x80:
            return INVALID  # a reply
        total = 13 + buf[start + 10]
        if n < total:
            return INCOMPLETE
        if buf[start + total - 1] != 0x16 or sum8(buf[start : start + total - 2]) != buf[start + total - 2]:
            return INVALID
        return total

    def claims(self, frame: bytes) -> bool:
        if frame[1] not in (self.meter_type, WILDCARD):
            return False
        return all(b == WILDCARD or b == own for b, own in zip(frame[2:9], self.wire_address, strict=True))

    def corrupt_checksum(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes([reply[-2] ^ 0xFF]) + reply[-1:]

    def _di_wire(self, di: int) -> bytes:
        return di.to_bytes(2, "big" if self.di_order == "901F" else "little")

    def _frame(self, control: int, data: bytes) -> bytes:
        return encode_frame(self.meter_type, self.wire_address, control, data, self.preamble)

    # -- requests -------------------------------------------------------------------------------------

    async def respond(self, frame: bytes) -> bytes | None:
        control, data = frame[9], frame[11 : 11 + frame[10]]
        with self.lock:
            self.requests += 1
            reply = self._dispatch(control, data)
            if reply is not None:
                self.replies += 1
            return reply

    def _read_di(self, wire: bytes) -> int | None:
        """The DI of a request, honouring this meter's byte-order tolerance."""
        own = int.from_bytes(wire, "big" if self.di_order == "901F" else "little")
        other = int.from_bytes(wire, "little" if self.di_order == "901F" else "big")
        for di in (own, other) if self.accept_any_di_order else (own,):
            if di in (DI_METER_DATA, DI_ADDRESS, DI_VALVE):
                return di
        return None

    def _dispatch(self, control: int, data: bytes) -> bytes | None:
        if len(data) < 3:
            return None  # a request without DI and SER: nothing to answer
        di, ser = self._read_di(data[:2]), data[2]
        if control == READ_DATA and di == DI_METER_DATA:
            return self._frame(0x81, self._di_wire(di) + bytes([ser]) + self._meter_data())
        if control == READ_ADDRESS and di == DI_ADDRESS:
            return self._frame(0x83, self._di_wire(di) + bytes([ser]) + self.wire_address)
        if control == WRITE_DATA and di == DI_VALVE and len(data) == 4 and data[3] in (0x55, 0x99):
            self.valve = "open" if data[3] == 0x55 else "closed"
            return self._frame(0x84, self._di_wire(di) + bytes([ser]) + self._status())
        return self._frame(0xC0 | (control & 0x3F), bytes([ser]) + self._status())

    # -- registers ------------------------------------------------------------------------------------

    def _counters(self) -> tuple[int, int]:
        """Current and settlement-day volume in hundredths of the meter's unit, wrapped like the register."""
        with self.model.lock:
            self.model.advance()
            current, settlement = self.model.volume_m3, self.model.settlement_m3
        per = UNITS_PER_M3[self.unit] * 100
        wrap = round(self.wrap * 100)
        return math.floor(current * per + 1e-6) % wrap, math.floor(settlement * per + 1e-6) % wrap

    def _status(self) -> bytes:
        valve = VALVE_BITS[self.valve]
        if self.status_layout == "standard":
            st1 = valve | (0x04 if self.battery_low else 0)
        else:
            st1 = (valve << 6) | (0x20 if self.battery_low else 0)
        return bytes([st1, 0x00])

    def _meter_data(self) -> bytes:
        current, settlement = self._counters()
        clock = self.meter_time()
        rtc = to_bcd_le(int(f"{clock:%Y%m%d%H%M%S}"), 7)
        self._served({self.quantity: current / 100 / UNITS_PER_M3[self.unit]})
        return (
            to_bcd_le(current, 4)
            + bytes([self.unit])
            + to_bcd_le(settlement, 4)
            + bytes([self.unit])
            + rtc
            + self._status()
        )

    def registers(self) -> dict[str, float]:
        """The current volume in m3, exactly as the next 901F read reports it (after unit scaling)."""
        with self.lock:
            current, _ = self._counters()
        return {self.quantity: current / 100 / UNITS_PER_M3[self.unit]}

    def snapshot(self) -> dict[str, object]:
        """Every field of the 901F reply as it would be served now."""
        with self.lock:
            current, settlement = self._counters()
            st = self._status()
        per = UNITS_PER_M3[self.unit]
        return {
            "current_flow": current / 100,
            "settlement_flow": settlement / 100,
            "unit": self.unit,
            "volume_m3": current / 100 / per,
            "settlement_m3": settlement / 100 / per,
            "clock": self.meter_time().replace(microsecond=0),
            "st": st.hex(),
            "valve": self.valve,
            "battery_low": self.battery_low,
        }

    def _rollover(self, margin: float) -> None:
        self.model.set_volume((self.wrap - margin) / UNITS_PER_M3[self.unit])

    def _replace(self) -> None:
        self.model.reset_counters()
