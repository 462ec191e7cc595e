"""A unit's share of the campus: its floor area, its people, and its consumption of each metered carrier.

The rules are those of ``campusmon.units``: named meters count in full; the rest of a building (its
total minus the meters units own by name) is split by the floor-area shares of the units that hold
it. A unit's completeness is that of every meter its figures are drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.accounting.campus import Scope, highest, scope_meters
from api.accounting.consumption import Curve
from api.accounting.service import expected_readings
from campusmon.config import Building, CampusConfig, Meter
from campusmon.quantities import QUANTITIES, REGISTER, MeterKind
from campusmon.units import OrgUnit, UnitPart


@dataclass(slots=True)
class Term:
    """``factor`` × the consumption of ``meters`` (highest meters only), minus that of ``minus``."""

    factor: float
    meters: list[Meter]
    minus: list[Meter] = field(default_factory=list)


def owned_meters(cfg: CampusConfig, building: str) -> list[Meter]:
    """Meters of a building that some unit owns by name: taken out before shares are applied."""
    out = []
    for u in cfg.units:
        for p in u.parts:
            if p.building == building:
                out.extend(m for mid in p.meters if (m := cfg.meter(mid)) is not None)
    return out


def part_terms(cfg: CampusConfig, part: UnitPart, kind: MeterKind) -> list[Term]:
    if part.meters:
        ms = [m for mid in part.meters if (m := cfg.meter(mid)) is not None and m.kind is kind]
        return [Term(1.0, highest(cfg, ms))] if ms else []
    ms = scope_meters(cfg, Scope("building", part.building), kind)
    if not ms:
        return []
    owned = highest(cfg, [m for m in owned_meters(cfg, part.building) if m.kind is kind])
    return [Term(1.0 if part.share is None else part.share, ms, owned)]


def unit_terms(cfg: CampusConfig, unit: OrgUnit, kind: MeterKind) -> list[Term]:
    return [t for p in unit.parts for t in part_terms(cfg, p, kind)]


def term_meters(terms: Sequence[Term]) -> list[Meter]:
    seen: dict[str, Meter] = {}
    for t in terms:
        for m in [*t.meters, *t.minus]:
            seen.setdefault(m.id, m)
    return list(seen.values())


def amount(terms: Sequence[Term], curves: dict[str, Curve], start: int, end: int) -> float:
    """The terms' consumption in ``[start, end)``; a share of a building never goes below zero."""
    total = 0.0
    for t in terms:
        whole = sum(curves[m.id].between(start, end) for m in t.meters if m.id in curves)
        out = sum(curves[m.id].between(start, end) for m in t.minus if m.id in curves)
        total += t.factor * max(0.0, whole - out)
    return total


def readings(meters: Sequence[Meter], curves: dict[str, Curve], start: int, end: int) -> tuple[int, int]:
    """(received, expected) readings of the meters in ``[start, end)``."""
    rec = sum(curves[m.id].count_in(start, end) for m in meters if m.id in curves)
    exp = sum(expected_readings(m, start, end) for m in meters)
    return rec, exp


def _part_share(b: Building, part: UnitPart) -> float:
    if part.share is not None:
        return part.share
    return 0.0 if part.meters else 1.0


def floor_area(cfg: CampusConfig, unit: OrgUnit) -> float:
    total = 0.0
    for p in unit.parts:
        b = cfg.building(p.building)
        if b is not None:
            total += p.floor_area_m2 if p.floor_area_m2 is not None else _part_share(b, p) * b.floor_area_m2
    return total


def occupants(cfg: CampusConfig, unit: OrgUnit) -> float:
    if unit.occupants is not None:
        return float(unit.occupants)
    total = 0.0
    for p in unit.parts:
        b = cfg.building(p.building)
        if b is not None:
            total += p.occupants if p.occupants is not None else _part_share(b, p) * b.occupants
    return total


def building_shares(cfg: CampusConfig, building: str) -> list[tuple[str, float]]:
    """(unit id, share) of the units that hold a building by whole or by floor-area share.

    Fuel entered against a building is split this way; meters owned by name carry no fuel.
    """
    out = []
    for u in cfg.units:
        for p in u.parts:
            if p.building == building and not p.meters:
                out.append((u.id, 1.0 if p.share is None else p.share))
    return out


def units_of_building(cfg: CampusConfig, building: str) -> list[str]:
    """Every unit with any part in a building (for routing its alerts)."""
    return [u.id for u in cfg.units if any(p.building == building for p in u.parts)]


