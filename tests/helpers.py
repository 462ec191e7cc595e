"""Helpers for tests against real servers: polling, reading back what InfluxDB holds, child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from campusmon.config import CampusConfig
from campusmon.influx import InfluxStore
from campusmon.reading import Reading
from tests.conftest import ROOT


def wait_until(
    pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def stored(
    store: InfluxStore, quantities: tuple[str, ...] = ("energy_kwh", "power_w", "volume_m3", "flow_m3h")
) -> dict[tuple[str, str, int], float]:
    """Every stored point of the given quantities, keyed like Reading.key."""
    out: dict[tuple[str, str, int], float] = {}
    for q in quantities:
        m = "water" if q in ("volume_m3", "flow_m3h") else "electricity"
        for s in store.query(f'SELECT "{q}" FROM "{m}" GROUP BY "meter"'):
            meter = s["tags"]["meter"]
            for ts, v in s["values"]:
                if v is not None:
                    out[(meter, q, ts)] = v
    return out


def count(store: InfluxStore) -> int:
    total = 0
    for q, m in (
        ("energy_kwh", "electricity"),
        ("power_w", "electricity"),
        ("volume_m3", "water"),
        ("flow_m3h", "water"),
    ):
        for s in store.query(f'SELECT count("{q}") FROM "{m}"'):
            total += int(s["values"][0][1])
    return total


def expected(readings: list[Reading]) -> dict[tuple[str, str, int], float]:
    return {r.key: r.value for r in readings}


def write_config(cfg: CampusConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def spawn_cli(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A campusmon process of our own (stopped by the test, by PID)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT)
    e.update(env or {})
    fh = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "campusmon.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=e, cwd=ROOT
    )


def campus(n_elec: int, n_water: int) -> dict[str, Any]:
    """A campus of a few buildings with the given number of meters."""
    types = ["dorm", "classroom", "canteen", "lab", "library"]
    buildings = [
        {"id": f"b{i}", "type": t, "floor_area_m2": 5000 + 1000 * i, "occupants": 300 if t == "dorm" else 0}
        for i, t in enumerate(types)
    ]
    meters = [
        {"id": f"e{i:03d}", "building": f"b{i % 5}", "kind": "electricity", "category": "01A00"}
        for i in range(n_elec)
    ]
    meters += [
        {"id": f"w{i:03d}", "building": f"b{i % 5}", "kind": "water", "category": "02000"}
        for i in range(n_water)
    ]
    return {"buildings": buildings, "meters": meters}
