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
from api.alerts.engine import HourBook, RuleCache
from api.alerts.evaluate import window_findings
from api.alerts.rules.context import GatewayWord, Quota, WindowContext
from api.alerts.seeding import SeedStats, seed_book
from api.alerts.series import OccupancyCalendar, Timeline, build_campus
from api.alerts.source import fetch_rates, fetch_registers, load_gateway_status, load_quotas
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
    cfg: CampusConfig,
    timeline: Timeline,
    series: dict,
    now: int,
    settle: int,
    quotas: list[Quota],
    expected: dict[str, int] | None = None,
    gateways: dict[str, GatewayWord] | None = None,
    children: dict[str, list[str]] | None = None,
) -> WindowContext:
    return WindowContext(
        now,
        timeline.complete_upto(now - settle),
        timeline,
        series,
        children if children is not None else children_of(cfg),
        quotas,
        expected or {},
        gateways or {},
    )


def expected_from(cfg: CampusConfig, acfg: AlertsConfig, default: dict[str, int] | int) -> dict[str, int]:
    """When each meter was first expected to report: its commissioning date, else ``default``."""
    out = {}
    for m in cfg.meters:
        at = acfg.commissioned(m)
        out[m.id] = at if at is not None else (default if isinstance(default, int) else default[m.id])
    return out


# Rule-state keys of the evaluator itself (not a rule): when it first saw each meter in the config,
# and how far it has judged, so a restart catches up on the hours nobody judged.
CONFIGURED = ("data.never_reported", "configured")
JUDGED = ("window.pass", "judged")


