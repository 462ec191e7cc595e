"""What the overview, building and meter pages show, computed by the accounting service the JSON API
uses (``api.accounting.service``), so a figure on a page equals the API's figure for the same thing.

The building page's charts all come from one fetch: the consumption curves of the building's meters
over the last eight weeks, cut at half-hour boundaries (heat map), hours (last 7 days, today against
a typical day), nights (base load, water night flow) and the month so far (sub-items).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import func, select

from api.accounting import periods, service, target_repo
from api.accounting.campus import KIND_CODE, UNITS, Scope, building_rows, scope_meters
from api.accounting.consumption import Curve
from api.accounting.settings import AccountingSettings, accounting_settings, calendar_for
from api.alerts.models import Alert
from api.auth.service import Identity
from campusmon.config import Building, CampusConfig, ConfigError, Meter
from campusmon.influx import InfluxStore, QueryError, StoreUnavailable
from campusmon.quantities import MeterKind

HALF_HOUR = 1800
HEATMAP_DAYS = 56
NIGHT = (1, 5)  # local hours [1:00, 5:00): base load and night flow
SEVERITY_ORDER = ("critical", "major", "minor", "warning", "info")
OFFLINE_INTERVALS = 3  # a meter is offline after this many missed reading intervals
MAX_WORKERS = 4


def cfg_of(request: Request) -> CampusConfig:
    return request.app.state.cfg


def store_of(request: Request) -> InfluxStore:
    return request.app.state.store


def settings_of(request: Request) -> AccountingSettings:
    try:
        return accounting_settings(cfg_of(request), "campus config")
    except ConfigError as e:
        raise HTTPException(500, f"accounting configuration is invalid: {e}") from None


def targets_of(request: Request) -> list[service.TargetRecord]:
    """The targets the API's figures are judged against (the same records its routes read)."""
    sessions = getattr(request.app.state, "sessions", None)
    if sessions is None:
        return []
    with sessions() as s:
        return [(t.id, target_repo.as_spec(t)) for t in target_repo.all_targets(s)]


def store_errors(fn: Any, *args: Any, **kw: Any) -> Any:
    """InfluxDB trouble as the HTTP status the API would give (the console renders it as a page)."""
    try:
        return fn(*args, **kw)
    except StoreUnavailable as e:
        raise HTTPException(503, f"InfluxDB is unavailable: {e}") from None
    except QueryError as e:
        raise HTTPException(502, f"InfluxDB refused the query: {e}") from None


def visible_buildings(cfg: CampusConfig, ident: Identity | None) -> list[Building]:
    return [b for b in cfg.buildings if ident is None or ident.sees(b.id)]


def open_alerts(request: Request, buildings: Sequence[str]) -> dict[str, dict[str, int]]:
    """Active live alerts per building and severity."""
    sessions = request.app.state.sessions
    with sessions() as s:
        rows = s.execute(
            select(Alert.building, Alert.severity, func.count())
            .where(Alert.active.is_(True), Alert.source == "live", Alert.building.in_(list(buildings)))
            .group_by(Alert.building, Alert.severity)
        ).all()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for b, sev, n in rows:
        out[b][sev] = int(n)
    return dict(out)


def summaries(
    request: Request, building_ids: Sequence[str], now: int, targets: Sequence[service.TargetRecord]
) -> dict[str, dict[str, Any]]:
    """``building_summary`` of each building, as ``/api/v1/buildings/{id}/summary`` answers it.

    The buildings are asked in parallel: each is one InfluxDB request, and the wait is the server's.
    """
    cfg, store, settings = cfg_of(request), store_of(request), settings_of(request)

    def one(bid: str) -> dict[str, Any]:
        return service.building_summary(store, cfg, settings, bid, targets, now)

    if len(building_ids) <= 1:
        return {b: store_errors(one, b) for b in building_ids}
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(building_ids))) as pool:
        results = list(pool.map(lambda b: store_errors(one, b), building_ids))
    return dict(zip(building_ids, results, strict=True))


