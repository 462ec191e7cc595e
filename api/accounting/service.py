"""Consumption figures from InfluxDB: one request per question, then the policy in Python.

Every figure starts from the raw cumulative registers (``energy_kwh``, ``volume_m3``) of the meters
involved, fetched in one HTTP request of up to three InfluxQL statements per meter kind: the
readings of the period plus a margin, and the nearest reading on each side beyond the margin (so a
long gap across a boundary is still attributed). The consumption policy (``consumption.derive``)
turns each meter's readings into a curve; periods are differences of the curve at local boundaries.
"""

from __future__ import annotations

import gc
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from operator import mul
from typing import Any
from zoneinfo import ZoneInfo

from api.accounting import periods
from api.accounting.campus import (
    FIELDS,
    KIND_CODE,
    SUB_ITEMS,
    UNITS,
    Scope,
    building_rows,
    kind_of_code,
    scope_meters,
)
from api.accounting.consumption import Curve, Limits, derive_columns
from api.accounting.periods import Bucket, Period
from api.accounting.settings import AccountingSettings
from api.accounting.targets import Allowance, TargetSpec, allowance, applies, in_force, strictest
from campusmon.config import CampusConfig, Meter
from campusmon.influx import InfluxStore, QueryError
from campusmon.quantities import MeterKind

MAX_HOURS = 3 * 366 * 24
MAX_EVENTS = 200


# --- reading the registers -------------------------------------------------------------------


def _meter_filter(cfg: CampusConfig, kind: MeterKind, meters: Sequence[Meter]) -> str:
    """No filter for the whole campus (the common, heavy case), else a regex of meter ids."""
    every = {m.id for m in cfg.meters if m.kind is kind}
    if {m.id for m in meters} >= every:
        return ""
    alt = "|".join(re.escape(m.id) for m in sorted(meters, key=lambda m: m.id))
    return f' AND "meter" =~ /^({alt})$/'


def statements(
    cfg: CampusConfig, meters: Sequence[Meter], start: int, end: int, settings: AccountingSettings
) -> list[str]:
    """The InfluxQL behind every figure: readings around ``[start, end)`` and the nearest ones beyond."""
    out = []
    lo, hi = start - settings.margin_s, end + settings.margin_s
    for kind in MeterKind:
        ms = [m for m in meters if m.kind is kind]
        if not ms:
            continue
        f, src, where = FIELDS[kind], kind.value, _meter_filter(cfg, kind, ms)
        by = f'{where} GROUP BY "meter"'
        out.append(f'SELECT "{f}" FROM "{src}" WHERE time >= {lo}s AND time < {hi}s{by}')
        if settings.lookaround_s > settings.margin_s:
            far_lo, far_hi = start - settings.lookaround_s, end + settings.lookaround_s
            out.append(f'SELECT last("{f}") FROM "{src}" WHERE time >= {far_lo}s AND time < {lo}s{by}')
            out.append(f'SELECT first("{f}") FROM "{src}" WHERE time >= {hi}s AND time < {far_hi}s{by}')
    return out


def run_query(store: InfluxStore, stmts: list[str]) -> list[dict[str, Any]]:
    """All statements in one HTTP request; a database that was never written to has no readings."""
    if not stmts:
        return []
    try:
        return store.query(";".join(stmts), chunked=True)
    except QueryError as e:
        if "database not found" in str(e):
            return []
        raise


def curves_from(series: list[dict[str, Any]], meters: Sequence[Meter]) -> dict[str, Curve]:
    """One curve per meter from the statements' series: nearest reading before, the period, nearest after."""
    wanted = {m.id: m for m in meters}
    parts: dict[str, dict[str, list[list[Any]]]] = {m.id: {} for m in meters}
    for s in series:
        mid = s.get("tags", {}).get("meter")
        if mid in wanted and wanted[mid].kind.value == s.get("name"):
            parts[mid].setdefault(s["columns"][1], []).extend(s["values"])
    out = {}
    for mid, p in parts.items():
        rows = p.get("last", []) + p.get(FIELDS[wanted[mid].kind], []) + p.get("first", [])
        ts, vals = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [])
        if None in vals:
            keep = [i for i, v in enumerate(vals) if v is not None]
            ts, vals = [ts[i] for i in keep], [vals[i] for i in keep]
        out[mid] = derive_columns(ts, vals, Limits.for_meter(wanted[mid]))
    return out


