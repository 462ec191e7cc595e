"""The vocabulary every rule speaks: subjects, levels, severities and findings.

A rule is a pure function from data (and its own small saved state) to findings. Whether a
finding opens, updates or clears an alert is decided in one place, ``api.alerts.lifecycle``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SubjectKind = Literal["meter", "room", "building", "campus", "gateway", "unit"]


class Level(StrEnum):
    """FIRING opens or keeps an alert, OK lets it clear, HOLD (inside the hysteresis band) changes nothing."""

    FIRING = "firing"
    OK = "ok"
    HOLD = "hold"


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


SEVERITY_RANK = {
    Severity.CRITICAL: 5,
    Severity.MAJOR: 4,
    Severity.MINOR: 3,
    Severity.WARNING: 2,
    Severity.INFO: 1,
}


@dataclass(frozen=True, slots=True)
class Subject:
    """What an alert is about; (rule, kind, id) is unique among open alerts."""

    kind: SubjectKind
    id: str
    building: str
    variant: str = (
        ""  # tells apart two alerts of one rule on one subject (a building's water and power quotas)
    )


@dataclass(slots=True)
class Finding:
    """One rule's verdict on one subject at one moment.

    ``value``/``threshold`` are in ``unit``; ``waste_per_day`` is in ``waste_unit`` (kWh or m3).
    ``state`` is the rule's new saved state for this subject (None = leave it as it was).
    """

    rule: str
    subject: Subject
    level: Level
    ts: int
    since: int | None = None
    severity: Severity | None = None
    value: float | None = None
    threshold: float | None = None
    unit: str = ""
    waste_per_day: float | None = None
    waste_unit: str = ""
    meter: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    clear_after: int = 1
    # What the rule judged, at full precision: meter and quantity, window start and end, value,
    # the baseline or threshold it was compared with and how that baseline was made.
    evidence: dict[str, Any] = field(default_factory=dict)


class Params(BaseModel):
    """Settings every rule has; each rule adds its thresholds."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    severity: Severity | None = None
    clear_after: int = Field(default=1, ge=1, description="consecutive OK evaluations before an alert clears")


RuleKind = Literal["window", "instant"]


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule's identity card: its id, default severity, settings model and where its numbers come from."""

    id: str
    kind: RuleKind
    title: str
    params: type[Params]
    severity: Severity
    applies_to: str  # "water", "electricity", "room", "any", "building"
    basis: str  # the standard or practice the default numbers come from
    check: str  # what staff should check, in plain words
    evaluate: Callable[..., Any] | None = None
    # State keys frozen while an alert is open (a learned baseline); released when it clears, so the
    # next alert judges against a baseline learned afresh.
    frozen: tuple[str, ...] = ()


# -- evidence text ----------------------------------------------------------------------------------------

BaselineArg = int | float | str


def _english(name: str, value: BaselineArg) -> str:
    if isinstance(value, float) and name.endswith("_share"):
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def baseline_text(msgid: str, **args: BaselineArg) -> dict[str, Any]:
    """Evidence items saying how the baseline was made, readable in any language.

    ``baseline_method`` stays the English sentence integrators read; ``baseline_msg`` keeps the
    template (a catalogue msgid with ``%(name)s`` placeholders) and its values so the console can
    translate it. ``msgid`` must be a string literal: the catalogue check extracts it from this call.
    A value whose name ends in ``_share`` is a fraction (0.6) written as a percentage.
    """
    english = msgid % {k: _english(k, v) for k, v in args.items()} if args else msgid
    return {"baseline_method": english, "baseline_msg": {"id": msgid, "args": dict(args)}}


# -- small numeric helpers shared by rules ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of an empty sequence")
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
