"""The annual target check (年度目标考核) of every unit: figures, score, pass/fail, ranking.

For a year and each unit (docs/assessment.md):

- comprehensive energy use in kgce (the carriers of ``energy_factors.comprehensive``), per m² and
  per person, and CO2;
- electricity, water (and litres per person per day), gas, heat and each stock fuel in its own
  unit, against the unit's annual targets and against last year's figure less the reduction target;
- a score: each configured indicator scores 100 at or under its target and loses ``slope`` points
  per percent over it (never below 0); the score is the weighted mean over the indicators the
  unit has a target for. A unit passes at ``pass_score`` or more;
- completeness: readings received ÷ expected over every meter the unit's figures come from. Under
  ``completeness_threshold`` (90 %) a unit is flagged and neither passes nor fails, nor is ranked,
  unless an assessor has recorded an override with a reason.

Every meter of the campus is read in one InfluxDB request covering the previous and the assessed
year; the consumption policy is the one behind every other figure (``service.fetch_curves``).
"""

from __future__ import annotations

import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.accounting import periods
from api.accounting.report import csv_text, html_page, html_table, xlsx_table
from api.accounting.service import fetch_curves
from api.accounting.settings import AccountingSettings
from api.accounting.units import amount, floor_area, occupants, readings, term_meters, unit_terms
from campusmon.config import CampusConfig, ConfigError
from campusmon.factors import FUELS, METERED, NATIVE_UNIT, Factors, parse_energy_factors
from campusmon.influx import InfluxStore
from campusmon.quantities import MeterKind

IndicatorId = Literal[
    "energy_total", "energy_per_m2", "energy_per_person", "electricity", "water",
    "water_per_person_day", "gas", "heat", "reduction",
]  # fmt: skip
# Indicator -> (figure it rates, target field, unit)
INDICATORS: dict[str, tuple[str, str, str]] = {
    "energy_total": ("kgce", "energy_kgce", "kgce"),
    "energy_per_m2": ("kgce_per_m2", "energy_kgce_per_m2", "kgce/m2"),
    "energy_per_person": ("kgce_per_person", "energy_kgce_per_person", "kgce/person"),
    "electricity": ("electricity", "electricity_kwh", "kWh"),
    "water": ("water", "water_m3", "m3"),
    "water_per_person_day": ("water_l_per_person_day", "water_l_per_person_day", "L/person/day"),
    "gas": ("gas", "gas_m3", "m3"),
    "heat": ("heat", "heat_kwh", "kWh"),
    "reduction": ("kgce", "", "kgce"),  # target: last year's kgce × (1 − reduction_pct)
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Indicator(_Model):
    id: IndicatorId
    weight: float = Field(gt=0)


class UnitTarget(_Model):
    """A unit's annual targets for one year; any may be left out (that indicator is then not scored)."""

    unit: str
    year: int = Field(ge=2000, le=2100)
    energy_kgce: float | None = Field(default=None, gt=0)
    energy_kgce_per_m2: float | None = Field(default=None, gt=0)
    energy_kgce_per_person: float | None = Field(default=None, gt=0)
    electricity_kwh: float | None = Field(default=None, gt=0)
    water_m3: float | None = Field(default=None, gt=0)
    water_l_per_person_day: float | None = Field(default=None, gt=0)
    gas_m3: float | None = Field(default=None, gt=0)
    heat_kwh: float | None = Field(default=None, gt=0)
    reduction_pct: float | None = Field(default=None, ge=0, lt=100, description="vs the previous year")


DEFAULT_INDICATORS = (
    Indicator(id="energy_per_m2", weight=30),
    Indicator(id="energy_per_person", weight=20),
    Indicator(id="electricity", weight=15),
    Indicator(id="water", weight=15),
    Indicator(id="gas", weight=5),
    Indicator(id="heat", weight=5),
    Indicator(id="reduction", weight=10),
)


class AssessmentSettings(_Model):
    """The ``assessment:`` section of the campus config."""

    indicators: list[Indicator] = Field(default_factory=lambda: list(DEFAULT_INDICATORS), min_length=1)
    pass_score: float = Field(default=60.0, ge=0, le=100)
    slope: float = Field(default=5.0, gt=0, description="points lost per percent over a target")
    completeness_threshold: float = Field(default=0.9, gt=0, le=1)
    targets: list[UnitTarget] = []
    fuel_attribution: dict[Literal["coal", "diesel", "petrol", "lpg"], Literal["delivery", "stock"]] = {}
    allocation_rule: Literal["floor_area", "occupants"] = Field(
        default="floor_area", description="how a shared meter's bill is split between units"
    )

    @model_validator(mode="after")
    def _unique(self) -> AssessmentSettings:
        ids = [i.id for i in self.indicators]
        if len(set(ids)) != len(ids):
            raise ValueError("an indicator is listed twice")
        keys = [(t.unit, t.year) for t in self.targets]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"targets: {sorted(dup)} given twice")
        return self

    def target(self, unit: str, year: int) -> UnitTarget | None:
        return next((t for t in self.targets if t.unit == unit and t.year == year), None)


