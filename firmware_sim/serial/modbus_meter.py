"""A simulated Modbus RTU meter built on pymodbus's device model.

Each meter is a pymodbus ``SimDevice`` whose register blocks follow a real meter's map (Eastron
SDM630 and SDM120: input registers, float32 ABCD; Kaifeng Xintai water meter: holding registers,
float32 DCBA). A ``SimDevice`` action refreshes the registers from the load model on every read, so
the same meter object serves through pymodbus's own server (:class:`PymodbusServer`, Modbus-only) or
on a :class:`~firmware_sim.serial.bus.SimBus`, which decodes requests with pymodbus's PDU decoder, lets
pymodbus's ``datastore_update`` build the reply and frames it with pymodbus's RTU framer (so Modbus
meters can share a bus with DL/T 645 and CJ/T 188 meters and get byte pacing and faults).

The SDM630 answers any read inside 0x0000-0x004F (undefined cells read 0.0), as the 80-register batch
reads of real installations rely on; the SDM120 and the water meter answer exception 02 for a read
that touches a hole in their map, so a poller has to split its batches there.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from campusmon.quantities import MeterKind
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.meter import INCOMPLETE, INVALID, SerialMeter
from firmware_sim.serial.model import (
    ELECTRIC_PROFILES,
    GAS_PROFILES,
    HEAT_PROFILES,
    WATER_PROFILES,
    ElectricModel,
    HeatModel,
    WaterModel,
)

WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
SUPPORTED_FUNCTIONS = frozenset({3, 4, 6, 16})
_DECODER = DecodePDU(True)
_FRAMER = FramerRTU(DecodePDU(True))


def float_to_registers(value: float, order: WordOrder) -> tuple[int, int]:
    """A float32 as two registers in one of the four byte orders seen on meters."""
    a, b, c, d = struct.pack(">f", value)
    wire = {"ABCD": (a, b, c, d), "CDAB": (c, d, a, b), "BADC": (b, a, d, c), "DCBA": (d, c, b, a)}[order]
    return (wire[0] << 8) | wire[1], (wire[2] << 8) | wire[3]


def as_float32(value: float) -> float:
    """The value a float32 register really holds."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


@dataclass(frozen=True)
class Reg:
    """One value in a register map: where it is, what model value fills it, how it is typed."""

    address: int
    source: str
    kind: Literal["float32", "uint16", "uint32"] = "float32"
    quantity: str | None = None
    scale: float = 1.0  # uint32 registers hold value / scale (0.01 m3 steps...)
    to_canonical: float = 1.0  # register unit -> the quantity's unit (kW -> W: 1000)

    @property
    def size(self) -> int:
        return 1 if self.kind == "uint16" else 2


@dataclass(frozen=True)
class RegisterMap:
    """A meter model's registers: the function code that reads them, the float order, the entries."""

    name: str
    kind: Literal["electricity", "water", "gas", "heat"]
    function: int  # 4 = input registers, 3 = holding registers
    order: WordOrder
    entries: tuple[Reg, ...]
    config: tuple[Reg, ...] = ()  # holding registers with settings (read-only here)
    zero_fill: tuple[tuple[int, int], ...] = ()  # address ranges that read as 0 where nothing is mapped


def _phases(base: int, source: str, quantity: str | None) -> tuple[Reg, ...]:
    return tuple(
        Reg(
            base + 2 * i,
            f"{source}{i + 1}",
            quantity=quantity.replace("#", f"l{i + 1}") if quantity else None,
        )
        for i in range(3)
    )


