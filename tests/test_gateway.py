"""The gateway process against simulated RS-485 buses and a real Mosquitto."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from campusmon.services import free_port
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from gateway.service import Gateway
from tests.gateway_sim import Spec, Subscriber, assert_registers, fleet, gateway_config, start_sim
from tests.helpers import wait_until


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_every_meter_is_read_and_dead_or_garbage_meters_do_not_stop_the_others(
    transport: str, mosquitto: Any, tmp_path: Any
) -> None:
    good = fleet()
    dead = Spec("e-gw-dead", "dlt645", "000000000199", None)  # configured, nobody answers
    spewer = Spec("e-gw-spew", "dlt645", "000000000198", lambda c: Dlt645Meter("000000000198", clock=c))
    noisy = Spec("e-gw-noisy", "dlt645", "000000000197", lambda c: Dlt645Meter("000000000197", clock=c))
    specs = [dead, *good[:3], spewer, *good[3:], noisy]
    clock = SimClock(frozen=True)
    sim, url = start_sim(specs, transport, clock)
    sim.meter(spewer.address).set_fault("garbage", nbytes=40, reply=False)  # only noise, every time
    sim.meter(noisy.address).set_fault("garbage", nbytes=6)  # noise around valid replies
    cfg = gateway_config(tmp_path, url, specs, mosquitto.port,
                         bus={"quarantine": {"after_failures": 1, "base_s": 600}})  # fmt: skip
    sub = Subscriber(mosquitto.port, cfg.gateway.id)
    gw = Gateway(cfg)
    try:
        gw.start()
        want = {s.id for s in [*good, noisy]}
        wait_until(lambda: sub.meters() >= want, 30, 0.2, "a reading from every answering meter")
        assert gw.buses[0].wait_idle(30)
        assert_registers(sub.readings, sim, [*good, noisy])
        assert sub.meters() == want
        wait_until(lambda: sub.status and sub.status[-1].get("meters_offline") == ["e-gw-dead", "e-gw-spew"], 15,
                   0.2, "dead and garbage meters reported offline")  # fmt: skip
        h = gw.health()["buses"]["rs485-1"]
        assert (
            h["errors"]["timeout"] == 2
            and h["errors"].get("garbage", 0) + h["errors"].get("truncated", 0) >= 2
        )
        assert h["meters"]["e-gw-noisy"]["state"] == "online"
        assert sub.status[0]["state"] == "online"
    finally:
        gw.stop()
        sim.stop()
    wait_until(lambda: sub.status[-1]["state"] == "offline", 10, 0.1, "offline status on a clean stop")
    sub.close()


def test_readings_keep_the_time_of_the_reply_and_polls_follow_the_clock(
    mosquitto: Any, tmp_path: Any
) -> None:
    specs = fleet()[:1]
    sim, url = start_sim(specs, "pty")
    cfg = gateway_config(tmp_path, url, specs, mosquitto.port, gateway={"poll_on_start": False},
                         poll_groups={"default": {"interval_s": 2}})  # fmt: skip
    sub = Subscriber(mosquitto.port, cfg.gateway.id)
    gw = Gateway(cfg)
    try:
        gw.start()
        wait_until(lambda: len({r.ts for r in sub.readings}) >= 3, 20, 0.1, "three polls")
    finally:
        gw.stop()
        sim.stop()
        sub.close()
    ts = sorted({r.ts for r in sub.readings})
    polls = sorted({t - t % 2 for t in ts})  # the 2-second grid the polls fire on
    assert len(polls) >= 3
    assert all(min(t for t in ts if t - t % 2 == p) == p for p in polls)  # first reply in the second it fired
    # Each reading carries the second its reply arrived: the request went out that second or the one before.
    asked = {int(tx.t) for tx in sim.transactions}
    assert all(r.ts in asked or r.ts - 1 in asked for r in sub.readings)


def test_health_topic_and_prometheus_endpoint_agree(mosquitto: Any, tmp_path: Any) -> None:
    specs = fleet()[:2]
    sim, url = start_sim(specs, "tcp")
    port = free_port()
    cfg = gateway_config(
        tmp_path, url, specs, mosquitto.port, health={"interval_s": 0.5, "prometheus_port": port}
    )
    sub = Subscriber(mosquitto.port, cfg.gateway.id)
    gw = Gateway(cfg)
    try:
        gw.start()
        wait_until(lambda: any(h["buses"]["rs485-1"]["sweeps"] >= 1 for h in sub.health), 20, 0.1, "health")
        doc = next(h for h in sub.health if h["buses"]["rs485-1"]["sweeps"] >= 1)
        bus = doc["buses"]["rs485-1"]
        assert bus["success_rate"] == 1.0 and bus["rtt_ms"]["p50"] > 0 and bus["meters_online"] == 2
        assert doc["outbox"]["capacity"] == cfg.outbox.max_readings and doc["mqtt"]["connected"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        gid = cfg.gateway.id
        assert f'campusmon_gateway_bus_success_ratio{{bus="rs485-1",gateway="{gid}"}} 1.0' in text
        assert f'campusmon_gateway_meter_up{{bus="rs485-1",gateway="{gid}",meter="e-gw-1"}} 1.0' in text
        assert f'campusmon_gateway_mqtt_connected{{gateway="{gid}"}} 1.0' in text
    finally:
        gw.stop()
        sim.stop()
        sub.close()


def test_daily_time_sync_sets_every_dlt645_meter_clock(tmp_path: Any) -> None:
    specs = fleet()[:2]
    sim, url = start_sim(specs, "pty")
    for s in specs:
        sim.meter(s.address).set_fault("clock_skew", seconds=900)
    cfg = gateway_config(tmp_path, url, specs, gateway={"poll_on_start": False, "timezone": "UTC"},
                         time_sync={"enabled": True, "at": "03:07"})  # fmt: skip
    gw = Gateway(cfg)
    try:
        assert "time-sync" in gw.scheduler.next_run_times()
        gw.buses[0].start()
        gw.time_sync()
        assert gw.buses[0].wait_idle(10)
        time.sleep(0.2)  # the broadcast has no reply; let the simulated meter act on it
        for s in specs:
            m = sim.meter(s.address)
            assert m.time_syncs == 1
            assert abs(m.meter_time().timestamp() - time.time()) < 3
    finally:
        gw.stop()
        sim.stop()
