"""Deterministic load models behind the simulated meters.

Power (or flow) is piecewise constant over fixed steps of the simulator clock; each step's value comes
from a seeded hash of the step number, the local hour and the load profile, so two runs with the same
seed see the same curve. Counters integrate exactly those steps, so energy always agrees with power.
Counters keep their true, unwrapped value here; each meter wraps and quantises them the way its
register format does.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import get_args
from zoneinfo import ZoneInfo

from campusmon.config import BuildingType
from campusmon.quantities import MeterKind
from firmware_sim.profiles import shape
from firmware_sim.serial.clock import SimClock

STEP_S = 10.0
TARIFFS = 4  # T1 sharp, T2 peak, T3 flat, T4 valley, as on Chinese time-of-use meters
HISTORY = 12  # settlement snapshots kept (DL/T 645 DI0 = 01..0C)
_M64 = (1 << 64) - 1


def unit_hash(*parts: int) -> float:
    """A uniform number in [0, 1) from integers (splitmix64), cheap enough to call per step."""
    x = 0
    for p in parts:
        x = (x ^ (p & _M64)) + 0x9E3779B97F4A7C15 & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        x ^= x >> 31
    return x / 2.0**64


def tariff_of_hour(hour: int) -> int:
    """Index 0..3 of the time-of-use tariff (T1..T4) in force at a local hour."""
    if 19 <= hour < 21:
        return 0
    if 8 <= hour < 11 or 17 <= hour < 19:
        return 1
    if hour >= 23 or hour < 7:
        return 3
    return 2


@dataclass(frozen=True)
class LoadProfile:
    """An electrical load: the building type whose daily shape it follows (None = flat), its peak,
    optional PV export at midday, power factor and noise."""

    building_type: str | None
    peak_w: float
    pv_peak_w: float = 0.0
    pf: float = 0.95
    noise: float = 0.15


@dataclass(frozen=True)
class FlowProfile:
    """A water draw: the building type whose daily shape it follows (None = flat) and its peak (m3/h)."""

    building_type: str | None
    peak_m3h: float
    noise: float = 0.3


# Building types follow the daily shapes of firmware_sim.profiles; "pv" and "constant" are extras.
ELECTRIC_PROFILES: dict[str, LoadProfile] = {
    **{t: LoadProfile(t, 6000.0) for t in get_args(BuildingType)},
    "lab": LoadProfile("lab", 9000.0, pf=0.88, noise=0.25),
    "dorm": LoadProfile("dorm", 4000.0, pf=0.92),
    "pv": LoadProfile("office", 3000.0, pv_peak_w=6000.0, pf=0.97),
    "constant": LoadProfile(None, 1000.0, noise=0.0),
}
WATER_PROFILES: dict[str, FlowProfile] = {
    **{t: FlowProfile(t, 0.8) for t in get_args(BuildingType)},
    "constant": FlowProfile(None, 0.5, noise=0.0),
}
# Natural gas in m3/h: a canteen kitchen at a meal, a small boiler room elsewhere.
GAS_PROFILES: dict[str, FlowProfile] = {
    **{t: FlowProfile(t, 6.0) for t in get_args(BuildingType)},
    "canteen": FlowProfile("canteen", 25.0),
    "constant": FlowProfile(None, 4.0, noise=0.0),
}


@dataclass(frozen=True)
class HeatProfile:
    """A heating (or cooling) load: daily shape, peak thermal power, supply temperature and the
    supply/return difference at peak, on a constant-flow circuit."""

    building_type: str | None
    peak_kw: float
    supply_c: float = 70.0
    design_dt_k: float = 20.0
    cooling: bool = False
    noise: float = 0.15


HEAT_PROFILES: dict[str, HeatProfile] = {
    **{t: HeatProfile(t, 150.0) for t in get_args(BuildingType)},
    "cooling": HeatProfile("office", 120.0, supply_c=7.0, design_dt_k=5.0, cooling=True),
    "constant": HeatProfile(None, 100.0, noise=0.0),
}
# kWh carried by 1 m3 of water per kelvin (4.19 kJ/(kg K) x 1000 kg/m3 / 3600 s/h, rounded as in practice).
WATER_KWH_PER_M3K = 1.163


@dataclass(frozen=True)
class ElectricValues:
    """Instantaneous electrical values of one step, in SI units, power signed (negative = export)."""

    voltage_v: tuple[float, float, float]
    current_a: tuple[float, float, float]
    power_w: tuple[float, float, float]
    pf: tuple[float, float, float]
    frequency_hz: float

    @property
    def total_power_w(self) -> float:
        return sum(self.power_w)

    @property
    def total_pf(self) -> float:
        apparent = sum(abs(p) / max(abs(f), 1e-6) for p, f in zip(self.power_w, self.pf, strict=True))
        if apparent == 0:
            return 1.0
        return math.copysign(min(1.0, abs(self.total_power_w) / apparent), self.total_power_w or 1.0)


class _Integrator:
    """Advances a model step by step; subclasses say what one step adds."""

    def __init__(self, clock: SimClock, tz: ZoneInfo, settlement_day: int) -> None:
        self.clock = clock
        self.tz = tz
        self.settlement_day = settlement_day
        self.lock = threading.RLock()
        self._last: float | None = None
        self._month: int | None = None

    def _settlement_key(self, t: float) -> int:
        d = datetime.fromtimestamp(t, self.tz)
        return d.year * 12 + d.month - (1 if d.day < self.settlement_day else 0)

    def advance(self, now: float | None = None) -> float:
        """Integrate up to ``now`` (default: the clock); never runs backwards."""
        with self.lock:
            t = self.clock.now() if now is None else now
            if self._last is None:
                self._last = t
                self._month = self._settlement_key(t)
                return t
            while self._last < t:
                k = math.floor(self._last / STEP_S)
                end = min((k + 1) * STEP_S, t)
                key = self._settlement_key(self._last)
                if key != self._month:
                    self._settle()
                    self._month = key
                self._accumulate(k, end - self._last)
                self._last = end
            return max(t, self._last)

    def _set_now(self, **registers: float) -> None:
        """Set registers as of now: what accrued up to now is integrated first, under the lock."""
        with self.lock:
            self.advance()
            for name, value in registers.items():
                setattr(self, name, value)

    def _accumulate(self, k: int, dt: float) -> None:
        raise NotImplementedError

    def _settle(self) -> None:
        raise NotImplementedError


class ElectricModel(_Integrator):
    """A one- or three-phase electrical load with import/export energy per tariff."""

    def __init__(
        self,
        seed: int,
        profile: LoadProfile,
        *,
        phases: int = 3,
        clock: SimClock,
        tz: ZoneInfo,
        settlement_day: int = 1,
        initial_kwh: float | None = None,
    ) -> None:
        super().__init__(clock, tz, settlement_day)
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        self.seed = seed
        self.profile = profile
        self.phases = phases
        rng = random.Random(seed)
        self.scale = rng.uniform(0.6, 1.4)
        if phases == 3:
            raw = [rng.uniform(0.25, 0.42) for _ in range(3)]
            self.split = tuple(r / sum(raw) for r in raw)
        else:
            self.split = (1.0, 0.0, 0.0)
        self.v_nominal = tuple(230.0 + rng.uniform(-4.0, 4.0) for _ in range(3))
        self.pf_base = min(0.995, max(0.5, profile.pf + rng.uniform(-0.03, 0.03)))
        total = rng.uniform(100.0, 50000.0) if initial_kwh is None else initial_kwh
        shares = (0.1, 0.3, 0.35, 0.25)
        self.import_wh = [total * 1000.0 * s for s in shares]
        self.export_wh = [0.0] * TARIFFS
        if profile.pv_peak_w > 0:
            exported = rng.uniform(0.0, total * 0.3) * 1000.0
            self.export_wh = [exported * s for s in shares]
        self.import_varh = total * 1000.0 * 0.3
        self.export_varh = 0.0
        # Synthetic history before the simulation started: each month a few percent less.
        self.history_import_wh = [
            [max(0.0, v * (1 - 0.03 * (i + 1))) for v in self.import_wh] for i in range(HISTORY)
        ]
        self.history_export_wh = [
            [max(0.0, v * (1 - 0.03 * (i + 1))) for v in self.export_wh] for i in range(HISTORY)
        ]

    def values_at(self, t: float) -> ElectricValues:
        """The instantaneous values of the step containing ``t``."""
        k = math.floor(t / STEP_S)
        local = datetime.fromtimestamp(k * STEP_S, self.tz)
        p = self.profile
        day = 1.0 if p.building_type is None else shape(MeterKind.ELECTRICITY, p.building_type, local)
        load = p.peak_w * day * self.scale * (1.0 + p.noise * (2.0 * unit_hash(self.seed, k, 1) - 1.0))
        hour = local.hour + local.minute / 60.0
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 <= hour <= 18.0 else 0.0
        net = load - p.pv_peak_w * sun * (0.8 + 0.2 * unit_hash(self.seed, k, 2))
        volts = tuple(
            v + 1.5 * (2.0 * unit_hash(self.seed, k, 10 + i) - 1.0) for i, v in enumerate(self.v_nominal)
        )
        pf_mag = min(0.999, max(0.3, self.pf_base + 0.02 * (2.0 * unit_hash(self.seed, k, 3) - 1.0)))
        powers = tuple(net * s for s in self.split)
        pfs = tuple(math.copysign(pf_mag, pw) if s else 1.0 for pw, s in zip(powers, self.split, strict=True))
        currents = tuple(
            pw / (v * pf_mag) if s else 0.0 for pw, v, s in zip(powers, volts, self.split, strict=True)
        )
        if self.phases == 1:
            volts = (volts[0], 0.0, 0.0)
        freq = 50.0 + 0.05 * (2.0 * unit_hash(self.seed, k, 4) - 1.0)
        return ElectricValues(volts, currents, powers, pfs, freq)  # type: ignore[arg-type]

    def _accumulate(self, k: int, dt: float) -> None:
        v = self.values_at(k * STEP_S)
        tariff = tariff_of_hour(datetime.fromtimestamp(k * STEP_S, self.tz).hour)
        p = v.total_power_w
        q = abs(p) * math.tan(math.acos(min(1.0, abs(v.total_pf))))
        if p >= 0:
            self.import_wh[tariff] += p * dt / 3600.0
            self.import_varh += q * dt / 3600.0
        else:
            self.export_wh[tariff] += -p * dt / 3600.0
            self.export_varh += q * dt / 3600.0

    def _settle(self) -> None:
        self.history_import_wh.insert(0, list(self.import_wh))
        del self.history_import_wh[HISTORY:]
        self.history_export_wh.insert(0, list(self.export_wh))
        del self.history_export_wh[HISTORY:]

    def set_import_kwh(self, kwh: float) -> None:
        """Move the import counter to ``kwh`` (rollover tests) keeping total = sum of tariffs."""
        with self.lock:
            self.advance()
            delta = kwh * 1000.0 - sum(self.import_wh)
            hour = datetime.fromtimestamp(self.clock.now(), self.tz).hour
            self.import_wh[tariff_of_hour(hour)] += delta
            if min(self.import_wh) < 0:
                self.import_wh = [kwh * 1000.0 / TARIFFS] * TARIFFS

    def reset_counters(self) -> None:
        """A new meter in the old one's place: every counter starts again from zero."""
        with self.lock:
            self.advance()
            self.import_wh = [0.0] * TARIFFS
            self.export_wh = [0.0] * TARIFFS
            self.import_varh = self.export_varh = 0.0
            self.history_import_wh = [[0.0] * TARIFFS for _ in range(HISTORY)]
            self.history_export_wh = [[0.0] * TARIFFS for _ in range(HISTORY)]


