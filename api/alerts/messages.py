"""Plain words for every alert: what is wrong, where, since when, how much is wasted, what to check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from api.accounting.periods import buckets, hour_starts
from api.accounting.settings import accounting_settings
from api.alerts.config import AlertsConfig
from api.alerts.rules import RULES
from api.alerts.rules.base import Finding
from campusmon.config import CampusConfig


@dataclass(frozen=True, slots=True)
class Cost:
    per_day: float | None
    currency: str


def price(cfg: CampusConfig, acfg: AlertsConfig, unit: str, ts: int) -> tuple[float | None, str]:
    """Price per kWh (mean over the local day, time-of-use aware) or per m3, from the accounting tariffs."""
    tariffs = accounting_settings(cfg).tariffs
    tz = cfg.site.tz
    if unit == "kWh" and tariffs.electricity:
        day = buckets(ts, ts + 1, "day", tz)[0]
        prices = [
            p for p in tariffs.electricity_prices(hour_starts(day.start, day.end, tz), tz) if p is not None
        ]
        if prices:
            return sum(prices) / len(prices), tariffs.currency
    if unit == "m3" and tariffs.water:
        p = tariffs.water_price(datetime.fromtimestamp(ts, tz).date())
        if p is not None:
            return p, tariffs.currency
    cost = acfg.settings.cost
    return (cost.electricity_per_kwh if unit == "kWh" else cost.water_per_m3), cost.currency


def cost_of(cfg: CampusConfig, acfg: AlertsConfig, f: Finding) -> Cost:
    if f.waste_per_day is None or f.waste_unit not in ("kWh", "m3"):
        return Cost(None, acfg.settings.cost.currency)
    p, currency = price(cfg, acfg, f.waste_unit, f.ts)
    return Cost(None if p is None else f.waste_per_day * p, currency)


def _local(ts: int | None, tz: ZoneInfo) -> str:
    if ts is None:
        return "an unknown time"
    return datetime.fromtimestamp(ts, tz).strftime("%a %d %b %Y %H:%M")


def _num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "?"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def what(f: Finding) -> str:
    """The rule-specific sentence: the measured fact against its yardstick."""
    d = f.detail
    r = f.rule
    if r == "leak.night_flow":
        base = d.get("baseline_m3h")
        usual = f" (usually {_num(base, 3)} m3/h)" if base is not None else ""
        return f"Lowest flow between {d.get('window', '02:00-05:00')} was {_num(f.value, 3)} m3/h{usual}."
    if r == "leak.continuous_flow":
        return f"Water has flowed every hour for {d.get('hours', 24)} h; the quietest hour still used {_num(f.value, 3)} m3."
    if r == "leak.balance":
        return (
            f"{_num(100 * d.get('unmetered_share', 0), 1)} % of the main meter's water is not seen by its "
            f"sub-meters (usually {_num(100 * d.get('usual_share', 0), 1)} %)."
        )
    if r == "after_hours.usage":
        return (
            f"The building is empty ({d.get('day_kind', '')}) but draws {_num(d.get('now_kw'))} kW; "
            f"on similar empty hours it draws {_num(d.get('usual_kw'))} kW."
        )
    if r == "after_hours.baseload_creep":
        return (
            f"Base load over the last {d.get('recent_days', 7)} days is {_num(d.get('recent_baseload_kw'))} kW "
            f"against a long-term {_num(d.get('long_term_baseload_kw'))} kW."
        )
    if r == "spike.baseline":
        return (
            f"Use is {_num(d.get('now'))} {d.get('unit', '')} against {_num(d.get('usual'))} {d.get('unit', '')} "
            f"at this hour on the same weekday of recent weeks."
        )
    if r == "quota.exceeded":
        return (
            f"{_num(d.get('used'))} {f.unit} used against a {d.get('period')} quota of "
            f"{_num(d.get('quota'))} {f.unit}{' (' + d['target'] + ')' if d.get('target') else ''}."
        )
    if r == "quota.forecast":
        return (
            f"{_num(d.get('used'))} {f.unit} used so far; at this pace the {d.get('period')} ends at "
            f"{_num(d.get('projected'))} {f.unit} against a quota of {_num(d.get('quota'))} {f.unit}."
        )
    if r == "dorm.high_power":
        return (
            f"Room power jumped by {_num(d.get('step_w'), 0)} W to {_num(f.value, 0)} W "
            f"and stayed there for {d.get('lasted_s', 0)} s."
        )
    if r == "dorm.over_cap":
        return f"Room power is {_num(f.value, 0)} W, over its cap of {_num(f.threshold, 0)} W."
    if r == "overload.current":
        return f"Current is {_num(f.value, 1)} A against a rated {_num(d.get('rated_a'), 1)} A."
    if r == "data.offline":
        silent = d.get("silent_s")
        return (
            "No reading has ever arrived."
            if d.get("last_reading") is None
            else f"No reading for {_num((silent or 0) / 3600, 1)} h (expected every {d.get('interval_s')} s)."
        )
    if r == "data.completeness":
        return f"Only {d.get('received')} of {d.get('expected')} expected readings arrived on {d.get('day')}."
    if r == "data.stuck":
        return f"The register has not changed for {d.get('unchanged_hours', _num(f.value, 0))} h while readings arrive."
    if r == "data.counter_backwards":
        return f"The register dropped from {_num(d.get('from'), 3)} to {_num(d.get('to'), 3)} ({d.get('policy')})."
    return ""


def where(cfg: CampusConfig, f: Finding) -> str:
    b = cfg.building(f.subject.building)
    bname = (b.name or b.id) if b else f.subject.building
    if f.subject.kind == "room":
        return f"room {f.subject.id}, {bname}"
    if f.subject.kind == "meter":
        return f"{bname}, meter {f.subject.id}"
    return bname or f.subject.id


def compose(cfg: CampusConfig, acfg: AlertsConfig, f: Finding, since: int | None) -> tuple[str, str, Cost]:
    """(title, message, cost) of a finding."""
    spec = RULES[f.rule]
    tz = cfg.site.tz
    cost = cost_of(cfg, acfg, f)
    title = f"{spec.title}: {where(cfg, f)}"
    parts = [f"{spec.title} at {where(cfg, f)} since {_local(since, tz)}.", what(f)]
    if f.waste_per_day is not None and f.waste_unit:
        wasted = f"About {_num(f.waste_per_day, 1)} {f.waste_unit} per day is being wasted"
        if f.rule in ("dorm.high_power", "dorm.over_cap", "overload.current"):
            wasted = f"Left on, this would use about {_num(f.waste_per_day, 1)} {f.waste_unit} per day"
        if f.rule.startswith("quota."):
            wasted = f"That is {_num(f.waste_per_day, 1)} {f.waste_unit} per day over the quota"
        if cost.per_day is not None:
            wasted += f" (about {_num(cost.per_day, 0)} {cost.currency} per day)"
        parts.append(wasted + ".")
    parts.append("Check: " + spec.check)
    return title, " ".join(p for p in parts if p), cost
