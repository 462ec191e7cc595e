"""Gateway footprint: resident memory with 256 configured meters, CPU seconds per 1,000 meter reads.

The gateway runs as its own process (``python -m gateway.service``) against 8 simulated buses of
32 DL/T 645 meters each (served on TCP, unpaced so the run is CPU-bound, default data identifiers:
6 frames and 13 readings per meter read), a real Mosquitto, and its default outbox (WAL, FULL).

Baselines measured in the same run:
- memory: a Python process that imports the same modules and does nothing (the interpreter and
  library floor); the gateway's RSS is reported beside it and as a ratio.
- CPU: the codec alone (building the 6 requests and decoding the 6 replies of a meter read, in
  this process) per 1,000 reads; the gateway's CPU per 1,000 reads is reported as a ratio to it,
  i.e. what the bus engine, outbox, scheduler and MQTT cost on top of the protocol work.

    .venv/bin/python bench/gateway_mem.py [--seconds 60] [--interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from campusmon.services import Mosquitto, free_port  # noqa: E402
from campusmon.wire import GATEWAY_TOPIC, Rules, parse_payload  # noqa: E402
from firmware_sim.serial.bus import SimBus  # noqa: E402
from firmware_sim.serial.dlt645_meter import Dlt645Meter  # noqa: E402
from gateway.protocols.drivers import make_driver  # noqa: E402

BUSES, PER_BUS = 8, 32
TICK = os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def baseline_rss_kb() -> int:
    code = ("import gateway.service, gateway.protocols.drivers, gateway.health, paho.mqtt.client, serial, sqlite3, "
            "apscheduler.schedulers.background, time; print('ready', flush=True); time.sleep(30)")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        return proc_rss_kb(p.pid)["VmRSS"]
    finally:
        p.kill()
        p.wait()


def codec_cpu_per_1000(addresses: list[str]) -> float:
    """Requests built and replies decoded for 1,000 meter reads, nothing else."""
    meter = Dlt645Meter(addresses[0])
    driver = make_driver("dlt645", "e", addresses[0], {})
    pairs = []
    for req in driver.poll():
        reply = asyncio.run(meter.respond(req.frame[4:]))  # the simulator takes the frame without preamble
        assert reply is not None
        pairs.append((req, reply))
    t0 = time.process_time()
    for _ in range(1000):
        driver.poll()
        for req, reply in pairs:
            driver.reply_length(reply)
            driver.decode(req, reply)
    return time.process_time() - t0


class Counter:
    def __init__(self, port: int, gateway_id: str) -> None:
        self.readings = 0
        self.reads: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.topic = GATEWAY_TOPIC.format(gateway_id=gateway_id)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.c.on_message = self._msg
        self.c.on_connect = lambda c, *_: c.subscribe(self.topic, 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _msg(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        res = parse_payload(m.payload, m.topic, Rules())
        with self.lock:
            self.readings += len(res.readings)
            self.reads.update((r.meter, r.ts) for r in res.readings)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return len(self.reads), self.readings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", type=int, default=5, help="poll interval (s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gwbench-"))
    mq = Mosquitto(work / "mq", free_port(), anonymous=True).start()
    sims = []
    buses = []
    for b in range(BUSES):
        addrs = [f"{(b + 1) * 1000 + i:012d}" for i in range(PER_BUS)]
        sim = SimBus([Dlt645Meter(a) for a in addrs], baud=9600, pace=False).start()
        sims.append(sim)
        buses.append({"id": f"bus{b}", "port": sim.serve_tcp(), "baudrate": 9600, "parity": "N",
                      "meters": [{"id": f"e{b}-{i:02d}", "protocol": "dlt645", "address": a}
                                 for i, a in enumerate(addrs)]})  # fmt: skip
    cfg = {"gateway": {"id": "gw-bench", "data_dir": str(work / "gw"), "poll_on_start": False},
           "mqtt": {"port": mq.port, "pack_max_readings": 200, "drain_rate_msgs_s": 1000, "max_inflight": 50},
           "poll_groups": {"default": {"interval_s": args.interval}}, "buses": buses}  # fmt: skip
    cfg_path = work / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    counter = Counter(mq.port, "gw-bench")
    log = open(work / "gateway.log", "wb")
    gw = subprocess.Popen([sys.executable, "-m", "gateway.service", "--config", str(cfg_path)], cwd=ROOT,
                          stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        while counter.snapshot()[0] < BUSES * PER_BUS:  # the first full sweep: warm-up
            time.sleep(0.2)
            assert gw.poll() is None, (work / "gateway.log").read_text()[-2000:]
        reads0, readings0 = counter.snapshot()
        cpu0 = proc_cpu_s(gw.pid)
        time.sleep(args.seconds)
        reads1, readings1 = counter.snapshot()
        cpu1 = proc_cpu_s(gw.pid)
        rss = proc_rss_kb(gw.pid)
    finally:
        gw.terminate()
        gw.wait(30)
        log.close()
        counter.c.loop_stop()
        for sim in sims:
            sim.stop()
        mq.stop()
        shutil.rmtree(work, ignore_errors=True)
    base_kb = baseline_rss_kb()
    codec_s = codec_cpu_per_1000([f"{1000:012d}"])
    reads = reads1 - reads0
    cpu_per_1000 = (cpu1 - cpu0) / reads * 1000
    print(json.dumps({
        "meters_configured": BUSES * PER_BUS,
        "window_s": args.seconds,
        "meter_reads": reads,
        "readings": readings1 - readings0,
        "gateway_rss_mb": round(rss["VmRSS"] / 1024, 1),
        "gateway_peak_rss_mb": round(rss["VmHWM"] / 1024, 1),
        "baseline_import_rss_mb": round(base_kb / 1024, 1),
        "rss_ratio_to_baseline": round(rss["VmRSS"] / base_kb, 2),
        "gateway_cpu_s_per_1000_reads": round(cpu_per_1000, 3),
        "codec_cpu_s_per_1000_reads": round(codec_s, 3),
        "cpu_ratio_to_codec": round(cpu_per_1000 / codec_s, 1),
    }, indent=2))  # fmt: skip
    print(f"goal RSS <= 60 MB: {'met' if rss['VmRSS'] / 1024 <= 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
