"""A live campus and a real browser for the console tests.

The campus runs the real collector (instant rules on) and the API under uvicorn against the session's
Mosquitto and InfluxDB, with two days of simulated history; the browser is Debian's chromium driven by
Playwright (Playwright cannot download its own browser here).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from campusmon.config import parse_config
from firmware_sim.live_campus import LiveCampus

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "console-test-pw-1"
USERS = {"op-li": "operator", "viewer-wang": "viewer", "admin-zhao": "admin"}
ROOM_METER = "e-dorm-1-r101"

CAMPUS: dict[str, Any] = {
    "site": {"name": "测试大学", "timezone": "Asia/Shanghai"},
    "buildings": [
        {"id": "dorm-1", "name": "学生宿舍1号楼", "type": "dorm", "floor_area_m2": 6000, "occupants": 480},
        {"id": "teach-1", "name": "第一教学楼", "type": "classroom", "floor_area_m2": 9000, "occupants": 0},
        {"id": "library", "name": "图书馆", "type": "library", "floor_area_m2": 8000, "occupants": 0},
    ],
    "meters": [
        {"id": "e-dorm-1-main", "building": "dorm-1", "kind": "electricity", "category": "01A00"},
        {"id": "w-dorm-1", "building": "dorm-1", "kind": "water", "category": "02000"},
        *(
            {"id": f"e-dorm-1-r{r}", "building": "dorm-1", "kind": "electricity", "room": f"dorm-1-{r}",
             "interval_s": 10, "parent": "e-dorm-1-main"}
            for r in (101, 102)
        ),
        {"id": "e-teach-1", "building": "teach-1", "kind": "electricity", "category": "01B00"},
        {"id": "w-teach-1", "building": "teach-1", "kind": "water", "category": "02000"},
        {"id": "e-library", "building": "library", "kind": "electricity", "category": "01A00"},
    ],
    "targets": [
        {"name": "dorm-1 electricity quota", "scope": "building", "scope_id": "dorm-1", "type": "quota",
         "period": "month", "value": 40000, "kind": "electricity"},
    ],
    "alerts": {
        "rules": {"data.offline": {"enabled": False}, "data.completeness": {"enabled": False}},
        "mqtt": {"enabled": False},
    },
}  # fmt: skip
DATA_NAMES = [b["name"] for b in CAMPUS["buildings"]] + [CAMPUS["site"]["name"]]


def campus_config(tmp: Path, mqtt_port: int, influx_port: int) -> Any:
    data = {
        **CAMPUS,
        "database": {"url": f"sqlite:///{tmp}/console.sqlite"},
        "mqtt": {"port": mqtt_port, "client_id": "console-" + uuid.uuid4().hex[:8], "flush_interval_s": 0.05},
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}", "database": "console_" + uuid.uuid4().hex[:8]},
    }
    return parse_config(data, "console-test", environ={})


@pytest.fixture(scope="module")
def live_campus(
    mosquitto: Any, influxdb: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveCampus]:
    cfg = campus_config(tmp_path_factory.mktemp("console"), mosquitto.port, influxdb.port)
    campus = LiveCampus(cfg)
    try:
        campus.start(history_s=2 * 86400)
        for name, role in USERS.items():
            campus.add_user(name, PASSWORD, role)
        yield campus
    finally:
        campus.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
