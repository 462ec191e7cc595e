"""The consumption policy: cumulative register readings of one meter -> a corrected consumption curve.

This is the one place where counters become consumption (docs/consumption.md):

- readings are ordered by timestamp and de-duplicated (same timestamp: the last one given wins, as
  in InfluxDB), so out-of-order and repeated delivery never change a total;
- a drop that fits a wrap of the register (``rollover`` = the largest value it shows) is a rollover:
  the wrapped amount is added;
- any other drop, or a rise faster than the meter's ``max_rate``, makes the reading a *suspect*.
  The next reading decides: if it continues the old register the suspect was a glitch and is
  quarantined (kept out, reported); if it continues the suspect, the register really restarted
  (reset or replacement, or a jump to a new level): a new segment starts there, and the one
  interval that spans the break is estimated from the neighbouring intervals' rates;
- the curve is linear between readings, so consumption across a gap is spread evenly over the
  time it spans, and a period gets the share of each interval that falls inside it.

Consumption is never negative: the curve only rises.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import lt, sub
from typing import Literal

from campusmon.config import Meter
from campusmon.quantities import QUANTITIES, RATE

EventKind = Literal["rollover", "reset", "level_shift", "quarantined", "conflict", "unconfirmed"]

# Registers are rounded to a step (0.01 kWh, 0.001 m3...); a delta may exceed the true amount by it.
RESOLUTION_SLACK = 0.01
# Without a max rate, a drop is a wrap only if the wrapped amount is under this share of the register.
WRAP_SHARE_WITHOUT_RATE = 0.1


@dataclass(frozen=True, slots=True)
class Limits:
    """What the policy knows about a register: where it wraps and how fast it can credibly rise."""

    rollover: float | None = None  # largest value the register shows (999999.99, 65535...)
    max_per_hour: float | None = None  # register units per hour (kWh/h, m3/h)

    @property
    def modulus(self) -> float | None:
        """The count after which the register shows 0: its maximum plus one least step.

        The step is read from how the maximum is written: 999999.99 -> 0.01, 65535 -> 1.
        """
        if self.rollover is None:
            return None
        text = repr(float(self.rollover))
        whole, _, frac = text.partition(".")
        frac = frac.rstrip("0")
        if "e" in text or not frac:
            return float(self.rollover) + 1.0
        return round(float(self.rollover) + 10.0 ** -len(frac), len(frac))

    @classmethod
    def for_meter(cls, meter: Meter) -> Limits:
        rate = meter.max_rate
        if rate is not None and QUANTITIES[RATE[meter.kind]].unit == "W":
            rate = rate / 1000.0  # W -> kWh per hour (electricity, heat)
        return cls(meter.rollover, rate)

    def allowed(self, dt: int) -> float:
        """Largest credible rise over ``dt`` seconds (infinite without a max rate)."""
        if self.max_per_hour is None:
            return math.inf
        return self.max_per_hour * dt / 3600.0 + RESOLUTION_SLACK


@dataclass(frozen=True, slots=True)
class Event:
    """Something the policy did that a person should be able to see."""

    ts: int
    kind: EventKind
    value: float
    previous: float | None
    detail: str


@dataclass(slots=True)
class Curve:
    """Corrected cumulative consumption of one meter since its first reading: rises, never falls.

    The consumption at reading ``i`` is ``cum[i] - offset``; a clean register is kept as read, with
    its first value as the offset, so the common case copies nothing.
    """

    ts: list[int] = field(default_factory=list)
    cum: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    received: list[int] = field(default_factory=list)  # distinct reading times, quarantined included
    estimated: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, amount)
    offset: float = 0.0

    def at(self, t: float) -> float:
        """Consumption up to ``t``; flat outside the readings, since what is unknown is not counted."""
        return self.at_many([t])[0]

    def at_many(self, bounds: Sequence[float]) -> list[float]:
        """Consumption up to each of ``bounds``, interpolated linearly between readings."""
        ts, cum, off = self.ts, self.cum, self.offset
        if not ts:
            return [0.0] * len(bounds)
        first, last, n = ts[0], ts[-1], len(ts)
        out = []
        for b in bounds:
            if b <= first:
                out.append(0.0)
            elif b >= last:
                out.append(cum[-1] - off)
            else:
                i = bisect_right(ts, b, 1, n)
                t0 = ts[i - 1]
                c0 = cum[i - 1]
                out.append(c0 - off if b == t0 else c0 - off + (cum[i] - c0) * (b - t0) / (ts[i] - t0))
        return out

    def deltas(self, bounds: Sequence[int]) -> list[float]:
        """Consumption in each ``[bounds[k], bounds[k+1])``."""
        c = self.at_many(bounds)
        return list(map(sub, c[1:], c[:-1]))

    def between(self, start: int, end: int) -> float:
        a, b = self.at_many([start, end])
        return b - a

    def count_in(self, start: int, end: int) -> int:
        """Readings received in ``[start, end)``, for data completeness."""
        return bisect_left(self.received, end) - bisect_left(self.received, start)

    @property
    def total(self) -> float:
        """Consumption from the first to the last reading."""
        return self.cum[-1] - self.offset if self.cum else 0.0

    @property
    def first_ts(self) -> int | None:
        return self.ts[0] if self.ts else None

    @property
    def last_ts(self) -> int | None:
        return self.ts[-1] if self.ts else None


def _ordered(ts: list[int], vals: list[float], events: list[Event]) -> tuple[list[int], list[float]]:
    """Sorted, one value per timestamp; a timestamp delivered with two values keeps the last and says so."""
    chosen: dict[int, float] = {}
    for t, v in zip(ts, vals, strict=True):
        old = chosen.get(t)
        if old is not None and old != v and not (old != old and v != v):  # NaN twice is no conflict
            events.append(
                Event(t, "conflict", v, old, "two values for one timestamp; the last one delivered is kept")
            )
        chosen[t] = v
    out_ts = sorted(chosen)
    return out_ts, [chosen[t] for t in out_ts]


def _clean(ts: list[int], vals: list[float], limits: Limits) -> bool:
    """True when every step rises within the credible rate: the common case, checked at C speed."""
    if len(vals) < 2:
        return True
    diffs = list(map(sub, vals[1:], vals[:-1]))
    if min(diffs) < 0:
        return False
    if limits.max_per_hour is None:
        return True
    dts = list(map(sub, ts[1:], ts[:-1]))
    if max(diffs) <= limits.allowed(min(dts)):
        return True
    return all(d <= limits.allowed(dt) for d, dt in zip(diffs, dts, strict=True))


def _step(t0: int, v0: float, t1: int, v1: float, limits: Limits) -> tuple[str, float]:
    """Classify one step: ('ok'|'rollover', amount) or ('drop'|'jump', 0)."""
    d = v1 - v0
    allowed = limits.allowed(t1 - t0)
    if d >= 0:
        return ("ok", d) if d <= allowed else ("jump", 0.0)
    mod = limits.modulus
    if mod is not None and 0 <= v1 < mod and v0 < mod:
        wrapped = mod - v0 + v1
        cap = allowed if limits.max_per_hour is not None else WRAP_SHARE_WITHOUT_RATE * mod
        if wrapped <= cap:
            return "rollover", wrapped
    return "drop", 0.0


def derive(points: Iterable[tuple[int, float]], limits: Limits = Limits()) -> Curve:
    """Apply the policy to one meter's ``(ts, register)`` readings, in any order, duplicates allowed."""
    pts = list(points)
    return derive_columns([int(p[0]) for p in pts], [float(p[1]) for p in pts], limits)


