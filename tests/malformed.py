"""A corpus of hostile payloads, each with where it is sent and the reason it must be refused for.

Shared by the parser's unit tests and the end-to-end tests over a real broker and collector. The
registry the corpus assumes is ``registry(meter, water, gateway)``: keep the two in step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from campusmon.wire import GATEWAY_TOPIC, METER_TOPIC

NOW = int(time.time())
U = "urn:campus:meter:"
MAX_RATE_W = 300_000.0  # the electricity meter's max_rate
MAX_FLOW_M3H = 50.0  # the water meter's max_rate
RATED_A = 60.0
ROLLOVER = 999999.99


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    payload: bytes
    reason: str
    where: str = "meter"  # meter | water | gateway | http | a literal topic
    stored: int = 0  # valid readings the same message still carries

    def topic(self, meter: str, water: str, gateway: str) -> str | None:
        return {
            "meter": METER_TOPIC.format(meter_id=meter),
            "water": METER_TOPIC.format(meter_id=water),
            "gateway": GATEWAY_TOPIC.format(gateway_id=gateway),
            "http": None,
        }.get(self.where, self.where)


def registry(meter: str = "e-dorm-1", water: str = "w-dorm-1", gateway: str = "gw-1") -> dict[str, Any]:
    """The config fragment (meters, gateways) the corpus is written against."""
    return {
        "gateways": [{"id": gateway}, {"id": gateway + "-b"}],
        "meters": [
            {
                "id": meter,
                "kind": "electricity",
                "gateway": gateway,
                "max_rate": MAX_RATE_W,
                "rated_current_a": RATED_A,
                "rollover": ROLLOVER,
            },
            {"id": water, "kind": "water", "max_rate": MAX_FLOW_M3H},
        ],
    }


def _nest(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def corpus(
    meter: str = "e-dorm-1", water: str = "w-dorm-1", now: int = NOW, gateway: str = "gw-1"
) -> list[Case]:
    t = now - 60
    j = lambda o: json.dumps(o).encode()  # noqa: E731
    m = meter
    bn = f"{U}{m}:"
    c = Case
    return [
        # -- not JSON at all
        c("truncated json", b'[{"bn":"' + bn.encode() + b'","n":"energy_kwh","v":1', "malformed_json"),
        c("not json", b"hello meter", "malformed_json"),
        c("binary garbage", bytes(range(256)), "malformed_json"),
        c("empty payload", b"", "malformed_json"),
        c("trailing comma", b'{"meter":"x","ts":1,}', "malformed_json"),
        c("invalid utf-8 in a string", b'{"meter":"' + m.encode() + b'\xff","ts":1}', "malformed_json"),
        c("100k nested arrays", _nest(100_000).encode(), "malformed_json"),
        c(
            "5000-digit integer",
            b'{"meter":"' + m.encode() + b'","ts":1,"power_w":' + b"9" * 5000 + b"}",
            "malformed_json",
        ),
        c("single quotes", b"{'meter': 'x'}", "malformed_json"),
        # -- JSON of the wrong shape
        c("json string", j("energy_kwh=5"), "bad_structure"),
        c("json number", b"42", "bad_structure"),
        c("json null", b"null", "bad_structure"),
        c("json true", b"true", "bad_structure"),
        c("empty array", b"[]", "bad_structure"),
        c("array of numbers", b"[1,2,3]", "bad_structure"),
        c("array of arrays", j([[{"meter": m, "ts": t, "power_w": 1}]]), "bad_structure"),
        c("array of strings", j(["a", "b"]), "bad_structure"),
        c("flat without quantities", j({"meter": m, "ts": t}), "bad_structure"),
        c("senml record without value or name", j([{"x": 1}]), "bad_structure"),
        c("empty object", b"{}", "bad_structure"),
        c("n is a number", j([{"bn": bn, "n": 5, "v": 1, "t": t}]), "bad_structure"),
        c("n is null", j([{"bn": bn, "n": None, "v": 1, "t": t}]), "bad_structure"),
        c("n is an array", j([{"bn": bn, "n": ["power_w"], "v": 1, "t": t}]), "bad_structure"),
        c("bn is a number", j([{"bn": 7, "n": "power_w", "v": 1, "t": t}]), "bad_structure"),
        c("bn is an object", j([{"bn": {"x": 1}, "n": "power_w", "v": 1, "t": t}]), "bad_structure"),
        c("10001 records", j([{"x": 1}] * 10_001), "too_many_records"),
        c("300 KiB payload", j({"meter": m, "ts": t, "power_w": 1, "pad": "x" * 300_000}), "too_large"),
        # -- numbers that are not numbers
        c("NaN literal", f'[{{"bn":"{bn}","n":"power_w","v":NaN,"t":{t}}}]'.encode(), "non_finite"),
        c("Infinity literal", f'{{"meter":"{m}","ts":{t},"power_w":Infinity}}'.encode(), "non_finite"),
        c("-Infinity register", f'{{"meter":"{m}","ts":{t},"energy_kwh":-Infinity}}'.encode(), "non_finite"),
        c("huge exponent", f'{{"meter":"{m}","ts":{t},"power_w":1e999}}'.encode(), "non_finite"),
        c("400-digit value", f'{{"meter":"{m}","ts":{t},"power_w":{"9" * 400}}}'.encode(), "non_finite"),
        c(
            "400-digit senml value",
            f'[{{"bn":"{bn}","n":"power_w","v":{"9" * 400},"t":{t}}}]'.encode(),
            "non_finite",
        ),
        c("400-digit time", f'{{"meter":"{m}","ts":{"9" * 400},"power_w":1}}'.encode(), "non_finite"),
        c(
            "400-digit senml time",
            f'[{{"bn":"{bn}","n":"power_w","v":1,"t":{"9" * 400}}}]'.encode(),
            "non_finite",
        ),
        c(
            "400-digit base time",
            f'[{{"bn":"{bn}","bt":{"9" * 400},"n":"power_w","v":1}}]'.encode(),
            "non_finite",
        ),
        c(
            "overflow on unit conversion",
            j([{"bn": bn, "n": "power_w", "u": "kW", "v": 1e306, "t": t}]),
            "non_finite",
        ),
        c("string value", j({"meter": m, "ts": t, "power_w": "3.5"}), "bad_value"),
        c("boolean value", j({"meter": m, "ts": t, "power_w": True}), "bad_value"),
        c("null value", j({"meter": m, "ts": t, "power_w": None}), "bad_value"),
        c("object value", j({"meter": m, "ts": t, "power_w": {"v": 1}}), "bad_value"),
        c("deeply nested value", f'{{"meter":"{m}","ts":{t},"power_w":{_nest(500)}}}'.encode(), "bad_value"),
        c("senml value null", j([{"bn": bn, "n": "power_w", "v": None, "t": t}]), "bad_value"),
        c("senml string value", j([{"bn": bn, "n": "power_w", "vs": "on", "t": t}]), "bad_value"),
        c("senml boolean value", j([{"bn": bn, "n": "power_w", "vb": True, "t": t}]), "bad_value"),
        c("senml name without value", j([{"bn": bn, "n": "power_w", "t": t}]), "bad_value"),
        c("power factor above 1", j({"meter": m, "ts": t, "power_factor": 1.7}), "bad_value"),
        c("negative voltage", j({"meter": m, "ts": t, "voltage_v": -230}), "bad_value"),
        c("negative frequency", j({"meter": m, "ts": t, "frequency_hz": -50}), "bad_value"),
        c("negative flow", j({"meter": water, "ts": t, "flow_m3h": -1}), "bad_value", "water"),
        c("negative register", j({"meter": m, "ts": t, "energy_kwh": -5}), "negative_cumulative"),
        c(
            "negative water register",
            j({"meter": water, "ts": t, "volume_m3": -0.1}),
            "negative_cumulative",
            "water",
        ),
        # -- physically impossible
        c("1e308 volts", j({"meter": m, "ts": t, "voltage_v": 1e308}), "out_of_range"),
        c("1e12 W over max_rate", j({"meter": m, "ts": t, "power_w": 1e12}), "out_of_range"),
        c("power just over max_rate", j({"meter": m, "ts": t, "power_w": MAX_RATE_W * 1.01}), "out_of_range"),
        c(
            "negative power over max_rate",
            j({"meter": m, "ts": t, "power_w": -MAX_RATE_W * 2}),
            "out_of_range",
        ),
        c("phase power over max_rate", j({"meter": m, "ts": t, "power_l2_w": 1e9}), "out_of_range"),
        c("frequency 500 Hz", j({"meter": m, "ts": t, "frequency_hz": 500}), "out_of_range"),
        c("frequency 0 Hz", j({"meter": m, "ts": t, "frequency_hz": 0}), "out_of_range"),
        c("current far above rating", j({"meter": m, "ts": t, "current_a": RATED_A * 100}), "out_of_range"),
        c("energy above the rollover", j({"meter": m, "ts": t, "energy_kwh": ROLLOVER * 10}), "out_of_range"),
        c(
            "flow above max_rate",
            j({"meter": water, "ts": t, "flow_m3h": MAX_FLOW_M3H * 10}),
            "out_of_range",
            "water",
        ),
        c(
            "flow in m3/s above max_rate",
            j([{"bn": f"{U}{water}:", "n": "flow_m3h", "u": "m3/s", "v": 1, "t": t}]),
            "out_of_range",
            "water",
        ),
        # -- quantities, units and aliases
        c(
            "unknown quantity senml",
            j([{"bn": bn, "n": "temperature_c", "v": 21, "t": t}]),
            "unknown_quantity",
        ),
        c("unknown quantity flat", j({"meter": m, "ts": t, "kw": 3}), "unknown_quantity"),
        c("1000-character quantity", j({"meter": m, "ts": t, "q" * 1000: 3}), "unknown_quantity"),
        c("empty quantity after bn", j([{"bn": bn, "v": 3, "t": t}]), "unknown_quantity"),
        c("alias without a unit", j([{"bn": bn, "n": "energy", "v": 3, "t": t}]), "unknown_quantity"),
        c(
            "alias with a unit that does not fit",
            j([{"bn": bn, "n": "power", "u": "kWh", "v": 3, "t": t}]),
            "unknown_quantity",
        ),
        c("water quantity on electricity meter", j({"meter": m, "ts": t, "volume_m3": 3}), "wrong_kind"),
        c(
            "electricity quantity on water meter",
            j({"meter": water, "ts": t, "energy_kwh": 3}),
            "wrong_kind",
            "water",
        ),
        c("wrong unit", j([{"bn": bn, "n": "energy_kwh", "u": "m3", "v": 3, "t": t}]), "bad_unit"),
        c("unknown unit", j([{"bn": bn, "n": "power_w", "u": "horsepower", "v": 3, "t": t}]), "bad_unit"),
        c("unit not a string", j([{"bn": bn, "n": "power_w", "u": 5, "v": 3, "t": t}]), "bad_unit"),
        c("base unit not a string", j([{"bn": bn, "bu": [1], "n": "power_w", "v": 3, "t": t}]), "bad_unit"),
        # -- meters, gateways and topics
        c("unknown meter", j({"meter": "no-such-meter", "ts": t, "power_w": 3}), "unknown_meter", "http"),
        c(
            "unknown meter on a gateway",
            j([{"bn": f"{U}no-such-meter:", "n": "power_w", "v": 3, "t": t}]),
            "unknown_meter",
            "gateway",
        ),
        c("meter id with space", j({"meter": "bad meter", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id too long", j({"meter": "m" * 80, "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c(
            "meter id with trailing newline",
            j({"meter": m + "\n", "ts": t, "power_w": 3}),
            "bad_meter_id",
            "http",
        ),
        c(
            "meter id with carriage return",
            j({"meter": m + "\r", "ts": t, "power_w": 3}),
            "bad_meter_id",
            "http",
        ),
        c("meter id with tab", j({"meter": "e\tx", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with comma", j({"meter": "e,x=1", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with equals", j({"meter": "e=x", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with quote", j({"meter": 'e"x', "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with backslash", j({"meter": "e\\x", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with NUL", j({"meter": "e\u0000x", "ts": t, "power_w": 3}), "bad_meter_id", "http"),
        c("meter id with lone surrogate", b'{"meter":"e\\ud800","ts":1,"power_w":3}', "bad_meter_id", "http"),
        c(
            "newline in senml meter",
            j([{"bn": f"{U}{m}\n:", "n": "power_w", "v": 3, "t": t}]),
            "bad_meter_id",
            "gateway",
        ),
        c("meter id is a number", j({"meter": 5, "ts": t, "power_w": 3}), "missing_meter", "http"),
        c("meter id empty", j({"meter": "", "ts": t, "power_w": 3}), "missing_meter", "http"),
        c(
            "urn without meter",
            j([{"bn": f"{U}:", "n": "power_w", "v": 3, "t": t}]),
            "missing_meter",
            "gateway",
        ),
        c("name outside urn", j([{"n": "other:thing:power_w", "v": 3, "t": t}]), "missing_meter", "gateway"),
        c("bare name on a gateway topic", j([{"n": "power_w", "v": 3, "t": t}]), "missing_meter", "gateway"),
        c(
            "senml naming another meter",
            j([{"bn": f"{U}{water}:", "n": "volume_m3", "v": 3, "t": t}]),
            "topic_mismatch",
        ),
        c("flat naming another meter", j({"meter": water, "ts": t, "volume_m3": 3}), "topic_mismatch"),
        c(
            "unknown gateway",
            j([{"bn": bn, "n": "power_w", "v": 3, "t": t}]),
            "unknown_gateway",
            "campus/v1/gateways/gw-evil/readings",
        ),
        c(
            "gateway carrying a meter bound to none",
            j([{"bn": f"{U}{water}:", "n": "volume_m3", "v": 3, "t": t}]),
            "meter_not_bound",
            "gateway",
        ),
        c(
            "gateway carrying another gateway's meter",
            j([{"bn": bn, "n": "power_w", "v": 3, "t": t}]),
            "meter_not_bound",
            f"campus/v1/gateways/{gateway}-b/readings",
        ),
        c(
            "gateway id with a space",
            j([{"bn": bn, "n": "power_w", "v": 3, "t": t}]),
            "bad_topic",
            "campus/v1/gateways/gw evil/readings",
        ),
        c(
            "meter topic with a bad id",
            j({"meter": m, "ts": t, "power_w": 3}),
            "bad_meter_id",
            "campus/v1/meters/e,x/readings",
        ),
        c(
            "status topic",
            j({"meter": m, "ts": t, "power_w": 3}),
            "bad_topic",
            f"campus/v1/meters/{m}/status",
        ),
        c(
            "topic outside the tree",
            j({"meter": m, "ts": t, "power_w": 3}),
            "bad_topic",
            "campus/v2/meters/x/readings",
        ),
        # -- duplicates
        c(
            "two records same name and time",
            j([{"bn": bn, "n": "power_w", "v": 3, "t": t}, {"n": "power_w", "v": 4, "t": t}]),
            "duplicate_record",
            stored=1,
        ),
        c(
            "same key twice in a flat object",
            f'{{"meter":"{m}","ts":{t},"power_w":1,"power_w":2}}'.encode(),
            "duplicate_record",
        ),
        c(
            "flat list repeating a reading",
            j([{"meter": m, "ts": t, "power_w": 1}, {"meter": m, "ts": t, "power_w": 2}]),
            "duplicate_record",
            stored=1,
        ),
        # -- timestamps
        c("no timestamp flat", j({"meter": m, "power_w": 3}), "missing_timestamp"),
        c("no timestamp senml", j([{"bn": bn, "n": "power_w", "v": 3}]), "missing_timestamp"),
        c("relative senml time", j([{"bn": bn, "n": "power_w", "v": 3, "t": -60}]), "missing_timestamp"),
        c("naive iso time", j({"meter": m, "ts": "2026-01-01T00:00:00", "power_w": 3}), "missing_timestamp"),
        c("garbage time string", j({"meter": m, "ts": "yesterday", "power_w": 3}), "missing_timestamp"),
        c("time is a boolean", j({"meter": m, "ts": True, "power_w": 3}), "bad_value"),
        c("time is null", j({"meter": m, "ts": None, "power_w": 3}), "bad_value"),
        c("senml time is a string", j([{"bn": bn, "n": "power_w", "v": 3, "t": str(t)}]), "bad_value"),
        c("timestamp in milliseconds", j({"meter": m, "ts": t * 1000, "power_w": 3}), "timestamp_future"),
        c("far future", j({"meter": m, "ts": now + 86400 * 365, "power_w": 3}), "timestamp_future"),
        c("year 9999", j({"meter": m, "ts": "9999-12-31T23:59:59+00:00", "power_w": 3}), "timestamp_future"),
        c("1e308 seconds", j({"meter": m, "ts": 1e308, "power_w": 3}), "timestamp_future"),
        c("before 2000", j({"meter": m, "ts": 900000000, "power_w": 3}), "timestamp_too_old"),
        c("year 1", j({"meter": m, "ts": "0001-01-01T00:00:00+14:00", "power_w": 3}), "timestamp_too_old"),
    ]
