"""Which channels an event goes to: a pure decision from the config and the event.

Routing by unit: a webhook named in some unit's ``notify`` belongs to those units and gets only
the alerts of their meters and buildings; a unit's ``email`` recipients get its alerts through
``alerts.smtp`` on a channel of their own (``email:<unit>``), so one unit's dead mailbox never
holds back another's. Webhooks no unit names, ``smtp`` and ``mqtt`` stay campus-wide.
"""

from __future__ import annotations

from typing import Any

from api.alerts.config import AlertsConfig, Webhook
from api.alerts.rules import rule_matches
from api.alerts.rules.base import SEVERITY_RANK, Severity
from campusmon.config import CampusConfig

UNIT_EMAIL = "email:"


def _severe_enough(alert: dict[str, Any], minimum: Severity) -> bool:
    try:
        return SEVERITY_RANK[Severity(alert.get("severity", "info"))] >= SEVERITY_RANK[minimum]
    except ValueError:
        return False


def webhook_wants(w: Webhook, etype: str, alert: dict[str, Any]) -> bool:
    return (
        etype in w.events
        and _severe_enough(alert, w.min_severity)
        and rule_matches(alert["rule"], w.rules)
        and (not w.buildings or alert.get("building") in w.buildings)
    )


def units_of(cfg: CampusConfig, alert: dict[str, Any]) -> list[str]:
    """The units an alert belongs to.

    A meter a unit owns by name belongs to that unit alone; anything else in a building belongs to
    every unit that owns the building or a floor-area share of it.
    """
    subject = alert.get("subject") or {}
    if subject.get("kind") == "unit":  # a unit's own quota belongs to that unit alone
        return [subject["id"]] if any(u.id == subject.get("id") for u in cfg.units) else []
    meter, building = alert.get("meter"), alert.get("building")
    if meter:
        named = [u.id for u in cfg.units if any(meter in p.meters for p in u.parts)]
        if named:
            return named
    return [u.id for u in cfg.units if any(p.building == building and not p.meters for p in u.parts)]


def channels_for(acfg: AlertsConfig, etype: str, alert: dict[str, Any]) -> list[str]:
    s = acfg.settings
    units = acfg.cfg.units
    mine = set(units_of(acfg.cfg, alert)) if units else set()
    owners: dict[str, set[str]] = {}
    for u in units:
        for name in u.notify:
            owners.setdefault(name, set()).add(u.id)
    out = [
        f"webhook:{w.name}"
        for w in s.webhooks
        if webhook_wants(w, etype, alert) and (w.name not in owners or owners[w.name] & mine)
    ]
    if s.smtp is not None and etype in s.smtp.events and _severe_enough(alert, s.smtp.min_severity):
        out.append("smtp")
        out += [UNIT_EMAIL + u.id for u in units if u.id in mine and u.email]
    if s.mqtt.enabled:
        out.append("mqtt")
    return out
