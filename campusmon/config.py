"""Campus configuration: one YAML file, validated at start, overridable by environment.

Every host, port, path and credential can be overridden with ``CAMPUSMON_<SECTION>__<KEY>``
(for example ``CAMPUSMON_MQTT__PORT=1884`` or ``CAMPUSMON_INFLUXDB__TOKEN=...``), so the same
file serves a laptop, CI and a campus server.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campusmon.quantities import MeterKind, kind_of_category
from campusmon.units import OrgUnit, check_units

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
    # and the largest credible rate (W for electricity and heat, m3/h for water and gas).
    rollover: float | None = Field(default=None, gt=0)
    max_rate: float | None = Field(default=None, gt=0)
    rated_current_a: float | None = Field(default=None, gt=0)
    interval_s: int = Field(default=900, gt=0, description="expected reading interval")
    gateway: str | None = Field(default=None, description="the gateway that reads this meter, if any")
    commissioned: date | None = Field(
        default=None, description="in service from (waste alerts judge it from then)"
    )

    @model_validator(mode="after")
    def _category_fits_kind(self) -> Meter:
        if self.category and kind_of_category(self.category) is not self.kind:
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
    ca_certs: str | None = Field(
        default=None, description="CA of the broker's certificate; default system CAs"
    )
    certfile: str | None = Field(
        default=None, description="client certificate, for require_certificate brokers"
    )
    keyfile: str | None = None
    tls_version: Literal["1.2", "1.3"] = Field(default="1.2", description="lowest TLS version accepted")
    # The API's own broker identity (alert publishing). A locked broker binds client ids to user
    # names, so an API logged in as the collector would take over the collector's session.
    api_username: str | None = None
    api_password: str | None = None
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
    username: str | None = Field(default=None, description="writes (collectors, HTTP ingest)")
    password: str | None = None
    # Queries may use a read-only user of their own; unset, they use username/password.
    read_username: str | None = None
    read_password: str | None = None
    token: str | None = None
    org: str = "campus"
    bucket: str = "campus"
    timeout_s: float = Field(default=10.0, gt=0)
    create_database: bool = True
    create_dbrp: bool = True
    max_body_bytes: int = Field(
        default=5_000_000, gt=0, description="largest write request; bigger batches go as several"
    )
    # Raw readings are kept this long (InfluxDB duration, "INF" for ever); hourly rollups for ever
    # in their own retention policy (v1) or bucket (v2). Applied by the rollup maintainer (docs/influxdb-schema.md).
    raw_retention: str = Field(default="104w", pattern=r"^(INF|[0-9]+[hdw])$")
    rollup_retention_policy: str = Field(default="forever", min_length=1)
    rollup_bucket: str | None = Field(default=None, description="v2: bucket of the rollups; default bucket")
    # InfluxDB 1.x's backup/restore service (its top-level `bind-address`), used by `campusmon backup`.
    rpc_address: str = Field(default="127.0.0.1:8088", pattern=r"^[^\s:]+:[0-9]{1,5}$")


class Rollups(_Model):
    """Hourly consumption rollups (docs/consumption.md, section 3a)."""

    enabled: bool = Field(default=True, description="readers use rollups where they are up to date")
    context_s: int = Field(default=6 * 3600, ge=0, description="stored readings re-read before a late one")
    recheck_s: int = Field(
        default=3600, ge=60, description="a meter without new-data marks is re-read this often"
    )
    batch_meters: int = Field(default=1000, ge=1, le=100_000, description="meters per InfluxDB request")


class Database(_Model):
    url: str = "sqlite:///var/campusmon.sqlite"


class Api(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    run_jobs: bool | Literal["auto"] = Field(
        default="auto",
        description="run the scheduled jobs (window rules, rollups, notifications) in the API process; "
        "auto: yes on SQLite, no on PostgreSQL where `campusmon worker` runs them (docs/deployment.md)",
    )
    sse_poll_s: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="how often the SSE feed looks for events it was not told of; "
        "default 0.5 s on SQLite, 5 s on PostgreSQL (LISTEN/NOTIFY wakes it at once)",
    )


class Worker(_Model):
    """The ``campusmon worker`` role: scheduled jobs, coordinated through PostgreSQL leases."""

    id: str | None = Field(default=None, max_length=100, description="default <hostname>-<pid>")
    lease_ttl_s: float = Field(
        default=30.0, ge=1, le=3600, description="a dead worker's jobs are taken over within ttl + renew"
    )
    renew_s: float | None = Field(default=None, gt=0, description="default lease_ttl_s / 3")
    rollup_interval_s: float = Field(default=300.0, ge=1, description="how often hourly rollups run")
    rollup_shards: int = Field(default=4, ge=1, le=256, description="meter groups leased separately")

    @model_validator(mode="after")
    def _renew_below_ttl(self) -> Worker:
        if self.renew_s is not None and self.renew_s >= self.lease_ttl_s:
            raise ValueError(f"renew_s ({self.renew_s}) must be below lease_ttl_s ({self.lease_ttl_s})")
        return self


class Auth(_Model):
    """Identities on the API (docs/security.md). Off only when said so, for benchmarks and tests."""

    enabled: bool = True
    session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    token_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="how long a token look-up is trusted; a revocation by "
        "another process (the CLI) takes effect within it",
    )
    ops_public_on_loopback: bool = Field(
        default=True, description="/readyz and /metrics without a token from 127.0.0.1/::1"
    )
    cookie_secure: bool = Field(
        default=False, description="Secure cookies even on plain HTTP (behind a TLS proxy)"
    )
    login_max_failures_user: int = Field(default=5, ge=1)
    login_max_failures_client: int = Field(default=20, ge=1)
    login_window_s: int = Field(default=300, ge=1)


class Gateway(_Model):
    """A gateway allowed to publish on ``campus/v1/gateways/{id}/readings``."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str = ""
    building: str | None = None


