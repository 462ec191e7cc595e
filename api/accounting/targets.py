"""Energy-saving targets: what a target says, whether it is valid, and how much it allows for a period.

Four types (``value`` means):

- ``quota``: kWh or m3 per ``period`` (day, month or year);
- ``intensity``: per m2 of floor area per year (kWh/m2·a, the unit of GB/T 51161 constraint values);
- ``per_capita``: per occupant per day (kWh, or litres of water);
- ``reduction``: percent below a baseline period (default: the same period one year earlier).

Any target is turned into an allowance for the evaluated period pro rata by local calendar days,
so a monthly quota checks a day and an annual intensity checks a month.
"""

from __future__ import annotations

import calendar as _cal
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.accounting.campus import CODE_PATTERN, KIND_CODE, UNITS, kind_of_code
from campusmon.config import CampusConfig
from campusmon.quantities import MeterKind

TargetType = Literal["quota", "intensity", "per_capita", "reduction"]
ScopeType = Literal["building", "group", "unit", "campus"]


class TargetSpec(BaseModel):
    """A target as the API takes it; ``kind`` follows from ``category`` when omitted."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    scope: ScopeType
    scope_id: str = ""
    kind: MeterKind | None = None
    category: str = ""
    type: TargetType
    period: Literal["day", "month", "year"] | None = None
    value: float = Field(gt=0)
    baseline_start: date | None = None
    baseline_end: date | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if self.category and not CODE_PATTERN.fullmatch(self.category):
            raise ValueError(f"category {self.category!r} is not a sub-item code such as 01A00 or 02000")
        if self.kind is None:
            self.kind = kind_of_code(self.category) if self.category else MeterKind.ELECTRICITY
        elif self.category and kind_of_code(self.category) is not self.kind:
            raise ValueError(f"category {self.category} does not fit kind {self.kind.value}")
        if not self.category:
            self.category = KIND_CODE[self.kind]
        if self.scope == "campus" and self.scope_id:
            raise ValueError("scope_id must be empty for a campus target")
        if self.scope != "campus" and not self.scope_id:
            raise ValueError(f"scope_id is required for a {self.scope} target")
        if self.type == "quota" and self.period is None:
            raise ValueError("period (day, month or year) is required for a quota")
        if self.type != "quota" and self.period is not None:
            raise ValueError(f"period applies to quotas only, not to a {self.type} target")
        if self.type == "reduction" and self.value >= 100:
            raise ValueError("a reduction is a percentage below the baseline and must be under 100")
        if (self.baseline_start is None) != (self.baseline_end is None):
            raise ValueError("give both baseline_start and baseline_end, or neither")
        if self.baseline_start is not None:
            if self.type != "reduction":
                raise ValueError("baseline_start/baseline_end apply to reduction targets only")
            assert self.baseline_end is not None
            if self.baseline_end < self.baseline_start:
                raise ValueError("baseline_end is before baseline_start")
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self

    @property
    def unit(self) -> str:
        return target_unit(self.type, self.kind or MeterKind.ELECTRICITY, self.period)


def target_unit(type_: str, kind: MeterKind | str, period: str | None) -> str:
    base = UNITS[MeterKind(kind)]
    if type_ == "quota":
        return f"{base}/{period}"
    if type_ == "intensity":
        return f"{base}/m2/year"
    if type_ == "per_capita":
        return "L/person/day" if MeterKind(kind) is MeterKind.WATER else "kWh/person/day"
    return "% below baseline"


class TargetInvalid(ValueError):
    """A target the API must refuse with 422; the message names the field."""


def validate_spec(data: Any, cfg: CampusConfig) -> TargetSpec:
    """Parse and check a target against the campus (does its building, group or unit exist?)."""
    if not isinstance(data, dict):
        raise TargetInvalid("body: expected a JSON object")
    try:
        spec = TargetSpec.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise TargetInvalid("; ".join(parts)) from None
    if spec.scope == "building" and cfg.building(spec.scope_id) is None:
        raise TargetInvalid(f"scope_id: building {spec.scope_id!r} is not in the campus config")
    if spec.scope == "group" and not any(b.group == spec.scope_id for b in cfg.buildings):
        raise TargetInvalid(f"scope_id: no building is in group {spec.scope_id!r}")
    if spec.scope == "unit":
        # A unit's figures are whole carriers (its shares apply to a building's total), never sub-items.
        if cfg.unit(spec.scope_id) is None:
            raise TargetInvalid(f"scope_id: unit {spec.scope_id!r} is not in the campus config (units:)")
        whole = KIND_CODE[spec.kind or MeterKind.ELECTRICITY]
        if spec.category != whole:
            raise TargetInvalid(
                f"category: a unit target covers a whole carrier ({whole}), not the sub-item {spec.category}"
            )
    return spec


@dataclass(frozen=True, slots=True)
class Allowance:
    """How much a target allows over an evaluated period, and which target said so."""

    amount: float
    target_id: int | None
    type: str
    value: float
    unit: str


def _days_in_year(y: int) -> int:
    return 366 if _cal.isleap(y) else 365


def _per_day(spec: TargetSpec, first_day: date) -> float:
    """A quota as a daily rate, in the month or year where the evaluated period starts."""
    if spec.period == "day":
        return spec.value
    if spec.period == "month":
        return spec.value / _cal.monthrange(first_day.year, first_day.month)[1]
    return spec.value / _days_in_year(first_day.year)


def allowance(
    spec: TargetSpec,
    first_day: date,
    days: int,
    floor_area_m2: float,
    occupants: int,
    baseline: tuple[float, int] | None = None,
    target_id: int | None = None,
) -> Allowance | None:
    """The allowance over ``days`` local days from ``first_day``; None when it cannot be computed.

    ``baseline`` is (consumption, days) of the baseline period, scaled per day to the evaluated one.
    """
    kind = spec.kind or MeterKind.ELECTRICITY
    amount: float | None
    if spec.type == "quota":
        amount = _per_day(spec, first_day) * days
    elif spec.type == "intensity":
        amount = (
            spec.value * floor_area_m2 * days / _days_in_year(first_day.year) if floor_area_m2 > 0 else None
        )
    elif spec.type == "per_capita":
        per = spec.value / 1000.0 if kind is MeterKind.WATER else spec.value
        amount = per * occupants * days if occupants > 0 else None
    else:
        if baseline is None or baseline[1] <= 0:
            return None
        amount = baseline[0] / baseline[1] * days * (1 - spec.value / 100.0)
    if amount is None:
        return None
    return Allowance(amount, target_id, spec.type, spec.value, spec.unit)


def in_force(spec: TargetSpec, first_day: date, last_day: date) -> bool:
    return (spec.valid_from is None or spec.valid_from <= last_day) and (
        spec.valid_to is None or spec.valid_to >= first_day
    )


def applies(spec: TargetSpec, scope: str, scope_id: str, kind: MeterKind, category: str) -> bool:
    return (
        spec.scope == scope and spec.scope_id == scope_id and spec.kind is kind and spec.category == category
    )


def strictest(allowances: list[Allowance]) -> Allowance | None:
    """Several targets on one row: the smallest allowance is the one that binds."""
    return min(allowances, key=lambda a: a.amount) if allowances else None
