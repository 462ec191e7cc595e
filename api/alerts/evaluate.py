"""One pass of the window rules over the campus at an evaluation time.

Which rule looks at which meter: water rules (leaks and ``after_hours.water``) at water meters, the
electricity after-hours rules at electricity meters that are not dorm rooms (rooms have their own
instant rules), spikes at every non-room
meter, data-health rules at every meter, quota rules at every quota target, and the commissioning
check (``data.never_reported``) once for the whole campus, and the gateway check
(``data.gateway_offline``) once per gateway named by the meters' ``gateway:``. While every meter of a
gateway is silent together, their own ``data.offline`` findings are folded into the gateway's: they
report OK (an open one clears), so one outage is one alert. The gateway's own last status (its
retained status or last will, ``ctx.gateway_status``) is read by the caller, not by the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from api.alerts.config import AlertsConfig
from api.alerts.engine import HOURLY_RULES, RuleCache, is_miss
from api.alerts.rules import RULES, WINDOW_RULES
from api.alerts.rules.base import Finding, Level, Params, RuleSpec, Subject
from api.alerts.rules.context import WindowContext
from api.alerts.rules.health import CAMPUS, GatewayOfflineParams, gateway_explains
from api.alerts.rules.quota import quota_subject
from api.alerts.series import MeterSeries
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
    acfg: AlertsConfig,
    ctx: WindowContext,
    state_for: StateFor,
    rules: Iterable[str] | None = None,
    cache: RuleCache | None = None,
) -> list[Finding]:
    """Every enabled window rule's verdict at ``ctx.now``.

    With a ``cache`` (the incremental engine), an hour-resolution rule whose inputs are unchanged since
    its last verdict (same ``upto``, same data versions, same saved state) is not run again: its last
    verdict is reused with the time of this pass, which is what running it would give.
    """
    wanted = set(rules) if rules is not None else None
    specs = [s for s in WINDOW_RULES if wanted is None or s.id in wanted]
    out: list[Finding] = []
    for series in ctx.series.values():
        m = series.meter
        subject = Subject("meter", m.id, m.building)
        if cache is not None and ctx.upto > series.judged:
            series.judged = ctx.upto
        for spec in specs:
            if spec.applies_to in ("building", "campus", "gateway") or not applies(spec, m):
                continue
            p = acfg.for_meter(spec.id, m)
            if not p.enabled:
                continue
            assert spec.evaluate is not None
            state = state_for(spec.id, subject)
            if cache is None or spec.id not in HOURLY_RULES:
                f = spec.evaluate(series, ctx, p, state)
                if f is not None:
                    out.append(_finish(f, spec, p))
                continue
            version = _version(spec.id, series, ctx)
            hit = cache.get(spec.id, m.id, ctx.upto, version, state)
            if is_miss(hit):
                f = spec.evaluate(series, ctx, p, state)
                if f is not None:
                    _finish(f, spec, p)
                cache.put(spec.id, m.id, ctx.upto, version, state, f)
            else:
                f = hit  # type: ignore[assignment]
                if f is not None:
                    f.ts = ctx.now
            if f is not None:
                out.append(f)
    for spec in specs:
        if spec.applies_to != "campus":
            continue
        p = acfg.params(spec.id)
        if not p.enabled:
            continue
        assert spec.evaluate is not None
        f = spec.evaluate(list(ctx.series.values()), ctx, p, state_for(spec.id, CAMPUS))
        if f is not None:
            out.append(_finish(f, spec, p))
    if wanted is None or "data.gateway_offline" in wanted:
        _gateways(acfg, ctx, state_for, out)
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
            state = state_for(rid, subject)
            if cache is None:
                f = spec.evaluate(q, ctx, p, state, q.building, list(q.meters))
                if f is not None:
                    out.append(_finish(f, spec, p))
                continue
            version = (q, tuple(ctx.series[x].version for x in q.meters if x in ctx.series))
            hit = cache.get(rid, q, ctx.upto, version, state)
            if is_miss(hit):
                f = spec.evaluate(q, ctx, p, state, q.building, list(q.meters))
                if f is not None:
                    _finish(f, spec, p)
                cache.put(rid, q, ctx.upto, version, state, f)
            else:
                f = hit  # type: ignore[assignment]
                if f is not None:
                    f.ts = ctx.now
            if f is not None:
                out.append(f)
    return out


def _version(rule: str, series: MeterSeries, ctx: WindowContext) -> object:
    """What an hour-resolution verdict on this meter was judged on besides ``upto`` and state."""
    if rule == "leak.balance":
        kids = ctx.children.get(series.meter.id, ())
        return (series.version, *(ctx.series[k].version for k in kids if k in ctx.series))
    return series.version


def _gateways(
    acfg: AlertsConfig,
    ctx: WindowContext,
    state_for: StateFor,
    out: list[Finding],
) -> None:
    """One verdict per gateway; per-meter offline findings it explains are folded into it."""
    members: dict[str, list[MeterSeries]] = {}
    for series in ctx.series.values():
        if series.meter.gateway is not None:
            members.setdefault(series.meter.gateway, []).append(series)
    if not members:
        return
    spec = RULES["data.gateway_offline"]
    folded: dict[str, str] = {}
    offline = {f.meter for f in out if f.rule == "data.offline" and f.level is not Level.OK}
    for gw, ms in sorted(members.items()):
        building = ms[0].meter.building if all(x.meter.building == ms[0].meter.building for x in ms) else None
        p = acfg.params(spec.id, building)
        if not p.enabled:
            continue
        assert isinstance(p, GatewayOfflineParams)
        for x in ms:
            if x.meter.id in offline and gateway_explains(x, ms, ctx, p):
                folded[x.meter.id] = gw
        subject = Subject("gateway", gw, building or "")
        assert spec.evaluate is not None
        f = spec.evaluate(gw, ms, ctx, p, state_for(spec.id, subject))
        if f is not None:
            out.append(_finish(f, spec, p))
    if not folded:
        return
    for f in out:
        if f.rule == "data.offline" and f.meter in folded and f.level is not Level.OK:
            f.level = Level.OK
            f.since = None
            f.detail = {**f.detail, "folded_into": folded[f.meter]}
