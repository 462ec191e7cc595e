"""Campus configuration: one YAML file, validated at start, overridable by environment.

Every host, port, path and credential can be overridden with ``CAMPUSMON_<SECTION>__<KEY>``
(for example ``CAMPUSMON_MQTT__PORT=1884`` or ``CAMPUSMON_INFLUXDB__TOKEN=...``), so the same
file serves a laptop, CI and a campus server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campusmon.quantities import MeterKind

ENV_PREFIX = "CAMPUSMON_"
DEFAULT_CONFIG = "campus.yaml"

BuildingType = Literal["dorm", "classroom", "office", "lab", "library", "canteen", "sports", "admin", "other"]


class ConfigError(Exception):
    """A configuration problem, phrased as file, key and what is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Site(_Model):
    name: str = "Campus"
    timezone: str = "Asia/Shanghai"
    region: str = "national"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Building(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    type: BuildingType = "other"
    floor_area_m2: float = Field(default=0.0, ge=0)
    occupants: int = Field(default=0, ge=0)
    group: str | None = None


class Meter(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    building: str
    kind: MeterKind
    category: str = Field(default="", pattern=r"^([0-9]{2}[A-Z0-9]{3}[A-Z0-9]*)?$")
    parent: str | None = None
    room: str | None = None
    # Register limits for the consumption policy: the value at which a cumulative register wraps,
    # and the largest credible rate (W for electricity, m3/h for water).
    rollover: float | None = Field(default=None, gt=0)
    max_rate: float | None = Field(default=None, gt=0)
    rated_current_a: float | None = Field(default=None, gt=0)
    interval_s: int = Field(default=900, gt=0, description="expected reading interval")

    @model_validator(mode="after")
    def _category_fits_kind(self) -> Meter:
        if self.category:
            water = self.category.startswith("02")
            if water != (self.kind is MeterKind.WATER):
                raise ValueError(f"category {self.category} does not fit a {self.kind.value} meter")
        return self


class Registry(_Model):
    strict: bool = Field(default=True, description="reject readings of meters not in this file")


class Mqtt(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    keepalive: int = Field(default=30, ge=5)
    client_id: str = "campusmon-collector"
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    share_group: str | None = Field(default=None, description="join $share/<group>/ to split load")
    batch_size: int = Field(default=1000, ge=1, le=65535)
    flush_interval_s: float = Field(default=0.5, gt=0)
    watchdog_s: float = Field(default=600.0, gt=0, description="reconnect when silent this long")


class Influx(_Model):
    backend: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    database: str = "campus"
    retention_policy: str = "autogen"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    org: str = "campus"
    bucket: str = "campus"
    timeout_s: float = Field(default=10.0, gt=0)
    create_database: bool = True
    create_dbrp: bool = True


class Database(_Model):
    url: str = "sqlite:///var/campusmon.sqlite"


class Api(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class Ingest(_Model):
    max_future_s: int = Field(default=300, ge=0, description="how far ahead of now a timestamp may be")
    min_ts: int = Field(default=946684800, description="earliest accepted timestamp (2000-01-01)")
    max_payload_bytes: int = Field(default=256 * 1024, gt=0)


class Services(_Model):
    data_dir: str = "var/services"
    mosquitto_port: int = Field(default=1883, ge=1, le=65535)
    influxdb_port: int = Field(default=8086, ge=1, le=65535)


class CampusConfig(_Model):
    site: Site = Site()
    buildings: list[Building] = []
    meters: list[Meter] = []
    registry: Registry = Registry()
    mqtt: Mqtt = Mqtt()
    influxdb: Influx = Influx()
    database: Database = Database()
    api: Api = Api()
    ingest: Ingest = Ingest()
    services: Services = Services()
    # Sections owned by later capabilities are validated by their own modules.
    accounting: dict[str, Any] = {}
    alerts: dict[str, Any] = {}

    @model_validator(mode="after")
    def _references(self) -> CampusConfig:
        ids = [b.id for b in self.buildings]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate building id(s): {', '.join(sorted(dup))}")
        mids = [m.id for m in self.meters]
        dup = {i for i in mids if mids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate meter id(s): {', '.join(sorted(dup))}")
        known = set(ids)
        meters = {m.id: m for m in self.meters}
        for i, m in enumerate(self.meters):
            if m.building not in known:
                raise ValueError(
                    f"meters[{i}] ({m.id}): building {m.building!r} is not defined under buildings"
                )
            if m.parent is not None:
                p = meters.get(m.parent)
                if p is None:
                    raise ValueError(f"meters[{i}] ({m.id}): parent {m.parent!r} is not a defined meter")
                if p.kind != m.kind:
                    raise ValueError(f"meters[{i}] ({m.id}): parent {m.parent!r} is a {p.kind.value} meter")
        return self

    # Lookups used on hot paths are built once.
    def meter(self, meter_id: str) -> Meter | None:
        return self._meter_index().get(meter_id)

    def building(self, building_id: str) -> Building | None:
        return next((b for b in self.buildings if b.id == building_id), None)

    def _meter_index(self) -> dict[str, Meter]:
        idx = self.__dict__.get("_midx")
        if idx is None or len(idx) != len(self.meters):
            idx = {m.id: m for m in self.meters}
            self.__dict__["_midx"] = idx
        return idx


def _coerce(raw: str) -> Any:
    """Environment values are strings; YAML rules give them types (``1884`` -> int, ``true`` -> bool)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_env(data: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ if environ is None else environ)
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = _coerce(raw) if path[-1] not in ("password", "token", "username") else raw
    return data


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", environ: dict[str, str] | None = None) -> CampusConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    try:
        return CampusConfig.model_validate(apply_env(data, environ))
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> CampusConfig:
    """Load and validate; the error names the file, the key and the problem."""
    env = os.environ if environ is None else environ
    p = Path(path or env.get("CAMPUSMON_CONFIG") or DEFAULT_CONFIG)
    return parse_config(read_yaml(p), str(p), dict(env))


def read_yaml(p: Path, example: str = "deploy/campus.yaml") -> Any:
    """Read one YAML file; errors name the file, the line and what to do (shared by every config file)."""
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found (copy {example} to start)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
