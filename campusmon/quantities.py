"""The fixed vocabulary of measured quantities and the SenML units that map onto them.

Every part of the system (codecs, wire format, InfluxDB schema, consumption, rules) speaks these
names, so a new quantity is added here once and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MeterKind(StrEnum):
    ELECTRICITY = "electricity"
    WATER = "water"


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    kind: MeterKind
    unit: str
    cumulative: bool = False
    signed: bool = True
    description: str = ""


_Q = Quantity
QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        _Q("energy_kwh", MeterKind.ELECTRICITY, "kWh", True, False, "cumulative imported active energy"),
        _Q(
            "export_energy_kwh",
            MeterKind.ELECTRICITY,
            "kWh",
            True,
            False,
            "cumulative exported active energy",
        ),
        _Q("power_w", MeterKind.ELECTRICITY, "W", description="total active power (signed)"),
        _Q("voltage_v", MeterKind.ELECTRICITY, "V", signed=False, description="phase voltage"),
        _Q("current_a", MeterKind.ELECTRICITY, "A", description="phase current (signed)"),
        _Q("power_factor", MeterKind.ELECTRICITY, "", description="total power factor, -1..1"),
        _Q("frequency_hz", MeterKind.ELECTRICITY, "Hz", signed=False, description="grid frequency"),
        _Q("volume_m3", MeterKind.WATER, "m3", True, False, "cumulative water volume"),
        _Q("flow_m3h", MeterKind.WATER, "m3/h", signed=False, description="instantaneous flow"),
    )
}

# Per-phase variants are common on three-phase meters; they share the base quantity's unit.
for _base in ("voltage_v", "current_a", "power_w"):
    for _phase in ("l1", "l2", "l3"):
        _b = QUANTITIES[_base]
        _name = f"{_base.rsplit('_', 1)[0]}_{_phase}_{_base.rsplit('_', 1)[1]}"
        QUANTITIES[_name] = Quantity(_name, _b.kind, _b.unit, False, _b.signed, f"{_b.description}, {_phase}")

CUMULATIVE = frozenset(q.name for q in QUANTITIES.values() if q.cumulative)

# SenML unit -> (canonical unit, multiplier). RFC 8428 §12.1 names plus the secondary units of RFC 8798.
_UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "kWh": ("kWh", 1.0),
    "Wh": ("kWh", 1e-3),
    "J": ("kWh", 1 / 3.6e6),
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "V": ("V", 1.0),
    "A": ("A", 1.0),
    "mA": ("A", 1e-3),
    "/": ("", 1.0),
    "%RH": ("", 1.0),  # never valid for power_factor; listed so the error says "wrong unit", not "unknown"
    "Hz": ("Hz", 1.0),
    "m3": ("m3", 1.0),
    "l": ("m3", 1e-3),
    "L": ("m3", 1e-3),
    "m3/s": ("m3/h", 3600.0),
    "m3/h": ("m3/h", 1.0),
    "l/s": ("m3/h", 3.6),
    "l/min": ("m3/h", 0.06),
}


class UnitError(ValueError):
    """A unit that is unknown or does not fit the quantity."""


def convert(quantity: Quantity, value: float, unit: str | None) -> float:
    """Return ``value`` in the quantity's canonical unit.

    A missing unit means the value is already canonical (the quantity name carries its unit).
    """
    if unit is None or unit == quantity.unit:
        return value
    if quantity.unit == "" and unit == "/":
        return value
    try:
        canonical, factor = _UNIT_FACTORS[unit]
    except KeyError:
        raise UnitError(f"unknown unit {unit!r}") from None
    if canonical != quantity.unit or unit == "%RH":
        raise UnitError(f"unit {unit!r} does not fit {quantity.name} (expects {quantity.unit or 'no unit'})")
    return value * factor
