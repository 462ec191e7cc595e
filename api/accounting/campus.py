"""Which meters make up a scope (campus, group, building, sub-item, meter) without counting anything twice.

A main meter already includes its sub-meters, so a total takes only the meters whose ancestors are
not themselves in the selection: a building total is its main meters, a sub-item total is the
highest meters of that sub-item. Sub-item codes follow the energy classification of
docs/references.md#sub-item-codes (01A00 lighting and sockets, 01B00 HVAC, 01C00 power, 01D00 special, 02000 water); a code covers
its finer codes (01B00 covers 01B10 and 01B1A).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from campusmon.config import CampusConfig, Meter
from campusmon.quantities import QUANTITIES, REGISTER, MeterKind, kind_of_category

SUB_ITEMS: dict[str, str] = {
    "01000": "electricity (total)",
    "01A00": "lighting and sockets",
    "01B00": "HVAC",
    "01C00": "power",
    "01D00": "special",
    "02000": "water",
    "03000": "gas",
    "04000": "district heat (heat meters, cooling ones included)",
    "05000": "district cooling",
}
ELECTRICITY_SUB_ITEMS = ("01A00", "01B00", "01C00", "01D00")
KIND_CODE = {
    MeterKind.ELECTRICITY: "01000",
    MeterKind.WATER: "02000",
    MeterKind.GAS: "03000",
    MeterKind.HEAT: "04000",
}
UNITS = {k: QUANTITIES[q].unit for k, q in REGISTER.items()}
CODE_PATTERN = re.compile(r"[0-9]{2}[A-Z0-9]{3}[A-Z0-9]*")  # as campusmon.config.Meter.category
FIELDS = dict(REGISTER)


def code_prefix(code: str) -> str:
    """``01000`` -> ``01``, ``01A00`` -> ``01A``, ``01B1A`` -> ``01B1A``: trailing zeros mean 'all'."""
    return code[:2] + code[2:].rstrip("0")


def category_of(meter: Meter) -> str:
    """A meter without a sub-item code counts toward its kind's class (01000 or 02000)."""
    return meter.category or KIND_CODE[meter.kind]


def in_category(meter: Meter, code: str) -> bool:
    return category_of(meter).startswith(code_prefix(code))


def kind_of_code(code: str) -> MeterKind:
    return kind_of_category(code)


def highest(cfg: CampusConfig, selected: Iterable[Meter]) -> list[Meter]:
    """The selected meters that no selected ancestor already counts."""
    chosen = list(selected)
    ids = {m.id for m in chosen}
    out = []
    for m in chosen:
        p, seen = m.parent, set()
        while p is not None and p not in seen and p not in ids:
            seen.add(p)
            parent = cfg.meter(p)
            p = parent.parent if parent is not None else None
        if p is None or p not in ids:
            out.append(m)
    return out


@dataclass(frozen=True, slots=True)
class Scope:
    """A parsed ``scope=`` value: its kind (campus, group, building, category, meter) and id."""

    type: str
    id: str = ""

    @property
    def label(self) -> str:
        return self.type if self.type == "campus" else f"{self.type}:{self.id}"


class ScopeError(ValueError):
    """A scope that is malformed (422) or names nothing in the campus (404)."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def parse_scope(text: str, cfg: CampusConfig) -> Scope:
    text = (text or "campus").strip()
    if text == "campus":
        return Scope("campus")
    kind, sep, ident = text.partition(":")
    if not sep or not ident or kind not in ("building", "meter", "category", "group"):
        raise ScopeError(
            f"scope {text!r} is not campus, building:<id>, group:<name>, category:<code> or meter:<id>"
        )
    if kind == "building" and cfg.building(ident) is None:
        raise ScopeError(f"building {ident!r} is not in the campus config", not_found=True)
    if kind == "meter" and cfg.meter(ident) is None:
        raise ScopeError(f"meter {ident!r} is not in the campus config", not_found=True)
    if kind == "group" and not any(b.group == ident for b in cfg.buildings):
        raise ScopeError(f"no building is in group {ident!r}", not_found=True)
    if kind == "category" and not CODE_PATTERN.fullmatch(ident):
        raise ScopeError(f"category {ident!r} is not a sub-item code such as 01A00 or 02000")
    return Scope(kind, ident)


def scope_meters(cfg: CampusConfig, scope: Scope, kind: MeterKind) -> list[Meter]:
    """The meters of ``kind`` whose sum is the scope's consumption."""
    ms = [m for m in cfg.meters if m.kind is kind]
    if scope.type == "meter":
        return [m for m in ms if m.id == scope.id]
    if scope.type == "building":
        ms = [m for m in ms if m.building == scope.id]
    elif scope.type == "group":
        members = {b.id for b in cfg.buildings if b.group == scope.id}
        ms = [m for m in ms if m.building in members]
    elif scope.type == "category":
        ms = [m for m in ms if in_category(m, scope.id)]
    return highest(cfg, ms)


def building_rows(cfg: CampusConfig, building: str) -> list[tuple[str, MeterKind, list[Meter]]]:
    """The report rows of a building: totals per metered kind and each electricity sub-item it meters."""
    own = [m for m in cfg.meters if m.building == building]
    rows: list[tuple[str, MeterKind, list[Meter]]] = []
    for kind in MeterKind:
        of_kind = [m for m in own if m.kind is kind]
        if not of_kind:
            continue  # a building without water meters has no water row, rather than an empty one
        rows.append((KIND_CODE[kind], kind, highest(cfg, of_kind)))
        if kind is MeterKind.HEAT and any(in_category(m, "05000") for m in of_kind):
            rows.append(("05000", kind, highest(cfg, [m for m in of_kind if in_category(m, "05000")])))
        if kind is MeterKind.ELECTRICITY:
            for code in ELECTRICITY_SUB_ITEMS:
                sel = [m for m in of_kind if in_category(m, code)]
                if sel:
                    rows.append((code, kind, highest(cfg, sel)))
    return rows
