"""gateway.yaml: the serial buses of one building, their meters, and where readings go.

Validated at start with the same error format and ``CAMPUSMON_<SECTION>__<KEY>`` environment
overrides as campus.yaml, so a typo is reported as file, key and problem before any port is opened.
The direct serial collector reads the same file and uses its ``influxdb`` section instead of ``mqtt``.
"""

from __future__ import annotations

import os
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from campusmon.config import (
    CampusConfig,
    ConfigError,
    Influx,
    Site,
    _format_errors,
    apply_env,
    parse_config,
    read_yaml,
)
from campusmon.quantities import MeterKind, kind_of_category
from gateway.protocols import cjt188

Protocol = Literal["dlt645", "cjt188", "modbus-rtu"]
PROTOCOL_KIND: dict[str, MeterKind | None] = {
    "dlt645": MeterKind.ELECTRICITY,
    "cjt188": MeterKind.WATER,
    "modbus-rtu": None,  # any kind: the profile decides, so the file must say
}
_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Model):
    id: str = Field(pattern=_ID, description="names the MQTT topics and the client id")
    timezone: str = Field(default="Asia/Shanghai", description="wall clock for poll alignment and time sync")
    data_dir: str = "var/gateway"
    poll_on_start: bool = Field(default=True, description="read every meter once at start, off the grid")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        Site(timezone=v)  # one time-zone check for every config file
        return v


