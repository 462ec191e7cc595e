"""A simulated DL/T 645-2007 multi-function electricity meter.

It answers read data (11H) for energy (combined/import/export, per tariff, current and the last 12
settlement days), voltage, current, active power, power factor, frequency, date and time and its own
address/number; follow-up reads (12H) for replies longer than one frame; read address (13H); and
broadcast time set (08H, which sets its clock and is never answered). An unknown data identifier
gets an abnormal reply (D1H, error bit 1 "no requested data").

Where the protocol texts leave a detail unconfirmed (docs/references.md#dlt645), this model makes
a stated choice:
- block order for ``DI1 = FF`` and ``DI0 = FF`` together: settlement period outer (current, last 1..12),
  tariff inner (total, T1..T4);
- follow-up: the first reply (B1H) carries DI + data; each 12H request carries DI + SEQ (1, 2, ...);
  each follow-up reply (B2H, last one 92H) carries DI + data + SEQ. Frames split at item boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from firmware_sim.serial.bcd import address_to_wire, from_bcd_le, sum8, to_bcd_le
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.meter import INCOMPLETE, INVALID, SerialMeter
from firmware_sim.serial.model import ELECTRIC_PROFILES, HISTORY, TARIFFS, ElectricModel

BROADCAST = b"\x99" * 6
MAX_DATA_LEN = 200  # L limit for read replies

# Error word bits (the ERR byte of an abnormal reply).
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_UNAUTHORISED = 0x04

READ, READ_FOLLOW_UP, READ_ADDRESS, WRITE, TIME_SYNC = 0x11, 0x12, 0x13, 0x14, 0x08

_PHASE_NAMES = ("l1", "l2", "l3")


def encode_frame(address_wire: bytes, control: int, data: bytes, preamble: int = 0) -> bytes:
    """A complete DL/T 645 frame: +33H on every data byte, sum checksum, optional FE wake-up bytes."""
    body = bytes([0x68, *address_wire, 0x68, control, len(data)]) + bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * preamble + body + bytes([sum8(body), 0x16])


def frame_data(frame: bytes) -> bytes:
    """The data field of a frame that starts at its first 68H, with the +33H offset removed."""
    return bytes((b - 0x33) & 0xFF for b in frame[10 : 10 + frame[9]])


@dataclass(frozen=True)
class Item:
    """One value inside a reply: its raw integer, field size, sign rule, and what it means."""

    raw: int
    nbytes: int
    signed: bool = False
    quantity: str | None = None
    value: float | None = None  # in the quantity's campusmon unit

    def encode(self) -> bytes:
        return to_bcd_le(self.raw, self.nbytes, signed=self.signed)


@dataclass(frozen=True)
class _Registers:
    """Every register of the meter at one instant, as the integers that go on the wire."""

    energy: dict[tuple[int, int], list[int]]  # (DI2 kind, period) -> [total, T1..T4] in 0.01 kWh
    volts: tuple[int, int, int]  # 0.1 V
    amps: tuple[int, int, int]  # 0.001 A, signed
    power: tuple[int, int, int, int]  # total, A, B, C in 0.0001 kW, signed
    pf: tuple[int, int, int, int]  # total, A, B, C in 0.001, signed
    freq: int  # 0.01 Hz
    clock: datetime


def _digits_match(requested: int, own: int) -> bool:
    """Address byte match where an A digit is a wildcard (AAH bytes, or "AAAAAAAAA123" nibbles)."""
    hi, lo = requested >> 4, requested & 0x0F
    return hi in (0x0A, own >> 4) and lo in (0x0A, own & 0x0F)


def _wrap(wh: float, wrap_hundredths: int) -> int:
    return math.floor(wh / 10.0 + 1e-6) % wrap_hundredths


class Dlt645Meter(SerialMeter):
    """A DL/T 645-2007 meter with a 12-digit address, driven by an :class:`ElectricModel`."""

    protocol = "dlt645"

    def __init__(
        self,
        address: str,
        *,
        profile: str = "office",
        phases: int = 3,
        seed: int = 0,
        clock: SimClock | None = None,
        tz: str = "UTC",
        preamble: int = 4,
        max_data_len: int = MAX_DATA_LEN,
        time_sync_window_s: float | None = None,
        initial_kwh: float | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        super().__init__(address, seed=seed, clock=clock, tz=tz, turnaround_s=turnaround_s)
        if profile not in ELECTRIC_PROFILES:
            raise ValueError(f"unknown load profile {profile!r}; known: {', '.join(ELECTRIC_PROFILES)}")
        if not 0 <= preamble <= 4:
            raise ValueError("preamble must be 0..4 FE bytes")
        if not 16 <= max_data_len <= MAX_DATA_LEN:
            raise ValueError(f"max_data_len must be 16..{MAX_DATA_LEN}")
        self.wire_address = address_to_wire(address, 6)
        self.profile = profile
        self.phases = phases
        self.preamble = preamble
        self.max_data_len = max_data_len
        self.time_sync_window_s = time_sync_window_s
        self.model = ElectricModel(
            self.seed,
            ELECTRIC_PROFILES[profile],
            phases=phases,
            clock=self.clock,
            tz=self.tz,
            initial_kwh=initial_kwh,
        )
        self._pending: tuple[int, list[bytes]] | None = None  # DI and frames of a multi-frame reply
        self.time_syncs = 0

    # -- framing --------------------------------------------------------------------------------------

    @classmethod
    def frame_length(cls, buf: bytes | bytearray, start: int) -> int:
        n = len(buf) - start
        if buf[start] != 0x68:
            return INVALID
        if n >= 8 and buf[start + 7] != 0x68:
            return INVALID
        if n < 10:
            return INCOMPLETE
        if buf[start + 8] & 0x80 or buf[start + 9] > MAX_DATA_LEN:
            return INVALID  # a reply, or a length no request can have
        total = 12 + buf[start + 9]
        if n < total:
            return INCOMPLETE
        if buf[start + total - 1] != 0x16 or sum8(buf[start : start + total - 2]) != buf[start + total - 2]:
            return INVALID
        return total

    def claims(self, frame: bytes) -> bool:
        wire = frame[1:7]
        if wire == BROADCAST:
            return True
        return all(_digits_match(b, own) for b, own in zip(wire, self.wire_address, strict=True))

    def corrupt_checksum(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes([reply[-2] ^ 0xFF]) + reply[-1:]

    def _frame(self, control: int, data: bytes) -> bytes:
        return encode_frame(self.wire_address, control, data, self.preamble)

    def _error(self, function: int, err: int) -> bytes:
        return self._frame(0xC0 | function, bytes([err]))

    # -- requests -------------------------------------------------------------------------------------

    async def respond(self, frame: bytes) -> bytes | None:
        control, data = frame[8], frame_data(frame)
        with self.lock:
            self.requests += 1
            if frame[1:7] == BROADCAST:
                if control == TIME_SYNC and len(data) == 6:
                    self._time_sync(data)
                return None  # meters never answer a broadcast
            reply = self._dispatch(control, data, frame[1:7])
            if reply is not None:
                self.replies += 1
            return reply

    def _dispatch(self, control: int, data: bytes, wire_address: bytes) -> bytes | None:
        if control == READ and len(data) >= 4:
            return self._read(int.from_bytes(data[:4], "little"))
        if control == READ_FOLLOW_UP and len(data) == 5:
            return self._follow_up(int.from_bytes(data[:4], "little"), data[4])
        if control == READ_ADDRESS and not data:
            return self._frame(0x93, self.wire_address)
        if control == WRITE:
            return self._error(WRITE, ERR_UNAUTHORISED)
        return self._error(control & 0x1F, ERR_OTHER)

    def _read(self, di: int) -> bytes:
        regs = self._registers()
        items = self._items(di, regs)
        if items is None:
            self._pending = None
            return self._error(READ, ERR_NO_DATA)
        self._served({i.quantity: i.value for i in items if i.quantity and i.value is not None})
        di_bytes = di.to_bytes(4, "little")
        encoded = [i.encode() for i in items]
        frames: list[bytes] = []
        room = self.max_data_len - 4
        chunk = b""
        for field in encoded:
            if len(chunk) + len(field) > room:
                frames.append(chunk)
                chunk = b""
                room = self.max_data_len - 5  # follow-ups also carry SEQ
            chunk += field
        frames.append(chunk)
        if len(frames) == 1:
            self._pending = None
            return self._frame(0x91, di_bytes + frames[0])
        self._pending = (di, frames)
        return self._frame(0xB1, di_bytes + frames[0])

    def _follow_up(self, di: int, seq: int) -> bytes:
        if self._pending is None or self._pending[0] != di or not 1 <= seq < len(self._pending[1]):
            return self._error(READ_FOLLOW_UP, ERR_NO_DATA)
        frames = self._pending[1]
        last = seq == len(frames) - 1
        reply = self._frame(0x92 if last else 0xB2, di.to_bytes(4, "little") + frames[seq] + bytes([seq]))
        if last:
            self._pending = None
        return reply

    def _time_sync(self, data: bytes) -> None:
        try:
            ss, mm, hh, day, month, yy = (from_bcd_le(bytes([b])) for b in data)
            when = datetime(2000 + yy, month, day, hh, mm, ss, tzinfo=self.tz)
        except ValueError:
            return  # not a valid time: a real meter ignores it
        if self.time_sync_window_s is not None:
            if abs(when.timestamp() - self.meter_time().timestamp()) > self.time_sync_window_s:
                return
        self.set_meter_time(when)
        self.time_syncs += 1

    # -- registers ------------------------------------------------------------------------------------

    def _registers(self) -> _Registers:
        """Integrate the model to now and quantise every register."""
        with self.model.lock:
            now = self.model.advance()
            m = self.model
            wrap = round(self.wrap * 100)
            energy: dict[tuple[int, int], list[int]] = {}
            history = [(0, m.import_wh, m.export_wh)]
            history += [(i + 1, m.history_import_wh[i], m.history_export_wh[i]) for i in range(HISTORY)]
            for period, imp, exp in history:
                fwd = [_wrap(sum(imp), wrap)] + [_wrap(v, wrap) for v in imp]
                rev = [_wrap(sum(exp), wrap)] + [_wrap(v, wrap) for v in exp]
                energy[(1, period)] = fwd
                energy[(2, period)] = rev
                energy[(0, period)] = [
                    max(-79_999_999, min(79_999_999, f - r)) for f, r in zip(fwd, rev, strict=True)
                ]
            v = m.values_at(now)
        volts = tuple(round(x * 10) for x in v.voltage_v)
        amps = tuple(round(x * 1000) for x in v.current_a)
        phase_power = tuple(round(x * 10) for x in v.power_w)
        power = (sum(phase_power), *phase_power)
        pf = (round(v.total_pf * 1000), *(round(x * 1000) for x in v.pf))
        return _Registers(energy, volts, amps, power, pf, round(v.frequency_hz * 100), self.meter_time())  # type: ignore[arg-type]

    def _phase_quantity(self, base: str, unit: str, phase: int) -> str:
        return f"{base}_{unit}" if self.phases == 1 else f"{base}_{_PHASE_NAMES[phase]}_{unit}"

    def _items(self, di: int, r: _Registers) -> list[Item] | None:
        di3, di2, di1, di0 = di.to_bytes(4, "big")
        phases = range(self.phases)
        if di3 == 0x00 and di2 in (0, 1, 2):
            return self._energy_items(di2, di1, di0, r)
        if di3 == 0x02 and di0 == 0x00:
            return self._instant_items(di2, di1, r, phases)
        if di == 0x02800002:
            return [Item(r.freq, 2, quantity="frequency_hz", value=r.freq / 100)]
        clock = r.clock
        weekday = (clock.weekday() + 1) % 7  # DL/T 645 counts Sunday as 0
        if di == 0x04000101:
            return [Item(int(f"{clock:%y%m%d}{weekday:02d}"), 4)]
        if di == 0x04000102:
            return [Item(int(f"{clock:%H%M%S}"), 3)]
        if di == 0x0400010C:
            return [Item(int(f"{clock:%y%m%d}{weekday:02d}{clock:%H%M%S}"), 7)]
        if di in (0x04000401, 0x04000402):
            return [Item(int(self.address), 6)]
        return None

    def _energy_items(self, kind: int, tariff: int, period: int, r: _Registers) -> list[Item] | None:
        tariffs = list(range(TARIFFS + 1)) if tariff == 0xFF else [tariff]
        periods = list(range(HISTORY + 1)) if period == 0xFF else [period]
        if any(t > TARIFFS for t in tariffs) or any(p > HISTORY for p in periods):
            return None
        names = {1: "energy_kwh", 2: "export_energy_kwh"}
        items = []
        for p in periods:
            for t in tariffs:
                raw = r.energy[(kind, p)][t]
                quantity = names.get(kind) if p == 0 and t == 0 else None
                items.append(Item(raw, 4, signed=kind == 0, quantity=quantity, value=raw / 100))
        return items

    def _instant_items(self, di2: int, di1: int, r: _Registers, phases: range) -> list[Item] | None:
        if di2 == 0x01:  # voltage per phase
            sel = list(phases) if di1 == 0xFF else [di1 - 1] if 1 <= di1 <= len(phases) else None
            if sel is None:
                return None
            return [
                Item(r.volts[p], 2, quantity=self._phase_quantity("voltage", "v", p), value=r.volts[p] / 10)
                for p in sel
            ]
        if di2 == 0x02:  # current per phase, signed
            sel = list(phases) if di1 == 0xFF else [di1 - 1] if 1 <= di1 <= len(phases) else None
            if sel is None:
                return None
            return [
                Item(r.amps[p], 3, True, self._phase_quantity("current", "a", p), r.amps[p] / 1000)
                for p in sel
            ]
        if di2 in (0x03, 0x06):  # active power, power factor: total then per phase
            sel = [0, *(p + 1 for p in phases)] if di1 == 0xFF else [di1] if di1 <= len(phases) else None
            if sel is None:
                return None
            items = []
            for s in sel:
                if di2 == 0x03:
                    name = "power_w" if s == 0 else self._phase_quantity("power", "w", s - 1)
                    items.append(Item(r.power[s], 3, True, name, r.power[s] / 10))
                else:
                    items.append(Item(r.pf[s], 2, True, "power_factor" if s == 0 else None, r.pf[s] / 1000))
            return items
        return None

    def registers(self) -> dict[str, float]:
        """Current values of the main registers (kWh, V, A, W, Hz), exactly as a read would serve them."""
        with self.lock:
            r = self._registers()
        values: dict[str, float] = {
            "energy_kwh": r.energy[(1, 0)][0] / 100,
            "export_energy_kwh": r.energy[(2, 0)][0] / 100,
            "power_w": r.power[0] / 10,
            "power_factor": r.pf[0] / 1000,
            "frequency_hz": r.freq / 100,
        }
        for p in range(self.phases):
            values[self._phase_quantity("voltage", "v", p)] = r.volts[p] / 10
            values[self._phase_quantity("current", "a", p)] = r.amps[p] / 1000
            if self.phases == 3:
                values[self._phase_quantity("power", "w", p)] = r.power[p + 1] / 10
        return values

    def di_values(self, di: str) -> list[float] | None:
        """What a read of data identifier ``di`` (8 hex digits, e.g. ``0001FF00``) returns now, scaled;
        None when the meter would answer "no requested data". Date/time items come back as their digits."""
        with self.lock:
            items = self._items(int(di, 16), self._registers())
        if items is None:
            return None
        return [i.value if i.value is not None else float(i.raw) for i in items]

    def _rollover(self, margin: float) -> None:
        self.model.set_import_kwh(self.wrap - margin)

    def _replace(self) -> None:
        self.model.reset_counters()
