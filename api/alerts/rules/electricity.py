"""Electricity left on: use in unoccupied hours, a creeping base load, and spikes against the usual week.

Numbers (docs/references.md#base-load): schools stand empty ~85 % of the year; daily base load = mean of
the lowest 4 hours; alert when the 7-day mean base load exceeds 1.15 x the long-term mean
(Energy Sparks ``MAXBASELOADCHANGE``). No standard gives an after-hours ratio (#after-hours, #gaps):
the after-hours rule compares each empty hour with the same hour of recent empty days of the
same kind, so a campus's own weekend and vacation profile is the yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pydantic import Field

from api.alerts.rules.base import Finding, Level, Params, Subject, baseline_text, mean, median
from api.alerts.rules.context import WindowContext
from api.alerts.series import MeterSeries

UNOCCUPIED_KINDS = ("weekend", "holiday", "vacation")


class EmptyHoursParams(Params):
    """Settings shared by the after-hours rules of every meter kind."""

    hours: int = Field(default=3, ge=1, description="consecutive empty hours above the usual before it fires")
    ratio: float = Field(default=1.5, gt=1)
    reference_days: int = Field(default=21, ge=2)
    min_reference_days: int = Field(default=2, ge=1)
    base_history_days: int = Field(
        default=7,
        ge=1,
        description="days of history before a closed day with no comparable empty day is judged on base load",
    )
    min_base_hours: int = Field(default=24, ge=1, description="closed hours needed for a base load")
    clear_ratio: float = Field(
        default=0.5, ge=0, lt=1, description="clears when the excess falls under this share"
    )

    @property
    def min_excess(self) -> float:
        raise NotImplementedError


class AfterHoursParams(EmptyHoursParams):
    min_excess_kw: float = Field(default=2.0, ge=0, description="and at least this much above the usual")

    @property
    def min_excess(self) -> float:
        return self.min_excess_kw


# How the usual use of an empty hour was found, in the words of the message.
SAME_KIND = "same hour on earlier empty days of the same kind"
EMPTY_KINDS = "same hour on earlier weekends, holidays and vacation days"
CLOSED_BASE = "closed-hours base load"


@dataclass(frozen=True, slots=True)
class Units:
    """What an after-hours rule measures: hourly use in ``rate`` (kW, m3/h), waste in ``amount`` (kWh, m3)."""

    rule: str
    quantity: str
    rate: str
    amount: str
    # Clear only on a whole clean empty stretch so far: taps left on from closing to 03:00 every night
    # are one alert, not one per night cleared by the quiet hours before opening.
    whole_stretch: bool = False


ELECTRICITY_UNITS = Units("after_hours.usage", "energy_kwh", "kW", "kWh")


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


def _closed_all_day(s: MeterSeries, i: int) -> bool:
    """Whether the building is closed for the whole local day of hour ``i`` (per the calendar)."""
    tl = s.timeline
    key = ("closedday", tl.days[i])
    if key not in s.memo:
        a = i
        while a > 0 and tl.days[a - 1] == tl.days[i]:
            a -= 1
        b = i
        while b < len(tl) and tl.days[b] == tl.days[i]:
            b += 1
        s.memo[key] = not any(s.occupied[a:b])
    return bool(s.memo[key])


def _closed_base_load(s: MeterSeries, i: int, p: EmptyHoursParams, tainted: set[str]) -> float | None:
    """Median use of the building's earlier closed hours (its nights): what it draws with nothing on.

    Judged only with ``base_history_days`` of data before the day, so a first weekend at cold
    start is not compared with nights.
    """
    tl = s.timeline
    day = tl.days[i]
    vals: list[float] = []
    oldest = None
    j = i - 1
    while j >= 0:
        d = tl.days[j]
        if (day - d).days > p.reference_days:
            break
        if s.known[j]:
            oldest = d
            if not s.occupied[j] and d.isoformat() not in tainted:
                vals.append(s.used[j])
        j -= 1
    if oldest is None or (day - oldest).days < p.base_history_days or len(vals) < p.min_base_hours:
        return None
    return median(vals)


def after_hours_reference(
    s: MeterSeries, i: int, p: EmptyHoursParams, tainted: set[str]
) -> tuple[float | None, str]:
    """The usual use of empty hour ``i`` and how it was found.

    Only earlier hours count, so the answer for hour ``i`` never changes and is remembered.
    """
    key = (
        "ahref",
        p.reference_days,
        p.min_reference_days,
        p.base_history_days,
        p.min_base_hours,
        tuple(sorted(tainted)),
    )
    by_hour = s.memo.get(key)
    if by_hour is None:
        by_hour = s.memo[key] = {}
    assert isinstance(by_hour, dict)
    ref = by_hour.get(i)
    if ref is None:
        ref = by_hour[i] = _after_hours_reference(s, i, p, tainted)
    return ref  # type: ignore[no-any-return]


def _after_hours_reference(
    s: MeterSeries, i: int, p: EmptyHoursParams, tainted: set[str]
) -> tuple[float | None, str]:
    kind = s.timeline.day_kinds[i]
    ref = _same_hour_reference(s, i, p.reference_days, p.min_reference_days, (kind,), tainted, False)
    if ref is not None:
        return ref, SAME_KIND
    if kind in UNOCCUPIED_KINDS:
        ref = _same_hour_reference(
            s, i, p.reference_days, p.min_reference_days, UNOCCUPIED_KINDS, tainted, False
        )
        if ref is not None:
            return ref, EMPTY_KINDS
        # A closed day with no comparable empty day (a first holiday in a building open at weekends):
        # its own closed-hours base load is the yardstick, never the use of days it was open.
        if _closed_all_day(s, i):
            return _closed_base_load(s, i, p, tainted), CLOSED_BASE
    return None, SAME_KIND


def after_hours(s: MeterSeries, ctx: WindowContext, p: AfterHoursParams, state: dict) -> Finding | None:
    return judge_after_hours(s, ctx, p, state, ELECTRICITY_UNITS)


def judge_after_hours(
    s: MeterSeries, ctx: WindowContext, p: EmptyHoursParams, state: dict, units: Units
) -> Finding | None:
    """Use in empty hours against the building's own empty-hour use, for any cumulative meter."""
    rule = units.rule
    u = ctx.upto
    if u < p.hours:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    window = range(u - p.hours, u)
    tainted = set(state.get("tainted", []))
    # Occupied hours say nothing about waste after hours: an open alert waits for the next empty stretch
    # to be judged clean, so lights left on every night make one alert, not one per night.
    if not all(s.known[i] and not s.occupied[i] for i in window):
        return Finding(rule, subject, Level.HOLD, ctx.now, meter=s.meter.id)
    found = [after_hours_reference(s, i, p, tainted) for i in window]
    refs = [r for r, _how in found]
    if any(r is None for r in refs):
        return Finding(
            rule,
            subject,
            Level.HOLD,
            ctx.now,
            meter=s.meter.id,
            detail={"why": "no earlier empty days of this kind to compare with"},
        )
    how = CLOSED_BASE if any(h == CLOSED_BASE for _r, h in found) else found[-1][1]
    used = [s.used[i] for i in window]
    excess = [x - r for x, r in zip(used, refs, strict=True)]  # type: ignore[operator]
    mean_ref = mean(refs)  # type: ignore[arg-type]
    detail = {
        "usual": round(mean_ref, 4),
        "now": round(mean(used), 4),
        "usual_kw": round(mean_ref, 3),
        "now_kw": round(mean(used), 3),
        "rate_unit": units.rate,
        "hours": p.hours,
        "day_kind": s.timeline.day_kinds[u - 1],
        "reference": how,
    }
    if units.rate != "kW":
        del detail["usual_kw"], detail["now_kw"]
    common = dict(
        value=mean(used),
        threshold=mean_ref * p.ratio,
        unit=units.rate,
        meter=s.meter.id,
        waste_unit=units.amount,
        detail=detail,
    )
    if all(x > p.ratio * r and e > p.min_excess for x, r, e in zip(used, refs, excess, strict=True)):  # type: ignore[operator]
        days = sorted(tainted | {s.timeline.days[i].isoformat() for i in window})[-p.reference_days :]
        tl = s.timeline
        held = state.get("since")
        if held is not None and tl.index(int(held)) >= 0:
            # An open alert keeps the start it was raised with: message and evidence speak of one stretch.
            i = tl.index(int(held))
        else:
            i = u - p.hours
            while i > 0 and u - i < 168 and not s.occupied[i - 1] and s.known[i - 1]:
                r, _h = after_hours_reference(s, i - 1, p, tainted)
                if r is None or s.used[i - 1] <= r * p.ratio:
                    break
                i -= 1
        # Waste is what the empty hours of the stretch used above the usual, over at most the last
        # 24 hours: four hours past closing are four hours of waste, not a day's worth.
        hours: list[tuple[int, float]] = []
        for k in range(i, u):
            if s.occupied[k] or not s.known[k]:
                continue
            r, _h = after_hours_reference(s, k, p, tainted)
            if r is not None and s.used[k] > r:
                hours.append((k, r))
        over = [s.used[k] - r for k, r in hours if k >= u - 24]
        total = sum(s.used[k] - r for k, r in hours)
        kinds = empty_reasons([tl.day_kinds[k] for k, _r in hours])
        if any(after_hours_reference(s, k, p, tainted)[1] == CLOSED_BASE for k, _r in hours):
            how = CLOSED_BASE
            detail["reference"] = how
        amount = units.amount.lower()
        detail.update(
            {
                "day_kind": tl.day_kinds[i],
                "empty_because": kinds,
                "stretch_hours": len(hours),
                f"excess_{amount}": round(total, 4),
                f"excess_{amount}_last_24h": round(sum(over), 4),
            }
        )
        ref_days, least = p.reference_days, p.min_reference_days
        if how == CLOSED_BASE:
            method = baseline_text(
                "median of the building's closed hours over the last %(days)s days "
                "(closed-hours base load: no earlier empty day of this kind)",
                days=ref_days,
            )
        elif how == EMPTY_KINDS:
            method = baseline_text(
                "median of the same hour on earlier weekends, holidays and vacation days "
                "(last %(days)s days, at least %(least)s)",
                days=ref_days,
                least=least,
            )
        else:
            method = baseline_text(
                "median of the same hour on earlier empty days of the same kind "
                "(last %(days)s days, at least %(least)s)",
                days=ref_days,
                least=least,
            )
        evidence = {
            "meter": s.meter.id,
            "quantity": units.quantity,
            "start": tl.starts[i],
            "end": tl.end_of(u - 1),
            "value": mean(used),
            "threshold": mean_ref * p.ratio,
            "baseline": mean_ref,
            **method,
            "reference": how,
            "hours": [{"start": tl.starts[k], amount: s.used[k], f"usual_{amount}": r} for k, r in hours],
            f"excess_{amount}": total,
        }
        return Finding(
            rule,
            subject,
            Level.FIRING,
            ctx.now,
            since=tl.starts[i],
            waste_per_day=sum(over),
            state={"tainted": days, "since": tl.starts[i]},
            evidence=evidence,
            **common,
        )
    mean_excess = mean(excess)
    low_ratio = 1 + (p.ratio - 1) * p.clear_ratio
    clean = mean(used) <= mean_ref * low_ratio or mean_excess <= p.min_excess * p.clear_ratio
    if clean and units.whole_stretch and state.get("since") is not None:
        clean = _stretch_clean(s, u, p, tainted, low_ratio)
    if clean:
        rest = {k: v for k, v in state.items() if k != "since"}
        return Finding(rule, subject, Level.OK, ctx.now, state=rest, **common)
    return Finding(rule, subject, Level.HOLD, ctx.now, **common)


