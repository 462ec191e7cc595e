"""MQTT meters → collector → InfluxDB, exactly, against real Mosquitto and InfluxDB."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from campusmon.influx import open_store
from campusmon.wire import METER_TOPIC
from collectors.mqtt_collector import MqttCollector
from firmware_sim.mqtt_meters import BackpressurePublisher, MqttFleet
from firmware_sim.profiles import sim_meters_for
from tests.auth_helpers import admin_headers
from tests.deliveries import Deliveries
from tests.helpers import campus, count, expected, stored, wait_until


@pytest.fixture
def collector(mosquitto, influxdb, make_config):
    cfg = make_config(mosquitto, influxdb, data=campus(25, 25))
    c = MqttCollector(cfg, tap=Deliveries()).start()
    c.store.ensure_database()
    assert c.wait_connected(10)
    yield c
    c.stop()


def test_10000_mixed_readings_arrive_exactly(collector, mosquitto) -> None:
    cfg = collector.cfg
    fleet = MqttFleet(
        sim_meters_for(cfg, seed=7),
        "127.0.0.1",
        mosquitto.port,
        interval_s=60,
        seed=7,
        flat_share=0.3,
        client_id="sim-" + cfg.mqtt.client_id,
    )
    fleet.keep_history = True
    start = int(time.time()) // 60 * 60 - 100 * 60
    fleet.backfill(start, start + 100 * 60)
    fleet.close()
    want = expected(fleet.published)
    assert len(want) == 10_000
    store = open_store(cfg)
    wait_until(lambda: count(store) >= 10_000, 90, 0.5, "10,000 readings in InfluxDB")
    got = stored(store)
    assert got == want  # same meters, quantities, timestamps and values, nothing extra
    # InfluxDB would hide a double by overwriting it; the collector's tap sees every delivery.
    taps = collector.tap
    assert taps.total() == fleet.pub.sent == 5_000
    assert taps.doubled() == {} and taps.dup == 0


# The hostile corpus over MQTT: tests/test_hostile_e2e.py.


def test_rejections_are_visible_in_the_api(collector, mosquitto, influxdb) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "api-" + collector.cfg.mqtt.client_id)
    pub.publish(METER_TOPIC.format(meter_id="e000"), b"{not json")
    pub.close()
    wait_until(lambda: collector.ingestor.dead.counts().get("malformed_json"), 10, 0.2)
    with TestClient(
        create_app(collector.cfg, start_jobs=False), headers=admin_headers(collector.cfg)
    ) as client:
        body = client.get("/api/v1/ingest/rejections", params={"reason": "malformed_json"}).json()
        assert body["counts"]["malformed_json"] == 1
        assert body["items"][0]["payload"] == "{not json" and "not valid JSON" in body["items"][0]["detail"]
        metrics = client.get("/metrics").text
        assert 'campusmon_dead_letters{reason="malformed_json"} 1' in metrics
        assert client.get("/api/v1/ingest/rejections", params={"reason": "nope"}).status_code == 422


def test_shared_subscription_splits_load_without_duplicates(mosquitto, influxdb, make_config) -> None:
    cfg_a = make_config(
        mosquitto, influxdb, data=campus(4, 0), mqtt={"share_group": "g1", "client_id": "share-a"}
    )
    cfg_b = cfg_a.model_copy(update={"mqtt": cfg_a.mqtt.model_copy(update={"client_id": "share-b"})})
    taps_a, taps_b = Deliveries(), Deliveries()
    a, b = MqttCollector(cfg_a, tap=taps_a).start(), MqttCollector(cfg_b, tap=taps_b).start()
    try:
        a.store.ensure_database()
        assert a.wait_connected(10) and b.wait_connected(10)
        time.sleep(0.5)
        pub = BackpressurePublisher("127.0.0.1", mosquitto.port, "share-pub")
        now = int(time.time())
        for i in range(400):
            pub.publish(
                METER_TOPIC.format(meter_id=f"e00{i % 4}"),
                json.dumps({"meter": f"e00{i % 4}", "ts": now - 500 + i, "power_w": float(i)}).encode(),
            )
        pub.close()
        wait_until(lambda: count(a.store) >= 400, 30, 0.3)
        assert a.ingestor.dead.counts() == {}
        assert a.acked > 0 and b.acked > 0 and a.acked + b.acked == 400
        # Each message went to exactly one member of the group, once.
        both = taps_a.counts + taps_b.counts
        assert len(both) == 400 and set(both.values()) == {1}
        assert not set(taps_a.counts) & set(taps_b.counts)
    finally:
        a.stop()
        b.stop()


def test_http_ingest_shares_the_validation_path(influxdb, mosquitto, make_config) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    cfg = make_config(mosquitto, influxdb, data=campus(2, 1))
    now = int(time.time())
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as client:
        senml = [
            {"bn": "urn:campus:meter:e000:", "n": "energy_kwh", "u": "Wh", "v": 1500, "t": now - 10},
            {"n": "temperature_c", "v": 3, "t": now - 10},
        ]
        r = client.post(
            "/api/v1/readings", content=json.dumps(senml), headers={"content-type": "application/senml+json"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 1 and r.json()["rejected"][0]["reason"] == "unknown_quantity"
        r = client.post(
            "/api/v1/readings", params={"meter": "w000"}, json=[{"n": "volume_m3", "v": 2.5, "t": now}]
        )
        assert r.status_code == 200 and r.json()["stored"] == 1
        r = client.post("/api/v1/readings", content=b"{oops")
        assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "malformed_json"
        assert "error" in r.json()
    store = open_store(cfg)
    assert stored(store, ("energy_kwh", "volume_m3")) == {
        ("e000", "energy_kwh", now - 10): 1.5,
        ("w000", "volume_m3", now): 2.5,
    }


def test_http_ingest_says_503_while_influxdb_is_down(mosquitto, make_config) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from campusmon.services import free_port

    cfg = make_config(mosquitto, None, data=campus(1, 0), influxdb={"url": f"http://127.0.0.1:{free_port()}"})
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as client:
        r = client.post("/api/v1/readings", json={"meter": "e000", "ts": int(time.time()), "power_w": 1})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "InfluxDB unavailable" in r.json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"] == {"mqtt": True, "influxdb": False}


def test_readyz_over_real_http(influxdb, mosquitto, make_config) -> None:
    """The API as a real server process answers /readyz and /docs."""
    import threading

    import uvicorn

    from api.app import create_app
    from campusmon.services import free_port

    cfg = make_config(mosquitto, influxdb, data=campus(1, 0))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, start_jobs=False), host="127.0.0.1", port=port, log_level="warning")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: server.started, 10)
        r = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert r.status_code == 200 and r.json() == {
            "ready": True,
            "checks": {"mqtt": True, "influxdb": True},
        }
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
        assert "/api/v1/readings" in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
    finally:
        server.should_exit = True
        t.join(10)
