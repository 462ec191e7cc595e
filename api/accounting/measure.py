"""Any consumption figure in its own unit, in kgce or in kg CO2: ``measure=native|kgce|co2``.

The conversion is a factor per carrier (and per year for CO2), applied after the native figures
are computed, so every endpoint converts the same way, the native figures stay the source, and a
site's override of one factor changes exactly the figures of that carrier. Ratios (share of quota,
deviation from target, completeness) are the same in every measure and are left alone; cost and
the ``co2_kg`` column stay as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

from api.accounting.assessment import site_factors
from api.accounting.service import MonthlyReport, ReportRow
from api.accounting.settings import AccountingSettings
from campusmon.config import CampusConfig

Measure = Literal["native", "kgce", "co2"]
MEASURE_UNIT = {"kgce": "kgce", "co2": "kgCO2"}
MEASURE_DOC = "native: each carrier in its own unit; kgce: standard coal (GB/T 2589); co2: kg CO2"
# Water per person and day is reported in litres; the factors are per m3.
_LITRES = 1000.0


def factor(cfg: CampusConfig, acc: AccountingSettings, carrier: str, measure: str, year: int) -> float:
    """kgce or kg CO2 per native unit of ``carrier`` (CO2 factors are per consumption year)."""
    fx = site_factors(cfg, acc)
    if measure == "kgce":
        return fx.kgce_factor(carrier)
    return fx.co2_factor(carrier, year)[0]


def _scale(d: dict[str, Any], keys: Iterable[str], f: float) -> None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            d[k] = _fine(v * f)


def _per_unit(native: str, measure: str) -> str:
    """``kWh/m2`` -> ``kgce/m2``; ``L/person/day`` -> ``kgce/person/day``."""
    return MEASURE_UNIT[measure] + (native[native.index("/") :] if "/" in native else "")


def consumption_in(
    result: dict[str, Any], cfg: CampusConfig, acc: AccountingSettings, measure: str
) -> dict[str, Any]:
    """A ``/consumption`` result with every value converted, point by point in its own year."""
    result["measure"] = measure
    if measure == "native":
        return result
    for s in result.get("series", []):
        for p in s.get("points", []):
            _scale(p, ("value",), factor(cfg, acc, s["kind"], measure, int(p["start"][:4])))
        s["total"] = round(sum(p["value"] or 0.0 for p in s.get("points", [])), 4)
        s["native_unit"] = s.get("unit")
        s["unit"] = MEASURE_UNIT[measure]
    return result


def summary_in(
    result: dict[str, Any], cfg: CampusConfig, acc: AccountingSettings, measure: str
) -> dict[str, Any]:
    """A building summary with today's and this month's figures, quotas and projection converted."""
    result["measure"] = measure
    if measure == "native":
        return result
    year = int(result["at"][:4])
    for k in result.get("kinds", []):
        f = factor(cfg, acc, k["kind"], measure, year)
        _scale(k["today"], ("value", "quota"), f)
        _scale(k["month"], ("value", "quota", "projected"), f)
        k["native_unit"] = k["unit"]
        k["unit"] = MEASURE_UNIT[measure]
    return result


def rankings_in(
    rows: list[dict[str, Any]], converted: MonthlyReport, kind: str, metric: str, measure: str
) -> list[dict[str, Any]]:
    """Ranking rows (ranked on native figures) with their amounts taken from the converted report.

    The order stays the native one: one factor per carrier cannot reorder buildings, and a zero
    factor (water in CO2) must not turn the ranking alphabetical.
    """
    if measure == "native":
        return rows
    from api.accounting.campus import KIND_CODE
    from campusmon.quantities import MeterKind

    code = KIND_CODE[MeterKind(kind)]
    by_building = {r.scope_id: r for r in converted.rows if r.scope == "building" and r.category == code}
    key = {"intensity": "intensity", "per_capita": "per_capita_day"}.get(metric)
    for row in rows:
        r = by_building[row["building"]]
        row["consumption"], row["target"] = _fine(r.consumption), _fine(r.target)
        if key is not None:  # a deviation from target is the same in any measure
            row["value"] = _fine(getattr(r, key))
            row["unit"] = _per_unit(row["unit"], measure)
    return rows


def _fine(v: float | None) -> float | None:
    """Four decimals, as native figures, but never fewer than six significant digits (small kgce)."""
    if v is None:
        return None
    return round(v, 4) if abs(v) >= 1 else float(f"{v:.6g}")


def row_in(r: ReportRow, f: float, measure: str) -> ReportRow:
    """One report row converted by ``f`` (per native unit)."""

    def x(v: float | None, g: float = f) -> float | None:
        return None if v is None else v * g

    per_cap = f / _LITRES if r.kind == "water" else f
    return dataclasses.replace(
        r,
        unit=MEASURE_UNIT[measure],
        consumption=r.consumption * f,
        intensity=x(r.intensity),
        per_capita_day=x(r.per_capita_day, per_cap),
        target=x(r.target),
    )


def report_in(rep: MonthlyReport, cfg: CampusConfig, acc: AccountingSettings, measure: str) -> MonthlyReport:
    """The monthly report with every row's amounts in kgce or kg CO2 (a new report; ``rep`` is kept)."""
    if measure == "native":
        return rep
    year = int(rep.month[:4])
    rows = [row_in(r, factor(cfg, acc, r.kind, measure, year), measure) for r in rep.rows]
    return dataclasses.replace(rep, rows=rows)


def totals(
    rep: MonthlyReport, cfg: CampusConfig, acc: AccountingSettings, measure: str
) -> list[dict[str, Any]]:
    """Each building's, group's and the campus's total over carriers of a converted report.

    kgce adds the carriers of ``energy_factors.comprehensive`` (water, a working medium, is out by
    default); CO2 adds every carrier. Only a carrier's whole-kind row counts, never its sub-items.
    """
    from api.accounting.campus import KIND_CODE

    fx = site_factors(cfg, acc)
    whole = {k.value: c for k, c in KIND_CODE.items()}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rep.rows:
        if whole.get(r.kind) != r.category:
            continue
        if measure == "kgce" and not fx.in_comprehensive(r.kind):
            continue
        t = out.setdefault(
            (r.scope, r.scope_id),
            {"scope": r.scope, "scope_id": r.scope_id, "name": r.name, "unit": MEASURE_UNIT[measure],
             "total": 0.0, "carriers": [], "low_completeness": False},
        )  # fmt: skip
        t["total"] += r.consumption
        t["carriers"].append(r.kind)
        t["low_completeness"] = t["low_completeness"] or r.low_completeness
    for t in out.values():
        t["total"] = round(t["total"], 3)
    return list(out.values())


def carrier_factor(cfg: CampusConfig, acc: AccountingSettings, measure: str, year: int) -> Any:
    """``carrier -> (factor, unit, in the total)`` for a measure, as ``units.units_month`` wants it."""
    from campusmon.factors import NATIVE_UNIT

    fx = site_factors(cfg, acc)

    def of(carrier: str) -> tuple[float, str, bool]:
        if measure == "native":
            return 1.0, NATIVE_UNIT[carrier], False
        summed = measure == "co2" or fx.in_comprehensive(carrier)
        return factor(cfg, acc, carrier, measure, year), MEASURE_UNIT[measure], summed

    return of
