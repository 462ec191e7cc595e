"""HTTP API of units, fuel entries, hand-read meters, factors, the annual assessment and cost allocation."""

from __future__ import annotations

import time
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.accounting import allocation, assessment, fuel, periods
from api.accounting.measure import MEASURE_DOC, MEASURE_UNIT, Measure, factor
from api.accounting.routes import _cfg, _influx_errors, _session, _settings, _store
from api.accounting.units import amount, floor_area, occupants, readings, term_meters, unit_terms
from api.auth import actor
from api.deps import ID_PATTERN, errors
from api.timeparse import DATE_PATTERN, MONTH_PATTERN
from campusmon.config import ConfigError
from campusmon.db import AssessmentOverride
from campusmon.factors import FUELS, METERED, NATIVE_UNIT
from campusmon.quantities import MeterKind

router = APIRouter(
    tags=["assessment"], responses=errors(422, 503, e503="InfluxDB or the database is unavailable")
)
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_NO_UNIT = errors(404, e404="the unit is not in the campus config")


def _assessment_cfg(request: Request) -> Any:
    try:
        return assessment.assessment_settings(_cfg(request), "campus config")
    except ConfigError as e:
        raise HTTPException(500, detail=f"assessment configuration is invalid: {e}") from None


def _year(year: int | None, request: Request) -> int:
    return year if year is not None else periods.local_date(int(time.time()), _cfg(request).site.tz).year


def _file(body: bytes | str, media: str, name: str) -> Response:
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


# --- factors and units -------------------------------------------------------------------------


@router.get("/api/v1/factors")
def factors(request: Request, year: int | None = Query(None, ge=2000, le=2100)) -> dict[str, Any]:
    """Every kgce and CO2 factor in force for a year, with its source."""
    y = _year(year, request)
    return {"year": y, "factors": assessment.site_factors(_cfg(request), _settings(request)).table(y)}


@router.get("/api/v1/units")
def list_units(request: Request) -> dict[str, Any]:
    cfg = _cfg(request)
    return {
        "units": [
            {
                "id": u.id,
                "name": u.name,
                "type": u.type,
                "floor_area_m2": round(floor_area(cfg, u), 3),
                "occupants": round(occupants(cfg, u), 3),
                "parts": [p.model_dump() for p in u.parts],
                "notify": u.notify,
            }  # fmt: skip
            for u in cfg.units
        ]
    }


@router.get("/api/v1/units/{unit_id}/consumption", responses=_NO_UNIT | errors(502))
def unit_consumption(
    request: Request,
    unit_id: str = Path(pattern=ID_PATTERN, max_length=200),
    year: int | None = Query(None, ge=2000, le=2100),
    measure: Measure = Query("native", description=MEASURE_DOC),
) -> dict[str, Any]:
    """A unit's consumption of each metered carrier per month of a year, with completeness."""
    from api.accounting.service import fetch_curves

    cfg, acc = _cfg(request), _settings(request)
    u = cfg.unit(unit_id)
    if u is None:
        raise HTTPException(404, detail=f"unit {unit_id!r} is not in the campus config")
    y = _year(year, request)
    tz = cfg.site.tz
    bks = periods.buckets(
        periods.local_midnight(date(y, 1, 1), tz), periods.local_midnight(date(y + 1, 1, 1), tz), "month", tz
    )
    now = int(time.time())
    terms = {k: unit_terms(cfg, u, MeterKind(k)) for k in METERED}
    meters = term_meters([t for ts in terms.values() for t in ts])
    with _influx_errors():
        curves = (
            fetch_curves(
                _store(request), cfg, meters, bks[0].start, bks[-1].end, acc, cfg.rollups.enabled, now
            )
            if meters
            else {}
        )
    series = []
    for k, ts in terms.items():
        if not ts:
            continue
        f = 1.0 if measure == "native" else factor(cfg, acc, k, measure, y)
        ms = term_meters(ts)
        pts = []
        for b in bks:
            rec, exp = readings(ms, curves, b.start, min(b.end, max(now, b.start)))
            pts.append({"label": b.label, "value": round(amount(ts, curves, b.start, b.end) * f, 4),
                        "completeness": round(min(1.0, rec / exp), 4) if exp else None})  # fmt: skip
        series.append({"carrier": k, "unit": NATIVE_UNIT[k] if measure == "native" else
                       MEASURE_UNIT[measure], "meters": [m.id for m in ms],
                       "total": round(sum(p["value"] for p in pts), 4), "points": pts})  # fmt: skip
    return {"unit": u.id, "year": y, "measure": measure, "series": series}


# --- annual assessment -------------------------------------------------------------------------


