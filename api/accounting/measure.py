"""Any consumption figure in its own unit, in kgce or in kg CO2: ``measure=native|kgce|co2``.

The conversion is a factor per carrier (and per year for CO2), applied after the figures are
computed, so every endpoint converts the same way and the native figures stay the source.
"""

from __future__ import annotations

from typing import Any, Literal

from api.accounting.assessment import site_factors
from api.accounting.settings import AccountingSettings
from campusmon.config import CampusConfig

Measure = Literal["native", "kgce", "co2"]
MEASURE_UNIT = {"kgce": "kgce", "co2": "kgCO2"}


def factor(cfg: CampusConfig, acc: AccountingSettings, carrier: str, measure: str, year: int) -> float:
    fx = site_factors(cfg, acc)
    if measure == "kgce":
        return fx.kgce_factor(carrier)
    return fx.co2_factor(carrier, year)[0]


def _scale(d: dict[str, Any], keys: tuple[str, ...], f: float) -> None:
    for k in keys:
        if isinstance(d.get(k), int | float) and not isinstance(d.get(k), bool):
            d[k] = round(d[k] * f, 4)


def consumption_in(
    result: dict[str, Any], cfg: CampusConfig, acc: AccountingSettings, measure: str
) -> dict[str, Any]:
    """A ``/consumption`` result with every value converted (cost and CO2 columns are left as they are)."""
    if measure == "native":
        return result
    for s in result.get("series", []):
        for p in s.get("points", []):
            _scale(p, ("value",), factor(cfg, acc, s["kind"], measure, int(p["start"][:4])))
        s["total"] = round(sum(p["value"] or 0.0 for p in s.get("points", [])), 4)
        s["native_unit"] = s.get("unit")
        s["unit"] = MEASURE_UNIT[measure]
    result["measure"] = measure
    return result


def rankings_in(
    rows: list[dict[str, Any]], cfg: CampusConfig, acc: AccountingSettings, kind: str, measure: str, year: int
) -> list[dict[str, Any]]:
    """Ranking rows of one carrier converted; the order is unchanged (one factor for all of them)."""
    if measure == "native":
        return rows
    f = factor(cfg, acc, kind, measure, year)
    for r in rows:
        _scale(r, ("consumption", "target"), f)
        native = r.get("unit", "")
        if native.startswith("%"):
            continue  # a deviation from target is the same in any measure
        _scale(r, ("value",), f)
        r["unit"] = MEASURE_UNIT[measure] + native[native.index("/") :] if "/" in native else MEASURE_UNIT[measure]
    return rows
