"""Accounting periods cut at local boundaries of the campus time zone, expressed as UTC seconds.

Days, weeks, months and years start at local midnight, so a day is 23 or 25 hours long on a DST
change; hours are the instants where the local clock shows a whole hour, so the repeated autumn hour
is two buckets. Storage and queries stay in UTC; only the cut is local
(docs/references.md#local-time-buckets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

Period = Literal["hour", "day", "week", "month", "year"]
PERIODS: tuple[str, ...] = get_args(Period)

# Every UTC offset in use is a multiple of 15 minutes, so local whole hours fall on this grid.
_OFFSET_GRID_S = 900


@dataclass(frozen=True, slots=True)
class Bucket:
    """One accounting period: ``[start, end)`` in UTC seconds and its local label."""

    start: int
    end: int
    label: str

    @property
    def hours(self) -> float:
        return (self.end - self.start) / 3600


def local_midnight(d: date, tz: ZoneInfo) -> int:
    """UTC seconds of the first instant of local day ``d``.

    Where midnight does not exist (a DST jump at 00:00), zoneinfo's fold=0 reading maps it to the
    first instant that does, which is where that day starts.
    """
    return int(datetime.combine(d, time(0), tzinfo=tz).timestamp())


def local_date(ts: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def _period_start_date(d: date, period: Period) -> date:
    if period == "week":
        return d - timedelta(days=d.weekday())  # ISO weeks start on Monday
    if period == "month":
        return d.replace(day=1)
    if period == "year":
        return d.replace(month=1, day=1)
    return d


def _next_date(d: date, period: Period) -> date:
    if period == "day":
        return d + timedelta(days=1)
    if period == "week":
        return d + timedelta(days=7)
    if period == "month":
        return date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    if period == "year":
        return date(d.year + 1, 1, 1)
    raise ValueError(f"no calendar step for period {period!r}")


def _label(d: date, period: Period) -> str:
    if period == "week":
        iso = d.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if period == "month":
        return f"{d.year:04d}-{d.month:02d}"
    if period == "year":
        return f"{d.year:04d}"
    return d.isoformat()


def hour_starts(start: int, end: int, tz: ZoneInfo) -> list[int]:
    """UTC seconds of every local whole hour in ``[start, end)``."""
    out = []
    t = start - start % _OFFSET_GRID_S
    if t < start:
        t += _OFFSET_GRID_S
    while t < end:
        # The utcoffset is constant between transitions, so only recompute it on the grid.
        off = datetime.fromtimestamp(t, tz).utcoffset()
        assert off is not None
        if (t + int(off.total_seconds())) % 3600 == 0:
            out.append(t)
            t += 3600
        else:
            t += _OFFSET_GRID_S
    return out


def floor(ts: int, period: Period, tz: ZoneInfo) -> int:
    """Start (UTC seconds) of the local period that contains ``ts``."""
    if period == "hour":
        local = datetime.fromtimestamp(ts, tz)
        return int(local.replace(minute=0, second=0, microsecond=0).timestamp())
    return local_midnight(_period_start_date(local_date(ts, tz), period), tz)


def ceil(ts: int, period: Period, tz: ZoneInfo) -> int:
    """End of the period containing ``ts - 1``: ``ts`` itself when it is already a boundary."""
    start = floor(ts, period, tz)
    return start if start == ts else buckets(start, start + 1, period, tz)[0].end


def buckets(start: int, end: int, period: Period, tz: ZoneInfo) -> list[Bucket]:
    """The local periods that cover ``[start, end)``, the first starting at or before ``start``."""
    if end <= start:
        return []
    if period == "hour":
        starts = hour_starts(floor(start, "hour", tz), end, tz)
        ends = starts[1:] + [hour_starts(starts[-1] + 1, starts[-1] + 7200, tz)[0]]
        return [Bucket(s, e, _hour_label(s, tz)) for s, e in zip(starts, ends, strict=True)]
    d = _period_start_date(local_date(start, tz), period)
    out = []
    s = local_midnight(d, tz)
    while s < end:
        nd = _next_date(d, period)
        e = local_midnight(nd, tz)
        out.append(Bucket(s, e, _label(d, period)))
        d, s = nd, e
    return out


def _hour_label(ts: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="minutes")


def month_range(month: str, tz: ZoneInfo) -> Bucket:
    """The bucket of a ``YYYY-MM`` month."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"month {month!r} is not YYYY-MM (for example 2026-10)")
    d = date(int(m.group(1)), int(m.group(2)), 1)
    return Bucket(local_midnight(d, tz), local_midnight(_next_date(d, "month"), tz), _label(d, "month"))


def previous_year(bucket: Bucket, period: Period, tz: ZoneInfo) -> Bucket:
    """The same local period one year earlier (29 February maps to 28 February)."""
    d = local_date(bucket.start, tz)
    try:
        prev = d.replace(year=d.year - 1)
    except ValueError:
        prev = d.replace(year=d.year - 1, day=28)
    end_d = local_date(bucket.end - 1, tz)
    try:
        prev_end = end_d.replace(year=end_d.year - 1)
    except ValueError:
        prev_end = end_d.replace(year=end_d.year - 1, day=28)
    return Bucket(
        local_midnight(prev, tz), local_midnight(prev_end + timedelta(days=1), tz), f"{bucket.label}-1y"
    )


def parse_local(text: str, tz: ZoneInfo) -> int:
    """An API time: ``YYYY-MM-DD`` is local midnight, a naive datetime is local, an aware one is kept."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return local_midnight(date.fromisoformat(text), tz)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO date or date-time (for example 2026-10-01 or 2026-10-01T08:00)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp())


def iso(ts: int, tz: ZoneInfo) -> str:
    """Local ISO time with its offset, so a client sees both the local cut and the instant."""
    return datetime.fromtimestamp(ts, tz).isoformat()
