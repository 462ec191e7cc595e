"""A simulated month of 15-minute readings with the faults real registers have, and its ground truth.

The truth is the simulated meters' own integrated consumption (``SimMeter.register``), tracked
apart from what is *sent*: the sent register wraps at the configured maximum, restarts near zero
when a meter is replaced, goes silent during a gap, reads garbage at a spike, and is delivered out of
order with duplicates. Accounting must recover the truth from what was sent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time

from campusmon.config import CampusConfig
from campusmon.influx import InfluxStore
from campusmon.quantities import RATE, REGISTER, MeterKind
from campusmon.reading import Reading
from firmware_sim.profiles import SimMeter, sim_meters_for

# Registers truncate to their last digit: 0.01 kWh, 1 litre.
REGISTER_STEP = {MeterKind.ELECTRICITY: 0.01, MeterKind.WATER: 0.001, MeterKind.GAS: 0.001, MeterKind.HEAT: 0.01}


@dataclass
class Faults:
    """What goes wrong during the month; timestamps are UTC seconds."""

    start_register: dict[str, float] = field(default_factory=dict)  # e.g. just below a rollover
    replaced_at: dict[str, int] = field(default_factory=dict)  # meter swapped; new register from ~0
    new_register: float = 0.0
    gaps: dict[str, tuple[int, int]] = field(default_factory=dict)  # nothing sent in [start, end)
    spikes: dict[str, list[int]] = field(default_factory=dict)  # first reading from each time reads garbage
    duplicate_share: float = 0.0  # share of readings delivered twice
    shuffle: bool = False  # deliver out of order
    jitter_s: int = 0  # readings are stamped up to this late


@dataclass
class SimMonth:
    start: int
    end: int
    readings: list[Reading]
    truth: dict[str, float]  # true consumption of each meter in [start, end)
    marks: dict[str, dict[int, float]]  # true register of each meter at each requested mark
    injected: list[str]  # what the faults did, for test messages

    def true_between(self, meter: str, t0: int, t1: int) -> float:
        return self.marks[meter][t1] - self.marks[meter][t0]

    def building_truth(self, cfg: CampusConfig, kind: MeterKind) -> dict[str, float]:
        """A building's true total: its main meters (no parent); sub-meters are inside them."""
        out = {}
        for b in cfg.buildings:
            mains = [m.id for m in cfg.meters if m.building == b.id and m.kind is kind and m.parent is None]
            out[b.id] = sum(self.truth[m] for m in mains)
        return out


def _modulus(rollover: float | None, kind: MeterKind) -> float | None:
    return None if rollover is None else rollover + REGISTER_STEP[kind]


def _shown(value: float, modulus: float | None, kind: MeterKind) -> float:
    step = REGISTER_STEP[kind]
    if modulus is not None:
        value = math.fmod(value, modulus)
    return round(math.floor(value / step + 1e-9) * step, 6)


def month_bounds(month: str, cfg: CampusConfig) -> tuple[int, int]:
    y, m = (int(x) for x in month.split("-"))
    tz = cfg.site.tz
    start = datetime.combine(date(y, m, 1), time(0), tzinfo=tz)
    end = datetime.combine(date(y + (m == 12), m % 12 + 1, 1), time(0), tzinfo=tz)
    return int(start.timestamp()), int(end.timestamp())


def simulate_month(
    cfg: CampusConfig,
    month: str,
    seed: int = 0,
    faults: Faults | None = None,
    margin_s: int = 86400,
    marks: list[int] | None = None,
) -> SimMonth:
    """Readings from ``margin_s`` before the month to ``margin_s`` after it, and the true consumption."""
    faults = faults or Faults()
    start, end = month_bounds(month, cfg)
    rng = random.Random(f"month:{seed}")
    sims: list[SimMeter] = sim_meters_for(cfg, seed)
    out: list[Reading] = []
    truth: dict[str, float] = {}
    marked: dict[str, dict[int, float]] = {}
    injected: list[str] = []
    mark_set = set(marks or []) | {start, end}
    for sm, meter in zip(sims, cfg.meters, strict=True):
        kind = meter.kind
        modulus = _modulus(meter.rollover, kind)
        if meter.id in faults.start_register:
            sm.register = sm.start = faults.start_register[meter.id]
        first = start - margin_s
        first -= first % meter.interval_s
        times = [
            t + (rng.randint(0, faults.jitter_s) if faults.jitter_s else 0)
            for t in range(first, end + margin_s, meter.interval_s)
        ]
        sending = set(times)
        if meter.id in faults.gaps:
            g0, g1 = faults.gaps[meter.id]
            sending = {t for t in sending if not g0 <= t < g1}
            injected.append(f"{meter.id}: gap of {(g1 - g0) / 3600:g} h")
        spikes = sorted(faults.spikes.get(meter.id, []), reverse=True)
        replaced = faults.replaced_at.get(meter.id)
        offset = 0.0
        marked[meter.id] = {}
        prev_shown: float | None = None
        for t in sorted(set(times) | mark_set | ({replaced} if replaced else set())):
            sm.advance(t)
            if t in mark_set:
                marked[meter.id][t] = sm.register
            if t == replaced:
                offset = faults.new_register - sm.register
                injected.append(f"{meter.id}: replaced at {t}, new register {faults.new_register}")
            if t not in sending:
                continue
            shown = _shown(sm.register + offset, modulus, kind)
            if prev_shown is not None and shown < prev_shown and t != replaced and modulus is not None:
                injected.append(f"{meter.id}: rollover before {t}")
            prev_shown = shown
            if spikes and t >= spikes[-1]:
                spikes.pop()
                shown = shown * 1000 + 12345.0
                injected.append(f"{meter.id}: spike at {t}")
            qty, rate_q = REGISTER[kind], RATE[kind]
            out.append(Reading(meter.id, qty, shown, t))
            out.append(Reading(meter.id, rate_q, round(sm.rate, 4), t))
        truth[meter.id] = marked[meter.id][end] - marked[meter.id][start]
    if faults.duplicate_share > 0:
        dups = rng.sample(out, int(len(out) * faults.duplicate_share))
        out.extend(dups)
        injected.append(f"{len(dups)} duplicate readings")
    if faults.shuffle:
        rng.shuffle(out)
        injected.append("delivered out of order")
    return SimMonth(start, end, out, truth, marked, injected)


def write_readings(store: InfluxStore, readings: list[Reading], batch: int = 20_000) -> int:
    """Write readings in delivery order, in large batches; returns how many were stored."""
    stored = 0
    for i in range(0, len(readings), batch):
        outcome = store.write(readings[i : i + batch])
        if outcome.rejected:
            raise RuntimeError(f"influxdb refused {len(outcome.rejected)} readings: {outcome.rejected[0][1]}")
        stored += outcome.stored
    return stored
