"""Detection coverage: water used while a building is closed, a closed day with no history of its kind,
and one alert for a whole gateway.

Same harness as ``tests/test_rules.py`` (rate functions integrated into registers, the real
consumption policy, calendar, parameters and lifecycle decision). Each case is the waste the
rules used to miss, with the simulator's truth to check the alert against, and a clean case that
must stay quiet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.accounting.settings import calendar_for
from api.alerts.backtest import backtest
from api.alerts.config import parse_alerts
from api.alerts.evaluate import window_findings
from api.alerts.labels import parse_labels, score_labels
from api.alerts.lifecycle import Action, decide
from api.alerts.messages import compose
from api.alerts.rules.base import Finding, Level
from api.alerts.rules.context import WindowContext
from api.alerts.series import Timeline, build_campus
from api.alerts.store import subject_key
from campusmon.config import CampusConfig, parse_config
from campusmon.influx import open_store
from firmware_sim import scenario as sc
from tests.test_rules import DAY, START_DAY, TZ, H, campus, local, noisy, registers, run, t

# -- 1. water running in a closed canteen ----------------------------------------------------------------

WATER = [{"id": "w1", "kind": "water", "category": "02000"}]


def canteen_water(ts: int) -> float:
    """A canteen's water (m3/h): meals and washing-up while open (06:00-20:30), a trickle at night."""
    h = local(ts).hour
    if 6 <= h < 8 or 11 <= h < 13 or 17 <= h < 20:
        return 1.2
    if 8 <= h < 20:
        return 0.4
    return 0.01


TAP_M3H = 0.5  # one tap or hose left running


def taps_left_running(nights: list[int]) -> Callable[[int], float]:
    """Taps left open from closing (20:30) until 03:00 on the given nights (day offsets)."""
    spans = [(t(d, 20.5), t(d + 1, 3)) for d in nights]
    return lambda ts: canteen_water(ts) + (TAP_M3H if any(a <= ts < b for a, b in spans) else 0.0)


def test_water_running_after_closing_until_three_on_three_nights_raises_one_alert() -> None:
    nights = [15, 16, 17]  # Tuesday, Wednesday and Thursday of week 3
    rate = noisy(41, taps_left_running(nights), 0.03)
    cfg = campus(WATER, btype="canteen")
    pts = {"w1": registers(rate, t(0), t(20))}
    tr = run("after_hours.water", cfg, pts, t(14), t(20))
    assert [s for _ts, s in tr.opens] == ["w1"]  # one alert for the three nights, not three
    opened = tr.opens[0][0]
    assert t(15, 23) <= opened <= t(16, 0), local(opened)  # the first empty hour is 21:00: 3 h later
    f = tr.fired["w1"]
    assert f.since == t(15, 21)  # the first whole empty hour of the first night
    assert f.detail["empty_because"][0] == "after closing"
    assert f.unit == "m3/h" and f.waste_unit == "m3"
    # Waste over the last 24 h is one night's running: 20:30 (the 20:00 hour is open) to 03:00 = 6 h.
    truth = TAP_M3H * 6
    assert abs(f.waste_per_day - truth) <= 0.1 * truth, f.waste_per_day
    msg = compose(cfg, parse_alerts(cfg), f, f.since)[1]
    assert "after closing" in msg and "m3/h" in msg, msg
    # The rules that existed could not see it: the night minimum is back to the trickle by 03:00.
    assert run("leak.night_flow", cfg, pts, t(14), t(20)).opens == []
    assert run("leak.continuous_flow", cfg, pts, t(14), t(20)).opens == []


def test_water_after_hours_clears_on_the_next_clean_night() -> None:
    rate = noisy(42, taps_left_running([15]), 0.03)
    cfg = campus(WATER, btype="canteen")
    tr = run("after_hours.water", cfg, {"w1": registers(rate, t(0), t(18))}, t(14), t(18))
    assert [s for _ts, s in tr.opens] == ["w1"]
    assert [s for _ts, s in tr.clears] == ["w1"]
    assert tr.clears[0][0] < t(17, 3)  # the next night, not days later


