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
from api.alerts.engine import HourBook, RuleCache
from api.alerts.evaluate import window_findings
from api.alerts.instant import InstantRules
from api.alerts.models import Alert
from api.alerts.rules import RULES
from api.alerts.series import Timeline, build_campus
from api.alerts.source import InfluxSource, ReadingSource, load_gateway_status, load_quotas
from api.alerts.store import AlertStore, alert_json
from api.alerts.window import calendar, children_of, context_at, expected_from, settle_s
from campusmon.config import CampusConfig, Meter
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
    influx: InfluxStore | None,
    start: int,
    end: int,
    rules: Iterable[str] | None = None,
    step_s: int | None = None,
    sessions: sessionmaker | None = None,
    acfg: AlertsConfig | None = None,
    commit: bool = False,
    full: bool = False,
    source: ReadingSource | None = None,
) -> BacktestResult:
    """Evaluate ``rules`` over ``[start, end)``; ``sessions`` (the campus DB) provides quotas and takes a commit.

    The period streams through the incremental engine (``api.alerts.engine``): readings are read a day
    at a time, in chunks of meters by building, folded into compact hourly series and dropped, so
    memory holds the hours, not the readings. Every step sees the readings up to a day past it, as
    the live evaluator sees its settled hours. ``full=True`` is the reference it is tested against:
    every reading of the period held at once and every rule run at every step. ``source`` reads from
    elsewhere than ``influx`` (any ``ReadingSource``).
    """
    if end <= start:
        raise BacktestError(f"end ({end}) must be after start ({start})")
    if end - start > 400 * 86400:
        raise BacktestError("a backtest covers at most 400 days; split longer periods")
    t0 = time.monotonic()
    if source is None:
        if influx is None:
            raise BacktestError("a backtest needs InfluxDB or another reading source")
        source = InfluxSource(influx)
    acfg = acfg or alerts_config(cfg)
    wanted = check_rules(rules)
    window_rules = [r for r in wanted if RULES[r].kind == "window"]
    instant_rules = [r for r in wanted if RULES[r].kind == "instant"]
    step = step_s or acfg.settings.schedule.interval_s
    lookback = acfg.settings.schedule.lookback_days * 86400
    settle = settle_s(cfg, acfg)
    cal = calendar(cfg)
    tz = cfg.site.tz

    timeline = Timeline.build(start - lookback, end, tz, cal)
    read = 0
    feed: _Feed | None = None
    if full:
        points = source.registers(cfg.meters, start - lookback, end + settle) if window_rules else {}
        rates = source.rates(cfg.meters, start - lookback, end + settle) if window_rules else {}
        series = build_campus(cfg, timeline, points, cal, rates=rates)
        read += sum(len(v) for v in points.values())
        del points, rates
        cache: RuleCache | None = None
    else:
        book = HourBook(cfg, timeline, cal, meters=by_building(cfg) if window_rules else [])
        series = book.series
        feed = _Feed(book, source, start - lookback, end + settle)
        cache = RuleCache()
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
    instant_feed: _InstantFeed | None = None
    if instant_rules:
        instant = InstantRules(cfg, store=store, acfg=acfg, clock=lambda: now_box[0], rules=instant_rules)
        watched = [m for m in cfg.meters if m.room is not None or m.rated_current_a is not None]
        instant_feed = _InstantFeed(source, watched, start, end, whole=full)
    result = BacktestResult(start, end, wanted, meters=len(cfg.meters))
    children = children_of(cfg)
    t = start
    day_quotas: tuple[object, list] = (None, [])
    while t < end:
        t = min(t + step, end)
        if instant_feed is not None:
            batch = instant_feed.upto(t)
            if batch:
                assert instant is not None
                now_box[0] = float(batch[-1].ts)
                instant.on_readings(batch)
        now_box[0] = float(t)
        if window_rules:
            if feed is not None:
                feed.upto(t + LOOKAHEAD_S)
            day = datetime.fromtimestamp(t, tz).date()
            if day_quotas[0] != day:
                day_quotas = (day, [q for q in quotas if q.valid_on(day)])
            ctx = context_at(cfg, timeline, series, t, settle, day_quotas[1], expected, gateways, children)
            store.apply(window_findings(acfg, ctx, store.state, window_rules, cache))
        result.steps += 1
    if feed is not None:
        read += feed.read
    if instant_feed is not None:
        read += instant_feed.read
    result.readings = read
    with mem() as s:
        rows = list(s.scalars(select(Alert).order_by(Alert.first_seen, Alert.id)))
        result.alerts = [alert_json(a, cfg) for a in rows]
        if commit:
            if sessions is None:
                raise BacktestError("commit needs the campus database")
            result.committed = _commit(cfg, acfg, sessions, rows)
    result.seconds = time.monotonic() - t0
    return result


# Readings a streamed step sees past itself: an hour is judged once it has settled, and a gap of up
# to a day is spread over its hours before they are judged, as when the whole period is read at once.
LOOKAHEAD_S = 86400
CHUNK_S = 86400


def by_building(cfg: CampusConfig) -> list[Meter]:
    """Meters grouped by building (reads are chunked by meters: one building's meters go together)."""
    return sorted(cfg.meters, key=lambda m: m.building)


class _Feed:
    """Register readings and hourly peaks read a day at a time into the book, then dropped."""

    def __init__(self, book: HourBook, source: ReadingSource, start: int, end: int) -> None:
        self.book, self.source = book, source
        self.meters = list(book.series[m].meter for m in book.series)
        self.at, self.end = start, end
        self.read = 0

    def upto(self, t: int) -> None:
        while self.at < min(t, self.end):
            nxt = min((self.at // CHUNK_S + 1) * CHUNK_S, self.end)
            pts = self.source.registers(self.meters, self.at, nxt)
            rates = self.source.rates(self.meters, self.at, nxt)
            self.read += sum(len(v) for v in pts.values())
            self.book.feed(pts, rates)
            self.at = nxt


class _InstantFeed:
    """Power and current readings for the instant rules, a day at a time, in time order."""

    def __init__(self, source: ReadingSource, meters: list[Meter], start: int, end: int, whole: bool) -> None:
        self.source, self.meters = source, meters
        self.at, self.end, self.whole = start, end, whole
        self.buf: list[Reading] = []
        self.pos = 0
        self.read = 0

    def upto(self, t: int) -> list[Reading]:
        """Readings with ``ts <= t`` not handed out yet."""
        out: list[Reading] = []
        while True:
            buf, j = self.buf, self.pos
            while j < len(buf) and buf[j].ts <= t:
                j += 1
            out += buf[self.pos : j]
            self.pos = j
            if j < len(buf) or self.at >= self.end or self.at > t:
                return out
            nxt = self.end if self.whole else min((self.at // CHUNK_S + 1) * CHUNK_S, self.end)
            self.buf, self.pos = self.source.instant(self.meters, self.at, nxt), 0
            self.read += len(self.buf)
            self.at = nxt


def _commit(cfg: CampusConfig, acfg: AlertsConfig, sessions: sessionmaker, rows: list[Alert]) -> list[int]:
    """Copy backtest alerts into the campus database by the store's own event path (ordering lock)."""
    into = AlertStore(cfg, acfg, sessions, source="backtest", deliveries=False)
    return into.add_closed(rows, actor="backtest")
