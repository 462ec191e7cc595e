"""Organisational units (colleges, departments, administrative units) and the buildings they own.

A unit owns whole buildings, a floor-area share of a shared building, or named meters in a
building. Everything a unit is assessed, billed or alerted on follows from its parts:

- ``{building: b}``: all of the building's consumption, floor area and occupants;
- ``{building: b, share: 0.4}``: 40 % of the building's metered consumption, area and occupants
  (a shared building without sub-meters is split by floor area);
- ``{building: b, meters: [m1, m2]}``: those meters' consumption in full; its area and occupants are
  ``floor_area_m2`` / ``occupants`` of the part when given, else ``share`` of the building's.

Alerts of a unit's meters and buildings go to its ``notify`` webhooks and ``email`` recipients
(``api.alerts.notify.channels``), so a college hears of its own waste and not of everyone else's.

The checks run when the campus config is loaded: every building and meter must exist, a meter
must be in the part's building and belong to one unit only, and the shares of a building must not
add up to more than the whole.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
UnitType = Literal["college", "department", "administrative", "other"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnitPart(_Model):
    building: str
    share: float | None = Field(default=None, gt=0, le=1, description="floor-area share of the building")
    meters: list[str] = []
    floor_area_m2: float | None = Field(default=None, ge=0)
    occupants: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> UnitPart:
        if len(set(self.meters)) != len(self.meters):
            raise ValueError("a meter is listed twice")
        return self

    @property
    def whole(self) -> bool:
        return self.share is None and not self.meters


class OrgUnit(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    type: UnitType = "other"
    parts: list[UnitPart] = Field(min_length=1, description="buildings or parts of buildings it owns")
    occupants: int | None = Field(default=None, ge=0, description="people, overriding the parts' sum")
    notify: list[str] = Field(
        default_factory=list,
        description="webhooks (alerts.webhooks[].name) that get this unit's alerts, and only its units'",
    )
    email: list[str] = Field(
        default_factory=list, description="addresses that get this unit's alerts through alerts.smtp"
    )

    @model_validator(mode="after")
    def _addresses(self) -> OrgUnit:
        bad = [a for a in self.email if not _EMAIL.fullmatch(a)]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(map(repr, bad))}")
        return self


def check_units(units: list[OrgUnit], buildings: dict[str, Any], meters: dict[str, Any]) -> None:
    """Raise ValueError naming ``units[i]`` and the problem; see the module docstring for the rules."""
    ids = [u.id for u in units]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate unit id(s): {', '.join(dup)}")
    shares: dict[str, list[tuple[str, float]]] = {}
    owner: dict[str, str] = {}
    for i, u in enumerate(units):
        where = f"units[{i}] ({u.id})"
        for j, p in enumerate(u.parts):
            at = f"{where}.parts[{j}]"
            if p.building not in buildings:
                raise ValueError(f"{at}: building {p.building!r} is not defined under buildings")
            for m in p.meters:
                meter = meters.get(m)
                if meter is None:
                    raise ValueError(f"{at}: meter {m!r} is not defined under meters")
                if meter.building != p.building:
                    raise ValueError(
                        f"{at}: meter {m!r} is in building {meter.building!r}, not {p.building!r}"
                    )
                if m in owner:
                    raise ValueError(f"{at}: meter {m!r} already belongs to unit {owner[m]!r}")
                owner[m] = u.id
            if not p.meters:
                shares.setdefault(p.building, []).append((u.id, 1.0 if p.share is None else p.share))
    for b, parts in shares.items():
        total = sum(s for _, s in parts)
        if total > 1.0 + 1e-9:
            who = ", ".join(f"{u} {s:g}" for u, s in parts)
            raise ValueError(
                f"units: building {b!r} is shared out {total:g} times its floor area ({who}); "
                "the shares of a building must add up to at most 1"
            )
