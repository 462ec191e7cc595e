"""Keeping hourly rollups current for a large campus: simulated meters with 1-minute readings.

A private InfluxDB 1.x is started in a temporary folder. Two figures:

- **Steady state.** ``--meters`` (default 10,000) electricity meters report every minute. After a
  warm-up history, every ``--interval`` seconds of simulated time their new readings are written and
  marked as the ingest path marks them, and the maintainer makes one pass (``RollupMaintainer``),
  as a ``campusmon worker`` does. The CPU the pass costs, in this process and in InfluxDB, divided
  by the interval, is the share of one core that keeping the rollups current needs. Goal: at most 25 %.
- **Rebuild.** The rollups of ``--rebuild-meters`` meters x ``--rebuild-days`` days of 1-minute
  readings are built from nothing; the time is reported and scaled to the steady-state campus and a
  30-day month (the build reads every reading once, so it grows with the number of readings).

Run: .venv/bin/python bench/rollups.py [--meters 10000] [--cycles 3] [--rebuild-meters 500] [--rebuild-days 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campusmon.config import CampusConfig, parse_config
from campusmon.db import init_db
from campusmon.influx import open_store
from campusmon.reading import Reading
from campusmon.rollups import RollupMaintainer, mark_dirty
from campusmon.services import InfluxDB, free_port

T0 = 1_790_784_000  # 2026-10-01 00:00 +08:00
TICK = os.sysconf("SC_CLK_TCK")


def campus(n: int, port: int, db: str, db_url: str) -> CampusConfig:
    per = 20
    buildings = [{"id": f"b{b:04d}"} for b in range((n + per - 1) // per)]
    meters = [
        {
            "id": f"m{i:05d}",
            "building": f"b{i // per:04d}",
            "kind": "electricity",
            "interval_s": 60,
            "max_rate": 500_000,
        }
        for i in range(n)
    ]
    return parse_config(
        {
            "site": {"timezone": "Asia/Shanghai"},
            "buildings": buildings,
            "meters": meters,
            "influxdb": {"url": f"http://127.0.0.1:{port}", "database": db, "timeout_s": 120},
            "database": {"url": db_url},
        },
        environ={},
    )


class Registers:
    """Each meter's register, rising at its own rate with some noise."""

    def __init__(self, n: int) -> None:
        rng = random.Random(1)
        self.ids = [f"m{i:05d}" for i in range(n)]
        self.reg = [rng.uniform(100, 10_000) for _ in range(n)]
        self.rate = [rng.uniform(0.01, 2.0) for _ in range(n)]  # kWh per minute
        self.rng = rng

    def minute(self, ts: int) -> list[Reading]:
        out = []
        for i, mid in enumerate(self.ids):
            self.reg[i] += self.rate[i] * (0.5 + self.rng.random())
            out.append(Reading(mid, "energy_kwh", round(self.reg[i], 2), ts))
        return out


def write(store: Any, sessions: Any, readings: list[Reading], mark: bool) -> None:
    for i in range(0, len(readings), 100_000):
        out = store.write(readings[i : i + 100_000])
        assert not out.rejected, out.rejected[:1]
    if mark:
        marks: dict[str, int] = {}
        for r in readings:
            if r.meter not in marks or r.ts < marks[r.meter]:
                marks[r.meter] = r.ts
        mark_dirty(sessions, marks)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def steady(srv: InfluxDB, tmp: str, n: int, warm_min: int, interval: int, cycles: int) -> None:
    cfg = campus(n, srv.port, "steady", f"sqlite:///{tmp}/steady.sqlite")
    store = open_store(cfg)
    store.ensure_database()
    _e, sessions = init_db(cfg.database.url)
    regs = Registers(n)
    pid = srv.running_pid()
    assert pid is not None
    print(f"steady state: {n:,} meters x 1-minute readings; warm-up {warm_min} min", flush=True)
    t = T0
    t_fill = time.perf_counter()
    for _ in range(warm_min):
        write(store, sessions, regs.minute(t), mark=False)
        t += 60
    print(f"  warm-up: {n * warm_min:,} readings written in {time.perf_counter() - t_fill:.1f} s", flush=True)
    m = RollupMaintainer(cfg, store, sessions)
    t_first = time.perf_counter()
    st = m.pass_once(now=t)
    print(
        f"  first pass (every series new): {time.perf_counter() - t_first:.1f} s, {st.hours_written:,} hours"
    )
    shares = []
    for c in range(cycles):
        batch: list[Reading] = []
        for _ in range(interval // 60):
            batch += regs.minute(t)
            t += 60
        write(store, sessions, batch, mark=True)
        own0, db0, w0 = time.process_time(), cpu_of(pid), time.perf_counter()
        st = m.pass_once(now=t)
        own, db, wall = time.process_time() - own0, cpu_of(pid) - db0, time.perf_counter() - w0
        share = (own + db) / interval
        shares.append(share)
        print(
            f"  pass {c + 1}: {len(batch):,} new readings, {st.series:,} series, {st.requests} requests: "
            f"{wall:.1f} s wall, CPU {own:.1f} s here + {db:.1f} s InfluxDB = {share:.1%} of one core "
            f"every {interval} s",
            flush=True,
        )
    worst = max(shares)
    print(
        f"share of one core to keep rollups current: {worst:.1%} (goal <= 25 %: {'met' if worst <= 0.25 else 'NOT met'})"
    )
    store.close()


def rebuild(srv: InfluxDB, tmp: str, n: int, days: int, campus_n: int) -> None:
    cfg = campus(n, srv.port, "rebuild", f"sqlite:///{tmp}/rebuild.sqlite")
    store = open_store(cfg)
    store.ensure_database()
    _e, sessions = init_db(cfg.database.url)
    regs = Registers(n)
    t = T0
    t_fill = time.perf_counter()
    buf: list[Reading] = []
    for _ in range(days * 1440):
        buf += regs.minute(t)
        t += 60
        if len(buf) >= 200_000:
            write(store, sessions, buf, mark=False)
            buf = []
    write(store, sessions, buf, mark=False)
    total = n * days * 1440
    print(f"\nrebuild: {n:,} meters x {days} days of 1-minute readings ({total:,}) written in "
          f"{time.perf_counter() - t_fill:.1f} s")  # fmt: skip
    m = RollupMaintainer(cfg, store, sessions)
    w0, c0 = time.perf_counter(), time.process_time()
    st = m.rebuild(T0, t, progress=None)
    wall = time.perf_counter() - w0
    print(
        f"  built {st.hours_written:,} hours from {st.readings_read:,} readings in {wall:.1f} s "
        f"({time.process_time() - c0:.1f} s CPU here, {st.requests} requests)"
    )
    per_reading = wall / max(total, 1)
    month = campus_n * 30 * 1440 * per_reading
    print(f"one month's rollups for {campus_n:,} meters, scaled by readings: about {month / 60:.0f} min")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument("--warm-minutes", type=int, default=60)
    ap.add_argument("--interval", type=int, default=300, help="seconds between passes")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--rebuild-meters", type=int, default=500)
    ap.add_argument("--rebuild-days", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollups-") as tmp:
        srv = InfluxDB(Path(tmp) / "influxdb", free_port())
        srv.start()
        try:
            steady(srv, tmp, args.meters, args.warm_minutes, args.interval, args.cycles)
            if args.rebuild_meters > 0:
                rebuild(srv, tmp, args.rebuild_meters, args.rebuild_days, args.meters)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
