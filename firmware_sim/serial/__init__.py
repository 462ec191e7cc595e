"""Simulated serial meters (DL/T 645-2007, CJ/T 188, Modbus RTU) on a simulated RS-485 bus.

Independent of the gateway's codecs by design: nothing here imports ``gateway``.
"""

from firmware_sim.serial.bus import SimBus, Transaction, char_time
from firmware_sim.serial.cjt188_heat_meter import Cjt188HeatMeter
from firmware_sim.serial.cjt188_meter import Cjt188Meter
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from firmware_sim.serial.faults import Fault, FaultError
from firmware_sim.serial.meter import SerialMeter
from firmware_sim.serial.modbus_meter import REGISTER_MAPS, ModbusMeter, PymodbusServer
from firmware_sim.serial.spec import SpecError, build_bus, load_bus, serve

__all__ = [
    "REGISTER_MAPS",
    "Cjt188HeatMeter",
    "Cjt188Meter",
    "Dlt645Meter",
    "Fault",
    "FaultError",
    "ModbusMeter",
    "PymodbusServer",
    "SerialMeter",
    "SimBus",
    "SimClock",
    "SpecError",
    "Transaction",
    "build_bus",
    "char_time",
    "load_bus",
    "serve",
]