def test_water_after_hours_quiet_on_clean_canteen_and_resting_office_water() -> None:
    cfg = campus(WATER, btype="canteen")
    tr = run(
        "after_hours.water", cfg, {"w1": registers(noisy(43, canteen_water, 0.1), t(0), t(35))}, t(0), t(35)
    )
    assert tr.opens == []

    def office_water(ts: int) -> float:
        lt = local(ts)
        return 0.8 if lt.weekday() < 5 and 8 <= lt.hour < 18 else 0.0

    tr = run(
        "after_hours.water",
        campus(WATER),
        {"w1": registers(noisy(44, office_water, 0.1), t(0), t(35))},
        t(0),
        t(35),
    )
    assert tr.opens == []


# -- 2. a closed holiday with no earlier holiday ---------------------------------------------------------

ELEC = [{"id": "e1", "kind": "electricity", "category": "01000"}]
HOLIDAY = START_DAY + timedelta(days=16)  # a Wednesday of week 3; the data has no earlier holiday
HOL_CAL = {"calendar": {"holidays": [{"name": "public holiday", "date": HOLIDAY.isoformat()}]}}


def lab_kw(ts: int) -> float:
    """A lab open on working days (08:00-22:00) and on weekend days (09:00-17:00), closed on holidays."""
    lt = local(ts)
    if lt.date() == HOLIDAY:
        return 12.0
    if lt.weekday() < 5:
        return 60.0 if 8 <= lt.hour < 22 else 12.0
    return 30.0 if 9 <= lt.hour < 17 else 12.0


AC_KW = 20.0


def test_air_conditioning_on_a_closed_holiday_is_judged_against_the_base_load() -> None:
    on = (local(t(16, 0)).replace(hour=8), local(t(16, 0)).replace(hour=20))
    span = (int(on[0].timestamp()), int(on[1].timestamp()))
    rate = noisy(51, lambda ts: lab_kw(ts) + (AC_KW if span[0] <= ts < span[1] else 0.0), 0.03)
    cfg = campus(ELEC, btype="lab", accounting=HOL_CAL)
    tr = run("after_hours.usage", cfg, {"e1": registers(rate, t(0), t(18))}, t(14), t(18))
    assert [s for _ts, s in tr.opens] == ["e1"]
    assert span[0] + 3 * H <= tr.opens[0][0] <= span[0] + 4 * H
    f = tr.fired["e1"]
    assert f.since == span[0]
    assert f.detail["reference"] == "closed-hours base load"
    assert abs(f.evidence["baseline"] - 12.0) <= 0.05 * 12.0  # the lab's nights
    assert "base load" in f.evidence["baseline_method"]
    msg = compose(cfg, parse_alerts(cfg), f, f.since)[1]
    assert "public holiday" in msg and "closed-hours base load" in msg, msg


def test_a_quiet_closed_holiday_with_no_history_raises_nothing() -> None:
    cfg = campus(ELEC, btype="lab", accounting=HOL_CAL)
    tr = run("after_hours.usage", cfg, {"e1": registers(noisy(52, lab_kw, 0.05), t(0), t(18))}, t(0), t(18))
    assert tr.opens == []


def test_a_first_weekend_at_cold_start_is_not_judged_against_nights() -> None:
    """No week of history yet: a classroom's first Saturday has nothing fair to be compared with."""

    def classroom_kw(ts: int) -> float:
        lt = local(ts)
        if lt.weekday() < 5:
            return 80.0 if 7 <= lt.hour < 22 else 10.0
        return 25.0 if 8 <= lt.hour < 18 else 10.0  # cleaning and a few rooms on Saturday

    cfg = campus(ELEC, btype="classroom")
    tr = run("after_hours.usage", cfg, {"e1": registers(noisy(53, classroom_kw), t(0), t(8))}, t(0), t(8))
    assert tr.opens == []


# -- 3. one gateway, one alert ----------------------------------------------------------------------------


def gateway_campus(meters: int = 5, alerts: dict[str, Any] | None = None) -> CampusConfig:
    ms: list[dict[str, Any]] = []
    for i in range(meters):
        kind = "water" if i % 2 else "electricity"
        ms.append(
            {
                "id": f"m{i}",
                "building": "b1",
                "kind": kind,
                "category": "02000" if kind == "water" else "01000",
                "gateway": "gw-b1",
                "interval_s": 300 if i < 2 else 900,
            }
        )
    ms.append({"id": "other", "building": "b1", "kind": "electricity", "category": "01000"})
    return parse_config(
        {
            "site": {"timezone": "Asia/Shanghai"},
            "buildings": [{"id": "b1", "name": "Building 1", "type": "office", "floor_area_m2": 5000}],
            "gateways": [{"id": "gw-b1", "name": "Building 1 gateway", "building": "b1"}],
            "meters": ms,
            "alerts": alerts or {},
        },
        "test",
        environ={},
    )