class MqttSection(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = Field(default=None, description="client certificate (require_certificate brokers)")
    keyfile: str | None = None
    tls_version: Literal["1.2", "1.3"] = "1.2"
    client_id: str | None = Field(default=None, description="fixed; default campusmon-gw-<gateway id>")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=5, le=65535)
    max_inflight: int = Field(default=20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK")
    pack_max_readings: int = Field(default=200, ge=1, le=5000)
    drain_rate_msgs_s: float = Field(default=20.0, gt=0, description="packs per second while catching up")
    status_interval_s: float = Field(default=60.0, gt=0)
    reconnect_max_s: int = Field(default=30, ge=1, le=3600, description="longest wait between reconnects")

    @field_validator("protocol", mode="before")
    @classmethod
    def _proto(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v


class OutboxSection(_Model):
    path: str | None = Field(default=None, description="default <data_dir>/outbox.sqlite")
    # One row per reading (meter, quantity, value, ts), about 28 bytes on disk. 8 M rows hold
    # 30 days of 256 meters x 10 quantities every 15 min (7.37 M) in about 220 MB.
    max_readings: int = Field(default=8_000_000, ge=100)
    max_age_days: float = Field(default=35.0, gt=0)
    warn_fill: float = Field(default=0.9, gt=0, le=1)
    synchronous: Literal["full", "normal"] = Field(default="full", description="see docs/gateway.md")


class HealthSection(_Model):
    interval_s: float = Field(default=60.0, gt=0, description="health topic period")
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    prometheus_host: str = "127.0.0.1"


class PollGroup(_Model):
    interval_s: int = Field(default=900, ge=1, le=3600, description="aligned to the wall clock")


class TimeSync(_Model):
    enabled: bool = False
    at: dtime = Field(default=dtime(3, 7), description="local time of the daily DL/T 645 broadcast")


class Quarantine(_Model):
    after_failures: int = Field(default=2, ge=1, description="whole polls without a reply before backing off")
    base_s: float = Field(default=60.0, gt=0)
    max_s: float = Field(default=3600.0, gt=0)


class MeterEntry(_Model):
    id: str = Field(pattern=_ID)
    protocol: Protocol
    address: str = Field(min_length=1, description="as printed on the meter; Modbus: unit id")
    profile: str | None = Field(default=None, description="Modbus register map or CJ/T 188 model")
    options: dict[str, Any] = {}
    building: str = Field(default="", pattern=r"^([A-Za-z0-9_.-]+)?$")
    category: str = Field(default="", pattern=r"^([0-9]{2}[A-Z0-9]{3}[A-Z0-9]*)?$")
    kind: MeterKind | None = None
    group: str = "default"
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)

    @model_validator(mode="after")
    def _kind(self) -> MeterEntry:
        typed = self._cjt188_kind()
        if typed is not None and self.kind is not None and self.kind is not typed:
            raise ValueError(
                f"{self.id}: CJ/T 188 meter type {self.options.get('meter_type')!r} is a {typed.value} "
                f"meter, not {self.kind.value}"
            )
        if self.kind is None:
            self.kind = typed or PROTOCOL_KIND[self.protocol]
            if self.kind is None and self.category:
                self.kind = kind_of_category(self.category)
        if self.kind is None:
            raise ValueError(f"{self.id}: set kind (electricity, water, gas or heat) for a {self.protocol} meter")
        if self.profile and self.protocol == "dlt645":
            raise ValueError(f"{self.id}: dlt645 meters take no profile; set data identifiers in options.dis")
        return self

    def _cjt188_kind(self) -> MeterKind | None:
        """The kind a CJ/T 188 meter type measures (10H water, 20H-22H heat, 30H gas)."""
        if self.protocol != "cjt188" or "meter_type" not in self.options:
            return None
        code = cjt188.meter_type_code(self.options["meter_type"])
        return None if code == cjt188.WILDCARD_TYPE else MeterKind(cjt188.carrier(code))

    def driver_options(self) -> dict[str, Any]:
        """``profile`` is the Modbus register map or the CJ/T 188 model, under the name the driver uses."""
        opts = dict(self.options)
        if self.profile:
            opts["model" if self.protocol == "cjt188" else "profile"] = self.profile
        return opts


class BusEntry(_Model):
    id: str = Field(pattern=_ID)
    port: str = Field(min_length=1, description="pyserial URL: /dev/ttyUSB0, socket://h:p, rfc2217://h:p")
    baudrate: int = Field(default=2400, ge=50, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    # Per-protocol defaults (gateway.bus.TIMING) apply when these are not set.
    timeout_s: float | None = Field(default=None, gt=0, description="wait for the first reply byte")
    inter_char_s: float | None = Field(default=None, gt=0, description="silence that ends a reply")
    gap_s: float | None = Field(default=None, ge=0, description="silence before every request")
    retries: int = Field(default=1, ge=0, le=10)
    echo: bool = Field(default=False, description="the adapter echoes what it sends (M-Bus level converters)")
    quarantine: Quarantine = Quarantine()
    meters: list[MeterEntry] = []

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, v: Any) -> Any:
        names = {"none": "N", "even": "E", "odd": "O"}
        return names.get(v.lower(), v.upper()) if isinstance(v, str) else v


def port_identity(port: str) -> str | None:
    """What two spellings of one line have in common; None for ports that are never shared (loop://).

    A device path is followed through its symlinks (``/dev/serial/by-id/...`` is ``/dev/ttyUSB0``);
    a serial server is its host and TCP port, whichever of socket:// or rfc2217:// reaches it.
    """
    scheme, sep, rest = port.partition("://")
    if not sep:
        return os.path.realpath(port)
    scheme = scheme.lower()
    where = rest.split("?", 1)[0]  # URL options (?logging=debug, ?timeout=) do not make another line
    if scheme in ("socket", "rfc2217"):
        return "tcp:" + where.lower().rstrip("/")
    if scheme == "spy":
        return os.path.realpath(where)
    if scheme == "loop":
        return None
    return f"{scheme}://{where}"


class GatewayConfig(_Model):
    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()
    poll_groups: dict[str, PollGroup] = {"default": PollGroup()}
    time_sync: TimeSync = TimeSync()
    buses: list[BusEntry] = Field(min_length=1)
    influxdb: Influx = Influx()
    _source: str = PrivateAttr(default="<gateway config>")

    @property
    def source(self) -> str:
        """The file it came from, for errors found after validation (driver options)."""
        return self._source

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for kind, ids in (
            ("bus", [b.id for b in self.buses]),
            ("meter", [m.id for b in self.buses for m in b.meters]),
        ):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"duplicate {kind} id(s): {', '.join(dup)}")
        owner: dict[str, tuple[int, str]] = {}
        for bi, b in enumerate(self.buses):
            key = port_identity(b.port)
            if key in owner:
                oi, oid = owner[key]
                raise ValueError(
                    f"buses[{bi}] ({b.id}): port {b.port!r} is already used by buses[{oi}] ({oid}); "
                    "a port has exactly one bus (one thread owns the line), so list all its meters "
                    "under one bus"
                )
            if key is not None:
                owner[key] = (bi, b.id)
        self.poll_groups.setdefault("default", PollGroup())
        for bi, b in enumerate(self.buses):
            for mi, m in enumerate(b.meters):
                if m.group not in self.poll_groups:
                    raise ValueError(
                        f"buses[{bi}].meters[{mi}] ({m.id}): poll group {m.group!r} is not defined"
                    )
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"campusmon-gw-{self.gateway.id}"

    @property
    def outbox_path(self) -> Path:
        return Path(self.outbox.path or Path(self.gateway.data_dir) / "outbox.sqlite")

    def meters(self) -> list[tuple[BusEntry, MeterEntry]]:
        return [(b, m) for b in self.buses for m in b.meters]

    def campus_config(self) -> CampusConfig:
        """The campus view the InfluxDB layer needs (tags per meter), for the direct serial collector."""
        buildings = sorted({m.building or "unassigned" for _, m in self.meters()})
        meters = [
            {"id": m.id, "building": m.building or "unassigned", "kind": m.kind, "category": m.category}
            for _, m in self.meters()
        ]
        data = {
            "buildings": [{"id": b} for b in buildings],
            "meters": meters,
            "influxdb": self.influxdb.model_dump(),
        }
        return parse_config(data, "gateway config", environ={})


def parse_gateway_config(data: Any, source: str = "<gateway config>", environ: dict[str, str] | None = None
                         ) -> GatewayConfig:  # fmt: skip
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise ConfigError(f"{source}: (top level): expected a mapping with gateway and buses, got {got}")
    try:
        cfg = GatewayConfig.model_validate(apply_env(data, environ))
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
    cfg._source = source
    return cfg


def load_gateway_config(path: str | Path, environ: dict[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    env = dict(os.environ if environ is None else environ)
    return parse_gateway_config(read_yaml(p, example="deploy/gateway.yaml"), str(p), env)
