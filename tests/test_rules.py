"""Every window rule on synthetic meters: fires on its event, quiet on clean data, clears, does not flap.

Meters are driven by rate functions integrated into cumulative registers every 15 minutes, then
go through the real consumption policy, calendar, parameter resolution and lifecycle decision.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from api.accounting.settings import calendar_for
from api.alerts.config import parse_alerts
from api.alerts.evaluate import window_findings
from api.alerts.lifecycle import Action, decide
from api.alerts.rules.base import Level
from api.alerts.rules.context import Quota, WindowContext
from api.alerts.series import Timeline, build_campus
from api.alerts.store import subject_key
from campusmon.config import CampusConfig, parse_config

TZ = ZoneInfo("Asia/Shanghai")
START_DAY = date(2025, 10, 6)  # a Monday
DAY = 86400
H = 3600


def t(day: float, hour: float = 0.0) -> int:
    """Local time ``day`` days after START_DAY at ``hour``."""
    d = START_DAY + timedelta(days=int(day))
    return int(datetime.combine(d, datetime.min.time(), tzinfo=TZ).timestamp() + (hour + (day % 1) * 24) * H)


def local(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, TZ)


def campus(
    meters: list[dict[str, Any]],
    btype: str = "office",
    alerts: dict[str, Any] | None = None,
    accounting: dict[str, Any] | None = None,
) -> CampusConfig:
    return parse_config(
        {
            "site": {"timezone": "Asia/Shanghai"},
            "buildings": [
                {"id": "b1", "name": "Building 1", "type": btype, "floor_area_m2": 5000, "occupants": 100}
            ],
            "meters": [{"building": "b1", **m} for m in meters],
            "accounting": accounting or {},
            "alerts": alerts or {},
        },
        "test",
        environ={},
    )


def registers(
    rate: Callable[[int], float],
    start: int,
    end: int,
    interval: int = 900,
    r0: float = 100.0,
    skip: Callable[[int], bool] | None = None,
) -> list[tuple[int, float]]:
    """Integrate a rate (per hour: kW or m3/h) into register readings."""
    out = []
    v = r0
    ts = start
    while ts <= end:
        if skip is None or not skip(ts):
            out.append((ts, round(v, 4)))
        v += rate(ts) * interval / 3600
        ts += interval
    return out


@dataclass
class Trace:
    opens: list[tuple[int, str]] = field(default_factory=list)
    clears: list[tuple[int, str]] = field(default_factory=list)
    levels: list[tuple[int, str, Level]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    fired: dict[str, Any] = field(default_factory=dict)  # the last FIRING finding per subject

    def opened(self, subject: str | None = None) -> list[int]:
        return [ts for ts, s in self.opens if subject is None or s == subject]


def run(
    rule: str,
    cfg: CampusConfig,
    points: dict[str, list[tuple[int, float]]],
    start: int,
    end: int,
    step: int = H,
    quotas: list[Quota] | None = None,
    data_start: int | None = None,
    rates: dict[str, list[tuple[int, float]]] | None = None,
    expected: dict[str, int] | None = None,
) -> Trace:
    """Evaluate one rule every ``step`` from ``start`` to ``end`` and follow the lifecycle as the store does."""
    acfg = parse_alerts(cfg)
    cal = calendar_for(cfg)
    first = data_start if data_start is not None else min(p[0][0] for p in points.values() if p)
    timeline = Timeline.build(first, end, TZ, cal)
    series = build_campus(cfg, timeline, points, cal, rates=rates)
    children: dict[str, list[str]] = {}
    for m in cfg.meters:
        if m.parent:
            children.setdefault(m.parent, []).append(m.id)
    states: dict[str, dict] = {}
    open_: dict[str, int] = {}
    tr = Trace()
    now = start
    while now <= end:
        ctx = WindowContext(
            now, timeline.complete_upto(now), timeline, series, children, quotas or [], expected or {}
        )
        for f in window_findings(acfg, ctx, lambda r, s: states.get(subject_key(s), {}), [rule]):
            key = subject_key(f.subject)
            if f.state is not None:
                states[key] = f.state
            tr.levels.append((now, f.subject.id, f.level))
            tr.last[f.subject.id] = f
            if f.level is Level.FIRING:
                tr.fired[f.subject.id] = f
            is_open = key in open_
            act = decide(is_open, open_.get(key, 0), False, f.level, f.clear_after)
            if act is Action.OPEN:
                open_[key] = 0
                tr.opens.append((now, f.subject.id))
            elif act is Action.CLEAR:
                del open_[key]
                tr.clears.append((now, f.subject.id))
            elif act is Action.COUNT_OK:
                open_[key] += 1
            elif act is Action.RESET_OK:
                open_[key] = 0
        now += step
    return tr


def noisy(seed: int, base: Callable[[int], float], amount: float = 0.05) -> Callable[[int], float]:
    rng = random.Random(seed)
    return lambda ts: base(ts) * (1 + amount * (2 * rng.random() - 1))


# -- water ---------------------------------------------------------------------------------------------------

WATER = [{"id": "w1", "kind": "water", "category": "02000"}]


def office_water(ts: int) -> float:
    h = local(ts).hour
    return 1.0 if 8 <= h < 18 else 0.01


def test_night_flow_fires_by_the_morning_after_a_leak_and_clears_after_repair() -> None:
    leak = (t(15, 22), t(18, 10))
    rate = noisy(1, lambda ts: office_water(ts) + (0.1 if leak[0] <= ts < leak[1] else 0.0))
    tr = run("leak.night_flow", campus(WATER), {"w1": registers(rate, t(0), t(21))}, t(14), t(21))
    assert len(tr.opens) == 1
    opened = tr.opens[0][0]
    assert t(16, 5) <= opened <= t(16, 6), local(opened)  # the first leaking night ends at 05:00
    assert len(tr.clears) == 1 and t(19, 5) <= tr.clears[0][0] <= t(19, 6)  # the first dry night after repair
    f = [lv for lv in tr.levels if lv[2] is Level.FIRING]
    assert f, "firing levels recorded"


def test_night_flow_quiet_on_clean_meter_with_usual_night_use() -> None:
    rate = noisy(2, lambda ts: office_water(ts) + 0.05)  # legitimate night use of 50 L/h
    tr = run("leak.night_flow", campus(WATER), {"w1": registers(rate, t(0), t(28))}, t(7), t(28))
    assert tr.opens == []
    assert any(lv[2] is Level.OK for lv in tr.levels)


def test_night_flow_does_not_flap_around_its_threshold() -> None:
    # Baseline 0.01; the rule raises above baseline + 0.02 and clears under baseline + 0.01.
    def rate(ts: int) -> float:
        d = (ts - t(0)) // DAY
        night = 0.01 + ((0.021 if d % 2 else 0.019) if d >= 14 else 0.0)
        return 1.0 if 8 <= local(ts).hour < 18 else night

    tr = run("leak.night_flow", campus(WATER), {"w1": registers(rate, t(0), t(28))}, t(14), t(28))
    assert len(tr.opens) == 1 and tr.clears == []


def test_night_flow_absolute_threshold_from_meter_settings() -> None:
    cfg = campus(WATER, alerts={"meters": {"w1": {"leak.night_flow": {"threshold_m3h": 0.005}}}})
    # No history at all: only the absolute threshold can fire.
    tr = run("leak.night_flow", cfg, {"w1": registers(office_water, t(0), t(2))}, t(0), t(2))
    assert len(tr.opens) == 1 and t(0, 5) <= tr.opens[0][0] <= t(0, 6)


def resting(ts: int) -> float:
    h = local(ts).hour
    return 0.3 if 7 <= h < 20 else 0.0


def test_continuous_flow_fires_within_a_day_and_clears_when_flow_stops() -> None:
    leak = (t(10, 12), t(13, 9))
    rate = noisy(3, lambda ts: resting(ts) + (0.01 if leak[0] <= ts < leak[1] else 0.0))
    tr = run("leak.continuous_flow", campus(WATER), {"w1": registers(rate, t(0), t(16))}, t(8), t(16))
    assert len(tr.opens) == 1
    assert leak[0] < tr.opens[0][0] <= leak[0] + 25 * H
    assert len(tr.clears) == 1 and leak[1] < tr.clears[0][0] <= leak[1] + 24 * H


def test_continuous_flow_quiet_on_meters_that_always_flow() -> None:
    rate = noisy(4, lambda ts: resting(ts) + 0.02)  # e.g. a cooling tower make-up: never rests
    tr = run("leak.continuous_flow", campus(WATER), {"w1": registers(rate, t(0), t(20))}, t(8), t(20))
    assert tr.opens == []


def test_continuous_flow_does_not_flap_at_the_zero_threshold() -> None:
    rng = random.Random(5)

    def rate(ts: int) -> float:
        extra = 0.0038 * (1 + 0.04 * (2 * rng.random() - 1)) if ts >= t(10) else 0.0
        return resting(ts) + extra

    tr = run("leak.continuous_flow", campus(WATER), {"w1": registers(rate, t(0), t(18))}, t(8), t(18))
    assert len(tr.opens) <= 1 and tr.clears == []


BALANCE = [
    {"id": "w-main", "kind": "water", "category": "02000"},
    {"id": "w-sub", "kind": "water", "category": "02000", "parent": "w-main"},
]


def test_balance_fires_on_loss_between_main_and_sub_meters_and_clears() -> None:
    sub = noisy(6, office_water)
    leak = (t(16, 9), t(19, 9))
    main = lambda ts: sub(ts) * 1.2 + (0.4 if leak[0] <= ts < leak[1] else 0.0)  # noqa: E731
    pts = {"w-sub": registers(sub, t(0), t(23)), "w-main": registers(noisy(7, main, 0.01), t(0), t(23))}
    tr = run("leak.balance", campus(BALANCE), pts, t(14), t(23))
    assert [s for _, s in tr.opens] == ["w-main"]
    assert leak[0] < tr.opens[0][0] <= leak[0] + 25 * H
    assert len(tr.clears) == 1 and leak[1] < tr.clears[0][0] <= leak[1] + 25 * H


def test_balance_quiet_when_the_usual_unmetered_share_holds() -> None:
    sub = noisy(8, office_water)
    pts = {"w-sub": registers(sub, t(0), t(23)), "w-main": registers(lambda ts: sub(ts) * 1.5, t(0), t(23))}
    assert run("leak.balance", campus(BALANCE), pts, t(7), t(23)).opens == []


# -- electricity ---------------------------------------------------------------------------------------------

ELEC = [{"id": "e1", "kind": "electricity", "category": "01000"}]


def office_kw(ts: int) -> float:
    lt = local(ts)
    if lt.weekday() >= 5:
        return 5.0
    return 50.0 if 8 <= lt.hour < 18 else 5.0


def test_after_hours_fires_on_lights_left_on_over_a_weekend_and_clears_on_monday_evening() -> None:
    on = (t(18, 19), t(21, 8))  # Friday evening of week 3 to Monday morning
    rate = noisy(9, lambda ts: office_kw(ts) + (10.0 if on[0] <= ts < on[1] else 0.0))
    tr = run("after_hours.usage", campus(ELEC), {"e1": registers(rate, t(0), t(23))}, t(14), t(23))
    assert len(tr.opens) == 1
    assert on[0] < tr.opens[0][0] <= on[0] + 4 * H
    # Monday's working day says nothing; the first empty hours after closing show the lights are off.
    assert len(tr.clears) == 1 and t(21, 18) <= tr.clears[0][0] <= t(21, 22)


def test_after_hours_quiet_on_a_clean_office() -> None:
    tr = run(
        "after_hours.usage", campus(ELEC), {"e1": registers(noisy(10, office_kw), t(0), t(35))}, t(14), t(35)
    )
    assert tr.opens == []


def test_after_hours_does_not_flap_when_load_hovers_at_the_ratio() -> None:
    rng = random.Random(11)

    def rate(ts: int) -> float:
        base = office_kw(ts)
        if ts >= t(14) and base == 5.0:
            return 5.0 * 1.5 * (1 + 0.03 * (2 * rng.random() - 1)) + 0.0  # 1.5x +- 3 %
        return base

    tr = run(
        "after_hours.usage",
        campus(ELEC, alerts={"rules": {"after_hours.usage": {"min_excess_kw": 0.5}}}),
        {"e1": registers(rate, t(0), t(21))},
        t(14),
        t(21),
    )
    assert len(tr.opens) == 1 and tr.clears == []


def test_baseload_creep_fires_when_the_week_runs_15_percent_higher_and_clears() -> None:
    extra = (t(21), t(30))
    rate = noisy(12, lambda ts: office_kw(ts) + (1.2 if extra[0] <= ts < extra[1] else 0.0), 0.02)
    tr = run("after_hours.baseload_creep", campus(ELEC), {"e1": registers(rate, t(0), t(42))}, t(20), t(42))
    assert len(tr.opens) == 1
    assert extra[0] + 3 * DAY <= tr.opens[0][0] <= extra[0] + 8 * DAY
    assert len(tr.clears) == 1 and extra[1] < tr.clears[0][0] <= extra[1] + 8 * DAY


def test_baseload_creep_quiet_on_steady_base_load() -> None:
    tr = run(
        "after_hours.baseload_creep",
        campus(ELEC),
        {"e1": registers(noisy(13, office_kw), t(0), t(42))},
        t(14),
        t(42),
    )
    assert tr.opens == []


def test_spike_fires_against_the_same_weekday_and_hour_and_clears() -> None:
    spike = (t(23, 10), t(23, 14))  # a Wednesday of week 4
    rate = noisy(14, lambda ts: office_kw(ts) * (2.2 if spike[0] <= ts < spike[1] else 1.0))
    tr = run("spike.baseline", campus(ELEC), {"e1": registers(rate, t(0), t(25))}, t(21), t(25))
    assert len(tr.opens) == 1 and spike[0] < tr.opens[0][0] <= spike[0] + 3 * H
    assert len(tr.clears) == 1 and spike[1] <= tr.clears[0][0] <= spike[1] + 2 * H


def test_spike_quiet_on_the_usual_week() -> None:
    tr = run(
        "spike.baseline",
        campus(ELEC),
        {"e1": registers(noisy(15, office_kw, 0.1), t(0), t(35))},
        t(14),
        t(35),
    )
    assert tr.opens == []


# -- quotas --------------------------------------------------------------------------------------------------


def test_quota_forecast_fires_before_the_quota_is_exceeded_and_both_clear_next_day() -> None:
    over = (t(9, 6), t(10))
    rate = noisy(16, lambda ts: office_kw(ts) * (1.8 if over[0] <= ts < over[1] else 1.0), 0.02)
    pts = {"e1": registers(rate, t(0), t(12))}
    daily = 10 * 50 + 14 * 5  # a weekday
    q = Quota("building", "b1", "electricity", "day", daily * 1.15, "b1 daily", "b1", ("e1",), 1)
    fc = run("quota.forecast", campus(ELEC), pts, t(7), t(12), quotas=[q])
    ex = run("quota.exceeded", campus(ELEC), pts, t(7), t(12), quotas=[q])
    assert len(ex.opens) == 1 and over[0] < ex.opens[0][0] < over[1]
    assert len(fc.opens) == 1 and fc.opens[0][0] < ex.opens[0][0]
    assert len(ex.clears) == 1 and over[1] <= ex.clears[0][0] <= over[1] + 2 * H
    assert len(fc.clears) == 1 and fc.clears[0][0] <= over[1] + 2 * H


def test_quota_quiet_on_ordinary_days() -> None:
    pts = {"e1": registers(noisy(17, office_kw, 0.05), t(0), t(21))}
    q = Quota("building", "b1", "electricity", "day", (10 * 50 + 14 * 5) * 1.15, "b1", "b1", ("e1",), 1)
    assert run("quota.exceeded", campus(ELEC), pts, t(7), t(21), quotas=[q]).opens == []
    assert run("quota.forecast", campus(ELEC), pts, t(7), t(21), quotas=[q]).opens == []


# -- data health ---------------------------------------------------------------------------------------------


def test_offline_fires_after_four_missed_readings_and_clears_when_data_resumes() -> None:
    gap = (t(3, 10), t(4, 8))
    pts = {"e1": registers(office_kw, t(0), t(6), skip=lambda ts: gap[0] <= ts < gap[1])}
    tr = run("data.offline", campus(ELEC), pts, t(2), t(6), step=900)
    assert len(tr.opens) == 1
    assert gap[0] - 900 + 4 * 900 < tr.opens[0][0] <= gap[0] + 5 * 900
    assert len(tr.clears) == 1 and gap[1] <= tr.clears[0][0] <= gap[1] + 900


def test_offline_quiet_when_readings_arrive_on_time() -> None:
    assert (
        run(
            "data.offline", campus(ELEC), {"e1": registers(office_kw, t(0), t(4))}, t(1), t(4), step=900
        ).opens
        == []
    )


def test_completeness_fires_on_a_thin_day_and_clears_after_a_full_one() -> None:
    rng = random.Random(18)
    thin = (t(3), t(4))
    pts = {
        "e1": registers(office_kw, t(0), t(7), skip=lambda ts: thin[0] <= ts < thin[1] and rng.random() < 0.2)
    }
    tr = run("data.completeness", campus(ELEC), pts, t(1), t(7))
    assert len(tr.opens) == 1 and thin[1] <= tr.opens[0][0] <= thin[1] + 2 * H
    assert len(tr.clears) == 1 and tr.clears[0][0] <= thin[1] + DAY + 2 * H
    assert (
        run("data.completeness", campus(ELEC), {"e1": registers(office_kw, t(0), t(7))}, t(1), t(7)).opens
        == []
    )


def test_completeness_does_not_flap_between_89_and_92_percent() -> None:
    def skip(ts: int) -> bool:
        day, slot = divmod(ts - t(0), DAY)
        drop = 11 if day % 2 else 8  # 85 of 96 (88.5 %) and 88 of 96 (91.7 %) on alternate days
        return day >= 2 and (slot // 900) % 96 < drop

    tr = run(
        "data.completeness", campus(ELEC), {"e1": registers(office_kw, t(0), t(12), skip=skip)}, t(1), t(12)
    )
    assert len(tr.opens) == 1 and tr.clears == []


def test_stuck_register_fires_and_clears() -> None:
    frozen = (t(3, 2), t(3, 14))
    pts = {"e1": registers(lambda ts: 0.0 if frozen[0] <= ts < frozen[1] else office_kw(ts), t(0), t(5))}
    tr = run("data.stuck", campus(ELEC), pts, t(1), t(5))
    assert len(tr.opens) == 1 and frozen[0] + 6 * H <= tr.opens[0][0] <= frozen[0] + 8 * H
    assert len(tr.clears) == 1 and frozen[1] <= tr.clears[0][0] <= frozen[1] + 2 * H
    assert run("data.stuck", campus(ELEC), {"e1": registers(office_kw, t(0), t(5))}, t(1), t(5)).opens == []


def test_stuck_water_meter_respects_its_usual_quiet_runs() -> None:
    # An office water meter rests every night and all weekend: 60 h without a change is normal for it.
    def rate(ts: int) -> float:
        return 0.0 if local(ts).weekday() >= 5 else (1.0 if 8 <= local(ts).hour < 18 else 0.0)

    tr = run("data.stuck", campus(WATER), {"w1": registers(rate, t(0), t(28))}, t(14), t(28))
    assert tr.opens == []


def test_counter_going_backwards_fires_and_clears_a_day_later() -> None:
    pts = registers(office_kw, t(0), t(5))
    reset = t(2, 12)
    at_reset = next(v for ts, v in pts if ts >= reset)
    pts = [(ts, v if ts < reset else round(3.0 + v - at_reset, 4)) for ts, v in pts]  # meter replaced
    tr = run("data.counter_backwards", campus(ELEC), {"e1": pts}, t(1), t(5))
    assert len(tr.opens) == 1 and reset <= tr.opens[0][0] <= reset + 2 * H
    assert len(tr.clears) == 1 and reset + DAY <= tr.clears[0][0] <= reset + DAY + 2 * H
    quiet = run("data.counter_backwards", campus(ELEC), {"e1": registers(office_kw, t(0), t(5))}, t(1), t(5))
    assert quiet.opens == []


def test_rollover_is_not_a_counter_going_backwards() -> None:
    cfg = campus(
        [{"id": "e1", "kind": "electricity", "category": "01000", "rollover": 999.99, "max_rate": 100000}]
    )
    pts = [(ts, round(v % 1000.0, 2)) for ts, v in registers(office_kw, t(0), t(4), r0=900.0)]
    assert min(v for _, v in pts) < 100  # it did wrap
    assert run("data.counter_backwards", cfg, {"e1": pts}, t(1), t(4)).opens == []


def test_rules_never_read_hours_after_now() -> None:
    """A backtest replays the past: the hour in progress must not count (the series holds the future)."""
    rate = lambda ts: office_water(ts) + (5.0 if ts >= t(15, 1) else 0.0)  # noqa: E731
    cfg = campus(WATER, alerts={"meters": {"w1": {"leak.night_flow": {"threshold_m3h": 1.0}}}})
    tr = run("leak.night_flow", cfg, {"w1": registers(rate, t(0), t(16))}, t(15, 4), t(15, 4))
    assert tr.opens == []  # at 04:00 the night window is not over
    tr2 = run("leak.night_flow", cfg, {"w1": registers(rate, t(0), t(16))}, t(15, 5), t(15, 5))
    assert len(tr2.opens) == 1
