"""Data health: silent meters, thin days, frozen registers and counters that run backwards.

Numbers (standards.md §1.2, §7): a day needs >= 90 % of its expected readings (重点用能单位
上传数据质量要求); "offline" after N missed readings (N = 4 is this project's choice: no
guideline gives a heartbeat timeout, §6 item 2). Staleness is itself an alert (anchors §0.7).
"""

from __future__ import annotations

from pydantic import Field

from api.alerts.rules.base import Finding, Level, Params, Subject
from api.alerts.rules.context import WindowContext
from api.alerts.series import MeterSeries


class OfflineParams(Params):
    intervals: float = Field(
        default=4, gt=1, description="expected readings missed before the meter counts as silent"
    )
    back_intervals: float = Field(default=2, gt=0, description="a reading this recent clears it")


def offline(s: MeterSeries, ctx: WindowContext, p: OfflineParams, state: dict) -> Finding | None:
    subject = Subject("meter", s.meter.id, s.building.id)
    last = s.last_reading(ctx.now)
    iv = s.meter.interval_s
    silent = ctx.now - last if last is not None else None
    detail = {"last_reading": last, "interval_s": iv, "silent_s": silent}
    common = dict(unit="s", threshold=p.intervals * iv, meter=s.meter.id, detail=detail)
    if last is None:
        start = ctx.timeline.starts[0] if len(ctx.timeline) else ctx.now
        if ctx.now - start < p.intervals * iv:
            return None
        return Finding("data.offline", subject, Level.FIRING, ctx.now, since=start, value=None, **common)
    if silent is not None and silent > p.intervals * iv:
        return Finding("data.offline", subject, Level.FIRING, ctx.now, since=last, value=silent, **common)
    if silent is not None and silent <= p.back_intervals * iv:
        return Finding("data.offline", subject, Level.OK, ctx.now, value=silent, **common)
    return Finding("data.offline", subject, Level.HOLD, ctx.now, value=silent, **common)


class CompletenessParams(Params):
    min_ratio: float = Field(default=0.9, gt=0, le=1)
    clear_ratio: float = Field(default=0.95, gt=0, le=1, description="a later day at or above this clears it")


def completeness(s: MeterSeries, ctx: WindowContext, p: CompletenessParams, state: dict) -> Finding | None:
    days = ctx.days()
    first = s.first_reading()
    if not days or first is None:
        return None
    d, a, b = days[-1]
    tl = ctx.timeline
    start, end = tl.starts[a], tl.end_of(b - 1)
    if first > start:
        return None  # a meter installed during the day is not incomplete
    expected = (end - start) / s.meter.interval_s
    got = s.count_between(start, end)
    ratio = min(got / expected, 1.0)
    subject = Subject("meter", s.meter.id, s.building.id)
    detail = {"day": d.isoformat(), "received": got, "expected": round(expected)}
    common = dict(value=ratio, threshold=p.min_ratio, unit="share", meter=s.meter.id, detail=detail)
    if ratio < p.min_ratio:
        return Finding("data.completeness", subject, Level.FIRING, ctx.now, since=start, **common)
    if ratio >= p.clear_ratio:
        return Finding("data.completeness", subject, Level.OK, ctx.now, **common)
    return Finding("data.completeness", subject, Level.HOLD, ctx.now, **common)


class StuckParams(Params):
    hours_electricity: int = Field(
        default=6, ge=1, description="hours of an unchanged register while readings arrive"
    )
    hours_water: int = Field(default=48, ge=1)
    history_days: int = Field(default=14, ge=1)
    history_factor: float = Field(
        default=1.5, ge=1, description="x the longest unchanged run seen in the history"
    )
    epsilon: float = Field(default=1e-9, ge=0)


def _zero_run_end(s: MeterSeries, end: int, eps: float) -> int:
    """Length of the run of hours with readings but no register change that ends at ``end``."""
    i = end
    while i > 0 and s.known[i - 1] and s.samples[i - 1] > 0 and s.used[i - 1] <= eps:
        i -= 1
    return end - i


def stuck(s: MeterSeries, ctx: WindowContext, p: StuckParams, state: dict) -> Finding | None:
    u = ctx.upto
    if not u or not s.known[u - 1]:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    run = _zero_run_end(s, u, p.epsilon)
    base = p.hours_water if s.unit == "m3" else p.hours_electricity
    common = dict(value=float(run), unit="h", meter=s.meter.id)
    if run == 0:
        return Finding("data.stuck", subject, Level.OK, ctx.now, threshold=float(base), **common)
    need = float(state.get("need") or 0)
    if not need:
        longest, i = 0, u - run
        lo = max(0, u - run - 24 * p.history_days)
        while i > lo:
            r = _zero_run_end(s, i, p.epsilon)
            longest = max(longest, r)
            i -= max(r, 1)
        need = max(base, p.history_factor * longest)
    if run >= need:
        return Finding(
            "data.stuck",
            subject,
            Level.FIRING,
            ctx.now,
            since=ctx.timeline.starts[u - run],
            threshold=need,
            detail={"unchanged_hours": run},
            state={"need": need},
            **common,
        )
    return Finding("data.stuck", subject, Level.HOLD, ctx.now, threshold=need, **common)


class BackwardsParams(Params):
    clear_hours: int = Field(default=24, ge=1, description="hours without another drop before it clears")


BACKWARD_KINDS = ("reset", "quarantined")


def counter_backwards(s: MeterSeries, ctx: WindowContext, p: BackwardsParams, state: dict) -> Finding | None:
    events = [
        e
        for e in s.curve.events
        if e.ts <= ctx.now and e.kind in BACKWARD_KINDS and e.previous is not None and e.value < e.previous
    ]
    subject = Subject("meter", s.meter.id, s.building.id)
    if not events:
        return Finding("data.counter_backwards", subject, Level.OK, ctx.now, meter=s.meter.id)
    recent = [e for e in events if ctx.now - e.ts < p.clear_hours * 3600]
    if not recent:
        return Finding("data.counter_backwards", subject, Level.OK, ctx.now, meter=s.meter.id)
    e = recent[-1]
    return Finding(
        "data.counter_backwards",
        subject,
        Level.FIRING,
        ctx.now,
        since=recent[0].ts,
        value=e.value,
        threshold=e.previous,
        unit=s.unit,
        meter=s.meter.id,
        detail={"from": e.previous, "to": e.value, "policy": e.kind, "note": e.detail, "drops": len(recent)},
    )
