"""Data health: silent meters, thin days, frozen registers and counters that run backwards.

Numbers (docs/references.md#data-quality, #project-defaults): a day needs >= 90 % of its
expected readings (重点用能单位上传数据质量要求); "offline" after N missed readings (N = 4 is this
project's choice: no guideline gives a heartbeat timeout, #gaps). Staleness is itself an alert
(docs/references.md#staleness).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from pydantic import Field

from api.alerts.rules.base import Finding, Level, Params, Subject, baseline_text
from api.alerts.rules.context import WindowContext
from api.alerts.series import MeterSeries


class OfflineParams(Params):
    intervals: float = Field(
        default=4, gt=1, description="expected readings missed before the meter counts as silent"
    )
    back_intervals: float = Field(default=2, gt=0, description="a reading this recent clears it")


def offline(s: MeterSeries, ctx: WindowContext, p: OfflineParams, state: dict) -> Finding | None:
    """A meter that has never reported is a commissioning matter (``data.never_reported``), not an outage."""
    subject = Subject("meter", s.meter.id, s.building.id)
    last = s.last_reading(ctx.now)
    if last is None:
        return None
    iv = s.meter.interval_s
    # Silence counts from the later of the last reading and when the meter was first expected, so a
    # backtest that starts when the data starts does not call every meter silent in its first minutes.
    silent = ctx.now - max(last, ctx.expected_from(s.meter.id))
    detail = {"last_reading": last, "interval_s": iv, "silent_s": silent}
    evidence = {
        "meter": s.meter.id,
        "quantity": "readings",
        "start": last,
        "end": ctx.now,
        "value": silent,
        "threshold": p.intervals * iv,
        **baseline_text(
            "%(intervals)s expected intervals of %(interval_s)s s", intervals=p.intervals, interval_s=iv
        ),
    }
    common = dict(unit="s", threshold=p.intervals * iv, meter=s.meter.id, detail=detail, evidence=evidence)
    if silent > p.intervals * iv:
        return Finding("data.offline", subject, Level.FIRING, ctx.now, since=last, value=silent, **common)
    if silent <= p.back_intervals * iv:
        return Finding("data.offline", subject, Level.OK, ctx.now, value=silent, **common)
    return Finding("data.offline", subject, Level.HOLD, ctx.now, value=silent, **common)


class GatewayOfflineParams(Params):
    intervals: float = Field(
        default=4, gt=1, description="expected readings every meter of the gateway missed before it fires"
    )
    late_intervals: float = Field(
        default=1.5,
        gt=0,
        description="a meter's offline alert waits for the gateway while no other meter of it has reported "
        "this many of its intervals after its last reading",
    )
    back_intervals: float = Field(
        default=2, gt=0, description="a reading this recent from any meter clears it"
    )
    min_meters: int = Field(
        default=2, ge=2, description="a gateway with fewer reporting meters is left to data.offline"
    )


def _silence(s: MeterSeries, ctx: WindowContext) -> tuple[int, int] | None:
    """(last reading, seconds silent) of a meter that has reported; silence counts as in ``offline``."""
    last = s.last_reading(ctx.now)
    if last is None:
        return None
    return last, ctx.now - max(last, ctx.expected_from(s.meter.id))


def gateway_explains(
    meter: MeterSeries, members: list[MeterSeries], ctx: WindowContext, p: GatewayOfflineParams
) -> bool:
    """Whether a silent meter's gateway may be the cause: its other meters went quiet too.

    Another meter proves the gateway alive when it reported, after this meter's last reading plus
    ``late_intervals`` of its interval, without a gap of its own (a slower meter not yet due proves
    nothing). After a gateway outage, this meter's silence counts from when the gateway came back,
    so a 15-minute meter is not offline in the minutes before its first reading after the outage.
    """
    own = meter.last_reading(ctx.now)
    others = [s for s in members if s is not meter and s.last_reading(ctx.now) is not None]
    if own is None or len(others) + 1 < p.min_meters:
        return False
    cutoff = own + p.late_intervals * meter.meter.interval_s
    back: int | None = None
    for s in others:
        r = s.curve.received
        i, j = bisect_right(r, cutoff), bisect_right(r, ctx.now)
        if i >= j:
            continue  # nothing from it since: silent too
        first = r[i]
        if i > 0 and first - r[i - 1] <= p.intervals * s.meter.interval_s:
            return False  # it kept reporting: the gateway is alive
        back = first if back is None else min(back, first)
    return back is None or ctx.now - back <= p.intervals * meter.meter.interval_s


def gateway_offline(
    gateway: str, members: list[MeterSeries], ctx: WindowContext, p: GatewayOfflineParams, state: dict
) -> Finding | None:
    """One alert when every meter behind a gateway is silent together, quoting the gateway's last status.

    The verdict is the data's alone; the status (``ctx.gateway_status``) only tells whoever reads the
    alert what the gateway said last, since a retained "online" and a last will mean different repairs.
    """
    seen = [(s, x) for s in members if (x := _silence(s, ctx)) is not None]
    if len(seen) < p.min_meters:
        return None
    buildings = {s.building.id for s, _x in seen}
    subject = Subject("gateway", gateway, buildings.pop() if len(buildings) == 1 else "")
    meters = sorted(s.meter.id for s, _x in seen)
    lasts = {s.meter.id: x[0] for s, x in seen}
    since = min(lasts.values())
    silent_s = min(x[1] for _s, x in seen)
    detail = {
        "gateway": gateway,
        "meters": meters,
        "last_readings": {m: lasts[m] for m in meters},
        "silent_s": silent_s,
        "last_seen": max(lasts.values()),
    }
    evidence = {
        "meter": None,
        "gateway": gateway,
        "quantity": "readings",
        "start": since,
        "end": ctx.now,
        "value": silent_s,
        "threshold": p.intervals,
        **baseline_text(
            "every meter of the gateway silent for %(intervals)s of its own expected intervals",
            intervals=p.intervals,
        ),
        "meters": meters,
        "last_readings": {m: lasts[m] for m in meters},
    }
    word = ctx.gateway_word(gateway)
    if word is not None:
        # What the gateway itself said last: "offline" is its last will (or a clean shutdown), "online"
        # while its meters are silent points at the meter bus rather than the gateway's uplink.
        detail["last_status"] = {"state": word.state, "received_at": word.at}
        evidence["last_status"] = {"state": word.state, "received_at": word.at}
    common = dict(
        unit="s", threshold=float(p.intervals), detail=detail, evidence=evidence, value=float(silent_s)
    )
    if all(x[1] > p.intervals * s.meter.interval_s for s, x in seen):
        return Finding("data.gateway_offline", subject, Level.FIRING, ctx.now, since=since, **common)
    if any(x[1] <= p.back_intervals * s.meter.interval_s for s, x in seen):
        return Finding("data.gateway_offline", subject, Level.OK, ctx.now, **common)
    return Finding("data.gateway_offline", subject, Level.HOLD, ctx.now, **common)


class NeverReportedParams(Params):
    grace_h: float = Field(
        default=24,
        gt=0,
        description="hours after a meter is first expected before it counts as never reported",
    )


CAMPUS = Subject("campus", "campus", "")


def never_reported(
    series: Iterable[MeterSeries], ctx: WindowContext, p: NeverReportedParams, state: dict
) -> Finding:
    """One campus-level alert listing configured meters that have not sent a single reading."""
    missing: list[str] = []
    since: int | None = None
    for s in series:
        if s.last_reading(ctx.now) is not None:
            continue
        expected = ctx.expected_from(s.meter.id)
        if ctx.now - expected >= p.grace_h * 3600:
            missing.append(s.meter.id)
            since = expected if since is None else min(since, expected)
    missing.sort()
    detail = {"meters": missing, "grace_h": p.grace_h}
    evidence = {
        "meter": None,
        "quantity": "readings",
        "start": since,
        "end": ctx.now,
        "value": len(missing),
        "threshold": 0,
        **baseline_text(
            "no reading at all %(grace_h)s h after the meter was first expected", grace_h=p.grace_h
        ),
        "meters": missing,
    }
    level = Level.FIRING if missing else Level.OK
    return Finding(
        "data.never_reported",
        CAMPUS,
        level,
        ctx.now,
        since=since,
        value=float(len(missing)),
        threshold=0.0,
        unit="meters",
        detail=detail,
        evidence=evidence,
    )


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
    got = sum(s.samples[a:b])  # readings received in the day's hours (rollups keep the count)
    ratio = min(got / expected, 1.0)
    subject = Subject("meter", s.meter.id, s.building.id)
    detail = {"day": d.isoformat(), "received": got, "expected": round(expected)}
    evidence = {
        "meter": s.meter.id,
        "quantity": "readings",
        "start": start,
        "end": end,
        "value": ratio,
        "threshold": p.min_ratio,
        "baseline": expected,
        **baseline_text(
            "expected readings = the day's length / interval_s (%(interval_s)s s)",
            interval_s=s.meter.interval_s,
        ),
    }
    common = dict(
        value=ratio, threshold=p.min_ratio, unit="share", meter=s.meter.id, detail=detail, evidence=evidence
    )
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
    history_days: int = Field(default=28, ge=1, description="days of the meter's own pattern to compare with")
    min_history_days: int = Field(
        default=3, ge=1, description="days of known data before the run; with less it does not judge"
    )
    min_reference_days: int = Field(
        default=2, ge=1, description="earlier days of the same kind needed to know an hour's usual use"
    )
    usual_share: float = Field(
        default=0.5, gt=0, le=1, description="an hour is a usual working hour if it used something this often"
    )
    min_active_hours: int = Field(
        default=3,
        ge=1,
        description="hours of the run in which the meter usually uses, or reported flow/power",
    )
    epsilon: float = Field(default=1e-9, ge=0)
    rate_epsilon: float = Field(default=1e-6, ge=0, description="flow or power above this is movement")


REST_KINDS = ("weekend", "holiday", "vacation")


def _zero_run_end(s: MeterSeries, end: int, eps: float) -> int:
    """Length of the run of hours with readings but no register change that ends at ``end``."""
    i = end
    while i > 0 and s.known[i - 1] and s.samples[i - 1] > 0 and s.used[i - 1] <= eps:
        i -= 1
    return end - i


def usually_used(s: MeterSeries, i: int, before: int, p: StuckParams) -> bool | None:
    """Whether the meter usually uses something at hour ``i``'s local hour on that kind of day.

    Only hours before ``before`` (the start of the run) count. Holidays and vacations with too few
    days of their own are compared with every resting kind of day. None = not enough days to say.
    """
    key = ("usual", p.history_days, p.min_reference_days, p.usual_share, p.epsilon)
    by_hour = s.memo.get(key)
    if by_hour is None:
        by_hour = s.memo[key] = {}
    assert isinstance(by_hour, dict)
    if (i, before) in by_hour:
        return by_hour[(i, before)]  # type: ignore[no-any-return]
    tl = s.timeline
    hour, kind = tl.local[i].hour, tl.day_kinds[i]

    def votes(kinds: tuple[str, ...]) -> list[bool]:
        out = []
        for k in range(1, p.history_days + 1 + (i - before) // 24):
            j0 = i - 24 * k
            for j in (j0, j0 - 1, j0 + 1):  # a DST change shifts the same local hour by one
                if 0 <= j < before and tl.local[j].hour == hour:
                    if s.known[j] and s.samples[j] > 0 and tl.day_kinds[j] in kinds:
                        out.append(s.used[j] > p.epsilon)
                    break
        return out[: p.history_days]

    v = votes((kind,))
    if len(v) < p.min_reference_days and kind in REST_KINDS:
        v = votes(REST_KINDS)
    res = None if len(v) < p.min_reference_days else sum(v) >= p.usual_share * len(v)
    by_hour[(i, before)] = res
    return res


def stuck(s: MeterSeries, ctx: WindowContext, p: StuckParams, state: dict) -> Finding | None:
    """A frozen register is stuck only where this meter would be moving: rest is not a fault.

    Evidence, in order: the meter's own flow or power readings (above zero with a frozen register =
    stuck, all zero = rest), else its resting pattern for that kind of day (weekend, holiday,
    vacation per the calendar), judged only with ``min_history_days`` of history before the run.
    """
    u = ctx.upto
    if not u or not s.known[u - 1]:
        return None
    subject = Subject("meter", s.meter.id, s.building.id)
    run = _zero_run_end(s, u, p.epsilon)
    base = p.hours_water if s.unit == "m3" else p.hours_electricity
    start = u - run
    tl = ctx.timeline
    evidence: dict = {
        "meter": s.meter.id,
        "quantity": "energy_kwh" if s.unit == "kWh" else "volume_m3",
        "start": tl.starts[start] if run else None,
        "end": tl.end_of(u - 1),
        "value": run,
        "threshold": base,
    }
    common = dict(value=float(run), unit="h", meter=s.meter.id, threshold=float(base))

    def found(level: Level, **extra: object) -> Finding:
        return Finding("data.stuck", subject, level, ctx.now, evidence=evidence, **common, **extra)

    if run == 0:
        return found(Level.OK)
    if run < base:
        return found(Level.HOLD)
    hours = range(start, u)
    rates = [s.rate[i] for i in hours if s.rate[i] is not None]
    detail: dict = {"unchanged_hours": run}
    if rates and len(rates) * 2 >= run:
        moving = sum(1 for r in rates if r > p.rate_epsilon)
        rate_q = "power_w" if s.unit == "kWh" else "flow_m3h"
        detail.update({"evidence": "rate", "rate_quantity": rate_q, "moving_hours": moving})
        evidence.update(
            {
                **baseline_text(
                    "%(quantity)s readings during the run: above zero = stuck, zero = resting",
                    quantity=rate_q,
                ),
                "moving_hours": moving,
                "max_rate": max(rates),
            }
        )
        if moving >= min(p.min_active_hours, run):
            return found(Level.FIRING, since=tl.starts[start], detail=detail)
        level = Level.OK if moving == 0 else Level.HOLD
        return found(level, detail=detail)
    history = sum(1 for i in range(max(0, start - 24 * p.history_days), start) if s.known[i])
    if history < 24 * p.min_history_days:
        detail["why"] = "too little history"
        return found(Level.HOLD, detail=detail)
    usual = [usually_used(s, i, start, p) for i in hours]
    active = sum(1 for x in usual if x)
    detail.update({"evidence": "pattern", "usual_use_hours": active})
    evidence.update(
        {
            **baseline_text(
                "hours of the run in which this meter used something on at least "
                "%(usual_share)s of the same hours of earlier days of the same kind "
                "(last %(days)s days)",
                usual_share=p.usual_share,
                days=p.history_days,
            ),
            "usual_use_hours": active,
        }
    )
    if active >= p.min_active_hours:
        return found(Level.FIRING, since=tl.starts[start], detail=detail)
    return found(Level.HOLD, detail=detail)


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
        evidence={
            "meter": s.meter.id,
            "quantity": "energy_kwh" if s.unit == "kWh" else "volume_m3",
            "start": recent[0].ts,
            "end": e.ts,
            "value": e.value,
            "threshold": e.previous,
            "baseline": e.previous,
            **baseline_text("the register reading before the drop (consumption policy: not a rollover)"),
        },
    )
