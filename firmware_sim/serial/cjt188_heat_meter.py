"""A simulated CJ/T 188 heat meter: heating (20H), cooling (21H) or both (22H).

It answers read data 901F with the 46-byte heat-meter layout of CJ/T 188-2004: settlement-day and
current thermal energy, thermal power, flow rate and cumulative volume (each a 4-byte BCD value and
its unit code), supply and return temperature (3-byte BCD, 0.01 °C), operating hours (3-byte BCD),
the meter clock and ST1 ST2. ``unit_first`` puts each unit code before its value instead of after
it, as the JY heat meter of tests/vectors/cjt188.json does. Framing, addressing, read address,
the valve command and abnormal replies are the water meter's (:class:`Cjt188Meter`).
"""

from __future__ import annotations

import math

from firmware_sim.serial.bcd import to_bcd_le
from firmware_sim.serial.cjt188_meter import Cjt188Meter, DiOrder, StatusLayout
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.meter import SerialMeter
from firmware_sim.serial.model import HEAT_PROFILES, HeatModel

HEAT_TYPES = (0x20, 0x21, 0x22)
# Energy unit code -> how many of that unit make one kWh (CJ/T 188 unit table).
UNITS_PER_KWH: dict[int, float] = {0x05: 1.0, 0x08: 1e-3, 0x0E: 3.6, 0x11: 3.6e-3}
_UNIT_FACTOR_TO_KWH: dict[int, float] = {
    0x05: 1.0,
    0x08: 1e3,
    0x0E: 1 / 3.6,
    0x11: 1e3 / 3.6,
}  # as decoders do
KW, M3H, M3 = 0x17, 0x35, 0x2C


class Cjt188HeatMeter(Cjt188Meter):
    """A CJ/T 188 heat meter driven by a :class:`HeatModel`."""

    #: The energy register holds 8 BCD digits with 2 decimals: it wraps at 1,000,000 of its unit.
    wrap: float = 1_000_000.0

    def __init__(
        self,
        address: str,
        *,
        meter_type: int = 0x20,
        profile: str = "dorm",
        di_order: DiOrder = "901F",
        accept_any_di_order: bool = True,
        unit: int = 0x05,
        unit_first: bool = False,
        status_layout: StatusLayout = "standard",
        seed: int = 0,
        clock: SimClock | None = None,
        tz: str = "UTC",
        preamble: int = 0,
        settlement_day: int = 1,
        initial_kwh: float | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        SerialMeter.__init__(self, address, seed=seed, clock=clock, tz=tz, turnaround_s=turnaround_s)
        if meter_type not in HEAT_TYPES:
            raise ValueError(
                f"meter type {meter_type:02X}H is not a heat type {[f'{t:02X}' for t in HEAT_TYPES]}"
            )
        if profile not in HEAT_PROFILES:
            raise ValueError(f"unknown heat profile {profile!r}; known: {', '.join(HEAT_PROFILES)}")
        self._init_wire(
            meter_type, profile, di_order, accept_any_di_order, unit, UNITS_PER_KWH, status_layout, preamble
        )
        self.unit_first = unit_first
        self.quantity = "heat_energy_kwh"
        self.model = HeatModel(  # type: ignore[assignment]
            self.seed,
            HEAT_PROFILES[profile],
            clock=self.clock,
            tz=self.tz,
            settlement_day=settlement_day,
            initial_kwh=initial_kwh,
        )

    # -- registers ------------------------------------------------------------------------------------

    def _fields(self) -> dict[str, int]:
        """Every numeric field as the integer its BCD digits carry, at the current simulator time."""
        m: HeatModel = self.model  # type: ignore[assignment]
        with m.lock:
            now = m.advance()
            energy, settlement, volume, hours = m.energy_kwh, m.settlement_kwh, m.volume_m3, m.hours
            v = m.values_at(now)
        per = UNITS_PER_KWH[self.unit] * 100
        wrap = round(self.wrap * 100)
        return {
            "current": math.floor(energy * per + 1e-6) % wrap,
            "settlement": math.floor(settlement * per + 1e-6) % wrap,
            "power": math.floor(v.power_kw * 100 + 1e-6),  # 0.01 kW
            "flow": math.floor(v.flow_m3h * 10_000 + 1e-6),  # 0.0001 m3/h
            "volume": math.floor(volume * 100 + 1e-6) % wrap,  # 0.01 m3
            "supply": max(0, round(v.supply_c * 100)),  # 0.01 °C
            "return": max(0, round(v.return_c * 100)),
            "hours": math.floor(hours) % 1_000_000,
        }

    def _values(self, f: dict[str, int]) -> dict[str, float]:
        """The campusmon quantities the fields decode to, computed the way a decoder does."""
        return {
            "heat_energy_kwh": round(f["current"] / 100 * _UNIT_FACTOR_TO_KWH[self.unit], 9),
            "heat_power_w": round(f["power"] / 100 * 1000.0, 6),
            "heat_flow_m3h": f["flow"] / 10_000,
            "heat_volume_m3": f["volume"] / 100,
            "supply_temp_c": f["supply"] / 100,
            "return_temp_c": f["return"] / 100,
        }

    def _measure(self, value: int, unit: int) -> bytes:
        raw = to_bcd_le(value, 4)
        return bytes([unit]) + raw if self.unit_first else raw + bytes([unit])

    def _meter_data(self) -> bytes:
        f = self._fields()
        clock = self.meter_time()
        self._served(self._values(f))
        return (
            self._measure(f["settlement"], self.unit)
            + self._measure(f["current"], self.unit)
            + self._measure(f["power"], KW)
            + self._measure(f["flow"], M3H)
            + self._measure(f["volume"], M3)
            + to_bcd_le(f["supply"], 3)
            + to_bcd_le(f["return"], 3)
            + to_bcd_le(f["hours"], 3)
            + to_bcd_le(int(f"{clock:%Y%m%d%H%M%S}"), 7)
            + self._status()
        )

    def registers(self) -> dict[str, float]:
        """The quantities exactly as the next 901F read reports them (after unit scaling)."""
        with self.lock:
            return self._values(self._fields())

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            f = self._fields()
            st = self._status()
        return {
            **self._values(f),
            "settlement_kwh": f["settlement"] / 100 / UNITS_PER_KWH[self.unit],
            "unit": self.unit,
            "work_hours": f["hours"],
            "clock": self.meter_time().replace(microsecond=0),
            "st": st.hex(),
            "valve": self.valve,
            "battery_low": self.battery_low,
        }

    def _rollover(self, margin: float) -> None:
        self.model.set_energy((self.wrap - margin) / UNITS_PER_KWH[self.unit])  # type: ignore[attr-defined]

    def _replace(self) -> None:
        self.model.reset_counters()