class Ingest(_Model):
    max_future_s: int = Field(default=300, ge=0, description="how far ahead of now a timestamp may be")
    min_ts: int = Field(default=946684800, description="earliest accepted timestamp (2000-01-01)")
    max_payload_bytes: int = Field(default=256 * 1024, gt=0, le=64 * 1024 * 1024)
    max_records: int = Field(default=10_000, ge=1, description="records one message may carry")
    # SenML names that let the unit carry the dimension: {name: {unit: quantity}}, merged over the defaults.
    aliases: dict[str, dict[str, str]] = {}
    # Plausible range per quantity, [min, max], replacing the default (docs/wire-format.md).
    ranges: dict[str, tuple[float, float]] = {}
    # The dead-letter store is bounded like the gateway outbox: oldest messages go first, counted.
    deadletter_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    deadletter_max_age_days: float = Field(default=30.0, gt=0)
    deadletter_records_per_message: int = Field(default=50, ge=1, le=10_000)
    refusal_log_interval_s: float = Field(
        default=60.0, ge=0, description="at most one WARNING per reason and topic"
    )

    @model_validator(mode="after")
    def _vocabulary(self) -> Ingest:
        from campusmon.quantities import QUANTITIES, UnitError, convert

        for name, by_unit in self.aliases.items():
            if name in QUANTITIES:
                raise ValueError(f"aliases.{name}: already a quantity of the vocabulary")
            for unit, q in by_unit.items():
                if q not in QUANTITIES:
                    raise ValueError(f"aliases.{name}.{unit}: {q!r} is not a quantity")
                try:
                    convert(QUANTITIES[q], 1.0, None if unit == "/" else unit)
                except UnitError as e:
                    raise ValueError(f"aliases.{name}.{unit}: {e}") from None
        for q, (lo, hi) in self.ranges.items():
            if q not in QUANTITIES:
                raise ValueError(f"ranges.{q}: not a quantity")
            if not lo < hi:
                raise ValueError(f"ranges.{q}: min {lo} must be below max {hi}")
        return self


class Services(_Model):
    """Local servers of ``campusmon services up``; left unset, their ports follow mqtt.port and influxdb.url."""

    data_dir: str = "var/services"
    mosquitto_port: int = Field(default=1883, ge=1, le=65535)
    influxdb_port: int = Field(default=8086, ge=1, le=65535)
    # TLS listener of the local broker; needs certs_dir with ca.crt, broker.crt, broker.key
    # (`campusmon certs init`). The plain listener stays on loopback.
    mosquitto_tls_port: int | None = Field(default=None, ge=1, le=65535)
    mosquitto_tls_host: str = Field(default="0.0.0.0", description="address of the TLS listener")
    require_certificate: bool = Field(default=False, description="TLS clients log in by certificate CN")
    certs_dir: str | None = Field(default=None, description="default <data_dir>/certs")
    influxdb_auth: bool = Field(default=True, description="InfluxDB with users (see docs/security.md)")


