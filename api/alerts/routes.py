"""The alert feed: list with cursor pagination, one alert, ack/clear/assign/notes, SSE, Atom, deliveries,
silences and backtests. Paths are absolute (``/api/v1/alerts...``)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from sqlalchemy import select

from api.alerts.backtest import BacktestError, backtest
from api.alerts.feeds import atom, sse_frame
from api.alerts.models import AlertSilence
from api.alerts.notify.dispatcher import deliveries_json, retry_delivery
from api.alerts.rules import RULES, Severity, known_pattern, rule_matches
from api.alerts.scheduler import alert_services
from api.alerts.store import STATUSES
from api.auth import actor, identity
from api.deps import MAX_ID, RowId, errors
from api.timeparse import TIME_DOC, TIME_PATTERN, parse_time

router = APIRouter(tags=["alerts"], responses=errors(422))
PREFIX = "/api/v1/alerts"
SSE_PING_S = 15.0

Status = Literal[STATUSES]  # type: ignore[valid-type]
_SEV = "(?:" + "|".join(s.value for s in Severity) + ")"
SEVERITIES_PATTERN = f"^{_SEV}(?:,{_SEV})*$"
_NO_ALERT = errors(404, e404="no such alert")
_BODY = errors(400)
Time = Annotated[str, Field(pattern=TIME_PATTERN, description=TIME_DOC)]
Name = Annotated[str, Field(max_length=120)]
RulePattern = Annotated[str, Field(pattern=r"^(?:\*|[a-z_]+(?:\.(?:\*|[a-z_]+))?)$", max_length=80)]


class AtomResponse(Response):
    media_type = "application/atom+xml"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorBody(_Body):
    by: Name = "api"


class AssignBody(_Body):
    assignee: Name | None = Field(description="who takes it; null unassigns")
    by: Name = "api"


class NoteBody(_Body):
    text: str = Field(min_length=1, max_length=10000)
    author: Name = "api"


class SilenceBody(_Body):
    """Alerts matching every given list (an empty list matches all) stay quiet from start to end."""

    kind: Literal["silence", "maintenance"] = "silence"
    rules: list[Name] = Field(default=[], description="rule ids or families such as leak.*")
    buildings: list[Name] = Field(default=[], description="building ids from the campus config")
    subjects: list[Name] = []
    start: Time
    end: Time = Field(description="after start")
    reason: str = Field(default="", max_length=2000)
    by: Name = "api"


class BacktestBody(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"start": "2026-10-01", "end": "2026-10-02"}]}
    )

    start: Time
    end: Time = Field(description="after start, at most 400 days later")
    rules: list[RulePattern] | None = Field(
        default=None, description="rule ids or patterns such as dorm.* (default: every rule)"
    )

    @field_validator("rules")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        unknown = [r for r in v or [] if not known_pattern(r)]
        if unknown:
            raise ValueError(f"no rule matches {', '.join(unknown)}")
        return v

    step_s: StrictInt | None = Field(default=None, ge=60, le=86400)
    commit: StrictBool = False
    include_alerts: StrictBool = True
    labels: dict[str, Any] | list[dict[str, Any]] | None = Field(
        default=None, description="labelled incidents to score the alerts against (docs/alerts.md)"
    )


def _actor(request: Request, _given: str = "") -> str:
    """The authenticated identity; no header or body field (``by``, ``author``) names who acted."""
    return actor(request)


def _in_scope(request: Request, building: str | None) -> str | None:
    """A building-limited identity lists only its buildings; "" when none it asked for is its own."""
    mine = identity(request).buildings
    if not mine:
        return building
    asked = {b.strip() for b in building.split(",")} if building else set(mine)
    return ",".join(sorted(asked & mine))


def _since(request: Request, since: str | None) -> int | None:
    if since is None:
        return None
    return parse_time(since, request.app.state.cfg.site.tz, "since")


@router.get(PREFIX, responses=errors(e422="invalid parameter, or a cursor this API did not return"))
def list_alerts(
    request: Request,
    status: Status | None = Query(None, description="default all"),
    severity: str | None = Query(
        None, pattern=SEVERITIES_PATTERN, description="comma-separated: critical,major,minor,warning,info"
    ),
    building: str | None = Query(None, max_length=2000, description="building ids, comma-separated"),
    rule: str | None = Query(
        None, max_length=2000, description="rule ids, comma-separated; 'leak.*' matches a family"
    ),
    subject: str | None = Query(None, max_length=200),
    since: str | None = Query(None, pattern=TIME_PATTERN, description="changed at or after: " + TIME_DOC),
    source: Literal["live", "backtest", "all"] = "live",
    cursor: str | None = Query(
        None, pattern="^[A-Za-z0-9_-]{1,40}$", description="next_cursor of the previous page (opaque)"
    ),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    building = _in_scope(request, building)
    if building == "":
        return {"count": 0, "alerts": [], "next_cursor": None}
    store = alert_services(request.app).store
    try:
        items, nxt = store.query(
            status,
            severity,
            building,
            rule,
            _since(request, since),
            cursor,
            limit,
            None if source == "all" else source,
            subject,
        )
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return {"count": len(items), "alerts": items, "next_cursor": nxt}


@router.get(PREFIX + "/rules")
def list_rules(request: Request) -> dict[str, Any]:
    """Every rule with its id, defaults, campus-wide settings and the standard behind it."""
    acfg = alert_services(request.app).acfg
    out = []
    for r in RULES.values():
        p = acfg.params(r.id)
        out.append(
            {
                "id": r.id,
                "kind": r.kind,
                "title": r.title,
                "severity": (p.severity or r.severity).value,
                "applies_to": r.applies_to,
                "basis": r.basis,
                "check": r.check,
                "settings": p.model_dump(mode="json"),
            }
        )
    return {"rules": out}


@router.get(
    PREFIX + "/stream",
    response_class=StreamingResponse,
    responses={200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request, last_event_id: int | None = Query(None, ge=0, le=MAX_ID)
) -> StreamingResponse:
    """Server-Sent Events; reconnect with ``Last-Event-ID`` (or ``?last_event_id=``) to resume without gaps.

    Without either, the stream starts at the next event; ``?last_event_id=0`` replays the whole log.
    """
    svc = alert_services(request.app)
    header = request.headers.get("last-event-id")
    start = last_event_id
    if header is not None:
        try:
            start = int(header)
        except ValueError:
            raise HTTPException(422, f"Last-Event-ID {header!r} is not an event id") from None
    if start is None:
        start = await asyncio.to_thread(svc.store.last_event_id)

    async def gen() -> Any:
        last = start
        bus = svc.bus
        waiter = bus.register()
        try:
            yield "retry: 2000\n\n"
            while True:
                waiter[1].clear()
                events = bus.after(last)
                if events is None:  # older than what the feed keeps in memory: from the database
                    events = await asyncio.to_thread(svc.store.events_after, last, 500)
                for e in events:
                    yield sse_frame(e)
                    last = e["id"]
                if events:
                    continue
                if await request.is_disconnected():
                    return
                try:
                    await asyncio.wait_for(waiter[1].wait(), SSE_PING_S)
                except TimeoutError:
                    yield ": ping\n\n"
        finally:
            bus.unregister(waiter)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


@router.get(PREFIX + "/events")
def events(
    request: Request, after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=1000)
) -> dict[str, Any]:
    """The event log after an id (what the SSE stream carries), for clients that poll."""
    evs = alert_services(request.app).store.events_after(after, limit)
    return {"events": evs, "last_event_id": evs[-1]["id"] if evs else after}


@router.get(
    PREFIX + "/feed.atom",
    response_class=AtomResponse,
    responses={
        200: {"description": "Atom 1.0", "content": {"application/atom+xml": {"schema": {"type": "string"}}}}
    },
)
def atom_feed(
    request: Request,
    building: str | None = Query(None, max_length=200),
    rule: str | None = Query(
        None, max_length=2000, description="rule ids, comma-separated; 'leak.*' matches a family"
    ),
    severity: str | None = Query(None, pattern=SEVERITIES_PATTERN, description="comma-separated"),
    limit: int = Query(100, ge=1, le=500),
) -> Response:
    """Atom 1.0 feed of the latest alert events (filter by building, rule or severity)."""
    svc = alert_services(request.app)
    evs = svc.store.recent_events(2000)
    rules = [r.strip() for r in rule.split(",")] if rule else []
    sevs = [s.strip() for s in severity.split(",")] if severity else []
    picked = []
    for e in evs:
        a = e["alert"]
        if building and a.get("building") != building:
            continue
        if not rule_matches(a["rule"], rules):
            continue
        if sevs and a["severity"] not in sevs:
            continue
        picked.append(e)
        if len(picked) >= limit:
            break
    base = svc.acfg.settings.public_url or str(request.base_url)
    body = atom(picked, str(request.url), base, f"{request.app.state.cfg.site.name}: waste alerts")
    return AtomResponse(body, media_type="application/atom+xml; charset=utf-8")


@router.get(PREFIX + "/deliveries")
def deliveries(
    request: Request,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Notification deliveries, newest first; failed ones keep their last error."""
    items = deliveries_json(request.app.state.sessions, status, limit)
    return {"count": len(items), "deliveries": items}


