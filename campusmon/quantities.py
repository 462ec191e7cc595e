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
    GAS = "gas"
    HEAT = "heat"  # heating and cooling (thermal energy) meters: the sub-item (04/05) says which


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
        # Gas: the billing register is the volume the meter bills by -- at base conditions when a
        # volume corrector converts it, else at metering conditions (docs/wire-format.md#gas).
        _Q("gas_volume_m3", MeterKind.GAS, "m3", True, False, "cumulative gas volume (billing register)"),
        _Q(
            "gas_volume_uncorrected_m3",
            MeterKind.GAS,
            "m3",
            True,
            False,
            "cumulative gas volume at metering conditions (volume corrector Vm)",
        ),
        _Q("gas_flow_m3h", MeterKind.GAS, "m3/h", signed=False, description="instantaneous gas flow"),
        _Q("gas_pressure_kpa", MeterKind.GAS, "kPa", signed=False, description="absolute gas pressure"),
        _Q("gas_temp_c", MeterKind.GAS, "Cel", description="gas temperature"),
        # Heat: one thermal-energy register, kept in kWh (GJ and MWh are converted at the wire).
        _Q(
            "heat_energy_kwh",
            MeterKind.HEAT,
            "kWh",
            True,
            False,
            "cumulative thermal energy (heat on a heating meter, cold on a cooling meter)",
        ),
        _Q("heat_volume_m3", MeterKind.HEAT, "m3", True, False, "cumulative water volume through the meter"),
        _Q("heat_power_w", MeterKind.HEAT, "W", signed=False, description="thermal power"),
        _Q("heat_flow_m3h", MeterKind.HEAT, "m3/h", signed=False, description="instantaneous water flow"),
        _Q("supply_temp_c", MeterKind.HEAT, "Cel", description="supply (flow) water temperature"),
        _Q("return_temp_c", MeterKind.HEAT, "Cel", description="return water temperature"),
    )
}

# Per-phase variants are common on three-phase meters; they share the base quantity's unit.
for _base in ("voltage_v", "current_a", "power_w"):
    for _phase in ("l1", "l2", "l3"):
        _b = QUANTITIES[_base]
        _name = f"{_base.rsplit('_', 1)[0]}_{_phase}_{_base.rsplit('_', 1)[1]}"
        QUANTITIES[_name] = Quantity(_name, _b.kind, _b.unit, False, _b.signed, f"{_b.description}, {_phase}")

CUMULATIVE = frozenset(q.name for q in QUANTITIES.values() if q.cumulative)

# The register consumption is billed and counted from, and the rate that bounds how fast it can rise
# (a meter's ``max_rate`` is in the rate's unit), per kind.
REGISTER: dict[MeterKind, str] = {
    MeterKind.ELECTRICITY: "energy_kwh",
    MeterKind.WATER: "volume_m3",
    MeterKind.GAS: "gas_volume_m3",
    MeterKind.HEAT: "heat_energy_kwh",
}
RATE: dict[MeterKind, str] = {
    MeterKind.ELECTRICITY: "power_w",
    MeterKind.WATER: "flow_m3h",
    MeterKind.GAS: "gas_flow_m3h",
    MeterKind.HEAT: "heat_power_w",
}

# Energy classification codes (docs/references.md#sub-item-codes): the first two digits name the
# carrier. 05 (district cooling) is metered by heat meters, so it is a ``heat`` meter's code too.
CATEGORY_KIND: dict[str, MeterKind] = {
    "01": MeterKind.ELECTRICITY,
    "02": MeterKind.WATER,
    "03": MeterKind.GAS,
    "04": MeterKind.HEAT,
    "05": MeterKind.HEAT,
}


def kind_of_category(code: str) -> MeterKind:
    """The kind a sub-item code belongs to; codes outside the table stay electricity, as they always were."""
    return CATEGORY_KIND.get(code[:2], MeterKind.ELECTRICITY)


# SenML unit -> (canonical unit, multiplier). RFC 8428 §12.1 names plus the secondary units of RFC 8798.
_UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "kWh": ("kWh", 1.0),
    "Wh": ("kWh", 1e-3),
    "J": ("kWh", 1 / 3.6e6),
    "kJ": ("kWh", 1 / 3.6e3),
    "MJ": ("kWh", 1 / 3.6),
    "GJ": ("kWh", 1e3 / 3.6),  # not SenML-registered; heat meters commonly count in GJ
    "MWh": ("kWh", 1e3),
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "MW": ("W", 1e6),
    "V": ("V", 1.0),
    "A": ("A", 1.0),
    "mA": ("A", 1e-3),
    "/": ("", 1.0),
    "%RH": ("", 1.0),  # never valid for power_factor; listed so the error says "wrong unit", not "unknown"
    "Hz": ("Hz", 1.0),
    "Cel": ("Cel", 1.0),
    "Pa": ("kPa", 1e-3),
    "hPa": ("kPa", 0.1),
    "kPa": ("kPa", 1.0),
    "MPa": ("kPa", 1e3),
    "bar": ("kPa", 100.0),
    "mbar": ("kPa", 0.1),
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
