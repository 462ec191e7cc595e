"""What a window rule sees: the campus's hourly series up to an evaluation time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from api.alerts.series import MeterSeries, Timeline


@dataclass(frozen=True, slots=True)
class Quota:
    """A consumption limit for one building (or meter, or the whole campus) over a local period."""

    scope: str  # "building" | "meter" | "campus"
    id: str
    kind: str  # "electricity" | "water"
    period: str  # "day" | "week" | "month" | "year"
    limit: float  # kWh or m3 per period
    name: str = ""
    building: str = ""  # the building an alert is filed under ("" for campus and group quotas)
    meters: tuple[str, ...] = ()  # the meters whose sum is the scope's consumption
    target_id: int | None = None
    valid_from: date | None = None
    valid_to: date | None = None

    def valid_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_to is None or day <= self.valid_to
        )


@dataclass(slots=True)
class WindowContext:
    """``upto`` is one past the last hour a rule may read; ``now`` is the evaluation instant."""

    now: int
    upto: int
    timeline: Timeline
    series: dict[str, MeterSeries]
    children: dict[str, list[str]] = field(default_factory=dict)
    quotas: list[Quota] = field(default_factory=list)

    def days(self) -> list[tuple[date, int, int]]:
        return self.timeline.day_ranges(self.upto)