# --- overview --------------------------------------------------------------------------------


@dataclass
class KindFigures:
    kind: str
    unit: str
    today: dict[str, Any]
    month: dict[str, Any]

    @property
    def state(self) -> str:
        """ok / near / over: the month's projection against its quota."""
        pct = self.month.get("projected_vs_quota_pct")
        if pct is None:
            return "none"
        return "over" if pct > 0 else "near" if pct > -10 else "ok"


@dataclass
class OverviewRow:
    building: Building
    kinds: dict[str, KindFigures]
    alerts: dict[str, int]
    completeness: float | None

    def fig(self, kind: str) -> KindFigures | None:
        return self.kinds.get(kind)

    def intensity(self, kind: str) -> float | None:
        k = self.kinds.get(kind)
        area = self.building.floor_area_m2
        return k.month["value"] / area if k and area and k.month["value"] is not None else None

    def per_person(self, kind: str) -> float | None:
        k = self.kinds.get(kind)
        people = self.building.occupants
        return k.month["value"] / people if k and people and k.month["value"] is not None else None

    @property
    def alert_total(self) -> int:
        return sum(self.alerts.values())


@dataclass
class Totals:
    today: dict[str, float] = field(default_factory=dict)
    month: dict[str, float] = field(default_factory=dict)
    cost_today: float = 0.0
    cost_month: float = 0.0
    cost_known: bool = True
    unpriced: list[str] = field(default_factory=list)  # kinds used but without a tariff: not in the cost
    co2_today: float = 0.0
    co2_month: float = 0.0
    units: dict[str, str] = field(default_factory=dict)
    last_year: dict[str, float | None] = field(default_factory=dict)
    last_year_label: str = ""


def overview(request: Request, ident: Identity | None) -> dict[str, Any]:
    cfg = cfg_of(request)
    now = int(time.time())
    targets = targets_of(request)
    shown = visible_buildings(cfg, ident)
    ids = [b.id for b in shown]
    sums = summaries(request, ids, now, targets)
    alerts = open_alerts(request, ids)
    rows: list[OverviewRow] = []
    tot = Totals()
    currency = ""
    for b in shown:
        s = sums[b.id]
        currency = s["currency"]
        kinds = {k["kind"]: KindFigures(k["kind"], k["unit"], k["today"], k["month"]) for k in s["kinds"]}
        comps = [k.month["completeness"] for k in kinds.values() if k.month["completeness"] is not None]
        rows.append(OverviewRow(b, kinds, alerts.get(b.id, {}), min(comps) if comps else None))
        for k in kinds.values():
            tot.units[k.kind] = k.unit
            tot.today[k.kind] = tot.today.get(k.kind, 0.0) + (k.today["value"] or 0.0)
            tot.month[k.kind] = tot.month.get(k.kind, 0.0) + (k.month["value"] or 0.0)
            for span, attr in (("today", "cost_today"), ("month", "cost_month")):
                c = getattr(k, span)["cost"]
                if c is None and (getattr(k, span)["value"] or 0) > 0:
                    tot.cost_known = False
                    if k.kind not in tot.unpriced:
                        tot.unpriced.append(k.kind)
                setattr(tot, attr, getattr(tot, attr) + (c or 0.0))
            tot.co2_today += k.today["co2_kg"] or 0.0
            tot.co2_month += k.month["co2_kg"] or 0.0
    if ident is None or not ident.scoped:
        _last_year(request, now, tot)
    sev = {s: sum(r.alerts.get(s, 0) for r in rows) for s in SEVERITY_ORDER}
    return {"rows": rows, "totals": tot, "currency": currency, "severities": SEVERITY_ORDER,
            "alert_totals": sev, "at": now, "month_label": periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label}  # fmt: skip


