"""Hostile MQTT traffic through a real Mosquitto, collector and InfluxDB: refused with reasons, never stalls.

The parser is the oracle for what a message should yield (it is proven total and exact on its own in
test_wire*.py); these tests prove the pipeline around it: every valid reading stored exactly, every
refusal dead-lettered once per message, the worker alive at the end, nothing left unacked.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from campusmon.deadletter import payload_text
from campusmon.influx import open_store
from campusmon.ingest import rules_from
from campusmon.wire import METER_TOPIC, parse_payload
from collectors.mqtt_collector import MqttCollector
from firmware_sim.mqtt_meters import BackpressurePublisher
from tests.helpers import stored, wait_until
from tests.malformed import corpus, registry
from tests.test_wire_fuzz import DOC

E, W, GW = "e1", "w1", "gw-1"
QUANTITIES = ("energy_kwh", "power_w", "voltage_v", "volume_m3", "flow_m3h")
# Topics the collector reads (others never reach it; docs/wire-format.md says which are read).
TOPICS = st.sampled_from(
    [
        f"campus/v1/meters/{E}/readings",
        f"campus/v1/meters/{W}/readings",
        f"campus/v1/gateways/{GW}/readings",
        "campus/v1/gateways/gw-evil/readings",
        "campus/v1/meters//readings",
    ]
)
_ROUND = iter(range(1, 1000))


@pytest.fixture
def collector(mosquitto, influxdb, make_config):
    reg = registry(E, W, GW)
    data = {
        "buildings": [{"id": "b1"}],
        "gateways": reg["gateways"],
        "meters": [{**m, "building": "b1"} for m in reg["meters"]],
    }
    cfg = make_config(mosquitto, influxdb, data=data)
    c = MqttCollector(cfg).start()
    c.store.ensure_database()
    assert c.wait_connected(10)
    yield c
    c.stop()


def _all_stored(store) -> dict:
    return stored(store, QUANTITIES)


def _send(collector, messages: list[tuple[str, bytes]], tag: str) -> None:
    pub = BackpressurePublisher("127.0.0.1", collector.cfg.mqtt.port, f"{tag}-{collector.cfg.mqtt.client_id}")
    for topic, payload in messages:
        pub.publish(topic, payload)
    pub.close()


def _expect(collector, messages: list[tuple[str, bytes]], now: float) -> tuple[dict, int]:
    """What the pipeline must end with: the readings to store, and the messages to dead-letter."""
    rules = rules_from(collector.cfg)
    want: dict = {}
    refused_msgs = 0
    for topic, payload in messages:
        res = parse_payload(payload, topic, rules, now)
        for r in res.readings:
            want[r.key] = r.value  # across messages the last write of a point wins
        refused_msgs += bool(res.rejections)
    return want, refused_msgs


def test_hostile_corpus_over_mqtt_is_refused_and_neighbours_stored(collector) -> None:
    now = int(time.time())
    # The collector reads campus/v1/meters/# and campus/v1/gateways/#; other trees never reach it.
    cases = [c for c in corpus(E, W, now, GW) if not c.where.startswith("campus/v2/")]
    messages: list[tuple[str, bytes]] = []
    valid: dict = {}
    for i, case in enumerate(cases):
        topic = case.topic(E, W, GW)
        if topic is None:  # HTTP-only cases go to the gateway topic, which carries any meter
            topic = f"campus/v1/gateways/{GW}/readings"
        messages.append((topic, case.payload))
        good = {"meter": E, "ts": now - 5000 + i, "energy_kwh": 100.0 + i}
        messages.append((METER_TOPIC.format(meter_id=E), json.dumps(good).encode()))
        valid[(E, "energy_kwh", now - 5000 + i)] = 100.0 + i
    _send(collector, messages, "corpus")
    store = open_store(collector.cfg)
    wait_until(lambda: valid.items() <= _all_stored(store).items(), 60, 0.3, "valid neighbours stored")
    dead = collector.ingestor.dead
    wait_until(
        lambda: len(dead.page(limit=1000)) >= len(cases), 30, 0.2, "one dead letter per hostile message"
    )
    rows = dead.page(limit=1000)
    assert len(rows) == len(cases)
    reasons = dead.reasons_of([r.id for r in rows])
    by_payload: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        by_payload.setdefault((row.source, row.payload), set()).update(reasons[row.id])
    for case, (topic, _) in zip(cases, messages[::2], strict=True):
        assert case.reason in by_payload[(topic, payload_text(case.payload))], case.label
    extra = set(_all_stored(store)) - set(valid)
    assert extra == {(E, "power_w", now - 60)}  # the first of each duplicate pair (both pairs share it)
    assert _all_stored(store)[(E, "power_w", now - 60)] in (3.0, 1.0)
    assert all(t.is_alive() for t in collector._threads)
    wait_until(lambda: collector.inbox.qsize() == 0, 10, 0.1, "inbox drained")


def test_the_one_packet_that_stopped_all_ingest(collector) -> None:
    """A number where SenML wants a string killed the worker; then nothing more was stored."""
    now = int(time.time())
    poison = json.dumps([{"bn": f"urn:campus:meter:{E}:", "n": 5, "v": 1, "t": now - 10}]).encode()
    after = json.dumps({"meter": E, "ts": now - 5, "energy_kwh": 42.0}).encode()
    topic = METER_TOPIC.format(meter_id=E)
    _send(collector, [(topic, poison), (topic, after)], "poison")
    store = open_store(collector.cfg)
    wait_until(lambda: _all_stored(store).get((E, "energy_kwh", now - 5)) == 42.0, 30, 0.2, "reading after")
    wait_until(lambda: collector.ingestor.dead.counts(), 10, 0.1, "the refusal kept")
    assert collector.ingestor.dead.counts() == {"bad_structure": 1}
    assert all(t.is_alive() for t in collector._threads)


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each step would wait on a live pipeline
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    hostile=st.lists(
        st.tuples(TOPICS, st.one_of(DOC.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200))),
        min_size=40,
        max_size=40,
    )
)
def test_random_hostile_stream_interleaved_with_valid_readings(collector, hostile) -> None:
    now = time.time()
    base = int(now) - 3000 - 50 * next(_ROUND)  # each example stores at fresh times
    messages: list[tuple[str, bytes]] = []
    for i, (topic, payload) in enumerate(hostile):
        messages.append((topic, payload))
        good = {"meter": E, "ts": base + i, "energy_kwh": 1000.0 + i}
        messages.append((METER_TOPIC.format(meter_id=E), json.dumps(good).encode()))
    want, refused = _expect(collector, messages, now)
    dead = collector.ingestor.dead
    rows_before = len(dead.page(limit=10_000))
    _send(collector, messages, "fuzz")
    store = open_store(collector.cfg)

    def missing() -> dict:
        got = _all_stored(store)
        return {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}

    try:
        wait_until(lambda: not missing(), 60, 0.5, "every valid reading stored")
    except AssertionError:
        assert missing() == {}  # shows (wanted, stored) for each reading not as expected
    wait_until(lambda: len(dead.page(limit=10_000)) - rows_before >= refused, 30, 0.2, "refusals kept")
    assert len(dead.page(limit=10_000)) - rows_before == refused
    assert all(t.is_alive() for t in collector._threads)