class Collector(_Model):
    """Operator's view of the MQTT collector: its own /metrics and a counts line in its log."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics; 0 = off")
    counts_log_s: float = Field(default=60.0, gt=0, description="how often the counts line is logged")


class Console(_Model):
    """The staff web console (docs/console.md)."""

    default_language: Literal["zh", "en"] = Field(
        default="zh", description="language of the console until a user picks one"
    )


class CampusConfig(_Model):
    site: Site = Site()
    buildings: list[Building] = []
    meters: list[Meter] = []
    gateways: list[Gateway] = []
    registry: Registry = Registry()
    mqtt: Mqtt = Mqtt()
    influxdb: Influx = Influx()
    database: Database = Database()
    api: Api = Api()
    auth: Auth = Auth()
    ingest: Ingest = Ingest()
    services: Services = Services()
    collector: Collector = Collector()
    rollups: Rollups = Rollups()
    console: Console = Console()
    worker: Worker = Worker()
    # Sections owned by later capabilities are validated by their own modules.
    accounting: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []  # quotas under version control, loaded by api.alerts.targets_config
    # Organisational units, kgce/CO2 factors and the annual assessment (docs/assessment.md).
    units: list[OrgUnit] = []
    energy_factors: dict[str, Any] = {}
    assessment: dict[str, Any] = {}

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
        gids = [g.id for g in self.gateways]
        dup = {i for i in gids if gids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate gateway id(s): {', '.join(sorted(dup))}")
        for i, g in enumerate(self.gateways):
            if g.building is not None and g.building not in known:
                raise ValueError(
                    f"gateways[{i}] ({g.id}): building {g.building!r} is not defined under buildings"
                )
        for i, m in enumerate(self.meters):
            if m.gateway is not None and m.gateway not in gids:
                raise ValueError(f"meters[{i}] ({m.id}): gateway {m.gateway!r} is not defined under gateways")
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

    @model_validator(mode="after")
    def _units_and_factors(self) -> CampusConfig:
        from campusmon.factors import parse_energy_factors

        check_units(self.units, {b.id: b for b in self.buildings}, {m.id: m for m in self.meters})
        try:
            parse_energy_factors(self.energy_factors)
        except ValueError as e:
            raise ValueError(f"energy_factors: {e}") from None
        return self

    def unit(self, unit_id: str) -> OrgUnit | None:
        return next((u for u in self.units if u.id == unit_id), None)

    @model_validator(mode="after")
    def _services_follow_clients(self) -> CampusConfig:
        """One source of truth: an unset services port is the port the clients are configured to use."""
        s = self.services
        for key, host, port in _client_endpoints(self):
            if key not in s.model_fields_set and is_loopback(host):
                setattr(s, key, port)
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


def is_loopback(host: str) -> bool:
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _client_endpoints(cfg: CampusConfig) -> list[tuple[str, str, int]]:
    """(services key, host, port) of what the collector and API connect to."""
    u = urlsplit(cfg.influxdb.url)
    try:
        influx_port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:  # a malformed port: nothing to compare
        return [("mosquitto_port", cfg.mqtt.host, cfg.mqtt.port)]
    return [
        ("mosquitto_port", cfg.mqtt.host, cfg.mqtt.port),
        ("influxdb_port", u.hostname or "", influx_port),
    ]


def service_port_conflicts(cfg: CampusConfig, source: str = "<config>") -> list[str]:
    """Where services.* and the clients' settings disagree, so ``services up`` starts a server nobody uses.

    Only loopback clients are compared: a remote broker or database is not one ``services up`` starts.
    """
    client = {
        "mosquitto_port": ("Mosquitto", "mqtt.port", str(cfg.mqtt.port)),
        "influxdb_port": ("InfluxDB", "influxdb.url", cfg.influxdb.url),
    }
    out = []
    for key, host, port in _client_endpoints(cfg):
        mine = getattr(cfg.services, key)
        if is_loopback(host) and mine != port:
            what, ckey, cval = client[key]
            out.append(
                f"{source}: services.{key} is {mine} but {ckey} is {cval}: `campusmon services up` would "
                f"start {what} on port {mine} while the collector and API use whatever listens on "
                f"{host}:{port}; remove services.{key} (it follows {ckey}) or make the two agree"
            )
    return out


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
        secret = path[-1].endswith(("password", "token", "username"))  # "0123" stays a string
        node[path[-1]] = raw if secret else _coerce(raw)
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
