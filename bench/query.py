"""Accounting query time against the bare InfluxQL underneath, for 500 meters x 30 days of 15-minute readings.

A private InfluxDB 1.x is started in a temporary folder and filled with 1.44 million cumulative
register readings (50 buildings of 8 electricity and 2 water meters, main meters with sub-meters).
Then, each timed as the median of several runs (after a warm-up), interleaved with its baseline:

- the campus's daily consumption for one day, and the daily series over the whole month;
- the monthly report (every building and sub-item, groups and campus, rendered as CSV);

against the bare InfluxQL underneath: the very requests the figure sent (recorded on the first run),
replayed and decoded under the same conditions (collector paused, as ``service.bulk_decoding``), with
no policy, arithmetic or rendering. Goal: at most 1.5x the bare query time.

The figures read the hourly rollups (``campusmon/rollups.py``), built once after the fill (the time of
that one-month build is printed). The monthly report from rollups is then compared with the bare time
of reading the month's raw registers (the requests a raw computation sends): ``report speed-up vs
raw: N×``, goal at least 10×. The rollup passes keep each month's sums per meter and hour of day in
the relational store (``rollup_months``); a late reading drops them and the next report sums the
month in InfluxDB: that report's time is printed too.

Run: .venv/bin/python bench/query.py [--meters 500] [--days 30] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.accounting import periods, report, service
from api.accounting.campus import Scope
from api.accounting.settings import parse_accounting
from campusmon.config import CampusConfig, parse_config
from campusmon.influx import open_store
from campusmon.quantities import MeterKind
from campusmon.reading import Reading
from campusmon.services import InfluxDB, free_port
from firmware_sim.profiles import shape

TYPES = ["dorm", "classroom", "office", "lab", "library", "canteen", "sports", "admin"]
SUBS = ["01A00", "01A10", "01B00", "01B10", "01C00", "01C10", "01D00"]
TZ = "Asia/Shanghai"


def campus(n_meters: int, port: int, db: str, db_url: str = "sqlite://") -> CampusConfig:
    per = 10
    buildings, meters = [], []
    for b in range(n_meters // per):
        bid = f"b{b:03d}"
        buildings.append({"id": bid, "type": TYPES[b % len(TYPES)], "floor_area_m2": 3000 + 97 * b,
                          "occupants": 50 + 7 * b, "group": f"g{b % 5}"})  # fmt: skip
        meters.append({"id": f"{bid}-e0", "building": bid, "kind": "electricity", "category": "01000"})
        for i, code in enumerate(SUBS):
            meters.append({"id": f"{bid}-e{i + 1}", "building": bid, "kind": "electricity", "category": code,
                           "parent": f"{bid}-e0"})  # fmt: skip
        meters.append({"id": f"{bid}-w0", "building": bid, "kind": "water", "category": "02000"})
        meters.append(
            {"id": f"{bid}-w1", "building": bid, "kind": "water", "category": "02000", "parent": f"{bid}-w0"}
        )
    tariffs = Path(__file__).resolve().parent.parent / "deploy" / "campus.yaml"
    import yaml

    accounting = yaml.safe_load(tariffs.read_text())["accounting"]
    return parse_config({"site": {"timezone": TZ}, "buildings": buildings, "meters": meters,
                         "influxdb": {"url": f"http://127.0.0.1:{port}", "database": db},
                         "database": {"url": db_url},
                         "accounting": accounting}, environ={})  # fmt: skip


def fill(cfg: CampusConfig, start: int, days: int) -> int:
    """Cumulative registers from the building profiles; written meter by meter in large batches."""
    store = open_store(cfg)
    store.ensure_database()
    tz = cfg.site.tz
    # Two hours past the period, as a closed month has readings after its end.
    steps = list(range(start, start + days * 86400 + 7200, 900))
    # One shape per building type and step, shared by that type's meters (keeps generation fast).
    shapes: dict[tuple[str, str], list[float]] = {}
    batch: list[Reading] = []
    total = 0
    t0 = time.perf_counter()
    for i, m in enumerate(cfg.meters):
        b = cfg.building(m.building)
        assert b is not None
        key = (m.kind.value, b.type)
        if key not in shapes:
            shapes[key] = [shape(m.kind, b.type, datetime.fromtimestamp(t, tz)) for t in steps]
        per_step = (0.25 * (20 + i % 17) if m.kind is MeterKind.ELECTRICITY else 0.25 * 0.3) * (1 + i % 3)
        q = "energy_kwh" if m.kind is MeterKind.ELECTRICITY else "volume_m3"
        reg = 1000.0 + 37 * i
        for t, s in zip(steps, shapes[key], strict=True):
            reg += per_step * s
            batch.append(Reading(m.id, q, round(reg, 3), t))
        if len(batch) >= 50_000 or i == len(cfg.meters) - 1:
            out = store.write(batch)
            assert not out.rejected, out.rejected[:1]
            total += out.stored
            batch = []
            rate = total / (time.perf_counter() - t0)
            print(
                f"\r  wrote {total:>9,} readings ({i + 1}/{len(cfg.meters)} meters, {rate:,.0f}/s)",
                end="",
                flush=True,
            )
    print()
    store.close()
    return total


class Recording:
    """The store, noting every query the figure sends, so the baseline replays exactly those."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.queries: list[tuple[str, bool]] = []

    def query(self, q: str, params: dict[str, Any] | None = None, chunked: bool = False) -> Any:
        self.queries.append((q, chunked))
        return self.store.query(q, params, chunked=chunked)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        srv = InfluxDB(Path(tmp) / "influxdb", free_port())
        srv.start()
        try:
            cfg = campus(args.meters, srv.port, "bench", f"sqlite:///{tmp}/campus.sqlite")
            settings = parse_accounting(cfg)
            tz = cfg.site.tz
            start = periods.local_midnight(date(2026, 9, 1), tz)  # September: exactly 30 days
            end = start + args.days * 86400
            n = len(cfg.meters)
            print(f"filling InfluxDB 1.x on port {srv.port}: {n} meters x {args.days} days x 96 readings/day")
            t0 = time.perf_counter()
            total = fill(cfg, start, args.days)
            print(f"  {total:,} readings in {time.perf_counter() - t0:.1f} s")
            build_rollups(cfg, end)
            run(cfg, settings, start, end, args.runs)
        finally:
            srv.stop()


