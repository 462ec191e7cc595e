"""Standard coal equivalent (kgce) and CO2 factors per energy carrier, with their sources.

Comprehensive energy consumption (综合能耗) adds carriers in kilograms of standard coal equivalent,
1 kgce = 29,307 kJ lower heating value. The defaults are the reference values of GB/T 2589-2020
《综合能耗计算通则》 appendix A, table "各种能源折标准煤参考系数" (docs/references.md#standard-coal),
used when a site has no measured heating value. A site overrides any of them in ``energy_factors:``
and chooses the electricity basis: the equivalent value (当量值, 0.1229 kgce/kWh, the heat content
of a kWh) or an equal-value factor (等价值, the coal burnt to supply a kWh) it states itself.

CO2 factors are kept per carrier and per year with their source: electricity from the MEE/NBS
national or regional grid averages (``api.accounting.tariffs``), fuels and heat from the IPCC 2006
defaults below unless the site sets its provincial inventory values.

Nothing here imports the campus config, so the config can validate ``energy_factors:`` at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Carrier = Literal["electricity", "water", "gas", "heat", "coal", "diesel", "petrol", "lpg"]
CARRIERS: tuple[str, ...] = ("electricity", "water", "gas", "heat", "coal", "diesel", "petrol", "lpg")
METERED = ("electricity", "water", "gas", "heat")  # carriers that are meter kinds
FUELS = ("coal", "diesel", "petrol", "lpg")  # carriers delivered and entered by hand

# The unit every figure of a carrier is kept in (fuels as mass: densities convert litres).
NATIVE_UNIT: dict[str, str] = {
    "electricity": "kWh",
    "water": "m3",
    "gas": "m3",
    "heat": "kWh",
    "coal": "kg",
    "diesel": "kg",
    "petrol": "kg",
    "lpg": "kg",
}

KGCE_MJ = 29.307  # MJ per kgce (7,000 kcal)
MJ_PER = {"kWh": 3.6, "MJ": 1.0, "GJ": 1000.0}

GBT2589 = "GB/T 2589-2020 综合能耗计算通则, appendix A 各种能源折标准煤参考系数"
GBT2589_COPY = "reproduced at http://www.huatuo6.cn/wenku/rdvvd/4gNGBm3BKO"


@dataclass(frozen=True, slots=True)
class Reference:
    """One default conversion factor and where it comes from."""

    carrier: str
    kgce: float  # per native unit
    per: str  # the unit the source states it in
    stated: str  # the factor as the source writes it
    source: str
    note: str = ""


# Heat is stated per MJ (0.03412 kgce/MJ = 1 / 29.307); kept per kWh of heat, 3.6 MJ.
KGCE_REFERENCE: dict[str, Reference] = {
    r.carrier: r
    for r in (
        Reference(
            "electricity",
            0.1229,
            "kWh",
            "0.1229 kgce/kWh (当量值)",
            GBT2589,
            "equivalent value: 3,600 kJ/kWh ÷ 29,307 kJ/kgce",
        ),
        Reference(
            "coal", 0.7143, "kg", "原煤 0.7143 kgce/kg", GBT2589, "raw coal, 20,908 kJ/kg (5,000 kcal/kg)"
        ),
        Reference(
            "gas",
            1.2143,
            "m3",
            "天然气 1.1000–1.3300 kgce/m3; 1.2143 commonly used",
            GBT2589,
            "natural gas, 32,238–38,931 kJ/m3; set the supplier's heating value if known",
        ),
        Reference("lpg", 1.7143, "kg", "液化石油气 1.7143 kgce/kg", GBT2589, "50,179 kJ/kg"),
        Reference("petrol", 1.4714, "kg", "汽油 1.4714 kgce/kg", GBT2589, "43,070 kJ/kg"),
        Reference("diesel", 1.4571, "kg", "柴油 1.4571 kgce/kg", GBT2589, "42,652 kJ/kg"),
        Reference(
            "heat",
            0.03412 * 3.6,
            "MJ",
            "热力 0.03412 kgce/MJ",
            GBT2589,
            "1 MJ ÷ 29.307 MJ/kgce; 0.122832 kgce per kWh of heat",
        ),
        Reference(
            "water",
            0.2571,
            "m3",
            "新鲜水 0.2571 kgce/t",
            GBT2589 + " (energy-consuming working media 耗能工质)",
            "not counted in comprehensive energy use by default (energy_factors.comprehensive)",
        ),
    )
}
DEFAULT_KGCE: dict[str, float] = {c: r.kgce for c, r in KGCE_REFERENCE.items()}

# Lower heating values behind the GB/T 2589 factors (kJ per native unit), for the fuel CO2 defaults.
_NCV_KJ = {"coal": 20908.0, "diesel": 42652.0, "petrol": 43070.0, "lpg": 50179.0}
# IPCC 2006 Guidelines vol. 2 ch. 2 table 2.2, default CO2 emission factors of stationary combustion
# (kg CO2 per TJ). Provincial inventory guidelines publish their own; set them in energy_factors.co2.
IPCC_KG_PER_TJ = {
    "coal": 94600.0,
    "diesel": 74100.0,
    "petrol": 69300.0,
    "lpg": 63100.0,
    "gas": 56100.0,
}
IPCC = "IPCC 2006 Guidelines for National GHG Inventories, vol. 2 ch. 2 table 2.2 (default CO2 factors)"
HEAT_CO2_T_PER_GJ = 0.11
HEAT_CO2_SOURCE = "0.11 tCO2/GJ purchased heat, the default of the NDRC enterprise GHG accounting guidelines"
# Densities convert litres of liquid fuel to kg. The usual figures; a receipt's own density wins.
DEFAULT_DENSITY_KG_PER_L = {"diesel": 0.84, "petrol": 0.74}


def _fuel_co2(carrier: str) -> float:
    """kg CO2 per kg of fuel: GB/T 2589 heating value × IPCC emission factor."""
    return _NCV_KJ[carrier] * 1e-9 * IPCC_KG_PER_TJ[carrier]


DEFAULT_CO2: dict[str, tuple[float, str]] = {
    **{c: (_fuel_co2(c), f"{IPCC} × the GB/T 2589 heating value") for c in _NCV_KJ},
    # natural gas at the heating value of 1.2143 kgce/m3 (35.588 MJ/m3)
    "gas": (1.2143 * KGCE_MJ * 1e-6 * IPCC_KG_PER_TJ["gas"], f"{IPCC} × 1.2143 kgce/m3 × 29.307 MJ/kgce"),
    "heat": (HEAT_CO2_T_PER_GJ * 3.6, HEAT_CO2_SOURCE + "; per kWh of heat = 0.11 × 3.6 kg"),
    "water": (0.0, "no factor in the sources consulted (docs/references.md#gaps)"),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Co2Override(_Model):
    """A site's CO2 factor of one carrier for one year (or every year: ``year`` left out)."""

    carrier: Carrier
    year: int | None = Field(default=None, ge=1990, le=2100)
    kg_per_unit: float = Field(ge=0, description="kg CO2 per native unit (kWh, m3, kg)")
    source: str = Field(min_length=1)


