"""Soak: 256 simulated meters through the real gateway, broker, collector and InfluxDB, with faults.

Every component is its own child process, so a SIGKILL is a real one: Mosquitto, InfluxDB, the
collector (``campusmon collector``), the API (``campusmon api``), a building gateway
(``campusmon gateway``) reading 4 simulated RS-485 buses of 32 meters (24 DL/T 645, 4 CJ/T 188,
4 Modbus SDM630 each) on loopback TCP, and 128 MQTT meters (96 electricity, 32 water; 20 % flat
JSON, a few faulty payloads). Publishing is accelerated: the gateway polls every 15 s and the MQTT
meters publish every 10 s (the field default is 900 s).

In one run it injects, on a schedule scaled to ``--minutes`` (48 for the full run; shorter runs keep
floors, e.g. a 60 s full disk, so each fault still bites):

- the broker down (clean stop) for 10 min;
- the gateway's outbox disk full for 5 min, inside the broker outage: the outbox sits on a small
  tmpfs that a ballast file fills. (With the broker up the outbox hardly grows: SQLite reuses its
  WAL and freed pages, so a full disk would test nothing; while the broker is down it must grow.);
- InfluxDB down (clean stop) for 30 min;
- SIGKILL of the gateway, the collector and the API at random moments (``--kills`` each, at least
  5), each restarted 1-3 s later; kills also land inside the fault windows.

Ground truth ("sent"), never taken from what reached InfluxDB:

- MQTT meters: bench/soak_sims.py logs every reading a simulated meter produces before it is
  handed to its MQTT client. A reading the simulator itself fails to deliver counts as lost.
- Serial meters: a meter's register is only a reading once the gateway has taken it, i.e.
  committed it to its outbox; from then on the gateway promises to deliver it. A trigger added to
  the outbox's SQLite file before the gateway first starts copies every committed row, in the
  same transaction, into a ``soak_log`` table: exactly the readings the gateway took. (The gateway
  code is unchanged; the trigger costs one more row insert per reading.) As a cross-check the bus
  simulators log every value they put on the wire; a served value the gateway never committed
  (a poll in progress at a SIGKILL, readings held in memory while the disk was full) is reported
  as "served on the wire, never committed", by likely cause, apart from the loss count.

"Stored" compares by (meter, quantity, ts) and value: a key is stored when InfluxDB holds a value
equal (within 1e-9) to one sent for it. Lost = sent keys not stored (missing or a different
value). Two readings of one meter and quantity in the same second share a key, and InfluxDB keeps
one of them by design; such keys are counted once and reported as collisions. Dead-lettered = the
refused records kept in the collector's dead-letter store (the MQTT meters' faulty payloads, and
anything else the collector refused); outbox peak = the largest outbox depth on the gateway's
/metrics (sampled every 2 s); collector peak RSS = the largest VmHWM of any collector process, in
MiB. The last line is

    soak: sent N, stored N, lost 0, dead-lettered K, outbox peak P, collector peak RSS M MB

Needs root (the tmpfs mount) and the Debian servers. Everything runs on 127.0.0.1, under
var/soak/<time>/ (kept for inspection); every child is stopped by PID on exit, also on Ctrl-C. The
children run from a copy of the sources taken at start (``--no-snapshot`` to run the tree itself),
so a restart after a SIGKILL imports the same code as the first start.

    .venv/bin/python bench/soak.py --minutes 6      # short: 6.8 min of faults, about 7.5 min in all
    .venv/bin/python bench/soak.py                  # full run: 48 min of faults, about 50 min in all
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

# Everything the parent needs is imported now: the tree may be edited while a run goes on.
from campusmon.config import CampusConfig, Meter  # noqa: E402
from campusmon.services import InfluxDB, Mosquitto, ServiceError, free_port, wait_port  # noqa: E402
from campusmon.wire import COLLECTOR_STATUS_TOPIC, wait_for_status  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402

FULL_MINUTES = 48.0
BUSES = 4
DLT_PER_BUS, CJT_PER_BUS, MB_PER_BUS = 24, 4, 4
MQTT_ELEC, MQTT_WATER = 96, 32
GATEWAY_ID = "gw-soak"
COLLECTOR_ID = "campusmon-collector-soak"
BUILDING_TYPES = ["dorm", "classroom", "office", "lab", "library", "canteen", "sports", "admin"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the campus ---------------------------------------------------------------------------------


def serial_meters(bus: int) -> list[dict[str, Any]]:
    """The gateway's meter entries of one bus (ids, protocol, address)."""
    out: list[dict[str, Any]] = []
    for i in range(DLT_PER_BUS):
        out.append({"id": f"s{bus}-e{i:02d}", "protocol": "dlt645", "address": f"{i + 1:012d}"})
    for i in range(CJT_PER_BUS):
        out.append({"id": f"s{bus}-w{i:02d}", "protocol": "cjt188", "address": f"{i + 1:014d}"})
    for i in range(MB_PER_BUS):
        out.append({"id": f"s{bus}-m{i:02d}", "protocol": "modbus-rtu", "address": str(i + 1),
                    "profile": "eastron_sdm630", "kind": "electricity"})  # fmt: skip
    return out


