"""No data loss: the collector SIGKILLed mid-stream, InfluxDB stopped for 30 s. Real servers only."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from campusmon.influx import open_store
from campusmon.wire import COLLECTOR_STATUS_TOPIC, wait_for_status
from collectors.mqtt_collector import MqttCollector
from firmware_sim.mqtt_meters import MqttFleet
from firmware_sim.profiles import sim_meters_for
from tests.deliveries import Deliveries
from tests.helpers import campus, count, expected, spawn_cli, stored, wait_until, write_config


def _stream(fleet: MqttFleet, start: int, steps: int, pause: float) -> threading.Thread:
    def run() -> None:
        for k in range(steps):
            fleet.step(start + 60 * k)
            time.sleep(pause)
        assert fleet.flush(120)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_sigkilled_collector_loses_and_doubles_nothing(mosquitto, influxdb, make_config, tmp_path) -> None:
    cfg = make_config(
        mosquitto, influxdb, data=campus(20, 10), mqtt={"batch_size": 200, "flush_interval_s": 0.3}
    )
    path = write_config(cfg, tmp_path / "campus.yaml")
    store = open_store(cfg)
    store.ensure_database()
    proc = spawn_cli(["collector", "-c", str(path)], tmp_path / "collector.log")
    status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)
    restarted: MqttCollector | None = None
    try:
        assert wait_for_status("127.0.0.1", mosquitto.port, status, "online", 30), (
            "collector never subscribed"
        )
        fleet = MqttFleet(
            sim_meters_for(cfg, 3), "127.0.0.1", mosquitto.port, 60, 3, flat_share=0.5, client_id="kill-sim"
        )
        fleet.keep_history = True
        start = int(time.time()) // 60 * 60 - 200 * 60
        feeder = _stream(fleet, start, 150, 0.02)  # 150 steps x 30 meters x 2 = 9,000 readings
        wait_until(lambda: count(store) > 1500, 60, 0.1, "the collector to be mid-stream")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT, unacked messages in flight
        proc.wait(10)
        at_kill = count(store)
        # The broker publishes the will once it has seen the connection go: nothing handed to it
        # after that can have been sent to the dead collector.
        assert wait_for_status("127.0.0.1", mosquitto.port, status, "offline", 30), "no will after SIGKILL"
        handed_while_alive = set(fleet.handed)
        sent_at_kill = fleet.pub.sent
        # The stream goes on while the collector is dead; it comes back in-process, same client id,
        # so every delivery to it is counted.
        meanwhile = min(sent_at_kill + 100, 4500)
        wait_until(lambda: fleet.pub.sent >= meanwhile, 30, 0.05, "messages sent meanwhile")
        taps = Deliveries()
        restarted = MqttCollector(cfg, tap=taps).start()
        feeder.join(120)
        fleet.close()
        want = expected(fleet.published)
        assert len(want) == 9000 and at_kill < 9000
        wait_until(lambda: count(store) >= 9000, 120, 0.5, "every reading after the restart")
        assert stored(store) == want  # none lost, none extra, values and timestamps as sent
        # At least once: only what the killed collector had been sent comes again (flagged DUP), and
        # the new one gets each message once. Acking wrongly, or reconnecting, would show here.
        assert taps.doubled() == {}
        assert taps.dup_payloads <= handed_while_alive, "a message the dead collector never had came as DUP"
        # Every message stored before the kill (two readings each) reached the old collector: what
        # comes new (not DUP) to the restarted one is at most the rest.
        assert taps.total() - taps.dup <= fleet.pub.sent - at_kill // 2
        assert restarted.reconnects == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        if restarted is not None:
            restarted.stop()


@pytest.mark.slow
def test_influxdb_down_for_30_seconds_loses_nothing(mosquitto, server_factory, make_config) -> None:
    influx = server_factory("influxdb")
    cfg = make_config(
        mosquitto, influx, data=campus(10, 10), mqtt={"batch_size": 100, "flush_interval_s": 0.2}
    )
    store = open_store(cfg)
    store.ensure_database()
    taps = Deliveries()
    c = MqttCollector(cfg, tap=taps).start()
    try:
        assert c.wait_connected(10)
        fleet = MqttFleet(
            sim_meters_for(cfg, 5), "127.0.0.1", mosquitto.port, 60, 5, flat_share=0.3, client_id="outage-sim"
        )
        fleet.keep_history = True
        start = int(time.time()) // 60 * 60 - 300 * 60
        feeder = _stream(fleet, start, 240, 0.15)  # ~36 s of publishing, 9,600 readings
        wait_until(lambda: count(store) > 500, 30, 0.1)
        influx.stop()
        down_at = time.monotonic()
        max_inbox = 0
        while time.monotonic() - down_at < 30:
            max_inbox = max(max_inbox, c.inbox.qsize())
            time.sleep(0.1)
        # Memory stays bounded: the broker hands over at most ReceiveMaximum unacked messages.
        assert max_inbox <= cfg.mqtt.batch_size
        influx.start()
        feeder.join(120)
        fleet.close()
        want = expected(fleet.published)
        assert len(want) == 9600
        wait_until(lambda: count(store) >= 9600, 120, 0.5, "the backlog to drain")
        assert stored(store) == want  # none lost, none extra, values and timestamps as sent
        assert c.ingestor.dead.counts() == {}
        # The connection held through the outage, so nothing may have come twice.
        assert taps.total() == fleet.pub.sent == 4800
        assert taps.doubled() == {} and taps.dup == 0 and c.reconnects == 0
    finally:
        c.stop()


def test_v2_backend_writes_through_influxdb_client_to_a_real_v2_write_api(tmp_path, make_config) -> None:
    """VictoriaMetrics implements the InfluxDB v2 write API; read back through its export API."""
    import json

    import httpx

    from campusmon.reading import Reading
    from campusmon.services import VictoriaMetrics, free_port

    vm = VictoriaMetrics(tmp_path / "vm", free_port()).start()
    try:
        cfg = make_config(
            None,
            None,
            data=campus(5, 5),
            influxdb={
                "backend": "v2",
                "url": f"http://127.0.0.1:{vm.port}",
                "token": "t",
                "org": "campus",
                "bucket": "campus",
            },
        )
        store = open_store(cfg)
        store.ensure_database()  # no DBRP on this server: warns, does not fail
        now = int(time.time()) // 60 * 60
        rs = [
            Reading(f"e00{i % 5}", "energy_kwh", 1000.0 + k + i / 10, now - 60 * k)
            for k in range(200)
            for i in range(5)
        ]
        rs += [
            Reading(f"w00{i % 5}", "volume_m3", 50.0 + k / 100, now - 60 * k)
            for k in range(200)
            for i in range(5)
        ]
        out = store.write(rs)
        assert out.stored == 2000 and out.rejected == []
        out = store.write(rs[:100])  # re-delivery overwrites
        assert out.stored == 100
        store.close()
        httpx.get(f"http://127.0.0.1:{vm.port}/internal/force_flush")
        got: dict[tuple[str, str, int], float] = {}
        for name in ("electricity_energy_kwh", "water_volume_m3"):
            r = httpx.get(f"http://127.0.0.1:{vm.port}/api/v1/export", params={"match[]": name})
            for line in r.text.splitlines():
                obj = json.loads(line)
                assert obj["metric"]["building"] in {f"b{i}" for i in range(5)}
                for v, t in zip(obj["values"], obj["timestamps"], strict=True):
                    got[(obj["metric"]["meter"], name.split("_", 1)[1], t // 1000)] = v
        assert got == {r.key: r.value for r in rs}
    finally:
        vm.stop()


def test_v1_partial_write_keeps_good_lines_and_dead_letters_the_bad(influxdb, make_config) -> None:
    """A 400 partial write is not re-sent: good lines stay, refused ones come back as rejected."""
    from campusmon.influx import V1Store
    from campusmon.reading import Reading

    cfg = make_config(None, influxdb, data=campus(2, 0))
    store = open_store(cfg)
    store.ensure_database()
    assert isinstance(store, V1Store)
    store.query(f'CREATE DATABASE "{cfg.influxdb.database}"')
    # Make power_w an integer field so float writes conflict (a type conflict InfluxDB 1.x refuses).
    now = int(time.time())
    store.write_lines([f"electricity,meter=e000 power_w=5i {now - 10}"], [])  # same shard as below
    good = Reading("e000", "energy_kwh", 1.5, now)
    bad = Reading("e001", "power_w", 2.5, now)
    out = store.write([good, bad])
    assert out.stored == 1
    assert [(r, why.split(":")[0]) for r, why in out.rejected] == [(bad, "influxdb field type conflict")]
    assert stored(store, ("energy_kwh",)) == {good.key: 1.5}
