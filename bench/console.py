"""Server time of the console: the overview page and its data calls, and a building page.

Two campuses, each in a private InfluxDB 1.x started in a temporary folder:

- the demo campus (deploy/campus.yaml) with simulated readings from eight weeks back to now;
- a simulated 1,000-meter campus (100 buildings, the layout of bench/query.py) from five weeks back.

Each figure is the time of a full request through the app in process (routing, the auth guard,
the accounting service against InfluxDB, template rendering), p50 and p95 over ``--loads`` loads
after two warm-ups. "Overview data" is the building summaries the page is made of, asked of the
JSON API (``/api/v1/buildings/{id}/summary`` for every building), which the page must equal.
Goal: the demo campus's overview p95 under 300 ms.

Run: .venv/bin/python bench/console.py [--loads 50] [--big-loads 20] [--skip-big]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from fastapi.testclient import TestClient

from api.accounting import periods
from api.app import create_app
from api.auth.service import AuthStore
from bench.query import campus as big_campus
from bench.query import fill
from campusmon.config import CampusConfig, parse_config
from campusmon.rollups import RollupMaintainer
from campusmon.services import InfluxDB, free_port
from firmware_sim.month import simulate_month, write_readings

ROOT = Path(__file__).resolve().parent.parent


def demo_config(port: int, tmp: Path) -> CampusConfig:
    data = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())
    data["influxdb"] = {"url": f"http://127.0.0.1:{port}", "database": "bench_demo"}
    data["database"] = {"url": f"sqlite:///{tmp}/demo.sqlite"}
    return parse_config(data, "deploy/campus.yaml", environ={})


def percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return statistics.median(xs), p95


def timed(fn: Callable[[], Any], loads: int) -> tuple[float, float]:
    for _ in range(2):
        fn()
    out = []
    for _ in range(loads):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return percentiles(out)


def measure(name: str, cfg: CampusConfig, loads: int) -> None:
    app = create_app(cfg, start_jobs=False)
    t0 = time.perf_counter()
    stats = RollupMaintainer(cfg, app.state.store, app.state.sessions).pass_once()
    print(
        f"{name}: hourly rollups of {stats.meters} meters in {time.perf_counter() - t0:.1f} s (as a worker keeps them)"
    )
    with TestClient(app) as c:
        raw, _ = AuthStore(app.state.sessions, ttl=0).create_token("bench", "operator")
        c.headers["Authorization"] = f"Bearer {raw}"
        c.cookies.set("campusmon_lang", "zh")
        building = cfg.buildings[0].id

        def ok(path: str) -> None:
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])

        def data_calls() -> None:
            for b in cfg.buildings:
                ok(f"/api/v1/buildings/{b.id}/summary")

        rows = [
            ("overview page /console/", lambda: ok("/console/")),
            (f"overview data ({len(cfg.buildings)} summaries via API)", data_calls),
            (f"building page /console/buildings/{building}", lambda: ok(f"/console/buildings/{building}")),
        ]
        print(f"\n{name}: {len(cfg.buildings)} buildings, {len(cfg.meters)} meters, {loads} loads each")
        print(f"  {'request':<52} {'p50 ms':>8} {'p95 ms':>8}")
        for label, fn in rows:
            p50, p95 = timed(fn, loads)
            print(f"  {label:<52} {p50 * 1000:>8.0f} {p95 * 1000:>8.0f}")
    app.state.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=50)
    ap.add_argument("--big-loads", type=int, default=50)
    ap.add_argument("--big-meters", type=int, default=1000)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        srv = InfluxDB(Path(tmp) / "influxdb", free_port())
        srv.start()
        try:
            cfg = demo_config(srv.port, Path(tmp))
            now = int(time.time())
            month = periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label
            sim = simulate_month(cfg, month, seed=1, margin_s=56 * 86400)
            app = create_app(cfg, start_jobs=False)
            app.state.store.ensure_database()
            n = write_readings(app.state.store, [r for r in sim.readings if r.ts <= now - 60])
            app.state.store.close()
            app.state.engine.dispose()
            print(f"demo campus: {n:,} readings written (eight weeks before this month to now)")
            measure("demo campus", cfg, args.loads)
            if not args.skip_big:
                big = big_campus(args.big_meters, srv.port, "bench_big")
                big = big.model_copy(update={"database": parse_config(
                    {"database": {"url": f"sqlite:///{tmp}/big.sqlite"}}, "bench", environ={}).database})  # fmt: skip
                start = periods.local_midnight(periods.local_date(now - 35 * 86400, big.site.tz), big.site.tz)
                days = (now - start) // 86400
                t0 = time.perf_counter()
                total = fill(big, start, days)
                print(
                    f"{args.big_meters}-meter campus: {total:,} readings in {time.perf_counter() - t0:.0f} s"
                )
                measure(f"{args.big_meters}-meter campus", big, args.big_loads)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