def unit_series(
    store: Any,
    cfg: CampusConfig,
    acc: Any,
    unit: OrgUnit,
    period: str,
    start: int,
    end: int,
    now: int,
) -> dict[str, Any]:
    """``/consumption?scope=unit:<id>``: a unit's consumption of each metered carrier per local period.

    The same shape as a building's series. Cost is left out (a unit's bill splits shared meters
    hour by hour: ``/api/v1/allocation/monthly``); CO2 is given for electricity, as for buildings.
    """
    from api.accounting import periods
    from api.accounting.service import MAX_HOURS, co2_kg, fetch_curves

    tz = cfg.site.tz
    bks = periods.buckets(start, end, period, tz)  # type: ignore[arg-type]
    if not bks:
        raise ValueError("end must be after start")
    lo, hi = bks[0].start, bks[-1].end
    if (hi - lo) // 3600 > MAX_HOURS:
        raise ValueError(f"the range spans {(hi - lo) // 3600} hours; at most {MAX_HOURS} (three years)")
    terms = {k: unit_terms(cfg, unit, k) for k in MeterKind}
    meters = term_meters([t for ts in terms.values() for t in ts])
    curves = fetch_curves(store, cfg, meters, lo, hi, acc, cfg.rollups.enabled) if meters else {}
    series = []
    for kind, ts in terms.items():
        if not ts:
            continue
        ms = term_meters(ts)
        points = []
        for b in bks:
            v = amount(ts, curves, b.start, b.end)
            rec, exp = readings(ms, curves, b.start, min(b.end, max(now, b.start)))
            co2 = co2_kg(acc, kind, v, periods.local_date(b.start, tz).year)
            points.append(
                {
                    "label": b.label,
                    "start": periods.iso(b.start, tz),
                    "end": periods.iso(b.end, tz),
                    "hours": b.hours,
                    "value": round(v, 4),
                    "cost": None,
                    "co2_kg": None if co2 is None else round(co2, 3),
                    "readings": rec,
                    "expected_readings": exp,
                    "completeness": round(min(1.0, rec / exp), 4) if exp else 0.0,
                }
            )
        series.append(
            {
                "kind": kind.value,
                "quantity": REGISTER[kind],
                "unit": QUANTITIES[REGISTER[kind]].unit,
                "meters": [m.id for m in ms],
                "shares": [
                    {"factor": t.factor, "meters": [m.id for m in t.meters], "minus": [m.id for m in t.minus]}
                    for t in ts
                ],  # fmt: skip
                "total": round(sum(p["value"] for p in points), 4),
                "cost": None,
                "co2_kg": round(sum(p["co2_kg"] or 0.0 for p in points), 3)
                if kind is MeterKind.ELECTRICITY
                else None,
                "points": points,
            }
        )
    return {
        "scope": f"unit:{unit.id}",
        "period": period,
        "timezone": cfg.site.timezone,
        "start": periods.iso(lo, tz),
        "end": periods.iso(hi, tz),
        "currency": acc.tariffs.currency,
        "co2_factor": acc.tariffs.co2_factor(periods.local_date(lo, tz).year).model_dump(),
        "series": series,
        "events": [],
        "events_total": 0,
    }


def units_month(
    store: Any, cfg: CampusConfig, acc: Any, start: int, end: int, now: int, measure_factor: Any
) -> list[dict[str, Any]]:
    """Every unit's consumption of each carrier over one month, for the monthly report (one request).

    ``measure_factor(carrier)`` converts a native amount (1.0 for native units); the total adds the
    carriers ``measure_factor`` marks as summable (``None``: no total, as for native units).
    """
    from api.accounting.service import fetch_curves

    terms = {(u.id, k): unit_terms(cfg, u, k) for u in cfg.units for k in MeterKind}
    meters = term_meters([t for ts in terms.values() for t in ts])
    curves = fetch_curves(store, cfg, meters, start, end, acc, cfg.rollups.enabled) if meters else {}
    out = []
    for u in cfg.units:
        carriers = []
        total: float | None = None
        for k in MeterKind:
            ts = terms[(u.id, k)]
            if not ts:
                continue
            f, unit_name, summed = measure_factor(k.value)
            v = amount(ts, curves, start, end) * f
            rec, exp = readings(term_meters(ts), curves, start, min(end, max(now, start)))
            carriers.append({"carrier": k.value, "amount": round(v, 4), "unit": unit_name,
                             "completeness": round(min(1.0, rec / exp), 4) if exp else 0.0})  # fmt: skip
            if summed:
                total = (total or 0.0) + v
        out.append({"unit": u.id, "name": u.name or u.id, "carriers": carriers,
                    "total": None if total is None else round(total, 3)})  # fmt: skip
    return out
