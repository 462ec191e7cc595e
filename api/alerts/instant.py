"""Instant rules on every accepted batch of readings (dorm appliances, room caps, overload).

The collector calls ``InstantRules.on_readings`` (or the hook ``hooks_for(cfg)`` returns) after
a batch is stored. State per (rule, meter) lives in memory and in the ``alert_rule_state`` table,
written only when it changes in a way that matters (a step starts or ends, an alert opens or
clears), so a restart in the middle of a step loses nothing.

HTTP ingest calls the hook from a thread pool, so one lock serialises the batches: the state of a
step is read, advanced and saved by one batch at a time, and the bookkeeping of what changed is never
read while another batch adds to it. Errors are not caught here; the caller logs and counts them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import sessionmaker

from api.alerts.config import AlertsConfig, alerts_config
from api.alerts.rules import RULES
from api.alerts.rules import instant as rules
from api.alerts.rules.base import Finding, Level, Subject
from api.alerts.store import AlertStore, subject_key
from campusmon.config import CampusConfig, Meter
from campusmon.quantities import MeterKind
from campusmon.reading import Reading

log = logging.getLogger(__name__)

CURRENT_QUANTITIES = ("current_a", "current_l1_a", "current_l2_a", "current_l3_a")


def _structure(st: dict[str, Any]) -> tuple:
    """What must survive a restart: a step or an excursion in progress (the level before it included)."""
    since = st.get("since")
    return (since, st.get("active"), st.get("severity"), st.get("base") if since is not None else None)


class InstantRules:
    """Per-meter state machines for the instant rules; ``store`` is where alerts and state are kept."""

    def __init__(
        self,
        cfg: CampusConfig,
        sessions: sessionmaker | None = None,
        store: AlertStore | None = None,
        acfg: AlertsConfig | None = None,
        clock: Callable[[], float] = time.time,
        rules: Iterable[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.rules = set(rules) if rules is not None else {r for r in RULES if RULES[r].kind == "instant"}
        self.acfg = acfg or alerts_config(cfg)
        if store is None:
            if sessions is None:
                from campusmon.db import init_db

                _engine, sessions = init_db(cfg.database.url)
            store = AlertStore(cfg, self.acfg, sessions, clock=clock)
        self.store = store
        self._meters = {m.id: m for m in cfg.meters if m.kind is MeterKind.ELECTRICITY and self._watched(m)}
        self._state: dict[tuple[str, str], dict[str, Any]] = {}
        self._saved: dict[tuple[str, str], tuple] = {}
        self._lock = threading.Lock()

    def _watched(self, m: Meter) -> bool:
        return m.room is not None or m.rated_current_a is not None

    def _room_rule_on(self, rule: str, m: Meter) -> rules.HighPowerParams | rules.OverCapParams | None:
        if m.room is None or rule not in self.rules:
            return None
        p = self.acfg.for_meter(rule, m)
        b = self.cfg.building(m.building)
        if not p.enabled or b is None or b.type not in p.building_types:  # type: ignore[attr-defined]
            return None
        return p  # type: ignore[return-value]

    def _get(self, rule: str, subject: Subject) -> dict[str, Any]:
        key = (rule, subject_key(subject))
        st = self._state.get(key)
        if st is None:
            st = self.store.state_by_key(rule, key[1])
            self._state[key] = st
            self._saved[key] = _structure(st)
        return st

    def on_readings(self, readings: Iterable[Reading]) -> list[dict[str, Any]]:
        """Run the instant rules over a batch; returns the alert events it caused."""
        by_meter: dict[str, dict[int, dict[str, float]]] = {}
        for r in readings:
            if r.meter in self._meters:
                by_meter.setdefault(r.meter, {}).setdefault(r.ts, {})[r.quantity] = r.value
        if not by_meter:
            return []
        with self._lock:
            return self._on_samples(by_meter)

    __call__ = on_readings

    def _on_samples(self, by_meter: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
        findings: list[Finding] = []
        for meter_id, samples in by_meter.items():
            m = self._meters[meter_id]
            for ts in sorted(samples):
                findings.extend(self._sample(m, ts, samples[ts]))
        changed = {k: v for k, v in self._state.items() if _structure(v) != self._saved.get(k)}
        events = self.store.apply(findings)
        if changed:
            self.store.save_states(changed)
            for k, v in changed.items():
                self._saved[k] = _structure(v)
        return events

    def _sample(self, m: Meter, ts: int, q: dict[str, float]) -> list[Finding]:
        out: list[Finding] = []
        power = q.get("power_w")
        if power is not None:
            pf = q.get("power_factor")
            hp = self._room_rule_on("dorm.high_power", m)
            room = Subject("room", m.room or m.id, m.building)
            if isinstance(hp, rules.HighPowerParams):
                f = self._run(
                    "dorm.high_power", room, m, ts, hp, lambda st: rules.high_power(st, ts, power, pf, hp)
                )
                if f is not None:
                    out.append(f)
            cap = self._room_rule_on("dorm.over_cap", m)
            if isinstance(cap, rules.OverCapParams):
                f = self._run(
                    "dorm.over_cap", room, m, ts, cap, lambda st: rules.over_cap(st, ts, power, cap)
                )
                if f is not None:
                    out.append(f)
        currents = [abs(q[c]) for c in CURRENT_QUANTITIES if c in q]
        if currents and m.rated_current_a and "overload.current" in self.rules:
            p = self.acfg.for_meter("overload.current", m)
            if p.enabled and isinstance(p, rules.OverloadParams):
                rated = m.rated_current_a
                subject = Subject("meter", m.id, m.building)
                f = self._run(
                    "overload.current",
                    subject,
                    m,
                    ts,
                    p,
                    lambda st: rules.overload(st, ts, max(currents), rated, p),
                )
                if f is not None:
                    out.append(f)
        return out

    def _run(
        self,
        rule: str,
        subject: Subject,
        m: Meter,
        ts: int,
        p: Any,
        step: Callable[[dict[str, Any]], rules.Step],
    ) -> Finding | None:
        key = (rule, subject_key(subject))
        st = self._get(rule, subject)
        if st.get("ts") is not None and ts <= int(st["ts"]):
            return None  # a replayed or out-of-order reading must not restart a step
        res = step(st)
        self._state[key] = res.state
        if res.level is Level.HOLD and not st.get("active"):
            return Finding(rule, subject, Level.HOLD, ts, meter=m.id)
        spec = RULES[rule]
        unit = "A" if rule == "overload.current" else "W"
        # Power rules estimate what the excess would use in a day; overload is a safety matter, not waste.
        waste = res.excess * 24 / 1000.0 if unit == "W" and res.excess > 0 else None
        detail: dict[str, Any] = {"meter": m.id}
        if rule == "dorm.high_power":
            detail.update(
                {
                    "step_w": round(res.excess, 1),
                    "base_w": round(float(res.state.get("base") or 0), 1),
                    "lasted_s": int(res.state.get("fired") or ts) - (res.since or ts),
                }
            )
        if rule == "overload.current":
            detail.update(
                {"rated_a": m.rated_current_a, "ratio": round(abs(res.value) / (m.rated_current_a or 1), 3)}
            )
        return Finding(
            rule,
            subject,
            res.level,
            ts,
            since=res.since,
            severity=res.severity or p.severity or spec.severity,
            value=res.value,
            threshold=res.threshold,
            unit=unit,
            waste_per_day=waste,
            waste_unit="kWh" if waste is not None else "",
            meter=m.id,
            detail=detail,
            clear_after=1,
        )

    def flush(self) -> None:
        """Persist every state now (at shutdown), not only the structural changes."""
        with self._lock:
            self.store.save_states(dict(self._state))


def hooks_for(cfg: CampusConfig) -> list[InstantRules]:
    """What the collector registers as reading hooks (nothing when alerts are disabled)."""
    acfg = alerts_config(cfg)
    if not acfg.settings.enabled:
        return []
    return [InstantRules(cfg, acfg=acfg)]