SDM630 = RegisterMap(
    "sdm630",
    "electricity",
    4,
    "ABCD",
    (
        *_phases(0x00, "v", "voltage_#_v"),
        *_phases(0x06, "i", "current_#_a"),
        *_phases(0x0C, "p", "power_#_w"),
        *_phases(0x12, "va", None),
        *_phases(0x18, "var", None),
        *_phases(0x1E, "pf", None),
        *_phases(0x24, "ang", None),
        Reg(0x2A, "v_avg"),
        Reg(0x2E, "i_avg"),
        Reg(0x30, "i_sum"),
        Reg(0x34, "p", quantity="power_w"),
        Reg(0x38, "va"),
        Reg(0x3C, "var"),
        Reg(0x3E, "pf", quantity="power_factor"),
        Reg(0x42, "ang"),
        Reg(0x46, "f", quantity="frequency_hz"),
        Reg(0x48, "imp_kwh", quantity="energy_kwh"),
        Reg(0x4A, "exp_kwh", quantity="export_energy_kwh"),
        Reg(0x4C, "imp_kvarh"),
        Reg(0x4E, "exp_kvarh"),
        Reg(0xC8, "v12"),
        Reg(0xCA, "v23"),
        Reg(0xCC, "v31"),
        Reg(0xCE, "v_ll"),
        Reg(0xE0, "i_n"),
        Reg(0x156, "tot_kwh"),
        Reg(0x158, "tot_kvarh"),
    ),
    config=(Reg(0x12, "parity_code"), Reg(0x14, "meter_id"), Reg(0x1C, "baud_code")),
    zero_fill=((0x00, 0x50),),
)

SDM120 = RegisterMap(
    "sdm120",
    "electricity",
    4,
    "ABCD",
    (
        Reg(0x00, "v1", quantity="voltage_v"),
        Reg(0x06, "i1", quantity="current_a"),
        Reg(0x0C, "p", quantity="power_w"),
        Reg(0x12, "va"),
        Reg(0x18, "var"),
        Reg(0x1E, "pf", quantity="power_factor"),
        Reg(0x24, "ang"),
        Reg(0x46, "f", quantity="frequency_hz"),
        Reg(0x48, "imp_kwh", quantity="energy_kwh"),
        Reg(0x4A, "exp_kwh", quantity="export_energy_kwh"),
        Reg(0x4C, "imp_kvarh"),
        Reg(0x4E, "exp_kvarh"),
        Reg(0x156, "tot_kwh"),
        Reg(0x158, "tot_kvarh"),
    ),
    config=(Reg(0x12, "parity_code"), Reg(0x14, "meter_id"), Reg(0x1C, "baud_code")),
)

XINTAI_WATER = RegisterMap(
    "xintai",
    "water",
    3,
    "DCBA",
    (
        Reg(0x01, "fwd_m3", quantity="volume_m3"),
        Reg(0x03, "rev_m3"),
        Reg(0x05, "flow", quantity="flow_m3h"),
        Reg(0x07, "pipe", "uint16"),
        Reg(0x08, "remaining"),
        Reg(0x0A, "pressure"),
        Reg(0x0C, "temperature"),
        Reg(0x0E, "meter_id", "uint16"),
        Reg(0x0F, "comm_a", "uint16"),
        Reg(0x10, "comm_b", "uint16"),
        Reg(0x11, "comm_c", "uint16"),
        Reg(0x1A, "battery"),
        Reg(0x1C, "valve", "uint16"),
    ),
)