class WindowEvaluator:
    def __init__(
        self,
        cfg: CampusConfig,
        influx: InfluxStore,
        sessions: sessionmaker,
        store: AlertStore | None = None,
        acfg: AlertsConfig | None = None,
        clock: Callable[[], float] = time.time,
        incremental: bool = True,
        rollups: bool | None = None,
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
        self._rates: dict[str, list[tuple[int, float]]] = {}
        self.last_pass: dict[str, Any] = {}
        # The incremental engine (api.alerts.engine): hourly series and verdicts kept between passes.
        # ``incremental=False`` rebuilds everything on every pass (the reference it is tested against).
        self.incremental = incremental
        self.book: HourBook | None = None
        self.cache = RuleCache()
        # A rebuilt book takes settled hours from hourly rollups (api.alerts.seeding) when they are kept.
        self.rollups = cfg.rollups.enabled if rollups is None else rollups
        self.seed_stats: SeedStats | None = None
        self._children = children_of(cfg)

    def _refresh_book(self, now: int) -> tuple[HourBook, bool]:
        """Bring the book up to ``now``: rebuilt from the whole look-back when due, else the recent reads.

        The re-read overlap catches readings that arrive late from a gateway's backlog; a rebuild every
        ``FULL_REFRESH_S`` catches anything older, and moves the start of the timeline on.
        """
        lookback = self.acfg.settings.schedule.lookback_days * 86400
        start = now - lookback
        book = self.book
        full = (
            book is None
            or self._fetched_until is None
            or now - self._last_full >= FULL_REFRESH_S
            or self._fetched_until < start
            or now < self._fetched_until - OVERLAP_S
        )
        if full:
            timeline = Timeline.build(start, now, self.cfg.site.tz, self.calendar)
            book = HourBook(self.cfg, timeline, self.calendar)
            since = start
            self.cache = RuleCache()
        else:
            assert book is not None and self._fetched_until is not None
            since = max(start, self._fetched_until - OVERLAP_S)
            book.grow(now)
        if full and self.rollups:
            pts, self.seed_stats = seed_book(
                book, self.influx, self.sessions, start, now, self.pending_passes(now)[0]
            )
        else:
            pts = fetch_registers(self.influx, self.cfg.meters, since, now + 1)
        rates = fetch_rates(self.influx, self.cfg.meters, since - since % 3600, now + 1)
        book.feed(pts, rates)
        self.book = book
        self._fetched_until = now + 1
        if full:
            self._last_full = now
        return book, full

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
        # Hourly peaks of flow and power: one aggregate per meter-hour, re-read over the same span.
        rates = fetch_rates(self.influx, self.cfg.meters, since - since % 3600, now + 1)
        for mid in {m.id for m in self.cfg.meters}:
            old = [x for x in self._rates.get(mid, ()) if start <= x[0] < since - since % 3600]
            self._rates[mid] = old + rates.get(mid, [])
        self._fetched_until = now + 1
        if full:
            self._last_full = now

    def points(self) -> dict[str, Iterable[tuple[int, float]]]:
        return {m: list(zip(self._ts[m], self._val[m], strict=True)) for m in self._ts}

    def _expected(self, now: int) -> dict[str, int]:
        """First time this system saw each meter in its config (kept), or its commissioning date."""
        seen = dict(self.store.state_by_key(*CONFIGURED))
        added = {m.id: now for m in self.cfg.meters if m.id not in seen}
        if added:
            seen.update(added)
            self.store.save_states({CONFIGURED: seen})
        return expected_from(self.cfg, self.acfg, {m.id: int(seen[m.id]) for m in self.cfg.meters})

    def pending_passes(self, now: int) -> list[int]:
        """Evaluation times not yet judged, oldest first, ending at ``now``.

        After a start or a gap in the passes, the hours nobody judged are judged in steps of the
        schedule's interval (as far back as ``catchup_days`` and the look-back allow), so the live
        feed raises what a backtest of the same period raises.
        """
        st = self.acfg.settings.schedule
        step = st.interval_s
        bound = now - int(min(st.catchup_days, st.lookback_days - 1) * 86400)
        judged = self.store.state_by_key(*JUDGED).get("until")
        t = max(int(judged), bound) if judged is not None else bound
        out = []
        while t + step < now:
            t += step
            out.append(t)
        out.append(now)
        return out

    def run(self, now: int | None = None, rules: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Evaluate once (catching up on unjudged passes first); returns the alert events written."""
        t0 = time.monotonic()
        now = int(self.clock()) if now is None else int(now)
        cache: RuleCache | None = None
        rebuilt = True
        if self.incremental:
            book, rebuilt = self._refresh_book(now)
            t1 = time.monotonic()
            timeline, series, cache = book.timeline, book.series, self.cache
        else:
            self.refresh(now)
            t1 = time.monotonic()
            lookback = self.acfg.settings.schedule.lookback_days * 86400
            timeline = Timeline.build(now - lookback, now, self.cfg.site.tz, self.calendar)
            series = build_campus(self.cfg, timeline, self.points(), self.calendar, rates=self._rates)
        expected = self._expected(now)
        settle = settle_s(self.cfg, self.acfg)
        passes = self.pending_passes(now) if rules is None else [now]
        t2 = time.monotonic()
        events: list[dict[str, Any]] = []
        findings = 0
        quotas: dict[object, list[Quota]] = {}
        gateways = load_gateway_status(self.sessions) if _any_gateway(self.cfg) else {}
        for at in passes:
            day = datetime.fromtimestamp(at, self.cfg.site.tz).date()
            if day not in quotas:
                quotas[day] = load_quotas(self.cfg, self.sessions, day)
            ctx = context_at(
                self.cfg, timeline, series, at, settle, quotas[day], expected, gateways, self._children
            )
            found = window_findings(self.acfg, ctx, self.store.state, rules, cache)
            findings += len(found)
            events += self.store.apply(found)
            if rules is None:
                # Judged up to here: a worker killed mid catch-up is followed by one that resumes at
                # the next pass, never re-judging a run of passes (which could reopen what cleared).
                self.store.save_states({JUDGED: {"until": at}})
        t3 = time.monotonic()
        self.last_pass = {
            "at": now,
            "meters": len(series),
            "passes": len(passes),
            "findings": findings,
            "events": len(events),
            "fetch_s": round(t1 - t0, 3),
            "prepare_s": round(t2 - t1, 3),
            "rules_s": round(t3 - t2, 3),
            "rebuilt": rebuilt,
        }
        if rebuilt and self.incremental and self.seed_stats is not None:
            st = self.seed_stats
            self.last_pass["seeded"] = {
                "meters_from_rollups": st.meters,
                "hours_from_rollups": st.hours,
                "meters_read_raw": st.raw_meters,
                "raw_readings": st.readings,
            }
        return events


def _any_gateway(cfg: CampusConfig) -> bool:
    return any(m.gateway is not None for m in cfg.meters)


def _bisect(a: array, x: int) -> int:
    return bisect_left(a, x)