@router.post(PREFIX + "/deliveries/{delivery_id:int}/retry", responses=errors(404, e404="no such delivery"))
def retry(request: Request, delivery_id: RowId) -> dict[str, Any]:
    if not retry_delivery(request.app.state.sessions, delivery_id):
        raise HTTPException(404, f"delivery {delivery_id} not found")
    return {"id": delivery_id, "status": "pending"}


def _silence_json(r: AlertSilence, request: Request) -> dict[str, Any]:
    tz = request.app.state.cfg.site.tz
    return {
        "id": r.id,
        "kind": r.kind,
        "rules": r.rules,
        "buildings": r.buildings,
        "subjects": r.subjects,
        "start": datetime.fromtimestamp(r.start, tz).isoformat(),
        "end": datetime.fromtimestamp(r.end, tz).isoformat(),
        "reason": r.reason,
        "created_by": r.created_by,
    }


@router.get(PREFIX + "/silences")
def list_silences(request: Request) -> dict[str, Any]:
    svc = alert_services(request.app)
    with request.app.state.sessions() as s:
        rows = [_silence_json(r, request) for r in s.scalars(select(AlertSilence).order_by(AlertSilence.id))]
    cfg_rows = [c.model_dump(mode="json") for c in svc.acfg.settings.silences]
    return {"silences": rows, "configured": cfg_rows}