def build_rollups(cfg: CampusConfig, end: int) -> None:
    """The hourly rollups of the whole fill, as a worker's first pass builds them."""
    from campusmon.db import init_db
    from campusmon.rollups import RollupMaintainer

    store = open_store(cfg)
    _engine, sessions = init_db(cfg.database.url)
    t0, c0 = time.perf_counter(), time.process_time()
    st = RollupMaintainer(cfg, store, sessions).pass_once(now=end + 3600)
    print(
        f"rollups built: {st.series} series, {st.hours_written:,} hours from {st.readings_read:,} readings "
        f"in {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU here)"
    )
    store.close()


def run(cfg: CampusConfig, settings: Any, start: int, end: int, runs: int) -> None:
    store = open_store(cfg)
    campus_scope = Scope("campus")
    day0 = start + 14 * 86400
    month = periods.buckets(start, start + 1, "month", cfg.site.tz)[0].label

    def one_day(st: Any) -> object:
        return service.consumption_series(st, cfg, settings, campus_scope, "day", day0, day0 + 86400, end)

    def month_days(st: Any) -> object:
        return service.consumption_series(st, cfg, settings, campus_scope, "day", start, end, end)

    def monthly(st: Any) -> object:
        return report.to_csv(service.monthly_report(st, cfg, settings, month, (), end))

    cases = [
        ("campus, one day (day)", one_day),
        ("campus, 30 days (day)", month_days),
        ("monthly report (csv)", monthly),
    ]
    print(f"\n{'figure':<24}{'queries':>8}{'points':>11}{'bare query s':>14}{'figure s':>10}{'ratio':>7}")
    worst = 0.0
    for name, fn in cases:
        rec = Recording(store)
        fn(rec)  # warm-up, and the exact queries the figure sends
        points = sum(len(s["values"]) for q, ch in rec.queries for s in store.query(q, chunked=ch))

        def bare(queries: list[tuple[str, bool]] = rec.queries) -> None:
            with service.bulk_decoding():  # the same decoding conditions as the figure's
                for q, ch in queries:
                    store.query(q, chunked=ch)

        # Interleaved runs, so load from other processes hits both sides alike.
        bares, fulls = [], []
        for _ in range(runs):
            bares.append(timed(bare))
            fulls.append(timed(lambda f=fn: f(store)))
        b, f = statistics.median(bares), statistics.median(fulls)
        if not rec.queries:  # answered from the relational store alone: no InfluxQL to compare with
            print(f"{name:<24}{0:>8}{0:>11,}{'-':>14}{f:>10.3f}{'-':>7}")
            continue
        worst = max(worst, f / b)
        print(f"{name:<24}{len(rec.queries):>8}{points:>11,}{b:>14.3f}{f:>10.3f}{f / b:>7.2f}")
    report_queries = rec.queries  # the last case is the monthly report
    if report_queries:
        plain = statistics.median(
            timed(lambda: [store.query(q, chunked=ch) for q, ch in report_queries]) for _ in range(runs)
        )
        print(f"(the report's requests with the collector running, as a plain client reads them: {plain:.3f} s)")
    else:
        print("(the monthly report asked InfluxDB nothing: the rollup passes keep its month sums)")
    # The monthly report from rollups against the bare time of reading the month's raw registers.
    bucket = periods.month_range(month, cfg.site.tz)
    raw_stmts = service.statements(cfg, cfg.meters, bucket.start, bucket.end, settings)
    raw_points = sum(len(s["values"]) for s in service.run_query(store, raw_stmts))

    def raw_bare() -> None:
        with service.bulk_decoding():
            service.run_query(store, raw_stmts)

    def raw_report() -> object:
        return report.to_csv(service.monthly_report(store, cfg, settings, month, (), end, use_rollups=False))

    def forget_months() -> None:
        """Drop the kept month sums, as a late reading's pass does: the next report sums the month in InfluxDB."""
        from sqlalchemy import delete

        from api.accounting.rolled import sessions_for
        from campusmon.db import RollupMonth

        sm = sessions_for(cfg)
        assert sm is not None
        with sm.begin() as s:
            s.execute(delete(RollupMonth))

    raws, rolled, first, raw_full = [], [], [], []
    for _ in range(runs):
        raws.append(timed(raw_bare))
        rolled.append(timed(lambda: monthly(store)))
        forget_months()
        first.append(timed(lambda: monthly(store)))
    for _ in range(max(1, runs // 2)):
        raw_full.append(timed(raw_report))
    rb, rr, rf = statistics.median(raws), statistics.median(rolled), statistics.median(raw_full)
    r1 = statistics.median(first)
    print(
        f"\nmonthly report from rollups {rr:.3f} s (a month whose kept sums a late reading dropped, summed "
        f"again in InfluxDB: {r1:.3f} s); bare InfluxQL of the month's raw registers "
        f"({raw_points:,} points) {rb:.3f} s; the report computed from raw registers {rf:.3f} s"
    )
    print(
        f"report speed-up vs raw: {rb / rr:.1f}× (goal >= 10×: {'met' if rb / rr >= 10 else 'NOT met'}); "
        f"after a late reading: {rb / r1:.1f}×"
    )
    print(f"\nmedian of {runs} interleaved runs; worst ratio {worst:.2f} (goal <= 1.5): "
          f"{'met' if worst <= 1.5 else 'NOT met'}")  # fmt: skip
    check = service.consumption_series(store, cfg, settings, campus_scope, "day", start, end, end)
    elec = next(s for s in check["series"] if s["kind"] == "electricity")
    print(f"sanity: campus electricity {elec['total']:,.0f} kWh over {len(elec['points'])} days, "
          f"completeness {min(p['completeness'] for p in elec['points']):.3f}")  # fmt: skip
    store.close()


if __name__ == "__main__":
    main()
