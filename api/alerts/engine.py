"""The incremental rule engine: hourly series kept between passes, verdicts reused until their inputs change.

A full pass folds every raw register reading of the look-back window through the consumption
policy and runs every rule over every hour; most of that is the same five minutes later. Here:

- ``HourBook`` keeps each meter's hourly series (compact arrays) for a timeline that only grows.
  New readings re-derive just the hours they touch: the policy restarts from a reading it accepted
  a few readings before the first hour concerned (its state there is the full pass's state), so the
  hours equal those of a full derivation. Only a short raw tail per meter is kept.
- ``RuleCache`` keeps the last verdict of every hour-resolution rule (after-hours, leaks, spikes,
  base load, stuck registers, completeness, quotas) with what it was judged on: the last complete
  hour (``upto``), the meters' data versions and the rule's saved state. While they are unchanged
  the verdict is reused (its time set to now), which is exactly what re-running the rule gives,
  since those rules read nothing finer than whole hours before ``upto``. Rules that read the clock
  (silent meters and gateways, commissioning, counters going backwards) run on every pass.

What a restart needs is persisted elsewhere: rule state and the last judged pass in the rule-state
table (``api.alerts.store``), the readings in InfluxDB. A new process rebuilds its book once.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from api.accounting.consumption import Event, Limits, derive_columns
from api.accounting.periods import hour_starts
from api.alerts.rules.base import Finding
from api.alerts.series import (
    MeterSeries,
    OccupancyCalendar,
    RawTrace,
    Timeline,
    invalidate_memo,
    occupancy_for,
)
from campusmon.config import CampusConfig, Meter
from campusmon.rollups import HourRow, gap_limit, known_hours

# Raw readings a meter keeps behind its newest accepted one: the live evaluator re-reads the last
# 6 hours on every pass (late readings from a gateway's backlog land there), plus an hour.
KEEP_RAW_S = 7 * 3600
# Accepted readings kept before the first hour a new reading touches: the policy restarts from one,
# and a register break right after it still has its neighbouring intervals to estimate from.
BACK_READINGS = 4

# Rules that read whole hours before ``upto`` only: their verdict depends on nothing else that moves.
HOURLY_RULES = frozenset(
    {
        "leak.night_flow",
        "leak.continuous_flow",
        "leak.balance",
        "after_hours.usage",
        "after_hours.water",
        "after_hours.baseload_creep",
        "spike.baseline",
        "data.completeness",
        "data.stuck",
        "quota.exceeded",
        "quota.forecast",
    }
)


@dataclass(slots=True)
class _Tail:
    """A meter's recent raw readings (time -> register, last delivered wins) and what the policy accepted."""

    pts: dict[int, float] = field(default_factory=dict)
    accepted: list[int] = field(default_factory=list)
    floor: int | None = None  # readings before this are folded into the hours for good
    first: int | None = None  # first reading the policy kept: hours before it are not known
    locked: int = 0  # hours before this index came from rollups (``HourBook.seed``): never rewritten


@dataclass(slots=True)
class FeedStats:
    meters: int = 0
    readings: int = 0
    hours: int = 0  # hour cells re-derived
    changed: int = 0  # meters whose already judged hours changed (late data)
    too_late: int = 0  # readings older than the kept tail: left for the next full rebuild


