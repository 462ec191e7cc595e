"""Sizing: what 1,000, 10,000 and 100,000 meters need, from what one small run measures here.

Measured on real servers started by the project (Mosquitto, InfluxDB 1.8, the collector as its own
process), with readings from the campus simulator (firmware_sim.profiles: a register and a rate per
meter, every ``--interval`` seconds):

(1) CPU seconds per 1,000 readings, end to end: the collector, the broker and influxd, each read
    from /proc while a burst of simulated messages goes through (their idle rate subtracted);
(2) resident memory of the collector with a registry of ``--meters-small`` and ``--meters-large``
    meters: a base and a per-meter slope;
(3) InfluxDB bytes per reading on disk after full compaction (``--disk-days`` of ``--disk-meters``
    meters, TSM files of every shard once the WAL is empty), and influxd's memory per series.

Then the table of docs/deployment.md, extrapolated with the formulas printed under it. Machines
here are shared and noisy: the CPU figures are upper bounds of a quiet server.

    .venv/bin/python bench/sizing.py [--interval 900] [--disk-meters 300] [--disk-days 28]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from campusmon.config import parse_config  # noqa: E402
from campusmon.influx import open_store  # noqa: E402
from campusmon.services import InfluxDB, Mosquitto, free_port  # noqa: E402
from campusmon.wire import METER_TOPIC, encode_senml  # noqa: E402
from firmware_sim.mqtt_meters import BackpressurePublisher  # noqa: E402
from firmware_sim.profiles import sim_meters_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TYPES = ["dorm", "classroom", "office", "lab", "library", "canteen", "sports", "admin"]
YEAR_S = 365 * 86400


class ColdInfluxDB(InfluxDB):
    """InfluxDB that snapshots and fully compacts a shard one second after its last write.

    The defaults (10 min and 4 h) give the same files later; the bench cannot wait that long.
    """

    def prepare(self) -> None:
        super().prepare()
        text = self.conf.read_text().replace(
            "[data]\n",
            '[data]\n  cache-snapshot-write-cold-duration = "1s"\n  compact-full-write-cold-duration = "1s"\n',
        )
        self.conf.write_text(text)


def campus(n_meters: int, **extra: object) -> dict:
    """A campus of ``n_meters``: 40 meters a building, four electricity meters to one water meter."""
    n_buildings = max(1, math.ceil(n_meters / 40))
    buildings = [
        {
            "id": f"b{i:05d}",
            "type": TYPES[i % len(TYPES)],
            "floor_area_m2": 2000 + 500 * (i % 20),
            "occupants": 200,
        }
        for i in range(n_buildings)
    ]
    meters = []
    for i in range(n_meters):
        water = i % 5 == 4
        meters.append(
            {
                "id": f"{'w' if water else 'e'}{i:06d}",
                "building": f"b{i // 40:05d}",
                "kind": "water" if water else "electricity",
                "category": "02000" if water else "01A00",
            }
        )
    return {"buildings": buildings, "meters": meters, **extra}


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_mem_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def count_readings(url: str, db: str) -> int:
    total = 0
    for measurement, field in (("electricity", "energy_kwh"), ("water", "volume_m3")):
        r = httpx.get(f"{url}/query", params={"db": db, "q": f'SELECT count("{field}") FROM "{measurement}"'})
        series = r.json()["results"][0].get("series")
        total += int(series[0]["values"][0][1]) if series else 0
    return total * 2  # a register and a rate per message


def wait_for(pred, timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


@dataclass
class CollectorRun:
    meters: int
    readings: int
    cpu_per_1k: dict[str, float]
    rss_idle_mib: float
    rss_peak_mib: float
    seconds: float


def collector_run(tmp: Path, n_meters: int, intervals: int, interval_s: int) -> CollectorRun:
    """The collector as `campusmon collector`, its own process, fed ``intervals`` rounds of every meter."""
    tmp.mkdir(parents=True)
    mq = Mosquitto(tmp / "mq", free_port(), anonymous=True).start()
    ix = InfluxDB(tmp / "ix", free_port()).start()
    metrics_port = free_port()
    db = "campus"
    conf = campus(
        n_meters,
        mqtt={"port": mq.port, "client_id": "sizing-collector", "batch_size": 1000, "flush_interval_s": 0.5},
        influxdb={"url": f"http://127.0.0.1:{ix.port}", "database": db},
        database={"url": f"sqlite:///{tmp}/campusmon.sqlite"},
        collector={"metrics_port": metrics_port},
    )
    cfg_file = tmp / "campus.yaml"
    cfg_file.write_text(yaml.safe_dump(conf))
    cfg = parse_config(conf, environ={})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
    col = subprocess.Popen(
        [str(Path(sys.executable).parent / "campusmon"), "collector", "-c", str(cfg_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def subscribed() -> bool:
            if col.poll() is not None:
                raise RuntimeError(f"collector exited: {col.stderr.read().decode()[-2000:]}")
            try:
                body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).text
            except httpx.HTTPError:
                return False
            return 'campusmon_collector_mqtt_subscribed{client_id="sizing-collector"} 1.0' in body

        wait_for(subscribed, 120, "collector subscribed")
        sims = sim_meters_for(cfg, seed=1)
        t0 = int(time.time()) - (intervals + 1) * interval_s
        t0 -= t0 % interval_s
        msgs = [
            (METER_TOPIC.format(meter_id=sm.id), encode_senml(sm.readings(t0 + k * interval_s)))
            for k in range(intervals)
            for sm in sims
        ]
        want = 2 * len(msgs)
        pids = {"collector": col.pid, "mosquitto": mq.proc.pid, "influxd": ix.proc.pid}
        idle0 = {k: proc_cpu_s(p) for k, p in pids.items()}
        time.sleep(5)  # the idle rate of each process, subtracted below
        idle = {k: (proc_cpu_s(p) - idle0[k]) / 5 for k, p in pids.items()}
        rss_idle = proc_mem_kib(col.pid, "VmRSS") / 1024
        cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}
        start = time.monotonic()
        pub = BackpressurePublisher("127.0.0.1", mq.port, "sizing-publisher")
        for topic, body in msgs:
            pub.publish(topic, body)
        pub.close(60)
        wait_for(
            lambda: count_readings(f"http://127.0.0.1:{ix.port}", db) >= want, 600, "readings stored", 0.5
        )
        dt = time.monotonic() - start
        cpu = {k: max(0.0, proc_cpu_s(p) - cpu0[k] - idle[k] * dt) / want * 1000 for k, p in pids.items()}
        return CollectorRun(n_meters, want, cpu, rss_idle, proc_mem_kib(col.pid, "VmHWM") / 1024, dt)
    finally:
        col.terminate()
        col.wait(30)
        mq.stop()
        ix.stop()


@dataclass
class DiskRun:
    readings: int
    tsm_bytes: int
    other_bytes: (
        int  # the series file (preallocated segments) and shard indexes: per database, not per reading
    )
    bytes_per_reading: float
    influxd_rss_mib: float  # restarted, holding the campus database
    kib_per_series: float  # what a further series adds to a restarted influxd (inmem index)


def tree_bytes(d: Path, suffix: str | None = None) -> int:
    return sum(
        p.stat().st_size for p in d.rglob("*") if p.is_file() and (suffix is None or p.name.endswith(suffix))
    )


def disk_run(tmp: Path, n_meters: int, days: int, interval_s: int, series_meters: int) -> DiskRun:
    """Simulated readings straight into InfluxDB through the project's store, then full compaction.

    Memory: influxd is restarted (the index is rebuilt from disk) with the campus database, then
    again after one round of ``series_meters`` more meters; the difference is the cost of a series.
    """
    tmp.mkdir(parents=True)
    ix = ColdInfluxDB(tmp / "ix", free_port()).start()
    try:
        conf = campus(n_meters, influxdb={"url": f"http://127.0.0.1:{ix.port}", "database": "campus"})
        cfg = parse_config(conf, environ={})
        store = open_store(cfg)
        store.ensure_database()
        sims = sim_meters_for(cfg, seed=2)
        end = int(time.time()) - 86400
        end -= end % interval_s
        start = end - days * 86400
        written = 0
        batch = []
        for t in range(start, end, interval_s):  # time order, as meters deliver
            for sm in sims:
                batch.extend(sm.readings(t))
            if len(batch) >= 20_000:
                written += store.write(batch).stored
                batch = []
        written += store.write(batch).stored if batch else 0
        data = tmp / "ix" / "data"
        wal = tmp / "ix" / "wal"

        def compacted() -> bool:
            if tree_bytes(wal, ".wal") > 0 or any(p.name.endswith(".tmp") for p in data.rglob("*")):
                return False
            a = tree_bytes(data, ".tsm")
            time.sleep(3)
            return a > 0 and tree_bytes(data, ".tsm") == a and tree_bytes(wal, ".wal") == 0

        wait_for(compacted, 600, "full compaction", 1.0)
        tsm = tree_bytes(data, ".tsm")
        other = tree_bytes(data) - tsm

        def restarted_rss() -> float:
            ix.stop()
            ix.start()
            time.sleep(2)  # let the index load settle
            return proc_mem_kib(ix.proc.pid, "VmRSS") / 1024

        rss_campus = restarted_rss()
        more_conf = campus(series_meters, influxdb={**conf["influxdb"], "database": "series"})
        more = parse_config(more_conf, environ={})
        more_store = open_store(more)
        more_store.ensure_database()
        one_round = [r for sm in sim_meters_for(more, seed=3) for r in sm.readings(end)]
        for i in range(0, len(one_round), 20_000):
            more_store.write(one_round[i : i + 20_000])
        rss_more = restarted_rss()
        per_series = max(0.0, (rss_more - rss_campus) * 1024 / series_meters)
        return DiskRun(written, tsm, other, tsm / written, rss_campus, per_series)
    finally:
        ix.stop()


def table(args: argparse.Namespace, small: CollectorRun, large: CollectorRun, disk: DiskRun) -> str:
    per_meter_s = 2 / args.interval  # readings per second of one meter
    cpu_per_reading = sum(large.cpu_per_1k.values()) / 1000
    mib_per_meter = max(0.0, (large.rss_idle_mib - small.rss_idle_mib) / (large.meters - small.meters))
    base_mib = small.rss_idle_mib - mib_per_meter * small.meters
    influx_series_mib = disk.kib_per_series / 1024
    rows = [
        "| meters | messages/s (mean / peak) | readings/s (mean) | CPU, cores (mean / peak) "
        "| memory: collector + influxd | InfluxDB disk per year |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (1_000, 10_000, 100_000):
        msgs = n / args.interval
        peak = n / args.peak_window
        readings = n * per_meter_s
        cores = readings * cpu_per_reading
        cores_peak = 2 * peak * cpu_per_reading
        mem = base_mib + mib_per_meter * n + disk.influxd_rss_mib + influx_series_mib * n
        disk_year = n * per_meter_s * YEAR_S * disk.bytes_per_reading
        rows.append(
            f"| {n:,} | {msgs:,.1f} / {peak:,.0f} | {readings:,.1f} | {cores:.3f} / {cores_peak:.2f} "
            f"| {mem:,.0f} MiB | {disk_year / 2**30:,.1f} GiB |"
        )
    formulas = f"""
