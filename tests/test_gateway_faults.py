"""What the outbox is for: broker outages, a killed gateway, a full disk budget. Real Mosquitto and InfluxDB."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from campusmon.influx import open_store
from campusmon.reading import Reading
from campusmon.services import Mosquitto, free_port
from collectors.mqtt_collector import MqttCollector
from gateway.service import Gateway
from tests.conftest import ROOT
from tests.gateway_sim import (
    LossyLink,
    Subscriber,
    Tee,
    campus_data,
    dlt645_fleet,
    fleet,
    gateway_config,
    influx_readings,
    outbox_rows,
    start_sim,
)
from tests.helpers import wait_until


def _tee(gw: Gateway) -> Tee:
    tee = Tee(gw.outbox.put)
    for bus in gw.buses:
        bus.sink = tee
    return tee


def _expected(readings: list[Reading]) -> dict[tuple[str, str, int], float]:
    out = {r.key: r.value for r in readings}
    assert len(out) == len(readings), (
        "a meter was read twice in one second; the test cannot tell readings apart"
    )
    return out


@pytest.mark.slow
def test_two_minute_broker_outage_loses_nothing_and_drains_at_the_set_rate(
    server_factory: Any, influxdb: Any, make_config: Any, tmp_path: Path
) -> None:
    specs = [*dlt645_fleet(3), fleet()[2]]
    mq = server_factory("mosquitto")
    campus = make_config(mq, influxdb, data=campus_data(specs))
    collector = MqttCollector(campus).start()
    collector.store.ensure_database()
    sim, url = start_sim(specs, "tcp")
    cfg = gateway_config(tmp_path, url, specs, mq.port, gateway={"poll_on_start": False},
                         poll_groups={"default": {"interval_s": 2}},
                         mqtt={"drain_rate_msgs_s": 10, "pack_max_readings": 20})  # fmt: skip
    sub = Subscriber(mq.port, cfg.gateway.id, client_id="t-sub-" + cfg.gateway.id, clean=False)
    gw = Gateway(cfg)
    tee = _tee(gw)
    try:
        gw.start()
        wait_until(lambda: len(sub.readings) >= 50, 20, 0.2, "readings flowing before the outage")
        mq.stop()
        time.sleep(120)
        backlog = gw.outbox.depth
        assert backlog >= 500, f"only {backlog} readings queued during the outage"
        sent_before = gw.publisher.c.packs_sent
        mq.start()
        t_back = time.monotonic()
        wait_until(lambda: gw.outbox.depth < 100, 90, 0.1, "the backlog to drain")
        drained_in = time.monotonic() - t_back
        packs = gw.publisher.c.packs_sent - sent_before
        assert packs >= 50  # enough to see the rate, not the one-second burst
        assert packs <= 10 * drained_in + 11, f"{packs} packs in {drained_in:.1f} s exceeds 10 packs/s"
        gw.stop_reading()
        gw.outbox.flush()
        wait_until(lambda: gw.outbox.depth == 0, 30, 0.1, "the outbox to empty")
    finally:
        gw.stop()
        sim.stop()
    want = _expected(tee.snapshot())
    assert len(want) >= backlog
    store = open_store(campus)
    try:
        wait_until(lambda: len(influx_readings(store)) >= len(want), 90, 0.5, "every reading in InfluxDB")
        time.sleep(1)
        got = influx_readings(store)
    finally:
        store.close()
        collector.stop()
    assert got == want  # every reading once, with the value and the time it was read
    wait_until(lambda: sub.keys() >= set(want), 20, 0.2, "every reading at the subscriber")
    assert (
        len(sub.readings) - len(want) <= cfg.mqtt.max_inflight * cfg.mqtt.pack_max_readings
    )  # re-sent in flight
    sub.close()


def _spawn_gateway(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "gateway.service", "--config", str(cfg_path)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip


def _write(cfg: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def test_sigkilled_gateway_loses_nothing_it_had_queued(
    influxdb: Any, make_config: Any, tmp_path: Path
) -> None:
    """Killed twice: once with readings queued (broker away), once with packs sent but never acknowledged."""
    specs = dlt645_fleet(3)
    mq = Mosquitto(tmp_path / "mq", free_port())  # not running yet: everything queues in the outbox
    link = LossyLink(mq.port)  # the gateway's way to the broker
    sim, url = start_sim(specs, "tcp")
    cfg = gateway_config(tmp_path, url, specs, link.port, gateway={"poll_on_start": False},
                         poll_groups={"default": {"interval_s": 2}},
                         mqtt={"drain_rate_msgs_s": 2, "pack_max_readings": 50})  # fmt: skip
    cfg_path = _write(cfg, tmp_path / "gateway.yaml")
    log = tmp_path / "gateway.log"
    procs: list[subprocess.Popen[bytes]] = []
    collector = None
    sub = None

    def kill() -> None:
        os.kill(procs[-1].pid, signal.SIGKILL)  # a power cut, as the process sees it
        procs[-1].wait(10)

    try:
        procs.append(_spawn_gateway(cfg_path, log))
        wait_until(lambda: cfg.outbox_path.exists() and len(outbox_rows(cfg.outbox_path)) >= 200, 40, 0.2,
                   "readings queued while the broker is away")  # fmt: skip
        kill()  # mid-poll, perhaps mid-commit
        want = _expected(outbox_rows(cfg.outbox_path))
        assert len(want) >= 200

        mq.start()
        campus = make_config(mq, influxdb, data=campus_data(specs))
        collector = MqttCollector(campus).start()
        collector.store.ensure_database()
        sub = Subscriber(mq.port, cfg.gateway.id)
        procs.append(_spawn_gateway(cfg_path, log))  # drains at 100 readings/s: slow enough to act mid-drain
        wait_until(lambda: len(sub.readings) >= 100, 30, 0.1, "the drain to start")
        link.dropping.set()  # from now on publishes leave the gateway and are lost on the way
        wait_until(lambda: link.dropped > 4000, 15, 0.05, "packs sent into the void")
        kill()
        link.heal()
        assert len(outbox_rows(cfg.outbox_path)) > 0, "the drain finished before the kill; slow it down"

        procs.append(_spawn_gateway(cfg_path, log))
        store = open_store(campus)
        try:
            wait_until(
                lambda: set(want) <= set(influx_readings(store)), 60, 0.5, "every queued reading stored"
            )
            got = influx_readings(store)
        finally:
            store.close()
        assert {
            k: got[k] for k in want
        } == want  # same values, same timestamps: nothing lost, nothing re-stamped

        kill()  # with the broker reachable: the last will tells the campus
        wait_until(lambda: sub.status and sub.status[-1]["state"] == "offline", 15, 0.2, "the last will")
        procs.append(_spawn_gateway(cfg_path, log))
        wait_until(lambda: sub.status[-1]["state"] == "online", 15, 0.2, "online again")
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(20) == 0
        wait_until(lambda: sub.status[-1]["state"] == "offline", 10, 0.1, "offline on SIGTERM")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if sub is not None:
            sub.close()
        if collector is not None:
            collector.stop()
        link.close()
        mq.stop()
        sim.stop()
    assert "Traceback" not in log.read_text()


def test_full_outbox_drops_the_oldest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    specs = dlt645_fleet(1)
    mq = Mosquitto(tmp_path / "mq", free_port())
    sim, url = start_sim(specs, "pty")
    cfg = gateway_config(tmp_path, url, specs, mq.port, gateway={"poll_on_start": False},
                         outbox={"max_readings": 100})  # fmt: skip
    gw = Gateway(cfg)
    tee = _tee(gw)
    sub = None
    try:
        gw.start()
        for _ in range(9):
            gw.poll_all()
            assert gw.buses[0].wait_idle(10)
            time.sleep(1.0)  # one poll per second keeps every reading's key unique
        gw.outbox.flush()
        made = tee.snapshot()
        assert len(made) > 110
        kept = made[-100:]
        st = gw.outbox.stats()
        assert (st.depth, st.dropped_full, st.warning) == (100, len(made) - 100, True)
        assert any(f"({len(made) - 100} dropped in total)" in r.getMessage() for r in caplog.records)
        mq.start()
        sub = Subscriber(mq.port, cfg.gateway.id)
        wait_until(lambda: sub.keys() >= {r.key for r in kept}, 30, 0.2, "the 100 newest readings")
        assert {r.key: r.value for r in sub.readings} == {r.key: r.value for r in kept}
        wait_until(lambda: any(s.get("outbox", {}).get("dropped_full") == len(made) - 100 for s in sub.status), 15,
                   0.2, "the drop count on the status topic")  # fmt: skip
        status = next(s for s in sub.status if s.get("outbox", {}).get("dropped_full"))
        assert status["outbox"]["capacity"] == 100
    finally:
        gw.stop()
        sim.stop()
        if sub is not None:
            sub.close()
        mq.stop()