# Example maps (gateway/profiles/example_*.yaml, docs/protocols.md): not copied from a vendor manual.
EXAMPLE_HEAT = RegisterMap(
    "example_heat",
    "heat",
    3,
    "ABCD",
    (
        Reg(0, "energy_kwh", "uint32", quantity="heat_energy_kwh"),
        Reg(2, "volume_m3", "uint32", quantity="heat_volume_m3", scale=0.01),
        Reg(4, "power_kw", quantity="heat_power_w", to_canonical=1000.0),
        Reg(6, "flow_m3h", quantity="heat_flow_m3h"),
        Reg(8, "supply_c", quantity="supply_temp_c"),
        Reg(10, "return_c", quantity="return_temp_c"),
        Reg(12, "dt_k"),
    ),
)
EXAMPLE_GAS_CORRECTOR = RegisterMap(
    "example_gas_corrector",
    "gas",
    4,
    "ABCD",
    (
        Reg(0, "vb_m3", "uint32", quantity="gas_volume_m3", scale=0.01),
        Reg(2, "vm_m3", "uint32", quantity="gas_volume_uncorrected_m3", scale=0.01),
        Reg(4, "qb_m3h", quantity="gas_flow_m3h"),
        Reg(6, "qm_m3h"),
        Reg(8, "p_kpa", quantity="gas_pressure_kpa"),
        Reg(10, "t_c", quantity="gas_temp_c"),
        Reg(12, "c_factor"),
        Reg(14, "status", "uint16"),
    ),
)
# A volume corrector's fixed line conditions and the Chinese base conditions (101.325 kPa, 20 °C).
CORRECTOR_P_KPA, CORRECTOR_T_C = 250.0, 12.0
BASE_P_KPA, BASE_T_K = 101.325, 293.15

REGISTER_MAPS: dict[str, RegisterMap] = {
    m.name: m for m in (SDM630, SDM120, XINTAI_WATER, EXAMPLE_HEAT, EXAMPLE_GAS_CORRECTOR)
}


def _sim_blocks(regs: Iterable[Reg], zero_fill: Iterable[tuple[int, int]]) -> list[SimData]:
    """SimData entries making exactly the mapped (or zero-filled) registers valid and read-only."""
    cells = {a for start, end in zero_fill for a in range(start, end)}
    cells |= {a for r in regs for a in range(r.address, r.address + r.size)}
    if not cells:
        return [SimData(0, datatype=DataType.INVALID)]
    runs: list[list[int]] = []
    for a in sorted(cells):
        if runs and a == runs[-1][1]:
            runs[-1][1] = a + 1
        else:
            runs.append([a, a + 1])
    return [SimData(s, count=e - s, values=0, datatype=DataType.REGISTERS, readonly=True) for s, e in runs]


