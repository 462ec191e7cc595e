"""Water leaks: minimum night flow, flow that never stops, and a main meter that its sub-meters do not add up to.

Numbers (docs/references.md#water-leaks): MNF falls in 02:00-05:00 (Bentley WaterSight); a robust night
baseline is the 7-night 20th percentile (UKWIR 99/WM/08/21); "leak" = at least 1 US gallon
(3.8 L) in every hour of 24 h, estimated reads neither trigger nor clear (Badger AquaCUE);
a unit's leak rate should stay under 4 % (节水型单位建设标准).
"""

from __future__ import annotations

from pydantic import Field

from api.alerts.rules.base import Finding, Level, Params, Subject, baseline_text, percentile
from api.alerts.rules.context import WindowContext
from api.alerts.rules.electricity import EmptyHoursParams, Units, judge_after_hours
from api.alerts.series import MeterSeries


class NightFlowParams(Params):
    start_hour: int = Field(default=2, ge=0, le=23)
    end_hour: int = Field(default=5, ge=1, le=24)
    increase_m3h: float = Field(default=0.02, gt=0, description="night flow above the meter's own baseline")
    ratio: float = Field(default=1.3, ge=1, description="and at least this multiple of the baseline")
    threshold_m3h: float | None = Field(
        default=None, gt=0, description="absolute night flow that always fires"
    )
    baseline_nights: int = Field(default=7, ge=1)
    baseline_percentile: float = Field(default=20, ge=0, le=100)
    min_baseline_nights: int = Field(default=3, ge=1)
    nights: int = Field(default=1, ge=1, description="consecutive nights above before it fires")
    clear_ratio: float = Field(
        default=0.5, ge=0, lt=1, description="clears when the excess falls under this share"
    )


def night_flows(
    s: MeterSeries, upto: int, start_hour: int, end_hour: int
) -> list[tuple[int, int, float | None]]:
    """(first hour index, end index, minimum hourly flow) of every complete night window before ``upto``."""
    # One entry per night window, kept for the latest ``upto`` only: the complete days' nights are
    # reused when ``upto`` moves on (they depend on earlier hours only), so memory stays flat.
    key = ("mnf", start_hour, end_hour)
    hit = s.memo.get(key)
    if hit is not None and hit[0] == upto:  # type: ignore[index]
        return hit[2]  # type: ignore[index, no-any-return]
    tl = s.timeline
    days = tl.day_ranges(upto)
    out: list[tuple[int, int, float | None]] = []
    done = 0
    if hit is not None and hit[0] < upto:  # type: ignore[index]
        prev_days, prev_out = hit[1]  # type: ignore[index]
        if days[: len(prev_days)] == prev_days:
            done, out = len(prev_days), list(prev_out)
    for _day, a, b in days[done:]:
        idx = [i for i in range(a, b) if start_hour <= tl.local[i].hour < end_hour]
        if not idx:
            continue
        vals = [s.used[i] for i in idx if s.known[i]]
        out.append((idx[0], idx[-1] + 1, min(vals) if len(vals) == len(idx) else None))
    complete = (days, list(out))
    # The night window of the current day can be complete before the day is.
    if upto:
        a = upto - 1
        while a > 0 and tl.days[a - 1] == tl.days[upto - 1]:
            a -= 1
        if not out or out[-1][0] < a:
            idx = [i for i in range(a, upto) if start_hour <= tl.local[i].hour < end_hour]
            if idx and tl.local[idx[-1]].hour == end_hour - 1:
                vals = [s.used[i] for i in idx if s.known[i]]
                out.append((idx[0], idx[-1] + 1, min(vals) if len(vals) == len(idx) else None))
    s.memo[key] = (upto, complete, out)
    return out


