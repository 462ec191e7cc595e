"""The rule registry: stable ids (used in the API, the config and the docs) mapped to their rules."""

from __future__ import annotations

from api.alerts.rules import electricity, health, instant, quota, water
from api.alerts.rules.base import Finding, Level, Params, RuleSpec, Severity, Subject

_S = Severity
RULES: dict[str, RuleSpec] = {
    r.id: r
    for r in (
        RuleSpec(
            "leak.night_flow",
            "window",
            "Water flowing at night",
            water.NightFlowParams,
            _S.MAJOR,
            "water",
            "MNF 02:00-05:00 (Bentley WaterSight); 7-night 20th-percentile baseline (UKWIR 99/WM/08/21)",
            "Walk the building at night: running toilets and urinals, dripping taps, cistern overflows, "
            "irrigation or cooling make-up left on; then check the pipework for a burst.",
            water.night_flow,
            frozen=("baseline",),
        ),
        RuleSpec(
            "leak.continuous_flow",
            "window",
            "Water never stops flowing",
            water.ContinuousFlowParams,
            _S.MAJOR,
            "water",
            "no hour under 1 US gal (3.8 L) in 24 h (Badger Meter AquaCUE)",
            "Look for a fixture that never shuts off: a running toilet, a stuck float valve, a tap left open; "
            "read the meter dial with everything closed to confirm.",
            water.continuous_flow,
            frozen=("resting",),
        ),
        RuleSpec(
            "leak.balance",
            "window",
            "Main water meter does not add up",
            water.BalanceParams,
            _S.MINOR,
            "water",
            "leak rate <= 4 % of supply (节水型单位建设标准); main minus sub-meters vs its usual share",
            "Water is lost between the main meter and the sub-meters: check the buried and riser pipes, "
            "unmetered branches and the sub-meters themselves.",
            water.balance,
            frozen=("baseline",),
        ),
        RuleSpec(
            "after_hours.usage",
            "window",
            "Electricity used in an empty building",
            electricity.AfterHoursParams,
            _S.MINOR,
            "electricity",
            "out-of-hours use vs the building's own empty-hour profile (Energy Sparks; docs/references.md#after-hours)",
            "Check lights, air conditioning, ventilation and equipment left on after closing; "
            "check timers and the BMS schedule.",
            electricity.after_hours,
            frozen=("since",),
        ),
        RuleSpec(
            "after_hours.water",
            "window",
            "Water used in a closed building",
            water.AfterHoursWaterParams,
            _S.MINOR,
            "water",
            "empty-hour use vs the building's own empty hours, closed-hours base load on a first closed day "
            "(跑冒滴漏: canteen water running until 3 a.m.; project choice of ratio)",
            "Walk the building after closing: taps, hoses and spray guns in kitchens and washrooms, "
            "cleaning machines, cistern fill valves; check that the last person out shuts the water off.",
            water.after_hours_water,
            frozen=("since",),
        ),
        RuleSpec(
            "after_hours.baseload_creep",
            "window",
            "Base load is creeping up",
            electricity.BaseloadParams,
            _S.MINOR,
            "electricity",
            "7-day mean base load > 1.15 x long-term (Energy Sparks MAXBASELOADCHANGE)",
            "Something new runs day and night: servers, fridges, heaters, pumps or lighting on a broken timer.",
            electricity.baseload_creep,
            frozen=("long_term",),
        ),
        RuleSpec(
            "quota.exceeded",
            "window",
            "Quota exceeded",
            quota.QuotaExceededParams,
            _S.MAJOR,
            "building",
            "energy-saving quota from the accounting targets",
            "Find the largest consumers in the building this period and what changed against last period.",
            quota.quota_exceeded,
        ),
        RuleSpec(
            "quota.forecast",
            "window",
            "Quota will be exceeded at this pace",
            quota.QuotaForecastParams,
            _S.WARNING,
            "building",
            "projection with the last 7 days' hourly profile",
            "Act now: at the current pace the period will end over its quota. Look for waste alerts in the "
            "building and for schedules that can be tightened.",
            quota.quota_forecast,
        ),
        RuleSpec(
            "spike.baseline",
            "window",
            "Consumption far above the usual week",
            electricity.SpikeParams,
            _S.MINOR,
            "any",
            "same weekday and hour of the last 4 weeks (time-of-week baseline, docs/references.md#project-defaults)",
            "Check what is running that does not usually run at this hour: an event, a fault, plant on manual.",
            electricity.spike,
        ),
        RuleSpec(
            "dorm.high_power",
            "instant",
            "High-power appliance in a dorm room",
            instant.HighPowerParams,
            _S.CRITICAL,
            "room",
            "step >= 800 W lasting >= 30 s, PF >= 0.95 (docs/references.md#dorm-loads)",
            "Visit the room: a kettle, heater, hair dryer, immersion heater or induction cooker is likely; "
            "these are a fire risk in dorms.",
            instant.high_power,
        ),
        RuleSpec(
            "dorm.over_cap",
            "instant",
            "Room over its power cap",
            instant.OverCapParams,
            _S.MAJOR,
            "room",
            "room caps of 800-1500 W (docs/references.md#dorm-loads)",
            "Check the room's appliances and its breaker; the cap protects the wiring.",
            instant.over_cap,
        ),
        RuleSpec(
            "overload.current",
            "instant",
            "Circuit overloaded",
            instant.OverloadParams,
            _S.CRITICAL,
            "electricity",
            "> 105 % of rated current = level-1; 90-100 % = warning (docs/references.md#overload)",
            "Reduce the load on the circuit and have an electrician check the breaker, cable and connections.",
            instant.overload,
        ),
        RuleSpec(
            "data.offline",
            "window",
            "Meter silent",
            health.OfflineParams,
            _S.MAJOR,
            "any",
            "N missed readings (N = 4, project choice; docs/references.md#project-defaults)",
            "Check the meter's power and bus wiring, the gateway and its network link.",
            health.offline,
        ),
        RuleSpec(
            "data.gateway_offline",
            "window",
            "Gateway silent",
            health.GatewayOfflineParams,
            _S.MAJOR,
            "gateway",
            "every meter of one gateway silent together for N missed readings (N = 4, project choice)",
            "Check the gateway: its power supply, network link and SIM or Ethernet; the meters behind it "
            "are probably fine. Its own offline alerts are folded into this one.",
            health.gateway_offline,
        ),
        RuleSpec(
            "data.never_reported",
            "window",
            "Meters configured but never reported",
            health.NeverReportedParams,
            _S.WARNING,
            "campus",
            "commissioning check: a configured meter with no reading 24 h after it was expected (project choice)",
            "Check that each listed meter is installed, wired to its gateway and addressed as in the config, "
            "or remove it from the config.",
            health.never_reported,
        ),
        RuleSpec(
            "data.completeness",
            "window",
            "Too few readings in a day",
            health.CompletenessParams,
            _S.WARNING,
            "any",
            ">= 90 % of expected points per day (重点用能单位上传数据质量要求)",
            "Check for bus errors and timeouts on the gateway, and its upload backlog.",
            health.completeness,
        ),
        RuleSpec(
            "data.stuck",
            "window",
            "Meter register frozen",
            health.StuckParams,
            _S.MINOR,
            "any",
            "register unchanged while readings keep arriving (docs/references.md#garbage-values)",
            "The meter reports but does not count: check the meter itself, its CT/pulse input and the decoder.",
            health.stuck,
        ),
        RuleSpec(
            "data.counter_backwards",
            "window",
            "Meter counter went backwards",
            health.BackwardsParams,
            _S.WARNING,
            "any",
            "cumulative registers only rise; drops that are not a rollover (docs/references.md#counter-resets)",
            "Was the meter replaced or reset? Record the replacement so totals stay right; otherwise check the "
            "decoding of its register.",
            health.counter_backwards,
        ),
    )
}


def rule_matches(rule: str, patterns: list[str]) -> bool:
    """An empty list matches every rule; ``leak.*`` matches a family."""
    return not patterns or any(rule == p or (p.endswith("*") and rule.startswith(p[:-1])) for p in patterns)


def known_pattern(pattern: str) -> bool:
    return any(rule_matches(r, [pattern]) for r in RULES)


WINDOW_RULES = tuple(r for r in RULES.values() if r.kind == "window")
INSTANT_RULES = tuple(r for r in RULES.values() if r.kind == "instant")

__all__ = [
    "RULES",
    "WINDOW_RULES",
    "INSTANT_RULES",
    "Finding",
    "Level",
    "Params",
    "RuleSpec",
    "Severity",
    "Subject",
]