def bus_spec(bus: int, baud: int) -> dict[str, Any]:
    kind = BUILDING_TYPES[bus % len(BUILDING_TYPES)]
    return {
        "baud": baud, "parity": "E", "pace": True, "turnaround_ms": 10, "seed": 100 + bus,
        "tz": "Asia/Shanghai",
        "meters": [
            {"protocol": "dlt645", "address": f"{1:012d}", "count": DLT_PER_BUS, "profile": kind},
            {"protocol": "cjt188", "address": f"{1:014d}", "count": CJT_PER_BUS, "profile": kind},
            {"protocol": "modbus", "unit": 1, "count": MB_PER_BUS, "model": "sdm630", "profile": "lab"},
        ],
    }  # fmt: skip


def campus_config() -> dict[str, Any]:
    """The campus the collector knows: every simulated meter, and the gateway bound to the serial ones."""
    bind = "gateway" in Meter.model_fields  # gateways may only carry the meters bound to them
    buildings = [{"id": f"serial-{b}", "type": BUILDING_TYPES[b % 8], "floor_area_m2": 5000, "occupants": 300}
                 for b in range(BUSES)]  # fmt: skip
    buildings += [{"id": f"mqtt-{b}", "type": BUILDING_TYPES[b], "floor_area_m2": 6000 + 500 * b,
                   "occupants": 200 + 40 * b} for b in range(8)]  # fmt: skip
    meters: list[dict[str, Any]] = []
    for b in range(BUSES):
        for m in serial_meters(b):
            water = m["protocol"] == "cjt188"
            meters.append({"id": m["id"], "building": f"serial-{b}", "kind": "water" if water else "electricity",
                           "category": "02000" if water else "01A00"})  # fmt: skip
            if bind:
                meters[-1]["gateway"] = GATEWAY_ID
    for i in range(MQTT_ELEC):
        meters.append(
            {"id": f"q-e{i:03d}", "building": f"mqtt-{i % 8}", "kind": "electricity", "category": "01A00"}
        )
    for i in range(MQTT_WATER):
        meters.append(
            {"id": f"q-w{i:03d}", "building": f"mqtt-{i % 8}", "kind": "water", "category": "02000"}
        )
    out = {
        "site": {"name": "soak campus", "timezone": "Asia/Shanghai"},
        "buildings": buildings,
        "meters": meters,
    }
    if "gateways" in CampusConfig.model_fields:  # the registry of gateways allowed to publish
        out["gateways"] = [{"id": GATEWAY_ID, "name": "soak gateway (4 simulated buses)"}]
    return out


# -- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    """One child process we started; only ever signalled by its own PID."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    restarts: int = 0
    unexpected_exits: list[int] = field(default_factory=list)
    want_running: bool = False
    peak_hwm_kb: int = 0
    cwd: Path = ROOT

    def start(self) -> None:
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.cwd)  # fmt: skip
        self.want_running = True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_hwm(self) -> int:
        """Peak resident set of the running process (VmHWM), in kB."""
        if not self.alive():
            return 0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kb = int(line.split()[1])
                    self.peak_hwm_kb = max(self.peak_hwm_kb, kb)
                    return kb
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        """SIGKILL, as a power cut would; the caller restarts it."""
        if self.alive():
            assert self.proc is not None
            self.sample_hwm()
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1
        self.want_running = False

    def stop(self, timeout: float = 30.0) -> None:
        self.want_running = False
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_hwm()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM; SIGKILL")
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Event:
    at: float  # seconds from the start of production
    what: str
    target: str = ""