def _last_year(request: Request, now: int, tot: Totals) -> None:
    """The campus over the same part of the month a year ago, where the store has readings of it."""
    cfg = cfg_of(request)
    tz = cfg.site.tz
    month = periods.buckets(now, now + 1, "month", tz)[0]
    then = periods.previous_year(month, "month", tz)
    end = min(then.end, then.start + (now - month.start))
    if end <= then.start:
        return
    body = store_errors(
        service.consumption_series,
        store_of(request), cfg, settings_of(request), Scope("campus"), "month", then.start, end, now,
    )  # fmt: skip
    tot.last_year_label = then.label
    for s in body["series"]:
        readings = sum(p["readings"] for p in s["points"])
        tot.last_year[s["kind"]] = s["total"] if readings > 0 else None


def ranking(request: Request, ident: Identity | None, metric: str, kind: MeterKind) -> dict[str, Any]:
    """``/api/v1/rankings`` for this month, narrowed to the buildings the identity sees."""
    cfg = cfg_of(request)
    now = int(time.time())
    month = periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label
    rep = store_errors(
        service.monthly_report, store_of(request), cfg, settings_of(request), month, targets_of(request), now
    )
    rows = service.rankings(rep, metric, kind)
    if ident is not None and ident.scoped:
        rows = [r for r in rows if ident.sees(r["building"])]
    return {"month": rep.month, "rows": rows, "threshold": rep.completeness_threshold}


# --- building page ---------------------------------------------------------------------------


def _local(ts: int, cfg: CampusConfig) -> datetime:
    return datetime.fromtimestamp(ts, cfg.site.tz)


def chart_ms(ts: int, cfg: CampusConfig) -> int:
    """Milliseconds of campus-local wall time as if it were UTC: ECharts draws them with ``useUTC``."""
    off = _local(ts, cfg).utcoffset() or timedelta(0)
    return int((ts + off.total_seconds()) * 1000)


def _sum_deltas(curves: dict[str, Curve], meters: Sequence[Meter], bounds: list[int]) -> list[float | None]:
    """Consumption per interval; None where a reporting meter has no reading before or after it.

    Time before a meter's first reading or after its last is unknown, not zero (the consumption
    policy does not count it), so a chart must leave it blank rather than draw a saving.
    """
    out: list[float | None] = [0.0] * (len(bounds) - 1)
    for m in meters:
        c = curves.get(m.id)
        if c is None or not c.ts:
            continue  # a meter that never reported in the window does not blank the building
        first, last = c.ts[0], c.ts[-1]
        for i, v in enumerate(c.deltas(bounds)):
            cur = out[i]
            out[i] = cur + v if cur is not None and first <= bounds[i] and bounds[i + 1] <= last else None
    return out


def live_power(request: Request, building_id: str) -> dict[str, Any]:
    """The newest power reading of each top-level electricity meter of the building (last hour), summed."""
    cfg = cfg_of(request)
    top = scope_meters(cfg, Scope("building", building_id), MeterKind.ELECTRICITY)
    if not top:
        return {"kw": None, "at": None, "meters": 0, "reporting": 0}
    alt = "|".join(sorted(m.id for m in top))
    q = (
        'SELECT last("power_w") FROM "electricity" WHERE time > now() - 1h AND "meter" =~ /^(' + alt + ")$/"
        ' GROUP BY "meter"'
    )
    try:
        series = store_of(request).query(q)
    except QueryError as e:
        if "database not found" in str(e):
            series = []
        else:
            raise HTTPException(502, f"InfluxDB refused the query: {e}") from None
    except StoreUnavailable as e:
        raise HTTPException(503, f"InfluxDB is unavailable: {e}") from None
    total, newest, n = 0.0, None, 0
    for s in series:
        for ts, v in s["values"]:
            if v is not None:
                total += v
                n += 1
                newest = ts if newest is None else max(newest, ts)
    return {"kw": total / 1000 if n else None, "at": newest, "meters": len(top), "reporting": n}