@contextmanager
def bulk_decoding() -> Iterator[None]:
    """Pause the cycle collector while a month of readings is decoded and turned into curves.

    Decoding creates millions of small lists; the collector would traverse them again and again
    (a third of the time of a campus month), yet none of them can form a cycle. Collection resumes
    right after; concurrent pauses nest safely because only the outermost one re-enables.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def fetch_curves(
    store: InfluxStore,
    cfg: CampusConfig,
    meters: Sequence[Meter],
    start: int,
    end: int,
    settings: AccountingSettings,
    use_rollups: bool = False,
    upto: int | None = None,
) -> dict[str, Curve]:
    """Each meter's consumption over ``[start, end)``, from raw registers or (``use_rollups``) hours.

    With ``use_rollups`` the curves answer from hourly rollups where they are final (whole local
    hours only: ``deltas``, ``between``, ``count_in`` at hour starts, events, ``last_ts``); the
    figures below use them. ``upto`` is the evaluation time (completeness counts end there).
    """
    with bulk_decoding():
        if use_rollups:
            from api.accounting.rolled import fetch_rolled

            got = fetch_rolled(store, cfg, meters, start, end, settings, upto)
            if got is not None:
                return got  # type: ignore[return-value]  # a RolledCurve answers as a Curve does
        return curves_from(run_query(store, statements(cfg, meters, start, end, settings)), meters)


# --- arithmetic over curves ------------------------------------------------------------------


def expected_readings(meter: Meter, start: int, end: int) -> int:
    return max(0, (end - start) // meter.interval_s)


@dataclass(slots=True)
class Grid:
    """Local hours of a window, the buckets they fall into, and each hour's prices."""

    bounds: list[int]  # hour starts plus the window's end
    bucket_of_hour: list[int]
    buckets: list[Bucket]
    prices: dict[MeterKind, list[float | None]]
    memo: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def build(cls, bks: list[Bucket], cfg: CampusConfig, settings: AccountingSettings) -> Grid:
        tz = cfg.site.tz
        lo, hi = bks[0].start, bks[-1].end
        if (hi - lo) // 3600 > MAX_HOURS:
            raise ValueError(f"the range spans {(hi - lo) // 3600} hours; at most {MAX_HOURS} (three years)")
        hours = periods.hour_starts(lo, hi, tz)
        starts = [b.start for b in bks]
        tariffs = settings.tariffs
        water_by_day: dict[date, float | None] = {}
        water = []
        for h in hours:
            d = periods.local_date(h, tz)
            if d not in water_by_day:
                water_by_day[d] = tariffs.water_price(d)
            water.append(water_by_day[d])
        return cls(
            bounds=hours + [hi],
            bucket_of_hour=[bisect_right(starts, h) - 1 for h in hours],
            buckets=bks,
            prices={MeterKind.ELECTRICITY: tariffs.electricity_prices(hours, tz), MeterKind.WATER: water},
        )

    def hourly(self, meters: Sequence[Meter], curves: dict[str, Curve]) -> list[float]:
        """Summed consumption of the meters in each hour (a meter's hours are computed once per grid)."""
        cols = []
        for m in meters:
            col = self.memo.get(m.id)
            if col is None:
                col = self.memo[m.id] = curves[m.id].deltas(self.bounds)
            cols.append(col)
        if not cols:
            return [0.0] * (len(self.bounds) - 1)
        return cols[0] if len(cols) == 1 else [sum(x) for x in zip(*cols, strict=True)]

    def per_bucket(self, values: list[float]) -> list[float]:
        out = [0.0] * len(self.buckets)
        for b, v in zip(self.bucket_of_hour, values, strict=True):
            out[b] += v
        return out

    def cost_per_bucket(self, kind: MeterKind, values: list[float]) -> list[float | None]:
        """Money per bucket; None where some consumption falls in an hour without a price."""
        prices = self.prices.get(kind) or [None] * len(values)  # a carrier without a tariff has no cost
        out: list[float | None] = [0.0] * len(self.buckets)
        if all(p is not None for p in prices):
            for b, c in zip(self.bucket_of_hour, map(mul, values, prices), strict=True):  # type: ignore[arg-type]
                out[b] += c  # type: ignore[operator]
            return out
        for b, v, p in zip(self.bucket_of_hour, values, prices, strict=True):
            if out[b] is None:
                continue
            if p is None:
                if v > 0:
                    out[b] = None
                continue
            out[b] += v * p  # type: ignore[operator]
        return out


