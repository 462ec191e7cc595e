"""Faults a simulated meter can be told to show, switchable while the bus runs.

Line faults change what goes on the wire for each reply (until cleared, or for ``count`` replies);
event faults change the meter's state once (counter rollover, replacement) or until cleared (clock
skew). The meter applies event faults; the bus applies line faults through :class:`LinePlan`.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    NO_REPLY = "no_reply"
    LATE_REPLY = "late_reply"
    BAD_CHECKSUM = "bad_checksum"
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    ROLLOVER = "rollover"
    REPLACED = "replaced"
    CLOCK_SKEW = "clock_skew"


LINE_FAULTS = frozenset(
    {Fault.NO_REPLY, Fault.LATE_REPLY, Fault.BAD_CHECKSUM, Fault.GARBAGE, Fault.TRUNCATED}
)
EVENT_FAULTS = frozenset({Fault.ROLLOVER, Fault.REPLACED, Fault.CLOCK_SKEW})

# Parameters each fault accepts, with defaults; the first one is what ``fault:value`` sets on the CLI.
FAULT_PARAMS: dict[Fault, dict[str, Any]] = {
    Fault.NO_REPLY: {},
    Fault.LATE_REPLY: {"delay_s": 1.0},
    Fault.BAD_CHECKSUM: {},
    Fault.GARBAGE: {"nbytes": 8, "where": "both", "reply": True},
    Fault.TRUNCATED: {"keep": None},
    Fault.ROLLOVER: {"margin": 0.05},
    Fault.REPLACED: {},
    Fault.CLOCK_SKEW: {"seconds": 600.0},
}


class FaultError(ValueError):
    """A fault name or parameter that does not exist or does not fit."""


def fault_params(kind: str | Fault, params: dict[str, Any]) -> tuple[Fault, dict[str, Any]]:
    """Validate a fault and fill in its defaults."""
    try:
        fault = Fault(kind)
    except ValueError:
        raise FaultError(f"unknown fault {kind!r}; known: {', '.join(f.value for f in Fault)}") from None
    allowed = FAULT_PARAMS[fault]
    unknown = set(params) - set(allowed)
    if unknown:
        raise FaultError(f"fault {fault} takes {sorted(allowed) or 'no parameters'}, not {sorted(unknown)}")
    merged = {**allowed, **params}
    for name in ("delay_s", "seconds", "margin"):
        if name in merged:
            try:
                merged[name] = float(merged[name])
            except (TypeError, ValueError):
                raise FaultError(f"fault {fault}: {name} must be a number") from None
    for name in ("nbytes", "keep"):
        if merged.get(name) is not None:
            try:
                merged[name] = int(merged[name])
            except (TypeError, ValueError):
                raise FaultError(f"fault {fault}: {name} must be an integer") from None
            if merged[name] < 0:
                raise FaultError(f"fault {fault}: {name} must not be negative")
    if fault == Fault.LATE_REPLY and merged["delay_s"] < 0:
        raise FaultError("late_reply delay must not be negative")
    if fault == Fault.GARBAGE and merged["where"] not in ("before", "after", "both"):
        raise FaultError("garbage 'where' must be before, after or both")
    if fault == Fault.ROLLOVER and merged["margin"] < 0:
        raise FaultError("rollover margin must not be negative")
    return fault, merged


@dataclass
class ActiveFault:
    kind: Fault
    params: dict[str, Any]
    remaining: int | None = None  # replies still affected; None = until cleared


@dataclass
class LinePlan:
    """What the bus does with one reply of one meter."""

    drop: bool = False
    delay_s: float = 0.0
    corrupt_checksum: bool = False
    keep: int | None = None
    garbage_before: bytes = b""
    garbage_after: bytes = b""
    faults: list[str] = field(default_factory=list)


class FaultSet:
    """The line faults active on one meter; thread-safe because tests switch them while the bus runs."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._active: dict[Fault, ActiveFault] = {}
        self._rng = random.Random(seed)

    def set(self, fault: Fault, params: dict[str, Any], count: int | None = None) -> None:
        if fault not in LINE_FAULTS:
            raise FaultError(f"{fault} is not a line fault")
        if count is not None and count < 1:
            raise FaultError("count must be at least 1")
        with self._lock:
            self._active[fault] = ActiveFault(fault, params, count)

    def clear(self, fault: Fault | None = None) -> None:
        with self._lock:
            if fault is None:
                self._active.clear()
            else:
                self._active.pop(fault, None)

    def active(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {f.value: {**a.params, "remaining": a.remaining} for f, a in self._active.items()}

    def plan(self) -> LinePlan:
        """The plan for the next reply; counted faults are used up here."""
        plan = LinePlan()
        with self._lock:
            for fault, active in list(self._active.items()):
                p = active.params
                plan.faults.append(fault.value)
                if fault == Fault.NO_REPLY:
                    plan.drop = True
                elif fault == Fault.LATE_REPLY:
                    plan.delay_s += p["delay_s"]
                elif fault == Fault.BAD_CHECKSUM:
                    plan.corrupt_checksum = True
                elif fault == Fault.TRUNCATED:
                    plan.keep = p["keep"] if p["keep"] is not None else -1
                elif fault == Fault.GARBAGE:
                    noise = bytes(self._rng.randrange(256) for _ in range(p["nbytes"]))
                    if p["where"] in ("before", "both"):
                        plan.garbage_before = noise
                    if p["where"] in ("after", "both"):
                        plan.garbage_after = bytes(self._rng.randrange(256) for _ in range(p["nbytes"]))
                    if not p["reply"]:
                        plan.drop = True
                if active.remaining is not None:
                    active.remaining -= 1
                    if active.remaining <= 0:
                        del self._active[fault]
        return plan


def parse_fault_specs(text: str) -> list[tuple[str, Fault, dict[str, Any]]]:
    """Parse ``ADDR=fault[:value][,ADDR=fault[:value]...]`` as given on the command line.

    ``value`` sets the fault's main parameter (``late_reply:1.5`` is a 1.5 s delay,
    ``garbage:16`` sixteen noise bytes, ``truncated:6`` keeps six bytes, ``clock_skew:-3600``).
    """
    specs: list[tuple[str, Fault, dict[str, Any]]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        address, sep, rest = item.partition("=")
        if not sep or not address.strip() or not rest.strip():
            raise FaultError(f"fault spec {item!r} is not ADDRESS=fault[:value]")
        name, _, value = rest.strip().partition(":")
        try:
            kind = Fault(name.strip())
        except ValueError:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(f.value for f in Fault)}") from None
        params: dict[str, Any] = {}
        if value:
            main = next(iter(FAULT_PARAMS[kind]), None)
            if main is None:
                raise FaultError(f"fault {kind} takes no value")
            params[main] = value
        fault, merged = fault_params(kind, params)
        specs.append((address.strip(), fault, merged))
    return specs
