"""One pass of the window rules over the campus at an evaluation time.

Which rule looks at which meter: water rules at water meters, after-hours rules at electricity
meters that are not dorm rooms (rooms have their own instant rules), spikes at every non-room
meter, data-health rules at every meter, quota rules at every quota target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from api.alerts.config import AlertsConfig
from api.alerts.rules import RULES, WINDOW_RULES
from api.alerts.rules.base import Finding, Params, RuleSpec, Subject
from api.alerts.rules.context import WindowContext
from api.alerts.rules.quota import quota_subject
from campusmon.config import Meter
from campusmon.quantities import MeterKind

StateFor = Callable[[str, Subject], dict]


def applies(spec: RuleSpec, meter: Meter) -> bool:
    if spec.applies_to == "water":
        return meter.kind is MeterKind.WATER
    if spec.applies_to == "electricity":
        return meter.kind is MeterKind.ELECTRICITY and meter.room is None
    if spec.id == "spike.baseline":
        return meter.room is None
    return spec.applies_to == "any"


def _finish(f: Finding, spec: RuleSpec, p: Params) -> Finding:
    f.severity = f.severity or p.severity or spec.severity
    f.clear_after = p.clear_after
    return f


def window_findings(
    acfg: AlertsConfig, ctx: WindowContext, state_for: StateFor, rules: Iterable[str] | None = None
) -> list[Finding]:
    wanted = set(rules) if rules is not None else None
    specs = [s for s in WINDOW_RULES if wanted is None or s.id in wanted]
    out: list[Finding] = []
    for series in ctx.series.values():
        m = series.meter
        subject = Subject("meter", m.id, m.building)
        for spec in specs:
            if spec.applies_to == "building" or not applies(spec, m):
                continue
            p = acfg.for_meter(spec.id, m)
            if not p.enabled:
                continue
            assert spec.evaluate is not None
            f = spec.evaluate(series, ctx, p, state_for(spec.id, subject))
            if f is not None:
                out.append(_finish(f, spec, p))
    for q in ctx.quotas:
        for rid in ("quota.exceeded", "quota.forecast"):
            if wanted is not None and rid not in wanted:
                continue
            spec = RULES[rid]
            p = acfg.params(rid, q.building or None)
            if not p.enabled:
                continue
            assert spec.evaluate is not None
            subject = quota_subject(q, q.building)
            f = spec.evaluate(q, ctx, p, state_for(rid, subject), q.building, list(q.meters))
            if f is not None:
                out.append(_finish(f, spec, p))
    return out
