"""What a window rule sees: the campus's hourly series up to an evaluation time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from api.alerts.series import MeterSeries, Timeline


@dataclass(frozen=True, slots=True)
class Quota:
    """A consumption limit for one building (or a group, a unit, the whole campus) over a local period."""

    scope: str  # "building" | "group" | "unit" | "campus"
    id: str
    kind: str  # "electricity" | "water"
    period: str  # "day" | "week" | "month" | "year"
    limit: float  # kWh or m3 per period
    name: str = ""
    building: str = ""  # the building an alert is filed under ("" for campus, group and unit quotas)
    meters: tuple[str, ...] = ()  # the meters whose sum is the scope's consumption
    target_id: int | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    # A unit's shares instead of a plain sum: (factor, meters, meters taken out), as accounting's
    # ``units.Term``; ``meters`` then lists every meter involved.
    terms: tuple[tuple[float, tuple[str, ...], tuple[str, ...]], ...] = ()

    def valid_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_to is None or day <= self.valid_to
        )


@dataclass(frozen=True, slots=True)
class GatewayWord:
    """The last status a gateway published (its retained status or its last will), as the collector kept it."""

    state: str  # "online" | "offline" | ... as the gateway said it
    at: int  # when the collector received it (Unix seconds)


@dataclass(slots=True)
class WindowContext:
    """``upto`` is one past the last hour a rule may read; ``now`` is the evaluation instant."""

    now: int
    upto: int
    timeline: Timeline
    series: dict[str, MeterSeries]
    children: dict[str, list[str]] = field(default_factory=dict)
    quotas: list[Quota] = field(default_factory=list)
    # When each meter was first expected to report (commissioned, first seen in the config, or the
    # start of a backtest). A meter with no entry is expected from the start of the timeline.
    expected: dict[str, int] = field(default_factory=dict)
    # Each gateway's last status, read from the relational store by the evaluator (none in a backtest
    # without a campus database). Rules quote it only if it was received by ``now``.
    gateway_status: dict[str, GatewayWord] = field(default_factory=dict)

    def gateway_word(self, gateway: str) -> GatewayWord | None:
        w = self.gateway_status.get(gateway)
        return w if w is not None and w.at <= self.now else None

    def expected_from(self, meter: str) -> int:
        at = self.expected.get(meter)
        if at is not None:
            return at
        return self.timeline.starts[0] if len(self.timeline) else self.now

    def days(self) -> list[tuple[date, int, int]]:
        return self.timeline.day_ranges(self.upto)