def co2_kg(settings: AccountingSettings, kind: MeterKind, kwh: float, year: int) -> float | None:
    if kind is not MeterKind.ELECTRICITY:
        return None  # no water factor in the sources (docs/references.md#gaps); not invented
    return kwh * settings.tariffs.co2_factor(year).kg_per_kwh


def completeness(meters: Sequence[Meter], curves: dict[str, Curve], start: int, end: int) -> tuple[int, int]:
    """(received, expected) readings of the meters in ``[start, end)``."""
    received = sum(curves[m.id].count_in(start, end) for m in meters if m.id in curves)
    expected = sum(expected_readings(m, start, end) for m in meters)
    return received, expected


def share(received: int, expected: int) -> float:
    return min(1.0, received / expected) if expected else 0.0


def events_in(curves: dict[str, Curve], ids: Sequence[str], start: int, end: int) -> list[dict[str, Any]]:
    out = []
    for mid in ids:
        for e in curves[mid].events if mid in curves else []:
            if start <= e.ts < end:
                out.append({"meter": mid, **asdict(e)})
    out.sort(key=lambda e: (e["ts"], e["meter"]))
    return out


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


# --- the consumption series ------------------------------------------------------------------


def consumption_series(
    store: InfluxStore,
    cfg: CampusConfig,
    settings: AccountingSettings,
    scope: Scope,
    period: Period,
    start: int,
    end: int,
    now: int | None = None,
    use_rollups: bool | None = None,
) -> dict[str, Any]:
    """Consumption, cost and CO2 of a scope per local period, with completeness and policy events."""
    tz = cfg.site.tz
    now = int(time.time()) if now is None else now
    bks = periods.buckets(start, end, period, tz)
    if not bks:
        raise ValueError("end must be after start")
    kinds = [kind_of_code(scope.id)] if scope.type == "category" else list(MeterKind)
    chosen = {k: scope_meters(cfg, scope, k) for k in kinds}
    all_meters = [m for ms in chosen.values() for m in ms]
    lo, hi = bks[0].start, bks[-1].end
    grid = Grid.build(bks, cfg, settings)
    use = cfg.rollups.enabled if use_rollups is None else use_rollups
    curves = fetch_curves(store, cfg, all_meters, lo, hi, settings, use, now)
    out_series = []
    for kind, ms in chosen.items():
        if not ms:
            continue
        hourly = grid.hourly(ms, curves)
        values = grid.per_bucket(hourly)
        costs = grid.cost_per_bucket(kind, hourly)
        points = []
        for b, v, c in zip(bks, values, costs, strict=True):
            rec, exp = completeness(ms, curves, b.start, min(b.end, max(now, b.start)))
            points.append(
                {
                    "label": b.label,
                    "start": periods.iso(b.start, tz),
                    "end": periods.iso(b.end, tz),
                    "hours": b.hours,
                    "value": _r(v),
                    "cost": _r(c, 2),
                    "co2_kg": _r(co2_kg(settings, kind, v, periods.local_date(b.start, tz).year), 3),
                    "readings": rec,
                    "expected_readings": exp,
                    "completeness": _r(share(rec, exp), 4),
                }
            )
        out_series.append(
            {
                "kind": kind.value,
                "quantity": FIELDS[kind],
                "unit": UNITS[kind],
                "meters": [m.id for m in ms],
                "total": _r(sum(values)),
                "cost": _r(_sum_or_none(costs), 2),
                "co2_kg": _r(sum(p["co2_kg"] or 0.0 for p in points), 3)
                if kind is MeterKind.ELECTRICITY
                else None,
                "points": points,
            }
        )
    ev = events_in(curves, [m.id for m in all_meters], lo, hi)
    year = periods.local_date(lo, tz).year
    factor = settings.tariffs.co2_factor(year)
    return {
        "scope": scope.label,
        "period": period,
        "timezone": cfg.site.timezone,
        "start": periods.iso(lo, tz),
        "end": periods.iso(hi, tz),
        "currency": settings.tariffs.currency,
        "co2_factor": factor.model_dump(),
        "series": out_series,
        "events": ev[:MAX_EVENTS],
        "events_total": len(ev),
    }


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