class WaterModel(_Integrator):
    """A water (or gas) draw with a cumulative volume and the volume at the last settlement day."""

    def __init__(
        self,
        seed: int,
        profile: FlowProfile,
        *,
        clock: SimClock,
        tz: ZoneInfo,
        settlement_day: int = 1,
        initial_m3: float | None = None,
        kind: MeterKind = MeterKind.WATER,
    ) -> None:
        super().__init__(clock, tz, settlement_day)
        self.kind = kind  # whose daily shape the draw follows
        self.seed = seed
        self.profile = profile
        rng = random.Random(seed)
        self.scale = rng.uniform(0.6, 1.4)
        self.volume_m3 = rng.uniform(10.0, 5000.0) if initial_m3 is None else initial_m3
        self.settlement_m3 = max(0.0, self.volume_m3 - rng.uniform(1.0, 30.0) * self.scale)

    def flow_at(self, t: float) -> float:
        k = math.floor(t / STEP_S)
        p = self.profile
        local = datetime.fromtimestamp(k * STEP_S, self.tz)
        day = 1.0 if p.building_type is None else shape(self.kind, p.building_type, local)
        return max(
            0.0, p.peak_m3h * day * self.scale * (1.0 + p.noise * (2.0 * unit_hash(self.seed, k, 5) - 1.0))
        )

    def _accumulate(self, k: int, dt: float) -> None:
        self.volume_m3 += self.flow_at(k * STEP_S) * dt / 3600.0

    def _settle(self) -> None:
        self.settlement_m3 = self.volume_m3

    def set_volume(self, m3: float) -> None:
        self._set_now(volume_m3=m3)

    def reset_counters(self) -> None:
        self._set_now(volume_m3=0.0, settlement_m3=0.0)


