"""The reading contract, as a pure function: what is accepted, converted, and refused with which reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from campusmon.config import parse_config
from campusmon.ingest import rules_from
from campusmon.reading import Reading
from campusmon.wire import GATEWAY_TOPIC, METER_TOPIC, REASONS, MeterRule, Rules, encode_senml, parse_payload
from tests.malformed import NOW, Case, corpus, registry

KINDS = {"e-dorm-1": "electricity", "w-dorm-1": "water"}
REGISTRY = {m: MeterRule(k) for m, k in KINDS.items()}
RULES = Rules(meters=REGISTRY, strict=True)
GW = GATEWAY_TOPIC.format(gateway_id="gw-1")


def _registry_rules() -> Rules:
    reg = registry()
    data = {
        "buildings": [{"id": "dorm-1"}],
        "gateways": reg["gateways"],
        "meters": [{**mm, "building": "dorm-1"} for mm in reg["meters"]],
    }
    return rules_from(parse_config(data, "corpus", environ={}))


REGISTRY_RULES = _registry_rules()


def test_senml_pack_with_base_name_and_base_time() -> None:
    pack = [
        {"bn": "urn:campus:meter:e-dorm-1:", "bt": NOW - 100, "n": "energy_kwh", "u": "kWh", "v": 1234.5},
        {"n": "power_w", "u": "kW", "v": 2.5, "t": 10},
        {"bn": "urn:campus:meter:w-dorm-1:", "n": "volume_m3", "u": "l", "v": 1500, "t": 20},
        {"n": "flow_m3h", "u": "l/s", "v": 0.5, "t": 20},
    ]
    res = parse_payload(json.dumps(pack), GW, RULES, NOW)
    assert res.rejections == []
    assert res.readings == [
        Reading("e-dorm-1", "energy_kwh", 1234.5, NOW - 100),
        Reading("e-dorm-1", "power_w", 2500.0, NOW - 90),
        Reading("w-dorm-1", "volume_m3", 1.5, NOW - 80),
        Reading("w-dorm-1", "flow_m3h", pytest.approx(1.8), NOW - 80),
    ]


def test_per_meter_topic_allows_bare_quantity_names() -> None:
    res = parse_payload(
        json.dumps([{"n": "energy_kwh", "u": "Wh", "v": 5000, "t": NOW}]),
        METER_TOPIC.format(meter_id="e-dorm-1"),
        RULES,
        NOW,
    )
    assert res.readings == [Reading("e-dorm-1", "energy_kwh", 5.0, NOW)]


def test_bare_names_need_a_meter_topic() -> None:
    res = parse_payload(json.dumps([{"n": "energy_kwh", "v": 5, "t": NOW}]), GW, RULES, NOW)
    assert [r.reason for r in res.rejections] == ["missing_meter"]


def test_flat_object_and_list_with_iso_time() -> None:
    one = {"meter": "e-dorm-1", "ts": NOW - 5, "energy_kwh": 10.25, "power_w": 300}
    two = {"meter": "w-dorm-1", "ts": "2026-11-01T08:00:00+08:00", "volume_m3": 4.5}
    res = parse_payload(json.dumps([one, two]), None, RULES, NOW)
    assert res.rejections == []
    assert Reading("e-dorm-1", "energy_kwh", 10.25, NOW - 5) in res.readings
    expected_ts = int(datetime(2026, 11, 1, 0, 0, tzinfo=UTC).timestamp())  # 08:00+08:00
    assert Reading("w-dorm-1", "volume_m3", 4.5, expected_ts) in res.readings


def test_fractional_seconds_are_truncated_not_rounded_up() -> None:
    res = parse_payload(json.dumps({"meter": "e-dorm-1", "ts": NOW - 0.9, "power_w": 1}), None, RULES, NOW)
    assert res.readings[0].ts == int(NOW - 0.9)


CORPUS = corpus()


@pytest.mark.parametrize("case", CORPUS, ids=[c.label for c in CORPUS])
def test_every_malformed_payload_is_refused_with_its_reason(case: Case) -> None:
    res = parse_payload(case.payload, case.topic("e-dorm-1", "w-dorm-1", "gw-1"), REGISTRY_RULES, NOW)
    assert len(res.readings) == case.stored, case.label
    assert {r.reason for r in res.rejections} == {case.reason}, case.label
    assert all(r.detail for r in res.rejections)
    json.dumps([r.record for r in res.rejections])  # what is kept of a refusal is always printable


def test_corpus_is_large_and_covers_every_reason_the_parser_gives() -> None:
    assert len(CORPUS) >= 80
    parser_reasons = set(REASONS) - {"store_rejected", "internal_error"}
    assert {c.reason for c in CORPUS} == parser_reasons


def test_valid_records_survive_bad_neighbours_in_one_message() -> None:
    pack = [
        {"bn": "urn:campus:meter:e-dorm-1:", "n": "energy_kwh", "v": 100.0, "t": NOW - 30},
        {"n": "temperature_c", "v": 20, "t": NOW - 30},
        {"n": "power_w", "v": 1e3, "t": NOW - 30},
        {"n": "energy_kwh", "v": -1, "t": NOW - 20},
        {"n": "energy_kwh", "v": 100.5, "t": NOW - 10},
    ]
    res = parse_payload(json.dumps(pack), GW, RULES, NOW)
    assert [r.value for r in res.readings] == [100.0, 1000.0, 100.5]
    assert sorted(r.reason for r in res.rejections) == ["negative_cumulative", "unknown_quantity"]


def test_unknown_meters_pass_when_registry_is_not_strict() -> None:
    lax = Rules(meters=REGISTRY, strict=False)
    res = parse_payload(json.dumps({"meter": "new-meter", "ts": NOW, "power_w": 3}), None, lax, NOW)
    assert res.readings == [Reading("new-meter", "power_w", 3.0, NOW)]


def test_oversized_payload_is_refused_before_parsing() -> None:
    small = Rules(meters=REGISTRY, max_payload_bytes=100)
    res = parse_payload(b"[" + b" " * 200 + b"]", None, small, NOW)
    assert [r.reason for r in res.rejections] == ["too_large"]


def test_non_readings_topic_is_refused() -> None:
    res = parse_payload(b"{}", "campus/v1/meters/x/status", RULES, NOW)
    assert [r.reason for r in res.rejections] == ["bad_topic"]


def test_encode_senml_round_trips() -> None:
    rs = [
        Reading("e-dorm-1", "energy_kwh", 5.5, NOW),
        Reading("e-dorm-1", "power_w", 120.0, NOW),
        Reading("w-dorm-1", "volume_m3", 0.25, NOW - 1),
    ]
    back = parse_payload(encode_senml(rs), GW, RULES, NOW)
    assert back.rejections == [] and back.readings == rs
