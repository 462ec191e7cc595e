"""Quotas: a daily, monthly or yearly quota already exceeded, or on course to be.

Targets come from accounting's ``targets`` table (type ``quota``). The forecast projects the rest
of the period with the hour-of-day profile of the last 7 days, so a daily quota checked at 09:00
is not fooled by a quiet night.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.accounting.periods import buckets, hour_starts
from api.alerts.rules.base import Finding, Level, Params, Subject
from api.alerts.rules.context import Quota, WindowContext


class QuotaExceededParams(Params):
    clear_ratio: float = Field(default=1.0, gt=0, le=1, description="a new period clears the alert")


class QuotaForecastParams(Params):
    margin: float = Field(
        default=0.0, ge=0, description="fire when the projection exceeds the quota by this share"
    )
    clear_margin: float = Field(
        default=0.05, ge=0, lt=1, description="clear when it is this share under the quota"
    )
    min_elapsed_share: float = Field(default=0.1, ge=0, lt=1, description="of the period before projecting")
    pace_days: int = Field(default=7, ge=1)


def quota_subject(q: Quota, building: str) -> Subject:
    variant = f"target-{q.target_id}" if q.target_id is not None else f"{q.kind}-{q.period}"
    if q.scope == "building":
        return Subject("building", q.id, building, variant)
    if q.scope == "unit":
        return Subject("unit", q.id, building, variant)
    return Subject("building", f"{q.scope}:{q.id}" if q.id else q.scope, building, variant)


def _period(q: Quota, ctx: WindowContext) -> tuple[int, int, int] | None:
    """(period start, period end, index of the period's first hour in the timeline)."""
    if not ctx.upto:
        return None
    tl = ctx.timeline
    last = tl.starts[ctx.upto - 1]
    b = buckets(last, last + 1, q.period, tl.tz)[0]  # type: ignore[arg-type]
    first = tl.index(b.start)
    if first < 0 or tl.starts[first] != b.start:
        return None  # the window does not reach back to the period start
    return b.start, b.end, first


def _used(meters: list[str], ctx: WindowContext, a: int, b: int) -> float:
    return sum(sum(ctx.series[m].used[a:b]) for m in meters if m in ctx.series)


def _scope_used(q: Quota, meters: list[str], ctx: WindowContext, a: int, b: int) -> float:
    """A unit's quota applies its shares (a share of a building never below zero), as accounting does."""
    if not q.terms:
        return _used(meters, ctx, a, b)
    return sum(
        f * max(0.0, _used(list(ms), ctx, a, b) - _used(list(out), ctx, a, b)) for f, ms, out in q.terms
    )


def quota_exceeded(
    q: Quota, ctx: WindowContext, p: QuotaExceededParams, state: dict, building: str, meters: list[str]
) -> Finding | None:
    per = _period(q, ctx)
    if per is None:
        return None
    start, end, first = per
    used = _scope_used(q, meters, ctx, first, ctx.upto)
    unit = "kWh" if q.kind == "electricity" else "m3"
    days = (ctx.timeline.end_of(ctx.upto - 1) - start) / 86400
    detail = {
        "quota": q.limit,
        "used": round(used, 3),
        "period": q.period,
        "target": q.name,
        "period_start": start,
        "period_end": end,
    }
    common = dict(value=used, threshold=q.limit, unit=unit, waste_unit=unit, detail=detail)
    subject = quota_subject(q, building)
    if used > q.limit:
        since = state.get("since")
        if since is None or since < start:
            run, i = 0.0, first
            while i < ctx.upto:
                run += _scope_used(q, meters, ctx, i, i + 1)
                if run > q.limit:
                    break
                i += 1
            since = ctx.timeline.starts[min(i, ctx.upto - 1)]
        return Finding(
            "quota.exceeded",
            subject,
            Level.FIRING,
            ctx.now,
            since=since,
            waste_per_day=(used - q.limit) / max(days, 1 / 24),
            state={"since": since},
            **common,
        )
    if used <= q.limit * p.clear_ratio:
        return Finding("quota.exceeded", subject, Level.OK, ctx.now, state={}, **common)
    return Finding("quota.exceeded", subject, Level.HOLD, ctx.now, **common)


def projection(
    q: Quota, ctx: WindowContext, meters: list[str], first: int, end: int, pace_days: int
) -> float | None:
    tl = ctx.timeline
    u = ctx.upto
    profile: dict[int, list[float]] = {}
    for i in range(max(0, u - 24 * pace_days), u):
        if all(ctx.series[m].known[i] for m in meters if m in ctx.series):
            profile.setdefault(tl.local[i].hour, []).append(_scope_used(q, meters, ctx, i, i + 1))
    if len(profile) < 24:
        return None
    rate = {h: sum(v) / len(v) for h, v in profile.items()}
    rest = hour_starts(tl.end_of(u - 1), end, tl.tz)
    remaining = sum(rate[datetime.fromtimestamp(t, tl.tz).hour] for t in rest)
    return _scope_used(q, meters, ctx, first, u) + remaining


def quota_forecast(
    q: Quota, ctx: WindowContext, p: QuotaForecastParams, state: dict, building: str, meters: list[str]
) -> Finding | None:
    per = _period(q, ctx)
    if per is None:
        return None
    start, end, first = per
    subject = quota_subject(q, building)
    unit = "kWh" if q.kind == "electricity" else "m3"
    used = _scope_used(q, meters, ctx, first, ctx.upto)
    if used > q.limit:
        return Finding("quota.forecast", subject, Level.OK, ctx.now, detail={"why": "quota already exceeded"})
    elapsed = (ctx.timeline.end_of(ctx.upto - 1) - start) / (end - start)
    if elapsed < p.min_elapsed_share:
        return Finding("quota.forecast", subject, Level.HOLD, ctx.now)
    proj = projection(q, ctx, meters, first, end, p.pace_days)
    if proj is None:
        return Finding(
            "quota.forecast", subject, Level.HOLD, ctx.now, detail={"why": "too little history for a pace"}
        )
    days = (end - start) / 86400
    detail = {
        "quota": q.limit,
        "used": round(used, 3),
        "projected": round(proj, 3),
        "period": q.period,
        "target": q.name,
        "period_start": start,
        "period_end": end,
    }
    common = dict(value=proj, threshold=q.limit, unit=unit, waste_unit=unit, detail=detail)
    if proj > q.limit * (1 + p.margin):
        return Finding(
            "quota.forecast",
            subject,
            Level.FIRING,
            ctx.now,
            since=ctx.timeline.starts[ctx.upto - 1],
            waste_per_day=(proj - q.limit) / days,
            **common,
        )
    if proj <= q.limit * (1 - p.clear_margin):
        return Finding("quota.forecast", subject, Level.OK, ctx.now, **common)
    return Finding("quota.forecast", subject, Level.HOLD, ctx.now, **common)