def building_page(request: Request, building_id: str) -> dict[str, Any]:
    cfg = cfg_of(request)
    b = cfg.building(building_id)
    if b is None:
        raise HTTPException(404, f"building {building_id!r} is not in the campus config")
    tz = cfg.site.tz
    now = int(time.time())
    targets = targets_of(request)
    settings = settings_of(request)
    summary = summaries(request, [b.id], now, targets)[b.id]
    today = periods.buckets(now, now + 1, "day", tz)[0]
    month = periods.buckets(now, now + 1, "month", tz)[0]
    start = periods.local_midnight((_local(today.start, cfg) - timedelta(days=HEATMAP_DAYS - 1)).date(), tz)
    own = [m for m in cfg.meters if m.building == b.id]
    curves = store_errors(service.fetch_curves, store_of(request), cfg, own, start, now, settings)
    elec = scope_meters(cfg, Scope("building", b.id), MeterKind.ELECTRICITY)
    water = scope_meters(cfg, Scope("building", b.id), MeterKind.WATER)
    end_hh = now - (now - start) % HALF_HOUR
    bounds = list(range(start, end_hh + 1, HALF_HOUR))
    half = _sum_deltas(curves, elec, bounds) if len(bounds) > 1 else []
    hours = list(range(start, now - (now - start) % 3600 + 1, 3600))
    hourly = _sum_deltas(curves, elec, hours) if len(hours) > 1 else []
    hourly_water = _sum_deltas(curves, water, hours) if len(hours) > 1 else []
    cal = calendar_for(cfg)
    out = {
        "building": b,
        "summary": summary,
        "heatmap": _heatmap(cfg, bounds, half),
        "week": [
            [chart_ms(h, cfg), None if v is None else round(v, 3)]
            for h, v in zip(hours[-169:-1], hourly[-168:], strict=False)
        ],
        "typical": _typical(cfg, cal, today.start, now, hours, hourly),
        "base_load": _nightly(cfg, hours, hourly, "mean"),
        "night_flow": _nightly(cfg, hours, hourly_water, "min") if water else [],
        "sub_items": _sub_items(cfg, b.id, curves, month.start, now),
        "meters": meter_status(cfg, own, curves, now),
        "has_water": bool(water),
        "has_electricity": bool(elec),
        "at": now,
    }
    return out