# --- targets over a period -------------------------------------------------------------------


TargetRecord = tuple[int | None, TargetSpec]


def _area_people(cfg: CampusConfig, scope: str, scope_id: str) -> tuple[float, int]:
    if scope == "unit":  # its floor-area shares of buildings, as the assessment counts them
        from api.accounting import units

        u = cfg.unit(scope_id)
        return (0.0, 0) if u is None else (units.floor_area(cfg, u), round(units.occupants(cfg, u)))
    bs = [
        b
        for b in cfg.buildings
        if scope == "campus"
        or (scope == "building" and b.id == scope_id)
        or (scope == "group" and b.group == scope_id)
    ]
    return sum(b.floor_area_m2 for b in bs), sum(b.occupants for b in bs)


@dataclass(slots=True)
class Baselines:
    """Consumption of baseline periods, fetched in one request for every reduction target that needs it."""

    values: dict[tuple[int, int], dict[str, Curve]] = field(default_factory=dict)

    def fetch(
        self,
        store: InfluxStore,
        cfg: CampusConfig,
        settings: AccountingSettings,
        windows: set[tuple[int, int]],
        meters: Sequence[Meter],
    ) -> None:
        for w in sorted(windows - set(self.values)):
            self.values[w] = fetch_curves(store, cfg, meters, w[0], w[1], settings, cfg.rollups.enabled)

    def amount(self, window: tuple[int, int], meters: Sequence[Meter]) -> float | None:
        """The meters' consumption in the window; None when none of them reported then (no baseline)."""
        cs = [c for m in meters if (c := self.values.get(window, {}).get(m.id)) is not None]
        if not any(c.count_in(*window) for c in cs):
            return None
        return sum(c.between(*window) for c in cs)

    def terms_amount(self, window: tuple[int, int], terms: Sequence[Any]) -> float | None:
        """A unit's consumption in the window, its shares applied; None when none of its meters reported."""
        from api.accounting.units import amount, term_meters

        curves = self.values.get(window, {})
        if not any(c.count_in(*window) for m in term_meters(terms) if (c := curves.get(m.id)) is not None):
            return None
        return amount(terms, curves, *window)


def baseline_window(spec: TargetSpec, bucket: Bucket, period: Period, tz: Any) -> tuple[int, int]:
    if spec.baseline_start is not None and spec.baseline_end is not None:
        return (
            periods.local_midnight(spec.baseline_start, tz),
            periods.local_midnight(spec.baseline_end + timedelta(days=1), tz),
        )
    prev = periods.previous_year(bucket, period, tz)
    return prev.start, prev.end


def _days(start: int, end: int, tz: Any) -> tuple[date, int]:
    first = periods.local_date(start, tz)
    last = periods.local_date(end - 1, tz)
    return first, (last - first).days + 1


def evaluate_targets(
    cfg: CampusConfig,
    targets: Sequence[TargetRecord],
    scope: str,
    scope_id: str,
    kind: MeterKind,
    code: str,
    meters: Sequence[Meter],
    bucket: Bucket,
    period: Period,
    baselines: Baselines | None = None,
    terms: Sequence[Any] | None = None,
) -> Allowance | None:
    """The binding allowance of the targets that apply to one row (``meters``) over one bucket.

    ``terms`` (a unit's ``units.Term`` list) make a reduction's baseline the unit's share, not a plain sum.
    """
    tz = cfg.site.tz
    first, days = _days(bucket.start, bucket.end, tz)
    last = first + timedelta(days=days - 1)
    area, people = _area_people(cfg, scope, scope_id)
    found = []
    for tid, spec in targets:
        if not applies(spec, scope, scope_id, kind, code) or not in_force(spec, first, last):
            continue
        base = None
        if spec.type == "reduction":
            w = baseline_window(spec, bucket, period, tz)
            if baselines is None:
                amt = None
            elif terms is not None:
                amt = baselines.terms_amount(w, terms)
            else:
                amt = baselines.amount(w, meters)
            base = None if amt is None else (amt, _days(w[0], w[1], tz)[1])
        a = allowance(spec, first, days, area, people, base, tid)
        if a is not None:
            found.append(a)
    return strictest(found)


