"""Electricity left on: use in unoccupied hours, a creeping base load, and spikes against the usual week.

Numbers (standards.md §3.2): schools stand empty ~85 % of the year; daily base load = mean of
the lowest 4 hours; alert when the 7-day mean base load exceeds 1.15 x the long-term mean
(Energy Sparks ``MAXBASELOADCHANGE``). No standard gives an after-hours ratio (§3.5, §6 item 7):
the after-hours rule compares each empty hour with the same hour of recent empty days of the
same kind, so a campus's own weekend and vacation profile is the yardstick.
"""

from __future__ import annotations

from datetime import date

from pydantic import Field

from api.alerts.rules.base import Finding, Level, Params, Subject, mean, median
from api.alerts.rules.context import WindowContext
from api.alerts.series import MeterSeries

UNOCCUPIED_KINDS = ("weekend", "holiday", "vacation")


class AfterHoursParams(Params):
    hours: int = Field(default=3, ge=1, description="consecutive empty hours above the usual before it fires")
    ratio: float = Field(default=1.5, gt=1)
    min_excess_kw: float = Field(default=2.0, ge=0, description="and at least this much above the usual")
    reference_days: int = Field(default=21, ge=2)
    min_reference_days: int = Field(default=2, ge=1)
    clear_ratio: float = Field(
        default=0.5, ge=0, lt=1, description="clears when the excess falls under this share"
    )


def _same_hour_reference(
    s: MeterSeries,
    i: int,
    span_days: int,
    min_days: int,
    kinds: tuple[str, ...],
    tainted: set[str],
    occupied: bool | None,
) -> float | None:
    """Median use at the same local hour on recent earlier days of the given kinds."""
    tl = s.timeline
    hour = tl.local[i].hour
    vals = []
    j = i - 1
    first_day = tl.days[i]
    while j >= 0:
        d = tl.days[j]
        if (first_day - d).days > span_days:
            break
        if (
            tl.local[j].hour == hour
            and d != first_day
            and tl.day_kinds[j] in kinds
            and s.known[j]
            and d.isoformat() not in tainted
            and (occupied is None or s.occupied[j] == occupied)
        ):
            vals.append(s.used[j])
        j -= 1
    return median(vals) if len(vals) >= min_days else None


def after_hours_reference(s: MeterSeries, i: int, p: AfterHoursParams, tainted: set[str]) -> float | None:
    """Only earlier hours count, so the answer for hour ``i`` never changes and is remembered."""
    key = ("ahref", i, p.reference_days, p.min_reference_days, tuple(sorted(tainted)))
    if key in s.memo:
        return s.memo[key]  # type: ignore[return-value]
    ref = _after_hours_reference(s, i, p, tainted)
    s.memo[key] = ref
    return ref


def _after_hours_reference(s: MeterSeries, i: int, p: AfterHoursParams, tainted: set[str]) -> float | None:
    kind = s.timeline.day_kinds[i]
    ref = _same_hour_reference(s, i, p.reference_days, p.min_reference_days, (kind,), tainted, False)
    if ref is None and kind in UNOCCUPIED_KINDS:
        ref = _same_hour_reference(
            s, i, p.reference_days, p.min_reference_days, UNOCCUPIED_KINDS, tainted, False
        )
    return ref


