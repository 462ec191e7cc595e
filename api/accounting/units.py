"""A unit's share of the campus: its floor area, its people, and its consumption of each metered carrier.

The rules are those of ``campusmon.units``: named meters count in full; the rest of a building (its
total minus the meters units own by name) is split by the floor-area shares of the units that hold
it. A unit's completeness is that of every meter its figures are drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from api.accounting.campus import Scope, highest, scope_meters
from api.accounting.consumption import Curve
from api.accounting.service import expected_readings
from campusmon.config import Building, CampusConfig, Meter
from campusmon.quantities import MeterKind
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