def baseline_windows(
    cfg: CampusConfig, targets: Sequence[TargetRecord], bucket: Bucket, period: Period
) -> set[tuple[int, int]]:
    tz = cfg.site.tz
    return {baseline_window(spec, bucket, period, tz) for _, spec in targets if spec.type == "reduction"}


# --- monthly report --------------------------------------------------------------------------


@dataclass(slots=True)
class ReportRow:
    month: str
    scope: str
    scope_id: str
    name: str
    building_type: str
    category: str
    category_name: str
    kind: str
    unit: str
    consumption: float
    floor_area_m2: float
    occupants: int
    intensity: float | None  # per m2 over the month
    per_capita_day: float | None  # per person per day (litres for water)
    target: float | None
    target_type: str | None
    target_id: int | None
    deviation_pct: float | None
    cost: float | None
    currency: str
    co2_kg: float | None
    readings_received: int
    readings_expected: int
    completeness: float
    low_completeness: bool
    resets: int
    quarantined: int
    rollovers: int
    estimated: float


@dataclass(slots=True)
class MonthlyReport:
    month: str
    timezone: str
    start: str
    end: str
    co2_factor: dict[str, Any]
    rows: list[ReportRow]
    events: list[dict[str, Any]]
    completeness_threshold: float = 0.9


def _row(
    cfg: CampusConfig,
    settings: AccountingSettings,
    grid: Grid,
    curves: dict[str, Curve],
    targets: Sequence[TargetRecord],
    baselines: Baselines,
    bucket: Bucket,
    now: int,
    scope: str,
    scope_id: str,
    name: str,
    btype: str,
    code: str,
    kind: MeterKind,
    ms: list[Meter],
) -> ReportRow:
    tz = cfg.site.tz
    hourly = grid.hourly(ms, curves)
    value = sum(hourly)
    cost = _sum_or_none(grid.cost_per_bucket(kind, hourly))
    area, people = _area_people(cfg, scope, scope_id)
    _, days = _days(bucket.start, bucket.end, tz)
    rec, exp = completeness(ms, curves, bucket.start, min(bucket.end, max(now, bucket.start)))
    comp = share(rec, exp)
    a = evaluate_targets(cfg, targets, scope, scope_id, kind, code, ms, bucket, "month", baselines)
    ids = {m.id for m in ms}
    evs = [e for mid in ids for e in curves[mid].events if bucket.start <= e.ts < bucket.end]
    est = sum(
        x[2] for mid in ids for x in curves[mid].estimated if bucket.start <= x[1] and x[0] < bucket.end
    )
    return _assemble(
        settings, bucket, tz, (scope, scope_id, name, btype), code, kind, value, cost, (area, people, days),
        (rec, exp, comp), a, evs, est,
    )  # fmt: skip


def _assemble(
    settings: AccountingSettings,
    bucket: Bucket,
    tz: ZoneInfo,
    who: tuple[str, str, str, str],
    code: str,
    kind: MeterKind,
    value: float,
    cost: float | None,
    size: tuple[float, float, int | float],
    counts: tuple[int, int, float],
    a: Any,
    evs: Sequence[Any],
    est: float,
) -> ReportRow:
    """One report row from what a building, group, campus or unit row computed its own way."""
    scope, scope_id, name, btype = who
    area, people, days = size
    rec, exp, comp = counts
    per_cap_unit = 1000.0 if kind is MeterKind.WATER else 1.0
    return ReportRow(
        month=bucket.label,
        scope=scope,
        scope_id=scope_id,
        name=name,
        building_type=btype,
        category=code,
        category_name=SUB_ITEMS.get(code, code),
        kind=kind.value,
        unit=UNITS[kind],
        consumption=value,
        floor_area_m2=area,
        occupants=people,
        intensity=value / area if area > 0 else None,
        per_capita_day=value * per_cap_unit / people / days if people > 0 else None,
        target=a.amount if a else None,
        target_type=a.type if a else None,
        target_id=a.target_id if a else None,
        deviation_pct=(value - a.amount) / a.amount * 100 if a and a.amount > 0 else None,
        cost=cost,
        currency=settings.tariffs.currency,
        co2_kg=co2_kg(settings, kind, value, periods.local_date(bucket.start, tz).year),
        readings_received=rec,
        readings_expected=exp,
        completeness=comp,
        low_completeness=comp < settings.completeness_threshold,
        resets=sum(e.kind in ("reset", "level_shift") for e in evs),
        quarantined=sum(e.kind in ("quarantined", "unconfirmed") for e in evs),
        rollovers=sum(e.kind == "rollover" for e in evs),
        estimated=est,
    )


