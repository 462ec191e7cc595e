"""The API against a real InfluxDB: meters, readings, errors as JSON with a clear message."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from campusmon.influx import open_store
from campusmon.reading import Reading
from tests.auth_helpers import admin_headers
from tests.conftest import SMALL_CAMPUS

NOW = int(time.time()) // 3600 * 3600


@pytest.fixture
def client(influxdb, mosquitto, make_config):
    cfg = make_config(mosquitto, influxdb, data=SMALL_CAMPUS)
    store = open_store(cfg)
    store.ensure_database()
    rs = []
    for k in range(24 * 4):  # a day of 15-minute readings, oldest first
        ts = NOW - 86400 + 900 * k
        rs += [
            Reading("e-dorm-1", "energy_kwh", 100.0 + k * 2.5, ts),
            Reading("e-dorm-1", "power_w", 1000.0 + k, ts),
        ]
    rs.append(Reading("w-dorm-1", "volume_m3", 12.5, NOW - 60))
    assert store.write(rs).stored == len(rs)
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as c:
        yield c


def test_meter_registry(client) -> None:
    body = client.get("/api/v1/meters").json()
    assert body["count"] == 3 and {m["id"] for m in body["meters"]} == {"e-dorm-1", "w-dorm-1", "e-teach-1"}
    assert client.get("/api/v1/meters", params={"building": "dorm-1", "kind": "water"}).json()["count"] == 1
    m = client.get("/api/v1/meters/e-dorm-1").json()
    assert m["building"] == "dorm-1" and m["building_type"] == "dorm" and "energy_kwh" in m["quantities"]


def test_latest_has_each_quantitys_own_time(client) -> None:
    latest = client.get("/api/v1/meters/e-dorm-1/latest").json()["latest"]
    assert latest["energy_kwh"] == {"value": 100.0 + 95 * 2.5, "ts": NOW - 900, "unit": "kWh"}
    assert latest["power_w"]["value"] == 1095.0
    assert client.get("/api/v1/meters/w-dorm-1/latest").json()["latest"]["volume_m3"]["ts"] == NOW - 60


def test_raw_readings_in_a_range(client) -> None:
    r = client.get(
        "/api/v1/meters/e-dorm-1/readings", params={"start": NOW - 3600, "end": NOW, "quantity": "energy_kwh"}
    ).json()
    assert r["columns"] == ["ts", "energy_kwh"] and r["units"] == {"energy_kwh": "kWh"}
    assert r["points"] == [[NOW - 3600 + 900 * i, 100.0 + (92 + i) * 2.5] for i in range(4)]


def test_downsampled_readings_use_last_for_registers_and_mean_for_rates(client) -> None:
    r = client.get(
        "/api/v1/meters/e-dorm-1/readings",
        params={"start": NOW - 7200, "end": NOW, "every": "1h", "quantity": ["energy_kwh", "power_w"]},
    ).json()
    assert r["points"] == [
        [NOW - 7200, 100.0 + 91 * 2.5, 1000.0 + (88 + 89 + 90 + 91) / 4],
        [NOW - 3600, 100.0 + 95 * 2.5, 1000.0 + (92 + 93 + 94 + 95) / 4],
    ]


def test_iso_times_are_accepted(client) -> None:
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(NOW - 1800, UTC).isoformat()
    r = client.get("/api/v1/meters/e-dorm-1/readings", params={"start": start, "quantity": "power_w"})
    assert r.status_code == 200 and r.json()["count"] == 2


@pytest.mark.parametrize(
    ("url", "params", "status", "fragment"),
    [
        ("/api/v1/meters/nope", {}, 404, "meter 'nope' is not in the campus registry"),
        ("/api/v1/meters/nope/latest", {}, 404, "not in the campus registry"),
        ("/api/v1/meters/e-dorm-1/readings", {"start": "yesterday"}, 422, "start='yesterday': use ISO 8601"),
        ("/api/v1/meters/e-dorm-1/readings", {"start": NOW, "end": NOW - 10}, 422, "must be before end"),
        (
            "/api/v1/meters/e-dorm-1/readings",
            {"quantity": "volume_m3"},
            422,
            "'volume_m3' is not a electricity quantity",
        ),
        ("/api/v1/meters/e-dorm-1/readings", {"every": "fortnight"}, 422, "every='fortnight'"),
        ("/api/v1/meters/e-dorm-1/readings", {"every": "1s", "start": 0}, 422, "buckets requested"),
        ("/api/v1/meters/e-dorm-1/readings", {"limit": 0}, 422, "invalid request: query.limit"),
        ("/api/v1/meters", {"building": "mars"}, 404, "building 'mars' is not defined"),
        ("/api/v1/meters", {"kind": "gas"}, 422, "invalid request: query.kind"),
        ("/no/such/route", {}, 404, "Not Found"),
    ],
)
def test_errors_are_json_with_a_clear_message(client, url, params, status, fragment) -> None:
    r = client.get(url, params=params)
    assert r.status_code == status
    body = r.json()
    assert body["status"] == status and fragment in body["error"], body
    assert "Traceback" not in r.text


def test_wrong_method_is_json(client) -> None:
    r = client.delete("/api/v1/meters")
    assert r.status_code == 405 and r.json()["error"] == "Method Not Allowed"


def test_health_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    text = client.get("/metrics").text
    assert "campusmon_readings_received_total" in text and "campusmon_batch_seconds_bucket" in text
