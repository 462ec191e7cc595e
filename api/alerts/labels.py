"""Scoring a backtest against a campus's own labelled incidents: recall, false alerts, delay.

This is how a campus tunes a rule on last term's data before switching it on: label what really
happened, backtest, read the score, change a setting, backtest again. The format
(docs/alerts.md#labelled-incidents)::

    {"grace_h": 24,
     "incidents": [{"name": "burst pipe in lab 1", "meter": "w-lab-1",
                    "start": "2025-11-04T22:00", "end": "2025-11-06T10:00",
                    "rules": ["leak.night_flow", "leak.continuous_flow"], "also": ["spike.baseline"]}]}

An incident names a ``meter`` or a ``building`` (then any meter, room or quota of that building
counts). An alert catches it when its rule is in ``rules``, its subject matches and it was first
seen between ``start`` and ``end`` plus the grace period. Alerts matching no incident under
``rules`` or ``also`` are false alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.alerts.rules import RULES, rule_matches

DAY = 86400


class LabelsError(ValueError):
    """Labels that cannot be read (the message names the incident and the problem)."""


class Incident(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    meter: str | None = None
    building: str | None = None
    start: datetime
    end: datetime
    rules: list[str] = Field(
        min_length=1, description="rule ids (or families like leak.*) that count as a catch"
    )
    also: list[str] = Field(
        default_factory=list, description="other rules it may raise without a false alert"
    )

    @model_validator(mode="after")
    def _check(self) -> Incident:
        if (self.meter is None) == (self.building is None):
            raise ValueError("give a meter or a building")
        if self.end < self.start:
            raise ValueError("end is before start")
        for r in [*self.rules, *self.also]:
            if not any(rule_matches(x, [r]) for x in RULES):
                raise ValueError(f"{r!r} matches no rule id")
        return self


class Labels(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_h: float = Field(default=24, ge=0, description="an alert this long after the end still counts")
    incidents: list[Incident] = []


@dataclass(frozen=True, slots=True)
class _Span:
    inc: Incident
    start: int
    end: int


def parse_labels(data: Any) -> Labels:
    if isinstance(data, list):
        data = {"incidents": data}
    try:
        return Labels.model_validate(data)
    except ValidationError as e:
        raise LabelsError(
            "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'labels'}: {err['msg']}" for err in e.errors()
            )
        ) from None


def _ts(v: datetime, tz: ZoneInfo) -> int:
    return int((v if v.tzinfo else v.replace(tzinfo=tz)).timestamp())


def _matches(inc: Incident, a: dict[str, Any]) -> bool:
    if inc.meter is not None:
        return inc.meter in (a.get("meter"), a["subject"]["id"])
    return a.get("building") == inc.building


def score_labels(
    labels: Labels, alerts: list[dict[str, Any]], meters: int, start: int, end: int, tz: ZoneInfo
) -> dict[str, Any]:
    """Recall, false alerts per 1,000 meter-days and the delay of each incident's first catch."""
    grace = int(labels.grace_h * 3600)
    spans = [_Span(i, _ts(i.start, tz), _ts(i.end, tz)) for i in labels.incidents]

    def seen(a: dict[str, Any]) -> int:
        return int(datetime.fromisoformat(a["first_seen"]).timestamp())

    per: list[dict[str, Any]] = []
    for sp in spans:
        hits = sorted(
            (
                a
                for a in alerts
                if rule_matches(a["rule"], sp.inc.rules)
                and _matches(sp.inc, a)
                and sp.start <= seen(a) <= sp.end + grace
            ),
            key=seen,
        )
        first = hits[0] if hits else None
        per.append(
            {
                "name": sp.inc.name,
                "caught": first is not None,
                "rule": first["rule"] if first else None,
                "alert": first["id"] if first else None,
                "delay_s": seen(first) - sp.start if first else None,
            }
        )
    false = [
        a
        for a in alerts
        if not any(
            rule_matches(a["rule"], [*sp.inc.rules, *sp.inc.also])
            and _matches(sp.inc, a)
            and sp.start <= seen(a) <= sp.end + grace
            for sp in spans
        )
    ]
    meter_days = meters * (end - start) / DAY
    caught = sum(1 for p in per if p["caught"])
    return {
        "incidents": len(per),
        "caught": caught,
        "recall": caught / len(per) if per else None,
        "false_alerts": len(false),
        "meter_days": round(meter_days, 2),
        "false_per_1000_meter_days": round(1000 * len(false) / meter_days, 3) if meter_days else None,
        "per_incident": per,
        "false": [
            {"id": a["id"], "rule": a["rule"], "subject": a["subject"]["id"], "first_seen": a["first_seen"]}
            for a in false
        ],
    }
