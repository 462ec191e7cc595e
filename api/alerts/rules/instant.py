"""Rules that need only the latest reading: dorm appliances, room caps and overload.

Each is a pure step ``(state, reading) -> (level, new state, facts)``; the caller keeps the state
per meter and persists it, so a step that began before a restart still counts after it.

Numbers (docs/references.md#dorm-loads, #overload, #project-defaults): "high power" usually
means > 800 W, kettles 1500-2200 W; flag a step >= 800 W (configurable 500-1500) with PF >= 0.95
lasting >= 30 s; room caps are typically 800-1500 W; current > 105 % of rated is a level-1
(critical) alarm, 90-100 % a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from api.alerts.rules.base import Level, Params, Severity


@dataclass(frozen=True, slots=True)
class Step:
    level: Level
    state: dict[str, Any]
    value: float
    threshold: float
    since: int | None = None
    severity: Severity | None = None
    excess: float = 0.0  # W (power rules) or A (current)


class HighPowerParams(Params):
    step_w: float = Field(default=800.0, gt=0, description="rise in room power that counts as an appliance")
    duration_s: int = Field(default=30, ge=0)
    min_pf: float | None = Field(
        default=0.95, ge=0, le=1, description="resistive loads only, when PF is reported"
    )
    clear_ratio: float = Field(
        default=0.5, gt=0, lt=1, description="the step is over below this share of step_w"
    )
    base_window_s: int = Field(
        default=120, ge=0, description="the level before a step: lowest reading this recent"
    )
    building_types: list[str] = Field(default_factory=lambda: ["dorm"])


def high_power(state: dict[str, Any], ts: int, power: float, pf: float | None, p: HighPowerParams) -> Step:
    """Step detection against the lowest level of the last ``base_window_s``, frozen while a step lasts.

    The lowest recent level (not just the previous reading) makes an appliance that ramps up over
    two readings count as one step.
    """
    since = state.get("since")
    active = bool(state.get("active"))
    recent = [(t, v) for t, v in state.get("recent", []) if ts - t <= p.base_window_s]
    base = state.get("base") if since is not None else (min(v for _t, v in recent) if recent else None)
    if base is None:
        return Step(Level.OK, {"recent": [(ts, power)], "ts": ts}, power, p.step_w)
    rise = power - base
    idle = {"recent": [*recent, (ts, power)], "ts": ts}
    if since is None:
        resistive = pf is None or p.min_pf is None or abs(pf) >= p.min_pf
        if rise >= p.step_w and resistive:
            new = {"base": base, "since": ts, "ts": ts, "active": p.duration_s == 0}
            if p.duration_s == 0:
                new["fired"] = ts
            level = Level.FIRING if p.duration_s == 0 else Level.HOLD
            return Step(level, new, power, base + p.step_w, ts, excess=rise)
        return Step(Level.OK, idle, power, base + p.step_w)
    if rise < p.step_w * p.clear_ratio:
        return Step(
            Level.OK, {"recent": [(ts, power)], "ts": ts}, power, base + p.step_w, excess=max(rise, 0.0)
        )
    firing = active or ts - since >= p.duration_s
    new = {"base": base, "since": since, "ts": ts, "active": firing}
    if firing:
        # When it fired: the message states how long the step had lasted then, not at the last update.
        new["fired"] = state.get("fired") or ts
    return Step(Level.FIRING if firing else Level.HOLD, new, power, base + p.step_w, since, excess=rise)


class OverCapParams(Params):
    cap_w: float = Field(default=1500.0, gt=0, description="room power cap")
    duration_s: int = Field(default=30, ge=0)
    clear_ratio: float = Field(default=0.9, gt=0, lt=1, description="clears under this share of the cap")
    building_types: list[str] = Field(default_factory=lambda: ["dorm"])


def _sustained(
    state: dict[str, Any],
    ts: int,
    over: bool,
    under: bool,
    duration_s: int,
    value: float,
    threshold: float,
    excess: float,
    severity: Severity | None = None,
) -> Step:
    """Shared ``above for duration_s`` logic with a lower clearing line."""
    since = state.get("since")
    active = bool(state.get("active"))
    if over:
        since = ts if since is None else since
        firing = active or ts - since >= duration_s
        new = {"since": since, "active": firing, "ts": ts}
        if severity is not None:
            new["severity"] = severity.value
        return Step(Level.FIRING if firing else Level.HOLD, new, value, threshold, since, severity, excess)
    if under or since is None:
        return Step(Level.OK, {"ts": ts}, value, threshold)
    # Between the lines: an excursion in progress (pending or open) goes on.
    return Step(Level.HOLD, {**state, "ts": ts}, value, threshold, since, excess=excess)


def over_cap(state: dict[str, Any], ts: int, power: float, p: OverCapParams) -> Step:
    return _sustained(
        state,
        ts,
        power > p.cap_w,
        power < p.cap_w * p.clear_ratio,
        p.duration_s,
        power,
        p.cap_w,
        power - p.cap_w,
    )


class OverloadParams(Params):
    critical_ratio: float = Field(default=1.05, gt=0, description="current over rated: level-1 alarm")
    warn_ratio: float | None = Field(
        default=0.9, gt=0, description="current over rated: warning (None = off)"
    )
    duration_s: int = Field(default=0, ge=0)
    warn_duration_s: int = Field(default=300, ge=0)
    clear_ratio: float = Field(default=0.85, gt=0)


def overload(state: dict[str, Any], ts: int, current: float, rated: float, p: OverloadParams) -> Step:
    """Critical above ``critical_ratio``, warning above ``warn_ratio``; an open alert follows the level down."""
    ratio = abs(current) / rated
    active = bool(state.get("active"))
    tier: Severity | None = None
    if ratio > p.critical_ratio:
        tier, line, hold_s = Severity.CRITICAL, p.critical_ratio, p.duration_s
    elif p.warn_ratio is not None and ratio >= p.warn_ratio:
        tier, line, hold_s = Severity.WARNING, p.warn_ratio, p.warn_duration_s
    if tier is None:
        if ratio < p.clear_ratio or not active:
            return Step(Level.OK, {"ts": ts}, current, rated * p.critical_ratio)
        return Step(Level.HOLD, {**state, "ts": ts}, current, rated * p.critical_ratio, state.get("since"))
    since = state.get("since") if (active or state.get("severity") == tier.value) else None
    since = ts if since is None else since
    firing = active or ts - since >= hold_s
    new = {"since": since, "active": firing, "severity": tier.value, "ts": ts}
    return Step(
        Level.FIRING if firing else Level.HOLD,
        new,
        current,
        rated * line,
        since,
        tier,
        abs(current) - rated * line,
    )
