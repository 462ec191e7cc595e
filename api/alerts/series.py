"""Hourly views of meters that window rules read: consumption per local hour, coverage, counter events.

Built once per evaluation pass (or once per backtest) from raw register readings through the
consumption policy (``api.accounting.consumption``), so rules and reports agree on every kWh.
Rules get an ``upto`` index: the hours they may look at end there, which is how a backtest replays
a past week without peeking at the future.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from api.accounting.consumption import Curve, Event, Limits, derive
from api.accounting.periods import hour_starts
from campusmon import quantities
from campusmon.config import Building, CampusConfig, Meter
from campusmon.quantities import MeterKind
from campusmon.rollups import gap_limit, known_hours

# Every meter kind's register and rate (gas and heat too, so silent or stuck meters of any kind are
# seen); rules for one carrier only (leaks, after-hours power) pick their kind themselves.
REGISTER: dict[MeterKind, str] = dict(quantities.REGISTER)
RATE: dict[MeterKind, str] = dict(quantities.RATE)
UNIT = {k: quantities.QUANTITIES[q].unit for k, q in REGISTER.items()}


class OccupancyCalendar(Protocol):
    def is_occupied(self, building: Building | str, local: datetime) -> bool: ...
    def day_kind(self, day: date) -> str: ...


@dataclass(slots=True)
class Timeline:
    """The local whole hours of a window, shared by every meter of a pass."""

    tz: ZoneInfo
    starts: list[int]
    local: list[datetime]
    days: list[date]
    day_kinds: list[str]
    _days: dict[int, list[tuple[date, int, int]]] = field(default_factory=dict)

    @classmethod
    def build(cls, start: int, end: int, tz: ZoneInfo, calendar: OccupancyCalendar) -> Timeline:
        starts = hour_starts(start, end, tz)
        local = [datetime.fromtimestamp(s, tz) for s in starts]
        days = [d.date() for d in local]
        kinds: dict[date, str] = {}
        for d in days:
            if d not in kinds:
                kinds[d] = calendar.day_kind(d)
        return cls(tz, starts, local, days, [kinds[d] for d in days])

    def __len__(self) -> int:
        return len(self.starts)

    def end_of(self, i: int) -> int:
        return self.starts[i + 1] if i + 1 < len(self.starts) else self.starts[i] + 3600

    def complete_upto(self, now: int) -> int:
        """Index one past the last hour that has ended by ``now``."""
        n = bisect_right(self.starts, now - 3600)
        while n > 0 and self.end_of(n - 1) > now:
            n -= 1
        return n

    def index(self, ts: int) -> int:
        """Index of the hour containing ``ts`` (may be -1 or len for outside)."""
        return bisect_right(self.starts, ts) - 1

    def day_ranges(self, upto: int) -> list[tuple[date, int, int]]:
        """Complete local days among the first ``upto`` hours as (day, first index, end index)."""
        cached = self._days.get(upto)
        if cached is not None:
            return cached
        out: list[tuple[date, int, int]] = []
        i, n = 0, len(self.days)
        while i < upto:
            d = self.days[i]
            j = i
            while j < n and self.days[j] == d:
                j += 1
            whole = (i > 0 or self.local[i].hour == 0) and (j < n or self.local[j - 1].hour == 23)
            if j <= upto and whole:
                out.append((d, i, j))
            i = j
        self._days[upto] = out
        return out


@dataclass(slots=True)
class RawTrace:
    """The raw-resolution facts rules read beside the hourly series: reading times and policy events.

    What the incremental engine keeps of a meter's raw readings once they are folded into hours
    (``Curve`` carries the same two attributes for a series built in one go).
    """

    received: MutableSequence[int] = field(default_factory=lambda: array("q"))
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class MeterSeries:
    """One meter over a timeline: what rules need and nothing else."""

    meter: Meter
    building: Building
    timeline: Timeline
    curve: Curve | RawTrace
    # Consumption per hour (kWh or m3), spread evenly across gaps; a list, or a compact array when kept
    # between passes by the incremental engine (api.alerts.engine).
    used: MutableSequence[float]
    known: MutableSequence[bool] | bytearray  # hour covered by real readings (not inside a long gap)
    samples: MutableSequence[int]  # readings received in the hour
    occupied: list[bool]
    memo: dict[tuple, object] = field(default_factory=dict)
    # Highest flow (m3/h) or power (W) the meter reported in each hour; None where it reports none.
    rate: list[float | None] = field(default_factory=list)
    # Bumped when hours the rules have already judged change (late data): cached verdicts are stale.
    version: int = 0
    # One past the last hour a rule has been asked about (the largest ``upto`` so far).
    judged: int = 0

    @property
    def unit(self) -> str:
        return UNIT[self.meter.kind]

    @property
    def kind(self) -> MeterKind:
        return self.meter.kind

    def last_reading(self, now: int) -> int | None:
        r = self.curve.received
        i = bisect_right(r, now)
        return r[i - 1] if i else None

    def first_reading(self) -> int | None:
        return self.curve.received[0] if self.curve.received else None


def invalidate_memo(s: MeterSeries, k: int) -> None:
    """Forget what rules remembered about hours at or after ``k`` (they were re-derived).

    Every memo of the rules depends only on hours before an index in its key (``ahref`` and
    ``usual`` on hours before their hour or run start, ``baseload`` on its day, ``mnf`` on hours
    before its ``upto``); the calendar-only ``closedday`` stays. Unknown keys are dropped.
    """
    drop = []
    for key, val in s.memo.items():
        tag = key[0]
        if tag == "closedday":
            continue
        if tag in ("ahref", "usual") and isinstance(val, dict):
            for i in [i for i in val if (i[1] if isinstance(i, tuple) else i) > k]:
                del val[i]
            continue
        if tag == "baseload" and key[2] <= k:
            continue
        drop.append(key)
    for key in drop:
        del s.memo[key]


def prune_memo(s: MeterSeries, below: int) -> None:
    """Drop remembered hourly references older than hour ``below``: bounded memory on long runs."""
    for key, val in s.memo.items():
        if key[0] in ("ahref", "usual") and isinstance(val, dict):
            for i in [i for i in val if (i[1] if isinstance(i, tuple) else i) < below]:
                del val[i]


def build_series(
    meter: Meter,
    building: Building,
    timeline: Timeline,
    points: Iterable[tuple[int, float]],
    occupied: list[bool],
    rates: Iterable[tuple[int, float]] = (),
) -> MeterSeries:
    """Hourly consumption of one meter from its raw register readings (and its hourly peak rates)."""
    curve = derive(points, Limits.for_meter(meter))
    n = len(timeline)
    bounds = [*timeline.starts, timeline.end_of(n - 1)] if n else []
    used = curve.deltas(bounds) if n else []
    known = [False] * n
    samples = [0] * n
    recv = curve.received
    if recv and n:
        starts = timeline.starts
        lo, hi = bisect_left(recv, starts[0]), bisect_left(recv, bounds[-1])
        j = 0
        for t in recv[lo:hi]:  # both sorted: one merge pass
            while j + 1 < n and starts[j + 1] <= t:
                j += 1
            samples[j] += 1
        # An hour is known when the readings around it are close enough together to trust its shape:
        # it lies within the data and overlaps no gap longer than ``gap_limit`` (as rollups record it).
        pts = curve.ts or recv
        known = known_hours(pts, bounds, gap_limit(meter), pts[0], pts[-1])
    rate: list[float | None] = [None] * n
    for ts, v in rates:
        i = timeline.index(ts)
        if 0 <= i < n:
            cur = rate[i]
            rate[i] = v if cur is None else max(cur, v)
    return MeterSeries(meter, building, timeline, curve, used, known, samples, occupied, rate=rate)


def occupancy_for(timeline: Timeline, building: Building, calendar: OccupancyCalendar) -> list[bool]:
    return [calendar.is_occupied(building, t) for t in timeline.local]


def build_campus(
    cfg: CampusConfig,
    timeline: Timeline,
    points: dict[str, Sequence[tuple[int, float]]],
    calendar: OccupancyCalendar,
    meters: Iterable[Meter] | None = None,
    rates: dict[str, Sequence[tuple[int, float]]] | None = None,
) -> dict[str, MeterSeries]:
    """Series of every configured meter (an empty series for a meter with no data)."""
    occ: dict[str, list[bool]] = {}
    out: dict[str, MeterSeries] = {}
    for m in meters if meters is not None else cfg.meters:
        b = cfg.building(m.building)
        assert b is not None  # config validation guarantees it
        if b.id not in occ:
            occ[b.id] = occupancy_for(timeline, b, calendar)
        out[m.id] = build_series(m, b, timeline, points.get(m.id, ()), occ[b.id], (rates or {}).get(m.id, ()))
    return out
