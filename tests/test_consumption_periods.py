"""Daily, monthly and yearly totals through InfluxDB across DST changes, year end and a leap day."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest

from api.accounting import periods, service
from api.accounting.campus import Scope
from api.accounting.settings import parse_accounting
from campusmon.influx import open_store
from firmware_sim.month import month_bounds, simulate_month, write_readings

SMALL = {
    "buildings": [{"id": "lab-1", "type": "lab", "floor_area_m2": 4000, "occupants": 60}],
    "meters": [
        {"id": "e-lab-1", "building": "lab-1", "kind": "electricity", "category": "01000"},
        {"id": "w-lab-1", "building": "lab-1", "kind": "water", "category": "02000"},
    ],
}


def midnights(first: date, days: int, tz: ZoneInfo) -> list[int]:
    return [periods.local_midnight(first + timedelta(days=k), tz) for k in range(days + 1)]


def written(make_config, influxdb, month: str, tz: str, margin_days: int = 1, seed: int = 3):
    cfg = make_config(influx=influxdb, data={**SMALL, "site": {"timezone": tz}})
    start, end = month_bounds(month, cfg)
    first = periods.local_date(start - margin_days * 86400, cfg.site.tz)
    marks = midnights(first, (end - start) // 86400 + 2 * margin_days, cfg.site.tz)
    last_reading = end + margin_days * 86400 - 900
    sim = simulate_month(cfg, month, seed=seed, margin_s=margin_days * 86400, marks=[*marks, last_reading])
    store = open_store(cfg)
    store.ensure_database()
    write_readings(store, sim.readings)
    return cfg, store, sim


def daily(cfg, store, start: int, end: int, kind: str = "electricity") -> list[dict]:
    settings = parse_accounting(cfg)
    # "now" is after the simulated data, which may lie in the future.
    out = service.consumption_series(
        store, cfg, settings, Scope("building", "lab-1"), "day", start, end, now=end
    )
    return next(s for s in out["series"] if s["kind"] == kind)["points"]


@pytest.mark.parametrize(
    ("month", "odd_day", "hours"), [("2026-03", "2026-03-29", 23), ("2026-10", "2026-10-25", 25)]
)
def test_dst_daily_totals_are_true_and_sum_to_the_month(make_config, influxdb, month, odd_day, hours):
    cfg, store, sim = written(make_config, influxdb, month, "Europe/Berlin")
    start, end = month_bounds(month, cfg)
    days = daily(cfg, store, start, end)
    assert len(days) == 31
    assert {d["label"]: d["hours"] for d in days}[odd_day] == hours
    tz = cfg.site.tz
    for d in days:
        t0 = periods.parse_local(d["label"], tz)
        t1 = periods.ceil(t0 + 1, "day", tz)
        assert d["value"] == pytest.approx(sim.true_between("e-lab-1", t0, t1), rel=1e-4), d["label"]
    settings = parse_accounting(cfg)
    monthly = service.consumption_series(
        store, cfg, settings, Scope("building", "lab-1"), "month", start, end
    )
    monthly = monthly["series"][0]["points"]
    assert len(monthly) == 1
    assert sum(d["value"] for d in days) == pytest.approx(monthly[0]["value"], rel=1e-9)
    assert monthly[0]["value"] == pytest.approx(sim.truth["e-lab-1"], rel=1e-4)
    # Hours on the odd day: 23 or 25 buckets that add up to the day.
    odd = periods.parse_local(odd_day, tz)
    odd_end = periods.ceil(odd + 1, "day", tz)
    hourly = service.consumption_series(store, cfg, settings, Scope("meter", "e-lab-1"), "hour", odd, odd_end)
    hourly = hourly["series"][0]["points"]
    assert len(hourly) == hours
    assert sum(h["value"] for h in hourly) == pytest.approx(
        {d["label"]: d["value"] for d in days}[odd_day], rel=1e-9
    )


def test_year_end(make_config, influxdb):
    cfg, store, sim = written(make_config, influxdb, "2026-12", "Asia/Shanghai", margin_days=3)
    tz = cfg.site.tz
    dec31, jan1, jan3 = (
        periods.local_midnight(d, tz) for d in (date(2026, 12, 31), date(2027, 1, 1), date(2027, 1, 3))
    )
    days = daily(cfg, store, dec31, jan3)
    assert [d["label"] for d in days] == ["2026-12-31", "2027-01-01", "2027-01-02"]
    assert days[0]["value"] == pytest.approx(sim.true_between("e-lab-1", dec31, jan1), rel=1e-4)
    assert days[1]["value"] == pytest.approx(sim.true_between("e-lab-1", jan1, jan1 + 86400), rel=1e-4)
    years = service.consumption_series(store, cfg, parse_accounting(cfg), Scope("meter", "e-lab-1"), "year",
                                       dec31, jan3)["series"][0]["points"]  # fmt: skip
    assert [y["label"] for y in years] == ["2026", "2027"]
    # Readings run from 28 November to 3 January 23:45: each year holds its part of them.
    nov28 = periods.local_midnight(date(2026, 11, 28), tz)
    last = periods.local_midnight(date(2027, 1, 4), tz) - 900
    assert years[0]["value"] == pytest.approx(sim.true_between("e-lab-1", nov28, jan1), rel=1e-4)
    assert years[1]["value"] == pytest.approx(sim.true_between("e-lab-1", jan1, last), rel=1e-4)
    assert years[0]["hours"] == 365 * 24


def test_leap_day(make_config, influxdb):
    cfg, store, sim = written(make_config, influxdb, "2028-02", "Asia/Shanghai")
    start, end = month_bounds("2028-02", cfg)
    days = daily(cfg, store, start, end, kind="water")
    assert len(days) == 29 and days[-1]["label"] == "2028-02-29"
    leap = periods.local_midnight(date(2028, 2, 29), cfg.site.tz)
    # Water registers show whole litres: a day is exact to two register steps.
    assert days[-1]["value"] == pytest.approx(sim.true_between("w-lab-1", leap, end), abs=0.002)
    assert sum(d["value"] for d in days) == pytest.approx(sim.truth["w-lab-1"], rel=1e-4)
    assert [d["completeness"] for d in days] == [1.0] * 29