def _heatmap(cfg: CampusConfig, bounds: list[int], half: list[float | None]) -> dict[str, Any]:
    """Days (rows) by half-hours of the day (columns), kWh per half-hour."""
    days: list[str] = []
    cells = []
    index: dict[str, int] = {}
    for t, v in zip(bounds, half, strict=False):
        lt = _local(t, cfg)
        d = lt.date().isoformat()
        if d not in index:
            index[d] = len(days)
            days.append(d)
        if v is not None:
            cells.append([lt.hour * 2 + lt.minute // 30, index[d], round(v, 3)])
    top = max((c[2] for c in cells), default=0.0)
    return {"days": days, "cells": cells, "max": top}


def _typical(
    cfg: CampusConfig, cal: Any, today_start: int, now: int, hours: list[int], hourly: list[float | None]
) -> dict[str, Any]:
    """Today's hours against the mean of the same hours on earlier days of the same kind (term, weekend…)."""
    kind = cal.day_kind(_local(today_start, cfg).date())
    by_day: dict[str, list[float | None]] = {}
    for h, v in zip(hours, hourly, strict=False):
        lt = _local(h, cfg)
        day = by_day.setdefault(lt.date().isoformat(), [None] * 24)
        day[lt.hour] = None if v is None else (day[lt.hour] or 0.0) + v  # None: no typical day
    today_key = _local(today_start, cfg).date().isoformat()
    same = [
        vals
        for d, vals in by_day.items()
        if d != today_key and cal.day_kind(datetime.fromisoformat(d).date()) == kind and None not in vals
    ]
    typical = [round(sum(v[i] for v in same) / len(same), 3) if same else None for i in range(24)]  # type: ignore[misc]
    mine = by_day.get(today_key, [None] * 24)
    upto = _local(now, cfg).hour
    today = [round(v, 3) if v is not None and i < upto else None for i, v in enumerate(mine)]
    return {"kind": kind, "days": len(same), "today": today, "typical": typical}


def _nightly(cfg: CampusConfig, hours: list[int], values: list[float | None], how: str) -> list[list[Any]]:
    """Per night: the mean (power, kW) or the lowest (flow, m³/h) hourly value between 1:00 and 5:00."""
    nights: dict[str, list[float | None]] = {}
    for h, v in zip(hours, values, strict=False):
        lt = _local(h, cfg)
        if NIGHT[0] <= lt.hour < NIGHT[1]:
            nights.setdefault(lt.date().isoformat(), []).append(v)
    out = []
    for d, vs in sorted(nights.items()):
        known = [v for v in vs if v is not None]
        if len(known) == NIGHT[1] - NIGHT[0]:
            out.append([d, round(sum(known) / len(known) if how == "mean" else min(known), 3)])
    return out


def _sub_items(
    cfg: CampusConfig, building_id: str, curves: dict[str, Curve], start: int, now: int
) -> list[dict[str, Any]]:
    """This month so far per sub-item code of the building (01A00 … 01D00) and per kind total (01000, 02000)."""
    out = []
    for code, kind, ms in building_rows(cfg, building_id):
        if not ms:
            continue
        value = sum(curves[m.id].between(start, now) for m in ms if m.id in curves)
        out.append({"code": code, "kind": kind.value, "value": round(value, 3), "unit": UNITS[kind],
                    "total": code == KIND_CODE.get(kind), "meters": [m.id for m in ms]})  # fmt: skip
    return out


def meter_status(
    cfg: CampusConfig, meters: Sequence[Meter], curves: dict[str, Curve], now: int
) -> list[dict[str, Any]]:
    """Last reading, and whether the meter is offline, had a reading quarantined (24 h) or a reset (7 days)."""
    out = []
    for m in meters:
        c = curves.get(m.id)
        last = c.received[-1] if c is not None and c.received else None
        evs = c.events if c is not None else []
        quarantined = [e for e in evs if e.kind in ("quarantined", "unconfirmed") and e.ts >= now - 86400]
        resets = [
            e for e in evs if e.kind in ("reset", "level_shift", "rollover") and e.ts >= now - 7 * 86400
        ]
        offline = last is None or now - last > OFFLINE_INTERVALS * m.interval_s
        status = "offline" if offline else "quarantined" if quarantined else "reset" if resets else "ok"
        out.append({"meter": m, "last": last, "status": status, "quarantined": len(quarantined),
                    "resets": len(resets), "offline": offline})  # fmt: skip
    return out


# --- meter page ------------------------------------------------------------------------------

RANGES = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
GAP_FACTOR = 2.5  # a gap is this many reading intervals without a reading


def meter_events(cfg: CampusConfig, meter: Meter, curve: Curve, start: int, end: int) -> dict[str, Any]:
    """Gaps, estimated intervals and policy events of one meter's readings in ``[start, end)``."""
    ts = [t for t in curve.received if start <= t < end]
    gaps = [[a, b] for a, b in zip(ts, ts[1:], strict=False) if b - a > GAP_FACTOR * meter.interval_s]
    if ts and ts[0] - start > GAP_FACTOR * meter.interval_s:
        gaps.insert(0, [start, ts[0]])
    if not ts:
        gaps = [[start, end]]
    estimated = [[a, b, amount] for a, b, amount in curve.estimated if b > start and a < end]
    events = [e for e in curve.events if start <= e.ts < end]
    return {"gaps": gaps, "estimated": estimated, "events": events}
