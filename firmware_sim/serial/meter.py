"""What every simulated serial meter has in common: identity, clock, faults and a record of what it served.

A protocol module subclasses :class:`SerialMeter` and implements the frame rules (``frame_length``),
addressing (``claims``), the reply (``respond``) and the register view (``registers``).
"""

from __future__ import annotations

import threading
import zlib
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.faults import EVENT_FAULTS, Fault, FaultError, FaultSet, LinePlan, fault_params

INCOMPLETE = 0
INVALID = -1


def meter_seed(bus_seed: int, protocol: str, address: str) -> int:
    """A stable per-meter seed (Python's str hash is randomised per process, crc32 is not)."""
    return zlib.crc32(f"{bus_seed}:{protocol}:{address}".encode())


class SerialMeter(ABC):
    """One meter on a simulated bus."""

    protocol: ClassVar[str]
    #: Value at which cumulative registers wrap (the register format's range).
    wrap: float = 1_000_000.0

    def __init__(
        self,
        address: str,
        *,
        seed: int = 0,
        clock: SimClock | None = None,
        tz: str = "UTC",
        turnaround_s: float | None = None,
    ) -> None:
        self.address = address
        self.seed = meter_seed(seed, self.protocol, address)
        self.clock = clock or SimClock()
        self.tz = ZoneInfo(tz)
        self.turnaround_s = turnaround_s
        self.clock_skew_s = 0.0
        self.lock = threading.RLock()
        self.line_faults = FaultSet(self.seed)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        #: Last value served per quantity, with the simulator time it was served at.
        self.served: dict[str, tuple[float, float]] = {}
        self.requests = 0
        self.replies = 0

    # -- protocol interface -------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def frame_length(cls, buf: bytes | bytearray, start: int) -> int:
        """Length of a complete, valid request frame at ``buf[start:]``; INCOMPLETE or INVALID otherwise."""

    @abstractmethod
    def claims(self, frame: bytes) -> bool:
        """Whether this meter acts on the frame (its own address, a wildcard or a broadcast)."""

    @abstractmethod
    async def respond(self, frame: bytes) -> bytes | None:
        """The reply to a claimed frame, or None when the protocol says to stay silent."""

    @abstractmethod
    def registers(self) -> dict[str, float]:
        """Current register values as campusmon quantity names, quantised as they go on the wire."""

    @abstractmethod
    def corrupt_checksum(self, reply: bytes) -> bytes:
        """The reply with its checksum/CRC made wrong (and nothing else changed)."""

    @abstractmethod
    def _rollover(self, margin: float) -> None: ...

    @abstractmethod
    def _replace(self) -> None: ...

    def describe(self) -> str:
        return f"{self.protocol} {self.address}"

    # -- time -----------------------------------------------------------------------------------------

    def meter_time(self) -> datetime:
        """The meter's own clock (simulator time plus skew) in its time zone."""
        return datetime.fromtimestamp(self.clock.now() + self.clock_skew_s, self.tz)

    def set_meter_time(self, when: datetime) -> None:
        """Set the meter clock, as a time-sync command does (naive times are in the meter's zone)."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.tz)
        with self.lock:
            self.clock_skew_s = when.timestamp() - self.clock.now()

    # -- faults ---------------------------------------------------------------------------------------

    def set_fault(self, kind: str | Fault, count: int | None = None, **params: Any) -> None:
        """Switch a fault on. Line faults last until cleared or for ``count`` replies; ``rollover``
        and ``replaced`` act once; ``clock_skew`` shifts the clock until cleared or re-synced."""
        fault, merged = fault_params(kind, params)
        if fault in EVENT_FAULTS:
            if count is not None:
                raise FaultError(f"{fault} happens once; count does not apply")
            with self.lock:
                if fault == Fault.ROLLOVER:
                    self._rollover(merged["margin"])
                elif fault == Fault.REPLACED:
                    self._replace()
                else:
                    self.clock_skew_s = merged["seconds"]
                self.events.append((self.clock.now(), fault.value, merged))
            return
        self.line_faults.set(fault, merged, count)

    def clear_fault(self, kind: str | Fault | None = None) -> None:
        """Clear one fault (or all line faults and the clock skew)."""
        fault = None if kind is None else fault_params(kind, {})[0]
        if fault in (None, Fault.CLOCK_SKEW):
            with self.lock:
                self.clock_skew_s = 0.0
        if fault is None or fault not in EVENT_FAULTS:
            self.line_faults.clear(fault)

    def faults(self) -> dict[str, dict[str, Any]]:
        """Active line faults, plus the clock skew when there is one."""
        active = self.line_faults.active()
        if self.clock_skew_s:
            active[Fault.CLOCK_SKEW.value] = {"seconds": self.clock_skew_s}
        return active

    def line_plan(self) -> LinePlan:
        return self.line_faults.plan()

    def _served(self, values: dict[str, float]) -> None:
        now = self.clock.now()
        for name, value in values.items():
            self.served[name] = (now, value)
