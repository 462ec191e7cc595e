"""HTTP API of consumption accounting: series, building summaries, rankings, monthly reports, targets."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, WithJsonSchema, create_model
from pydantic.fields import FieldInfo
from sqlalchemy.orm import Session

from api.accounting import measure as measures
from api.accounting import periods, service, target_repo
from api.accounting.campus import ScopeError, parse_scope
from api.accounting.report import to_csv, to_html, to_json
from api.accounting.settings import AccountingSettings, accounting_settings
from api.accounting.targets import ScopeType, TargetInvalid, TargetSpec, validate_spec
from api.accounting.units import unit_series, units_month
from api.auth import actor
from api.deps import ID_PATTERN, RowId, errors
from api.timeparse import LOCAL_TIME_DOC, LOCAL_TIME_PATTERN, MONTH_PATTERN, PATTERN_HINTS
from campusmon.config import CampusConfig, ConfigError
from campusmon.influx import InfluxStore, QueryError, StoreUnavailable
from campusmon.quantities import MeterKind

router = APIRouter(
    tags=["accounting"],
    responses=errors(422, 503, e503="InfluxDB (or the target database) is unavailable; retry later"),
)
_INFLUX = errors(502)
_NO_TARGET = errors(404, e404="no such target")
SCOPE_PATTERN = "^(?:campus|(?:building|meter|unit):[A-Za-z0-9_.-]{1,200}|group:.{1,200}|category:[0-9]{2}[A-Z0-9]{3,20})$"
CATEGORY_PATTERN = r"^(?:[0-9]{2}[A-Z0-9]{3,20})?$"
PATTERN_HINTS[SCOPE_PATTERN] = (
    "use campus, building:<id>, group:<name>, category:<code> (a sub-item code such as 01A00), meter:<id> or "
    "unit:<id>"
)
PATTERN_HINTS[CATEGORY_PATTERN] = "not a sub-item code such as 01A00 or 02000"
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_text(v: Any) -> Any:
    """Only ``YYYY-MM-DD`` text: pydantic alone would also take a number of seconds or a date-time."""
    if isinstance(v, date) or (isinstance(v, str) and _ISO_DATE.fullmatch(v)):
        return v
    raise ValueError("expected a date as YYYY-MM-DD")


IsoDate = Annotated[date, BeforeValidator(_date_text), WithJsonSchema({"type": "string", "format": "date"})]


class TargetBody(TargetSpec):
    """An energy-saving target. Besides the field types: ``scope_id`` is empty for ``campus`` and names a
    building, group or unit otherwise (a unit's target covers a whole carrier, no sub-item); ``period`` is required for a ``quota`` and absent for other types; a
    ``reduction`` is under 100 (percent) and alone takes ``baseline_start``/``baseline_end`` (both or
    neither, in order); ``valid_to`` is not before ``valid_from``; ``kind`` follows from ``category``
    (codes 02... are water) and must agree with it when both are given."""

    scope_id: str = Field(default="", max_length=200, description="building id, group name or unit id")
    category: str = Field(default="", pattern=CATEGORY_PATTERN, description="sub-item code, e.g. 01A00")
    value: StrictFloat = Field(
        gt=0, description="see the type: kWh or m3, per m2 and year, per person and day, or %"
    )
    baseline_start: IsoDate | None = None
    baseline_end: IsoDate | None = None
    valid_from: IsoDate | None = None
    valid_to: IsoDate | None = None
    note: str = Field(default="", max_length=2000)


def _optional(f: FieldInfo) -> FieldInfo:
    g = copy.copy(f)
    g.default, g.default_factory = None, None
    return g


# A partial target: any of the fields, merged into the stored one and then checked as a whole.
TargetPatch: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "TargetPatch",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Fields to change; the merged target must be valid as a whole (see TargetBody).",
    **{n: (f.annotation, _optional(f)) for n, f in TargetBody.model_fields.items()},
)


def _cfg(request: Request) -> CampusConfig:
    return request.app.state.cfg


def _settings(request: Request) -> AccountingSettings:
    try:
        return accounting_settings(_cfg(request), "campus config")
    except ConfigError as e:
        raise HTTPException(500, detail=f"accounting configuration is invalid: {e}") from None


def _store(request: Request) -> InfluxStore:
    return request.app.state.store


@contextmanager
def _session(request: Request) -> Iterator[Session]:
    factory = getattr(request.app.state, "sessions", None)
    if factory is None:
        raise HTTPException(503, detail="the target database is not configured")
    with factory() as s:
        yield s


def _targets(request: Request) -> list[service.TargetRecord]:
    if getattr(request.app.state, "sessions", None) is None:
        return []
    with _session(request) as s:
        return [(t.id, target_repo.as_spec(t)) for t in target_repo.all_targets(s)]


@contextmanager
def _influx_errors() -> Iterator[None]:
    """Store trouble is the server's problem (503/502); bad parameters are the caller's (422)."""
    try:
        yield
    except StoreUnavailable as e:
        raise HTTPException(503, detail=f"InfluxDB is unavailable: {e}") from None
    except QueryError as e:
        raise HTTPException(502, detail=f"InfluxDB refused the query: {e}") from None
    except ScopeError as e:
        raise HTTPException(404 if e.not_found else 422, detail=str(e)) from None
    except ValueError as e:
        raise HTTPException(422, detail=str(e)) from None


def _month(month: str | None, cfg: CampusConfig, now: int) -> str:
    if month is None:
        return periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label
    return month


_DEFAULT_SPAN = {"hour": "day", "day": "month", "week": "month", "month": "year", "year": "year"}


@router.get(
    "/api/v1/consumption",
    responses=_INFLUX
    | errors(
        404,
        e404="the scope's building, meter, group or unit is not in the campus config",
        e422="invalid parameter, end not after start, or a range over three years",
    ),
)
def consumption(
    request: Request,
    scope: str = Query(
        "campus",
        pattern=SCOPE_PATTERN,
        description="campus | building:<id> | group:<name> | category:<code> | meter:<id> | unit:<id>",
    ),
    period: periods.Period = Query("day"),
    start: str | None = Query(
        None, pattern=LOCAL_TIME_PATTERN, description=LOCAL_TIME_DOC + "; default: start of the current span"
    ),
    end: str | None = Query(None, pattern=LOCAL_TIME_PATTERN, description="exclusive; default: now"),
    measure: measures.Measure = Query("native", description=measures.MEASURE_DOC),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    tz = cfg.site.tz
    now = int(time.time())
    with _influx_errors():
        unit = None
        if scope.startswith("unit:"):
            unit = cfg.unit(scope.removeprefix("unit:"))
            if unit is None:
                raise ScopeError(
                    f"unit {scope.removeprefix('unit:')!r} is not in the campus config", not_found=True
                )
        sc = parse_scope("campus" if unit is not None else scope, cfg)
        t0 = periods.parse_local(start, tz) if start else periods.floor(now, _DEFAULT_SPAN[period], tz)  # type: ignore[arg-type]
        t1 = periods.parse_local(end, tz) if end else now
        if t1 <= t0:
            raise ValueError("end must be after start")
        if (t1 - t0) // 3600 > service.MAX_HOURS:  # refused before hundreds of thousands of buckets are built
            raise ValueError(
                f"the range spans {(t1 - t0) // 3600} hours; at most {service.MAX_HOURS} (three years)"
            )
        if unit is not None:
            out = unit_series(_store(request), cfg, settings, unit, period, t0, t1, now)
        else:
            out = service.consumption_series(_store(request), cfg, settings, sc, period, t0, t1, now)
    return measures.consumption_in(out, cfg, settings, measure)


@router.get(
    "/api/v1/buildings/{building_id}/summary",
    responses=_INFLUX | errors(404, e404="the building is not in the campus config"),
)
def building_summary(
    request: Request,
    building_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=200)],
    at: str | None = Query(
        None,
        pattern=LOCAL_TIME_PATTERN,
        description="evaluate as of this time (default: now): " + LOCAL_TIME_DOC,
    ),
    measure: measures.Measure = Query("native", description=measures.MEASURE_DOC),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    if cfg.building(building_id) is None:
        raise HTTPException(404, detail=f"building {building_id!r} is not in the campus config")
    with _influx_errors():
        now = periods.parse_local(at, cfg.site.tz) if at else int(time.time())
        out = service.building_summary(_store(request), cfg, settings, building_id, _targets(request), now)
    return measures.summary_in(out, cfg, settings, measure)


@router.get("/api/v1/rankings", responses=_INFLUX)
def rankings(
    request: Request,
    period: Literal["month"] = Query("month", description="rankings are monthly assessments"),
    month: str | None = Query(None, pattern=MONTH_PATTERN, description="YYYY-MM (default: this month)"),
    metric: Literal[service.METRICS] = Query("intensity"),  # type: ignore[valid-type]
    kind: MeterKind = Query(MeterKind.ELECTRICITY),
    measure: measures.Measure = Query("native", description=measures.MEASURE_DOC),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    now = int(time.time())
    with _influx_errors():
        rep = service.monthly_report(
            _store(request), cfg, settings, _month(month, cfg, now), _targets(request), now
        )
    rows = service.rankings(rep, metric, kind)
    converted = measures.report_in(rep, cfg, settings, measure)
    return {
        "month": rep.month,
        "metric": metric,
        "kind": kind.value,
        "measure": measure,
        "rankings": measures.rankings_in(rows, converted, kind.value, metric, measure),
    }


@router.get(
    "/api/v1/reports/monthly",
    response_model=None,
    responses=_INFLUX
    | {
        200: {
            "description": "the report as JSON, CSV or HTML (see format)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
)
def monthly_report(
    request: Request,
    month: str | None = Query(None, pattern=MONTH_PATTERN, description="YYYY-MM (default: this month)"),
    format: Literal["json", "csv", "html"] = Query("json"),
    measure: measures.Measure = Query(
        "native", description=measures.MEASURE_DOC + "; JSON adds each scope's total over carriers"
    ),
) -> Response | dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    now = int(time.time())
    with _influx_errors():
        rep = service.monthly_report(
            _store(request), cfg, settings, _month(month, cfg, now), _targets(request), now
        )
    rep = measures.report_in(rep, cfg, settings, measure)
    if format == "csv":
        name = f"campus-report-{rep.month}{'' if measure == 'native' else '-' + measure}.csv"
        return Response(to_csv(rep), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
    if format == "html":
        return HTMLResponse(to_html(rep, measure))
    totals = None if measure == "native" else measures.totals(rep, cfg, settings, measure)
    out = to_json(rep, measure, totals)
    if cfg.units:  # each organisational unit's month, its shares of shared buildings included
        bucket = periods.month_range(rep.month, cfg.site.tz)
        per = measures.carrier_factor(cfg, settings, measure, int(rep.month[:4]))
        with _influx_errors():
            out["units"] = units_month(_store(request), cfg, settings, bucket.start, bucket.end, now, per)
    return out


# --- targets -----------------------------------------------------------------------------------


@router.get("/api/v1/targets")
def list_targets(
    request: Request, scope: ScopeType | None = None, scope_id: str | None = Query(None, max_length=200)
) -> dict[str, Any]:
    with _session(request) as s:
        return {"targets": [target_repo.as_dict(t) for t in target_repo.all_targets(s, scope, scope_id)]}


@router.get("/api/v1/targets/history")
def all_history(request: Request, limit: int = Query(500, ge=1, le=10000)) -> dict[str, Any]:
    with _session(request) as s:
        return {"history": target_repo.history(s, None, limit)}


def _spec(request: Request, body: Any) -> Any:
    try:
        return validate_spec(body, _cfg(request))
    except TargetInvalid as e:
        raise HTTPException(422, detail=str(e)) from None


_BODY = errors(400, e422="invalid target; the message names the field and the problem")


@router.post("/api/v1/targets", status_code=201, responses=_BODY)
def create_target(request: Request, body: TargetBody) -> dict[str, Any]:
    spec = _spec(request, body.model_dump())
    with _session(request) as s:
        return target_repo.create(s, spec, actor(request))


@router.get("/api/v1/targets/{target_id:int}", responses=_NO_TARGET)
def get_target(request: Request, target_id: RowId) -> dict[str, Any]:
    with _session(request) as s:
        t = target_repo.get(s, target_id)
        if t is None:
            raise HTTPException(404, detail=f"target {target_id} does not exist")
        return target_repo.as_dict(t)


@router.put("/api/v1/targets/{target_id:int}", responses=_NO_TARGET | _BODY)
def replace_target(request: Request, target_id: RowId, body: TargetBody) -> dict[str, Any]:
    spec = _spec(request, body.model_dump())
    with _session(request) as s:
        out = target_repo.update(s, target_id, spec, actor(request))
    if out is None:
        raise HTTPException(404, detail=f"target {target_id} does not exist")
    return out


@router.patch("/api/v1/targets/{target_id:int}", responses=_NO_TARGET | _BODY)
def patch_target(
    request: Request,
    target_id: RowId,
    body: TargetPatch,  # type: ignore[valid-type]
) -> dict[str, Any]:
    change = body.model_dump(exclude_unset=True)
    with _session(request) as s:
        t = target_repo.get(s, target_id)
        if t is None:
            raise HTTPException(404, detail=f"target {target_id} does not exist")
        current = {k: v for k, v in target_repo.as_dict(t).items() if k in target_repo.FIELDS}
        spec = _spec(request, {**current, **change})
        return target_repo.update(s, target_id, spec, actor(request)) or {}


@router.delete("/api/v1/targets/{target_id:int}", status_code=204, responses=_NO_TARGET)
def delete_target(request: Request, target_id: RowId) -> Response:
    with _session(request) as s:
        if not target_repo.delete(s, target_id, actor(request)):
            raise HTTPException(404, detail=f"target {target_id} does not exist")
    return Response(status_code=204)


@router.get("/api/v1/targets/{target_id:int}/history", responses=errors(404, e404="not a target id"))
def target_history(request: Request, target_id: RowId) -> dict[str, Any]:
    with _session(request) as s:
        return {"history": target_repo.history(s, target_id)}
