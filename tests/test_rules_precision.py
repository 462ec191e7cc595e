"""Alert precision on synthetic meters: cold starts, resting meters, and the facts a message states.

Same harness as ``tests/test_rules.py``: rate functions integrated into registers, the real
consumption policy, calendar, parameters and lifecycle decision. Each test names the false alert
or wrong fact it guards against; figures are checked against the rate function that made the data.
"""

from __future__ import annotations

from datetime import timedelta

from api.alerts.config import parse_alerts
from api.alerts.messages import compose
from tests.test_rules import (
    DAY,
    ELEC,
    START_DAY,
    WATER,
    H,
    campus,
    local,
    noisy,
    office_kw,
    registers,
    run,
    t,
)

# -- cold start ------------------------------------------------------------------------------------------


def test_meters_whose_first_reading_is_not_yet_due_are_not_offline() -> None:
    """A backtest that starts when the data starts: the first readings arrive 10 minutes in."""
    cfg = campus(ELEC + [{"id": "e2", "kind": "electricity", "category": "01000"}])
    start = t(0)
    pts = {m: registers(office_kw, start + 600, t(3)) for m in ("e1", "e2")}
    tr = run(
        "data.offline",
        cfg,
        pts,
        start + 300,
        t(3),
        step=300,
        data_start=start - 35 * DAY,
        expected={"e1": start, "e2": start},
    )
    assert tr.opens == []


def test_a_meter_that_never_reported_is_one_campus_alert_after_the_grace_period() -> None:
    cfg = campus(
        ELEC
        + [
            {"id": "e-ghost", "kind": "electricity", "category": "01000"},
            {"id": "w-ghost", "kind": "water", "category": "02000"},
        ]
    )
    start = t(0)
    pts = {"e1": registers(office_kw, start, t(3))}
    expected = {"e1": start, "e-ghost": start, "w-ghost": start}
    tr = run("data.offline", cfg, pts, start + 900, t(3), step=900, expected=expected)
    assert tr.opens == []  # never reported is not an outage
    tr = run("data.never_reported", cfg, pts, start + 900, t(3), step=900, expected=expected)
    assert [s for _ts, s in tr.opens] == ["campus"]
    opened = tr.opens[0][0]
    assert start + 24 * H <= opened <= start + 24 * H + 900
    f = tr.fired["campus"]
    assert f.detail["meters"] == ["e-ghost", "w-ghost"] and f.evidence["meters"] == ["e-ghost", "w-ghost"]


# -- resting meters are not stuck ------------------------------------------------------------------------


def office_water_rest(ts: int) -> float:
    """An office's water: used 08:00-18:00 on weekdays, nothing at night or at weekends."""
    lt = local(ts)
    return 1.0 if lt.weekday() < 5 and 8 <= lt.hour < 18 else 0.0


def test_stuck_quiet_on_a_water_meter_that_rests_every_weekend_from_its_first_day() -> None:
    """With no history yet, and with every later weekend: rest, not a frozen register."""
    tr = run("data.stuck", campus(WATER), {"w1": registers(office_water_rest, t(0), t(35))}, t(0), t(35))
    assert tr.opens == [], [local(x) for x, _ in tr.opens]


def test_stuck_quiet_over_a_public_holiday_week_with_make_up_workdays() -> None:
    hol = (START_DAY + timedelta(days=21), START_DAY + timedelta(days=27))  # Mon..Sun of week 4
    makeup = START_DAY + timedelta(days=19)  # the Saturday before is worked

    def rate(ts: int) -> float:
        lt = local(ts)
        if hol[0] <= lt.date() <= hol[1]:
            return 0.0
        working = lt.weekday() < 5 or lt.date() == makeup
        return 1.0 if working and 8 <= lt.hour < 18 else 0.0

    cal = {
        "calendar": {
            "holidays": [{"name": "national day", "start": hol[0].isoformat(), "end": hol[1].isoformat()}],
            "workdays": [makeup.isoformat()],
        }
    }
    tr = run("data.stuck", campus(WATER, accounting=cal), {"w1": registers(rate, t(0), t(35))}, t(7), t(35))
    assert tr.opens == [], [local(x) for x, _ in tr.opens]


def test_stuck_still_fires_on_a_water_meter_frozen_on_a_working_wednesday() -> None:
    frozen = t(16, 10)  # a Wednesday of week 3
    rate = lambda ts: 0.0 if ts >= frozen else office_water_rest(ts)  # noqa: E731
    tr = run("data.stuck", campus(WATER), {"w1": registers(rate, t(0), t(21))}, t(14), t(21))
    assert len(tr.opens) == 1 and frozen + 48 * H <= tr.opens[0][0] <= frozen + 50 * H
    assert tr.fired["w1"].detail["evidence"] == "pattern"


def lab_kw(ts: int) -> float:
    return 20.0 if 8 <= local(ts).hour < 22 else 3.0


def _power(rate, start: int, end: int, scale: float = 1000.0) -> list[tuple[int, float]]:
    return [(ts, rate(ts) * scale) for ts in range(start, end, 900)]