def _stretch_clean(s: MeterSeries, u: int, p: EmptyHoursParams, tainted: set[str], low_ratio: float) -> bool:
    """Every empty hour of the current stretch (back to the last open hour) is back within the clear line."""
    k = u - 1
    while k >= 0 and not s.occupied[k] and s.known[k]:
        r, _h = after_hours_reference(s, k, p, tainted)
        if r is None:
            return False
        if s.used[k] > r * low_ratio and s.used[k] - r > p.min_excess * p.clear_ratio:
            return False
        k -= 1
    return True


EMPTY_WORDS = {
    "term": "after closing",
    "weekend": "weekend",
    "holiday": "public holiday",
    "vacation": "vacation",
}


def empty_reasons(kinds: list[str]) -> list[str]:
    """Why the building is empty over a stretch, in order: a weekday evening is a closing, not a weekend."""
    out: list[str] = []
    for k in kinds:
        w = EMPTY_WORDS.get(k, k)
        if w not in out:
            out.append(w)
    return out


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
    # Working days and resting days (weekend, holiday, vacation) have different base loads: each
    # recent day is compared with the long-term mean of its own group, so a holiday week in the
    # history or a make-up workday in the recent week is not a creep.
    groups = dict(state.get("groups", {}))
    for d, a, _b in s.timeline.day_ranges(ctx.upto):
        groups[d.isoformat()] = "work" if s.timeline.day_kinds[a] == "term" else "rest"

    def group(d: date) -> str:
        return groups.get(d.isoformat()) or ("work" if d.weekday() < 5 else "rest")

    last = max(hist)
    keep = {d: v for d, v in hist.items() if (last - d).days < p.history_days}
    new_state = {
        **state,
        "days": {d.isoformat(): round(v, 4) for d, v in sorted(keep.items())},
        "groups": {d.isoformat(): group(d) for d in sorted(keep)},
    }
    days = sorted(keep)
    recent_days = [d for d in days if (last - d).days < p.recent_days]
    recent = [keep[d] for d in recent_days]
    older = [keep[d] for d in days if (last - d).days >= p.recent_days]
    if len(recent) < max(1, p.recent_days - 2) or len(older) < p.min_history_days:
        return Finding(
            "after_hours.baseload_creep", subject, Level.HOLD, ctx.now, meter=s.meter.id, state=new_state
        )
    frozen = state.get("long_term")
    if isinstance(frozen, dict):
        by_group = frozen
    else:
        by_group = {}
        for g in ("work", "rest"):
            vals = [keep[d] for d in days if (last - d).days >= p.recent_days and group(d) == g]
            if vals:
                by_group[g] = mean(vals)
        overall = mean(older)
        by_group = {g: by_group.get(g, overall) for g in ("work", "rest")}
    long_term = mean([by_group[group(d)] for d in recent_days])
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
            state={**new_state, "long_term": by_group},
            evidence={
                "meter": s.meter.id,
                "quantity": "energy_kwh",
                "start": s.timeline.starts[since_i] if since_i is not None else None,
                "end": s.timeline.end_of(ctx.upto - 1) if ctx.upto else None,
                "value": now_kw,
                "threshold": long_term * p.ratio,
                "baseline": long_term,
                **baseline_text(
                    "mean daily base load (mean of the %(lowest)s lowest hours) over up to "
                    "%(history)s days before the last %(recent)s, working and resting days "
                    "apart, weighted by the recent days' mix; frozen while the alert is open",
                    lowest=p.lowest_hours,
                    history=p.history_days,
                    recent=p.recent_days,
                ),
                "long_term_by_group": by_group,
            },
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
        # The spike's own hours, back to where it began (at most a day): their excess is the waste.
        i, hrefs = u - p.hours, list(refs)
        while i > 0 and u - i < 24 and s.known[i - 1] and (not p.occupied_only or s.occupied[i - 1]):
            r = spike_reference(s, i - 1, p.weeks, p.min_weeks)
            if r is None or not (s.used[i - 1] > r * p.ratio and s.used[i - 1] - r > min_excess):
                break
            hrefs.insert(0, r)
            i -= 1
        excess = sum(max(s.used[k] - hrefs[k - i], 0.0) for k in range(i, u))
        detail.update({"spike_hours": u - i, "excess": round(excess, 3)})
        evidence = {
            "meter": s.meter.id,
            "quantity": "energy_kwh" if not water else "volume_m3",
            "start": s.timeline.starts[i],
            "end": s.timeline.end_of(u - 1),
            "value": now,
            "threshold": ref * p.ratio,
            "baseline": ref,
            **baseline_text(
                "median of the same weekday and hour over the last %(weeks)s weeks, same kind of day",
                weeks=p.weeks,
            ),
            "excess": excess,
        }
        return Finding(
            "spike.baseline",
            subject,
            Level.FIRING,
            ctx.now,
            since=s.timeline.starts[i],
            waste_per_day=excess,
            evidence=evidence,
            **common,
        )
    if now <= ref * (1 + (p.ratio - 1) * p.clear_ratio) or now - ref <= min_excess * p.clear_ratio:
        return Finding("spike.baseline", subject, Level.OK, ctx.now, **common)
    return Finding("spike.baseline", subject, Level.HOLD, ctx.now, **common)
