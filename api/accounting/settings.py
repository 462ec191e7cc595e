"""The ``accounting:`` section of the campus config, validated by its own models.

Errors read like the rest of the config: ``file: accounting.tariffs.electricity[0]: problem``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.accounting.calendar import Calendar
from api.accounting.tariffs import Tariffs
from campusmon.config import CampusConfig, ConfigError, _format_errors


class AccountingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    calendar: Calendar = Calendar()
    tariffs: Tariffs = Tariffs()
    completeness_threshold: float = Field(
        default=0.9, gt=0, le=1, description="flag a share of readings below this"
    )
    # Readings are fetched this far around a period so that its first and last intervals are whole.
    margin_s: int = Field(default=3600, ge=0)
    # Across a longer gap, the nearest reading on each side is looked up this far away.
    lookaround_s: int = Field(default=62 * 86400, ge=0)


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accounting: AccountingSettings


def parse_accounting(cfg: CampusConfig, source: str = "<config>") -> AccountingSettings:
    """Validate ``cfg.accounting``; the campus time zone and region fill what the section leaves out."""
    raw: Any = copy.deepcopy(cfg.accounting or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: accounting: expected a mapping, got {type(raw).__name__}")
    cal = raw.setdefault("calendar", {})
    if isinstance(cal, dict):
        cal.setdefault("timezone", cfg.site.timezone)
    tar = raw.setdefault("tariffs", {})
    if isinstance(tar, dict):
        tar.setdefault("co2_region", cfg.site.region)
    try:
        return _Root.model_validate({"accounting": raw}).accounting
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def accounting_settings(cfg: CampusConfig, source: str = "<config>") -> AccountingSettings:
    """Parsed once per config object (the API calls this on every request)."""
    cached = cfg.__dict__.get("_accounting_settings")
    if cached is None:
        cached = parse_accounting(cfg, source)
        cfg.__dict__["_accounting_settings"] = cached
    return cached


def calendar_for(cfg: CampusConfig, source: str = "<config>") -> Calendar:
    """The occupancy calendar of a campus (what waste alerts need to know when buildings are open)."""
    return accounting_settings(cfg, source).calendar
