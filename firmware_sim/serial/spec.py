"""Simulated buses described in YAML (or a dict), for the gateway's tests, benchmarks and the demo.

```yaml
baud: 2400            # line settings used for byte pacing (ptys themselves ignore them)
parity: N
pace: true
turnaround_ms: 20
seed: 1
tz: Asia/Shanghai     # zone of the meters' clocks and tariff hours
clock: {start: "2024-05-17T08:00:00+08:00", speed: 1, frozen: false}   # optional
pty: var/ttySIM0      # optional: serve on a pty, with this symlink
tcp: 127.0.0.1:5020   # optional: serve like a transparent serial server
meters:
  - {protocol: dlt645, address: "000000000001", count: 8, profile: office}
  - {protocol: cjt188, address: "78330011223344", di_order: "1F90", profile: dorm}
  - {protocol: modbus, unit: 5, model: sdm630, faults: {late_reply: {delay_s: 0.8}}}
```

Anything else on a meter entry is passed to the meter's constructor (``phases``, ``preamble``,
``max_data_len``, ``meter_type``, ``unit`` (unit code), ``status_layout``, ``initial_kwh``...).
A ``cjt188`` entry with ``meter_type: 0x20`` (heat), ``0x21`` (cooling) or ``0x22`` is a heat meter
(:class:`~firmware_sim.serial.cjt188_heat_meter.Cjt188HeatMeter`); ``0x30`` is a gas meter.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from firmware_sim.serial.bus import PARITY_BITS, SimBus
from firmware_sim.serial.cjt188_heat_meter import HEAT_TYPES, Cjt188HeatMeter
from firmware_sim.serial.cjt188_meter import Cjt188Meter
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from firmware_sim.serial.faults import FaultError
from firmware_sim.serial.meter import SerialMeter
from firmware_sim.serial.modbus_meter import ModbusMeter

PROTOCOLS: dict[str, type[SerialMeter]] = {
    "dlt645": Dlt645Meter,
    "cjt188": Cjt188Meter,
    "modbus": ModbusMeter,
}
ADDRESS_DIGITS = {"dlt645": 12, "cjt188": 14}


class SpecError(ValueError):
    """A bus description that cannot be built, with the place it went wrong."""


class ClockSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: datetime | None = None
    speed: float = Field(1.0, gt=0)
    frozen: bool = False

    def build(self) -> SimClock:
        return SimClock(self.start.timestamp() if self.start else None, speed=self.speed, frozen=self.frozen)


class MeterSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    protocol: Literal["dlt645", "cjt188", "modbus"]
    address: str | None = None
    count: int = Field(1, ge=1, le=1000)
    faults: dict[str, dict[str, Any] | None] | list[str | dict[str, dict[str, Any] | None]] = Field(
        default_factory=dict
    )
    turnaround_ms: float | None = Field(None, ge=0)

    @field_validator("address", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class BusSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baud: int = Field(2400, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: str = "N"
    stopbits: float = 1
    pace: bool = True
    turnaround_ms: float = Field(20.0, ge=0)
    seed: int = 0
    tz: str = "UTC"
    clock: ClockSpec | None = None
    pty: str | None = None
    tcp: str | None = None
    meters: list[MeterSpec] = Field(default_factory=list)

    @field_validator("parity")
    @classmethod
    def _parity(cls, v: str) -> str:
        if v.upper() not in PARITY_BITS:
            raise ValueError(f"parity must be one of {', '.join(PARITY_BITS)}")
        return v.upper()


def parse_tcp(text: str) -> tuple[str, int]:
    """``host:port`` (or just ``port``) as given to ``--tcp``."""
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise SpecError(f"tcp address {text!r} is not HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise SpecError(f"tcp port {number} out of range")
    return (host if sep and host else "127.0.0.1"), number


def _addresses(spec: MeterSpec, index: int) -> list[str | int]:
    if spec.protocol == "modbus":
        first = (spec.model_extra or {}).get("unit", spec.address)
        if first is None:
            raise SpecError(f"meters[{index}]: a modbus meter needs 'unit' (its unit id)")
        try:
            unit = int(first)
        except (TypeError, ValueError):
            raise SpecError(f"meters[{index}]: unit id {first!r} is not a number") from None
        return [unit + i for i in range(spec.count)]
    digits = ADDRESS_DIGITS[spec.protocol]
    if spec.address is None or not spec.address.isdigit() or len(spec.address) != digits:
        raise SpecError(f"meters[{index}]: a {spec.protocol} address is {digits} decimal digits")
    first = int(spec.address)
    if first + spec.count > 10**digits:
        raise SpecError(
            f"meters[{index}]: {spec.count} addresses from {spec.address} overflow {digits} digits"
        )
    return [f"{first + i:0{digits}d}" for i in range(spec.count)]


def _fault_items(spec: MeterSpec) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(spec.faults, dict):
        return [(k, v or {}) for k, v in spec.faults.items()]
    items: list[tuple[str, dict[str, Any]]] = []
    for entry in spec.faults:
        if isinstance(entry, str):
            items.append((entry, {}))
        else:
            items.extend((k, v or {}) for k, v in entry.items())
    return items


def build_meters(spec: BusSpec) -> list[SerialMeter]:
    meters: list[SerialMeter] = []
    for index, m in enumerate(spec.meters):
        cls = PROTOCOLS[m.protocol]
        options = dict(m.model_extra or {})
        if m.protocol == "cjt188" and options.get("meter_type") in HEAT_TYPES:
            cls = Cjt188HeatMeter  # the 46-byte heat-meter layout
        if m.protocol == "modbus":
            options.pop("unit", None)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "address"}
        if m.protocol == "modbus":
            accepted.discard("unit")
        unknown = set(options) - accepted
        if unknown:
            known = sorted(accepted - {"seed", "clock", "tz", "turnaround_s"})
            raise SpecError(
                f"meters[{index}] ({m.protocol}): unknown option(s) {sorted(unknown)}; known: {known}"
            )
        turnaround = None if m.turnaround_ms is None else m.turnaround_ms / 1000.0
        for address in _addresses(m, index):
            try:
                meter = cls(address, seed=spec.seed, tz=spec.tz, turnaround_s=turnaround, **options)  # type: ignore[arg-type]
                for kind, params in _fault_items(m):
                    meter.set_fault(kind, **params)
            except (ValueError, TypeError, FaultError) as exc:
                raise SpecError(f"meters[{index}] ({m.protocol} {address}): {exc}") from None
            meters.append(meter)
    return meters


def build_bus(data: dict[str, Any] | BusSpec) -> SimBus:
    """A bus (not yet serving) from a description; raises :class:`SpecError` with a clear message."""
    try:
        spec = data if isinstance(data, BusSpec) else BusSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pretty(exc)) from None
    meters = build_meters(spec)
    try:
        bus = SimBus(baud=spec.baud, bytesize=spec.bytesize, parity=spec.parity, stopbits=spec.stopbits,
                     pace=spec.pace, turnaround_s=spec.turnaround_ms / 1000.0,
                     clock=spec.clock.build() if spec.clock else None)  # fmt: skip
        for meter in meters:
            bus.add(meter)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return bus


def load_spec(path: str | Path) -> BusSpec:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with bus settings and 'meters'")
    try:
        return BusSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_pretty(exc)}") from None


def load_bus(path: str | Path) -> SimBus:
    """Build the bus a YAML file describes (call ``serve_pty``/``serve_tcp`` on it, or use :func:`serve`)."""
    return build_bus(load_spec(path))


def serve(bus: SimBus, *, pty: str | None = None, tcp: str | None = None) -> list[str]:
    """Start serving where asked (a pty when neither is given); returns the paths/URLs to poll."""
    where: list[str] = []
    if tcp:
        host, port = parse_tcp(tcp)
        where.append(bus.serve_tcp(port, host))
    if pty or not tcp:
        where.append(bus.serve_pty(pty))
    return where


def _pretty(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
