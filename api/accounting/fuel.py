"""Fuel deliveries, stock-takings and meter readings entered by hand.

Stock fuels (coal, diesel, petrol, LPG) are not metered: they are bought, stored and burnt. Each
delivery is entered from its receipt (date, quantity, unit, supplier, receipt number, and the
building or unit it went to); a stock-taking records what was left on a day. How a year's
consumption is attributed is chosen per fuel (``assessment.fuel_attribution``):

- ``delivery`` (default): what was delivered in the period is what was used in it. Right for
  fuel bought as it is burnt (generator diesel, vehicle petrol, LPG bottles).
- ``stock``: between two stock-takings, consumption = stock at the first + deliveries from its
  day up to the next one − stock at the next, spread evenly over the days between them (the same
  linear rule as a meter gap). Days outside any pair of stock-takings fall back to ``delivery``.

Hand-read meters go through the one ingest path (``campusmon.ingest``), so their readings are
validated, dead-lettered and turned into consumption exactly like those a gateway sends.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.accounting.units import building_shares
from campusmon.config import CampusConfig
from campusmon.db import FuelEntry
from campusmon.factors import FUELS, Factors

# Units a fuel may be entered in, and what a unit means in kg (litres need the density).
FUEL_UNITS: dict[str, tuple[str, ...]] = {
    "coal": ("t", "kg"),
    "diesel": ("L", "kg", "t"),
    "petrol": ("L", "kg", "t"),
    "lpg": ("kg", "t"),
}
_UNIT_ALIASES = {"l": "L", "litre": "L", "liter": "L", "KG": "kg", "T": "t", "ton": "t", "tonne": "t"}
MAX_QUANTITY_KG = 1e9  # a million tonnes on one receipt is a typing error, not a delivery


class FuelInvalid(ValueError):
    """An entry that cannot be accepted; the message names the field and the problem."""

    def __init__(self, message: str, field: str = "", conflict: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.conflict = conflict


@dataclass(frozen=True, slots=True)
class FuelInput:
    fuel: str
    day: date
    quantity: float
    unit: str
    building: str | None = None
    org_unit: str | None = None
    supplier: str = ""
    receipt: str | None = None
    entry: str = "delivery"
    density_kg_per_l: float | None = None
    note: str = ""


def to_kg(fuel: str, quantity: float, unit: str, density: float) -> float:
    unit = _UNIT_ALIASES.get(unit, unit)
    if unit == "kg":
        return quantity
    if unit == "t":
        return quantity * 1000.0
    if unit == "L":
        return quantity * density
    raise FuelInvalid(f"unit {unit!r} is not one of {', '.join(FUEL_UNITS[fuel])} for {fuel}", "unit")


def validate(cfg: CampusConfig, factors: Factors, e: FuelInput) -> tuple[FuelInput, float]:
    """The normalised entry and its mass in kg, or FuelInvalid naming what is wrong."""
    if e.fuel not in FUELS:
        raise FuelInvalid(
            f"fuel {e.fuel!r} is not one of {', '.join(FUELS)} (gas, heat, electricity and water are metered)",
            "fuel",
        )
    if e.entry not in ("delivery", "stock"):
        raise FuelInvalid(f"entry {e.entry!r} is not delivery or stock", "entry")
    unit = _UNIT_ALIASES.get(e.unit, e.unit)
    if unit not in FUEL_UNITS[e.fuel]:
        raise FuelInvalid(
            f"unit {e.unit!r} does not fit {e.fuel}: use {', '.join(FUEL_UNITS[e.fuel])}", "unit"
        )
    if not isinstance(e.quantity, int | float) or not math.isfinite(e.quantity):
        raise FuelInvalid("quantity must be a finite number", "quantity")
    if e.quantity < 0:
        raise FuelInvalid(f"quantity {e.quantity:g} is negative; a return is entered as a stock-taking", "quantity")
    if e.quantity == 0 and e.entry == "delivery":
        raise FuelInvalid("a delivery of 0 is not a delivery", "quantity")
    if e.density_kg_per_l is not None and not 0.3 < e.density_kg_per_l < 1.5:
        raise FuelInvalid(f"density {e.density_kg_per_l:g} kg/L is outside 0.3–1.5", "density_kg_per_l")
    if (e.building is None) == (e.org_unit is None):
        raise FuelInvalid("give exactly one of building or unit (where the fuel went)", "building")
    if e.building is not None and cfg.building(e.building) is None:
        raise FuelInvalid(f"building {e.building!r} is not in the campus config", "building")
    if e.org_unit is not None and cfg.unit(e.org_unit) is None:
        known = ", ".join(u.id for u in cfg.units) or "none configured"
        raise FuelInvalid(f"unit {e.org_unit!r} is not in the campus config (units: {known})", "unit_id")
    if e.entry == "delivery" and not (e.receipt or "").strip():
        raise FuelInvalid("a delivery needs its receipt number", "receipt")
    if e.day > date.today() + timedelta(days=1):
        raise FuelInvalid(f"date {e.day} is in the future", "day")
    density = e.density_kg_per_l if e.density_kg_per_l is not None else None
    if unit == "L" and density is None:
        density = factors.density(e.fuel)
    kg = to_kg(e.fuel, float(e.quantity), unit, density or 0.0)
    if kg > MAX_QUANTITY_KG:
        raise FuelInvalid(f"quantity {e.quantity:g} {unit} is implausibly large", "quantity")
    receipt = (e.receipt or "").strip() or None
    norm = FuelInput(
        e.fuel, e.day, float(e.quantity), unit, e.building, e.org_unit, e.supplier.strip(), receipt,
        e.entry, density if unit == "L" else e.density_kg_per_l, e.note,
    )  # fmt: skip
    return norm, kg


def add_entry(s: Session, cfg: CampusConfig, factors: Factors, e: FuelInput, who: str) -> dict[str, Any]:
    """Store one entry; a receipt already entered (same supplier and number) is refused, naming it."""
    norm, kg = validate(cfg, factors, e)
    if norm.receipt is not None:
        dup = s.scalars(
            select(FuelEntry).where(FuelEntry.supplier == norm.supplier, FuelEntry.receipt == norm.receipt)
        ).first()
        if dup is not None:
            raise FuelInvalid(
                f"receipt {norm.receipt!r} of supplier {norm.supplier or '(none)'!r} is already entered "
                f"(entry {dup.id}, {dup.quantity:g} {dup.unit} {dup.fuel} on {dup.day})",
                "receipt",
                conflict=True,
            )
    row = FuelEntry(
        entry=norm.entry, fuel=norm.fuel, day=norm.day, quantity=norm.quantity, unit=norm.unit,
        density_kg_per_l=norm.density_kg_per_l, quantity_kg=kg, building=norm.building,
        org_unit=norm.org_unit, supplier=norm.supplier, receipt=norm.receipt, note=norm.note,
        entered_by=who,
    )  # fmt: skip
    s.add(row)
    try:
        s.commit()
    except IntegrityError:  # a concurrent entry of the same receipt won the race
        s.rollback()
        raise FuelInvalid(f"receipt {norm.receipt!r} is already entered", "receipt", conflict=True) from None
    return as_dict(row)


def as_dict(r: FuelEntry) -> dict[str, Any]:
    return {
        "id": r.id,
        "entry": r.entry,
        "fuel": r.fuel,
        "day": r.day.isoformat(),
        "quantity": r.quantity,
        "unit": r.unit,
        "density_kg_per_l": r.density_kg_per_l,
        "quantity_kg": r.quantity_kg,
        "building": r.building,
        "unit_id": r.org_unit,
        "supplier": r.supplier,
        "receipt": r.receipt,
        "note": r.note,
        "entered_by": r.entered_by,
        "entered_at": r.entered_at.isoformat() if r.entered_at else None,
    }


def entries(s: Session, fuel: str | None = None, start: date | None = None, end: date | None = None) -> list[FuelEntry]:
    q = select(FuelEntry).order_by(FuelEntry.day, FuelEntry.id)
    if fuel is not None:
        q = q.where(FuelEntry.fuel == fuel)
    if start is not None:
        q = q.where(FuelEntry.day >= start)
    if end is not None:
        q = q.where(FuelEntry.day < end)
    return list(s.scalars(q))


# --- attribution -------------------------------------------------------------------------------


def _overlap(a0: date, a1: date, b0: date, b1: date) -> int:
    return max(0, (min(a1, b1) - max(a0, b0)).days)


def consumed(rows: Sequence[FuelEntry], mode: str, start: date, end: date) -> float:
    """kg of one fuel at one place used in ``[start, end)`` (local days) under the attribution mode."""
    deliveries = [r for r in rows if r.entry == "delivery"]
    stocks = sorted((r for r in rows if r.entry == "stock"), key=lambda r: (r.day, r.id))
    if mode != "stock" or len(stocks) < 2:
        return sum(r.quantity_kg for r in deliveries if start <= r.day < end)
    total = 0.0
    covered: list[tuple[date, date]] = []
    for a, b in zip(stocks, stocks[1:], strict=False):
        if b.day <= a.day:
            continue
        got = sum(r.quantity_kg for r in deliveries if a.day <= r.day < b.day)
        used = max(0.0, a.quantity_kg + got - b.quantity_kg)
        total += used * _overlap(a.day, b.day, start, end) / (b.day - a.day).days
        covered.append((a.day, b.day))
    first, last = covered[0][0], covered[-1][1]
    total += sum(r.quantity_kg for r in deliveries if start <= r.day < end and not first <= r.day < last)
    return total


def by_unit(
    cfg: CampusConfig, rows: Iterable[FuelEntry], modes: dict[str, str], start: date, end: date
) -> dict[tuple[str, str], float]:
    """{(unit id or '', fuel): kg} used in the period; '' holds what no unit owns."""
    groups: dict[tuple[str, str, str], list[FuelEntry]] = {}
    for r in rows:
        where = ("unit", r.org_unit) if r.org_unit else ("building", r.building or "")
        groups.setdefault((where[0], where[1] or "", r.fuel), []).append(r)
    out: dict[tuple[str, str], float] = {}
    for (typ, ident, fuel), rs in groups.items():
        kg = consumed(rs, modes.get(fuel, "delivery"), start, end)
        if typ == "unit":
            out[(ident, fuel)] = out.get((ident, fuel), 0.0) + kg
            continue
        shares = building_shares(cfg, ident)
        held = 0.0
        for uid, share in shares:
            out[(uid, fuel)] = out.get((uid, fuel), 0.0) + kg * share
            held += share
        if held < 1.0 - 1e-9:
            out[("", fuel)] = out.get(("", fuel), 0.0) + kg * (1.0 - held)
    return out


# --- meter readings read by hand ------------------------------------------------------------

CSV_COLUMNS = ("meter", "time", "value")


def _ts(text: str, tz: Any) -> int:
    """Unix seconds, or an ISO date-time (local when it has no offset)."""
    from api.accounting import periods

    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        return periods.parse_local(t, tz)
    except ValueError:
        raise ValueError(f"time {t!r} is not ISO 8601 (2026-03-01T08:00) or Unix seconds") from None


def manual_payloads(cfg: CampusConfig, records: Iterable[dict[str, Any]]) -> tuple[list[bytes], list[str]]:
    """Flat wire records (docs/wire-format.md) from hand-read rows: one payload per row, so a bad row
    is refused alone; errors in the row itself (time, value) are reported before anything is sent."""
    from campusmon.quantities import REGISTER

    payloads, errors = [], []
    for i, rec in enumerate(records, start=1):
        mid = str(rec.get("meter", "")).strip()
        meter = cfg.meter(mid)
        if meter is None:
            errors.append(f"row {i}: meter {mid!r} is not in the campus config")
            continue
        quantity = str(rec.get("quantity") or REGISTER[meter.kind])
        try:
            ts = _ts(str(rec.get("time", "")), cfg.site.tz)
            value = float(str(rec.get("value", "")).strip())
        except ValueError as e:
            errors.append(f"row {i}: {e}" if "time" in str(e) else f"row {i}: value {rec.get('value')!r} is not a number")
            continue
        unit = str(rec.get("unit") or "").strip()
        body: list[dict[str, Any]] = [
            {"bn": f"urn:campus:meter:{mid}:", "n": quantity, "v": value, "t": ts, **({"u": unit} if unit else {})}
        ]
        payloads.append(json.dumps(body).encode())
    return payloads, errors


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of a readings CSV: meter, time, value, and optionally quantity, unit, reader."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"CSV header lacks column(s) {', '.join(missing)} (needs meter,time,value)")
    return list(reader)


def ingest_manual(ingestor: Any, cfg: CampusConfig, records: list[dict[str, Any]], who: str) -> dict[str, Any]:
    """Send hand-read rows through the ingest path; returns stored count and every refusal."""
    from campusmon.ingest import Message

    payloads, errors = manual_payloads(cfg, records)
    res = ingestor.process([Message(None, p, f"manual:{who}") for p in payloads]) if payloads else None
    refused = [f"{r.reason}: {r.detail}" for _, r in (res.rejected if res else [])]
    return {"stored": res.stored if res else 0, "errors": errors, "refused": refused}
