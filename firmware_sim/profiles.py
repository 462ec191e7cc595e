"""Load profiles by building type and meters that integrate them into cumulative registers.

Deterministic for a seed, so a test can compare what reached InfluxDB with what the meter "really"
used. Time is passed in, never read from the clock, so a simulated month runs in seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from campusmon.quantities import QUANTITIES, RATE, REGISTER, MeterKind
from campusmon.reading import Reading

# Hourly shape (0..1 of peak) for a weekday, by building type. Dorms peak in the evening,
# classrooms by day, canteens at meals; every type keeps a night base load.
# fmt: off
_ELEC_SHAPE: dict[str, list[float]] = {
    "dorm":      [0.30, 0.25, 0.22, 0.20, 0.20, 0.22, 0.35, 0.55, 0.45, 0.35, 0.30, 0.32, 0.45, 0.40, 0.35, 0.35, 0.40, 0.55, 0.70, 0.85, 0.95, 1.00, 0.90, 0.55],
    "classroom": [0.10, 0.10, 0.10, 0.10, 0.10, 0.12, 0.20, 0.60, 0.95, 1.00, 1.00, 0.90, 0.60, 0.85, 1.00, 1.00, 0.90, 0.60, 0.45, 0.45, 0.40, 0.25, 0.12, 0.10],
    "office":    [0.12, 0.12, 0.12, 0.12, 0.12, 0.14, 0.20, 0.50, 0.90, 1.00, 1.00, 0.95, 0.70, 0.90, 1.00, 1.00, 0.95, 0.70, 0.35, 0.20, 0.15, 0.14, 0.12, 0.12],
    "lab":       [0.45, 0.45, 0.45, 0.45, 0.45, 0.45, 0.50, 0.65, 0.90, 1.00, 1.00, 0.95, 0.80, 0.95, 1.00, 1.00, 0.95, 0.80, 0.70, 0.65, 0.60, 0.55, 0.50, 0.45],
    "library":   [0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.15, 0.50, 0.85, 0.95, 1.00, 1.00, 0.90, 0.95, 1.00, 1.00, 1.00, 0.95, 0.90, 0.90, 0.85, 0.70, 0.30, 0.12],
    "canteen":   [0.15, 0.15, 0.15, 0.15, 0.15, 0.30, 0.85, 1.00, 0.60, 0.35, 0.50, 0.95, 1.00, 0.55, 0.30, 0.30, 0.55, 0.95, 1.00, 0.60, 0.30, 0.20, 0.15, 0.15],
    "sports":    [0.08, 0.08, 0.08, 0.08, 0.08, 0.08, 0.20, 0.40, 0.45, 0.50, 0.50, 0.45, 0.35, 0.40, 0.50, 0.60, 0.80, 1.00, 1.00, 0.90, 0.80, 0.50, 0.15, 0.08],
    "other":     [0.30] * 8 + [0.80] * 10 + [0.40] * 6,
}
_ELEC_SHAPE["admin"] = _ELEC_SHAPE["office"]  # administration keeps office hours
_WATER_SHAPE: dict[str, list[float]] = {
    "dorm":    [0.05, 0.02, 0.01, 0.01, 0.01, 0.03, 0.40, 1.00, 0.70, 0.30, 0.20, 0.25, 0.45, 0.40, 0.20, 0.20, 0.25, 0.40, 0.55, 0.65, 0.80, 0.95, 0.85, 0.35],
    "canteen": [0.01, 0.01, 0.01, 0.01, 0.02, 0.30, 0.90, 1.00, 0.50, 0.30, 0.60, 1.00, 0.95, 0.50, 0.20, 0.20, 0.60, 1.00, 0.90, 0.40, 0.15, 0.05, 0.02, 0.01],
}
# Teaching, office and lab buildings use no water at night: a non-zero night flow there is a leak.
_WATER_DEFAULT = [0.0] * 6 + [0.05, 0.35, 0.80, 0.90, 0.85, 0.80, 0.60, 0.70, 0.85, 0.85, 0.70, 0.40, 0.20, 0.10, 0.05, 0.02, 0.00, 0.00]
# Gas: canteens cook at meals; elsewhere a boiler or water heater follows the day with a pilot base.
_GAS_SHAPE: dict[str, list[float]] = {
    "canteen": [0.02, 0.02, 0.02, 0.02, 0.05, 0.40, 0.95, 1.00, 0.45, 0.20, 0.55, 1.00, 0.95, 0.35, 0.10, 0.15, 0.60, 1.00, 0.90, 0.35, 0.10, 0.05, 0.02, 0.02],
}
_GAS_DEFAULT = [0.05] * 6 + [0.50, 0.80, 0.60, 0.40, 0.35, 0.35, 0.30, 0.30, 0.30, 0.35, 0.45, 0.70, 0.80, 0.60, 0.40, 0.20, 0.10, 0.05]
# District heat: weather-compensated heating runs all day, hardest before dawn, least mid-afternoon.
_HEAT_DEFAULT = [0.95, 0.98, 1.00, 1.00, 1.00, 0.98, 0.95, 0.90, 0.80, 0.72, 0.66, 0.62, 0.60, 0.58, 0.58, 0.60, 0.65, 0.72, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94]
# fmt: on

# Weekend factor of the working day's load, by type.
_WEEKEND = {
    "dorm": 1.05,
    "classroom": 0.25,
    "office": 0.25,
    "lab": 0.6,
    "library": 0.7,
    "canteen": 0.6,
    "sports": 1.1,
    "admin": 0.2,
    "other": 0.6,
}

# Peak demand per m2 (W) and water per occupant-day (m3): plausible campus orders of magnitude.
_PEAK_W_PER_M2 = {
    "dorm": 12.0,
    "classroom": 25.0,
    "office": 30.0,
    "lab": 45.0,
    "library": 25.0,
    "canteen": 60.0,
    "sports": 20.0,
    "admin": 30.0,
    "other": 20.0,
}


HEAT_PEAK_W_PER_M2 = 50.0
_RATE_IN_W = {k: QUANTITIES[q].unit == "W" for k, q in RATE.items()}  # kWh registers: rate / 1000

ROOM_PEAK_W = 450.0  # lights, laptops and a fan in a 4-bed dorm room; a kettle is 1,500-2,200 W


def shape(kind: MeterKind | str, building_type: str, local: datetime) -> float:
    """Fraction of peak at a local time; hours interpolate so steps do not look like artefacts."""
    k = MeterKind(kind)
    if k is MeterKind.ELECTRICITY:
        table = _ELEC_SHAPE.get(building_type, _ELEC_SHAPE["other"])
    elif k is MeterKind.GAS:
        table = _GAS_SHAPE.get(building_type, _GAS_DEFAULT)
    elif k is MeterKind.HEAT:
        table = _HEAT_DEFAULT
    else:
        table = _WATER_SHAPE.get(building_type, _WATER_DEFAULT)
    h = local.hour + local.minute / 60 + local.second / 3600
    i = int(h) % 24
    frac = h - int(h)
    v = table[i] * (1 - frac) + table[(i + 1) % 24] * frac
    if local.weekday() >= 5:
        v *= _WEEKEND.get(building_type, 0.6)
    return v


@dataclass
class SimMeter:
    """A meter with a true cumulative register driven by its building's profile.

    ``peak`` is in the kind's rate unit: W for electricity and heat, m3/h for water and gas. ``register`` is the true consumption since
    the simulator started (plus ``start``); faults in what is *sent* are applied by callers.
    """

    id: str
    kind: MeterKind
    building_type: str
    peak: float
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    seed: int = 0
    start: float = 0.0
    noise: float = 0.08
    extra_load: float = 0.0  # added W or m3/h: an injected waste event sets this
    register: float = 0.0
    last_ts: int | None = None
    rate: float = 0.0

    def __post_init__(self) -> None:
        self.register = self.start
        self._rng = random.Random(f"{self.seed}:{self.id}")

    def rate_at(self, ts: int) -> float:
        local = datetime.fromtimestamp(ts, self.tz)
        base = self.peak * shape(self.kind, self.building_type, local)
        jitter = 1.0 + self.noise * (self._rng.random() * 2 - 1)
        return max(0.0, base * jitter) + self.extra_load

    def advance(self, ts: int) -> None:
        """Integrate the rate from the last step to ``ts`` (trapezoid over the step)."""
        new_rate = self.rate_at(ts)
        if self.last_ts is not None and ts > self.last_ts:
            hours = (ts - self.last_ts) / 3600
            mean = (self.rate + new_rate) / 2
            self.register += mean * hours / (1000.0 if _RATE_IN_W[self.kind] else 1.0)
        self.rate = new_rate
        self.last_ts = ts

    def readings(self, ts: int) -> list[Reading]:
        """Advance to ``ts`` and report what the meter shows: the register and the rate."""
        self.advance(ts)
        if _RATE_IN_W[self.kind]:  # electricity and heat: kWh register, W rate
            return [
                Reading(self.id, REGISTER[self.kind], round(self.register, 3), ts),
                Reading(self.id, RATE[self.kind], round(self.rate, 1), ts),
            ]
        return [
            Reading(self.id, REGISTER[self.kind], round(self.register, 4), ts),
            Reading(self.id, RATE[self.kind], round(self.rate, 4), ts),
        ]


def peak_for(
    kind: MeterKind, building_type: str, floor_area_m2: float, occupants: int, share: float = 1.0
) -> float:
    """A plausible peak for a meter that carries ``share`` of its building."""
    if kind is MeterKind.ELECTRICITY:
        return max(500.0, _PEAK_W_PER_M2.get(building_type, 20.0) * max(floor_area_m2, 200.0) * share)
    if kind is MeterKind.HEAT:  # heating design loads of north China: some 40-60 W/m2
        return max(5000.0, HEAT_PEAK_W_PER_M2 * max(floor_area_m2, 200.0) * share)
    if kind is MeterKind.GAS:  # m3/h of natural gas: a canteen kitchen burns far more than a boiler room
        per_m2 = 0.02 if building_type == "canteen" else 0.004
        return max(0.5, per_m2 * max(floor_area_m2, 200.0) * share)
    # ~0.15 m3 per occupant-day spread over the day shape's area (~9 "peak hours").
    per_day = 0.15 * max(occupants, 20) if building_type == "dorm" else 0.01 * max(floor_area_m2, 500) / 10
    return max(0.05, per_day / 9.0 * share)


def sim_meters_for(cfg: object, seed: int = 0) -> list[SimMeter]:
    """One SimMeter per configured meter, sized from its building."""
    from campusmon.config import CampusConfig

    assert isinstance(cfg, CampusConfig)
    tz = cfg.site.tz
    out = []
    for m in cfg.meters:
        b = cfg.building(m.building)
        assert b is not None
        siblings = [
            x
            for x in cfg.meters
            if x.building == m.building and x.kind == m.kind and x.parent is None and not x.room
        ]
        share = 1.0 / max(1, len(siblings)) if m.parent is None else 0.3
        start = round(1000 + (hash_seed(seed, m.id) % 50000) + 0.0, 2)
        if m.room:  # a room meter carries one room, not a share of its building
            peak = ROOM_PEAK_W if m.kind is MeterKind.ELECTRICITY else 0.05
            out.append(SimMeter(m.id, m.kind, b.type, peak, tz, seed, start=start / 10))
            continue
        out.append(
            SimMeter(
                m.id,
                m.kind,
                b.type,
                peak_for(m.kind, b.type, b.floor_area_m2, b.occupants, share),
                tz,
                seed,
                start=start if _RATE_IN_W[m.kind] else start / 10,
            )
        )
    return out


def hash_seed(seed: int, text: str) -> int:
    """A stable small hash (Python's hash() is salted per process)."""
    h = seed & 0xFFFFFFFF
    for ch in text.encode():
        h = (h * 31 + ch) & 0xFFFFFFFF
    return h