def _unit_row(
    cfg: CampusConfig,
    settings: AccountingSettings,
    curves: dict[str, Curve],
    targets: Sequence[TargetRecord],
    baselines: Baselines,
    bucket: Bucket,
    now: int,
    unit: Any,
    kind: MeterKind,
    terms: Sequence[Any],
) -> ReportRow:
    """A unit's month of one carrier: its shares of buildings applied (``units.amount``), as everywhere.

    No cost: a unit's bill splits shared meters hour by hour (``/api/v1/allocation/monthly``).
    """
    from api.accounting.units import amount, term_meters

    tz = cfg.site.tz
    code = KIND_CODE[kind]
    ms = term_meters(terms)
    value = amount(terms, curves, bucket.start, bucket.end)
    area, people = _area_people(cfg, "unit", unit.id)
    _, days = _days(bucket.start, bucket.end, tz)
    rec, exp = completeness(ms, curves, bucket.start, min(bucket.end, max(now, bucket.start)))
    comp = share(rec, exp)
    a = evaluate_targets(cfg, targets, "unit", unit.id, kind, code, ms, bucket, "month", baselines, terms)
    ids = {m.id for m in ms}
    evs = [e for mid in ids if mid in curves for e in curves[mid].events if bucket.start <= e.ts < bucket.end]
    est = sum(
        t.factor * x[2]
        for t in terms
        for m in t.meters
        if m.id in curves
        for x in curves[m.id].estimated
        if bucket.start <= x[1] and x[0] < bucket.end
    )
    return _assemble(
        settings, bucket, tz, ("unit", unit.id, unit.name or unit.id, ""), code, kind, value, None,
        (area, people, days), (rec, exp, comp), a, evs, est,
    )  # fmt: skip