class HourBook:
    """Hourly series of every meter over a growing timeline, kept up to date reading by reading."""

    def __init__(
        self,
        cfg: CampusConfig,
        timeline: Timeline,
        calendar: OccupancyCalendar,
        meters: Iterable[Meter] | None = None,
        keep_raw_s: int = KEEP_RAW_S,
    ) -> None:
        self.cfg = cfg
        self.timeline = timeline
        self.calendar = calendar
        self.keep_raw_s = keep_raw_s
        self.series: dict[str, MeterSeries] = {}
        self._tails: dict[str, _Tail] = {}
        self._limits: dict[str, Limits] = {}
        self._occ: dict[str, list[bool]] = {}
        self._kinds: dict[object, str] = {}
        self.stats = FeedStats()
        self._pos: dict[int, int] = {}  # hour start -> index, for seeding
        n = len(timeline)
        for m in meters if meters is not None else cfg.meters:
            b = cfg.building(m.building)
            assert b is not None  # config validation guarantees it
            if b.id not in self._occ:
                self._occ[b.id] = occupancy_for(timeline, b, calendar)
            self.series[m.id] = MeterSeries(
                m,
                b,
                timeline,
                RawTrace(),
                array("d", bytes(8 * n)),
                bytearray(n),
                array("i", bytes(4 * n)),
                self._occ[b.id],
                rate=[None] * n,
            )
            self._tails[m.id] = _Tail()
            self._limits[m.id] = Limits.for_meter(m)

    # -- the timeline -----------------------------------------------------------------------------------

    def grow(self, until: int) -> int:
        """Append the local hours that start before ``until``; returns how many were added."""
        tl = self.timeline
        n0 = len(tl)
        if not n0:
            return 0
        new = hour_starts(tl.end_of(n0 - 1), until, tl.tz)
        if not new:
            return 0
        last_day = tl.days[-1]
        for t in new:
            local = datetime.fromtimestamp(t, tl.tz)
            d = local.date()
            kind = self._kinds.get(d)
            if kind is None:
                kind = self._kinds[d] = self.calendar.day_kind(d)
            tl.starts.append(t)
            tl.local.append(local)
            tl.days.append(d)
            tl.day_kinds.append(kind)
        tl._days.clear()  # a day at the old end may be whole now
        k = len(new)
        for bid, occ in self._occ.items():
            b = self.cfg.building(bid)
            assert b is not None
            occ.extend(self.calendar.is_occupied(b, local) for local in tl.local[n0:])
        for s in self.series.values():
            s.used.extend(array("d", bytes(8 * k)))
            s.known.extend(bytearray(k))
            s.samples.extend(array("i", bytes(4 * k)))
            s.rate.extend([None] * k)
            s.memo.pop(("closedday", last_day), None)  # judged on a day that was still partial
        return k

    # -- hours from rollups -------------------------------------------------------------------------------

    def seed(
        self,
        meter_id: str,
        rows: Sequence[HourRow],
        until: int,
        first: int | None,
        received: Iterable[int],
        events: Iterable[Event],
    ) -> int:
        """Take a meter's hours before ``until`` (its rollup watermark) from its hourly rollups.

        The book then only derives hours from ``until`` on, from raw readings that start at the
        watermark's resume reading (``feed``): the policy restarts there in the state the rollups'
        derivation had, so those hours equal a full derivation's. ``first`` is the meter's first
        reading in the timeline's window (hours before it are not known, as in a raw pass);
        ``received`` the reading times before the resume reading that rules may ask about
        (``last_reading`` at a catch-up pass, a gateway's other meters), ``events`` the policy's
        events up to the resume reading (``rollup_events``). Returns the number of hours taken.
        """
        s = self.series[meter_id]
        tail = self._tails[meter_id]
        tl = self.timeline
        lock = bisect_left(tl.starts, until)
        if len(self._pos) != len(tl):
            self._pos = {t: i for i, t in enumerate(tl.starts)}
        pos = self._pos
        used, samples, known = s.used, s.samples, s.known
        taken = 0
        for r in rows:
            h = int(r.hour.timestamp())
            i = pos.get(h)
            if i is None or i >= lock:
                continue
            used[i] = r.value
            samples[i] = r.readings
            known[i] = r.known is True and first is not None and h >= first
            taken += 1
        raw = s.curve
        assert isinstance(raw, RawTrace)
        raw.received = array("q", sorted(set(received)))
        raw.events = sorted(events, key=lambda e: e.ts)
        tail.first, tail.locked = first, lock
        return taken

    # -- readings ---------------------------------------------------------------------------------------

    def feed(
        self,
        points: dict[str, Sequence[tuple[int, float]]],
        rates: dict[str, Sequence[tuple[int, float]]] | None = None,
    ) -> FeedStats:
        """Fold new register readings (any order, repeats allowed) and hourly peak rates into the hours."""
        before = replace(self.stats)
        for mid, pts in points.items():
            s = self.series.get(mid)
            if s is not None and pts:
                self._feed_meter(s, self._tails[mid], pts)
        for mid, buckets in (rates or {}).items():
            s = self.series.get(mid)
            if s is not None and buckets:
                self._feed_rates(s, buckets)
        st = self.stats
        return FeedStats(
            st.meters - before.meters,
            st.readings - before.readings,
            st.hours - before.hours,
            st.changed - before.changed,
            st.too_late - before.too_late,
        )

    def _feed_meter(self, s: MeterSeries, tail: _Tail, new: Sequence[tuple[int, float]]) -> None:
        pts, floor = tail.pts, tail.floor
        lo: int | None = None
        for t, v in new:
            t, v = int(t), float(v)
            if floor is not None and t < floor:
                if pts.get(t) is None:
                    self.stats.too_late += 1
                continue
            old = pts.get(t)
            if old is not None and (old == v or (old != old and v != v)):
                continue  # already folded in (the evaluator re-reads an overlap)
            pts[t] = v
            lo = t if lo is None or t < lo else lo
        if lo is None:
            return
        self.stats.meters += 1
        tl = self.timeline
        n = len(tl)
        acc = tail.accepted
        j = bisect_left(acc, lo)
        anchor = acc[j - 1] if j else lo  # hours from the last accepted reading on: a closed gap is re-spread
        k = min(max(tl.index(anchor), 0), n - 1) if n else 0
        hour0 = min(anchor, tl.starts[k]) if n else anchor
        i0 = bisect_right(acc, hour0) - 1 - BACK_READINGS
        if i0 >= 0:
            t0 = acc[i0]
        elif floor is None:
            t0 = min(pts)  # the meter's whole history is still here
        else:
            t0 = acc[0] if acc else min(pts)
        ts = sorted(t for t in pts if t >= t0)
        curve = derive_columns(ts, [pts[t] for t in ts], self._limits[s.meter.id])
        self.stats.readings += len(ts)
        p = curve.ts or curve.received
        # The meter's first reading: known from rollups in a seeded book (unless the window had none
        # before the raw readings), else the first of a derivation that starts from its whole history.
        from_start = tail.first is None if tail.locked else (t0 == min(pts) and floor is None)
        if from_start:
            tail.first = p[0] if p else None
        # What the series keeps at raw resolution: reading times and the policy's events.
        raw = s.curve
        assert isinstance(raw, RawTrace)
        cut = bisect_left(raw.received, t0)
        del raw.received[cut:]
        raw.received.extend(curve.received)
        raw.events = [e for e in raw.events if e.ts <= t0] + [e for e in curve.events if e.ts > t0]
        tail.accepted = acc[: bisect_left(acc, t0)] + list(curve.ts)
        if n:
            self._rewrite_hours(s, tail, curve.received, p, curve.deltas, max(k, tail.locked))
        self._trim(tail)

    def _rewrite_hours(
        self,
        s: MeterSeries,
        tail: _Tail,
        recv: Sequence[int],
        p: Sequence[int],
        deltas: Callable[[Sequence[int]], list[float]],
        k: int,
    ) -> None:
        tl = self.timeline
        n = len(tl)
        if not recv:
            return
        kend = min(max(tl.index(recv[-1]), k) + 1, n)
        starts = tl.starts
        bounds = [*starts[k:kend], tl.end_of(kend - 1)]
        used = deltas(bounds)
        samples = [0] * (kend - k)
        lo_r = bisect_left(recv, bounds[0])
        hi_r = bisect_left(recv, bounds[-1])
        h = 0
        for t in recv[lo_r:hi_r]:
            while h + 1 < kend - k and bounds[h + 1] <= t:
                h += 1
            samples[h] += 1
        known = bytearray(kend - k)
        if p and tail.first is not None:
            known = bytearray(known_hours(p, bounds, gap_limit(s.meter), tail.first, p[-1]))
        low: int | None = None
        su, sk, ss = s.used, s.known, s.samples
        for h in range(kend - k):
            i = k + h
            if su[i] != used[h] or sk[i] != known[h] or ss[i] != samples[h]:
                su[i], sk[i], ss[i] = used[h], known[h], samples[h]
                if low is None:
                    low = i
        self.stats.hours += kend - k
        if low is not None:
            self._changed(s, low)

    def _feed_rates(self, s: MeterSeries, buckets: Sequence[tuple[int, float]]) -> None:
        """Hourly peaks only grow as readings arrive: the largest seen per local hour is kept."""
        tl = self.timeline
        n = len(tl)
        low: int | None = None
        rate = s.rate
        for ts, v in buckets:
            i = tl.index(int(ts))
            if 0 <= i < n:
                cur = rate[i]
                if cur is None or v > cur:
                    rate[i] = float(v)
                    low = i if low is None or i < low else low
        if low is not None:
            self._changed(s, low)

    def _changed(self, s: MeterSeries, low: int) -> None:
        if low < s.judged:
            s.version += 1
            invalidate_memo(s, low)
            self.stats.changed += 1

    def _trim(self, tail: _Tail) -> None:
        acc = tail.accepted
        if not acc:
            return
        ci = bisect_right(acc, acc[-1] - self.keep_raw_s) - 1 - BACK_READINGS
        if ci <= 0:
            return
        floor = acc[ci]
        tail.floor = floor
        tail.accepted = acc[ci:]
        for t in [t for t in tail.pts if t < floor]:
            del tail.pts[t]


# -- verdicts -----------------------------------------------------------------------------------------------

_MISS = object()


class RuleCache:
    """The last verdict of each hour-resolution rule per subject, with what it was judged on."""

    def __init__(self) -> None:
        self._hits: dict[tuple[str, object], tuple[int, object, dict, Finding | None]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, rule: str, key: object, upto: int, version: object, state: dict) -> object:
        hit = self._hits.get((rule, key))
        if hit is not None and hit[0] == upto and hit[1] == version and hit[2] == state:
            self.hits += 1
            return hit[3]
        self.misses += 1
        return _MISS

    def put(
        self, rule: str, key: object, upto: int, version: object, state: dict, finding: Finding | None
    ) -> None:
        self._hits[(rule, key)] = (upto, version, state, finding)

    def clear(self) -> None:
        self._hits.clear()


def is_miss(x: object) -> bool:
    return x is _MISS
