"""HTTP API of consumption accounting: series, building summaries, rankings, monthly reports, targets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from api.accounting import periods, service, target_repo
from api.accounting.campus import ScopeError, parse_scope
from api.accounting.report import to_csv, to_html, to_json
from api.accounting.settings import AccountingSettings, accounting_settings
from api.accounting.targets import TargetInvalid, validate_spec
from campusmon.config import CampusConfig, ConfigError
from campusmon.influx import InfluxStore, QueryError, StoreUnavailable
from campusmon.quantities import MeterKind

router = APIRouter(tags=["accounting"])


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


@router.get("/api/v1/consumption")
def consumption(
    request: Request,
    scope: str = Query(
        "campus", description="campus | building:<id> | group:<name> | category:<code> | meter:<id>"
    ),
    period: periods.Period = Query("day"),
    start: str | None = Query(
        None, description="local date or date-time; default: start of the current span"
    ),
    end: str | None = Query(None, description="exclusive; default: now"),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    tz = cfg.site.tz
    now = int(time.time())
    with _influx_errors():
        sc = parse_scope(scope, cfg)
        t0 = periods.parse_local(start, tz) if start else periods.floor(now, _DEFAULT_SPAN[period], tz)  # type: ignore[arg-type]
        t1 = periods.parse_local(end, tz) if end else now
        if t1 <= t0:
            raise ValueError("end must be after start")
        return service.consumption_series(_store(request), cfg, settings, sc, period, t0, t1, now)


@router.get("/api/v1/buildings/{building_id}/summary")
def building_summary(
    request: Request,
    building_id: str,
    at: str | None = Query(None, description="evaluate as of this local time (default: now)"),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    if cfg.building(building_id) is None:
        raise HTTPException(404, detail=f"building {building_id!r} is not in the campus config")
    with _influx_errors():
        now = periods.parse_local(at, cfg.site.tz) if at else int(time.time())
        return service.building_summary(_store(request), cfg, settings, building_id, _targets(request), now)


@router.get("/api/v1/rankings")
def rankings(
    request: Request,
    period: str = Query("month"),
    month: str | None = Query(None, description="YYYY-MM (default: this month)"),
    metric: str = Query("intensity", description="intensity | per_capita | vs_target"),
    kind: MeterKind = Query(MeterKind.ELECTRICITY),
) -> dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    if period != "month":
        raise HTTPException(422, detail="period: rankings are monthly assessments; use period=month")
    if metric not in service.METRICS:
        raise HTTPException(422, detail=f"metric: {metric!r} is not one of {', '.join(service.METRICS)}")
    now = int(time.time())
    with _influx_errors():
        rep = service.monthly_report(
            _store(request), cfg, settings, _month(month, cfg, now), _targets(request), now
        )
    return {
        "month": rep.month,
        "metric": metric,
        "kind": kind.value,
        "rankings": service.rankings(rep, metric, kind),
    }


@router.get("/api/v1/reports/monthly", response_model=None)
def monthly_report(
    request: Request,
    month: str | None = Query(None, description="YYYY-MM (default: this month)"),
    format: str = Query("json", description="json | csv | html"),
) -> Response | dict[str, Any]:
    cfg, settings = _cfg(request), _settings(request)
    if format not in ("json", "csv", "html"):
        raise HTTPException(422, detail=f"format: {format!r} is not json, csv or html")
    now = int(time.time())
    with _influx_errors():
        rep = service.monthly_report(
            _store(request), cfg, settings, _month(month, cfg, now), _targets(request), now
        )
    if format == "csv":
        name = f"campus-report-{rep.month}.csv"
        return Response(to_csv(rep), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
    if format == "html":
        return HTMLResponse(to_html(rep))
    return to_json(rep)


# --- targets -----------------------------------------------------------------------------------


@router.get("/api/v1/targets")
def list_targets(request: Request, scope: str | None = None, scope_id: str | None = None) -> dict[str, Any]:
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


@router.post("/api/v1/targets", status_code=201)
def create_target(
    request: Request, body: Any = Body(...), x_actor: str = Header("api", max_length=200)
) -> dict[str, Any]:
    spec = _spec(request, body)
    with _session(request) as s:
        return target_repo.create(s, spec, x_actor)


@router.get("/api/v1/targets/{target_id}")
def get_target(request: Request, target_id: int) -> dict[str, Any]:
    with _session(request) as s:
        t = target_repo.get(s, target_id)
        if t is None:
            raise HTTPException(404, detail=f"target {target_id} does not exist")
        return target_repo.as_dict(t)


@router.put("/api/v1/targets/{target_id}")
def replace_target(
    request: Request, target_id: int, body: Any = Body(...), x_actor: str = Header("api", max_length=200)
) -> dict[str, Any]:
    spec = _spec(request, body)
    with _session(request) as s:
        out = target_repo.update(s, target_id, spec, x_actor)
    if out is None:
        raise HTTPException(404, detail=f"target {target_id} does not exist")
    return out


@router.patch("/api/v1/targets/{target_id}")
def patch_target(
    request: Request, target_id: int, body: Any = Body(...), x_actor: str = Header("api", max_length=200)
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPException(422, detail="body: expected a JSON object")
    with _session(request) as s:
        t = target_repo.get(s, target_id)
        if t is None:
            raise HTTPException(404, detail=f"target {target_id} does not exist")
        current = {k: v for k, v in target_repo.as_dict(t).items() if k in target_repo.FIELDS}
        spec = _spec(request, {**current, **body})
        return target_repo.update(s, target_id, spec, x_actor) or {}


@router.delete("/api/v1/targets/{target_id}", status_code=204)
def delete_target(request: Request, target_id: int, x_actor: str = Header("api", max_length=200)) -> Response:
    with _session(request) as s:
        if not target_repo.delete(s, target_id, x_actor):
            raise HTTPException(404, detail=f"target {target_id} does not exist")
    return Response(status_code=204)


@router.get("/api/v1/targets/{target_id}/history")
def target_history(request: Request, target_id: int) -> dict[str, Any]:
    with _session(request) as s:
        return {"history": target_repo.history(s, target_id)}
