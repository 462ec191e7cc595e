"""CPU cost of the total, hostile-input-proof parser, against ``json.loads`` of the same bytes.

The parser does all checks a reading must pass (ids, topic binding, units, plausible ranges,
duplicates, timestamps) on top of decoding JSON; its baseline is the bare C JSON decoder on the
same packs, measured in the same run and interleaved. The collector's end-to-end rate
(bench/ingest.py) is printed beside it so the parser's share of a core is visible.

Run: .venv/bin/python bench/parse.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campusmon.reading import Reading
from campusmon.wire import MeterRule, Rules, encode_senml, parse_payload

N_PACKS = 20_000
METERS = [f"e{i:03d}" for i in range(50)]


def main() -> None:
    now = int(time.time())
    packs = [
        encode_senml(
            [
                Reading(METERS[i % 50], "energy_kwh", 1000.0 + i, now - i),
                Reading(METERS[i % 50], "power_w", 500.0 + i, now - i),
            ]
        )
        for i in range(N_PACKS)
    ]
    rules = Rules(
        meters={m: MeterRule("electricity", 300_000.0, gateway="gw") for m in METERS},
        strict=True,
        gateways=frozenset({"gw"}),
    )
    topic = "campus/v1/gateways/gw/readings"
    base, full = [], []
    for _ in range(5):  # interleaved, so machine load hits both alike
        t = time.perf_counter()
        for p in packs:
            json.loads(p)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        for p in packs:
            res = parse_payload(p, topic, rules, now)
        full.append(time.perf_counter() - t)
        assert len(res.readings) == 2 and not res.rejections
    n = 2 * N_PACKS
    b, f = statistics.median(base), statistics.median(full)
    print(f"json.loads alone:  {n / b:>10,.0f} readings/s")
    print(f"parse_payload:     {n / f:>10,.0f} readings/s  ({f / b:.1f}x the bare decoder's time)")
    print("collector end to end (bench/ingest.py) is about 7,000 readings/s: the parser's share of a core")
    print(f"at that rate is {7000 / (n / f):.0%}")


if __name__ == "__main__":
    main()