@dataclass(frozen=True)
class HeatValues:
    """Instantaneous values of one step of a heat meter."""

    power_kw: float
    flow_m3h: float
    supply_c: float
    return_c: float


class HeatModel(_Integrator):
    """A heat (or cooling) meter's circuit: thermal energy, water volume and operating hours.

    Flow is constant (the circuit's design flow), so the temperature difference follows the load:
    ``power = flow x 1.163 x (supply - return)``, and energy integrates exactly the power served.
    """

    def __init__(
        self,
        seed: int,
        profile: HeatProfile,
        *,
        clock: SimClock,
        tz: ZoneInfo,
        settlement_day: int = 1,
        initial_kwh: float | None = None,
    ) -> None:
        super().__init__(clock, tz, settlement_day)
        self.seed = seed
        self.profile = profile
        rng = random.Random(seed)
        self.scale = rng.uniform(0.6, 1.4)
        self.flow_m3h = profile.peak_kw * self.scale / (WATER_KWH_PER_M3K * profile.design_dt_k)
        self.energy_kwh = rng.uniform(1000.0, 200000.0) if initial_kwh is None else initial_kwh
        self.settlement_kwh = max(0.0, self.energy_kwh - rng.uniform(100.0, 3000.0) * self.scale)
        self.volume_m3 = rng.uniform(100.0, 50000.0)
        self.hours = rng.uniform(100.0, 20000.0)

    def values_at(self, t: float) -> HeatValues:
        k = math.floor(t / STEP_S)
        p = self.profile
        local = datetime.fromtimestamp(k * STEP_S, self.tz)
        if p.building_type is None:
            day = 1.0
        else:  # a cooling load follows the working day, a heating load the cold hours
            day = shape(MeterKind.ELECTRICITY if p.cooling else MeterKind.HEAT, p.building_type, local)
        power = max(0.0, p.peak_kw * day * self.scale * (1.0 + p.noise * (2.0 * unit_hash(self.seed, k, 6) - 1.0)))
        dt_k = power / (WATER_KWH_PER_M3K * self.flow_m3h)
        supply = p.supply_c + 0.5 * (2.0 * unit_hash(self.seed, k, 7) - 1.0)
        return HeatValues(power, self.flow_m3h, supply, supply + dt_k if p.cooling else supply - dt_k)

    def _accumulate(self, k: int, dt: float) -> None:
        self.energy_kwh += self.values_at(k * STEP_S).power_kw * dt / 3600.0
        self.volume_m3 += self.flow_m3h * dt / 3600.0
        self.hours += dt / 3600.0

    def _settle(self) -> None:
        self.settlement_kwh = self.energy_kwh

    def set_energy(self, kwh: float) -> None:
        self._set_now(energy_kwh=kwh)

    def reset_counters(self) -> None:
        self._set_now(energy_kwh=0.0, settlement_kwh=0.0, volume_m3=0.0, hours=0.0)
