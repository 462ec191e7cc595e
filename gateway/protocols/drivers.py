"""Meter drivers: one configured meter as request frames and decoded quantities, per protocol.

The bus engine gets a driver from ``make_driver`` and only ever calls ``poll``, ``reply_length``
and ``decode`` (the ``MeterDriver`` protocol in base.py). Drivers hold no I/O and no clock; the
only state is the CJ/T 188 sequence counter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from campusmon.quantities import QUANTITIES, convert
from gateway.protocols import cjt188, dlt645, modbus
from gateway.protocols.base import Decoded, FrameError, MeterDriver, Request

PROTOCOLS = ("dlt645", "cjt188", "modbus-rtu")
MAX_FOLLOW_UPS = 32  # a meter that keeps saying "more follows" must not hold the bus forever


class DriverConfigError(ValueError):
    """A meter's protocol options cannot make a driver; the message names the meter and option."""


def _canonical(quantity: str, value: float, unit: str) -> float:
    return round(convert(QUANTITIES[quantity], value, unit), 9)


def _address_matches(configured: str, got: str) -> bool:
    """Configured A characters (abbreviated or wildcard addresses) match any digit."""
    return len(configured) == len(got) and all(
        c == "A" or c == g for c, g in zip(configured, got, strict=True)
    )


# --- DL/T 645 ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dlt645Read:
    """Context of one read: which DI, and where a follow-up frame's elements continue."""

    di: int
    offset: int = 0
    seq: int = 0


class Dlt645Driver:
    """Reads a list of DIs, following multi-frame replies with 12H requests."""

    protocol = "dlt645"

    def __init__(
        self,
        meter_id: str,
        address: str | int,
        dis: Iterable[str | int] | None = None,
        version: str = "2007",
        phases: int = 3,
        preamble: int = 4,
    ) -> None:
        if version not in dlt645.DEFAULT_DIS:
            raise DriverConfigError(
                f"meter {meter_id}: DL/T 645 version must be 2007 or 1997, got {version!r}"
            )
        if phases not in (1, 3):
            raise DriverConfigError(f"meter {meter_id}: phases must be 1 or 3, got {phases!r}")
        if not 0 <= preamble <= 4:
            raise DriverConfigError(f"meter {meter_id}: preamble must be 0..4 FE bytes, got {preamble!r}")
        try:
            self.address = dlt645.normalize_address(address)
            di_list = [dlt645.parse_di(d, version) for d in (dis or dlt645.DEFAULT_DIS[version])]
        except ValueError as exc:
            raise DriverConfigError(f"meter {meter_id}: {exc}") from None
        if self.address in (dlt645.BROADCAST, dlt645.WILDCARD):
            raise DriverConfigError(f"meter {meter_id}: the broadcast or wildcard address cannot be polled")
        self.items: dict[int, dlt645.DataItem] = {}
        for di in di_list:
            item = dlt645.data_item(di, version)
            if item is None or not any(item.quantities) or item.kind != "value":
                text = dlt645.format_di(di, version)
                raise DriverConfigError(
                    f"meter {meter_id}: DL/T 645-{version} DI {text} gives no campusmon quantity"
                )
            self.items[di] = item
        self.meter_id = meter_id
        self.version = version
        self.phases = phases
        self.preamble = preamble

    def poll(self) -> list[Request]:
        return [
            Request(dlt645.encode_read(self.address, di, self.version, self.preamble), Dlt645Read(di))
            for di in self.items
        ]

    def reply_length(self, buf: bytes) -> int | None:
        return dlt645.reply_length(buf)

    def _quantity(self, item: dlt645.DataItem, index: int) -> str | None:
        names = item.quantities
        name = names[index] if index < len(names) else None
        if name is None or self.phases == 3:
            return name
        if "_l1_" in name:
            return name.replace("_l1_", "_")
        return None if ("_l2_" in name or "_l3_" in name) else name

    def decode(self, request: Request, reply: bytes) -> Decoded:
        ctx = request.context
        if not isinstance(ctx, Dlt645Read):
            raise FrameError("unexpected", "request was not made by this driver")
        frame = dlt645.parse_frame(reply, replies_only=True)
        if not _address_matches(self.address, frame.address):
            raise FrameError("address", f"reply from meter {frame.address}, expected {self.address}")
        read = dlt645.decode_read(frame)
        if read.di != ctx.di:
            want, got = dlt645.format_di(ctx.di, self.version), dlt645.format_di(read.di, read.version)
            raise FrameError("unexpected", f"reply carries DI {got}, asked for {want}")
        item = self.items[ctx.di]
        values: dict[str, float] = {}
        for i, value in enumerate(read.values):
            quantity = self._quantity(item, ctx.offset + i)
            if quantity is not None and value is not None:
                values[quantity] = _canonical(quantity, value, item.unit)
        follow_up: tuple[Request, ...] = ()
        if read.follow_up:
            if self.version == "1997":
                raise FrameError("unexpected", "DL/T 645-1997 follow-up frames are not supported")
            if ctx.seq >= MAX_FOLLOW_UPS:
                raise FrameError("unexpected", f"more than {MAX_FOLLOW_UPS} follow-up frames for one DI")
            nxt = Dlt645Read(ctx.di, ctx.offset + len(read.values), ctx.seq + 1)
            frame_bytes = dlt645.encode_read_follow_up(self.address, ctx.di, nxt.seq, self.preamble)
            follow_up = (Request(frame_bytes, nxt),)
        return Decoded(values, follow_up)