def night_flow(s: MeterSeries, ctx: WindowContext, p: NightFlowParams, state: dict) -> Finding | None:
    nights = night_flows(s, ctx.upto, p.start_hour, p.end_hour)
    if not nights:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    first, _end, mnf = nights[-1]
    if mnf is None:
        return Finding("leak.night_flow", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    baseline = state.get("baseline")
    if baseline is None:
        prior = [v for _a, _b, v in nights[-1 - p.baseline_nights : -1] if v is not None]
        if len(prior) >= p.min_baseline_nights:
            baseline = percentile(prior, p.baseline_percentile)

    def leaking(v: float | None) -> bool:
        if v is None:
            return False
        if p.threshold_m3h is not None and v > p.threshold_m3h:
            return True
        return baseline is not None and v > baseline + p.increase_m3h and v > baseline * p.ratio

    recent = nights[-p.nights :]
    ts = s.timeline.starts
    base_txt = baseline if baseline is not None else 0.0
    common = dict(
        value=mnf, threshold=(base_txt + p.increase_m3h), unit="m3/h", meter=s.meter.id, waste_unit="m3"
    )
    detail = {
        "night_min_flow_m3h": round(mnf, 4),
        "baseline_m3h": None if baseline is None else round(baseline, 4),
        "window": f"{p.start_hour:02d}:00-{p.end_hour:02d}:00",
        "nights": p.nights,
    }
    evidence = {
        "meter": s.meter.id,
        "quantity": "volume_m3",
        "start": ts[first],
        "end": s.timeline.end_of(_end - 1),
        "value": mnf,
        "threshold": base_txt + p.increase_m3h,
        "baseline": baseline,
        **baseline_text(
            "%(percentile)sth percentile of the previous %(nights)s nights' lowest hourly "
            "flow (%(window)s), frozen while the alert is open",
            percentile=p.baseline_percentile,
            nights=p.baseline_nights,
            window=detail["window"],
        ),
    }
    if len(recent) == p.nights and all(leaking(v) for _a, _b, v in recent):
        since = ts[recent[0][0]]
        return Finding(
            "leak.night_flow",
            subject,
            Level.FIRING,
            ctx.now,
            since=since,
            waste_per_day=max(mnf - base_txt, 0.0) * 24,
            detail=detail,
            evidence=evidence,
            state={"baseline": baseline} if baseline is not None else None,
            **common,
        )
    excess = mnf - base_txt
    absolute_ok = p.threshold_m3h is None or mnf <= p.threshold_m3h * (1 - p.clear_ratio / 2)
    if (baseline is None or excess <= p.increase_m3h * p.clear_ratio) and absolute_ok:
        return Finding("leak.night_flow", subject, Level.OK, ctx.now, detail=detail, state={}, **common)
    return Finding("leak.night_flow", subject, Level.HOLD, ctx.now, detail=detail, **common)


class ContinuousFlowParams(Params):
    zero_m3h: float = Field(
        default=0.0038, gt=0, description="an hour at or under this counts as no flow (1 US gal)"
    )
    hours: int = Field(default=24, ge=2)
    require_resting: bool = Field(default=True, description="only meters that normally have no-flow hours")
    resting_days: int = Field(default=7, ge=1)
    resting_share: float = Field(default=0.5, gt=0, le=1)
    min_resting_history_days: int = Field(default=3, ge=1)
    clear_ratio: float = Field(default=0.5, ge=0, lt=1, description="an hour under zero_m3h x this clears")


def continuous_flow(
    s: MeterSeries, ctx: WindowContext, p: ContinuousFlowParams, state: dict
) -> Finding | None:
    u = ctx.upto
    if u < p.hours:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    window = range(u - p.hours, u)
    if not all(s.known[i] for i in window):
        return Finding("leak.continuous_flow", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    lowest = min(s.used[i] for i in window)
    common = dict(value=lowest, threshold=p.zero_m3h, unit="m3/h", meter=s.meter.id, waste_unit="m3")
    if lowest <= p.zero_m3h * p.clear_ratio:
        return Finding("leak.continuous_flow", subject, Level.OK, ctx.now, state={}, **common)
    if lowest <= p.zero_m3h:
        return Finding("leak.continuous_flow", subject, Level.HOLD, ctx.now, **common)
    if p.require_resting and not state.get("resting"):
        days = [(a, b) for _d, a, b in ctx.days() if b <= u - p.hours][-p.resting_days :]
        judged = [(a, b) for a, b in days if all(s.known[i] for i in range(a, b))]
        if len(judged) < p.min_resting_history_days:
            return Finding(
                "leak.continuous_flow",
                subject,
                Level.HOLD,
                ctx.now,
                detail={"why": "too little history"},
                **common,
            )
        resting = sum(1 for a, b in judged if min(s.used[a:b]) <= p.zero_m3h)
        if resting < p.resting_share * len(judged):
            return Finding(
                "leak.continuous_flow",
                subject,
                Level.OK,
                ctx.now,
                detail={"why": "this meter normally flows day and night"},
                **common,
            )
    i = u - 1
    while i > 0 and s.known[i - 1] and s.used[i - 1] > p.zero_m3h:
        i -= 1
    return Finding(
        "leak.continuous_flow",
        subject,
        Level.FIRING,
        ctx.now,
        since=s.timeline.starts[i],
        waste_per_day=lowest * 24,
        detail={"lowest_hour_m3": round(lowest, 4), "hours": p.hours},
        evidence={
            "meter": s.meter.id,
            "quantity": "volume_m3",
            "start": s.timeline.starts[u - p.hours],
            "end": s.timeline.end_of(u - 1),
            "value": lowest,
            "threshold": p.zero_m3h,
            "baseline": 0.0,
            **baseline_text(
                "the quietest of the last %(hours)s hours against no flow (%(zero)s m3)",
                hours=p.hours,
                zero=p.zero_m3h,
            ),
        },
        state={"resting": True},
        **common,
    )


class BalanceParams(Params):
    tolerance: float = Field(
        default=0.05, gt=0, lt=1, description="share of the main's volume not seen below it"
    )
    min_m3_day: float = Field(default=0.5, ge=0)
    hours: int = Field(default=24, ge=1)
    learn_baseline: bool = Field(default=True, description="compare with the meter's own usual imbalance")
    baseline_days: int = Field(default=14, ge=1)
    min_baseline_days: int = Field(default=3, ge=1)
    clear_ratio: float = Field(default=0.5, ge=0, lt=1)


def balance(s: MeterSeries, ctx: WindowContext, p: BalanceParams, state: dict) -> Finding | None:
    kids = [ctx.series[c] for c in ctx.children.get(s.meter.id, ()) if c in ctx.series]
    if not kids:
        return None
    u = ctx.upto
    if u < p.hours:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    group = [s, *kids]

    def share(a: int, b: int) -> tuple[float, float] | None:
        if not all(m.known[i] for m in group for i in range(a, b)):
            return None
        main = sum(s.used[a:b])
        sub = sum(sum(k.used[a:b]) for k in kids)
        if main <= 0:
            return None
        return (main - sub) / main, main

    now = share(u - p.hours, u)
    if now is None:
        return Finding("leak.balance", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    loss_share, main = now
    baseline = state.get("baseline")
    if baseline is None and p.learn_baseline:
        prior = [share(a, b) for _d, a, b in ctx.days() if b <= u - p.hours][-p.baseline_days :]
        vals = [x[0] for x in prior if x is not None]
        if len(vals) < p.min_baseline_days:
            return Finding(
                "leak.balance",
                subject,
                Level.HOLD,
                ctx.now,
                meter=s.meter.id,
                detail={"why": "too little history"},
            )
        baseline = percentile(vals, 50)
    base = baseline if p.learn_baseline else 0.0
    excess_share = loss_share - base
    per_day = excess_share * main * 24 / p.hours
    detail = {
        "unmetered_share": round(loss_share, 4),
        "usual_share": round(base, 4),
        "main_m3": round(main, 3),
        "sub_meters": [k.meter.id for k in kids],
    }
    common = dict(
        value=excess_share,
        threshold=p.tolerance,
        unit="share",
        meter=s.meter.id,
        waste_unit="m3",
        detail=detail,
    )
    if excess_share > p.tolerance and per_day > p.min_m3_day:
        return Finding(
            "leak.balance",
            subject,
            Level.FIRING,
            ctx.now,
            since=s.timeline.starts[u - p.hours],
            waste_per_day=per_day,
            state={"baseline": base},
            evidence={
                "meter": s.meter.id,
                "quantity": "volume_m3",
                "start": s.timeline.starts[u - p.hours],
                "end": s.timeline.end_of(u - 1),
                "value": loss_share,
                "threshold": base + p.tolerance,
                "baseline": base,
                **(
                    baseline_text("median unmetered share of the last %(days)s days", days=p.baseline_days)
                    if p.learn_baseline
                    else baseline_text("none")
                ),
                "sub_meters": [k.meter.id for k in kids],
            },
            **common,
        )
    if excess_share <= p.tolerance * p.clear_ratio or per_day <= p.min_m3_day * p.clear_ratio:
        return Finding("leak.balance", subject, Level.OK, ctx.now, state={}, **common)
    return Finding("leak.balance", subject, Level.HOLD, ctx.now, **common)


class AfterHoursWaterParams(EmptyHoursParams):
    """Water left running while the building is closed: taps, hoses, a canteen washing line."""

    hours: int = Field(default=3, ge=1, description="consecutive empty hours above the usual before it fires")
    ratio: float = Field(default=2.0, gt=1)
    min_excess_m3h: float = Field(
        default=0.1, ge=0, description="and at least this much above the usual (100 L/h: one tap half open)"
    )

    @property
    def min_excess(self) -> float:
        return self.min_excess_m3h


WATER_UNITS = Units("after_hours.water", "volume_m3", "m3/h", "m3", whole_stretch=True)


def after_hours_water(
    s: MeterSeries, ctx: WindowContext, p: AfterHoursWaterParams, state: dict
) -> Finding | None:
    """Water used in the building's empty hours against its own empty-hour use (same engine as electricity)."""
    return judge_after_hours(s, ctx, p, state, WATER_UNITS)