class EnergyFactors(_Model):
    """The ``energy_factors:`` section of the campus config."""

    electricity_basis: Literal["equivalent", "equal_value"] = "equivalent"
    electricity_equal_value: float | None = Field(
        default=None, gt=0, description="kgce/kWh of the equal-value basis (等价值), stated by the site"
    )
    kgce: dict[Carrier, float] = Field(default_factory=dict, description="kgce per native unit, overrides")
    density_kg_per_l: dict[Literal["diesel", "petrol"], float] = Field(default_factory=dict)
    co2: list[Co2Override] = []
    comprehensive: list[Carrier] = Field(
        default_factory=lambda: ["electricity", "gas", "heat", "coal", "diesel", "petrol", "lpg"],
        description="carriers summed into comprehensive energy use (water is assessed in m3)",
    )
    source: str = Field(default="", description="where the site's overrides come from")

    @model_validator(mode="after")
    def _basis(self) -> EnergyFactors:
        if self.electricity_basis == "equal_value" and self.electricity_equal_value is None:
            raise ValueError(
                "electricity_basis equal_value needs electricity_equal_value (kgce/kWh, e.g. the "
                "national average coal rate of power supply for the year)"
            )
        if self.electricity_basis == "equal_value" and "electricity" in self.kgce:
            raise ValueError("set electricity_equal_value, not kgce.electricity, for the equal-value basis")
        bad = {c: v for c, v in self.kgce.items() if v < 0}
        if bad:
            raise ValueError(f"negative kgce factor(s): {bad}")
        bad_d = {c: v for c, v in self.density_kg_per_l.items() if not 0.3 < v < 1.5}
        if bad_d:
            raise ValueError(f"density outside 0.3–1.5 kg/L: {bad_d}")
        if any(o.carrier == "electricity" for o in self.co2):
            # One source for grid CO2, so the reports' co2_kg column and measure=co2 always agree.
            raise ValueError(
                "co2: set electricity CO2 factors in accounting.tariffs.co2_factors (region, year, "
                "kg_per_kwh, source), not here"
            )
        seen = set()
        for o in self.co2:
            if (o.carrier, o.year) in seen:
                raise ValueError(f"co2: {o.carrier} {o.year or 'every year'} is given twice")
            seen.add((o.carrier, o.year))
        return self


