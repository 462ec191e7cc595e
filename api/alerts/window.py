"""The live window-rule pass: keep recent register readings in memory, evaluate at the wall clock.

Readings are fetched once for the whole look-back window, then only the last few hours on each
pass (late readings from a gateway's backlog land there); a full re-read every few hours catches
anything older that arrived late.
"""

from __future__ import annotations

import logging
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import sessionmaker

from api.alerts.config import AlertsConfig, alerts_config
from api.alerts.evaluate import window_findings
from api.alerts.rules.context import Quota, WindowContext
from api.alerts.series import OccupancyCalendar, Timeline, build_campus
from api.alerts.source import fetch_registers, load_quotas
from api.alerts.store import AlertStore
from campusmon.config import CampusConfig
from campusmon.influx import InfluxStore

log = logging.getLogger(__name__)

OVERLAP_S = 6 * 3600
FULL_REFRESH_S = 6 * 3600


def children_of(cfg: CampusConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in cfg.meters:
        if m.parent is not None:
            out.setdefault(m.parent, []).append(m.id)
    return out


def settle_s(cfg: CampusConfig, acfg: AlertsConfig) -> int:
    s = acfg.settings.schedule.settle_s
    if s is not None:
        return s
    return max((m.interval_s for m in cfg.meters), default=900) + 60


def calendar(cfg: CampusConfig) -> OccupancyCalendar:
    from api.accounting.settings import calendar_for

    return calendar_for(cfg)


def context_at(
    cfg: CampusConfig, timeline: Timeline, series: dict, now: int, settle: int, quotas: list[Quota]
) -> WindowContext:
    return WindowContext(
        now, timeline.complete_upto(now - settle), timeline, series, children_of(cfg), quotas
    )


class WindowEvaluator:
    def __init__(
        self,
        cfg: CampusConfig,
        influx: InfluxStore,
        sessions: sessionmaker,
        store: AlertStore | None = None,
        acfg: AlertsConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.acfg = acfg or alerts_config(cfg)
        self.influx = influx
        self.sessions = sessions
        self.store = store or AlertStore(cfg, self.acfg, sessions, clock=clock)
        self.clock = clock
        self.calendar = calendar(cfg)
        self._ts: dict[str, array] = {}
        self._val: dict[str, array] = {}
        self._fetched_until: int | None = None
        self._last_full = 0.0
        self.last_pass: dict[str, Any] = {}

    def refresh(self, now: int) -> None:
        lookback = self.acfg.settings.schedule.lookback_days * 86400
        start = now - lookback
        full = (
            self._fetched_until is None
            or now - self._last_full >= FULL_REFRESH_S
            or self._fetched_until < start
        )
        since = start if full else max(start, self._fetched_until - OVERLAP_S)  # type: ignore[operator]
        fresh = fetch_registers(self.influx, self.cfg.meters, since, now + 1)
        for m in self.cfg.meters:
            ts = self._ts.setdefault(m.id, array("q"))
            val = self._val.setdefault(m.id, array("d"))
            # Drop what the new read covers, and what fell out of the window.
            keep_from = _bisect(ts, start)
            keep_to = _bisect(ts, since)
            new_ts = array("q", ts[keep_from:keep_to])
            new_val = array("d", val[keep_from:keep_to])
            for t, v in fresh.get(m.id, ()):
                new_ts.append(t)
                new_val.append(v)
            self._ts[m.id], self._val[m.id] = new_ts, new_val
        self._fetched_until = now + 1
        if full:
            self._last_full = now

    def points(self) -> dict[str, Iterable[tuple[int, float]]]:
        return {m: list(zip(self._ts[m], self._val[m], strict=True)) for m in self._ts}

    def run(self, now: int | None = None, rules: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Evaluate once; returns the alert events written."""
        t0 = time.monotonic()
        now = int(self.clock()) if now is None else int(now)
        self.refresh(now)
        t1 = time.monotonic()
        lookback = self.acfg.settings.schedule.lookback_days * 86400
        timeline = Timeline.build(now - lookback, now, self.cfg.site.tz, self.calendar)
        series = build_campus(self.cfg, timeline, self.points(), self.calendar)
        quotas = load_quotas(self.cfg, self.sessions, datetime.fromtimestamp(now, self.cfg.site.tz).date())
        ctx = context_at(self.cfg, timeline, series, now, settle_s(self.cfg, self.acfg), quotas)
        t2 = time.monotonic()
        findings = window_findings(self.acfg, ctx, self.store.state, rules)
        t3 = time.monotonic()
        events = self.store.apply(findings)
        self.last_pass = {
            "at": now,
            "meters": len(series),
            "findings": len(findings),
            "events": len(events),
            "fetch_s": round(t1 - t0, 3),
            "prepare_s": round(t2 - t1, 3),
            "rules_s": round(t3 - t2, 3),
            "apply_s": round(time.monotonic() - t3, 3),
        }
        return events


def _bisect(a: array, x: int) -> int:
    return bisect_left(a, x)