def dlt645_time_sync(when: datetime, preamble: int = 4) -> Request:
    """The broadcast time-set request (08H); meters do not answer it."""
    return Request(dlt645.encode_time_sync(when, preamble), None, expects_reply=False)


# --- CJ/T 188 ---------------------------------------------------------------------------------------


class Cjt188Driver:
    """Reads 901F (current metering data) from a water, gas or heat meter, as that kind's quantities."""

    protocol = "cjt188"

    def __init__(
        self,
        meter_id: str,
        address: str | int,
        meter_type: str | int = "cold_water",
        model: cjt188.Cjt188Model = cjt188.MODELS["2004"],
        preamble: int = 4,
    ) -> None:
        if not 0 <= preamble <= 4:
            raise DriverConfigError(f"meter {meter_id}: preamble must be 0..4 FE bytes, got {preamble!r}")
        try:
            self.address = cjt188.normalize_address(address)
            self.meter_type = cjt188.meter_type_code(meter_type)
            if self.meter_type != cjt188.WILDCARD_TYPE:
                self.kind = cjt188.carrier(self.meter_type)
        except ValueError as exc:
            raise DriverConfigError(f"meter {meter_id}: {exc}") from None
        if self.address == cjt188.WILDCARD or self.meter_type == cjt188.WILDCARD_TYPE:
            raise DriverConfigError(f"meter {meter_id}: the wildcard address cannot be polled")
        self.meter_id = meter_id
        self.model = model
        self.preamble = preamble
        self._ser = itertools.count()

    def poll(self) -> list[Request]:
        ser = next(self._ser) & 0xFF if self.model.increment_ser else 0
        frame = cjt188.encode_read(self.meter_type, self.address, ser, self.model, self.preamble)
        return [Request(frame, ser)]

    def reply_length(self, buf: bytes) -> int | None:
        return cjt188.reply_length(buf)

    def decode(self, request: Request, reply: bytes) -> Decoded:
        frame = cjt188.parse_frame(reply, replies_only=True)
        if not _address_matches(self.address, frame.address):
            raise FrameError("address", f"reply from meter {frame.address}, expected {self.address}")
        data = cjt188.decode_meter_data(frame, self.model)
        if self.kind == "heat":
            return Decoded(self._heat(data))
        if self.kind == "gas" and data.heat:
            raise FrameError("unexpected", f"gas meter {self.address} sent the 46-byte heat-meter layout")
        values: dict[str, float] = {}
        volume = self._volume(data.current_flow)
        if volume is not None:
            values["gas_volume_m3" if self.kind == "gas" else "volume_m3"] = volume
        rate = data.heat.get("flow_rate")
        if isinstance(rate, cjt188.Measure) and rate.canonical is not None and rate.canonical_unit == "m3/h":
            values["flow_m3h"] = rate.canonical
        return Decoded(values)

    def _volume(self, flow: cjt188.Measure | None) -> float | None:
        """A cumulative volume in m3; a register in any other unit is refused, not guessed."""
        if flow is None or flow.value is None:
            return None
        if flow.canonical_unit != "m3" or flow.canonical is None:
            raise FrameError("unexpected", f"meter {self.address} reports its volume in {flow.unit}")
        return flow.canonical

    def _heat(self, data: cjt188.MeterData) -> dict[str, float]:
        """Heat (20H), cooling (21H) and combined (22H) meters: the current thermal-energy register and
        the values beside it. The settlement-day register is not a reading of now, so it is left out."""
        if not data.heat:
            raise FrameError("unexpected", f"heat meter {self.address} sent the 22-byte water/gas layout")
        values: dict[str, float] = {}
        energy = data.heat.get("current_heat")
        if isinstance(energy, cjt188.Measure) and energy.value is not None:
            if energy.canonical_unit != "kWh" or energy.canonical is None:
                raise FrameError("unexpected", f"heat meter {self.address} reports its energy in {energy.unit}")
            values["heat_energy_kwh"] = energy.canonical
        power = data.heat.get("heat_power")
        if isinstance(power, cjt188.Measure) and power.canonical is not None and power.canonical_unit == "kW":
            values["heat_power_w"] = round(power.canonical * 1000.0, 6)
        rate = data.heat.get("flow_rate")
        if isinstance(rate, cjt188.Measure) and rate.canonical is not None and rate.canonical_unit == "m3/h":
            values["heat_flow_m3h"] = rate.canonical
        volume = self._volume(data.current_flow)
        if volume is not None:
            values["heat_volume_m3"] = volume
        for name in ("supply_temp_c", "return_temp_c"):
            t = data.heat.get(name)
            if isinstance(t, float | int):
                values[name] = float(t)
        return values


