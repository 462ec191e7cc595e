"""The parser is total: any bytes, any JSON document, in any field, ends as readings plus refusals.

The parser has a last-resort net that turns an exception into an ``internal_error`` refusal; these
tests assert that the net is never needed, so a parser bug cannot hide behind it.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campusmon.wire import INTERNAL_ERROR, REASONS, full_id, parse_payload
from tests.malformed import NOW
from tests.test_wire import REGISTRY_RULES

TOPICS = st.sampled_from(
    [
        None,
        "campus/v1/meters/e-dorm-1/readings",
        "campus/v1/meters/w-dorm-1/readings",
        "campus/v1/gateways/gw-1/readings",
        "campus/v1/gateways/gw-evil/readings",
        "campus/v1/meters/e-dorm-1/status",
        "campus/v1/meters//readings",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        ["urn:campus:meter:e-dorm-1:", "energy_kwh", "power_w", "kWh", "W", "m3", "energy", "e-dorm-1"]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "bn",
        "bt",
        "bu",
        "bver",
        "n",
        "u",
        "v",
        "t",
        "vs",
        "vb",
        "meter",
        "ts",
        "power_w",
        "energy_kwh",
        "volume_m3",
        "flow_m3h",
        "voltage_v",
    ]
)
RECORD = st.dictionaries(KEYS, JSON, max_size=7)
DOC = st.lists(RECORD, max_size=6) | RECORD | JSON


def _check(payload: bytes, topic: str | None) -> None:
    res = parse_payload(payload, topic, REGISTRY_RULES, NOW)
    assert not any(r.reason == INTERNAL_ERROR for r in res.rejections), res.rejections
    assert all(r.reason in REASONS and r.detail for r in res.rejections)
    json.dumps([r.record for r in res.rejections])  # refusals are always storable and printable
    for r in res.readings:
        assert full_id(r.meter) and isinstance(r.ts, int) and math.isfinite(r.value)
        assert REGISTRY_RULES.min_ts <= r.ts <= NOW + REGISTRY_RULES.max_future_s


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), TOPICS)
def test_arbitrary_bytes(payload: bytes, topic: str | None) -> None:
    _check(payload, topic)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOC, TOPICS)
def test_arbitrary_json_in_every_field(doc: object, topic: str | None) -> None:
    _check(json.dumps(doc).encode(), topic)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from("[{"))
def test_deep_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = '"a":' if opener == "{" else ""
    body = (opener + inner) * depth
    body = body[: -len(inner)] + "1" if inner else body + "1"
    _check((body + closer * depth).encode(), None)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=300, max_value=6000), st.sampled_from(["v", "t", "bt"]))
def test_huge_numbers_in_senml(digits: int, key: str) -> None:
    rec = {"bn": "urn:campus:meter:e-dorm-1:", "n": "power_w", "v": 1, "t": NOW - 10}
    text = json.dumps([rec]).replace(f'"{key}": {json.dumps(rec.get(key, 0))}', f'"{key}": {"9" * digits}')
    if key == "bt":
        text = text.replace('"bn"', f'"bt": {"9" * digits}, "bn"', 1)
    _check(text.encode(), "campus/v1/gateways/gw-1/readings")
