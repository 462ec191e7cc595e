"""The window rules' hour book taken from hourly rollups: raw registers are read only after the watermark.

A full rebuild of the book used to fold every raw register reading of the look-back (35 days of
them) through the consumption policy again. The rollup maintainer (``campusmon.rollups``) has
already done that, once per reading, and keeps per hour what the rules read: consumption, the
readings received, whether the hour is known (inside the data, no long gap), and the times of its
first and last reading. So the book takes every final hour from ``energy_hourly`` and derives only
the hours from each meter's watermark on, from raw readings that start at the watermark's resume
reading (the policy's state there is the full derivation's).

Rules that look at reading times rather than hours get what they need exactly:

- ``last_reading`` at any pass still to be judged: raw reading times from the earliest such pass
  (``earliest``) on, plus the last reading before them (a row's ``last_s``);
- ``first_reading`` (completeness): the first reading in the window, read raw from the window's
  partial first hour or taken from the first row with a reading (``first_s``);
- a gateway's other meters (``gateway_explains``): every member's raw times start no later than
  the hour of the last reading any member had by ``earliest``, so a silent meter's cut-off lies
  inside every other member's raw times;
- counters going backwards: the policy's events from ``rollup_events``.

Hourly peaks of flow and power still come from an hourly aggregate of raw readings (finer than
consumption: ``fetch_rates``). A meter without a usable watermark (new, rollups switched off or
behind, rows written before the ``known`` field existed) is read raw over the whole window.

The one difference from a raw pass is at the window's start: there the raw pass restarts the
policy cold on the first reading in the window, the rollups know the readings before it. Hours
whose figures the cold start changes (a break just before the window) take the rollups' figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from api.accounting import periods
from api.accounting.rolled import policy_events
from api.alerts.engine import HourBook
from api.alerts.series import REGISTER
from api.alerts.source import fetch_registers
from campusmon.config import Meter
from campusmon.influx import InfluxStore
from campusmon.rollups import HourRow, read_hourly, watermarks

log = logging.getLogger(__name__)

# Raw reads of seeded meters start on a 6-hour grid, so meters with nearby watermarks share requests.
GRID_S = 6 * 3600


@dataclass(slots=True)
class SeedStats:
    meters: int = 0  # meters whose settled hours came from rollups
    hours: int = 0  # hour cells taken from rollups
    raw_meters: int = 0  # meters read raw over the whole window
    readings: int = 0  # raw register readings read


def seed_book(
    book: HourBook,
    store: InfluxStore,
    sessions: sessionmaker[Session],
    start: int,
    now: int,
    earliest: int,
) -> tuple[dict[str, list[tuple[int, float]]], SeedStats]:
    """Seed ``book`` (a new, empty one over ``[start, now)``) from rollups; returns the raw points to feed.

    ``earliest``: the first evaluation time the book will be asked about (a catch-up pass).
    """
    cfg = book.cfg
    tl = book.timeline
    tz = cfg.site.tz
    stats = SeedStats()
    meters = [s.meter for s in book.series.values()]
    feed: dict[str, list[tuple[int, float]]] = {}
    if not len(tl) or not meters:
        return feed, stats
    hour0 = tl.starts[0]
    wms = watermarks(sessions, [m.id for m in meters])
    cands = []
    for m in meters:
        w = wms.get((m.id, REGISTER[m.kind]))
        if (
            w is not None
            and w.resume_ts is not None
            and w.grid == cfg.site.timezone
            and hour0 < w.until_ts <= now
            and w.resume_ts <= now
        ):
            cands.append((m, w))
    rows_by = (
        read_hourly(
            store, [m.id for m, _ in cands], hour0, now, sessions, {REGISTER[m.kind] for m, _ in cands}
        )
        if cands
        else {}
    )
    plan: dict[str, tuple[Meter, int, int, list[HourRow], int]] = {}
    for m, w in cands:
        rows = [r for r in rows_by.get(m.id, ()) if r.quantity == REGISTER[m.kind]]
        if not rows or any(r.known is None for r in rows):
            continue  # rollups without what rules need: read raw
        # Raw reading times from the earliest pass judged (or the resume reading, if earlier) on.
        t = min(w.resume_ts, earliest)  # type: ignore[type-var]
        plan[m.id] = (m, w.until_ts, int(w.resume_ts), rows, int(t))
    # A gateway's members: from the hour of the last reading any of them had by ``earliest``.
    groups: dict[str, list[str]] = {}
    for mid, (m, *_rest) in plan.items():
        if m.gateway is not None:
            groups.setdefault(m.gateway, []).append(mid)
    for ids in groups.values():
        low = min(min(plan[i][4], _last_row_at(plan[i][3], earliest)) for i in ids)
        for i in ids:
            m, until, resume, rows, _t = plan[i]
            plan[i] = (m, until, resume, rows, low)
    starts: dict[int, list[Meter]] = {}
    for mid, (m, until, resume, rows, t) in list(plan.items()):
        t = periods.floor(t - t % GRID_S, "hour", tz)
        if t <= hour0:
            del plan[mid]  # nothing to gain: read raw
            continue
        plan[mid] = (m, until, resume, rows, t)
        starts.setdefault(t, []).append(m)
    # The policy's events up to each resume reading (estimated intervals are the hours' own business).
    stored = (
        policy_events(sessions, [p[0] for p in plan.values()], start, max(p[2] for p in plan.values()) + 1)
        if plan
        else {}
    )
    if stored is None:
        log.warning("rollup events unreadable: the hour book is read from raw registers")
        stored, plan, starts = {}, {}, {}
    raw = [m for m in meters if m.id not in plan]
    pts: dict[str, list[tuple[int, float]]] = {}
    if raw:
        pts.update(fetch_registers(store, raw, start, now + 1))
    for t, ms in sorted(starts.items()):
        pts.update(fetch_registers(store, ms, t, now + 1))
    head = (
        fetch_registers(store, [p[0] for p in plan.values()], start, hour0) if plan and start < hour0 else {}
    )
    for mid, (_m, until, resume, rows, t) in plan.items():
        mine = pts.get(mid, [])
        first = _first(head.get(mid), rows)
        received = [ts for ts, _ in mine if ts < resume]
        before = _last_row_before(rows, t)
        received += [x for x in (first, before) if x is not None]
        events = [e for e in stored.get(mid, ([], []))[0] if e.ts <= resume]
        stats.hours += book.seed(mid, rows, until, first, received, events)
        feed[mid] = [(ts, v) for ts, v in mine if ts >= resume]
        stats.meters += 1
    for m in raw:
        feed[m.id] = pts.get(m.id, [])
    stats.raw_meters = len(raw)
    stats.readings = sum(len(v) for v in pts.values()) + sum(len(v) for v in head.values())
    return feed, stats


def _first(head: Sequence[tuple[int, float]] | None, rows: Sequence[HourRow]) -> int | None:
    """The first reading in the window: in its partial first hour (read raw), else the first row's."""
    if head:
        return int(head[0][0])
    for r in rows:
        if r.readings and r.first_s is not None:
            return int(r.hour.timestamp()) + r.first_s
    return None


def _last_row_before(rows: Sequence[HourRow], t: int) -> int | None:
    """The last reading in the hours that end by ``t`` (rows are whole local hours; ``t`` is an hour start)."""
    for r in reversed(rows):
        h = int(r.hour.timestamp())
        if h < t and r.readings and r.last_s is not None:
            return h + r.last_s
    return None


def _last_row_at(rows: Sequence[HourRow], t: int) -> int:
    """The start of the last hour with a reading that began by ``t`` (``t`` if none): a lower bound of
    the meter's last reading at ``t``."""
    for r in reversed(rows):
        h = int(r.hour.timestamp())
        if h <= t and r.readings:
            return h
    return t
