"""Bus utilisation: 32 DL/T 645 meters on one 2400 baud 8E1 bus, swept by the bus engine.

The simulated bus paces every byte at 11 bits (start, 8 data, even parity, stop) / 2400 baud in
both directions and answers after the meter turnaround (20 ms, the DL/T 645 minimum Td). It is
served on TCP like an RS-485 serial server, so parity is a number both sides compute with rather
than a termios setting (ptys cannot keep parity, docs/references.md#pty-parity).

Baseline, measured in the same run: the wire-time minimum, i.e. the bytes the simulator actually
saw on the line (requests with their FE preamble, replies) x 11 bits / 2400. Utilisation = that
minimum / measured sweep time; goal >= 0.85. The second ratio adds the meters' turnaround to the
minimum, showing what the engine itself costs.

    .venv/bin/python bench/bus.py [--meters 32] [--baud 2400] [--turnaround 0.02]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.serial.bus import SimBus
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from gateway.bus import BusEngine, make_slots
from gateway.config import BusEntry
from gateway.protocols.drivers import make_driver


def sweep(n: int, baud: int, turnaround: float, dis: list[str] | None, sweeps: int) -> dict[str, object]:
    addrs = [f"{300 + i:012d}" for i in range(n)]
    sim = SimBus(
        [Dlt645Meter(a) for a in addrs], baud=baud, parity="E", pace=True, turnaround_s=turnaround
    ).start()
    url = sim.serve_tcp()
    options = {"dis": dis} if dis else {}
    entry = BusEntry.model_validate({
        "id": "bench", "port": url, "baudrate": baud, "parity": "E", "stopbits": 1,
        "meters": [{"id": f"e{i:03d}", "protocol": "dlt645", "address": a, "options": options}
                   for i, a in enumerate(addrs)],
    })  # fmt: skip
    readings = []
    eng = BusEngine(entry, make_slots(entry, make_driver), readings.extend)
    eng.start()
    try:
        eng.submit()  # warm-up: opens the port, first connection
        eng.wait_idle(600)
        sim.transactions.clear()
        readings.clear()
        times = []
        for _ in range(sweeps):
            t0 = time.perf_counter()
            eng.submit()
            assert eng.wait_idle(1200)
            times.append(time.perf_counter() - t0)
        txs = list(sim.transactions)
        health = eng.health()
    finally:
        eng.stop()
        sim.stop()
    char = 11 / baud
    wire_bytes = sum(t.wire_in + t.wire_out for t in txs)
    wire_min = wire_bytes * char / sweeps
    with_td = wire_min + sum(1 for t in txs if t.replies) * turnaround / sweeps
    sweep_s = sum(times) / sweeps
    return {
        "meters": n,
        "transactions_per_sweep": len(txs) // sweeps,
        "readings_per_sweep": len(readings) // sweeps,
        "bytes_per_sweep": wire_bytes // sweeps,
        "sweep_s": round(sweep_s, 3),
        "wire_min_s": round(wire_min, 3),
        "utilisation": round(wire_min / sweep_s, 3),
        "wire_plus_turnaround_s": round(with_td, 3),
        "utilisation_vs_wire_plus_turnaround": round(with_td / sweep_s, 3),
        "success_rate": health["success_rate"],
        "rtt_ms": health["rtt_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--baud", type=int, default=2400)
    ap.add_argument("--turnaround", type=float, default=0.02, help="meter response delay Td (s)")
    ap.add_argument("--sweeps", type=int, default=2)
    args = ap.parse_args()
    results = {
        # The common 15-minute read: total active energy only, one frame each way per meter.
        "energy_only": sweep(args.meters, args.baud, args.turnaround, ["00010000"], args.sweeps),
        # The driver's default set: energy, V/I/P blocks, power factor, frequency (6 frames per meter).
        "default_dis": sweep(args.meters, args.baud, args.turnaround, None, 1),
    }
    print(
        json.dumps(
            {"baud": args.baud, "bits_per_byte": 11, "turnaround_s": args.turnaround, **results}, indent=2
        )
    )
    ok = all(r["utilisation"] >= 0.85 for r in results.values())
    print(f"goal utilisation >= 0.85: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