def test_stuck_reads_power_zero_as_rest_even_when_the_meter_usually_works() -> None:
    """A lab switched off for a day: register still and power zero is rest, not a fault."""
    off = (t(16, 6), t(17, 8))
    rate = lambda ts: 0.0 if off[0] <= ts < off[1] else lab_kw(ts)  # noqa: E731
    pts = {"e1": registers(rate, t(0), t(21))}
    tr = run("data.stuck", campus(ELEC), pts, t(14), t(21), rates={"e1": _power(rate, t(0), t(21))})
    assert tr.opens == []


def test_stuck_fires_when_power_flows_but_the_register_is_frozen() -> None:
    frozen = t(16, 23)  # at night, when this lab usually draws little: the pattern alone would wait
    pts = {"e1": [(ts, v if ts < frozen else 4242.0) for ts, v in registers(lab_kw, t(0), t(21), r0=4000.0)]}
    pts["e1"] = [(ts, min(v, 4242.0)) for ts, v in pts["e1"]]
    tr = run("data.stuck", campus(ELEC), pts, t(14), t(21), rates={"e1": _power(lab_kw, t(0), t(21))})
    assert tr.opens, "a frozen register with power flowing is stuck"
    f = tr.fired["e1"]
    assert f.detail["evidence"] == "rate" and f.evidence["max_rate"] > 0


# -- facts in messages -----------------------------------------------------------------------------------


def _message(cfg, f) -> str:
    return compose(cfg, parse_alerts(cfg), f, f.since)[1]


def test_after_hours_on_friday_evening_is_a_closing_then_a_weekend_and_waste_is_per_real_day() -> None:
    on = (t(18, 19), t(21, 8))  # Friday 19:00 of week 3 to Monday 08:00; the office closes at 18:00
    extra_kw = 10.0
    rate = noisy(9, lambda ts: office_kw(ts) + (extra_kw if on[0] <= ts < on[1] else 0.0), 0.01)
    cfg = campus(ELEC)
    tr = run("after_hours.usage", cfg, {"e1": registers(rate, t(0), t(23))}, t(14), t(23))
    f = tr.fired["e1"]
    assert f.since == on[0]  # truth: the lights went on at 19:00, after closing
    assert f.detail["empty_because"] == ["after closing", "weekend"]
    assert abs(f.waste_per_day - extra_kw * 24) <= 0.05 * extra_kw * 24  # 5 %: noise of the usual load
    msg = _message(cfg, f)
    assert "since Fri 24 Oct 2025 19:00" in msg and "(after closing, then weekend)" in msg, msg
    assert "(weekend)" not in msg


def test_four_hours_past_closing_are_four_hours_of_waste_not_a_day() -> None:
    """A canteen-style overrun: 25 kW for 4 hours after closing on a Tuesday."""
    on = (t(15, 18), t(15, 22))
    extra_kw = 25.0
    rate = noisy(21, lambda ts: office_kw(ts) + (extra_kw if on[0] <= ts < on[1] else 0.0), 0.01)
    cfg = campus(ELEC)
    tr = run("after_hours.usage", cfg, {"e1": registers(rate, t(0), t(17))}, t(14), t(17))
    f = tr.fired["e1"]
    truth = extra_kw * 4
    assert abs(f.waste_per_day - truth) <= 0.05 * truth, f.waste_per_day
    assert f.detail["stretch_hours"] == 4 and f.since == on[0]
    assert "About 100 kWh" in _message(cfg, f)


def test_spike_waste_is_the_excess_of_its_own_hours() -> None:
    spike = (t(23, 10), t(23, 14))  # 4 hours at 2.2x of 50 kW on a Wednesday
    rate = lambda ts: office_kw(ts) * (2.2 if spike[0] <= ts < spike[1] else 1.0)  # noqa: E731
    tr = run("spike.baseline", campus(ELEC), {"e1": registers(rate, t(0), t(25))}, t(21), t(25))
    f = tr.fired["e1"]
    truth = 1.2 * 50.0 * 4
    assert abs(f.waste_per_day - truth) <= 0.02 * truth, f.waste_per_day
    assert f.since == spike[0]


def test_baseload_creep_compares_working_days_with_working_days() -> None:
    """A holiday week in the history (resting base load) and a make-up Saturday are not a creep."""
    hol = (START_DAY + timedelta(days=14), START_DAY + timedelta(days=20))
    makeup = START_DAY + timedelta(days=26)

    def rate(ts: int) -> float:
        lt = local(ts)
        resting = hol[0] <= lt.date() <= hol[1] or (lt.weekday() >= 5 and lt.date() != makeup)
        if resting:
            return 4.0
        return 50.0 if 8 <= lt.hour < 18 else 8.0  # servers and fridges on working days only

    cal = {
        "calendar": {
            "holidays": [{"name": "national day", "start": hol[0].isoformat(), "end": hol[1].isoformat()}],
            "workdays": [makeup.isoformat()],
        }
    }
    cfg = campus(ELEC, accounting=cal)
    tr = run(
        "after_hours.baseload_creep", cfg, {"e1": registers(noisy(31, rate, 0.02), t(0), t(42))}, t(14), t(42)
    )
    assert tr.opens == [], [local(x) for x, _ in tr.opens]