def _run_rules(
    rules: list[str],
    cfg: CampusConfig,
    points: dict[str, list[tuple[int, float]]],
    start: int,
    end: int,
    step: int,
) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]], dict[str, Finding]]:
    """Several rules in one pass, as the evaluator runs them: (opens, clears, last firing per subject)."""
    acfg = parse_alerts(cfg)
    cal = calendar_for(cfg)
    first = min(p[0][0] for p in points.values() if p)
    timeline = Timeline.build(first, end, TZ, cal)
    series = build_campus(cfg, timeline, points, cal)
    states: dict[str, dict] = {}
    open_: dict[str, int] = {}
    opens: list[tuple[int, str, str]] = []
    clears: list[tuple[int, str, str]] = []
    fired: dict[str, Finding] = {}
    now = start
    while now <= end:
        ctx = WindowContext(now, timeline.complete_upto(now), timeline, series, {}, [], {})
        for f in window_findings(acfg, ctx, lambda r, s: states.get(r + subject_key(s), {}), rules):
            key = f.rule + subject_key(f.subject)
            if f.state is not None:
                states[key] = f.state
            if f.level is Level.FIRING:
                fired[f"{f.rule}:{f.subject.id}"] = f
            act = decide(key in open_, open_.get(key, 0), False, f.level, f.clear_after)
            if act is Action.OPEN:
                open_[key] = 0
                opens.append((now, f.rule, f.subject.id))
            elif act is Action.CLEAR:
                del open_[key]
                clears.append((now, f.rule, f.subject.id))
            elif act is Action.COUNT_OK:
                open_[key] += 1
        now += step
    return opens, clears, fired


def _gateway_points(
    cfg: CampusConfig, silent: Callable[[str, int], bool]
) -> dict[str, list[tuple[int, float]]]:
    return {
        m.id: registers(
            lambda ts: 5.0, t(0), t(3), interval=m.interval_s, skip=lambda ts, mid=m.id: silent(mid, ts)
        )
        for m in cfg.meters
    }


OUTAGE = (t(1, 9), t(1, 17))  # 8 hours


def test_a_silent_gateway_is_one_alert_listing_its_meters_and_clears_with_them() -> None:
    cfg = gateway_campus()
    pts = _gateway_points(cfg, lambda mid, ts: mid != "other" and OUTAGE[0] <= ts < OUTAGE[1])
    opens, clears, fired = _run_rules(
        ["data.offline", "data.gateway_offline"], cfg, pts, t(0, 12), t(2), step=300
    )
    assert [(r, s) for _ts, r, s in opens] == [("data.gateway_offline", "gw-b1")], opens
    opened = opens[0][0]
    # When the slowest meter (900 s, last read at 08:45) has missed 4 readings, not before.
    assert OUTAGE[0] - 900 + 4 * 900 < opened <= OUTAGE[0] - 900 + 4 * 900 + 300
    f = fired["data.gateway_offline:gw-b1"]
    assert f.subject.kind == "gateway" and f.subject.building == "b1"
    assert f.detail["meters"] == ["m0", "m1", "m2", "m3", "m4"]
    assert f.evidence["meters"] == ["m0", "m1", "m2", "m3", "m4"]
    assert OUTAGE[0] - 900 <= f.since <= OUTAGE[0]
    msg = compose(cfg, parse_alerts(cfg), f, f.since)[1]
    assert "Building 1 gateway" in msg and "m0, m1, m2, m3, m4" in msg, msg
    assert [(r, s) for _ts, r, s in clears] == [("data.gateway_offline", "gw-b1")]
    assert OUTAGE[1] <= clears[0][0] <= OUTAGE[1] + 900


def test_a_fast_meter_does_not_raise_its_own_alert_before_slower_meters_are_due() -> None:
    """5-minute meters miss 4 readings before the 15-minute ones (last read at 08:59) are even late."""
    cfg = gateway_campus()
    pts = {
        m.id: registers(
            lambda ts: 5.0,
            t(0) + (840 if m.interval_s == 900 else 0),
            t(3),
            interval=m.interval_s,
            skip=lambda ts, mid=m.id: mid != "other" and OUTAGE[0] <= ts < OUTAGE[1],
        )
        for m in cfg.meters
    }
    opens, _clears, _fired = _run_rules(
        ["data.offline", "data.gateway_offline"], cfg, pts, t(0, 12), t(2), step=300
    )
    assert [(r, s) for _ts, r, s in opens] == [("data.gateway_offline", "gw-b1")], opens


