"""Backtests: every rule over any past period of stored data, without touching the live feed.

The period is replayed in steps of the scheduler's interval against an in-memory alert store, so
the lifecycle (hysteresis, one open alert per subject) is exactly the live one; instant rules
see every stored power and current reading in time order. ``commit=True`` copies the results
into the campus database, tagged ``source = backtest``, where the feed shows them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from api.alerts.config import AlertsConfig, alerts_config
from api.alerts.evaluate import window_findings
from api.alerts.instant import InstantRules
from api.alerts.models import Alert
from api.alerts.rules import RULES
from api.alerts.series import Timeline, build_campus
from api.alerts.source import fetch_instant, fetch_rates, fetch_registers, load_gateway_status, load_quotas
from api.alerts.store import AlertStore, alert_json
from api.alerts.window import calendar, context_at, expected_from, settle_s
from campusmon.config import CampusConfig
from campusmon.db import Base
from campusmon.influx import InfluxStore
from campusmon.reading import Reading


class BacktestError(ValueError):
    """A backtest that cannot run as asked (bad period, unknown rule)."""


@dataclass
class BacktestResult:
    start: int
    end: int
    rules: list[str]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    meters: int = 0
    steps: int = 0
    # Read from InfluxDB: register readings (window rules) plus power and current (instant rules).
    readings: int = 0
    seconds: float = 0.0
    committed: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by_rule: dict[str, int] = {}
        for a in self.alerts:
            by_rule[a["rule"]] = by_rule.get(a["rule"], 0) + 1
        return {
            "start": self.start,
            "end": self.end,
            "rules": self.rules,
            "alerts": len(self.alerts),
            "by_rule": by_rule,
            "meters": self.meters,
            "steps": self.steps,
            "readings": self.readings,
            "seconds": round(self.seconds, 2),
            "committed": len(self.committed),
        }


def _memory_sessions(all_tables: bool = False) -> sessionmaker:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    import api.alerts.models  # registers the tables

    if all_tables:
        import api.accounting.models  # noqa: F401 - the targets tables
    Base.metadata.create_all(
        engine,
        tables=[t for n, t in Base.metadata.tables.items() if all_tables or n.startswith("alert")],
    )
    return sessionmaker(engine, expire_on_commit=False)


def check_rules(rules: Iterable[str] | None) -> list[str]:
    if rules is None:
        return sorted(RULES)
    out = []
    for r in rules:
        matched = [x for x in RULES if x == r or (r.endswith("*") and x.startswith(r[:-1]))]
        if not matched:
            raise BacktestError(f"unknown rule {r!r}; known: {', '.join(sorted(RULES))}")
        out.extend(matched)
    return sorted(set(out))


def backtest(
    cfg: CampusConfig,
    influx: InfluxStore,
    start: int,
    end: int,
    rules: Iterable[str] | None = None,
    step_s: int | None = None,
    sessions: sessionmaker | None = None,
    acfg: AlertsConfig | None = None,
    commit: bool = False,
) -> BacktestResult:
    """Evaluate ``rules`` over ``[start, end)``; ``sessions`` (the campus DB) provides quotas and takes a commit."""
    if end <= start:
        raise BacktestError(f"end ({end}) must be after start ({start})")
    if end - start > 400 * 86400:
        raise BacktestError("a backtest covers at most 400 days; split longer periods")
    t0 = time.monotonic()
    acfg = acfg or alerts_config(cfg)
    wanted = check_rules(rules)
    window_rules = [r for r in wanted if RULES[r].kind == "window"]
    instant_rules = [r for r in wanted if RULES[r].kind == "instant"]
    step = step_s or acfg.settings.schedule.interval_s
    lookback = acfg.settings.schedule.lookback_days * 86400
    settle = settle_s(cfg, acfg)
    cal = calendar(cfg)
    tz = cfg.site.tz

    points = fetch_registers(influx, cfg.meters, start - lookback, end + settle) if window_rules else {}
    rates = fetch_rates(influx, cfg.meters, start - lookback, end + settle) if window_rules else {}
    timeline = Timeline.build(start - lookback, end, tz, cal)
    series = build_campus(cfg, timeline, points, cal, rates=rates)
    # A meter is expected from its commissioning date, else from the start of the backtest: a
    # backtest that starts when the data starts raises nothing about meters not yet due.
    expected = expected_from(cfg, acfg, start)
    quota_db = sessions
    if quota_db is None and cfg.targets and any(r.startswith("quota.") for r in wanted):
        # No campus database given: the quotas declared in the config still count.
        from api.alerts.targets_config import load_config_targets

        quota_db = _memory_sessions(all_tables=True)
        load_config_targets(cfg, quota_db)
    quotas = (
        load_quotas(cfg, quota_db, None)
        if quota_db is not None and any(r.startswith("quota.") for r in wanted)
        else []
    )

    # Gateways' last statuses as the campus database holds them now: a gateway alert quotes one only
    # if it was received by the step judged; with no database, or none recorded, it says nothing.
    gateways = (
        load_gateway_status(sessions)
        if sessions is not None and "data.gateway_offline" in window_rules
        else {}
    )
    mem = _memory_sessions()
    now_box = [float(start)]
    store = AlertStore(cfg, acfg, mem, source="backtest", clock=lambda: now_box[0], deliveries=False)
    instant = None
    readings: list[Reading] = []
    if instant_rules:
        instant = InstantRules(cfg, store=store, acfg=acfg, clock=lambda: now_box[0], rules=instant_rules)
        watched = [m for m in cfg.meters if m.room is not None or m.rated_current_a is not None]
        readings = fetch_instant(influx, watched, start, end)
    read = sum(len(v) for v in points.values()) + len(readings)
    result = BacktestResult(start, end, wanted, meters=len(cfg.meters), readings=read)
    ri = 0
    t = start
    while t < end:
        t = min(t + step, end)
        j = ri
        while j < len(readings) and readings[j].ts <= t:
            j += 1
        if j > ri:
            assert instant is not None
            now_box[0] = float(readings[j - 1].ts)
            instant.on_readings(readings[ri:j])
            ri = j
        now_box[0] = float(t)
        if window_rules:
            day = datetime.fromtimestamp(t, tz).date()
            qs = [q for q in quotas if q.valid_on(day)]
            ctx = context_at(cfg, timeline, series, t, settle, qs, expected, gateways)
            store.apply(window_findings(acfg, ctx, store.state, window_rules))
        result.steps += 1
    with mem() as s:
        rows = list(s.scalars(select(Alert).order_by(Alert.first_seen, Alert.id)))
        result.alerts = [alert_json(a, cfg) for a in rows]
        if commit:
            if sessions is None:
                raise BacktestError("commit needs the campus database")
            result.committed = _commit(cfg, acfg, sessions, rows)
    result.seconds = time.monotonic() - t0
    return result


def _commit(cfg: CampusConfig, acfg: AlertsConfig, sessions: sessionmaker, rows: list[Alert]) -> list[int]:
    """Copy backtest alerts into the campus database by the store's own event path (ordering lock)."""
    into = AlertStore(cfg, acfg, sessions, source="backtest", deliveries=False)
    return into.add_closed(rows, actor="backtest")
