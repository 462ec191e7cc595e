"""The MQTT collector through outages and its own faults, against real Mosquitto and InfluxDB.

The watchdog keeps quiet while its own back-pressure holds the window, yet still reconnects a dead
subscription; a returning InfluxDB is used at once; QoS 0 cannot fill memory; stopping works
whatever is down; a message whose handling raises is dead-lettered, and a dead thread is reported.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import REGISTRY

from campusmon.influx import open_store
from campusmon.ingest import Ingestor
from campusmon.services import free_port
from campusmon.wire import (
    COLLECTOR_STATUS_TOPIC,
    INTERNAL_ERROR,
    METER_TOPIC,
    READING_SUBSCRIPTIONS,
    wait_for_status,
)
from collectors.mqtt_collector import MqttCollector, run_collector
from firmware_sim.mqtt_meters import BackpressurePublisher
from tests.deliveries import Deliveries
from tests.helpers import campus, count, stored, wait_until

LOGGER = "collectors.mqtt_collector"


def _reading(i: int, now: int) -> tuple[str, bytes]:
    meter = f"e00{i % 4}"
    return METER_TOPIC.format(meter_id=meter), json.dumps(
        {"meter": meter, "ts": now - 5000 + i, "energy_kwh": 100.0 + i}
    ).encode()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


# -- B: the watchdog --------------------------------------------------------------------------------


def test_watchdog_stays_quiet_while_its_own_back_pressure_holds_the_window(
    mosquitto, server_factory, make_config, caplog
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    influx = server_factory("influxdb")
    cfg = make_config(
        mosquitto,
        influx,
        data=campus(4, 0),
        mqtt={"batch_size": 10, "flush_interval_s": 0.2, "watchdog_s": 2.0},
    )
    taps = Deliveries()
    c = MqttCollector(cfg, probe_interval_s=0.5, tap=taps).start()
    try:
        c.store.ensure_database()
        assert c.wait_connected(10)
        influx.stop()
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "wd-" + cfg.mqtt.client_id)
        now = int(time.time())
        msgs = [_reading(i, now) for i in range(60)]  # several windows' worth
        for topic, body in msgs:
            pub.publish(topic, body)
        pub.close()
        wait_until(lambda: c.backpressure.is_set() and taps.total() >= 10, 20, 0.1, "a full window held")
        held = taps.total()
        checks = c.watchdog_checks
        # Three watchdog periods of silence from the broker while the window stays full.
        wait_until(lambda: c.watchdog_checks >= checks + 12, 30, 0.2, "three watchdog periods")
        assert c.reconnects == 0
        assert _errors(caplog) == []
        assert taps.total() == held and c.redelivered == 0  # nothing re-delivered
        influx.start()
        store = open_store(cfg)
        wait_until(lambda: count(store) >= 60, 60, 0.3, "the backlog stored")
        assert stored(store, ("energy_kwh",)) == {
            (json.loads(b)["meter"], "energy_kwh", json.loads(b)["ts"]): json.loads(b)["energy_kwh"]
            for _t, b in msgs
        }
        assert taps.counts == Counter(b for _t, b in msgs)  # every message delivered exactly once
        assert c.reconnects == 0 and c.redelivered == 0 and _errors(caplog) == []
    finally:
        c.stop()


def test_watchdog_reconnects_a_subscription_that_is_really_dead(
    mosquitto, influxdb, make_config, caplog
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    cfg = make_config(mosquitto, influxdb, data=campus(4, 0), mqtt={"watchdog_s": 2.0})
    c = MqttCollector(cfg, probe_interval_s=0.5).start()
    try:
        c.store.ensure_database()
        assert c.wait_connected(10)
        # The connection stays up but the broker no longer delivers anything to it, as when a
        # broker or a proxy in between loses the session's subscriptions.
        info = c.client.unsubscribe([*READING_SUBSCRIPTIONS, c.probe_topic])
        assert info[0] == mqtt.MQTT_ERR_SUCCESS
        wait_until(lambda: c.reconnects >= 1, 20, 0.1, "the watchdog to notice")
        assert any("no echo of the watchdog probe" in e for e in _errors(caplog))
        assert c.wait_connected(10)
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "dead-" + cfg.mqtt.client_id)
        topic, body = _reading(1, int(time.time()))
        pub.publish(topic, body)
        pub.close()
        wait_until(lambda: count(c.store) == 1, 20, 0.2, "a reading through the new subscription")
    finally:
        c.stop()


# -- C: a returning store is used at once -----------------------------------------------------------


def test_returning_influxdb_is_written_within_2_s_of_answering_ping(
    mosquitto, server_factory, make_config, caplog
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    influx = server_factory("influxdb")
    cfg = make_config(mosquitto, influx, data=campus(4, 0), mqtt={"batch_size": 10})
    written: list[float] = []
    c = MqttCollector(cfg, hooks=(lambda rs: written.append(time.monotonic()),)).start()
    try:
        c.store.ensure_database()
        assert c.wait_connected(10)
        influx.stop()
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "ping-" + cfg.mqtt.client_id)
        pub.publish(*_reading(1, int(time.time())))
        pub.close()

        def backed_off() -> bool:
            delays = [r.args[1] for r in caplog.records if r.getMessage().startswith("store unavailable")]
            return bool(delays) and max(delays) >= 6.4

        wait_until(backed_off, 60, 0.1, "the write back-off to exceed 6 s")
        assert written == []
        influx.start()  # returns once InfluxDB answers /ping
        answered = time.monotonic()
        wait_until(lambda: written, 30, 0.05, "the first write after the outage")
        assert written[0] - answered < 1.8
        events = dict(c.store_events)  # the collector's own record: ping answered, then written
        assert "ping_ok" in events and 0 <= events["write_ok"] - events["ping_ok"] < 2.0
    finally:
        c.stop()


# -- D: QoS 0 cannot fill memory --------------------------------------------------------------------


def test_qos0_messages_cannot_grow_the_inbox_without_bound(mosquitto, make_config) -> None:
    cfg = make_config(
        mosquitto,
        None,
        data=campus(4, 0),
        mqtt={"batch_size": 10},
        influxdb={"url": f"http://127.0.0.1:{free_port()}"},  # nothing listens: InfluxDB is down
    )
    before = REGISTRY.get_sample_value("campusmon_qos0_dropped_total", {"via": "mqtt"}) or 0.0
    taps = Deliveries()
    c = MqttCollector(cfg, tap=taps).start()
    try:
        assert c.wait_connected(10)
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "q0-" + cfg.mqtt.client_id)
        now = int(time.time())
        for i in range(300):
            pub.publish(*_reading(i, now), qos=0)
        pub.close()
        wait_until(lambda: taps.total() >= 300, 20, 0.1, "every QoS 0 message delivered")
        assert c.inbox.qsize() <= c.inbox_limit == 10
        assert c.qos0_dropped >= 300 - c.inbox_limit - cfg.mqtt.batch_size
        after = REGISTRY.get_sample_value("campusmon_qos0_dropped_total", {"via": "mqtt"})
        assert after - before == c.qos0_dropped
    finally:
        c.stop()


# -- E: stopping whatever is already down -----------------------------------------------------------


def test_stop_is_clean_after_the_broker_and_influxdb_are_gone(server_factory, make_config) -> None:
    broker, influx = server_factory("mosquitto"), server_factory("influxdb")
    cfg = make_config(broker, influx, data=campus(2, 0))
    c = MqttCollector(cfg).start()
    c.store.ensure_database()
    assert c.wait_connected(10)
    broker.stop()
    influx.stop()
    wait_until(lambda: not c.connected.is_set(), 10, 0.05, "the collector to see the broker gone")
    c.stop()  # raised RuntimeError from the "offline" publish, and the store was left open
    assert c.store.http.is_closed
    assert not any(t.is_alive() for t in c._threads)


# -- F: a message whose handling raises; a thread that dies anyway ---------------------------------


BOOM = b'{"boom": true}'


def test_a_message_whose_handling_raises_is_dead_lettered_acked_and_the_worker_goes_on(
    mosquitto, influxdb, make_config, monkeypatch, caplog
) -> None:
    import campusmon.ingest

    real = campusmon.ingest.parse_payload

    def parse(payload: bytes, *a: object, **kw: object) -> object:
        if payload == BOOM:
            raise ZeroDivisionError("a parser bug")
        return real(payload, *a, **kw)

    monkeypatch.setattr(campusmon.ingest, "parse_payload", parse)
    caplog.set_level(logging.INFO, LOGGER)
    cfg = make_config(
        mosquitto, influxdb, data=campus(4, 0), mqtt={"batch_size": 50, "flush_interval_s": 0.5}
    )
    c = MqttCollector(cfg).start()
    try:
        c.store.ensure_database()
        assert c.wait_connected(10)
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "boom-" + cfg.mqtt.client_id)
        now = int(time.time())
        for i in range(12):
            pub.publish(*_reading(i, now))
            if i % 4 == 0:
                pub.publish(METER_TOPIC.format(meter_id="e000"), BOOM)  # 3 in the same batch
        pub.close()
        wait_until(lambda: c.acked >= 15, 30, 0.1, "every message acked")
        assert c.acked == 15
        assert count(c.store) == 12
        assert c.ingestor.dead.counts() == {INTERNAL_ERROR: 3}
        with_tb = [r for r in caplog.records if r.name == LOGGER and r.exc_info]
        assert len(with_tb) == 1 and "ZeroDivisionError" in caplog.text  # the traceback once
        assert c.healthy() and all(t.is_alive() for t in c._threads)
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "boom2-" + cfg.mqtt.client_id)
        pub.publish(*_reading(100, now))
        pub.close()
        wait_until(lambda: count(c.store) == 13, 20, 0.1, "the worker to go on")
    finally:
        c.stop()


def _break_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("the dead-letter store is broken too")

    monkeypatch.setattr(Ingestor, "process", broken)
    monkeypatch.setattr(Ingestor, "refuse", broken)


def test_a_collector_thread_that_dies_is_reported_failed(
    mosquitto, influxdb, make_config, monkeypatch
) -> None:
    _break_ingest(monkeypatch)
    cfg = make_config(mosquitto, influxdb, data=campus(4, 0))
    c = MqttCollector(cfg).start()
    try:
        assert c.wait_connected(10) and c.healthy() and c.ready()
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "die-" + cfg.mqtt.client_id)
        pub.publish(*_reading(1, int(time.time())))
        pub.close()
        status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)
        assert wait_for_status("127.0.0.1", mosquitto.port, status, "failed", 20)
        assert c.failed.is_set() and c.failed_thread == "collector-worker"
        assert not c.healthy() and not c.ready()
        healthy = REGISTRY.get_sample_value("campusmon_collector_healthy", {"client_id": cfg.mqtt.client_id})
        assert healthy == 0
    finally:
        c.stop()
    assert wait_for_status("127.0.0.1", mosquitto.port, status, "failed", 5)  # stop keeps it


def test_run_collector_exits_non_zero_when_a_thread_dies(
    mosquitto, influxdb, make_config, monkeypatch
) -> None:
    _break_ingest(monkeypatch)
    cfg = make_config(mosquitto, influxdb, data=campus(4, 0))
    status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)

    def feed() -> None:
        if not wait_for_status("127.0.0.1", mosquitto.port, status, "online", 20):
            os.kill(os.getpid(), signal.SIGTERM)  # stops run_collector cleanly: the test then fails
            return
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "exit-" + cfg.mqtt.client_id)
        pub.publish(*_reading(1, int(time.time())))
        pub.close()

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with pytest.raises(SystemExit) as exited:
            run_collector(cfg)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert exited.value.code == 1
    feeder.join(10)