Measured here ({time.strftime("%Y-%m-%d")}, {os.cpu_count()} shared cores):
- CPU per 1,000 readings, end to end: {", ".join(f"{k} {v:.3f} s" for k, v in large.cpu_per_1k.items())}
  = {cpu_per_reading * 1000:.3f} s ({large.readings:,} readings of {large.meters:,} meters in {large.seconds:.1f} s;
  with {small.meters:,} meters: {sum(small.cpu_per_1k.values()):.3f} s)
- collector memory: {small.rss_idle_mib:.0f} MiB with {small.meters:,} meters, {large.rss_idle_mib:.0f} MiB with
  {large.meters:,} (peak {large.rss_peak_mib:.0f} MiB): {base_mib:.0f} MiB + {mib_per_meter * 1024:.1f} KiB a meter
- InfluxDB: {disk.bytes_per_reading:.2f} bytes a reading after compaction ({disk.readings:,} readings in
  {disk.tsm_bytes / 2**20:.1f} MiB of TSM files; {disk.other_bytes / 2**20:.1f} MiB more per database: series file, indexes);
  influxd {disk.influxd_rss_mib:.0f} MiB restarted with them, {disk.kib_per_series:.2f} KiB a further series
Formulas (N meters, one message of 2 readings every {args.interval} s):
  messages/s = N / {args.interval}; peak = N / {args.peak_window} (every meter within {args.peak_window} s of the quarter hour)
  readings/s = 2 N / {args.interval}; cores = readings/s x {cpu_per_reading * 1000:.3f} / 1000
  memory = {base_mib:.0f} MiB + N x {mib_per_meter * 1024:.1f} KiB (collector) + {disk.influxd_rss_mib:.0f} MiB + N x {disk.kib_per_series:.2f} KiB (influxd)
  disk/year = 2 N x {YEAR_S // args.interval:,} x {disk.bytes_per_reading:.2f} bytes"""
    return "\n".join(rows) + "\n" + formulas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=int, default=900, help="seconds between a meter's messages")
    ap.add_argument("--peak-window", type=int, default=60, help="seconds in which one round arrives")
    ap.add_argument("--meters-small", type=int, default=1_000)
    ap.add_argument("--meters-large", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=20_000, help="messages of each collector run")
    ap.add_argument("--disk-meters", type=int, default=300)
    ap.add_argument("--disk-days", type=int, default=28)
    ap.add_argument(
        "--series-meters", type=int, default=20_000, help="meters added to measure a series' memory"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = []
        for n in (args.meters_small, args.meters_large):
            r = collector_run(tmp / f"col{n}", n, max(1, args.messages // n), args.interval)
            print(f"collector, {n:,} meters: {r}", flush=True)
            runs.append(r)
        disk = disk_run(tmp / "disk", args.disk_meters, args.disk_days, args.interval, args.series_meters)
        print(f"disk: {disk}", flush=True)
    print()
    print(table(args, runs[0], runs[1], disk))


if __name__ == "__main__":
    main()