def test_one_silent_meter_behind_a_working_gateway_is_its_own_offline_alert() -> None:
    cfg = gateway_campus()
    pts = _gateway_points(cfg, lambda mid, ts: mid == "m2" and OUTAGE[0] <= ts < OUTAGE[1])
    opens, _clears, _fired = _run_rules(
        ["data.offline", "data.gateway_offline"], cfg, pts, t(0, 12), t(2), step=300
    )
    assert [(r, s) for _ts, r, s in opens] == [("data.offline", "m2")]


def test_meter_alerts_stay_when_the_gateway_rule_is_off() -> None:
    cfg = gateway_campus(alerts={"rules": {"data.gateway_offline": {"enabled": False}}})
    pts = _gateway_points(cfg, lambda mid, ts: mid != "other" and OUTAGE[0] <= ts < OUTAGE[1])
    opens, _clears, _fired = _run_rules(
        ["data.offline", "data.gateway_offline"], cfg, pts, t(0, 12), t(2), step=300
    )
    assert sorted(s for _ts, r, s in opens if r == "data.offline") == ["m0", "m1", "m2", "m3", "m4"]


def test_rule_ids_are_documented_with_their_defaults() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "alerts.md").read_text(encoding="utf-8")
    for rid in ("after_hours.water", "data.gateway_offline"):
        assert f"`{rid}`" in doc
    assert DAY == 86400


TERM_END_WEEK = date(2025, 6, 30)  # a Monday; the vacation starts on 14 July


# -- the held-back style campus: three weeks across the end of a term ------------------------------------


@pytest.mark.slow
def test_term_end_scenario_catches_all_three_gaps_with_no_false_alerts(influxdb, tmp_path: Path) -> None:
    """Backtest with default settings, scored with the labels tool and with the scenario's own scorecard."""
    scn = sc.term_end(TERM_END_WEEK)
    cfg = scn.campus(
        {
            "influxdb": {
                "url": f"http://127.0.0.1:{influxdb.port}",
                "database": "term_" + uuid.uuid4().hex[:8],
            },
            "database": {"url": f"sqlite:///{tmp_path}/campus.sqlite"},
        }
    )
    store = open_store(cfg)
    store.ensure_database()
    assert sc.write(scn, cfg, store) > 100_000
    res = backtest(cfg, store, scn.week_start, scn.end, step_s=900)
    store.close()
    score = score_labels(
        parse_labels(sc.labels(scn, cfg)), res.alerts, len(cfg.meters), scn.week_start, scn.end, cfg.site.tz
    )
    assert score["recall"] == 1.0, [p for p in score["per_incident"] if not p["caught"]]
    assert score["false_alerts"] == 0, score["false"]
    card = sc.score(scn, cfg, res.alerts, scn.week_start, scn.end)
    assert card.missed == [] and card.late == [], card.detected
    assert card.false_alerts == []
    # One gateway, one alert: no meter of teaching building 1 has an offline alert of its own.
    outage = next(e for e in scn.events if e.offline)
    teach_1 = {outage.meter, *outage.mirror}
    assert [a["subject"]["id"] for a in res.alerts if a["rule"] == "data.gateway_offline"] == ["gw-teach-1"]
    assert [a for a in res.alerts if a["rule"] == "data.offline" and a["subject"]["id"] in teach_1] == []
    gw = next(a for a in res.alerts if a["rule"] == "data.gateway_offline")
    assert sorted(gw["evidence"]["meters"]) == sorted(teach_1)
    lab = next(a for a in res.alerts if a["rule"] == "after_hours.usage" and a["subject"]["id"] == "e-lab-1")
    assert "closed-hours base load" in lab["message"], lab["message"]
    water = next(a for a in res.alerts if a["rule"] == "after_hours.water")
    assert water["subject"]["id"] == "w-canteen-1"
    print(
        json.dumps(
            {
                "recall": score["recall"],
                "false_alerts": score["false_alerts"],
                "meter_days": score["meter_days"],
                "per_incident": score["per_incident"],
            }
        )
    )