def cjt188_model(options: Mapping[str, Any], meter_id: str) -> cjt188.Cjt188Model:
    """A named model with per-meter overrides (di_order, unit_first, valve_mask, battery_mask...)."""
    name = options.get("model", "2004")
    if name not in cjt188.MODELS:
        raise DriverConfigError(
            f"meter {meter_id}: unknown CJ/T 188 model {name!r} (known: {', '.join(cjt188.MODELS)})"
        )
    overrides = {k: options[k] for k in _CJT188_MODEL_KEYS if k in options}
    try:
        if "valve_states" in overrides:
            states = overrides["valve_states"]
            if not isinstance(states, Mapping):
                raise ValueError("valve_states must map codes to names")
            overrides["valve_states"] = tuple((int(k), str(v)) for k, v in states.items())
        for key in ("valve_mask", "battery_mask"):
            if isinstance(overrides.get(key), str):
                try:
                    overrides[key] = int(overrides[key].removeprefix("0x"), 16)
                except ValueError:
                    raise ValueError(f"{key} must be a hex byte such as 03 or C0") from None
        return replace(cjt188.MODELS[name], **overrides)
    except (TypeError, ValueError) as exc:
        raise DriverConfigError(f"meter {meter_id}: {exc}") from None


_CJT188_MODEL_KEYS = ("di_order", "unit_first", "valve_mask", "valve_states", "battery_mask", "increment_ser")


# --- Modbus RTU -------------------------------------------------------------------------------------


class ModbusRtuDriver:
    """Reads a profile's mapped registers in as few requests as the planner allows."""

    protocol = "modbus-rtu"

    def __init__(
        self,
        meter_id: str,
        unit_id: int,
        profile: modbus.Profile,
        max_gap: int | None = None,
        max_count: int | None = None,
    ) -> None:
        if isinstance(unit_id, bool) or not isinstance(unit_id, int) or not 1 <= unit_id <= 247:
            raise DriverConfigError(f"meter {meter_id}: Modbus unit id must be 1..247, got {unit_id!r}")
        gap = profile.max_gap if max_gap is None else max_gap
        count = profile.max_count if max_count is None else max_count
        if (
            not isinstance(gap, int)
            or gap < 0
            or not isinstance(count, int)
            or not 4 <= count <= modbus.MAX_REGISTERS
        ):
            raise DriverConfigError(f"meter {meter_id}: max_gap must be >= 0 and max_count 4..125")
        mapped = [r for r in profile.registers if r.quantity]
        if not mapped:
            raise DriverConfigError(f"meter {meter_id}: profile {profile.name} maps no quantity")
        self.meter_id = meter_id
        self.unit_id = unit_id
        self.profile = profile
        self.blocks = modbus.plan_reads(mapped, count, gap)
        self._byte_counts = {
            f: {2 * b.count for b in self.blocks if b.function == f}
            for f in {b.function for b in self.blocks}
        }

    def poll(self) -> list[Request]:
        return [
            Request(modbus.encode_read(self.unit_id, b.function, b.start, b.count), b) for b in self.blocks
        ]

    def reply_length(self, buf: bytes) -> int | None:
        ends = [modbus.reply_length(buf, self.unit_id, f, counts) for f, counts in self._byte_counts.items()]
        known = [e for e in ends if e is not None]
        return min(known) if known else None

    def decode(self, request: Request, reply: bytes) -> Decoded:
        block = request.context
        if not isinstance(block, modbus.ReadBlock):
            raise FrameError("unexpected", "request was not made by this driver")
        words = modbus.decode_read_reply(reply, self.unit_id, block.function, block.count)
        return Decoded(block.values(words))


