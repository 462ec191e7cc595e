"""The ``alerts:`` section of the campus config, validated by its own models.

Rule settings layer from general to specific, each layer naming only what it changes::

    alerts:
      rules:          {leak.night_flow: {increase_m3h: 0.03}}        # the whole campus
      building_types: {dorm: {after_hours.usage: {enabled: false}}}
      buildings:      {lab-1: {leak.continuous_flow: {require_resting: false}}}
      meters:         {w-canteen-1: {leak.continuous_flow: {enabled: false}}}

Errors read like the rest of the config: ``file: alerts.buildings.lab-1.leak.night_flow.ratio: problem``.
"""

from __future__ import annotations

import copy
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from api.alerts.rules import RULES, known_pattern
from api.alerts.rules.base import Params, Severity
from campusmon.config import BuildingType, CampusConfig, ConfigError, Meter

RuleSettings = dict[str, dict[str, Any]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Schedule(_Model):
    interval_s: int = Field(default=300, ge=10, description="how often window rules run")
    lookback_days: int = Field(default=35, ge=2, description="history read from InfluxDB for window rules")
    catchup_days: float = Field(
        default=2,
        ge=0,
        description="on start and after a gap in the passes, hours not yet judged are judged, this far back",
    )
    settle_s: int | None = Field(
        default=None, ge=0, description="wait for late readings (default: largest interval + 60 s)"
    )


class Cost(_Model):
    """Fallback prices for waste estimates when ``accounting.tariffs`` has none."""

    currency: str = "CNY"
    electricity_per_kwh: float | None = Field(default=None, ge=0)
    water_per_m3: float | None = Field(default=None, ge=0)


class Webhook(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(pattern=r"^https?://")
    format: Literal["generic", "wecom", "dingtalk", "feishu"] = "generic"
    secret: str | None = Field(
        default=None, description="HMAC key (generic), signing secret (DingTalk, Feishu)"
    )
    min_severity: Severity = Severity.INFO
    rules: list[str] = []
    buildings: list[str] = []
    events: list[str] = Field(default_factory=lambda: ["opened", "cleared", "severity"])
    timeout_s: float = Field(default=10.0, gt=0)


class Smtp(_Model):
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    sender: str
    to: list[str] = Field(min_length=1)
    min_severity: Severity = Severity.MAJOR
    events: list[str] = Field(default_factory=lambda: ["opened"])
    timeout_s: float = Field(default=10.0, gt=0)


class MqttOut(_Model):
    enabled: bool = True
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = True


class Delivery(_Model):
    max_attempts: int = Field(default=10, ge=1)
    backoff_s: float = Field(default=5.0, gt=0, description="first retry delay; doubles each attempt")
    max_backoff_s: float = Field(default=3600.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0)


class Silence(_Model):
    """Mutes notifications (``silence``) or stops alerts from opening at all (``maintenance``)."""

    kind: Literal["silence", "maintenance"] = "silence"
    rules: list[str] = []
    buildings: list[str] = []
    subjects: list[str] = Field(default=[], description="meter ids or room ids")
    start: datetime
    end: datetime
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Silence:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class AlertsSettings(_Model):
    enabled: bool = True
    public_url: str = Field(default="", description="base URL of the API, for links in messages and feeds")
    rules: RuleSettings = {}
    building_types: dict[BuildingType, RuleSettings] = {}
    buildings: dict[str, RuleSettings] = {}
    meters: dict[str, RuleSettings] = {}
    schedule: Schedule = Schedule()
    cost: Cost = Cost()
    webhooks: list[Webhook] = []
    smtp: Smtp | None = None
    mqtt: MqttOut = MqttOut()
    delivery: Delivery = Delivery()
    silences: list[Silence] = []
    # When each meter was put into service (campus-local date or time): a meter is judged silent or
    # never reported only from then on. Meters not listed count from when the system first saw them.
    commissioned: dict[str, datetime | date] = {}

    @field_validator("webhooks")
    @classmethod
    def _unique(cls, v: list[Webhook]) -> list[Webhook]:
        names = [w.name for w in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate webhook name(s): {', '.join(dup)}")
        return v


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alerts: AlertsSettings


class AlertsConfig:
    """Validated settings plus the resolved parameters of every rule for every meter, room and building."""

    def __init__(self, cfg: CampusConfig, settings: AlertsSettings) -> None:
        self.cfg = cfg
        self.settings = settings
        self._cache: dict[tuple[str, str, str], Params] = {}

    def _layers(self, rule: str, building_id: str | None, meter_id: str | None) -> list[dict[str, Any]]:
        s = self.settings
        out = [s.rules.get(rule, {})]
        b = self.cfg.building(building_id) if building_id else None
        if b is not None:
            out.append(s.building_types.get(b.type, {}).get(rule, {}))
            out.append(s.buildings.get(b.id, {}).get(rule, {}))
        if meter_id is not None:
            out.append(s.meters.get(meter_id, {}).get(rule, {}))
        return out

    def params(self, rule: str, building_id: str | None = None, meter_id: str | None = None) -> Params:
        key = (rule, building_id or "", meter_id or "")
        hit = self._cache.get(key)
        if hit is None:
            merged: dict[str, Any] = {}
            for layer in self._layers(rule, building_id, meter_id):
                merged.update(layer)
            hit = RULES[rule].params.model_validate(merged)
            self._cache[key] = hit
        return hit

    def for_meter(self, rule: str, meter: Meter) -> Params:
        return self.params(rule, meter.building, meter.id)

    def commissioned(self, meter: Meter) -> int | None:
        """When the meter went into service (Unix seconds), from the meter or ``alerts.commissioned``."""
        when = getattr(meter, "commissioned", None) or self.settings.commissioned.get(meter.id)
        if when is None:
            return None
        if not isinstance(when, datetime):  # a bare date
            when = datetime.combine(when, datetime.min.time())
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.cfg.site.tz)
        return int(when.timestamp())

    def severity(self, rule: str, p: Params) -> Severity:
        return p.severity or RULES[rule].severity


def _check_layer(where: str, layer: Any, errors: list[str]) -> None:
    if not isinstance(layer, dict):
        errors.append(f"{where}: expected a mapping of rule ids to settings, got {type(layer).__name__}")
        return
    for rule, settings in layer.items():
        if rule not in RULES:
            errors.append(f"{where}.{rule}: unknown rule id; known: {', '.join(sorted(RULES))}")
            continue
        if not isinstance(settings, dict):
            errors.append(f"{where}.{rule}: expected a mapping of settings, got {type(settings).__name__}")
            continue
        try:
            RULES[rule].params.model_validate(settings)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    fields = ", ".join(RULES[rule].params.model_fields)
                    msg = f"unknown setting; {rule} has: {fields}"
                errors.append(f"{where}.{rule}.{loc}: {msg}")


def parse_alerts(cfg: CampusConfig, source: str = "<config>") -> AlertsConfig:
    """Validate ``cfg.alerts``; every problem is reported as ``file: alerts.key: problem``."""
    from campusmon.config import _format_errors

    raw: Any = copy.deepcopy(cfg.alerts or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: alerts: expected a mapping, got {type(raw).__name__}")
    try:
        settings = _Root.model_validate({"alerts": raw}).alerts
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
    errors: list[str] = []
    _check_layer("alerts.rules", settings.rules, errors)
    for t, layer in settings.building_types.items():
        _check_layer(f"alerts.building_types.{t}", layer, errors)
    for b, layer in settings.buildings.items():
        if cfg.building(b) is None:
            errors.append(f"alerts.buildings.{b}: building {b!r} is not defined under buildings")
        _check_layer(f"alerts.buildings.{b}", layer, errors)
    for m, layer in settings.meters.items():
        if cfg.meter(m) is None:
            errors.append(f"alerts.meters.{m}: meter {m!r} is not defined under meters")
        _check_layer(f"alerts.meters.{m}", layer, errors)
    for m in settings.commissioned:
        if cfg.meter(m) is None:
            errors.append(f"alerts.commissioned.{m}: meter {m!r} is not defined under meters")
    for i, w in enumerate(settings.webhooks):
        for r in w.rules:
            if not known_pattern(r):
                errors.append(f"alerts.webhooks[{i}].rules: {r!r} matches no rule id")
    for i, s in enumerate(settings.silences):
        for r in s.rules:
            if not known_pattern(r):
                errors.append(f"alerts.silences[{i}].rules: {r!r} matches no rule id")
        for b in s.buildings:
            if cfg.building(b) is None:
                errors.append(f"alerts.silences[{i}].buildings: building {b!r} is not defined")
    hooks = {w.name for w in settings.webhooks}
    for i, u in enumerate(cfg.units):
        for name in u.notify:
            if name not in hooks:
                errors.append(f"units[{i}] ({u.id}).notify: {name!r} is not a webhook under alerts.webhooks")
        if u.email and settings.smtp is None:
            errors.append(f"units[{i}] ({u.id}).email: needs alerts.smtp, the server that sends it")
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return AlertsConfig(cfg, settings)


def alerts_config(cfg: CampusConfig, source: str = "<config>") -> AlertsConfig:
    """Parsed once per config object."""
    cached = cfg.__dict__.get("_alerts_config")
    if cached is None:
        cached = parse_alerts(cfg, source)
        cfg.__dict__["_alerts_config"] = cached
    return cached
