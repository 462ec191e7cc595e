"""Hostile input through the real ingest path: bounded dead letters, aliases, refusal logs, HTTP 4xx not 500."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from campusmon.config import ConfigError
from campusmon.db import DeadLetter, init_db
from campusmon.deadletter import DeadLetters
from campusmon.influx import open_store
from campusmon.ingest import Ingestor, Message
from campusmon.wire import METER_TOPIC
from tests.auth_helpers import admin_headers
from tests.helpers import stored
from tests.malformed import U, registry


def _data(**ingest: object) -> dict:
    reg = registry("e1", "w1", "gw-1")
    return {
        "buildings": [{"id": "b1"}],
        "gateways": reg["gateways"],
        "meters": [{**m, "building": "b1"} for m in reg["meters"]],
        "ingest": ingest,
    }


@pytest.fixture
def ingestor(influxdb, make_config):
    def make(**ingest: object) -> Ingestor:
        cfg = make_config(None, influxdb, data=_data(**ingest))
        store = open_store(cfg)
        store.ensure_database()
        _, sessions = init_db(cfg.database.url)
        return Ingestor(cfg, store, DeadLetters(sessions), "test")

    return make


def _db_bytes(url: str) -> int:
    path = url.removeprefix("sqlite:///")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def test_a_5000_record_bad_pack_is_kept_once_not_5000_times(ingestor) -> None:
    ing = ingestor()
    now = int(time.time())
    pack = [{"bn": f"{U}e1:", "bt": now}] + [{"n": "tc", "v": i, "t": -i} for i in range(5000)]
    payload = json.dumps(pack, separators=(",", ":")).encode()
    before = _db_bytes(ing.cfg.database.url)
    res = ing.process([Message(METER_TOPIC.format(meter_id="e1"), payload, "t")])
    assert res.stored == 0 and len(res.rejected) == 5000
    rows = ing.dead.page(limit=10)
    assert len(rows) == 1 and rows[0].refused == 5000 and rows[0].payload == payload.decode()
    assert len(rows[0].records) == ing.cfg.ingest.deadletter_records_per_message
    assert ing.dead.counts() == {"unknown_quantity": 5000}
    # The old store wrote the whole payload once per record: 5000 x 300 kB. Now about one payload.
    assert _db_bytes(ing.cfg.database.url) - before < 20 * len(payload)


def test_dead_letter_store_is_bounded_by_size_oldest_first_and_counted(ingestor) -> None:
    ing = ingestor(deadletter_max_bytes=1024 * 1024)
    big = b"{" + b"x" * 100_000  # malformed JSON of 100 kB
    for i in range(30):
        ing.process([Message(METER_TOPIC.format(meter_id="e1"), big + str(i).encode(), f"m{i}")])
    assert ing.dead.size_bytes() <= 1024 * 1024
    kept = ing.dead.page(limit=100)
    assert kept and kept[0].source == "m29"  # the newest survive
    dropped = ing.dead.dropped()
    assert dropped["messages"] == 30 - len(kept) and dropped["records"] == dropped["messages"]
    assert sum(ing.dead.counts().values()) == len(kept)


def test_dead_letter_store_is_bounded_by_age(ingestor) -> None:
    ing = ingestor(deadletter_max_age_days=1)
    ing.process([Message(METER_TOPIC.format(meter_id="e1"), b"old", "old")])
    with ing.dead.sessions.begin() as s:
        s.execute(update(DeadLetter).values(received_at=DeadLetter.received_at - timedelta(days=2)))
    ing.dead._last_age_prune = 0.0  # the age sweep runs at most once a minute
    ing.process([Message(METER_TOPIC.format(meter_id="e1"), b"new", "new")])
    assert [r.source for r in ing.dead.page()] == ["new"]
    assert ing.dead.dropped()["messages"] == 1


def test_senml_aliases_named_by_measure_with_the_unit_as_dimension(ingestor) -> None:
    ing = ingestor(aliases={"kwh_import": {"kWh": "energy_kwh"}})
    now = int(time.time())
    pack = [
        {"bn": f"{U}e1:", "n": "energy", "u": "kWh", "v": 12.5, "t": now - 5},
        {"n": "power", "u": "kW", "v": 2, "t": now - 5},
        {"n": "kwh_import", "u": "kWh", "v": 13.0, "t": now - 4},
        {"n": "energy", "v": 3, "t": now - 3},  # ambiguous without a unit
        {"bn": f"{U}w1:", "n": "volume", "u": "l", "v": 1500, "t": now - 5},
        {"n": "flow", "u": "m3/s", "v": 0.001, "t": now - 5},
    ]
    res = ing.process([Message(None, json.dumps(pack).encode(), "http")])
    assert res.stored == 5
    assert [r.reason for _, r in res.rejected] == ["unknown_quantity"]
    got = stored(ing.store, ("energy_kwh", "power_w", "volume_m3", "flow_m3h"))
    assert got == {
        ("e1", "energy_kwh", now - 5): 12.5,
        ("e1", "power_w", now - 5): 2000.0,
        ("e1", "energy_kwh", now - 4): 13.0,
        ("w1", "volume_m3", now - 5): 1.5,
        ("w1", "flow_m3h", now - 5): pytest.approx(3.6),
    }


@pytest.mark.parametrize(
    ("ingest", "error"),
    [
        ({"aliases": {"energy_kwh": {"kWh": "energy_kwh"}}}, "already a quantity"),
        ({"aliases": {"e": {"kWh": "nope"}}}, "is not a quantity"),
        ({"aliases": {"e": {"m3": "energy_kwh"}}}, "does not fit"),
        ({"ranges": {"voltage_v": [300, 200]}}, "must be below"),
        ({"ranges": {"nope": [0, 1]}}, "not a quantity"),
    ],
)
def test_bad_alias_and_range_config_is_refused_at_load(make_config, ingest, error) -> None:
    with pytest.raises(ConfigError, match=error):
        make_config(data=_data(**ingest))


def test_site_ranges_replace_the_defaults(ingestor) -> None:
    ing = ingestor(ranges={"voltage_v": [180, 260]})
    now = int(time.time())
    msg = json.dumps(
        [{"meter": "e1", "ts": now - 2, "voltage_v": 150}, {"meter": "e1", "ts": now - 1, "voltage_v": 230}]
    )
    res = ing.process([Message(METER_TOPIC.format(meter_id="e1"), msg.encode(), "t")])
    assert res.stored == 1 and [r.reason for _, r in res.rejected] == ["out_of_range"]
    assert "180..260" in res.rejected[0][1].detail


def test_refusals_are_logged_at_warning_rate_limited(ingestor, caplog) -> None:
    ing = ingestor(refusal_log_interval_s=3600)
    topic = METER_TOPIC.format(meter_id="e1")
    with caplog.at_level(logging.WARNING, logger="campusmon.ingest"):
        for _ in range(50):
            ing.process([Message(topic, b"{bad", topic)])
        ing.process([Message(topic, b"[]", topic)])
    lines = [r.getMessage() for r in caplog.records if r.name == "campusmon.ingest"]
    assert len(lines) == 2, lines  # one per (reason, topic), not one per message
    assert "malformed_json" in lines[0] and topic in lines[0]
    assert "bad_structure" in lines[1]


def test_implausible_values_are_not_stored_and_downsampling_still_works(influxdb, make_config) -> None:
    from api.app import create_app

    cfg = make_config(None, influxdb, data=_data())
    now = int(time.time()) // 60 * 60
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as client:
        good = [{"meter": "e1", "ts": now - 120 + i * 10, "power_w": 1000.0 + i} for i in range(6)]
        r = client.post("/api/v1/readings", json=good, params={"meter": "e1"})
        assert r.status_code == 200 and r.json()["stored"] == 6
        for bad in ({"power_w": 1e12}, {"voltage_v": 1e308}):
            r = client.post("/api/v1/readings", json={"meter": "e1", "ts": now - 30, **bad})
            assert r.status_code == 422 and r.json()["rejected"][0]["reason"] == "out_of_range"
        r = client.get("/api/v1/meters/e1/readings", params={"start": now - 600, "end": now, "every": "1m"})
        assert r.status_code == 200, r.text


HUGE = "9" * 400


@pytest.mark.parametrize(
    "body",
    [
        f'{{"meter":"e1","ts":{int(time.time())},"power_w":{HUGE}}}',
        f'{{"meter":"e1","ts":{HUGE},"power_w":1}}',
        "[" * 100_000 + "]" * 100_000,
        f'[{{"bn":"{U}e1:","n":5,"v":1,"t":{int(time.time())}}}]',
    ],
    ids=["400-digit value", "400-digit time", "100k nesting", "n is a number"],
)
def test_http_ingest_answers_422_and_dead_letters_what_once_gave_500(influxdb, make_config, body) -> None:
    from api.app import create_app

    cfg = make_config(None, influxdb, data=_data())
    with TestClient(
        create_app(cfg, start_jobs=False), raise_server_exceptions=False, headers=admin_headers(cfg)
    ) as client:
        r = client.post("/api/v1/readings", content=body.encode())
        assert r.status_code == 422, r.text
        listing = client.get("/api/v1/ingest/rejections")
        assert listing.status_code == 200, listing.text  # a deeply nested payload is listed safely
        item = listing.json()["items"][0]
        assert item["payload_bytes"] == len(body) and item["payload"] == body[:4096]
        assert item["payload_truncated"] == (len(body) > 4096)
        whole = client.get(f"/api/v1/ingest/rejections/{item['id']}/payload")
        assert whole.status_code == 200 and whole.text == body


def test_http_ingest_refuses_an_oversized_body_while_streaming(influxdb, make_config) -> None:
    from api.app import create_app

    cfg = make_config(None, influxdb, data=_data(max_payload_bytes=10_000))
    sent = 0

    def chunks():  # no Content-Length: the server must stop reading, not buffer it all first
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b" " * 1000

    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as client:
        r = client.post("/api/v1/readings", content=chunks())
        assert r.status_code == 413 and "max_payload_bytes" in r.json()["error"]
        r = client.post("/api/v1/readings", content=b" " * 20_000)  # with Content-Length
        assert r.status_code == 413


@pytest.mark.parametrize("bad", ["b1\n", "b1\r", "b 1", "b,1", "b=1", 'b"1', "b\\1", "b\t1"])
def test_config_ids_are_matched_whole(make_config, bad) -> None:
    """A trailing newline passed the old ``^...$`` checks and broke line protocol downstream."""
    with pytest.raises(ConfigError):
        make_config(data={"buildings": [{"id": bad}]})
    with pytest.raises(ConfigError):
        make_config(
            data={"buildings": [{"id": "b1"}], "meters": [{"id": bad, "building": "b1", "kind": "water"}]}
        )
    with pytest.raises(ConfigError):
        make_config(data={"gateways": [{"id": bad}]})