def monthly_report(
    store: InfluxStore,
    cfg: CampusConfig,
    settings: AccountingSettings,
    month: str,
    targets: Sequence[TargetRecord] = (),
    now: int | None = None,
    progress: Callable[[str], None] | None = None,
    use_rollups: bool | None = None,
) -> MonthlyReport:
    """Per building and sub-item, then per group, per unit and for the campus: one InfluxDB request for the month.

    ``progress`` is called once per building (the command line draws its bar with it).
    """
    tz = cfg.site.tz
    now = int(time.time()) if now is None else now
    bucket = periods.month_range(month, tz)
    grid = Grid.build([bucket], cfg, settings)
    folded = None
    if (cfg.rollups.enabled if use_rollups is None else use_rollups) and now >= bucket.end:
        from api.accounting.rolled import month_by_hour_of_day

        # A closed month: InfluxDB sums the rolled-up hours per meter and hour of day.
        with bulk_decoding():
            folded = month_by_hour_of_day(store, cfg, settings, grid)
    if folded is not None:
        grid, curves = folded  # type: ignore[assignment]
    else:
        use = cfg.rollups.enabled if use_rollups is None else use_rollups
        curves = fetch_curves(store, cfg, cfg.meters, bucket.start, bucket.end, settings, use, now)
    baselines = Baselines()
    windows = baseline_windows(cfg, targets, bucket, "month")
    if windows:
        baselines.fetch(store, cfg, settings, windows, cfg.meters)
    rows: list[ReportRow] = []
    common = (cfg, settings, grid, curves, targets, baselines, bucket, now)
    for b in cfg.buildings:
        for code, kind, ms in building_rows(cfg, b.id):
            rows.append(_row(*common, "building", b.id, b.name or b.id, b.type, code, kind, ms))
        if progress is not None:
            progress(b.id)
    groups = sorted({b.group for b in cfg.buildings if b.group})
    # Electricity and water rows are always there; other carriers only where the campus meters them.
    metered = {m.kind for m in cfg.meters} | {MeterKind.ELECTRICITY, MeterKind.WATER}
    kinds = [k for k in MeterKind if k in metered]
    for g in groups:
        for kind in kinds:
            ms = scope_meters(cfg, Scope("group", g), kind)
            rows.append(_row(*common, "group", g, g, "", KIND_CODE[kind], kind, ms))
    if cfg.units:
        from api.accounting.units import unit_terms

        for u in cfg.units:  # each organisational unit, its floor-area shares of shared buildings applied
            for kind in kinds:
                if terms := unit_terms(cfg, u, kind):
                    rows.append(
                        _unit_row(cfg, settings, curves, targets, baselines, bucket, now, u, kind, terms)
                    )
    for kind in kinds:
        ms = scope_meters(cfg, Scope("campus"), kind)
        rows.append(_row(*common, "campus", "", cfg.site.name, "", KIND_CODE[kind], kind, ms))
    ev = events_in(curves, [m.id for m in cfg.meters], bucket.start, bucket.end)
    return MonthlyReport(
        month=bucket.label,
        timezone=cfg.site.timezone,
        start=periods.iso(bucket.start, tz),
        end=periods.iso(bucket.end, tz),
        co2_factor=settings.tariffs.co2_factor(int(month[:4])).model_dump(),
        rows=rows,
        events=ev,
        completeness_threshold=settings.completeness_threshold,
    )


# --- rankings --------------------------------------------------------------------------------

METRICS = ("intensity", "per_capita", "vs_target")


def rankings(report: MonthlyReport, metric: str, kind: MeterKind) -> list[dict[str, Any]]:
    """Buildings best first (lowest value).

    A building the metric cannot rate (no floor area, no occupants, no target) or whose data is
    under the completeness threshold comes last, unranked: missing readings must not look like saving.
    """
    key = {"intensity": "intensity", "per_capita": "per_capita_day", "vs_target": "deviation_pct"}[metric]
    rows = [r for r in report.rows if r.scope == "building" and r.category == KIND_CODE[kind]]

    def ratable(r: ReportRow) -> bool:
        return getattr(r, key) is not None and not r.low_completeness

    rated = sorted((r for r in rows if ratable(r)), key=lambda r: (getattr(r, key), r.scope_id))
    unrated = sorted((r for r in rows if not ratable(r)), key=lambda r: r.scope_id)
    unit = UNITS[kind]
    units = {
        "intensity": f"{unit}/m2",
        "per_capita": "L/person/day" if kind is MeterKind.WATER else f"{unit}/person/day",
        "vs_target": "% vs target",
    }
    out = []
    for i, r in enumerate(rated + unrated):
        out.append(
            {
                "rank": i + 1 if i < len(rated) else None,
                "why_unranked": None if i < len(rated) else _why_unranked(r, key, metric),
                "building": r.scope_id,
                "name": r.name,
                "type": r.building_type,
                "value": _r(getattr(r, key)),
                "unit": units[metric],
                "consumption": _r(r.consumption),
                "target": _r(r.target),
                "completeness": _r(r.completeness),
                "low_completeness": r.low_completeness,
            }
        )
    return out


def _why_unranked(r: ReportRow, key: str, metric: str) -> str:
    if r.low_completeness:
        return f"only {r.completeness:.0%} of the expected readings"
    need = {"intensity": "no floor area", "per_capita": "no occupants", "vs_target": "no target"}
    return need[metric]


# --- building summary ------------------------------------------------------------------------