def overrides_for(request: Request, year: int) -> dict[str, str]:
    with _session(request) as s:
        rows = s.scalars(select(AssessmentOverride).where(AssessmentOverride.year == year))
        return {r.org_unit: r.reason for r in rows}


def _fuel_rows(request: Request) -> list[Any]:
    with _session(request) as s:
        return fuel.entries(s)


def run_assessment(request: Request, year: int) -> assessment.AnnualAssessment:
    cfg, acc = _cfg(request), _settings(request)
    _assessment_cfg(request)
    with _influx_errors():
        return assessment.annual_assessment(
            _store(request), cfg, acc, year, _fuel_rows(request), overrides_for(request, year)
        )


@router.get(
    "/api/v1/assessment/annual",
    response_model=None,
    responses=errors(502)
    | {
        200: {
            "description": "JSON, CSV, HTML or XLSX (see format)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
                _XLSX: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },  # fmt: skip
)
def annual(
    request: Request,
    year: int | None = Query(None, ge=2000, le=2100),
    format: Literal["json", "csv", "html", "xlsx"] = Query("json"),
) -> Response | dict[str, Any]:
    """The annual target check of every unit (年度目标考核)."""
    a = run_assessment(request, _year(year, request))
    if format == "csv":
        return _file(assessment.to_csv(a), "text/csv; charset=utf-8", f"assessment-{a.year}.csv")
    if format == "html":
        return HTMLResponse(assessment.to_html(a))
    if format == "xlsx":
        return _file(assessment.to_xlsx(a), _XLSX, f"assessment-{a.year}.xlsx")
    return assessment.to_json(a)


UnitMetric = Literal["score", "kgce", "kgce_per_m2", "kgce_per_person", "co2_kg"]


@router.get("/api/v1/rankings/units", responses=errors(502))
def unit_rankings(
    request: Request,
    year: int | None = Query(None, ge=2000, le=2100),
    metric: UnitMetric = Query("score", description="score: highest first; the others: lowest first"),
) -> dict[str, Any]:
    """Units ranked for a year; flagged units (under the completeness line, no override) come last, unranked."""
    a = run_assessment(request, _year(year, request))
    rows = [assessment.row(r) for r in a.units]
    ok = [r for r in rows if r[metric] is not None and (not r["flagged"] or r["override_reason"])]
    ok.sort(key=lambda r: (-r[metric] if metric == "score" else r[metric], r["unit"]))
    rest = [r for r in rows if r not in ok]
    return {
        "year": a.year,
        "metric": metric,
        "rankings": [
            {**r, "rank": i + 1 if i < len(ok) else None, "value": r[metric]} for i, r in enumerate(ok + rest)
        ],
    }


class OverrideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    year: int = Field(ge=2000, le=2100)
    unit: str = Field(pattern=ID_PATTERN, max_length=200)
    reason: str = Field(min_length=5, max_length=2000, description="why the figures can be judged anyway")


@router.post(
    "/api/v1/assessment/overrides", status_code=201, responses=errors(400, 404, 409, e404="unknown unit")
)
def add_override(request: Request, body: OverrideBody) -> dict[str, Any]:
    """Judge a unit under the completeness line anyway; the reason and the assessor are recorded."""
    if _cfg(request).unit(body.unit) is None:
        raise HTTPException(404, detail=f"unit {body.unit!r} is not in the campus config")
    with _session(request) as s:
        if s.scalars(select(AssessmentOverride).where(AssessmentOverride.year == body.year,
                                                      AssessmentOverride.org_unit == body.unit)).first():  # fmt: skip
            raise HTTPException(409, detail=f"unit {body.unit!r} already has an override for {body.year}")
        row = AssessmentOverride(
            year=body.year, org_unit=body.unit, reason=body.reason.strip(), decided_by=actor(request)
        )
        s.add(row)
        s.commit()
        return {
            "id": row.id,
            "year": row.year,
            "unit": row.org_unit,
            "reason": row.reason,
            "decided_by": row.decided_by,
        }


@router.get("/api/v1/assessment/overrides")
def list_overrides(request: Request, year: int | None = Query(None, ge=2000, le=2100)) -> dict[str, Any]:
    with _session(request) as s:
        q = select(AssessmentOverride).order_by(AssessmentOverride.id)
        if year is not None:
            q = q.where(AssessmentOverride.year == year)
        return {"overrides": [{"id": r.id, "year": r.year, "unit": r.org_unit, "reason": r.reason,
                               "decided_by": r.decided_by, "decided_at": r.decided_at.isoformat()}
                              for r in s.scalars(q)]}  # fmt: skip


# --- fuel and hand-read meters -----------------------------------------------------------------


class FuelBody(BaseModel):
    """A delivery (needs its receipt) or a stock-taking of coal, diesel, petrol or LPG."""

    model_config = ConfigDict(extra="forbid")
    entry: Literal["delivery", "stock"] = "delivery"
    fuel: str = Field(max_length=20, description="coal | diesel | petrol | lpg")
    day: date
    quantity: float
    unit: str = Field(max_length=10, description="t or kg (coal), L, kg or t (diesel, petrol), kg or t (LPG)")
    density_kg_per_l: float | None = None
    building: str | None = Field(default=None, max_length=200)
    unit_id: str | None = Field(default=None, max_length=200, description="the organisational unit")
    supplier: str = Field(default="", max_length=200)
    receipt: str | None = Field(default=None, max_length=200)
    note: str = Field(default="", max_length=2000)


@router.post(
    "/api/v1/fuel", status_code=201, responses=errors(400, 409, e409="the receipt is already entered")
)
def add_fuel(request: Request, body: FuelBody) -> dict[str, Any]:
    """Enter one delivery or stock-taking; refused with the field and the problem when it does not fit."""
    cfg, acc = _cfg(request), _settings(request)
    fx = assessment.site_factors(cfg, acc)
    e = fuel.FuelInput(body.fuel, body.day, body.quantity, body.unit, body.building, body.unit_id,
                       body.supplier, body.receipt, body.entry, body.density_kg_per_l, body.note)  # fmt: skip
    with _session(request) as s:
        try:
            return fuel.add_entry(s, cfg, fx, e, actor(request))
        except fuel.FuelInvalid as err:
            raise HTTPException(
                409 if err.conflict else 422, detail=f"{err.field}: {err}" if err.field else str(err)
            ) from None


@router.get("/api/v1/fuel")
def list_fuel(
    request: Request,
    fuel_name: str | None = Query(None, alias="fuel", pattern="^(coal|diesel|petrol|lpg)$"),
    start: str | None = Query(None, pattern=DATE_PATTERN, description="YYYY-MM-DD"),
    end: str | None = Query(None, pattern=DATE_PATTERN, description="YYYY-MM-DD, exclusive"),
) -> dict[str, Any]:
    first = date.fromisoformat(start) if start else None
    last = date.fromisoformat(end) if end else None
    with _session(request) as s:
        return {
            "entries": [fuel.as_dict(r) for r in fuel.entries(s, fuel_name, first, last)],
            "fuels": list(FUELS),
        }


class ManualReading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meter: str = Field(max_length=64)
    time: str = Field(max_length=40, description="ISO 8601 (local when no offset) or Unix seconds")
    value: float
    quantity: str | None = Field(default=None, max_length=64, description="default: the meter's register")
    unit: str | None = Field(default=None, max_length=16)


class ManualBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    readings: list[ManualReading] = Field(min_length=1, max_length=10000)


@router.post("/api/v1/readings/manual", responses=errors(400, e422="no reading was acceptable"))
async def manual_readings(request: Request, body: ManualBody) -> Any:
    """Meter registers read by hand, through the same ingest path (and checks) as every other reading."""
    from api.routes_ingest import _ingestor

    cfg = _cfg(request)
    ing = _ingestor(request)
    who = actor(request)
    out = await run_in_threadpool(fuel.ingest_manual, ing, cfg, [r.model_dump() for r in body.readings], who)
    if not out["stored"]:
        raise HTTPException(422, detail={"message": "no acceptable readings", **out})
    return out


# --- cost allocation ---------------------------------------------------------------------------


@router.get(
    "/api/v1/allocation/monthly",
    response_model=None,
    responses=errors(502) | {200: {"description": "JSON, CSV or XLSX", "content": {
        "text/csv": {"schema": {"type": "string"}}, _XLSX: {"schema": {"type": "string", "format": "binary"}}}}},
)  # fmt: skip
def monthly_allocation(
    request: Request,
    month: str = Query(pattern=MONTH_PATTERN, description="YYYY-MM"),
    format: Literal["json", "csv", "xlsx"] = Query("json"),
) -> Response | dict[str, Any]:
    """Each unit's bill for a month: its own meters in full, shared buildings split by the configured rule."""
    cfg, acc = _cfg(request), _settings(request)
    rule = _assessment_cfg(request).allocation_rule
    with _influx_errors():
        lines = allocation.monthly_allocation(_store(request), cfg, acc, month)
    if format == "csv":
        return _file(allocation.to_csv(lines), "text/csv; charset=utf-8", f"allocation-{month}.csv")
    if format == "xlsx":
        return _file(allocation.to_xlsx(lines, rule), _XLSX, f"allocation-{month}.xlsx")
    return {"month": month, "rule": rule, "lines": [allocation.line_dict(x) for x in lines],
            "totals": allocation.totals(lines)}  # fmt: skip
