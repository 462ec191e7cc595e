"""Simulator processes for bench/soak.py that write down every reading they produce.

The soak needs ground truth that does not come from the system under test, so each simulator
logs what it hands out, as it hands it out:

    serial  one simulated RS-485 bus (firmware_sim.serial) served on loopback TCP; every value a
            meter puts into a reply is logged as ``address,quantity,value,sim_time``.
    mqtt    the campus's MQTT meters (firmware_sim.mqtt_meters.MqttFleet); every reading is logged as
            ``meter,quantity,value,ts`` *before* it is given to the MQTT client, so a reading the
            simulator loses (it crashed, or its client dropped it) counts as produced and lost.

Both run until SIGTERM, flush their log and exit 0. They use the product's simulators unchanged;
only the logging is added here.

    .venv/bin/python bench/soak_sims.py serial --spec bus.yaml --port 5020 --log served.csv
    .venv/bin/python bench/soak_sims.py mqtt --config campus.yaml --prefix q- --port 1883 --log sent.csv
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class LineLog:
    """An append-only CSV written from several threads, flushed every second so a crash loses little."""

    def __init__(self, path: Path) -> None:
        self.fh: TextIO = open(path, "a", buffering=1 << 16)
        self.lock = threading.Lock()
        self.lines = 0

    def write(self, rows: list[str]) -> None:
        with self.lock:
            self.fh.write("".join(rows))
            self.lines += len(rows)

    def flush(self) -> None:
        with self.lock:
            self.fh.flush()

    def close(self) -> None:
        with self.lock:
            self.fh.flush()
            self.fh.close()


def _until_sigterm(stop: threading.Event, log: LineLog) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        log.flush()


def run_serial(spec: Path, port: int, log_path: Path) -> None:
    from firmware_sim.serial import load_bus
    from firmware_sim.serial.spec import serve

    bus = load_bus(spec)
    log = LineLog(log_path)

    def hook(meter: Any) -> None:
        original = meter._served

        def served(values: dict[str, float]) -> None:
            original(values)
            t = meter.clock.now()
            log.write([f"{meter.address},{q},{float(v)!r},{t:.3f}\n" for q, v in values.items()])

        meter._served = served

    for m in bus.meters:
        hook(m)
    serve(bus, tcp=f"127.0.0.1:{port}")
    print(f"serving {len(bus.meters)} meters on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    try:
        _until_sigterm(stop, log)
    finally:
        bus.stop()
        log.close()


def run_mqtt(config: Path, prefix: str, port: int, interval: int, log_path: Path, seed: int,
             fault_rate: float, flat_share: float, status_path: Path) -> None:  # fmt: skip
    from campusmon.config import load_config
    from firmware_sim.mqtt_meters import MqttFleet
    from firmware_sim.profiles import sim_meters_for

    cfg = load_config(config, {})
    meters = [m for m in sim_meters_for(cfg, seed) if m.id.startswith(prefix)]
    log = LineLog(log_path)

    def hook(m: Any) -> None:
        original = m.readings

        def readings(ts: int) -> list[Any]:
            rs = original(ts)
            log.write([f"{r.meter},{r.quantity},{float(r.value)!r},{int(r.ts)}\n" for r in rs])
            return rs

        m.readings = readings

    for m in meters:
        hook(m)
    fleet = MqttFleet(meters, "127.0.0.1", port, interval, seed, flat_share, fault_rate,
                      client_id=f"campusmon-soak-sim-{seed}")  # fmt: skip
    original_step = fleet.step

    def step(*args: Any, **kwargs: Any) -> int:
        n = original_step(*args, **kwargs)
        log.flush()
        dropped = getattr(fleet, "dropped", {})
        status = {"readings": log.lines, "faults_sent": fleet.faults_sent,
                  "dropped_sets": sum(dropped.values()) if isinstance(dropped, dict) else 0}  # fmt: skip
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(status_path)
        return n

    fleet.step = step  # type: ignore[method-assign]
    stop = threading.Event()
    worker = threading.Thread(target=fleet.follow, args=(stop,), name="fleet", daemon=True)
    worker.start()
    print(f"{len(meters)} MQTT meters publishing every {interval} s to 127.0.0.1:{port}", flush=True)
    try:
        _until_sigterm(stop, log)
        worker.join(120)
        if fleet.close(120) is False:
            print("some readings were still unsent after 120 s", flush=True)
    finally:
        log.close()
    if worker.is_alive():
        raise SystemExit("the fleet did not finish its step within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serial")
    s.add_argument("--spec", type=Path, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--log", type=Path, required=True)
    m = sub.add_parser("mqtt")
    m.add_argument("--config", type=Path, required=True)
    m.add_argument("--prefix", default="q-")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--interval", type=int, default=10)
    m.add_argument("--log", type=Path, required=True)
    m.add_argument("--status", type=Path, required=True)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--fault-rate", type=float, default=0.002)
    m.add_argument("--flat-share", type=float, default=0.2)
    a = ap.parse_args()
    if a.mode == "serial":
        run_serial(a.spec, a.port, a.log)
    else:
        run_mqtt(a.config, a.prefix, a.port, a.interval, a.log, a.seed, a.fault_rate, a.flat_share, a.status)


if __name__ == "__main__":
    main()
