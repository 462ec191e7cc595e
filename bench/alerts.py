"""Alert benchmarks.

1. Instant rules, end to end: a reading published over MQTT -> collector -> InfluxDB -> instant rules
   -> alert event -> the API's SSE stream. Collector and API run as ``campusmon`` processes, as in
   ``campusmon demo``. Baseline in the same run: MQTT publish -> a plain subscriber (the broker hop).
2. One window-rule pass over 1,000 meters with 35 days of 15-minute readings (in memory), split into
   preparing the hourly series and running the rules. Baseline in the same run: the consumption
   policy alone (``api.accounting.consumption.derive``) over the same readings; plus the InfluxDB
   read of one day of those meters. Then the incremental engine (``api.alerts.engine``): a full
   pass, and a pass after 5 minutes of new readings (``incremental/full pass: R``, goal <= 0.05).
   Then the full pass as the live evaluator rebuilds its book when rollups are kept
   (``api.alerts.seeding``): settled hours from hourly rollups, raw readings after the watermark
   (``full pass / consumption policy alone: Q``, goal <= 1.0).
3. Backtest memory: peak RSS of a backtest of ``--backtest-meters`` x ``--backtest-days`` days read
   from InfluxDB, streamed by day (the engine) and held whole (``full=True``), each in its own process.

Run: ``.venv/bin/python bench/alerts.py [--trials 100] [--meters 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from campusmon.config import parse_config  # noqa: E402
from campusmon.services import InfluxDB, Mosquitto, free_port, wait_port  # noqa: E402
from campusmon.wire import METER_TOPIC, encode_senml  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def sse_listener(url: str, got: dict[str, float], stop: threading.Event, token: str = "") -> None:
    """Record the arrival time of every 'opened' alert by room id."""
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=None) as r:
        data = None
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                if data["type"] == "opened" and data["alert"]["rule"] == "dorm.high_power":
                    got.setdefault(
                        data["alert"]["subject"]["id"] + f"@{data['alert']['detail'].get('lasted_s')}",
                        time.monotonic(),
                    )
                    got[f"last:{data['alert']['subject']['id']}"] = time.monotonic()
                data = None


def viewer_token(cfg: dict) -> str:
    from api.auth.service import AuthStore
    from campusmon.db import init_db

    engine, sessions = init_db(cfg["database"]["url"])
    raw, _ = AuthStore(sessions).create_token("bench", "viewer")
    engine.dispose()
    return raw


def instant_latency(trials: int, work: Path) -> dict[str, float]:
    mq = Mosquitto(work / "mq", free_port(), anonymous=True).start()
    influx = InfluxDB(work / "influx", free_port()).start()
    rooms = 20
    api_port = free_port()
    cfg = {
        "site": {"timezone": "Asia/Shanghai"},
        "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}],
        "meters": [
            {"id": f"e-r{i}", "building": "d1", "kind": "electricity", "room": f"d1-{i}", "interval_s": 10}
            for i in range(rooms)
        ],
        "mqtt": {"port": mq.port, "client_id": "bench-collector", "flush_interval_s": 0.05},
        "influxdb": {"url": f"http://127.0.0.1:{influx.port}", "database": "bench"},
        "database": {"url": f"sqlite:///{work}/bench.sqlite"},
        "api": {"port": api_port},
        "alerts": {
            "rules": {"data.offline": {"enabled": False}, "data.completeness": {"enabled": False}},
            "mqtt": {"enabled": False},
        },
    }
    path = work / "campus.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "CAMPUSMON_CONFIG": str(path)}
    token = viewer_token(cfg)  # the stream, like every API route but /healthz, needs an identity
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "campusmon.cli", name, "-c", str(path)],
            env=env,
            cwd=ROOT,
            stdout=open(work / f"{name}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        for name in ("collector", "api")
    ]
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.connect("127.0.0.1", mq.port)
    pub.loop_start()
    echo: dict[int, float] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo")
    sub.on_message = lambda _c, _u, m: echo.setdefault(int(m.payload), time.monotonic())
    sub.connect("127.0.0.1", mq.port)
    sub.subscribe("bench/echo", qos=1)
    sub.loop_start()
    stop = threading.Event()
    got: dict[str, float] = {}
    try:
        wait_port(api_port, 30, procs[1])
        time.sleep(1.0)
        th = threading.Thread(
            target=sse_listener,
            args=(f"http://127.0.0.1:{api_port}/api/v1/alerts/stream", got, stop, token),
            daemon=True,
        )
        th.start()
        time.sleep(0.5)
        lat, base = [], []
        ts0 = int(time.time()) - 10 * trials * 60
        for k in range(trials):
            room = k % rooms
            t = ts0 + k * 60

            def send(ts: int, w: float, room: int = room) -> None:
                msg = encode_senml([_reading(f"e-r{room}", w, ts)])
                pub.publish(METER_TOPIC.format(meter_id=f"e-r{room}"), msg, qos=1).wait_for_publish(5)

            send(t, 150.0)
            send(t + 10, 2000.0)  # the kettle goes on
            time.sleep(0.25)  # let the collector store those
            key = f"d1-{room}@30"
            t_pub = time.monotonic()
            send(t + 40, 2000.0)  # 30 s later it is still on: this reading raises the alert
            deadline = t_pub + 10
            while key not in got and time.monotonic() < deadline:
                time.sleep(0.002)
            if key in got:
                lat.append(got.pop(key) - t_pub)
            send(t + 50, 150.0)  # off again: clears
            t_echo = time.monotonic()
            pub.publish("bench/echo", str(k), qos=1)
            while k not in echo and time.monotonic() < t_echo + 5:
                time.sleep(0.001)
            if k in echo:
                base.append(echo[k] - t_echo)
            time.sleep(0.1)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        pub.loop_stop()
        sub.loop_stop()
        mq.stop()
        influx.stop()
    return {
        "trials": trials,
        "alerts_seen": len(lat),
        "p50_s": statistics.median(lat),
        "p99_s": pct(lat, 99),
        "max_s": max(lat),
        "mqtt_hop_p50_s": statistics.median(base),
        "mqtt_hop_p99_s": pct(base, 99),
        "ratio_p50_vs_mqtt_hop": statistics.median(lat) / max(statistics.median(base), 1e-6),
    }


def _reading(meter: str, w: float, ts: int):
    from campusmon.reading import Reading

    return Reading(meter, "power_w", w, ts)


def window_pass(n_meters: int, work: Path) -> dict[str, float]:
    from api.accounting.consumption import Limits, derive
    from api.alerts.config import parse_alerts
    from api.alerts.evaluate import window_findings
    from api.alerts.series import Timeline, build_campus
    from api.alerts.store import AlertStore
    from api.alerts.window import calendar, children_of, context_at
    from campusmon.db import init_db
    from firmware_sim.profiles import sim_meters_for

    n_b = max(1, n_meters // 20)
    types = ["dorm", "classroom", "office", "lab", "library", "canteen"]
    data = {
        "buildings": [
            {"id": f"b{i}", "type": types[i % len(types)], "floor_area_m2": 4000 + 100 * i, "occupants": 300}
            for i in range(n_b)
        ],
        "meters": [
            {"id": f"m{i}", "building": f"b{i % n_b}", "kind": "electricity" if i % 2 else "water"}
            for i in range(n_meters)
        ],
        "database": {"url": f"sqlite:///{work}/pass.sqlite"},
    }
    cfg = parse_config(data, "bench", environ={})
    days = 35
    now = int(time.time()) // 900 * 900
    start = now - days * 86400
    sims = sim_meters_for(cfg, 3)
    points: dict[str, list[tuple[int, float]]] = {s.id: [] for s in sims}
    t0 = time.perf_counter()
    for t in range(start, now + 1, 900):
        for s in sims:
            r = s.readings(t)[0]
            points[s.id].append((t, r.value))
    gen = time.perf_counter() - t0
    readings = sum(len(v) for v in points.values())

    t0 = time.perf_counter()
    for m in cfg.meters:
        derive(points[m.id], Limits.for_meter(m))
    policy = time.perf_counter() - t0

    acfg = parse_alerts(cfg)
    cal = calendar(cfg)
    _e, sessions = init_db(cfg.database.url)
    store = AlertStore(cfg, acfg, sessions)
    t0 = time.perf_counter()
    timeline = Timeline.build(start, now, cfg.site.tz, cal)
    series = build_campus(cfg, timeline, points, cal)
    prep = time.perf_counter() - t0
    ctx = context_at(cfg, timeline, series, now, 960, [])
    t0 = time.perf_counter()
    findings = window_findings(acfg, ctx, store.state)
    rules = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.apply(findings)
    apply_s = time.perf_counter() - t0
    # The next pass (memos warm, nothing new): what a steady scheduler pays for the rules.
    ctx2 = context_at(cfg, timeline, series, now + 300, 960, [])
    t0 = time.perf_counter()
    window_findings(acfg, ctx2, store.state)
    rules2 = time.perf_counter() - t0
    del children_of
    # The incremental engine (api.alerts.engine), as the live evaluator runs it: a full pass folds
    # the whole look-back into its hour book and judges every rule; the next pass, 5 minutes later,
    # folds the readings of those 5 minutes and judges again, reusing what did not change.
    from api.alerts.engine import HourBook, RuleCache

    t0 = time.perf_counter()
    tl2 = Timeline.build(start, now, cfg.site.tz, cal)
    book = HourBook(cfg, tl2, cal)
    book.feed(points)
    cache = RuleCache()
    store2 = AlertStore(cfg, acfg, sessions)
    store2.apply(
        window_findings(acfg, context_at(cfg, tl2, book.series, now, 960, []), store2.state, None, cache)
    )
    full_inc = time.perf_counter() - t0
    later = now + 300
    fresh: dict[str, list[tuple[int, float]]] = {}
    for k, sm in enumerate(sims):
        t = now + 300 * (1 + k % 3) - 300  # a third of the meters read in any 5 minutes
        if now < t <= later:
            fresh[sm.id] = [(t, sm.readings(t)[0].value)]
    t0 = time.perf_counter()
    book.grow(later)
    book.feed(fresh)
    store2.apply(
        window_findings(acfg, context_at(cfg, tl2, book.series, later, 960, []), store2.state, None, cache)
    )
    step = time.perf_counter() - t0
    # The live evaluator's rebuild with rollups (api.alerts.seeding): settled hours from hourly rollups
    # as the maintainer keeps them (derived here beforehand, outside the timing: that is the rollup
    # worker's job, measured by bench/rollups.py), raw readings only from each watermark's resume
    # reading on, then every rule.
    _e3, fresh_db = init_db(f"sqlite:///{work}/seeded.sqlite")  # no alert open yet, as in the first pass
    seeded_s, seeded_hours = seeded_full_pass(cfg, points, start, now, cal, acfg, fresh_db)
    return {
        "meters": n_meters,
        "days": days,
        "readings": readings,
        "engine_full_pass_from_rollups_s": round(seeded_s, 3),
        "hours_from_rollups": seeded_hours,
        "seeded_full_pass_vs_policy": round(seeded_s / policy, 2),
        "incremental_vs_seeded_full": round(step / seeded_s, 4),
        "generate_s": round(gen, 2),
        "policy_only_s": round(policy, 3),
        "prepare_series_s": round(prep, 3),
        "rules_s": round(rules, 3),
        "rules_next_pass_s": round(rules2, 3),
        "apply_s": round(apply_s, 3),
        "findings": len(findings),
        "pass_total_s": round(prep + rules + apply_s, 3),
        "ratio_pass_vs_policy": round((prep + rules + apply_s) / policy, 2),
        "engine_full_pass_s": round(full_inc, 3),
        "engine_pass_after_5_min_s": round(step, 4),
        "incremental_vs_full": round(step / full_inc, 4),
        "engine_full_pass_vs_policy": round(full_inc / policy, 2),
    }


def seeded_full_pass(cfg, points, start: int, now: int, cal, acfg, sessions) -> tuple[float, int]:
    from bisect import bisect_left

    from api.accounting import periods
    from api.accounting.consumption import Limits, derive_columns
    from api.alerts.engine import HourBook, RuleCache
    from api.alerts.evaluate import window_findings
    from api.alerts.series import REGISTER, Timeline
    from api.alerts.store import AlertStore
    from api.alerts.window import context_at
    from campusmon import rollups

    tz = cfg.site.tz
    kept = {}
    for m in cfg.meters:
        pts = points[m.id]
        ts, vs = [t for t, _ in pts], [v for _, v in pts]
        curve = derive_columns(ts, vs, Limits.for_meter(m))
        acc = curve.ts
        until = periods.floor(acc[-1], "hour", tz)
        resume = acc[max(bisect_left(acc, until) - rollups.RESUME_POINTS, 0)]
        d = rollups.derive_hours(curve, m, REGISTER[m.kind], periods.floor(acc[0], "hour", tz), until, tz)
        from datetime import UTC, datetime

        rows = [
            rollups.HourRow(
                datetime.fromtimestamp(h, UTC), REGISTER[m.kind], d.values[i], d.shares[i], d.quarantined[i],
                d.resets[i] > 0, d.readings[i], d.rollovers[i], d.resets[i], d.known[i], d.first_s[i], d.last_s[i],
            )
            for i, h in enumerate(d.hours)
        ]  # fmt: skip
        events = [e for e in curve.events if e.ts <= resume]
        kept[m.id] = (rows, until, resume, events)
    t0 = time.perf_counter()
    tl = Timeline.build(start, now, tz, cal)
    book = HourBook(cfg, tl, cal)
    feed = {}
    hours = 0
    for m in cfg.meters:
        rows, until, resume, events = kept[m.id]
        first = next((int(r.hour.timestamp()) + r.first_s for r in rows if r.readings), None)
        hours += book.seed(m.id, rows, until, first, [first] if first is not None else [], events)
        pts = points[m.id]
        feed[m.id] = pts[bisect_left(pts, (resume, float("-inf"))) :]
    book.feed(feed)
    store = AlertStore(cfg, acfg, sessions)
    store.apply(
        window_findings(acfg, context_at(cfg, tl, book.series, now, 960, []), store.state, None, RuleCache())
    )
    return time.perf_counter() - t0, hours


BACKTEST_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from api.alerts.backtest import backtest
from campusmon.config import parse_config
from campusmon.influx import open_store
cfg = parse_config(json.loads(sys.argv[2]), "bench", environ={})
import api.app  # noqa: F401  (what a running system has loaded: the baseline below)
def hwm():  # peak RSS of this process image (ru_maxrss would count the parent's pages at fork)
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024
base = hwm()
t0 = time.perf_counter()
res = backtest(cfg, open_store(cfg), int(sys.argv[3]), int(sys.argv[4]), step_s=900, full=sys.argv[5] == "full")
print(json.dumps({"alerts": len(res.alerts), "readings": res.readings, "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(hwm(), 1),
                  "rss_after_imports_mb": round(base, 1)}))
"""


