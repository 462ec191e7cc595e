"""The reading contract: MQTT topics and payloads (SenML JSON, RFC 8428, or flat JSON).

Parsing is pure: bytes in, accepted readings and reasoned rejections out. The MQTT collector and
HTTP ingest share it, so a payload is accepted or rejected the same way whichever way it came.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campusmon.quantities import CUMULATIVE, QUANTITIES, UnitError, convert
from campusmon.reading import Reading

TOPIC_ROOT = "campus/v1"
METER_TOPIC = TOPIC_ROOT + "/meters/{meter_id}/readings"
GATEWAY_TOPIC = TOPIC_ROOT + "/gateways/{gateway_id}/readings"
GATEWAY_STATUS_TOPIC = TOPIC_ROOT + "/gateways/{gateway_id}/status"
COLLECTOR_STATUS_TOPIC = TOPIC_ROOT + "/collectors/{client_id}/status"
READING_SUBSCRIPTIONS = (TOPIC_ROOT + "/meters/+/readings", TOPIC_ROOT + "/gateways/+/readings")
URN_PREFIX = "urn:campus:meter:"

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SENML_RELATIVE_LIMIT = 2**28  # RFC 8428 §4.5.3: smaller times are relative to "now"

# Stable rejection reasons: used as metric labels and in the dead-letter store.
MALFORMED_JSON = "malformed_json"
BAD_STRUCTURE = "bad_structure"
BAD_TOPIC = "bad_topic"
TOO_LARGE = "too_large"
MISSING_METER = "missing_meter"
BAD_METER_ID = "bad_meter_id"
UNKNOWN_METER = "unknown_meter"
UNKNOWN_QUANTITY = "unknown_quantity"
WRONG_KIND = "wrong_kind"
BAD_UNIT = "bad_unit"
BAD_VALUE = "bad_value"
NON_FINITE = "non_finite"
NEGATIVE_CUMULATIVE = "negative_cumulative"
MISSING_TIMESTAMP = "missing_timestamp"
TIMESTAMP_FUTURE = "timestamp_future"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
STORE_REJECTED = "store_rejected"
REASONS = (
    MALFORMED_JSON,
    BAD_STRUCTURE,
    BAD_TOPIC,
    TOO_LARGE,
    MISSING_METER,
    BAD_METER_ID,
    UNKNOWN_METER,
    UNKNOWN_QUANTITY,
    WRONG_KIND,
    BAD_UNIT,
    BAD_VALUE,
    NON_FINITE,
    NEGATIVE_CUMULATIVE,
    MISSING_TIMESTAMP,
    TIMESTAMP_FUTURE,
    TIMESTAMP_TOO_OLD,
    STORE_REJECTED,
)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    record: Any = None


@dataclass(slots=True)
class ParseResult:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rules:
    """What a valid reading looks like; ``meter_kind`` returns None for an unknown meter."""

    meter_kind: Callable[[str], str | None] = lambda _m: None
    strict: bool = False
    max_future_s: int = 300
    min_ts: int = 946684800
    max_payload_bytes: int = 256 * 1024


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def topic_meter(topic: str | None) -> str | None:
    """The meter a per-meter topic names, '' for a gateway topic, None for anything else."""
    if topic is None:
        return ""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:2]) == TOPIC_ROOT and parts[4] == "readings":
        if parts[2] == "meters":
            return parts[3]
        if parts[2] == "gateways":
            return ""
    return None


def parse_payload(
    payload: bytes | str, topic: str | None, rules: Rules, now: float | None = None
) -> ParseResult:
    """Turn one message into readings; every record that fails says why, the rest still count."""
    res = ParseResult()
    now_s = time.time() if now is None else now
    default_meter = topic_meter(topic)
    if default_meter is None:
        res.rejections.append(Rejection(BAD_TOPIC, f"topic {topic!r} is not a readings topic"))
        return res
    if len(payload) > rules.max_payload_bytes:
        res.rejections.append(
            Rejection(TOO_LARGE, f"payload of {len(payload)} bytes exceeds {rules.max_payload_bytes}")
        )
        return res
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except _Reject as e:
        res.rejections.append(Rejection(e.reason, e.detail))
        return res
    except (ValueError, UnicodeDecodeError) as e:
        res.rejections.append(Rejection(MALFORMED_JSON, f"not valid JSON: {e}"))
        return res
    if isinstance(doc, dict):
        records: list[Any] = [doc]
    elif isinstance(doc, list):
        records = doc
        if not records:
            res.rejections.append(Rejection(BAD_STRUCTURE, "empty array: no records"))
    else:
        res.rejections.append(
            Rejection(BAD_STRUCTURE, f"expected a SenML pack (array) or an object, got {type(doc).__name__}")
        )
        return res

    base: dict[str, Any] = {"bn": "", "bt": 0.0, "bu": None}
    for rec in records:
        if not isinstance(rec, dict):
            res.rejections.append(
                Rejection(BAD_STRUCTURE, f"record is {type(rec).__name__}, not an object", rec)
            )
            continue
        try:
            if "meter" in rec:
                _flat(rec, rules, now_s, res)
            else:
                _senml(rec, base, default_meter, rules, now_s, res)
        except _Reject as e:
            res.rejections.append(Rejection(e.reason, e.detail, rec))
    return res


def _reject_constant(name: str) -> float:
    raise _Reject(NON_FINITE, f"{name} is not a number")


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Reject(BAD_VALUE, f"{what} must be a number, got {json.dumps(v)[:40]}")
    if not math.isfinite(v):
        raise _Reject(NON_FINITE, f"{what} is not finite")
    return float(v)


def _timestamp(t: Any, rules: Rules, now_s: float) -> int:
    if isinstance(t, str):
        try:
            dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise _Reject(MISSING_TIMESTAMP, f"timestamp {t!r} is not ISO 8601 or Unix seconds") from None
        if dt.tzinfo is None:
            raise _Reject(MISSING_TIMESTAMP, f"timestamp {t!r} has no UTC offset")
        t = dt.timestamp()
    ts = _number(t, "timestamp")
    if ts < _SENML_RELATIVE_LIMIT:
        raise _Reject(
            MISSING_TIMESTAMP,
            "timestamp missing or relative: readings must carry the absolute Unix time they were taken",
        )
    if ts > 1e11:  # milliseconds sent where seconds are expected
        raise _Reject(TIMESTAMP_FUTURE, f"timestamp {ts:.0f} looks like milliseconds; send Unix seconds")
    if ts < rules.min_ts:
        raise _Reject(TIMESTAMP_TOO_OLD, f"timestamp {ts:.0f} is before {rules.min_ts}")
    if ts > now_s + rules.max_future_s:
        raise _Reject(TIMESTAMP_FUTURE, f"timestamp {ts:.0f} is {ts - now_s:.0f} s in the future")
    return int(ts)


def _meter_id(meter: Any) -> str:
    if not isinstance(meter, str) or not meter:
        raise _Reject(MISSING_METER, "no meter id")
    if not _ID_RE.match(meter):
        raise _Reject(BAD_METER_ID, f"meter id {meter[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return meter


def _reading(meter: str, name: Any, value: Any, unit: Any, ts: int, rules: Rules) -> Reading:
    if not isinstance(name, str) or name not in QUANTITIES:
        raise _Reject(
            UNKNOWN_QUANTITY, f"unknown quantity {name!r} (see docs/wire-format.md for the vocabulary)"
        )
    q = QUANTITIES[name]
    kind = rules.meter_kind(meter)
    if kind is None and rules.strict:
        raise _Reject(UNKNOWN_METER, f"meter {meter!r} is not in the registry")
    if kind is not None and kind != q.kind:
        raise _Reject(
            WRONG_KIND, f"{name} is a {q.kind.value} quantity but meter {meter!r} is a {kind} meter"
        )
    v = _number(value, name)
    if unit is not None and not isinstance(unit, str):
        raise _Reject(BAD_UNIT, f"unit must be a string, got {json.dumps(unit)[:40]}")
    try:
        v = convert(q, v, unit)
    except UnitError as e:
        raise _Reject(BAD_UNIT, str(e)) from None
    if v < 0 and name in CUMULATIVE:
        raise _Reject(NEGATIVE_CUMULATIVE, f"{name} is a cumulative register and cannot be negative ({v})")
    if v < 0 and not q.signed:
        raise _Reject(BAD_VALUE, f"{name} cannot be negative ({v})")
    if name == "power_factor" and not -1.0 <= v <= 1.0:
        raise _Reject(BAD_VALUE, f"power_factor {v} is outside -1..1")
    return Reading(meter, name, v, ts)


def _flat(rec: dict[str, Any], rules: Rules, now_s: float, res: ParseResult) -> None:
    meter = _meter_id(rec.get("meter"))
    if "ts" not in rec:
        raise _Reject(MISSING_TIMESTAMP, "flat record has no 'ts'")
    ts = _timestamp(rec["ts"], rules, now_s)
    quantities = [k for k in rec if k not in ("meter", "ts")]
    if not quantities:
        raise _Reject(BAD_STRUCTURE, "flat record has no quantities")
    for k in quantities:
        try:
            res.readings.append(_reading(meter, k, rec[k], None, ts, rules))
        except _Reject as e:
            res.rejections.append(Rejection(e.reason, e.detail, {"meter": meter, "ts": rec["ts"], k: rec[k]}))


def _senml(
    rec: dict[str, Any],
    base: dict[str, Any],
    default_meter: str,
    rules: Rules,
    now_s: float,
    res: ParseResult,
) -> None:
    if "bn" in rec:
        if not isinstance(rec["bn"], str):
            raise _Reject(BAD_STRUCTURE, "bn must be a string")
        base["bn"] = rec["bn"]
    if "bt" in rec:
        base["bt"] = _number(rec["bt"], "bt")
    if "bu" in rec:
        base["bu"] = rec["bu"]
    if "n" not in rec and "v" not in rec:
        if any(k in rec for k in ("vs", "vb", "vd", "s")):
            raise _Reject(BAD_VALUE, "only numeric values (v) are accepted")
        if not any(k in rec for k in ("bn", "bt", "bu", "bver")):
            raise _Reject(BAD_STRUCTURE, f"not a SenML record (keys {sorted(rec)[:6]})")
        return  # a base-only record
    name = base["bn"] + rec.get("n", "")
    if name.startswith(URN_PREFIX):
        meter, _, quantity = name[len(URN_PREFIX) :].rpartition(":")
        if not meter:
            raise _Reject(MISSING_METER, f"name {name!r} lacks a meter: use urn:campus:meter:<id>:<quantity>")
    elif default_meter and ":" not in name:
        meter, quantity = default_meter, name
    else:
        raise _Reject(MISSING_METER, f"name {name!r} lacks a meter: use urn:campus:meter:<id>:<quantity>")
    meter = _meter_id(meter)
    if "v" not in rec:
        raise _Reject(BAD_VALUE, f"{quantity}: only numeric values (v) are accepted")
    t = rec.get("t", 0)
    t_abs = base["bt"] + _number(t, "t")
    ts = _timestamp(t_abs, rules, now_s)
    res.readings.append(_reading(meter, quantity, rec["v"], rec.get("u", base["bu"]), ts, rules))


def encode_senml(readings: Iterable[Reading]) -> bytes:
    """One SenML pack; records of one meter share a base name so packs stay small."""
    out: list[dict[str, Any]] = []
    last_bn = None
    for r in readings:
        bn = f"{URN_PREFIX}{r.meter}:"
        rec: dict[str, Any] = {"n": r.quantity, "v": r.value, "t": r.ts}
        unit = QUANTITIES[r.quantity].unit if r.quantity in QUANTITIES else ""
        if unit:
            rec["u"] = unit
        if bn != last_bn:
            rec = {"bn": bn, **rec}
            last_bn = bn
        out.append(rec)
    return json.dumps(out, separators=(",", ":")).encode()


def wait_for_status(host: str, port: int, topic: str, want: str = "online", timeout: float = 30.0) -> bool:
    """Block until a retained status topic says ``want`` (used by the demo and tests before streaming)."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, 1)
    c.on_message = lambda _c, _u, m: seen.set() if m.payload.decode(errors="replace") == want else None
    c.connect(host, port)
    c.loop_start()
    try:
        return seen.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
