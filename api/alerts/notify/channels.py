"""Which channels an event goes to: a pure decision from the config and the event."""

from __future__ import annotations

from typing import Any

from api.alerts.config import AlertsConfig, Webhook
from api.alerts.rules import rule_matches
from api.alerts.rules.base import SEVERITY_RANK, Severity


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


def channels_for(acfg: AlertsConfig, etype: str, alert: dict[str, Any]) -> list[str]:
    s = acfg.settings
    out = [f"webhook:{w.name}" for w in s.webhooks if webhook_wants(w, etype, alert)]
    if s.smtp is not None and etype in s.smtp.events and _severe_enough(alert, s.smtp.min_severity):
        out.append("smtp")
    if s.mqtt.enabled:
        out.append("mqtt")
    return out
