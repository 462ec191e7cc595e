"""A simulated campus year: hourly registers of every metered carrier, a coal delivery schedule with
stock-takings, generator diesel, and the ground truth of each.

Each meter's hourly consumption follows a deterministic profile (a daily shape, a season, a seeded
jitter), so the true consumption of any meter over any span of whole hours is the sum of its
hours, tracked apart from what is sent. What is sent may have gaps (a share of the year missing),
to exercise completeness. Stock fuels are burnt day by day; the simulator delivers and counts them
as a boiler house and a generator would, and records what was really burnt.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from campusmon.config import CampusConfig
from campusmon.quantities import REGISTER, MeterKind
from campusmon.reading import Reading

# Mean hourly consumption per m² of floor area (per kind), before the daily and seasonal shape.
PER_M2_HOUR = {
    MeterKind.ELECTRICITY: 0.012,  # kWh
    MeterKind.WATER: 0.00012,  # m3
    MeterKind.GAS: 0.0009,  # m3
    MeterKind.HEAT: 0.03,  # kWh of heat, heating season only
}
HEATING_MONTHS = (1, 2, 3, 11, 12)


def _shape(kind: MeterKind, local: datetime) -> float:
    day = 0.6 + 0.8 * max(0.0, math.sin(math.pi * (local.hour - 6) / 14)) if 6 <= local.hour <= 20 else 0.35
    if kind is MeterKind.HEAT:
        return (1.4 if local.month in HEATING_MONTHS else 0.0) * (0.8 + 0.4 * (local.hour < 8))
    season = 1.0 + 0.25 * math.cos(2 * math.pi * (local.timetuple().tm_yday - 200) / 365)
    return day * season


@dataclass
class SimYear:
    readings: list[Reading]
    hourly: dict[str, dict[int, float]]  # meter -> {hour start: true consumption in that hour}
    fuel_entries: list[dict[str, Any]]  # as POST /api/v1/fuel takes them
    fuel_burnt: dict[tuple[str, str], dict[date, float]]  # (place, fuel) -> {day: kg burnt}
    gaps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def truth(self, meter: str, start: int, end: int) -> float:
        return sum(v for h, v in self.hourly[meter].items() if start <= h < end)

    def burnt(self, place: str, fuel: str, start: date, end: date) -> float:
        return sum(v for d, v in self.fuel_burnt.get((place, fuel), {}).items() if start <= d < end)


def year_start(year: int, cfg: CampusConfig) -> int:
    return int(datetime.combine(date(year, 1, 1), time(0), tzinfo=cfg.site.tz).timestamp())


def simulate_years(
    cfg: CampusConfig,
    first_year: int,
    last_year: int,
    seed: int = 0,
    gaps: dict[str, tuple[int, int]] | None = None,
    coal: dict[str, Any] | None = None,
    diesel: dict[str, Any] | None = None,
) -> SimYear:
    """Hourly registers for every meter from 1 January ``first_year`` to 1 January ``last_year + 1``
    (both marks sent), and the fuel schedule of those years.

    ``coal``: ``{"building": id, "kg_per_day": heating-season burn, "delivery_kg": lot size,
    "supplier": name}``; ``diesel``: ``{"unit": id, "litres": per delivery, "every_days": n}``.
    """
    tz = cfg.site.tz
    t0, t1 = year_start(first_year, cfg), year_start(last_year + 1, cfg)
    gaps = gaps or {}
    out: list[Reading] = []
    hourly: dict[str, dict[int, float]] = {}
    for m in cfg.meters:
        b = cfg.building(m.building)
        area = b.floor_area_m2 if b is not None and b.floor_area_m2 > 0 else 1000.0
        rng = random.Random(f"year:{seed}:{m.id}")
        scale = PER_M2_HOUR[m.kind] * area * (0.8 + 0.4 * rng.random())
        register = round(1000.0 * rng.random(), 3)
        qty = REGISTER[m.kind]
        g0, g1 = gaps.get(m.id, (0, 0))
        hours: dict[int, float] = {}
        for h in range(t0, t1 + 1, 3600):
            if not g0 <= h < g1:
                out.append(Reading(m.id, qty, round(register, 6), h))
            if h == t1:
                break
            used = scale * _shape(m.kind, datetime.fromtimestamp(h, tz)) * (0.9 + 0.2 * rng.random())
            hours[h] = used
            register += used
        hourly[m.id] = hours
    entries: list[dict[str, Any]] = []
    burnt: dict[tuple[str, str], dict[date, float]] = {}
    if coal is not None:
        _coal(coal, first_year, last_year, entries, burnt)
    if diesel is not None:
        _diesel(diesel, first_year, last_year, entries, burnt, seed)
    return SimYear(out, hourly, entries, burnt, dict(gaps))


def _coal(c: dict[str, Any], y0: int, y1: int, entries: list[dict[str, Any]], burnt: dict) -> None:
    """Burn in the heating season, deliver a lot whenever the pile runs low, count the pile quarterly."""
    place = c["building"]
    stock = float(c.get("opening_kg", 60_000.0))
    lot = float(c.get("delivery_kg", 40_000.0))
    day, end = date(y0, 1, 1), date(y1 + 1, 1, 1)
    n = 0
    burn: dict[date, float] = {}
    while day <= end:
        if day.day == 1 and day.month in (1, 4, 7, 10):
            entries.append({"entry": "stock", "fuel": "coal", "day": day.isoformat(), "quantity": round(stock, 3),
                            "unit": "kg", "building": place})  # fmt: skip
        if day == end:
            break
        if stock < 15_000:
            n += 1
            entries.append({"entry": "delivery", "fuel": "coal", "day": day.isoformat(), "quantity": lot / 1000,
                            "unit": "t", "building": place, "supplier": c.get("supplier", "Coal Co."),
                            "receipt": f"C{day:%Y%m%d}-{n}"})  # fmt: skip
            stock += lot
        use = float(c["kg_per_day"]) * (1.0 + 0.1 * math.sin(day.toordinal())) if day.month in HEATING_MONTHS else 0.0
        use = round(use, 3)
        burn[day] = use
        stock -= use
        day += timedelta(days=1)
    burnt[(place, "coal")] = burn


def _diesel(d: dict[str, Any], y0: int, y1: int, entries: list[dict[str, Any]], burnt: dict, seed: int) -> None:
    """Generator diesel is bought as it is burnt: each delivery is that day's use."""
    rng = random.Random(f"diesel:{seed}")
    place, litres, every = d["unit"], float(d["litres"]), int(d.get("every_days", 45))
    density = float(d.get("density_kg_per_l", 0.84))
    day = date(y0, 1, 10)
    burn: dict[date, float] = {}
    while day < date(y1 + 1, 1, 1):
        q = round(litres * (0.8 + 0.4 * rng.random()), 1)
        entries.append({"entry": "delivery", "fuel": "diesel", "day": day.isoformat(), "quantity": q, "unit": "L",
                        "unit_id": place, "supplier": d.get("supplier", "Oil Co."),
                        "receipt": f"D{day:%Y%m%d}"})  # fmt: skip
        burn[day] = q * density
        day += timedelta(days=every)
    burnt[(place, "diesel")] = burn