# --- factory ----------------------------------------------------------------------------------------


def _take(options: Mapping[str, Any], allowed: Iterable[str], protocol: str, meter_id: str) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = set(opts) - set(allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise DriverConfigError(
            f"meter {meter_id}: unknown {protocol} options {sorted(unknown)} (allowed: {known})"
        )
    return opts


def _int_option(value: Any, what: str, meter_id: str) -> int:
    if isinstance(value, bool):
        raise DriverConfigError(f"meter {meter_id}: {what} must be an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text, 10) if text.isdigit() else int(text, 0)
    except ValueError:
        raise DriverConfigError(f"meter {meter_id}: {what} must be an integer, got {value!r}") from None


def make_driver(
    protocol: str, meter_id: str, address: str | int, options: Mapping[str, Any] | None = None
) -> MeterDriver:
    """A driver for one configured meter; DriverConfigError names what is wrong with the config.

    Options per protocol:
      dlt645:     dis (list of DI strings, default energy + V/I/P blocks + PF + frequency),
                  version ("2007" | "1997"), phases (3 | 1), preamble (FE bytes, default 4)
      cjt188:     meter_type (cold_water, hot_water, heat, gas... or a hex code), model ("2004",
                  "2018", "jy-heat", "reversed-status"), di_order, unit_first, valve_mask,
                  valve_states, battery_mask, increment_ser, preamble
      modbus-rtu: profile (shipped name or a .yaml path; required), unit_id (overrides address),
                  max_gap, max_count
    """
    opts = options or {}
    if protocol == "dlt645":
        o = _take(opts, ("dis", "version", "phases", "preamble"), protocol, meter_id)
        dis = o.get("dis")
        if dis is not None and (isinstance(dis, str | int) or not dis):
            raise DriverConfigError(f"meter {meter_id}: dis must be a non-empty list of data identifiers")
        return Dlt645Driver(
            meter_id,
            address,
            dis,
            str(o.get("version", "2007")),
            _int_option(o.get("phases", 3), "phases", meter_id),
            _int_option(o.get("preamble", 4), "preamble", meter_id),
        )
    if protocol == "cjt188":
        o = _take(opts, ("meter_type", "model", "preamble", *_CJT188_MODEL_KEYS), protocol, meter_id)
        return Cjt188Driver(
            meter_id,
            address,
            o.get("meter_type", "cold_water"),
            cjt188_model(o, meter_id),
            _int_option(o.get("preamble", 4), "preamble", meter_id),
        )
    if protocol == "modbus-rtu":
        o = _take(opts, ("profile", "unit_id", "max_gap", "max_count"), protocol, meter_id)
        if "profile" not in o:
            raise DriverConfigError(
                f"meter {meter_id}: modbus-rtu needs a profile (shipped: {', '.join(modbus.profile_names())})"
            )
        try:
            profile = modbus.load_profile(
                o["profile"] if isinstance(o["profile"], str | Path) else str(o["profile"])
            )
        except modbus.ProfileError as exc:
            raise DriverConfigError(f"meter {meter_id}: {exc}") from None
        unit = _int_option(o.get("unit_id", address), "unit id", meter_id)
        gap = o.get("max_gap")
        count = o.get("max_count")
        return ModbusRtuDriver(
            meter_id,
            unit,
            profile,
            None if gap is None else _int_option(gap, "max_gap", meter_id),
            None if count is None else _int_option(count, "max_count", meter_id),
        )
    raise DriverConfigError(f"meter {meter_id}: unknown protocol {protocol!r} (use {', '.join(PROTOCOLS)})")