class Soak:
    def __init__(self, args: argparse.Namespace, run_dir: Path | None = None) -> None:
        self.a = args
        self.scale = args.minutes / FULL_MINUTES
        self.rng = random.Random(args.seed)
        self.dir = (run_dir or ROOT / "var" / "soak" / time.strftime("%Y%m%d-%H%M%S")).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.dir / "gateway-disk"
        self.outbox = self.disk / "outbox.sqlite"
        self.ballast = self.disk / "ballast"
        self.mounted = False
        self.ports = {k: free_port() for k in ("mqtt", "influx", "api", "gwmetrics")}
        self.bus_ports = [free_port() for _ in range(BUSES)]
        self.servers: dict[str, Mosquitto | InfluxDB] = {}
        self.children: dict[str, Child] = {}
        self.lock = threading.Lock()
        self.outbox_peak = 0
        self.outbox_depth: int | None = None
        self.phase = "setup"
        self.faults_done: list[str] = []
        self.stop = threading.Event()
        self.t0 = 0.0
        self.kill_times: dict[str, list[float]] = defaultdict(list)
        self.windows: dict[str, list[float]] = {}
        self.code = ROOT
        self.py = str(ROOT / ".venv" / "bin" / "python")
        if not Path(self.py).exists():
            self.py = sys.executable

    # -- setup ----------------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Run every child from a copy of the sources taken now: one code state for the whole run,
        even if the tree is edited meanwhile (a restart after SIGKILL imports the code again)."""
        self.code = self.dir / "code"
        for pkg in ("campusmon", "collectors", "api", "gateway", "firmware_sim", "bench", "deploy"):
            shutil.copytree(ROOT / pkg, self.code / pkg, ignore=shutil.ignore_patterns("__pycache__"))

    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
        e["PYTHONPATH"] = str(self.code)
        e.update({
            "CAMPUSMON_CONFIG": str(self.dir / "campus.yaml"),
            "CAMPUSMON_MQTT__PORT": str(self.ports["mqtt"]),
            "CAMPUSMON_MQTT__CLIENT_ID": COLLECTOR_ID,
            "CAMPUSMON_INFLUXDB__URL": f"http://127.0.0.1:{self.ports['influx']}",
            "CAMPUSMON_API__PORT": str(self.ports["api"]),
            "CAMPUSMON_DATABASE__URL": f"sqlite:///{self.dir}/campus.sqlite",
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        return e

    def write_configs(self) -> None:
        (self.dir / "campus.yaml").write_text(yaml.safe_dump(campus_config(), sort_keys=False))
        buses = []
        for b in range(BUSES):
            (self.dir / f"bus{b}.yaml").write_text(yaml.safe_dump(bus_spec(b, self.a.baud), sort_keys=False))
            buses.append({"id": f"bus{b}", "port": f"socket://127.0.0.1:{self.bus_ports[b]}",
                          "baudrate": self.a.baud, "parity": "E", "meters": serial_meters(b)})  # fmt: skip
        gw = {
            "gateway": {"id": GATEWAY_ID, "timezone": "Asia/Shanghai", "data_dir": str(self.disk),
                        "poll_on_start": True},
            "mqtt": {"host": "127.0.0.1", "port": self.ports["mqtt"], "drain_rate_msgs_s": 50,
                     "status_interval_s": 10, "keepalive": 10},
            "outbox": {"path": str(self.outbox), "max_readings": 2_000_000},
            "health": {"interval_s": 10, "prometheus_port": self.ports["gwmetrics"]},
            "poll_groups": {"default": {"interval_s": self.a.poll_interval}},
            "buses": buses,
        }  # fmt: skip
        (self.dir / "gateway.yaml").write_text(yaml.safe_dump(gw, sort_keys=False))

    def mount_disk(self) -> None:
        self.disk.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.a.disk_mb}m", "tmpfs", str(self.disk)],
                       check=True)  # fmt: skip
        self.mounted = True
        Outbox(self.outbox).close()  # the product's schema, then the ground-truth trigger beside it
        with closing(sqlite3.connect(self.outbox)) as c:
            c.executescript("""
                CREATE TABLE IF NOT EXISTS soak_log (id INTEGER, m INTEGER, q INTEGER, v REAL, ts INTEGER);
                CREATE TRIGGER IF NOT EXISTS soak_log_insert AFTER INSERT ON readings
                BEGIN INSERT INTO soak_log VALUES (NEW.id, NEW.m, NEW.q, NEW.v, NEW.ts); END;
            """)

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        c = Child(name, argv, env or self.env(), self.dir / f"{name}.log", cwd=self.code)
        self.children[name] = c
        c.start()
        return c

    def cm(self, *args: str) -> list[str]:
        return [self.py, "-m", "campusmon.cli", *args]

    def start_all(self) -> None:
        if self.a.snapshot:
            self.snapshot()
        self.write_configs()
        self.mount_disk()
        self.servers["broker"] = Mosquitto(self.dir / "mosquitto", self.ports["mqtt"], anonymous=True)
        self.servers["influx"] = InfluxDB(self.dir / "influxdb", self.ports["influx"])
        for s in self.servers.values():
            s.start()
        log(f"mosquitto :{self.ports['mqtt']}, influxdb :{self.ports['influx']} up; run dir {self.dir}")
        self.child("collector", self.cm("collector"))
        self.wait_collector(60)
        self.child("api", self.cm("api"))
        wait_port(self.ports["api"], 60, self.children["api"].proc)
        for b in range(BUSES):
            self.child(f"bus{b}", [self.py, str(self.code / "bench" / "soak_sims.py"), "serial", "--spec",
                                   str(self.dir / f"bus{b}.yaml"), "--port", str(self.bus_ports[b]),
                                   "--log", str(self.dir / f"served-bus{b}.csv")])  # fmt: skip
        for b in range(BUSES):
            wait_port(self.bus_ports[b], 30, self.children[f"bus{b}"].proc)
        gw_env = {k: v for k, v in self.env().items() if not k.startswith("CAMPUSMON_")}  # a field box
        self.child("gateway", self.cm("gateway", "-c", str(self.dir / "gateway.yaml")), gw_env)
        self.child("mqtt-sim", [self.py, str(self.code / "bench" / "soak_sims.py"), "mqtt", "--config",
                                str(self.dir / "campus.yaml"), "--prefix", "q-", "--port", str(self.ports["mqtt"]),
                                "--interval", str(self.a.mqtt_interval), "--log", str(self.dir / "sent-mqtt.csv"),
                                "--status", str(self.dir / "mqtt-status.json"), "--seed", str(self.a.seed),
                                "--fault-rate", str(self.a.fault_rate)])  # fmt: skip
        log(
            f"collector, api, {BUSES} buses x 32 serial meters, gateway, {MQTT_ELEC + MQTT_WATER} MQTT meters started"
        )

    def wait_collector(self, timeout: float) -> bool:
        topic = COLLECTOR_STATUS_TOPIC.format(client_id=COLLECTOR_ID)
        try:
            return wait_for_status("127.0.0.1", self.ports["mqtt"], topic, "online", timeout)
        except OSError:
            return False

    # -- schedule -------------------------------------------------------------------------------

    def schedule(self) -> tuple[list[Event], float]:
        """Fault windows scaled from the full run, with floors so a short run still fills the outbox disk.

        Full run (scale 1): 2 min steady, broker down 10 min (outbox disk full in its minutes 4-9),
        2 min to recover, InfluxDB down 30 min, 4 min to recover: 48 min.
        """
        s = self.scale
        warm = max(120 * s, 20.0)
        broker = max(600 * s, 110.0)
        # SQLite first fills the slack of its WAL (about 4 MB) before a full disk refuses a commit.
        disk = max(300 * s, 60.0)
        disk_at = warm + broker - disk - max(60 * s, 15.0)
        influx_at = warm + broker + max(120 * s, 20.0)
        influx = max(1800 * s, 60.0)
        end = influx_at + influx + max(240 * s, 30.0)
        ev = [
            Event(warm, "broker_down"),
            Event(disk_at, "disk_full"),
            Event(disk_at + disk, "disk_free"),
            Event(warm + broker, "broker_up"),
            Event(influx_at, "influx_down"),
            Event(influx_at + influx, "influx_up"),
        ]
        spacing = max(20.0, end / (self.a.kills * 2.5))
        for target in ("gateway", "collector", "api"):
            times: list[float] = []
            tries = 0
            while len(times) < self.a.kills:
                t = self.rng.uniform(min(30.0, end * 0.05), end - 20.0)
                tries += 1
                if all(abs(t - x) >= spacing for x in times) or tries > 10000:
                    times.append(t)
            ev += [Event(t, "kill", target) for t in times]
        return sorted(ev, key=lambda e: e.at), end

    def do(self, e: Event) -> None:
        if e.what == "kill":
            c = self.children[e.target]
            self.kill_times[e.target].append(time.time())
            c.kill()
            delay = self.rng.uniform(1.0, 3.0)
            log(f"SIGKILL {e.target} (pid {c.pid}, kill {c.kills}); restart in {delay:.1f} s")
            t = threading.Timer(delay, self.restart, args=(c,))
            t.daemon = True
            t.start()
        elif e.what == "broker_down":
            self.phase = "broker down"
            self.servers["broker"].stop()
            log("FAULT broker down")
        elif e.what == "broker_up":
            self.servers["broker"].start()
            self.phase = "recovering"
            log("FAULT over: broker up")
        elif e.what == "influx_down":
            self.phase = "influxdb down"
            self.servers["influx"].stop()
            log("FAULT influxdb down")
        elif e.what == "influx_up":
            self.servers["influx"].start()
            self.phase = "recovering"
            log("FAULT over: influxdb up")
        elif e.what == "disk_full":
            self.phase = "broker down + outbox disk full"
            n = self.fill_disk()
            log(f"FAULT outbox disk full (ballast {n / 1e6:.1f} MB)")
        elif e.what == "disk_free":
            self.ballast.unlink(missing_ok=True)
            self.phase = "broker down"
            log("FAULT over: outbox disk has room again")
        if e.what != "kill":
            self.windows.setdefault(e.what.split("_")[0], []).append(time.time())  # start, end
        self.faults_done.append(e.what if e.what != "kill" else f"kill {e.target}")

    def restart(self, c: Child) -> None:
        with self.lock:
            if self.stop.is_set() or c.alive():
                return
            c.restarts += 1
            c.start()

    def fill_disk(self) -> int:
        """Append zeros to the ballast until the tmpfs refuses more; returns the bytes added."""
        added = 0
        chunk = b"\0" * (1 << 20)
        try:
            with open(self.ballast, "ab") as fh:
                while True:
                    fh.write(chunk)
                    fh.flush()
                    added += len(chunk)
        except OSError:
            pass
        try:
            with open(self.ballast, "ab") as fh:  # the last partial megabyte
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
                    added += 4096
        except OSError:
            pass
        return added

    # -- watching -------------------------------------------------------------------------------

    def sample(self) -> None:
        col = self.children.get("collector")
        if col is not None:
            col.sample_hwm()
        try:
            r = httpx.get(f"http://127.0.0.1:{self.ports['gwmetrics']}/metrics", timeout=2)
            for line in r.text.splitlines():
                if line.startswith("campusmon_gateway_outbox_readings{"):
                    d = int(float(line.split()[-1]))
                    self.outbox_depth = d
                    self.outbox_peak = max(self.outbox_peak, d)
        except (httpx.HTTPError, ValueError):
            self.outbox_depth = None
        self.save_state()

    def save_state(self) -> None:
        """What only this process knows (peaks, kill and fault times), on disk so ``--report`` can use it."""
        state = {
            "outbox_peak": self.outbox_peak,
            "collector_peak_kb": max((c.peak_hwm_kb for c in self.children.values() if c.name == "collector"),
                                     default=0),
            "kill_times": self.kill_times,
            "windows": self.windows,
            "faults_done": self.faults_done,
            "children": {c.name: {"kills": c.kills, "restarts": c.restarts, "exited": c.unexpected_exits}
                         for c in self.children.values()},
        }  # fmt: skip
        tmp = self.dir / "state.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.dir / "state.json")

    def watch(self) -> None:
        """Sample every 2 s; a child that died on its own is reported and restarted."""
        while not self.stop.wait(2.0):
            self.sample()
            if self.phase == "broker down + outbox disk full":
                self.fill_disk()  # SQLite may free a little (WAL reset): keep the disk full
            with self.lock:
                for c in self.children.values():
                    if c.want_running and c.proc is not None and c.proc.poll() is not None:
                        code = c.proc.returncode
                        c.unexpected_exits.append(code)
                        log(f"!! {c.name} exited on its own (code {code}); see {c.log_path.name}; restarting")
                        c.restarts += 1
                        c.start()

    def count_sent(self) -> tuple[int, int]:
        try:
            with closing(sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=5)) as c:
                serial = int(c.execute("SELECT COUNT(*) FROM soak_log").fetchone()[0])
        except sqlite3.Error:
            serial = -1
        try:
            mqtt = json.loads((self.dir / "mqtt-status.json").read_text())["readings"]
        except (OSError, ValueError, KeyError):
            mqtt = 0
        return serial, mqtt

    def count_stored(self) -> int | None:
        total = 0
        try:
            for meas in ("electricity", "water"):
                r = httpx.get(f"http://127.0.0.1:{self.ports['influx']}/query",
                              params={"db": "campus", "q": f'SELECT count(*) FROM "{meas}"'}, timeout=30)  # fmt: skip
                for res in r.json().get("results", []):
                    for s in res.get("series", []):
                        total += sum(int(x) for x in s["values"][0][1:] if x)
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return total

    def progress(self) -> None:
        serial, mqtt = self.count_sent()
        stored = self.count_stored()
        col = self.children["collector"]
        t = time.monotonic() - self.t0
        log(f"t={t / 60:5.1f} min  [{self.phase}]  sent serial {serial:,} + mqtt {mqtt:,}  stored "
            f"{'(influx down)' if stored is None else f'{stored:,}'}  outbox {self.outbox_depth}  "
            f"collector HWM {col.peak_hwm_kb / 1024:.0f} MB  kills gw/col/api "
            f"{self.children['gateway'].kills}/{col.kills}/{self.children['api'].kills}")  # fmt: skip

    # -- main -----------------------------------------------------------------------------------

    def run(self) -> int:
        events, end = self.schedule()
        kinds = defaultdict(int)
        for e in events:
            kinds[e.target or e.what] += 1
        log(
            f"soak: --minutes {self.a.minutes:g} (scale {self.scale:.3f} of the full run): {end / 60:.1f} min of "
            f"production; {kinds['gateway']} gateway, {kinds['collector']} collector, {kinds['api']} API kills"
        )
        log(
            "schedule: "
            + ", ".join(f"{e.what} at {e.at / 60:.1f}" for e in events if e.what != "kill")
            + " min"
        )
        self.start_all()
        watcher = threading.Thread(target=self.watch, name="watch", daemon=True)
        watcher.start()
        self.t0 = time.monotonic()
        self.phase = "steady"
        every = max(15.0, min(60.0, end / 30))
        next_progress = every
        for e in events:
            while time.monotonic() - self.t0 < e.at:
                left = e.at - (time.monotonic() - self.t0)
                if time.monotonic() - self.t0 >= next_progress:
                    self.progress()
                    next_progress += every
                time.sleep(min(1.0, max(0.0, left)))
            self.do(e)
        while time.monotonic() - self.t0 < end:
            if time.monotonic() - self.t0 >= next_progress:
                self.progress()
                next_progress += every
            time.sleep(1.0)
        return self.finish()

    def finish(self) -> int:
        self.phase = "draining"
        log("production over: stopping the simulators, then draining")
        self.windows["end"] = [time.time()]
        for name in ["mqtt-sim"] + [f"bus{b}" for b in range(BUSES)]:
            self.children[name].stop(120)
        for name in ("gateway", "collector", "api"):  # a restart may still be pending
            c = self.children[name]
            deadline = time.monotonic() + 10
            while not c.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        serial, mqtt = self.count_sent()
        want = serial + mqtt
        deadline = time.monotonic() + max(120.0, 600.0 * self.scale)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.sample()
            stored = self.count_stored() or 0
            if stored != last:
                last, stable_since = stored, time.monotonic()
            if self.outbox_depth == 0 and (stored >= want or time.monotonic() - stable_since > 30):
                break
            time.sleep(3.0)
        log(f"drained: outbox {self.outbox_depth}, InfluxDB holds {last:,} values (sent {want:,})")
        with self.lock:
            self.stop.set()
        for name in ("gateway", "collector", "api"):
            self.children[name].stop(30)
        return self.report()

    def read_serial_sent(self) -> list[tuple[str, str, float, int]]:
        with closing(sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)) as c:
            names = dict(c.execute("SELECT id, name FROM names"))
            rows = c.execute("SELECT m, q, v, ts FROM soak_log").fetchall()
        return [(names[m], names[q], v, ts) for m, q, v, ts in rows]

    def read_mqtt_sent(self) -> list[tuple[str, str, float, int]]:
        out = []
        with open(self.dir / "sent-mqtt.csv") as fh:
            for line in fh:
                p = line.rstrip("\n").split(",")
                if len(p) == 4:
                    out.append((p[0], p[1], float(p[2]), int(p[3])))
        return out

    def read_stored(self, meters: list[tuple[str, str]]) -> dict[tuple[str, str, int], float]:
        out: dict[tuple[str, str, int], float] = {}
        url = f"http://127.0.0.1:{self.ports['influx']}/query"
        with httpx.Client(timeout=120) as h:
            for meter, kind in meters:
                r = h.get(url, params={"db": "campus", "epoch": "s",
                                       "q": f"SELECT * FROM \"{kind}\" WHERE \"meter\" = '{meter}'"})  # fmt: skip
                for res in r.json().get("results", []):
                    for s in res.get("series", []):
                        cols = s["columns"]
                        for row in s["values"]:
                            ts = int(row[0])
                            for c, v in zip(cols[1:], row[1:], strict=True):
                                if c not in ("meter", "building", "category") and v is not None:
                                    out[(meter, c, ts)] = float(v)
        return out

    def served_not_committed(self, committed: list[tuple[str, str, float, int]]) -> dict[str, int]:
        """Values the bus simulators put on the wire that the gateway never committed, by likely cause.

        ``disk full``: served while the outbox disk was full (held in memory, then lost to a SIGKILL or
        dropped as unwritable); ``SIGKILL``: served in the 3 s before a gateway SIGKILL (the poll in
        progress: a meter's readings go to the outbox when its whole poll is done); ``end of run``:
        the polls cut when the bus simulators stopped; ``other``: none of these.
        """
        by_key: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for m, q, v, ts in committed:
            by_key[(m, q)][ts].append(v)
        disk = self.windows.get("disk", [])
        disk_window = (
            (disk[0], (disk[1] if len(disk) > 1 else math.inf) + 5) if disk else (math.inf, math.inf)
        )
        kills = self.kill_times.get("gateway", [])
        sims_stopped = self.windows.get("end", [math.inf])[0]
        out = {"disk full": 0, "SIGKILL": 0, "end of run": 0, "other": 0}
        for b in range(BUSES):
            ids = {e["address"]: e["id"] for e in serial_meters(b)}
            path = self.dir / f"served-bus{b}.csv"
            if not path.exists():
                continue
            with open(path) as fh:
                for line in fh:
                    p = line.rstrip("\n").split(",")
                    if len(p) != 4:
                        continue
                    key = (ids.get(p[0], ""), p[1])
                    if key not in by_key:
                        continue  # a value the gateway does not store (not asked for, or named apart)
                    v, t = float(p[2]), float(p[3])
                    near = by_key[key]
                    if any(math.isclose(v, x, rel_tol=1e-6, abs_tol=1e-6)
                           for ts in range(int(t) - 2, int(t) + 3) for x in near.get(ts, ())):  # fmt: skip
                        continue
                    if disk_window[0] <= t <= disk_window[1]:
                        out["disk full"] += 1
                    elif any(0 <= k - t <= 3.0 for k in kills):
                        out["SIGKILL"] += 1
                    elif t >= sims_stopped - 3.0:
                        out["end of run"] += 1  # the poll cut when the bus simulators stopped
                    else:
                        out["other"] += 1
                        if out["other"] <= 5:
                            when = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
                            log(f"  served, not committed: {key} = {v} at {when}")
        return out

    def outbox_counters(self) -> dict[str, int]:
        """The outbox's own persistent drop counters (dropped_full, dropped_expired, ...)."""
        try:
            with closing(sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)) as c:
                return {k: int(v) for k, v in c.execute("SELECT key, value FROM meta")}
        except sqlite3.Error:
            return {}

    def dead_letters(self) -> dict[str, int]:
        """Refused records in the collector's dead-letter store, by reason.

        Read by the run's own copy of the code in a child (``init_db`` imports the API's table modules
        when called), so it matches the collector's schema even if the tree changed meanwhile.
        """
        code = ("import json, sys; from campusmon.db import init_db; from campusmon.deadletter import DeadLetters; "
                "print(json.dumps(DeadLetters(init_db(sys.argv[1])[1]).counts()))")  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(self.code)}
        r = subprocess.run([self.py, "-c", code, f"sqlite:///{self.dir}/campus.sqlite"], env=env, cwd=self.code,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(
                r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
            )
        return {k: int(v) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}

    def offline_report(self) -> int:
        """Compare a finished run again from its files (outbox copy, logs, InfluxDB data, state.json)."""
        st = json.loads((self.dir / "state.json").read_text())
        self.outbox = self.dir / "outbox-final.sqlite"
        if (self.dir / "code").is_dir():
            self.code = self.dir / "code"
        self.kill_times = defaultdict(list, st.get("kill_times", {}))
        self.windows = st.get("windows", {})
        self.servers["influx"] = InfluxDB(self.dir / "influxdb", self.ports["influx"])
        self.servers["influx"].start()
        return self.report()

    def report(self) -> int:
        if self.children:
            self.save_state()
        st = json.loads((self.dir / "state.json").read_text())
        if st.get("note"):
            log(f"note: {st['note']}")
        serial = self.read_serial_sent()
        mqtt = self.read_mqtt_sent()
        sent: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        for m, q, v, ts in serial + mqtt:
            sent[(m, q, ts)].append(v)
        collisions = sum(1 for vs in sent.values() if len({round(v, 9) for v in vs}) > 1)
        kinds = {m["id"]: m["kind"] for m in campus_config()["meters"]}
        stored = self.read_stored(sorted(kinds.items()))
        self.servers["influx"].stop()
        matched = missing = wrong = 0
        lost_examples: list[str] = []
        for key, vs in sent.items():
            got = stored.get(key)
            if got is not None and any(math.isclose(got, v, rel_tol=1e-9, abs_tol=1e-9) for v in vs):
                matched += 1
                continue
            if got is None:
                missing += 1
            else:
                wrong += 1
            if len(lost_examples) < 10:
                lost_examples.append(f"{key} sent {vs} stored {got}")
        extra = sum(1 for k in stored if k not in sent)
        not_committed = self.served_not_committed(serial)
        try:
            reasons = self.dead_letters()
            dead = sum(reasons.values())
        except Exception as e:  # report what was measured even if the store cannot be read
            log(f"cannot read the dead-letter store: {e!r}")
            reasons, dead = {}, -1
        try:
            status = json.loads((self.dir / "mqtt-status.json").read_text())
        except (OSError, ValueError):
            status = {}
        faults_sent = status.get("faults_sent", {})
        lost = missing + wrong
        peak_mb = st["collector_peak_kb"] / 1024
        print()
        log(f"serial readings committed by the gateway {len(serial):,}; MQTT readings produced {len(mqtt):,}")
        log(f"distinct (meter, quantity, ts) keys {len(sent):,}; same-second collisions {collisions}")
        log(f"lost: {missing} missing, {wrong} with another value; stored values not sent: {extra}")
        for ex in lost_examples:
            log(f"  lost e.g. {ex}")
        log(
            f"serial values served on the wire, never committed by the gateway: {sum(not_committed.values()):,} "
            f"{not_committed}; outbox counters {self.outbox_counters()}"
        )
        log(f"faulty payloads sent {sum(faults_sent.values())} {faults_sent}; dead letters {dead} {reasons}")
        log(f"MQTT reading sets dropped from a full meter memory: {status.get('dropped_sets', 0)}")
        for name, c in st.get("children", {}).items():
            if c["kills"] or c["exited"]:
                log(
                    f"{name}: {c['kills']} SIGKILLs, {c['restarts']} restarts, exited on its own: {c['exited']}"
                )
        log(f"faults injected: {', '.join(f for f in st.get('faults_done', []) if not f.startswith('kill'))}")
        print(f"soak: sent {len(sent)}, stored {matched}, lost {lost}, dead-lettered {dead}, "
              f"outbox peak {st['outbox_peak']}, collector peak RSS {peak_mb:.0f} MB", flush=True)  # fmt: skip
        return 0 if lost == 0 else 1

    def cleanup(self) -> None:
        self.stop.set()
        with self.lock:
            for c in self.children.values():
                try:
                    c.stop(20)
                except (OSError, subprocess.SubprocessError) as e:
                    log(f"stopping {c.name}: {e}")
        for s in self.servers.values():
            try:
                s.stop()
            except (OSError, ServiceError) as e:
                log(f"stopping {s.name}: {e}")
        if self.mounted:
            if not any(c.alive() for c in self.children.values()) and self.outbox.exists():
                shutil.copy2(self.outbox, self.dir / "outbox-final.sqlite")  # the tmpfs goes with the umount
            for _ in range(10):
                r = subprocess.run(["umount", str(self.disk)], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(1.0)
            else:
                log(f"umount {self.disk}: {r.stderr.strip()}; detaching it lazily")
                subprocess.run(["umount", "-l", str(self.disk)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=FULL_MINUTES,
                    help=f"length of the fault schedule; {FULL_MINUTES:g} is the full run, less scales every "
                         "fault down (6 finishes in under 10 minutes)")  # fmt: skip
    ap.add_argument("--kills", type=int, default=6, help="SIGKILLs of each of gateway, collector, API (>= 5)")
    ap.add_argument("--poll-interval", type=int, default=15, help="gateway poll interval, s")
    ap.add_argument("--mqtt-interval", type=int, default=10, help="MQTT meter publishing interval, s")
    ap.add_argument("--baud", type=int, default=19200, help="simulated RS-485 line speed (paced)")
    ap.add_argument(
        "--fault-rate", type=float, default=0.002, help="share of MQTT messages with a faulty twin"
    )
    ap.add_argument("--disk-mb", type=int, default=64, help="size of the gateway's outbox tmpfs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report", type=Path, metavar="RUN_DIR",
                    help="compare a finished run again from its directory (starts InfluxDB on its data)")  # fmt: skip
    ap.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                    help="run the children from the tree itself, not from a copy taken at start")  # fmt: skip
    a = ap.parse_args()
    if a.kills < 5:
        ap.error("--kills must be at least 5")
    if os.geteuid() != 0:
        ap.error("needs root: the outbox disk is a tmpfs mounted for the run")
    soak = Soak(a, run_dir=a.report)

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 2
    try:
        code = soak.offline_report() if a.report else soak.run()
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
    finally:
        soak.cleanup()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