@router.post(
    PREFIX + "/silences",
    status_code=201,
    responses=_BODY | errors(e422="invalid body, end not after start, or an unknown rule or building"),
)
def add_silence(request: Request, body: SilenceBody) -> dict[str, Any]:
    tz = request.app.state.cfg.site.tz
    start, end = parse_time(body.start, tz, "start"), parse_time(body.end, tz, "end")
    if end <= start:
        raise HTTPException(422, "end must be after start")
    unknown = [r for r in body.rules if not known_pattern(r)]
    if unknown:
        raise HTTPException(422, f"rule pattern(s) matching no rule: {', '.join(unknown)}")
    cfg = request.app.state.cfg
    missing = [b for b in body.buildings if cfg.building(b) is None]
    if missing:
        raise HTTPException(422, f"unknown building(s): {', '.join(missing)}")
    import time

    with request.app.state.sessions() as s, s.begin():
        row = AlertSilence(
            kind=body.kind,
            rules=body.rules,
            buildings=body.buildings,
            subjects=body.subjects,
            start=start,
            end=end,
            reason=body.reason,
            created_by=_actor(request, body.by),
            created_at=int(time.time()),
        )
        s.add(row)
        s.flush()
        out = _silence_json(row, request)
    alert_services(request.app).store.forget_silences()
    return out