def building_summary(
    store: InfluxStore,
    cfg: CampusConfig,
    settings: AccountingSettings,
    building_id: str,
    targets: Sequence[TargetRecord] = (),
    now: int | None = None,
) -> dict[str, Any]:
    """Today and this month so far against quota, with a linear projection to the end of the month.

    The projection scales the month so far by (month length / time covered by data), with the time
    covered ending at the newest reading, so late data does not read as low consumption.
    """
    tz = cfg.site.tz
    now = int(time.time()) if now is None else now
    b = cfg.building(building_id)
    assert b is not None
    month = periods.buckets(now, now + 1, "month", tz)[0]
    today = periods.buckets(now, now + 1, "day", tz)[0]
    rows = [
        (code, kind, ms) for code, kind, ms in building_rows(cfg, building_id) if code in KIND_CODE.values()
    ]
    meters = [m for _, _, ms in rows for m in ms]
    curves = fetch_curves(store, cfg, meters, month.start, now, settings, cfg.rollups.enabled, now)
    baselines = Baselines()
    windows = baseline_windows(cfg, targets, month, "month") | baseline_windows(cfg, targets, today, "day")
    if windows:
        baselines.fetch(store, cfg, settings, windows, meters)
    # Two buckets, "month before today" and "today so far", both ending by ``now``.
    grid = Grid.build(
        [Bucket(month.start, today.start, "before"), Bucket(today.start, now, "today")]
        if today.start > month.start
        else [Bucket(month.start, now, "today")],
        cfg,
        settings,
    )
    out: dict[str, Any] = {
        "building": b.id,
        "name": b.name,
        "type": b.type,
        "floor_area_m2": b.floor_area_m2,
        "occupants": b.occupants,
        "timezone": cfg.site.timezone,
        "at": periods.iso(now, tz),
        "currency": settings.tariffs.currency,
        "kinds": [],
    }
    for code, kind, ms in rows:
        if not ms:
            continue
        cs = [curves[m.id] for m in ms]
        hourly = grid.hourly(ms, curves)
        costs = grid.cost_per_bucket(kind, hourly)
        per = grid.per_bucket(hourly)
        month_value, today_value = sum(per), per[-1]
        month_cost = _sum_or_none(costs)
        lasts = [c.last_ts for c in cs if c.last_ts is not None and c.last_ts > month.start]
        covered_until = min(max(lasts), now) if lasts else None
        projected = (
            month_value * (month.end - month.start) / (covered_until - month.start)
            if covered_until and covered_until > month.start
            else None
        )
        q_today = evaluate_targets(cfg, targets, "building", b.id, kind, code, ms, today, "day", baselines)
        q_month = evaluate_targets(cfg, targets, "building", b.id, kind, code, ms, month, "month", baselines)
        rec_t, exp_t = completeness(ms, curves, today.start, now)
        rec_m, exp_m = completeness(ms, curves, month.start, now)
        year = periods.local_date(month.start, tz).year
        out["kinds"].append(
            {
                "kind": kind.value,
                "unit": UNITS[kind],
                "meters": [m.id for m in ms],
                "today": {
                    "label": today.label,
                    "value": _r(today_value),
                    "cost": _r(costs[-1], 2),
                    "co2_kg": _r(co2_kg(settings, kind, today_value, year), 3),
                    "quota": _r(q_today.amount if q_today else None),
                    "share_of_quota": _r(
                        today_value / q_today.amount if q_today and q_today.amount else None
                    ),
                    "completeness": _r(share(rec_t, exp_t)),
                },
                "month": {
                    "label": month.label,
                    "value": _r(month_value),
                    "cost": _r(month_cost, 2),
                    "co2_kg": _r(co2_kg(settings, kind, month_value, year), 3),
                    "quota": _r(q_month.amount if q_month else None),
                    "share_of_quota": _r(
                        month_value / q_month.amount if q_month and q_month.amount else None
                    ),
                    "projected": _r(projected),
                    "projected_vs_quota_pct": _r(
                        (projected - q_month.amount) / q_month.amount * 100
                        if projected is not None and q_month and q_month.amount
                        else None,
                        2,
                    ),
                    "data_until": periods.iso(covered_until, tz) if covered_until else None,
                    "completeness": _r(share(rec_m, exp_m)),
                },
            }
        )
    out["events"] = events_in(curves, [m.id for m in meters], month.start, now + 1)[:MAX_EVENTS]
    return out
