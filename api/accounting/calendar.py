"""The occupancy calendar: which days are term, vacation, holiday or weekend, and when buildings are open.

Read from ``accounting.calendar`` of the campus config. Accounting uses it for per-day figures;
waste alerts use ``is_occupied`` to tell out-of-hours load from normal use, so this API is stable:
``Calendar.day_kind(date)``, ``Calendar.opening_hours(building, date)``,
``Calendar.is_occupied(building, datetime)`` and ``Calendar.is_occupied_ts(building, ts)``.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from functools import cached_property
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from campusmon.config import Building

DayKind = Literal["term", "vacation", "holiday", "weekend"]
DAY_KINDS: tuple[DayKind, ...] = ("term", "vacation", "holiday", "weekend")

_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DateRange(_Model):
    name: str = ""
    start: date
    end: date  # inclusive: "vacation from 16 January to 28 February"

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def __contains__(self, d: object) -> bool:
        return isinstance(d, date) and self.start <= d <= self.end


class Holiday(_Model):
    """A public holiday: one ``date`` or a ``start``..``end`` range (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = ""
    day: date | None = Field(default=None, alias="date")
    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Holiday:
        if self.day is not None and (self.start or self.end):
            raise ValueError("give either date or start/end, not both")
        if self.day is None and (self.start is None or self.end is None):
            raise ValueError("give a date, or both start and end")
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def __contains__(self, d: object) -> bool:
        if not isinstance(d, date):
            return False
        if self.day is not None:
            return d == self.day
        assert self.start is not None and self.end is not None
        return self.start <= d <= self.end


Window = tuple[time, time]  # [open, close); close 24:00 is time.max


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"opening window {text!r} is not HH:MM-HH:MM (for example 07:30-22:00)")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"opening window {text!r} has an impossible time")
    close = time.max if h2 == 24 else time(h2, m2)
    if close <= time(h1, m1):
        raise ValueError(f"opening window {text!r} closes before it opens (split it at midnight)")
    return time(h1, m1), close


class Hours(_Model):
    """Opening windows of one building type by kind of day; an empty list means closed."""

    term: list[str] = []
    vacation: list[str] = []
    weekend: list[str] = []
    holiday: list[str] = []

    @field_validator("term", "vacation", "weekend", "holiday")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            parse_window(w)
        return v

    @cached_property
    def _parsed(self) -> dict[str, list[Window]]:
        return {k: [parse_window(w) for w in getattr(self, k)] for k in DAY_KINDS}

    def windows(self, kind: DayKind) -> list[Window]:
        """Parsed once: occupancy is asked for every reading by the waste rules."""
        return self._parsed[kind]


_ALL_DAY = ["00:00-24:00"]
# Project defaults (not a standard): dorms are always occupied, teaching buildings open on term
# days, service buildings every day. A campus overrides any of them in its config.
DEFAULT_HOURS: dict[str, Hours] = {
    "dorm": Hours(term=_ALL_DAY, vacation=_ALL_DAY, weekend=_ALL_DAY, holiday=_ALL_DAY),
    "classroom": Hours(term=["07:00-22:00"], vacation=["08:00-17:00"]),
    "office": Hours(term=["08:00-18:00"], vacation=["08:00-18:00"]),
    "admin": Hours(term=["08:00-18:00"], vacation=["08:00-18:00"]),
    "lab": Hours(term=["08:00-22:00"], vacation=["08:00-18:00"], weekend=["09:00-17:00"]),
    "library": Hours(term=["07:30-22:30"], vacation=["08:00-17:00"], weekend=["08:00-22:00"]),
    "canteen": Hours(
        term=["06:00-20:30"], vacation=["06:30-19:00"], weekend=["06:30-20:00"], holiday=["07:00-19:00"]
    ),
    "sports": Hours(
        term=["07:00-22:00"], vacation=["08:00-20:00"], weekend=["08:00-22:00"], holiday=["08:00-20:00"]
    ),
    "other": Hours(term=["08:00-18:00"], vacation=["08:00-18:00"]),
}


class Calendar(_Model):
    """Term dates, vacations, public holidays, make-up working days and opening hours by building type.

    Precedence of a day: public holiday, then weekend (Saturday/Sunday unless listed in
    ``workdays``, the make-up working days of Chinese holiday schedules), then vacation, then term.
    With no terms configured every working day is a term day; with terms configured, a working day
    outside every term is a vacation day.
    """

    terms: list[DateRange] = []
    vacations: list[DateRange] = []
    holidays: list[Holiday] = []
    workdays: list[date] = []
    opening_hours: dict[str, Hours] = Field(default_factory=dict)
    timezone: str = "Asia/Shanghai"  # set from site.timezone when loaded from the campus config

    @field_validator("opening_hours")
    @classmethod
    def _types(cls, v: dict[str, Hours]) -> dict[str, Hours]:
        known = set(DEFAULT_HOURS) | {"default"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(
                f"unknown building type(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def day_kind(self, d: date) -> DayKind:
        if any(d in h for h in self.holidays):
            return "holiday"
        if d.weekday() >= 5 and d not in self.workdays:
            return "weekend"
        if any(d in v for v in self.vacations):
            return "vacation"
        if not self.terms or any(d in t for t in self.terms):
            return "term"
        return "vacation"

    def hours_for(self, building_type: str) -> Hours:
        return (
            self.opening_hours.get(building_type)
            or self.opening_hours.get("default")
            or DEFAULT_HOURS.get(building_type, DEFAULT_HOURS["other"])
        )

    def opening_hours_on(self, building: Building | str, d: date) -> list[Window]:
        btype = building.type if isinstance(building, Building) else building
        return self.hours_for(btype).windows(self.day_kind(d))

    def is_occupied(self, building: Building | str, when: datetime) -> bool:
        """Whether a building (or building type) is open at ``when``; a naive time is campus-local."""
        local = when.astimezone(self.tz) if when.tzinfo is not None else when
        t = local.time()
        return any(
            o <= t < c or (c == time.max and t >= o) for o, c in self.opening_hours_on(building, local.date())
        )

    def is_occupied_ts(self, building: Building | str, ts: int) -> bool:
        return self.is_occupied(building, datetime.fromtimestamp(ts, self.tz))