def _errors(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )


def assessment_settings(cfg: CampusConfig, source: str = "<config>") -> AssessmentSettings:
    """Parsed once per config object; a target naming an unknown unit is refused like any other key."""
    cached = cfg.__dict__.get("_assessment_settings")
    if cached is not None:
        return cached
    try:
        s = AssessmentSettings.model_validate(cfg.assessment or {})
    except ValidationError as e:
        raise ConfigError(f"{source}: assessment: {_errors(e)}") from None
    for i, t in enumerate(s.targets):
        if cfg.unit(t.unit) is None:
            raise ConfigError(
                f"{source}: assessment.targets[{i}]: unit {t.unit!r} is not defined under units"
            )
    cfg.__dict__["_assessment_settings"] = s
    return s


def site_factors(cfg: CampusConfig, acc: AccountingSettings) -> Factors:
    """kgce and CO2 factors of the site: the cited defaults with ``energy_factors:`` over them."""
    cached = cfg.__dict__.get("_site_factors")
    if cached is None:
        cached = Factors(parse_energy_factors(cfg.energy_factors), grid=acc.tariffs.co2_factor)
        cfg.__dict__["_site_factors"] = cached
    return cached


# --- the figures -------------------------------------------------------------------------------


@dataclass(slots=True)
class IndicatorResult:
    id: str
    weight: float
    actual: float | None
    target: float | None
    unit: str
    score: float | None


@dataclass(slots=True)
class UnitResult:
    unit: str
    name: str
    type: str
    floor_area_m2: float
    occupants: float
    native: dict[str, float]  # carrier -> amount in NATIVE_UNIT
    previous: dict[str, float]
    kgce_by_carrier: dict[str, float]
    co2_by_carrier: dict[str, float]
    kgce: float
    previous_kgce: float
    co2_kg: float
    kgce_per_m2: float | None
    kgce_per_person: float | None
    water_l_per_person_day: float | None
    targets: dict[str, float | None]
    reduction_targets: dict[str, float | None]  # carrier or "kgce" -> last year × (1 − r)
    readings_received: int
    readings_expected: int
    completeness: float | None
    flagged: bool
    override_reason: str | None
    indicators: list[IndicatorResult]
    score: float | None
    passed: bool | None
    rank: int | None = None
    why_unranked: str | None = None


@dataclass(slots=True)
class AnnualAssessment:
    year: int
    timezone: str
    start: str
    end: str
    pass_score: float
    completeness_threshold: float
    units: list[UnitResult]
    unassigned: dict[str, float]  # fuel kg no unit holds
    factors: list[dict[str, Any]]
    indicators: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def indicator_score(actual: float, target: float, slope: float) -> float:
    """100 at or under the target, ``slope`` points less per percent over it, never below 0."""
    if actual <= target:
        return 100.0
    return max(0.0, 100.0 * (1.0 - slope * (actual - target) / target))


def _year_bounds(year: int, tz: Any) -> tuple[int, int]:
    return periods.local_midnight(date(year, 1, 1), tz), periods.local_midnight(date(year + 1, 1, 1), tz)


