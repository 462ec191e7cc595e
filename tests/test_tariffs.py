"""Time-of-use tariffs, water prices and CO2 factors: validation at load and the money they compute."""

from __future__ import annotations

import copy
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from api.accounting import periods
from api.accounting.consumption import Curve
from api.accounting.service import Grid
from api.accounting.settings import parse_accounting
from campusmon.config import ConfigError, Meter, parse_config
from campusmon.quantities import MeterKind

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]


def load(accounting: dict[str, Any], tz: str = "Asia/Shanghai"):
    return parse_accounting(
        parse_config({"site": {"timezone": tz}, "accounting": accounting}, environ={}), "campus.yaml"
    )


def with_schedule(mutate) -> dict[str, Any]:
    acc = copy.deepcopy(EXAMPLE)
    mutate(acc["tariffs"]["electricity"][0])
    return acc


def test_the_shipped_example_loads_and_prices_each_hour():
    t = load(EXAMPLE).tariffs
    assert t.period_at(datetime(2026, 7, 15, 12, 30)) == ("critical_peak", 1.248)
    assert t.period_at(datetime(2026, 9, 15, 12, 30)) == ("peak", 1.040)
    assert t.period_at(datetime(2026, 3, 15, 23, 0)) == ("valley", 0.260)
    assert t.period_at(datetime(2026, 12, 15, 19, 0)) == ("critical_peak", 1.248)
    assert t.period_at(datetime(2025, 12, 31, 12, 0)) is None  # before the first version
    assert t.water_price(date(2026, 5, 1)) == 4.10


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: v["schedules"][0]["periods"]["peak"].append("13:00-14:00"),
         r"schedules\[0\]: hour 13:00-14:00 is both peak and critical_peak \(overlap\)"),
        (lambda v: v["schedules"][2]["periods"]["flat"].remove("11:00-18:00"),
         r"schedules\[2\]: hours 11:00-18:00 have no period \(gap\)"),
        (lambda v: v["schedules"][1]["months"].append(8),
         r"month 8 is in schedules\[0\] and schedules\[1\] \(overlap\)"),
        (lambda v: v["schedules"][3]["months"].remove(10), r"month\(s\) 10 have no schedule \(gap\)"),
        (lambda v: v["schedules"][1]["periods"]["valley"].__setitem__(0, "22:30-06:00"), "whole hours"),
        (lambda v: v["prices"].pop("critical_peak"), "critical_peak that have no price"),
        (lambda v: v["prices"].__setitem__("flat", -0.1), "negative price"),
    ],
)  # fmt: skip
def test_overlaps_gaps_and_bad_values_are_refused_at_load(mutate, message):
    with pytest.raises(
        ConfigError, match=r"^campus\.yaml: accounting\.tariffs\.electricity\[0\].*" + message
    ):
        load(with_schedule(mutate))


def test_versions_need_distinct_dates_and_a_known_co2_region():
    acc = copy.deepcopy(EXAMPLE)
    acc["tariffs"]["electricity"].append(copy.deepcopy(acc["tariffs"]["electricity"][0]))
    with pytest.raises(ConfigError, match="electricity: two versions share an effective_from date"):
        load(acc)
    acc = copy.deepcopy(EXAMPLE)
    acc["tariffs"]["co2_region"] = "mars"
    with pytest.raises(ConfigError, match="co2_region 'mars' has no emission factor; known: central, east"):
        load(acc)


def test_effective_dates_switch_prices_at_local_midnight():
    acc = copy.deepcopy(EXAMPLE)
    newer = copy.deepcopy(acc["tariffs"]["electricity"][0])
    newer["effective_from"] = "2026-07-01"
    newer["prices"] = {k: v * 2 for k, v in newer["prices"].items()}
    acc["tariffs"]["electricity"].append(newer)
    t = load(acc).tariffs
    tz = ZoneInfo("Asia/Shanghai")
    last_june = periods.local_midnight(date(2026, 7, 1), tz) - 3600
    first_july = last_june + 3600
    assert t.electricity_prices([last_june, first_july], tz) == [0.260, 0.520]


def test_co2_factor_by_region_and_year_with_its_source():
    t = load({}).tariffs
    f = t.co2_factor(2026)  # newest published data (2023) is used for current consumption
    assert (f.region, f.year, f.kg_per_kwh) == ("national", 2023, 0.5306) and "2023" in f.source
    assert t.co2_factor(2022).kg_per_kwh == 0.5366
    assert t.co2_factor(2019).year == 2021  # before the table: the earliest year
    east = load({"tariffs": {"co2_region": "east"}}).tariffs
    assert east.co2_factor(2025).kg_per_kwh == 0.5500
    own = load(
        {
            "tariffs": {
                "co2_factors": [{"region": "national", "year": 2024, "kg_per_kwh": 0.52, "source": "x"}]
            }
        }
    )
    assert own.tariffs.co2_factor(2026).kg_per_kwh == 0.52


def test_campus_region_is_the_default_co2_region():
    cfg = parse_config({"site": {"region": "northwest"}}, environ={})
    assert parse_accounting(cfg).tariffs.co2_factor(2023).kg_per_kwh == 0.5543


def test_cost_is_each_hours_consumption_at_that_hours_price():
    settings = load(EXAMPLE)
    tz = ZoneInfo("Asia/Shanghai")
    start = periods.local_midnight(date(2026, 7, 15), tz)
    day = periods.buckets(start, start + 86400, "day", tz)
    cfg = parse_config({}, environ={})
    grid = Grid.build(day, cfg, settings)
    one_kwh_per_hour = Curve(ts=[day[0].start, day[0].end], cum=[0.0, 24.0])
    meter = Meter(id="m", building="b", kind="electricity")
    hourly = grid.hourly([meter], {"m": one_kwh_per_hour})
    assert hourly == pytest.approx([1.0] * 24)
    # July: 8 valley, 6 flat, 8 peak and 2 critical-peak hours.
    expected = 8 * 0.260 + 6 * 0.650 + 8 * 1.040 + 2 * 1.248
    assert sum(settings.tariffs.electricity_prices(grid.bounds[:-1], tz)) == pytest.approx(expected)
    assert grid.cost_per_bucket(MeterKind.ELECTRICITY, hourly) == [pytest.approx(expected)]
    assert grid.cost_per_bucket(MeterKind.WATER, hourly) == [pytest.approx(24 * 4.10)]


def test_no_tariff_means_no_cost_rather_than_zero():
    settings = load({})
    tz = ZoneInfo("Asia/Shanghai")
    start = periods.local_midnight(date(2026, 7, 15), tz)
    day = periods.buckets(start, start + 86400, "day", tz)
    grid = Grid.build(day, parse_config({}, environ={}), settings)
    assert grid.cost_per_bucket(MeterKind.ELECTRICITY, [1.0] * (len(grid.bounds) - 1)) == [None]
    assert grid.cost_per_bucket(MeterKind.ELECTRICITY, [0.0] * (len(grid.bounds) - 1)) == [0.0]