class ModbusMeter(SerialMeter):
    """A Modbus RTU meter: unit id, register map, and the load model that fills the map."""

    protocol = "modbus"

    def __init__(
        self,
        unit: int,
        *,
        model: str = "sdm630",
        profile: str | None = None,
        seed: int = 0,
        clock: SimClock | None = None,
        tz: str = "UTC",
        initial: float | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError("Modbus unit id must be 1..247")
        if model not in REGISTER_MAPS:
            raise ValueError(f"unknown Modbus model {model!r}; known: {', '.join(REGISTER_MAPS)}")
        super().__init__(str(unit), seed=seed, clock=clock, tz=tz, turnaround_s=turnaround_s)
        self.unit = unit
        self.map = REGISTER_MAPS[model]
        self.model_name = model
        if self.map.kind == "electricity":
            name = profile or "office"
            if name not in ELECTRIC_PROFILES:
                raise ValueError(f"unknown load profile {name!r}; known: {', '.join(ELECTRIC_PROFILES)}")
            phases = 1 if model == "sdm120" else 3
            self.model: ElectricModel | WaterModel | HeatModel = ElectricModel(
                self.seed,
                ELECTRIC_PROFILES[name],
                phases=phases,
                clock=self.clock,
                tz=self.tz,
                initial_kwh=initial,
            )
        elif self.map.kind == "heat":
            name = profile or "dorm"
            if name not in HEAT_PROFILES:
                raise ValueError(f"unknown heat profile {name!r}; known: {', '.join(HEAT_PROFILES)}")
            self.model = HeatModel(self.seed, HEAT_PROFILES[name], clock=self.clock, tz=self.tz, initial_kwh=initial)
        else:
            gas = self.map.kind == "gas"
            profiles = GAS_PROFILES if gas else WATER_PROFILES
            name = profile or "dorm"
            if name not in profiles:
                raise ValueError(f"unknown {self.map.kind} profile {name!r}; known: {', '.join(profiles)}")
            self.model = WaterModel(
                self.seed,
                profiles[name],
                clock=self.clock,
                tz=self.tz,
                initial_m3=initial,
                kind=MeterKind.GAS if gas else MeterKind.WATER,
            )
        self.profile = name
        self.valve_open = True
        main = _sim_blocks(self.map.entries, self.map.zero_fill)
        config = _sim_blocks(self.map.config, ())
        holding, inputs = (main, config) if self.map.function == 3 else (config, main)
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        self.simdevice = SimDevice(unit, simdata=(bits, list(bits), holding, inputs), action=self._refresh)
        self._core = SimCore([self.simdevice])

    def describe(self) -> str:
        return f"{self.protocol} unit {self.unit} ({self.model_name})"

    # -- framing --------------------------------------------------------------------------------------

    @classmethod
    def frame_length(cls, buf: bytes | bytearray, start: int) -> int:
        data = bytes(buf[start : start + 260])  # no RTU frame is longer than 256 bytes
        if len(data) < 2:
            return INCOMPLETE
        if data[0] > 247:
            return INVALID
        try:
            pdu_class = _DECODER.lookupPduClass(data)
            if pdu_class is None or pdu_class is ExceptionResponse:
                return INVALID
            size = pdu_class.calculateRtuFrameSize(data)
        except IndexError:
            return INCOMPLETE
        except Exception:
            return INVALID
        if not size or len(data) < size:
            return INCOMPLETE
        crc = int.from_bytes(data[size - 2 : size], "big")
        return size if FramerRTU.check_CRC(data[: size - 2], crc) else INVALID

    def claims(self, frame: bytes) -> bool:
        return frame[0] in (self.unit, 0)

    def corrupt_checksum(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes([reply[-2] ^ 0xFF, reply[-1] ^ 0xFF])

    async def respond(self, frame: bytes) -> bytes | None:
        with self.lock:
            self.requests += 1
        pdu = _DECODER.decode(frame[1:-2])
        if pdu is None or frame[0] == 0:
            return None  # undecodable, or a broadcast (never answered)
        pdu.dev_id = self.unit
        if pdu.function_code not in SUPPORTED_FUNCTIONS:
            response = ExceptionResponse(pdu.function_code, ExcCodes.ILLEGAL_FUNCTION)
        else:
            response = await pdu.datastore_update(self._core, self.unit)
        response.dev_id = self.unit
        with self.lock:
            self.replies += 1
        return _FRAMER.buildFrame(response)

    # -- registers ------------------------------------------------------------------------------------

    def _sources(self) -> dict[str, float]:
        """Every source value of the map, from the model at the current simulator time."""
        if isinstance(self.model, HeatModel):
            with self.model.lock:
                now = self.model.advance()
                energy, volume, v = self.model.energy_kwh, self.model.volume_m3, self.model.values_at(now)
            return {
                "energy_kwh": energy % self.wrap,
                "volume_m3": volume % self.wrap,
                "power_kw": v.power_kw,
                "flow_m3h": v.flow_m3h,
                "supply_c": v.supply_c,
                "return_c": v.return_c,
                "dt_k": abs(v.supply_c - v.return_c),
            }
        if isinstance(self.model, WaterModel) and self.map.kind == "gas":
            with self.model.lock:
                now = self.model.advance()
                vm, qm = self.model.volume_m3, self.model.flow_at(now)
            c = CORRECTOR_P_KPA / BASE_P_KPA * BASE_T_K / (CORRECTOR_T_C + 273.15)  # ideal gas, Z = 1
            return {
                "vb_m3": (vm * c) % self.wrap,
                "vm_m3": vm % self.wrap,
                "qb_m3h": qm * c,
                "qm_m3h": qm,
                "p_kpa": CORRECTOR_P_KPA,
                "t_c": CORRECTOR_T_C,
                "c_factor": c,
                "status": 0,
            }
        if isinstance(self.model, WaterModel):
            with self.model.lock:
                now = self.model.advance()
                volume, flow = self.model.volume_m3, self.model.flow_at(now)
            return {
                "fwd_m3": volume % self.wrap,
                "rev_m3": 0.0,
                "flow": flow,
                "pipe": 0x00AA,
                "remaining": 0.0,
                "pressure": 0.32,
                "temperature": 14.5,
                "meter_id": self.unit,
                "comm_a": 9600,
                "comm_b": 8,
                "comm_c": 1,
                "battery": 3.6,
                "valve": 1 if self.valve_open else 2,
            }
        m = self.model
        assert isinstance(m, ElectricModel)
        with m.lock:
            now = m.advance()
            imp, exp = sum(m.import_wh) / 1000.0, sum(m.export_wh) / 1000.0
            imp_q, exp_q = m.import_varh / 1000.0, m.export_varh / 1000.0
            v = m.values_at(now)
        s: dict[str, float] = {"f": v.frequency_hz, "p": v.total_power_w, "pf": v.total_pf}
        phases = 3 if m.phases == 3 else 1
        va_total = var_total = 0.0
        for i in range(phases):
            pf = v.pf[i]
            va = abs(v.power_w[i]) / max(abs(pf), 1e-6)
            var = math.copysign(math.sqrt(max(0.0, va * va - v.power_w[i] ** 2)), v.power_w[i] or 1.0)
            s |= {
                f"v{i + 1}": v.voltage_v[i],
                f"i{i + 1}": abs(v.current_a[i]),
                f"p{i + 1}": v.power_w[i],
                f"va{i + 1}": va,
                f"var{i + 1}": var,
                f"pf{i + 1}": pf,
                f"ang{i + 1}": math.degrees(math.acos(max(-1.0, min(1.0, abs(pf))))),
            }
            va_total += va
            var_total += var
        s |= {"va": va_total, "var": var_total, "ang": math.degrees(math.acos(min(1.0, abs(v.total_pf))))}
        if phases == 3:
            s["v_avg"] = sum(v.voltage_v) / 3
            s["i_avg"] = sum(abs(x) for x in v.current_a) / 3
            s["i_sum"] = sum(abs(x) for x in v.current_a)
            ua, ub, uc = v.voltage_v  # line-to-line from phase voltages 120 degrees apart
            ll = [math.sqrt(x * x + y * y + x * y) for x, y in ((ua, ub), (ub, uc), (uc, ua))]
            s |= {"v12": ll[0], "v23": ll[1], "v31": ll[2], "v_ll": sum(ll) / 3}
            ia, ib, ic = (abs(x) for x in v.current_a)
            s["i_n"] = math.sqrt(max(0.0, ia * ia + ib * ib + ic * ic - ia * ib - ib * ic - ic * ia))
        s |= {
            "imp_kwh": imp % self.wrap,
            "exp_kwh": exp % self.wrap,
            "tot_kwh": (imp + exp) % self.wrap,
            "imp_kvarh": imp_q,
            "exp_kvarh": exp_q,
            "tot_kvarh": imp_q + exp_q,
        }
        s |= {"parity_code": 0.0, "meter_id": float(self.unit), "baud_code": 2.0}
        return s

    def _register_image(self, function: int) -> dict[int, int]:
        """Address -> register value for the block a function code reads, from current sources."""
        entries = self.map.entries if function == self.map.function else self.map.config
        sources = self._sources()
        image: dict[int, int] = {}
        for r in entries:
            value = sources.get(r.source, 0.0)
            if r.kind == "uint16":
                image[r.address] = int(value) & 0xFFFF
            elif r.kind == "uint32":
                n = math.floor(value / r.scale + 1e-6) & 0xFFFFFFFF
                image[r.address], image[r.address + 1] = n >> 16, n & 0xFFFF
            else:
                image[r.address], image[r.address + 1] = float_to_registers(value, self.map.order)
        served = {r.quantity: self._decoded(r, sources) for r in entries if r.quantity}
        self._last_image = (function, served)
        return image

    def _decoded(self, r: Reg, sources: dict[str, float]) -> float:
        value = sources.get(r.source, 0.0)
        if r.kind == "uint32":  # as a poller decodes it: the count times the scale
            return round((math.floor(value / r.scale + 1e-6) & 0xFFFFFFFF) * r.scale, 9)
        if r.to_canonical != 1.0:  # a poller keeps a float32's 7 digits, then converts the unit
            return round(float(f"{as_float32(value):.7g}") * r.to_canonical, 9)
        return float(int(value) & 0xFFFF) if r.kind == "uint16" else as_float32(value)

    async def _refresh(
        self,
        function: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice action: rewrite the block from the model before pymodbus reads it."""
        if set_values is not None or function not in (3, 4):
            return None
        with self.lock:
            image = self._register_image(function)
            for reg_address, value in image.items():
                offset = reg_address - start_address
                if 0 <= offset < len(registers):
                    registers[offset] = value
            by_quantity = {r.quantity: r for r in self.map.entries if r.quantity}
            if function == self.map.function:
                _, served = self._last_image
                self._served(
                    {
                        q: v
                        for q, v in served.items()
                        if by_quantity[q].address < address + count
                        and by_quantity[q].address + by_quantity[q].size > address
                    }
                )
        return None

    def registers(self) -> dict[str, float]:
        """Current values of the mapped quantities, as float32 (exactly what a read returns)."""
        with self.lock:
            sources = self._sources()
            return {r.quantity: self._decoded(r, sources) for r in self.map.entries if r.quantity}

    def _rollover(self, margin: float) -> None:
        if isinstance(self.model, HeatModel):
            self.model.set_energy(self.wrap - margin)
        elif isinstance(self.model, WaterModel):
            self.model.set_volume(self.wrap - margin)
        else:
            self.model.set_import_kwh(self.wrap - margin)

    def _replace(self) -> None:
        self.model.reset_counters()


class PymodbusServer:
    """Modbus meters served by pymodbus's own RTU server (no pacing, no faults), in a background thread.

    ``tcp=("127.0.0.1", port)`` serves RTU framing over TCP (``socket://`` for pyserial);
    ``port="/dev/ttyX"`` serves a real serial port or one end of a socat pty pair.
    """

    def __init__(
        self,
        meters: Iterable[ModbusMeter],
        *,
        tcp: tuple[str, int] | None = None,
        port: str | None = None,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        if (tcp is None) == (port is None):
            raise ValueError("give exactly one of tcp= or port=")
        self.meters = list(meters)
        self._tcp, self._port = tcp, port
        self._serial = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: object | None = None

    @property
    def url(self) -> str:
        return f"socket://{self._tcp[0]}:{self._tcp[1]}" if self._tcp else str(self._port)

    def start(self) -> str:
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer

        ready = threading.Event()
        errors: list[BaseException] = []
        devices = [m.simdevice for m in self.meters]

        async def main() -> None:
            try:
                if self._tcp:
                    server = ModbusTcpServer(devices, framer=FramerType.RTU, address=self._tcp)
                else:
                    server = ModbusSerialServer(
                        devices, framer=FramerType.RTU, port=self._port, **self._serial
                    )
                self._server = server
                await server.serve_forever(background=True)
            except Exception as exc:
                errors.append(exc)
            finally:
                ready.set()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pymodbus-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(main(), self._loop)
        ready.wait(10)
        if errors:
            self.stop()
            raise RuntimeError(f"pymodbus server did not start: {errors[0]}")
        return self.url

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)  # type: ignore[attr-defined]
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop.close()
        self._loop = None
