"""Tariffs and grid emission factors as data: time-of-use electricity prices, water prices, CO2 factors.

Time-of-use tariffs change by province and by year (docs/references.md#time-of-use), so a tariff is
a list of versions with an ``effective_from`` date; each version maps every hour of every month to
exactly one period (critical peak, peak, flat, valley, deep valley) and prices each period. A
schedule that leaves an hour or a month uncovered, or covers one twice, is refused when the config
is loaded.

Emission factors are kept per region and year with their source (docs/references.md#co2-factors);
the default is the national average for 2023 data, 0.5306 kgCO2/kWh.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TouPeriod = Literal["critical_peak", "peak", "flat", "valley", "deep_valley"]

_HOUR_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def window_hours(text: str) -> list[int]:
    """The hours (0-23) of an ``HH:00-HH:00`` window; ``22:00-06:00`` wraps past midnight."""
    m = _HOUR_WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"time-of-use window {text!r} is not HH:MM-HH:MM (for example 08:00-11:00)")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if m1 or m2:
        raise ValueError(f"time-of-use window {text!r} must start and end on whole hours")
    if h1 > 23 or h2 > 24 or h1 == h2 % 24:
        raise ValueError(f"time-of-use window {text!r} is empty or has an impossible hour")
    return list(range(h1, h2)) if h2 > h1 else list(range(h1, 24)) + list(range(0, h2))


def _ranges(hours: list[int]) -> str:
    """``[13, 14, 20]`` -> ``13:00-15:00, 20:00-21:00`` for error messages."""
    out, run = [], []
    for h in sorted(hours):
        if run and h != run[-1] + 1:
            out.append(run)
            run = []
        run.append(h)
    if run:
        out.append(run)
    return ", ".join(f"{r[0]:02d}:00-{r[-1] + 1:02d}:00" for r in out)


class Schedule(_Model):
    """Which period each hour of the day belongs to, for some months."""

    months: list[int] = Field(min_length=1)
    periods: dict[TouPeriod, list[str]]

    @field_validator("months")
    @classmethod
    def _months(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if not 1 <= m <= 12]
        if bad:
            raise ValueError(f"month(s) {bad} are not 1..12")
        if len(set(v)) != len(v):
            raise ValueError("a month is listed twice")
        return v

    @model_validator(mode="after")
    def _covers_day(self) -> Schedule:
        owner: dict[int, str] = {}
        for period, windows in self.periods.items():
            for w in windows:
                for h in window_hours(w):
                    if h in owner:
                        raise ValueError(
                            f"hour {h:02d}:00-{h + 1:02d}:00 is both {owner[h]} and {period} (overlap)"
                        )
                    owner[h] = period
        missing = [h for h in range(24) if h not in owner]
        if missing:
            raise ValueError(f"hours {_ranges(missing)} have no period (gap); every hour needs exactly one")
        return self

    def hour_map(self) -> list[str]:
        owner = [""] * 24
        for period, windows in self.periods.items():
            for w in windows:
                for h in window_hours(w):
                    owner[h] = period
        return owner


class ElectricityTariff(_Model):
    """One version of a time-of-use tariff, in force from ``effective_from`` until the next version."""

    effective_from: date
    name: str = ""
    prices: dict[TouPeriod, float]
    schedules: list[Schedule] = Field(min_length=1)

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: p for k, p in v.items() if p < 0}
        if bad:
            raise ValueError(f"negative price(s): {bad}")
        return v

    @model_validator(mode="after")
    def _covers_year(self) -> ElectricityTariff:
        seen: dict[int, int] = {}
        for i, s in enumerate(self.schedules):
            for m in s.months:
                if m in seen:
                    raise ValueError(f"month {m} is in schedules[{seen[m]}] and schedules[{i}] (overlap)")
                seen[m] = i
            unpriced = sorted(set(s.periods) - set(self.prices))
            if unpriced:
                raise ValueError(f"schedules[{i}] uses period(s) {', '.join(unpriced)} that have no price")
        missing = [m for m in range(1, 13) if m not in seen]
        if missing:
            raise ValueError(
                f"month(s) {', '.join(map(str, missing))} have no schedule (gap); every month needs one"
            )
        return self

    def table(self) -> list[list[tuple[str, float]]]:
        """``[month-1][hour] -> (period, price)``."""
        out: list[list[tuple[str, float]]] = [[] for _ in range(12)]
        for s in self.schedules:
            hm = s.hour_map()
            for m in s.months:
                out[m - 1] = [(p, self.prices[p]) for p in hm]  # type: ignore[index]
        return out


class WaterPrice(_Model):
    effective_from: date
    price: float = Field(ge=0, description="per m3, all charges included")


class Co2Factor(_Model):
    region: str
    year: int
    kg_per_kwh: float = Field(gt=0)
    source: str


_S2022 = "MEE/NBS 2022 electricity CO2 factors, 新京报 via https://daydaynews.cc/zh-hant/finance/3899452.html"
_S2023 = "MEE/NBS 关于发布2023年电力二氧化碳排放因子的公告 (2023 data), https://www.mee.gov.cn/"
_S2021 = "MEE/NBS 公告2024年第12号 (2021 data) via http://www.hfyfsb.com/industry/elec/3596.html"
BUILTIN_CO2: tuple[Co2Factor, ...] = tuple(
    Co2Factor(region=r, year=y, kg_per_kwh=f, source=s)
    for r, y, f, s in [
        ("national", 2021, 0.5568, _S2021),
        ("national", 2022, 0.5366, _S2022),
        ("national", 2023, 0.5306, _S2023),
        ("north", 2022, 0.6776, _S2022),
        ("northeast", 2022, 0.5564, _S2022),
        ("east", 2022, 0.5617, _S2022),
        ("central", 2022, 0.5395, _S2022),
        ("northwest", 2022, 0.5857, _S2022),
        ("south", 2022, 0.3869, _S2022),
        ("southwest", 2022, 0.2268, _S2022),
        ("north", 2023, 0.6361, _S2023),
        ("northeast", 2023, 0.5122, _S2023),
        ("east", 2023, 0.5500, _S2023),
        ("central", 2023, 0.5271, _S2023),
        ("northwest", 2023, 0.5543, _S2023),
    ]
)


class Tariffs(_Model):
    """All prices and factors of a campus, validated as a whole."""

    currency: str = "CNY"
    electricity: list[ElectricityTariff] = []
    water: list[WaterPrice] = []
    co2_region: str = "national"
    co2_factors: list[Co2Factor] = []  # added to (and overriding) the built-in table

    @model_validator(mode="after")
    def _versions(self) -> Tariffs:
        for name, versions in (("electricity", self.electricity), ("water", self.water)):
            days = [v.effective_from for v in versions]
            if len(set(days)) != len(days):
                raise ValueError(f"{name}: two versions share an effective_from date")
        if not any(f.region == self.co2_region for f in self.all_co2()):
            regions = sorted({f.region for f in self.all_co2()})
            raise ValueError(
                f"co2_region {self.co2_region!r} has no emission factor; known: {', '.join(regions)}"
            )
        return self

    def all_co2(self) -> list[Co2Factor]:
        table = {(f.region, f.year): f for f in BUILTIN_CO2}
        table.update({(f.region, f.year): f for f in self.co2_factors})
        return sorted(table.values(), key=lambda f: (f.region, f.year))

    def co2_factor(self, year: int) -> Co2Factor:
        """The factor for a consumption year: that year's, else the latest earlier, else the earliest later.

        Factors are published two to three years late, so current consumption uses the latest published year.
        """
        own = [f for f in self.all_co2() if f.region == self.co2_region]
        earlier = [f for f in own if f.year <= year]
        return earlier[-1] if earlier else own[0]

    def electricity_prices(self, hour_starts: list[int], tz: ZoneInfo) -> list[float | None]:
        """Price of each local hour (None before the first tariff version)."""
        versions = sorted(self.electricity, key=lambda v: v.effective_from)
        if not versions:
            return [None] * len(hour_starts)
        days = [v.effective_from for v in versions]
        tables = [v.table() for v in versions]
        out: list[float | None] = []
        for t in hour_starts:
            local = datetime.fromtimestamp(t, tz)
            i = bisect_right(days, local.date()) - 1
            out.append(tables[i][local.month - 1][local.hour][1] if i >= 0 else None)
        return out

    def period_at(self, when: datetime) -> tuple[str, float] | None:
        """The time-of-use period and price in force at a local time."""
        versions = sorted(self.electricity, key=lambda v: v.effective_from)
        i = bisect_right([v.effective_from for v in versions], when.date()) - 1
        return versions[i].table()[when.month - 1][when.hour] if i >= 0 else None

    def water_price(self, d: date) -> float | None:
        versions = sorted(self.water, key=lambda v: v.effective_from)
        i = bisect_right([v.effective_from for v in versions], d) - 1
        return versions[i].price if i >= 0 else None