def after_hours(s: MeterSeries, ctx: WindowContext, p: AfterHoursParams, state: dict) -> Finding | None:
    u = ctx.upto
    if u < p.hours:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    window = range(u - p.hours, u)
    tainted = set(state.get("tainted", []))
    # Occupied hours say nothing about waste after hours: an open alert waits for the next empty stretch
    # to be judged clean, so lights left on every night make one alert, not one per night.
    if not all(s.known[i] and not s.occupied[i] for i in window):
        return Finding("after_hours.usage", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    refs = [after_hours_reference(s, i, p, tainted) for i in window]
    if any(r is None for r in refs):
        return Finding(
            "after_hours.usage",
            subject,
            Level.HOLD,
            ctx.now,
            meter=s.meter.id,
            detail={"why": "no earlier empty days of this kind to compare with"},
        )
    used = [s.used[i] for i in window]
    excess = [x - r for x, r in zip(used, refs, strict=True)]  # type: ignore[operator]
    mean_ref = mean(refs)  # type: ignore[arg-type]
    mean_excess = mean(excess)
    detail = {
        "usual_kw": round(mean_ref, 3),
        "now_kw": round(mean(used), 3),
        "hours": p.hours,
        "day_kind": s.timeline.day_kinds[u - 1],
    }
    common = dict(
        value=mean(used),
        threshold=mean_ref * p.ratio,
        unit="kW",
        meter=s.meter.id,
        waste_unit="kWh",
        detail=detail,
    )
    if all(x > p.ratio * r and e > p.min_excess_kw for x, r, e in zip(used, refs, excess, strict=True)):  # type: ignore[operator]
        days = sorted(tainted | {s.timeline.days[i].isoformat() for i in window})[-p.reference_days :]
        i = u - p.hours
        while i > 0 and u - i < 168 and not s.occupied[i - 1] and s.known[i - 1]:
            r = after_hours_reference(s, i - 1, p, tainted)
            if r is None or s.used[i - 1] <= r * p.ratio:
                break
            i -= 1
        return Finding(
            "after_hours.usage",
            subject,
            Level.FIRING,
            ctx.now,
            since=s.timeline.starts[i],
            waste_per_day=mean_excess * 24,
            state={"tainted": days},
            **common,
        )
    low_ratio = 1 + (p.ratio - 1) * p.clear_ratio
    if mean(used) <= mean_ref * low_ratio or mean_excess <= p.min_excess_kw * p.clear_ratio:
        return Finding("after_hours.usage", subject, Level.OK, ctx.now, **common)
    return Finding("after_hours.usage", subject, Level.HOLD, ctx.now, **common)


class BaseloadParams(Params):
    ratio: float = Field(default=1.15, gt=1, description="7-day mean base load over the long-term mean")
    recent_days: int = Field(default=7, ge=1)
    history_days: int = Field(default=365, ge=7)
    min_history_days: int = Field(default=14, ge=3)
    lowest_hours: int = Field(default=4, ge=1, le=24)
    min_excess_kw: float = Field(default=0.5, ge=0)
    clear_ratio: float = Field(default=0.5, ge=0, lt=1)


def daily_baseloads(s: MeterSeries, upto: int, lowest: int) -> dict[date, float]:
    """Base load (kW) of every complete day: mean of its lowest ``lowest`` hourly values."""
    out: dict[date, float] = {}
    for d, a, b in s.timeline.day_ranges(upto):
        key = ("baseload", a, b, lowest)
        if key not in s.memo:
            ok = all(s.known[i] for i in range(a, b))
            s.memo[key] = mean(sorted(s.used[a:b])[:lowest]) if ok else None
        v = s.memo[key]
        if v is not None:
            out[d] = v  # type: ignore[assignment]
    return out


def baseload_creep(s: MeterSeries, ctx: WindowContext, p: BaseloadParams, state: dict) -> Finding | None:
    subject = Subject("meter", s.meter.id, s.building.id)
    hist = {date.fromisoformat(k): v for k, v in state.get("days", {}).items()}
    hist.update(daily_baseloads(s, ctx.upto, p.lowest_hours))
    if not hist:
        return None
    last = max(hist)
    keep = {d: v for d, v in hist.items() if (last - d).days < p.history_days}
    new_state = {**state, "days": {d.isoformat(): round(v, 4) for d, v in sorted(keep.items())}}
    days = sorted(keep)
    recent = [keep[d] for d in days if (last - d).days < p.recent_days]
    older = [keep[d] for d in days if (last - d).days >= p.recent_days]
    if len(recent) < max(1, p.recent_days - 2) or len(older) < p.min_history_days:
        return Finding(
            "after_hours.baseload_creep", subject, Level.HOLD, ctx.now, meter=s.meter.id, state=new_state
        )
    long_term = state.get("long_term") or mean(older)
    now_kw = mean(recent)
    detail = {
        "recent_baseload_kw": round(now_kw, 3),
        "long_term_baseload_kw": round(long_term, 3),
        "recent_days": p.recent_days,
        "history_days": len(older),
    }
    common = dict(
        value=now_kw,
        threshold=long_term * p.ratio,
        unit="kW",
        meter=s.meter.id,
        waste_unit="kWh",
        detail=detail,
    )
    if now_kw > long_term * p.ratio and now_kw - long_term > p.min_excess_kw:
        first = min(d for d in days if (last - d).days < p.recent_days)
        since_i = (
            next(i for i, d in enumerate(s.timeline.days) if d == first) if first in s.timeline.days else None
        )
        return Finding(
            "after_hours.baseload_creep",
            subject,
            Level.FIRING,
            ctx.now,
            since=s.timeline.starts[since_i] if since_i is not None else None,
            waste_per_day=(now_kw - long_term) * 24,
            state={**new_state, "long_term": long_term},
            **common,
        )
    if now_kw <= long_term * (1 + (p.ratio - 1) * p.clear_ratio):
        new_state.pop("long_term", None)
        return Finding("after_hours.baseload_creep", subject, Level.OK, ctx.now, state=new_state, **common)
    return Finding("after_hours.baseload_creep", subject, Level.HOLD, ctx.now, state=new_state, **common)


class SpikeParams(Params):
    weeks: int = Field(default=4, ge=1, description="same weekday and hour of this many past weeks")
    min_weeks: int = Field(default=2, ge=1)
    ratio: float = Field(default=1.8, gt=1)
    min_excess_kwh: float = Field(default=5.0, ge=0, description="per hour, electricity")
    min_excess_m3: float = Field(default=0.5, ge=0, description="per hour, water")
    hours: int = Field(default=2, ge=1, description="consecutive hours above before it fires")
    occupied_only: bool = Field(default=True, description="empty hours are after_hours.usage's job")
    clear_ratio: float = Field(default=0.5, ge=0, lt=1)


def spike_reference(s: MeterSeries, i: int, weeks: int, min_weeks: int) -> float | None:
    tl = s.timeline
    vals = []
    for k in range(1, weeks + 1):
        j = i - 24 * 7 * k
        # Hour indices are local hours, so a DST change shifts by one; look one either side.
        for jj in (j, j - 1, j + 1):
            if (
                0 <= jj < len(tl.starts)
                and tl.local[jj].hour == tl.local[i].hour
                and tl.local[jj].weekday() == tl.local[i].weekday()
            ):
                if s.known[jj] and tl.day_kinds[jj] == tl.day_kinds[i]:
                    vals.append(s.used[jj])
                break
    return median(vals) if len(vals) >= min_weeks else None


def spike(s: MeterSeries, ctx: WindowContext, p: SpikeParams, state: dict) -> Finding | None:
    u = ctx.upto
    if u < p.hours:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    window = range(u - p.hours, u)
    water = s.unit == "m3"
    unit = "m3/h" if water else "kW"
    min_excess = p.min_excess_m3 if water else p.min_excess_kwh
    if p.occupied_only and not s.occupied[u - 1]:
        return Finding("spike.baseline", subject, Level.OK, ctx.now, meter=s.meter.id)
    if not all(s.known[i] for i in window):
        return Finding("spike.baseline", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    refs = [spike_reference(s, i, p.weeks, p.min_weeks) for i in window]
    if any(r is None for r in refs):
        return Finding("spike.baseline", subject, Level.HOLD, ctx.now, meter=s.meter.id)
    used = [s.used[i] for i in window]
    ref = mean(refs)  # type: ignore[arg-type]
    now = mean(used)
    detail = {"usual": round(ref, 3), "now": round(now, 3), "weeks": p.weeks, "unit": unit}
    common = dict(
        value=now, threshold=ref * p.ratio, unit=unit, meter=s.meter.id, waste_unit=s.unit, detail=detail
    )
    if all(x > r * p.ratio and x - r > min_excess for x, r in zip(used, refs, strict=True)):  # type: ignore[operator]
        return Finding(
            "spike.baseline",
            subject,
            Level.FIRING,
            ctx.now,
            since=s.timeline.starts[u - p.hours],
            waste_per_day=(now - ref) * 24,
            **common,
        )
    if now <= ref * (1 + (p.ratio - 1) * p.clear_ratio) or now - ref <= min_excess * p.clear_ratio:
        return Finding("spike.baseline", subject, Level.OK, ctx.now, **common)
    return Finding("spike.baseline", subject, Level.HOLD, ctx.now, **common)