@router.delete(PREFIX + "/silences/{silence_id:int}", responses=errors(404, e404="no such silence"))
def delete_silence(request: Request, silence_id: RowId) -> dict[str, Any]:
    with request.app.state.sessions() as s, s.begin():
        row = s.get(AlertSilence, silence_id)
        if row is None:
            raise HTTPException(404, f"silence {silence_id} not found")
        s.delete(row)
    alert_services(request.app).store.forget_silences()
    return {"id": silence_id, "deleted": True}


@router.post(
    PREFIX + "/backtest",
    responses=_BODY | errors(503, e422="invalid body, end not after start, or longer than 400 days"),
)
def run_backtest(request: Request, body: BacktestBody) -> dict[str, Any]:
    """Evaluate rules over a past period; the results stay out of the live feed unless ``commit`` is true."""
    cfg = request.app.state.cfg
    tz = cfg.site.tz
    start, end = parse_time(body.start, tz, "start"), parse_time(body.end, tz, "end")
    try:
        res = backtest(
            cfg,
            request.app.state.store,
            start,
            end,
            list(body.rules) if body.rules is not None else None,
            body.step_s,
            request.app.state.sessions,
            alert_services(request.app).acfg,
            commit=body.commit,
        )
    except BacktestError as e:
        raise HTTPException(422, str(e)) from None
    out: dict[str, Any] = {"summary": res.summary()}
    if body.labels is not None:
        from api.alerts.labels import LabelsError, parse_labels, score_labels

        try:
            scored = parse_labels(body.labels)
        except LabelsError as e:
            raise HTTPException(422, f"labels: {e}") from None
        out["score"] = score_labels(scored, res.alerts, len(cfg.meters), start, end, tz)
    if body.include_alerts:
        out["alerts"] = res.alerts
    return out


@router.post(PREFIX + "/evaluate", responses=errors(503))
def evaluate_now(request: Request) -> dict[str, Any]:
    """Run one window-rule pass now (the scheduler does this every ``alerts.schedule.interval_s``)."""
    svc = alert_services(request.app)
    events = svc.evaluator.run()
    return {"events": len(events), "pass": svc.evaluator.last_pass}


@router.get(PREFIX + "/{alert_id:int}", responses=_NO_ALERT)
def get_alert(request: Request, alert_id: RowId) -> dict[str, Any]:
    a = alert_services(request.app).store.get(alert_id)
    if a is None:
        raise HTTPException(404, f"alert {alert_id} not found")
    return a


def _done(a: dict[str, Any] | None, alert_id: int) -> dict[str, Any]:
    if a is None:
        raise HTTPException(404, f"alert {alert_id} not found")
    return a


@router.post(PREFIX + "/{alert_id:int}/ack", responses=_NO_ALERT | _BODY)
def ack(request: Request, alert_id: RowId, body: ActorBody | None = None) -> dict[str, Any]:
    by = _actor(request, (body or ActorBody()).by)
    return _done(alert_services(request.app).store.ack(alert_id, by), alert_id)


@router.post(PREFIX + "/{alert_id:int}/clear", responses=_NO_ALERT | _BODY)
def clear(request: Request, alert_id: RowId, body: ActorBody | None = None) -> dict[str, Any]:
    """Clear by hand; the alert will not reopen until its condition has ended once."""
    by = _actor(request, (body or ActorBody()).by)
    return _done(alert_services(request.app).store.clear(alert_id, by), alert_id)


@router.post(PREFIX + "/{alert_id:int}/assign", responses=_NO_ALERT | _BODY)
def assign(request: Request, alert_id: RowId, body: AssignBody) -> dict[str, Any]:
    return _done(
        alert_services(request.app).store.assign(alert_id, body.assignee, _actor(request, body.by)), alert_id
    )


@router.post(PREFIX + "/{alert_id:int}/notes", status_code=201, responses=_NO_ALERT | _BODY)
def add_note(request: Request, alert_id: RowId, body: NoteBody) -> dict[str, Any]:
    return _done(
        alert_services(request.app).store.add_note(alert_id, _actor(request, body.author), body.text),
        alert_id,
    )