def derive_columns(ts: list[int], vals: list[float], limits: Limits = Limits()) -> Curve:
    """``derive`` for columns as read from the store (integer timestamps); the clean case runs at C speed."""
    curve = Curve()
    if not ts:
        return curve
    if not all(map(lt, ts, islice(ts, 1, None))):
        ts, vals = _ordered(ts, vals, curve.events)
    curve.received = ts
    if min(vals) < 0 or not math.isfinite(sum(vals)):
        keep = [i for i, v in enumerate(vals) if math.isfinite(v) and v >= 0]
        for i in sorted(set(range(len(vals))) - set(keep)):
            curve.events.append(
                Event(ts[i], "quarantined", vals[i], None, "not a register value (negative or not finite)")
            )
        ts, vals = [ts[i] for i in keep], [vals[i] for i in keep]
        if not ts:
            return curve
    if _clean(ts, vals, limits):
        curve.ts, curve.cum, curve.offset = ts, vals, vals[0]
        return curve

    out_ts = [ts[0]]
    out_d = [0.0]
    breaks: list[int] = []  # indices into out_* whose interval spans a segment break
    good_t, good_v = ts[0], vals[0]
    suspect: tuple[int, float, str] | None = None

    def accept(t: int, v: float, amount: float) -> None:
        nonlocal good_t, good_v
        out_ts.append(t)
        out_d.append(amount)
        good_t, good_v = t, v

    def note(kind: EventKind, t: int, v: float, prev: float | None, detail: str) -> None:
        curve.events.append(Event(t, kind, v, prev, detail))

    for t, v in zip(ts[1:], vals[1:], strict=True):
        kind, amount = _step(good_t, good_v, t, v, limits)
        if kind in ("ok", "rollover"):
            if suspect is not None:
                note(
                    "quarantined",
                    suspect[0],
                    suspect[1],
                    good_v,
                    f"isolated {suspect[2]}: the next reading continues the register",
                )
                suspect = None
            if kind == "rollover":
                note(
                    "rollover", t, v, good_v, f"register wrapped at {limits.modulus:g}; {amount:.6g} counted"
                )
            accept(t, v, amount)
            continue
        if suspect is None:
            suspect = (t, v, kind)
            continue
        s_t, s_v, s_kind = suspect
        k2, amount2 = _step(s_t, s_v, t, v, limits)
        if k2 in ("ok", "rollover"):
            if s_kind == "drop":
                note("reset", s_t, s_v, good_v, "register restarted (reset or replacement): new segment")
            else:
                note(
                    "level_shift",
                    s_t,
                    s_v,
                    good_v,
                    "register jumped beyond the max rate and stayed: new segment; jump not counted",
                )
            out_ts.append(s_t)
            out_d.append(0.0)
            breaks.append(len(out_ts) - 1)
            good_t, good_v = s_t, s_v
            if k2 == "rollover":
                note("rollover", t, v, s_v, f"register wrapped at {limits.modulus:g}; {amount2:.6g} counted")
            accept(t, v, amount2)
            suspect = None
        else:
            note("quarantined", s_t, s_v, good_v, f"{s_kind} not confirmed by the next reading")
            suspect = (t, v, kind)
    if suspect is not None:
        note(
            "unconfirmed",
            suspect[0],
            suspect[1],
            good_v,
            f"{suspect[2]} awaits the next reading; not counted yet",
        )

    break_set = set(breaks)
    for i in breaks:
        rates = []
        for j in (i - 1, i + 1):
            if 1 <= j < len(out_ts) and j not in break_set:
                rates.append(out_d[j] / (out_ts[j] - out_ts[j - 1]))
        est = sum(rates) / len(rates) * (out_ts[i] - out_ts[i - 1]) if rates else 0.0
        out_d[i] = est
        curve.estimated.append((out_ts[i - 1], out_ts[i], est))
    curve.ts = out_ts
    curve.cum = list(accumulate(out_d))
    return curve
