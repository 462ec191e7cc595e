"""Monthly cost allocation: a bill per unit from its meters and the tariffs.

A meter a unit owns by name is billed to it in full. A building held by several units is a
shared meter set: its consumption (less the meters owned by name) is split hour by hour by the
rule of ``assessment.allocation_rule`` (docs/assessment.md#allocation):

- ``floor_area`` (default): each unit's floor-area share of the building (``parts[].share``);
- ``occupants``: each unit's people in the building (``parts[].occupants``, else its share of the
  building's occupants) over the people of all the units that hold it.

Each hour is priced by the tariff in force then (time-of-use for electricity), so a split bill adds
up to the building's bill. Carriers without a tariff (gas, heat) are listed with no cost.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from api.accounting import periods
from api.accounting.assessment import assessment_settings
from api.accounting.campus import Scope, highest, scope_meters
from api.accounting.report import csv_text, xlsx_table
from api.accounting.service import Grid, fetch_curves
from api.accounting.settings import AccountingSettings
from api.accounting.units import owned_meters, readings
from campusmon.config import CampusConfig, Meter
from campusmon.factors import NATIVE_UNIT
from campusmon.influx import InfluxStore
from campusmon.quantities import MeterKind

COLUMNS = ["month", "unit", "name", "carrier", "source", "building", "share", "amount", "native_unit",
           "cost", "currency", "completeness"]  # fmt: skip


@dataclass(slots=True)
class Line:
    month: str
    unit: str
    name: str
    carrier: str
    source: str  # "own meters" | "shared building"
    building: str
    share: float
    amount: float
    cost: float | None
    currency: str
    completeness: float | None


def split_weights(cfg: CampusConfig, building: str, rule: str) -> list[tuple[str, float]]:
    """(unit id, share of the shared consumption) of the units holding a building by share or whole."""
    b = cfg.building(building)
    holders = [(u, p) for u in cfg.units for p in u.parts if p.building == building and not p.meters]
    if rule == "occupants" and b is not None:
        people = [
            (u.id, float(p.occupants if p.occupants is not None else (p.share or 1.0) * b.occupants))
            for u, p in holders
        ]
        total = sum(n for _, n in people)
        held = sum((p.share or 1.0) for _, p in holders)
        if total > 0:
            return [(uid, min(1.0, held) * n / total) for uid, n in people]
    return [(u.id, 1.0 if p.share is None else p.share) for u, p in holders]


def monthly_allocation(
    store: InfluxStore, cfg: CampusConfig, acc: AccountingSettings, month: str, now: int | None = None
) -> list[Line]:
    tz = cfg.site.tz
    now = int(time.time()) if now is None else now
    rule = assessment_settings(cfg).allocation_rule
    bucket = periods.month_range(month, tz)
    grid = Grid.build([bucket], cfg, acc)
    curves = fetch_curves(store, cfg, cfg.meters, bucket.start, bucket.end, acc, cfg.rollups.enabled, now)
    upto = min(bucket.end, max(now, bucket.start))
    names = {u.id: u.name or u.id for u in cfg.units}
    out: list[Line] = []

    def cost(kind: MeterKind, hourly: list[float]) -> float | None:
        return grid.cost_per_bucket(kind, hourly)[0]

    def comp(ms: list[Meter]) -> float | None:
        rec, exp = readings(ms, curves, bucket.start, upto)
        return min(1.0, rec / exp) if exp else None

    for kind in MeterKind:
        carrier = kind.value
        for u in cfg.units:
            own = highest(
                cfg, [m for p in u.parts for mid in p.meters if (m := cfg.meter(mid)) and m.kind is kind]
            )
            if own:
                h = grid.hourly(own, curves)
                out.append(Line(bucket.label, u.id, names[u.id], carrier, "own meters", "", 1.0, sum(h),
                                cost(kind, h), acc.tariffs.currency, comp(own)))  # fmt: skip
        for b in cfg.buildings:
            weights = split_weights(cfg, b.id, rule)
            ms = scope_meters(cfg, Scope("building", b.id), kind)
            if not weights or not ms:
                continue
            minus = highest(cfg, [m for m in owned_meters(cfg, b.id) if m.kind is kind])
            whole = grid.hourly(ms, curves)
            out_h = grid.hourly(minus, curves) if minus else [0.0] * len(whole)
            rest = [max(0.0, a - o) for a, o in zip(whole, out_h, strict=True)]
            for uid, w in weights:
                h = [w * v for v in rest]
                out.append(Line(bucket.label, uid, names[uid], carrier, "shared building", b.id, w, sum(h),
                                cost(kind, h), acc.tariffs.currency, comp(ms)))  # fmt: skip
    return out


def line_dict(x: Line) -> dict[str, Any]:
    return {
        "month": x.month,
        "unit": x.unit,
        "name": x.name,
        "carrier": x.carrier,
        "source": x.source,
        "building": x.building,
        "share": round(x.share, 6),
        "amount": round(x.amount, 4),
        "native_unit": NATIVE_UNIT[x.carrier],
        "cost": None if x.cost is None else round(x.cost, 2),
        "currency": x.currency,
        "completeness": None if x.completeness is None else round(x.completeness, 4),
    }


def totals(lines: list[Line]) -> dict[str, dict[str, float | None]]:
    """{unit: {carrier: cost}}: None when some line of it has no price."""
    out: dict[str, dict[str, float | None]] = {}
    for x in lines:
        cur = out.setdefault(x.unit, {}).get(x.carrier, 0.0)
        out[x.unit][x.carrier] = None if cur is None or x.cost is None else cur + x.cost
    return out


def to_csv(lines: list[Line]) -> str:
    return csv_text(COLUMNS, (line_dict(x) for x in lines))


def to_xlsx(lines: list[Line], rule: str) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Allocation"
    xlsx_table(ws, COLUMNS, (line_dict(x) for x in lines))
    tot = wb.create_sheet("Totals")
    tot.append(["unit", "carrier", "cost"])
    for uid, by in totals(lines).items():
        for carrier, c in by.items():
            tot.append([uid, carrier, None if c is None else round(c, 2)])
    info = wb.create_sheet("Rule")
    info.append(["shared meters split by", rule])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