def annual_assessment(
    store: InfluxStore,
    cfg: CampusConfig,
    acc: AccountingSettings,
    year: int,
    fuel_rows: Sequence[Any] = (),
    overrides: dict[str, str] | None = None,
    now: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnnualAssessment:
    """The assessment of every configured unit for ``year`` (local calendar year of the site)."""
    from api.accounting.fuel import by_unit

    tz = cfg.site.tz
    now = int(time.time()) if now is None else now
    st = assessment_settings(cfg)
    fx = site_factors(cfg, acc)
    overrides = overrides or {}
    start, end = _year_bounds(year, tz)
    p_start, _ = _year_bounds(year - 1, tz)
    days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    upto = min(end, max(now, start))
    terms = {(u.id, k): unit_terms(cfg, u, MeterKind(k)) for u in cfg.units for k in METERED}
    meters = term_meters([t for ts in terms.values() for t in ts])
    curves = fetch_curves(store, cfg, meters, p_start, end, acc, cfg.rollups.enabled, now) if meters else {}
    modes = dict(st.fuel_attribution)
    fuel_now = by_unit(cfg, fuel_rows, modes, date(year, 1, 1), date(year + 1, 1, 1))
    fuel_prev = by_unit(cfg, fuel_rows, modes, date(year - 1, 1, 1), date(year, 1, 1))
    results: list[UnitResult] = []
    for u in cfg.units:
        native: dict[str, float] = {}
        prev: dict[str, float] = {}
        for k in METERED:
            native[k] = amount(terms[(u.id, k)], curves, start, end)
            prev[k] = amount(terms[(u.id, k)], curves, p_start, start)
        for f in FUELS:
            native[f] = fuel_now.get((u.id, f), 0.0)
            prev[f] = fuel_prev.get((u.id, f), 0.0)
        kgce_c = {c: fx.kgce(c, v) for c, v in native.items()}
        co2_c = {c: fx.co2(c, v, year) for c, v in native.items()}
        kgce = sum(v for c, v in kgce_c.items() if fx.in_comprehensive(c))
        prev_kgce = sum(fx.kgce(c, v) for c, v in prev.items() if fx.in_comprehensive(c))
        area, people = floor_area(cfg, u), occupants(cfg, u)
        ms = term_meters([t for k in METERED for t in terms[(u.id, k)]])
        rec, exp = readings(ms, curves, start, upto)
        comp = min(1.0, rec / exp) if exp else None
        flagged = comp is not None and comp < st.completeness_threshold
        tgt = st.target(u.id, year)
        red = tgt.reduction_pct if tgt is not None else None
        reduction_targets: dict[str, float | None] = {
            c: (p * (1 - red / 100.0) if red is not None and p > 0 else None)
            for c, p in [("kgce", prev_kgce), *prev.items()]
        }
        figures = {
            "kgce": kgce,
            "kgce_per_m2": kgce / area if area > 0 else None,
            "kgce_per_person": kgce / people if people > 0 else None,
            "electricity": native["electricity"],
            "water": native["water"],
            "water_l_per_person_day": native["water"] * 1000.0 / people / days if people > 0 else None,
            "gas": native["gas"],
            "heat": native["heat"],
        }
        targets = {
            name: (getattr(tgt, name) if tgt is not None else None)
            for name in UnitTarget.model_fields
            if name not in ("unit", "year")
        }
        inds = []
        for ind in st.indicators:
            fig, tfield, iunit = INDICATORS[ind.id]
            actual = figures[fig]
            target = reduction_targets["kgce"] if ind.id == "reduction" else targets.get(tfield)
            score = indicator_score(actual, target, st.slope) if actual is not None and target else None
            inds.append(IndicatorResult(ind.id, ind.weight, actual, target, iunit, score))
        rated = [i for i in inds if i.score is not None]
        wsum = sum(i.weight for i in rated)
        score = sum(i.weight * i.score for i in rated) / wsum if rated else None  # type: ignore[operator]
        reason = overrides.get(u.id)
        eligible = not flagged or reason is not None
        passed = (score >= st.pass_score) if eligible and score is not None else None
        results.append(
            UnitResult(
                unit=u.id,
                name=u.name or u.id,
                type=u.type,
                floor_area_m2=area,
                occupants=people,
                native=native,
                previous=prev,
                kgce_by_carrier=kgce_c,
                co2_by_carrier=co2_c,
                kgce=kgce,
                previous_kgce=prev_kgce,
                co2_kg=sum(co2_c.values()),
                kgce_per_m2=figures["kgce_per_m2"],
                kgce_per_person=figures["kgce_per_person"],
                water_l_per_person_day=figures["water_l_per_person_day"],
                targets=targets,
                reduction_targets=reduction_targets,
                readings_received=rec,
                readings_expected=exp,
                completeness=comp,
                flagged=flagged,
                override_reason=reason,
                indicators=inds,
                score=score,
                passed=passed,
            )  # fmt: skip
        )
        if progress is not None:
            progress(u.id)
    _rank(results)
    return AnnualAssessment(
        year=year,
        timezone=cfg.site.timezone,
        start=periods.iso(start, tz),
        end=periods.iso(end, tz),
        pass_score=st.pass_score,
        completeness_threshold=st.completeness_threshold,
        units=results,
        unassigned={f: v for (uid, f), v in fuel_now.items() if uid == ""},
        factors=fx.table(year),
        indicators=[i.model_dump() for i in st.indicators],
        notes=[f"{r.unit}: {r.completeness:.1%} of the expected readings" for r in results if r.flagged],  # type: ignore[str-format]
    )


def _rank(results: list[UnitResult]) -> None:
    """Best score first; flagged units without an override, and units without a score, are unranked."""
    ok = [r for r in results if r.score is not None and (not r.flagged or r.override_reason is not None)]
    ok.sort(key=lambda r: (-r.score, r.unit))  # type: ignore[operator]
    for i, r in enumerate(ok, start=1):
        r.rank = i
    for r in results:
        if r.rank is None:
            if r.flagged and r.override_reason is None:
                r.why_unranked = f"only {r.completeness:.1%} of the expected readings (under the line)"
            else:
                r.why_unranked = "no target to score against"


# --- output ------------------------------------------------------------------------------------

CARRIER_COLUMNS = [f"{c}_{NATIVE_UNIT[c]}" for c in (*METERED, *FUELS)]
COLUMNS = [
    "rank", "unit", "name", "type", "floor_area_m2", "occupants", "completeness", "flagged",
    "override_reason", "kgce", "kgce_per_m2", "kgce_per_person", "co2_kg", "previous_kgce",
    "kgce_reduction_target", "water_l_per_person_day", *CARRIER_COLUMNS,
    "electricity_target_kwh", "water_target_m3", "gas_target_m3", "heat_target_kwh", "kgce_target",
    "score", "passed", "why_unranked",
]  # fmt: skip


def row(r: UnitResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rank": r.rank,
        "unit": r.unit,
        "name": r.name,
        "type": r.type,
        "floor_area_m2": round(r.floor_area_m2, 2),
        "occupants": round(r.occupants, 2),
        "completeness": None if r.completeness is None else round(r.completeness, 4),
        "flagged": r.flagged,
        "override_reason": r.override_reason,
        "kgce": round(r.kgce, 3),
        "kgce_per_m2": _r(r.kgce_per_m2),
        "kgce_per_person": _r(r.kgce_per_person),
        "co2_kg": round(r.co2_kg, 3),
        "previous_kgce": round(r.previous_kgce, 3),
        "kgce_reduction_target": _r(r.reduction_targets.get("kgce")),
        "water_l_per_person_day": _r(r.water_l_per_person_day),
    }
    for c in (*METERED, *FUELS):
        out[f"{c}_{NATIVE_UNIT[c]}"] = round(r.native[c], 3)
    out["electricity_target_kwh"] = r.targets.get("electricity_kwh")
    out["water_target_m3"] = r.targets.get("water_m3")
    out["gas_target_m3"] = r.targets.get("gas_m3")
    out["heat_target_kwh"] = r.targets.get("heat_kwh")
    out["kgce_target"] = r.targets.get("energy_kgce")
    out["score"] = _r(r.score, 2)
    out["passed"] = r.passed
    out["why_unranked"] = r.why_unranked
    return out


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def to_json(a: AnnualAssessment) -> dict[str, Any]:
    return {
        "year": a.year,
        "timezone": a.timezone,
        "start": a.start,
        "end": a.end,
        "pass_score": a.pass_score,
        "completeness_threshold": a.completeness_threshold,
        "indicators": a.indicators,
        "columns": COLUMNS,
        "units": [
            {
                **row(r),
                "by_carrier": {
                    c: {
                        "amount": round(r.native[c], 4),
                        "unit": NATIVE_UNIT[c],
                        "previous": round(r.previous[c], 4),
                        "reduction_target": _r(r.reduction_targets.get(c)),
                        "kgce": round(r.kgce_by_carrier[c], 4),
                        "co2_kg": round(r.co2_by_carrier[c], 4),
                    }
                    for c in r.native
                },
                "targets": r.targets,
                "indicator_scores": [
                    {
                        "id": i.id,
                        "weight": i.weight,
                        "actual": _r(i.actual),
                        "target": i.target,
                        "unit": i.unit,
                        "score": _r(i.score, 2),
                    }
                    for i in r.indicators
                ],  # fmt: skip
            }
            for r in a.units
        ],
        "unassigned_fuel_kg": a.unassigned,
        "factors": a.factors,
        "notes": a.notes,
    }


def to_csv(a: AnnualAssessment) -> str:
    return csv_text(COLUMNS, (row(r) for r in a.units))


def to_html(a: AnnualAssessment) -> str:
    e = html.escape
    intro = (
        f"<p>{e(a.start)} to {e(a.end)} ({e(a.timezone)}). Pass line {a.pass_score:g} points. Units shaded red "
        f"have under {a.completeness_threshold:.0%} of the expected readings and are neither passed nor "
        "failed without a recorded override.</p>"
    )
    units = html_table(COLUMNS, (row(r) for r in a.units), (r.flagged for r in a.units))
    facs = [
        {"carrier": f["carrier"], "kgce": f"{f['kgce_per_unit']:.6g} kgce/{f['unit']}", "kgce_source": f["kgce_source"],
         "co2": f"{f['co2_kg_per_unit']:.6g} kg/{f['unit']}", "co2_source": f["co2_source"]}
        for f in a.factors
    ]  # fmt: skip
    factors = html_table(["carrier", "kgce", "kgce_source", "co2", "co2_source"], facs)
    return html_page(
        f"Annual assessment {a.year} (年度目标考核)", intro + units + "<h2>Factors</h2>" + factors
    )


def to_xlsx(a: AnnualAssessment) -> bytes:
    """A workbook for the assessors: results, indicator scores, per-carrier figures and the factors."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Assessment"
    xlsx_table(ws, COLUMNS, (row(r) for r in a.units), (r.flagged for r in a.units))
    ws.freeze_panes = "C2"
    ind = wb.create_sheet("Indicators")
    ind.append(["unit", "indicator", "weight", "actual", "target", "unit_of_measure", "score"])
    for r in a.units:
        for i in r.indicators:
            ind.append([r.unit, i.id, i.weight, _r(i.actual), i.target, i.unit, _r(i.score, 2)])
    car = wb.create_sheet("Carriers")
    car.append(
        ["unit", "carrier", "amount", "native_unit", "previous_year", "reduction_target", "kgce", "co2_kg"]
    )
    for r in a.units:
        for c in r.native:
            car.append([r.unit, c, round(r.native[c], 4), NATIVE_UNIT[c], round(r.previous[c], 4),
                        _r(r.reduction_targets.get(c)), round(r.kgce_by_carrier[c], 4),
                        round(r.co2_by_carrier[c], 4)])  # fmt: skip
    fs = wb.create_sheet("Factors")
    keys = [
        "carrier",
        "unit",
        "kgce_per_unit",
        "kgce_source",
        "co2_kg_per_unit",
        "co2_source",
        "in_comprehensive",
    ]
    fs.append(keys)
    for f in a.factors:
        fs.append([f[k] for k in keys])
    info = wb.create_sheet("Settings")
    for k, v in [("year", a.year), ("period", f"{a.start} to {a.end}"), ("timezone", a.timezone),
                 ("pass_score", a.pass_score), ("completeness_threshold", a.completeness_threshold)]:  # fmt: skip
        info.append([k, v])
    for i in a.indicators:
        info.append([f"weight {i['id']}", i["weight"]])
    for n in a.notes:
        info.append(["note", n])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
