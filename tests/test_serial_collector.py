"""The direct serial collector: simulated buses straight into a real InfluxDB, through an outage."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from campusmon.services import free_port
from collectors.serial_collector import SerialCollector
from firmware_sim.serial.clock import SimClock
from gateway.config import parse_gateway_config
from tests.conftest import ROOT
from tests.gateway_sim import Tee, assert_registers, fleet, gateway_config, influx_readings, start_sim
from tests.helpers import wait_until


def test_readings_reach_influxdb_with_their_tags_and_survive_an_influxdb_outage(
    server_factory: Any, db_name: str, tmp_path: Path
) -> None:
    specs = fleet()
    influx = server_factory("influxdb")
    sim, url = start_sim(specs, "pty", SimClock(frozen=True))
    metrics_port = free_port()
    cfg = gateway_config(tmp_path, url, specs, gateway={"poll_on_start": False},
                         health={"prometheus_port": metrics_port},
                         poll_groups={"default": {"interval_s": 2}},
                         influxdb={"url": f"http://127.0.0.1:{influx.port}", "database": db_name})  # fmt: skip
    sc = SerialCollector(cfg)
    tee = Tee(sc.outbox.put)
    sc.buses[0].sink = tee
    try:
        sc.start()
        wait_until(lambda: {m for m, _q, _t in influx_readings(sc.store)} >= {s.id for s in specs}, 30, 0.3,
                   "every meter in InfluxDB")  # fmt: skip
        series = sc.store.query(
            'SELECT last("volume_m3") FROM "water" GROUP BY "meter", "building", "category"'
        )
        assert {(s["tags"]["meter"], s["tags"]["building"], s["tags"]["category"]) for s in series} == {
            ("w-gw-1", "dorm-9", "02000"),
            ("w-gw-2", "dorm-9", "02000"),
            ("w-gw-3", "dorm-9", "02000"),
        }

        influx.stop()
        sweeps = sc.buses[0].health()["sweeps"]
        wait_until(lambda: not sc.writer.health()["influxdb_up"], 60, 0.1, "the writer to see InfluxDB down")
        wait_until(
            lambda: sc.buses[0].health()["sweeps"] >= sweeps + 3, 60, 0.1, "three polls, nowhere to write"
        )
        assert sc.outbox.depth > 0 and not sc.writer.health()["influxdb_up"]
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        )
        line = f'campusmon_gateway_outbox_readings{{gateway="{cfg.gateway.id}"}} '
        assert float(metrics.split(line, 1)[1].split()[0]) > 0  # the backlog shows on /metrics
        influx.start()
        wait_until(
            lambda: sc.writer.health()["influxdb_up"] and sc.outbox.depth == 0, 60, 0.3, "the outbox to drain"
        )
        sc.stop_reading()
        sc.outbox.flush()
        wait_until(lambda: sc.outbox.depth == 0, 30, 0.2, "the last readings written")
        want = {r.key: r.value for r in tee.snapshot()}
        assert len(want) == len(tee.snapshot())
        got = influx_readings(sc.store)
    finally:
        sc.stop()
        sim.stop()
    assert got == want  # exactly the readings taken, each once, none lost to the outage
    assert_registers(tee.snapshot(), sim, specs)


def test_configuration_errors_exit_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("gateway: {id: gw-1}\nbuses:\n  - {id: b1, port: /dev/null, meters: [{id: m1, protocol: dlt645, "
                   "address: '12X'}]}\n")  # fmt: skip
    for module in ("collectors.serial_collector", "gateway.service"):
        res = subprocess.run([sys.executable, "-m", module, "--config", str(bad)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert f"{bad}: buses[0].meters[0] (m1):" in res.stderr and "Traceback" not in res.stderr


def test_campus_view_of_a_gateway_config_carries_tags_and_kinds() -> None:
    cfg = parse_gateway_config({"gateway": {"id": "g"}, "buses": [{"id": "b", "port": "/dev/null", "meters": [
        {"id": "e1", "protocol": "dlt645", "address": "1", "building": "lib", "category": "01B00"},
        {"id": "w1", "protocol": "modbus-rtu", "address": "3", "profile": "kaifeng_xintai_water", "category": "02000"},
        {"id": "x1", "protocol": "cjt188", "address": "2"}]}]}, environ={})  # fmt: skip
    campus = cfg.campus_config()
    assert [(m.id, m.building, m.kind.value, m.category) for m in campus.meters] == [
        ("e1", "lib", "electricity", "01B00"),
        ("w1", "unassigned", "water", "02000"),
        ("x1", "unassigned", "water", ""),
    ]
