"""Plain words for every alert: what is wrong, where, since when, how much is wasted, what to check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from api.accounting.periods import buckets, hour_starts
from api.accounting.settings import accounting_settings
from api.alerts.config import AlertsConfig
from api.alerts.rules import RULES
from api.alerts.rules.base import Finding
from campusmon.config import CampusConfig
from campusmon.quantities import MeterKind


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


UNPRICED = (MeterKind.GAS, MeterKind.HEAT)


def cost_of(cfg: CampusConfig, acfg: AlertsConfig, f: Finding) -> Cost:
    meter = cfg.meter(f.meter) if f.meter else None
    if (
        f.waste_per_day is None
        or f.waste_unit not in ("kWh", "m3")
        or (meter is not None and meter.kind in UNPRICED)
    ):
        # heat kWh and gas m3 have no tariff: no invented price
        return Cost(None, acfg.settings.cost.currency)
    p, currency = price(cfg, acfg, f.waste_unit, f.ts)
    return Cost(None if p is None else f.waste_per_day * p, currency)


# Display resolution per unit: what a meter can tell apart. Evidence keeps full precision.
RESOLUTION = {
    "kWh": 0.01,
    "kW": 0.01,
    "W": 1.0,
    "A": 0.1,
    "m3": 0.001,
    "m3/h": 0.001,
    "s": 1.0,
    "h": 1.0,
    "share": 0.0001,
    "meters": 1.0,
}


def display_round(v: float | None, unit: str) -> float | None:
    """``v`` rounded to the resolution of its unit, without float noise (0.12, not 0.11999999999989086)."""
    if v is None:
        return None
    step = RESOLUTION.get(unit, 0.001)
    digits = max(0, -math.floor(math.log10(step)))
    return round(round(v / step) * step, digits)


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
    if r in ("after_hours.usage", "after_hours.water"):
        why = ", then ".join(d.get("empty_because") or [d.get("day_kind", "")])
        hours = d.get("stretch_hours")
        lasted = f" for {hours} h" if hours else ""
        unit = d.get("rate_unit", "kW")
        digits = 3 if unit == "m3/h" else 2
        verb = "used" if unit == "m3/h" else "drawn"
        usual = f"on similar empty hours it uses {_num(d.get('usual'), digits)} {unit}"
        if d.get("reference") == "closed-hours base load":
            usual = (
                f"no earlier empty day of this kind exists, so it is judged against its closed-hours base "
                f"load of {_num(d.get('usual'), digits)} {unit}"
            )
        return f"The building is empty ({why}) but has {verb} {_num(d.get('now'), digits)} {unit}{lasted}; {usual}."
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
            f"and had stayed there for {d.get('lasted_s', 0)} s when the alert was raised."
        )
    if r == "dorm.over_cap":
        return f"Room power is {_num(f.value, 0)} W, over its cap of {_num(f.threshold, 0)} W."
    if r == "overload.current":
        return f"Current is {_num(f.value, 1)} A against a rated {_num(d.get('rated_a'), 1)} A."
    if r == "data.offline":
        silent = d.get("silent_s")
        return f"No reading for {_num((silent or 0) / 3600, 1)} h (expected every {d.get('interval_s')} s)."
    if r == "data.gateway_offline":
        ms = d.get("meters") or []
        silent = d.get("silent_s")
        return (
            f"All {len(ms)} meters behind the gateway have been silent together for at least "
            f"{_num((silent or 0) / 3600, 1)} h: {', '.join(ms)}."
        )
    if r == "data.never_reported":
        ms = d.get("meters") or []
        return (
            f"{len(ms)} configured meter(s) have not sent a single reading {_num(d.get('grace_h'), 0)} h "
            f"after they were expected: {', '.join(ms)}."
        )
    if r == "data.completeness":
        return f"Only {d.get('received')} of {d.get('expected')} expected readings arrived on {d.get('day')}."
    if r == "data.stuck":
        why = ""
        if d.get("evidence") == "rate":
            why = f"; the meter's own {d.get('rate_quantity')} shows use in {d.get('moving_hours')} of those hours"
        elif d.get("evidence") == "pattern":
            why = f"; {d.get('usual_use_hours')} of those hours are ones in which this meter usually uses"
        return (
            f"The register has not changed for {d.get('unchanged_hours', _num(f.value, 0))} h "
            f"while readings arrive{why}."
        )
    if r == "data.counter_backwards":
        return f"The register dropped from {_num(d.get('from'), 3)} to {_num(d.get('to'), 3)} ({d.get('policy')})."
    return ""


def last_word(f: Finding, tz: ZoneInfo) -> str:
    """A gateway alert's quote of the gateway's own last status, when one was recorded."""
    w = f.detail.get("last_status") if f.rule == "data.gateway_offline" else None
    if not w:
        return ""
    state = str(w.get("state"))
    note = {
        "offline": " (its last will, or a clean shutdown)",
        "online": " (its retained status: it is connected, so the meters or their bus are silent)",
    }.get(state, "")
    return f"The gateway's last word, {_local(w.get('received_at'), tz)}: {state}{note}."


def where(cfg: CampusConfig, f: Finding) -> str:
    b = cfg.building(f.subject.building)
    bname = (b.name or b.id) if b else f.subject.building
    if f.subject.kind == "room":
        return f"room {f.subject.id}, {bname}"
    if f.subject.kind == "meter":
        return f"{bname}, meter {f.subject.id}"
    if f.subject.kind == "gateway":
        g = next((g for g in cfg.gateways if g.id == f.subject.id), None)
        gname = (g.name or g.id) if g else f.subject.id
        return f"{gname}, {bname}" if f.subject.building else gname
    if f.subject.kind == "campus":
        return cfg.site.name or "the campus"
    if f.subject.kind == "unit":
        u = cfg.unit(f.subject.id)
        return (u.name or u.id) if u else f.subject.id
    return bname or f.subject.id


def compose(cfg: CampusConfig, acfg: AlertsConfig, f: Finding, since: int | None) -> tuple[str, str, Cost]:
    """(title, message, cost) of a finding."""
    spec = RULES[f.rule]
    tz = cfg.site.tz
    cost = cost_of(cfg, acfg, f)
    title = f"{spec.title}: {where(cfg, f)}"
    parts = [f"{spec.title} at {where(cfg, f)} since {_local(since, tz)}.", what(f), last_word(f, tz)]
    if f.waste_per_day is not None and f.waste_unit:
        wasted = f"About {_num(f.waste_per_day, 1)} {f.waste_unit} per day is being wasted"
        if f.rule in ("after_hours.usage", "after_hours.water", "spike.baseline"):
            # The excess of the hours judged (at most the last 24), not an hour's excess times 24.
            wasted = (
                f"About {_num(f.waste_per_day, 1)} {f.waste_unit} above the usual was used in the last 24 h"
            )
        if f.rule in ("dorm.high_power", "dorm.over_cap", "overload.current"):
            wasted = f"Left on, this would use about {_num(f.waste_per_day, 1)} {f.waste_unit} per day"
        if f.rule.startswith("quota."):
            wasted = f"That is {_num(f.waste_per_day, 1)} {f.waste_unit} per day over the quota"
        if cost.per_day is not None:
            wasted += f" (about {_num(cost.per_day, 0)} {cost.currency} per day)"
        parts.append(wasted + ".")
    parts.append("Check: " + spec.check)
    return title, " ".join(p for p in parts if p), cost
