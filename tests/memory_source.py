"""Readings held in memory, answering the three reads rules make of InfluxDB (``api.alerts.source``).

For tests that compare two ways of running the rules over the same readings without paying for
writing them into InfluxDB first; the InfluxDB path itself is exercised by the tests that do.
Semantics follow InfluxQL: one value per meter, field and timestamp (the last written wins), hourly
peaks in epoch-aligned buckets stamped with the bucket start.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from api.alerts.series import RATE, REGISTER
from api.alerts.source import INSTANT_QUANTITIES
from campusmon.config import Meter
from campusmon.quantities import MeterKind
from campusmon.reading import Reading


class MemorySource:
    def __init__(self, readings: Iterable[Reading]) -> None:
        by: dict[tuple[str, str], dict[int, float]] = {}
        for r in readings:
            by.setdefault((r.meter, r.quantity), {})[int(r.ts)] = float(r.value)
        self._cols: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        for k, d in by.items():
            ts = sorted(d)
            self._cols[k] = (ts, [d[t] for t in ts])

    @classmethod
    def from_points(
        cls, cfg_meters: Iterable[Meter], points: dict[str, list[tuple[int, float]]]
    ) -> MemorySource:
        kinds = {m.id: m.kind for m in cfg_meters}
        return cls(Reading(mid, REGISTER[kinds[mid]], v, t) for mid, pts in points.items() for t, v in pts)

    def _span(self, meter: str, quantity: str, start: int, end: int) -> list[tuple[int, float]]:
        ts, vals = self._cols.get((meter, quantity), ([], []))
        a, b = bisect_left(ts, start), bisect_left(ts, end)
        return list(zip(ts[a:b], vals[a:b], strict=True))

    def registers(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]:
        out = {}
        for m in meters:
            pts = self._span(m.id, REGISTER[m.kind], start, end)
            if pts:
                out[m.id] = pts
        return out

    def rates(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]:
        out = {}
        for m in meters:
            peaks: dict[int, float] = {}
            for t, v in self._span(m.id, RATE[m.kind], start, end):
                b = t - t % 3600
                peaks[b] = max(peaks.get(b, v), v)
            if peaks:
                out[m.id] = sorted(peaks.items())
        return out

    def instant(self, meters: Iterable[Meter], start: int, end: int) -> list[Reading]:
        out = []
        for m in meters:
            if m.kind is not MeterKind.ELECTRICITY:
                continue
            rows: dict[int, list[Reading]] = {}
            for q in INSTANT_QUANTITIES:
                for t, v in self._span(m.id, q, start, end):
                    rows.setdefault(t, []).append(Reading(m.id, q, v, t))
            for t in sorted(rows):
                out.extend(rows[t])
        out.sort(key=lambda r: (r.ts, r.meter))
        return out