def parse_energy_factors(raw: Any) -> EnergyFactors:
    """Validate the section; raises ValueError with the key path, as the rest of the config does."""
    if raw is None:
        raw = {}
    try:
        return EnergyFactors.model_validate(raw)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}")
        raise ValueError("; ".join(parts)) from None


# Grid factors by year: supplied by the caller (the tariffs' table), so this module stays standalone.
GridFactor = Any  # an object with ``kg_per_kwh`` and ``source`` (api.accounting.tariffs.Co2Factor)


@dataclass(frozen=True, slots=True)
class Factors:
    """The factors in force for one site: kgce and CO2 per native unit of each carrier."""

    settings: EnergyFactors
    grid: Any = None  # callable(year) -> GridFactor; None: no electricity CO2

    def kgce_factor(self, carrier: str) -> float:
        s = self.settings
        if carrier == "electricity" and s.electricity_basis == "equal_value":
            return float(s.electricity_equal_value or 0.0)
        return float(s.kgce.get(carrier, DEFAULT_KGCE[carrier]))  # type: ignore[call-overload]

    def kgce_source(self, carrier: str) -> str:
        s = self.settings
        if carrier == "electricity" and s.electricity_basis == "equal_value":
            return "site: equal-value electricity factor" + (f" ({s.source})" if s.source else "")
        if carrier in s.kgce:
            return "site override" + (f" ({s.source})" if s.source else "")
        r = KGCE_REFERENCE[carrier]
        return f"{r.source}: {r.stated}"

    def kgce(self, carrier: str, amount: float) -> float:
        return amount * self.kgce_factor(carrier)

    def co2_factor(self, carrier: str, year: int) -> tuple[float, str]:
        """(kg CO2 per native unit, source) for a consumption year: a site value for the year, the
        site's all-years value, then the built-in one (the grid's latest published year for electricity)."""
        own = {(o.carrier, o.year): o for o in self.settings.co2 if o.carrier == carrier}
        pick = own.get((carrier, year)) or own.get((carrier, None))
        if pick is None:
            earlier = sorted(y for (_, y) in own if y is not None and y <= year)
            pick = own.get((carrier, earlier[-1])) if earlier else None
        if pick is not None:
            return pick.kg_per_unit, pick.source
        if carrier == "electricity":
            if self.grid is None:
                return 0.0, "no grid factor configured"
            f = self.grid(year)
            return float(f.kg_per_kwh), f"{f.source} ({f.region}, {f.year} data)"
        return DEFAULT_CO2[carrier]

    def co2(self, carrier: str, amount: float, year: int) -> float:
        return amount * self.co2_factor(carrier, year)[0]

    def density(self, fuel: str) -> float:
        return float(self.settings.density_kg_per_l.get(fuel, DEFAULT_DENSITY_KG_PER_L[fuel]))  # type: ignore[call-overload]

    def in_comprehensive(self, carrier: str) -> bool:
        return carrier in self.settings.comprehensive

    def table(self, year: int) -> list[dict[str, Any]]:
        """Every factor in force, for reports and the API: what a figure was computed with."""
        out = []
        for c in CARRIERS:
            co2, co2_src = self.co2_factor(c, year)
            out.append(
                {
                    "carrier": c,
                    "unit": NATIVE_UNIT[c],
                    "kgce_per_unit": self.kgce_factor(c),
                    "kgce_source": self.kgce_source(c),
                    "co2_kg_per_unit": co2,
                    "co2_source": co2_src,
                    "in_comprehensive": self.in_comprehensive(c),
                }
            )
        return out


def heat_to_kwh(value: float, unit: str) -> float:
    """Heat meters report kWh, MJ or GJ; the assessment keeps heat in kWh."""
    try:
        return value * MJ_PER[unit] / 3.6
    except KeyError:
        raise ValueError(f"unit {unit!r} is not a heat unit (kWh, MJ, GJ)") from None