def backtest_memory(n_meters: int, days: int, work: Path, modes: list[str]) -> dict[str, object]:
    """Peak RSS of a backtest over ``days`` of 15-minute readings, streamed and held whole (``full``)."""
    from campusmon.influx import open_store
    from firmware_sim.profiles import sim_meters_for

    influx = InfluxDB(work / "influx3", free_port()).start()
    try:
        n_b = max(1, n_meters // 20)
        types = ["dorm", "classroom", "office", "lab", "library", "canteen"]
        data = {
            "buildings": [{"id": f"b{i}", "type": types[i % len(types)]} for i in range(n_b)],
            "meters": [
                {"id": f"m{i}", "building": f"b{i % n_b}", "kind": "electricity" if i % 2 else "water"}
                for i in range(n_meters)
            ],
            "influxdb": {"url": f"http://127.0.0.1:{influx.port}", "database": "bt", "timeout_s": 300},
            "database": {"url": f"sqlite:///{work}/bt.sqlite"},
        }
        cfg = parse_config(data, "bench", environ={})
        store = open_store(cfg)
        store.ensure_database()
        end = int(time.time()) // 86400 * 86400
        start = end - days * 86400
        sims = sim_meters_for(cfg, 3)
        batch = []
        n = 0
        for t in range(start, end, 900):
            for sm in sims:
                batch.extend(sm.readings(t))
            if len(batch) >= 50_000:
                store.write(batch)
                n += len(batch)
                batch = []
        store.write(batch)
        n += len(batch)
        store.close()
        out: dict[str, object] = {"meters": n_meters, "days": days, "readings_stored": n}
        for mode in modes:
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    BACKTEST_CHILD,
                    str(ROOT),
                    json.dumps(data),
                    str(start + 86400),
                    str(end),
                    mode,
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            out[mode] = (
                json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else r.stderr[-500:]
            )
    finally:
        influx.stop()
    return out


def influx_fetch(n_meters: int, work: Path) -> dict[str, float]:
    from api.alerts.source import fetch_registers
    from campusmon.influx import open_store
    from campusmon.reading import Reading

    influx = InfluxDB(work / "influx2", free_port()).start()
    try:
        data = {
            "buildings": [{"id": "b0"}],
            "meters": [{"id": f"m{i}", "building": "b0", "kind": "electricity"} for i in range(n_meters)],
            "influxdb": {"url": f"http://127.0.0.1:{influx.port}", "database": "fetch"},
        }
        cfg = parse_config(data, "bench", environ={})
        store = open_store(cfg)
        store.ensure_database()
        now = int(time.time()) // 900 * 900
        batch: list[Reading] = []
        for t in range(now - 86400, now, 900):
            for i in range(n_meters):
                batch.append(Reading(f"m{i}", "energy_kwh", 1000.0 + (t - now) / 3600 + i, t))
            if len(batch) >= 20000:
                store.write(batch)
                batch = []
        store.write(batch)
        t0 = time.perf_counter()
        pts = fetch_registers(store, cfg.meters, now - 86400, now)
        fetch = time.perf_counter() - t0
        store.close()
    finally:
        influx.stop()
    return {
        "meters": n_meters,
        "points": sum(len(v) for v in pts.values()),
        "fetch_one_day_s": round(fetch, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--backtest-meters", type=int, default=1000)
    ap.add_argument("--backtest-days", type=int, default=35)
    ap.add_argument("--backtest-modes", default="stream,full", help="stream (the engine), full (held whole)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as d:
        work = Path(d)
        out = {}
        if not args.skip_latency:
            out["instant_latency"] = instant_latency(args.trials, work)
            print(json.dumps(out["instant_latency"], indent=2), flush=True)
        if args.meters > 0:
            out["window_pass"] = wp = window_pass(args.meters, work)
            print(json.dumps(out["window_pass"], indent=2), flush=True)
            print(
                f"incremental/full pass: {wp['incremental_vs_full']:.4f} (goal <= 0.05) against a full pass "
                f"deriving every hour from raw registers; against the full pass from rollups: "
                f"{wp['incremental_vs_seeded_full']:.4f}"
            )
            print(
                f"full pass / consumption policy alone: {wp['seeded_full_pass_vs_policy']:.2f} (goal <= 1.0; "
                f"hours from rollups, raw after the watermark); with every hour derived from raw registers: "
                f"{wp['engine_full_pass_vs_policy']:.2f}"
            )
        if args.backtest_meters > 0:
            modes = [m for m in args.backtest_modes.split(",") if m in ("stream", "full")]
            out["backtest_memory"] = bm = backtest_memory(
                args.backtest_meters, args.backtest_days, work, modes
            )
            print(json.dumps(bm, indent=2), flush=True)
            if isinstance(bm.get("stream"), dict):
                print(
                    f"backtest peak RSS, {args.backtest_meters} meters x {args.backtest_days} days: "
                    f"{bm['stream']['peak_rss_mb']} MB streamed (goal <= 150 MB), of which "
                    f"{bm['stream']['rss_after_imports_mb']} MB is the process with its libraries loaded; "
                    f"held whole: {bm['full']['peak_rss_mb'] if isinstance(bm.get('full'), dict) else '-'} MB"
                )
        if args.meters > 0:
            out["influx_fetch"] = influx_fetch(args.meters, work)
            print(json.dumps(out["influx_fetch"], indent=2), flush=True)


if __name__ == "__main__":
    main()
