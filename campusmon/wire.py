"""The reading contract: MQTT topics and payloads (SenML JSON, RFC 8428, or flat JSON).

Parsing is pure: bytes in, accepted readings and reasoned rejections out. The MQTT collector and
HTTP ingest share it, so a payload is accepted or rejected the same way whichever way it came.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from campusmon.quantities import CUMULATIVE, QUANTITIES, RATE, UnitError, convert
from campusmon.reading import Reading

if TYPE_CHECKING:
    from campusmon.mqtt import MqttAuth

TOPIC_ROOT = "campus/v1"
METER_TOPIC = TOPIC_ROOT + "/meters/{meter_id}/readings"
GATEWAY_TOPIC = TOPIC_ROOT + "/gateways/{gateway_id}/readings"
GATEWAY_STATUS_TOPIC = TOPIC_ROOT + "/gateways/{gateway_id}/status"
COLLECTOR_STATUS_TOPIC = TOPIC_ROOT + "/collectors/{client_id}/status"
# The collector reads both whole subtrees, so a device publishing on a wrong subtopic there gets a
# visible refusal (bad_topic) instead of silence; gateway status and health are read and ignored.
# The same subtrees under a campus prefix are what campus brokers forward over a bridge
# ("east/campus/v1/meters/X/readings", campusmon/bridge.py); they parse like the local ones.
READING_SUBSCRIPTIONS = (
    TOPIC_ROOT + "/meters/#",
    TOPIC_ROOT + "/gateways/#",
    "+/" + TOPIC_ROOT + "/meters/#",
    "+/" + TOPIC_ROOT + "/gateways/#",
)
_IGNORED_GATEWAY_TOPICS = ("status", "health")
URN_PREFIX = "urn:campus:meter:"

log = logging.getLogger(__name__)

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
INTERNAL_ERROR = "internal_error"
TOPIC_MISMATCH = "topic_mismatch"
UNKNOWN_GATEWAY = "unknown_gateway"
OUT_OF_RANGE = "out_of_range"
DUPLICATE_RECORD = "duplicate_record"
TOO_MANY_RECORDS = "too_many_records"
METER_NOT_BOUND = "meter_not_bound"
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
    INTERNAL_ERROR,
    TOPIC_MISMATCH,
    UNKNOWN_GATEWAY,
    OUT_OF_RANGE,
    DUPLICATE_RECORD,
    TOO_MANY_RECORDS,
    METER_NOT_BOUND,
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
class MeterRule:
    """What the registry says about one meter, for the plausibility checks."""

    kind: str
    max_rate: float | None = None  # in the unit of its kind's RATE quantity (docs/consumption.md)
    rated_current_a: float | None = None
    rollover: float | None = None
    gateway: str | None = None  # the gateway that may carry this meter's readings


# Plausible ranges: a value outside them cannot come from a working campus meter (docs/wire-format.md).
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "energy_kwh": (0.0, 1e12),
    "export_energy_kwh": (0.0, 1e12),
    "volume_m3": (0.0, 1e12),
    "power_w": (-1e9, 1e9),
    "voltage_v": (0.0, 40_000.0),
    "current_a": (-100_000.0, 100_000.0),
    "power_factor": (-1.0, 1.0),
    "frequency_hz": (40.0, 70.0),
    "flow_m3h": (0.0, 10_000.0),
    "gas_volume_m3": (0.0, 1e12),
    "gas_volume_uncorrected_m3": (0.0, 1e12),
    "gas_flow_m3h": (0.0, 100_000.0),
    "gas_pressure_kpa": (0.0, 10_000.0),
    "gas_temp_c": (-50.0, 100.0),
    "heat_energy_kwh": (0.0, 1e12),
    "heat_volume_m3": (0.0, 1e12),
    "heat_power_w": (0.0, 1e9),
    "heat_flow_m3h": (0.0, 10_000.0),
    "supply_temp_c": (-40.0, 200.0),
    "return_temp_c": (-40.0, 200.0),
}
_RATES = frozenset(RATE.values())  # the quantities a meter's max_rate bounds
RATED_CURRENT_FACTOR = 20.0  # a current above 20x the rated (basic) current is a fault, not a load


def _base_quantity(name: str) -> str:
    """``power_l1_w`` -> ``power_w``: per-phase quantities share their total's range."""
    for ph in ("_l1_", "_l2_", "_l3_"):
        if ph in name:
            return name.replace(ph, "_")
    return name


# SenML names that say what is measured and let the unit carry the dimension.
# (name, unit) -> quantity; a name whose unit is missing or does not fit stays refused.
DEFAULT_ALIASES: dict[str, dict[str, str]] = {
    "energy": {"kWh": "energy_kwh", "Wh": "energy_kwh", "J": "energy_kwh"},
    "power": {"W": "power_w", "kW": "power_w"},
    "voltage": {"V": "voltage_v"},
    "current": {"A": "current_a", "mA": "current_a"},
    "frequency": {"Hz": "frequency_hz"},
    "power_factor": {"/": "power_factor"},
    "volume": {"m3": "volume_m3", "l": "volume_m3", "L": "volume_m3"},
    "flow": {"m3/s": "flow_m3h", "m3/h": "flow_m3h", "l/s": "flow_m3h", "l/min": "flow_m3h"},
    "gas_volume": {"m3": "gas_volume_m3", "l": "gas_volume_m3", "L": "gas_volume_m3"},
    "gas_flow": {u: "gas_flow_m3h" for u in ("m3/s", "m3/h", "l/s", "l/min")},
    "gas_pressure": {u: "gas_pressure_kpa" for u in ("Pa", "hPa", "kPa", "MPa", "bar", "mbar")},
    "gas_temp": {"Cel": "gas_temp_c"},
    "heat_energy": {u: "heat_energy_kwh" for u in ("kWh", "Wh", "MWh", "J", "kJ", "MJ", "GJ")},
    "heat_power": {"W": "heat_power_w", "kW": "heat_power_w", "MW": "heat_power_w"},
    "heat_flow": {u: "heat_flow_m3h" for u in ("m3/s", "m3/h", "l/s", "l/min")},
    "heat_volume": {"m3": "heat_volume_m3", "l": "heat_volume_m3", "L": "heat_volume_m3"},
    "supply_temp": {"Cel": "supply_temp_c"},
    "return_temp": {"Cel": "return_temp_c"},
}


@dataclass(frozen=True, slots=True)
class Rules:
    """What a valid reading looks like.

    ``meters`` is the registry with plausibility limits (empty: no meter is known);
    ``gateways`` None means gateway ids are not checked.
    """

    strict: bool = False
    max_future_s: int = 300
    min_ts: int = 946684800
    max_payload_bytes: int = 256 * 1024
    meters: Mapping[str, MeterRule] = field(default_factory=dict)
    gateways: frozenset[str] | None = None
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_ALIASES)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: DEFAULT_RANGES)
    max_records: int = 10_000

    def rule(self, meter: str) -> MeterRule | None:
        return self.meters.get(meter)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Obj(dict):
    """A JSON object that remembers keys it saw twice (``json`` silently keeps the last)."""

    __slots__ = ("dups",)


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj(pairs)
    obj.dups = [k for k, _ in pairs] if len(obj) != len(pairs) else None
    if obj.dups is not None:
        seen: set[str] = set()
        obj.dups = sorted({k for k in obj.dups if k in seen or seen.add(k)})
    return obj


def full_id(value: str) -> bool:
    """An id of 1-64 of A-Z a-z 0-9 _ . - , matched over the whole string (no trailing newline)."""
    return _ID_RE.fullmatch(value) is not None


def _unbridged(topic: str) -> list[str]:
    """The topic's levels without a bridge's campus prefix (``east/campus/v1/…`` → ``campus/v1/…``)."""
    parts = topic.split("/")
    if len(parts) > 3 and "/".join(parts[:2]) != TOPIC_ROOT and "/".join(parts[1:3]) == TOPIC_ROOT:
        if full_id(parts[0]):
            return parts[1:]
    return parts


def topic_parts(topic: str | None) -> tuple[str, str] | None:
    """("meters", id) or ("gateways", id) for a readings topic, ("http", "") for none, else None."""
    if topic is None:
        return ("http", "")
    parts = _unbridged(topic)
    if len(parts) == 5 and "/".join(parts[:2]) == TOPIC_ROOT and parts[4] == "readings":
        if parts[2] in ("meters", "gateways"):
            return (parts[2], parts[3])
    return None


def ignored_topic(topic: str | None) -> bool:
    """Topics the collector reads but that carry no readings by design (gateway status and health)."""
    if topic is None:
        return False
    parts = _unbridged(topic)
    return (
        len(parts) == 5
        and "/".join(parts[:3]) == TOPIC_ROOT + "/gateways"
        and parts[4] in _IGNORED_GATEWAY_TOPICS
    )


def parse_payload(
    payload: bytes | str, topic: str | None, rules: Rules, now: float | None = None
) -> ParseResult:
    """Turn one message into readings; every record that fails says why, the rest still count.

    Total: any input whatever, bytes or JSON, ends as readings plus rejections, never an exception.
    """
    res = ParseResult()
    try:
        _parse(payload, topic, rules, time.time() if now is None else now, res)
    except Exception as e:  # a parser bug must refuse one message, never stop ingest
        log.exception("parser failed on a message from %r", topic)
        res.readings.clear()
        res.rejections.append(Rejection(INTERNAL_ERROR, f"parser error {type(e).__name__}: {str(e)[:200]}"))
    return res


def _parse(payload: bytes | str, topic: str | None, rules: Rules, now_s: float, res: ParseResult) -> None:
    tp = topic_parts(topic)
    if tp is None:
        res.rejections.append(
            Rejection(
                BAD_TOPIC,
                f"topic {str(topic)[:200]!r} is not a readings topic: publish on "
                f"{METER_TOPIC} or {GATEWAY_TOPIC}",
            )
        )
        return
    if tp[0] == "meters" and not full_id(tp[1]):
        res.rejections.append(Rejection(BAD_METER_ID, f"meter id {tp[1][:70]!r} in the topic is not valid"))
        return
    if tp[0] == "gateways":
        if not full_id(tp[1]):
            res.rejections.append(
                Rejection(BAD_TOPIC, f"gateway id {tp[1][:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            )
            return
        if rules.gateways is not None and tp[1] not in rules.gateways:
            res.rejections.append(
                Rejection(
                    UNKNOWN_GATEWAY, f"gateway {tp[1]!r} is not in the registry (gateways: in the config)"
                )
            )
            return
    default_meter = tp[1] if tp[0] == "meters" else ""
    gateway = tp[1] if tp[0] == "gateways" and rules.gateways is not None else ""
    if len(payload) > rules.max_payload_bytes:
        res.rejections.append(
            Rejection(TOO_LARGE, f"payload of {len(payload)} bytes exceeds {rules.max_payload_bytes}")
        )
        return
    try:
        doc = json.loads(payload, parse_constant=_reject_constant, object_pairs_hook=_pairs)
    except _Reject as e:
        res.rejections.append(Rejection(e.reason, e.detail))
        return
    except RecursionError:
        res.rejections.append(Rejection(MALFORMED_JSON, "JSON nested too deeply"))
        return
    except (ValueError, UnicodeDecodeError) as e:  # also the interpreter's limit on integer digits
        res.rejections.append(Rejection(MALFORMED_JSON, f"not valid JSON: {str(e)[:200]}"))
        return
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
        return
    if len(records) > rules.max_records:
        res.rejections.append(
            Rejection(TOO_MANY_RECORDS, f"{len(records)} records in one message; at most {rules.max_records}")
        )
        return

    base: dict[str, Any] = {"bn": "", "bt": 0.0, "bu": None}
    seen: set[tuple[str, str, int]] = set()
    for rec in records:
        if not isinstance(rec, dict):
            res.rejections.append(
                Rejection(BAD_STRUCTURE, f"record is {_type_name(rec)}, not an object", _excerpt(rec))
            )
            continue
        try:
            if getattr(rec, "dups", None):
                raise _Reject(DUPLICATE_RECORD, f"key(s) {rec.dups[:5]} appear twice in one record")
            start = len(res.readings)
            if "meter" in rec:
                _flat(rec, default_meter, gateway, rules, now_s, res)
            else:
                _senml(rec, base, default_meter, gateway, rules, now_s, res)
            _drop_duplicates(res, start, seen, rec)
        except _Reject as e:
            res.rejections.append(Rejection(e.reason, e.detail, _excerpt(rec)))


def _drop_duplicates(res: ParseResult, start: int, seen: set[tuple[str, str, int]], rec: Any) -> None:
    """The first record of a (meter, quantity, time) in a message wins; later ones are refused."""
    keep: list[Reading] = []
    for r in res.readings[start:]:
        key = (r.meter, r.quantity, r.ts)
        if key in seen:
            res.rejections.append(
                Rejection(
                    DUPLICATE_RECORD,
                    f"{r.quantity} of {r.meter} at {r.ts} already given earlier in this message "
                    "(the first wins)",
                    _excerpt(rec),
                )
            )
        else:
            seen.add(key)
            keep.append(r)
    res.readings[start:] = keep


def _type_name(v: Any) -> str:
    return {dict: "object", _Obj: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(v), "null" if v is None else "number"
    )


def _excerpt(v: Any, limit: int = 500) -> Any:
    """A refused record as kept for inspection: itself when small and shallow, else truncated text."""
    try:
        text = json.dumps(v, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return repr(v)[:limit] if _depth_ok(v) else "<record nested too deeply>"
    if len(text) <= limit and _depth_ok(v):
        return v
    return text[:limit] + f"... ({len(text)} characters)"


def _depth_ok(v: Any, limit: int = 8) -> bool:
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if d > limit:
            return False
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
    return True


def _reject_constant(name: str) -> float:
    raise _Reject(NON_FINITE, f"{name} is not a number")


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Reject(BAD_VALUE, f"{what} must be a number, got {_type_name(v)} {_short(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise _Reject(NON_FINITE, f"{what} has {len(str(abs(v)))} digits: too large for a double") from None
    if not math.isfinite(f):
        raise _Reject(NON_FINITE, f"{what} is not finite")
    return f


def _short(v: Any) -> str:
    try:
        return json.dumps(v)[:40]
    except (ValueError, TypeError, RecursionError):
        return "(unprintable)"


def _timestamp(t: Any, rules: Rules, now_s: float) -> int:
    if isinstance(t, str):
        try:
            dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            raise _Reject(
                MISSING_TIMESTAMP, f"timestamp {t[:40]!r} is not ISO 8601 or Unix seconds"
            ) from None
        if dt.tzinfo is None:
            raise _Reject(MISSING_TIMESTAMP, f"timestamp {t[:40]!r} has no UTC offset")
        try:
            t = dt.timestamp()
        except (OverflowError, ValueError, OSError):
            raise _Reject(TIMESTAMP_TOO_OLD, f"timestamp {t[:40]!r} is out of range") from None
        absolute = True
    else:
        absolute = False
    ts = _number(t, "timestamp")
    if ts < _SENML_RELATIVE_LIMIT and not absolute:
        raise _Reject(
            MISSING_TIMESTAMP,
            "timestamp missing or relative: readings must carry the absolute Unix time they were taken",
        )
    if ts > now_s + rules.max_future_s:
        raise _Reject(TIMESTAMP_FUTURE, _future_detail(ts, now_s))
    if ts < rules.min_ts:
        raise _Reject(TIMESTAMP_TOO_OLD, f"timestamp {ts:.0f} ({_year(ts)}) is before {rules.min_ts}")
    return int(ts)


def _year(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "beyond the year 9999"


def _future_detail(ts: float, now_s: float) -> str:
    ms = ts / 1000
    if abs(ms - now_s) < 10 * 365 * 86400:
        return (
            f"timestamp {ts:.0f} looks like milliseconds ({_year(ms)} if divided by 1000); send Unix seconds"
        )
    return f"timestamp {ts:.0f} is {ts - now_s:.0f} s in the future ({_year(ts)})"


def _meter_id(meter: Any) -> str:
    if not isinstance(meter, str) or not meter:
        raise _Reject(MISSING_METER, "no meter id" if not meter else f"meter id is a {_type_name(meter)}")
    if not full_id(meter):
        raise _Reject(BAD_METER_ID, f"meter id {meter[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return meter


def _resolve_name(name: str, unit: Any, rules: Rules) -> str:
    if name in QUANTITIES:
        return name
    by_unit = rules.aliases.get(name)
    if by_unit is None:
        raise _Reject(
            UNKNOWN_QUANTITY, f"unknown quantity {name[:70]!r} (see docs/wire-format.md for the vocabulary)"
        )
    key = "/" if unit in (None, "") and "/" in by_unit and len(by_unit) == 1 else unit
    if not isinstance(key, str) or key not in by_unit:
        raise _Reject(
            UNKNOWN_QUANTITY,
            f"{name!r} names a quantity only with a unit: one of {', '.join(sorted(by_unit))}",
        )
    return by_unit[key]


def _reading(meter: str, name: Any, value: Any, unit: Any, ts: int, rules: Rules) -> Reading:
    if not isinstance(name, str):
        raise _Reject(BAD_STRUCTURE, f"quantity name must be a string, got {_type_name(name)}")
    if unit is not None and not isinstance(unit, str):
        raise _Reject(BAD_UNIT, f"unit must be a string, got {_type_name(unit)} {_short(unit)}")
    name = _resolve_name(name, unit, rules)
    q = QUANTITIES[name]
    rule = rules.rule(meter)
    if rule is None and rules.strict:
        raise _Reject(UNKNOWN_METER, f"meter {meter!r} is not in the registry")
    if rule is not None and rule.kind != q.kind:
        raise _Reject(
            WRONG_KIND, f"{name} is {_a(q.kind.value)} quantity but meter {meter!r} is {_a(rule.kind)} meter"
        )
    v = _number(value, name)
    try:
        v = convert(q, v, unit)
    except UnitError as e:
        raise _Reject(BAD_UNIT, str(e)) from None
    if not math.isfinite(v):
        raise _Reject(NON_FINITE, f"{name} is not finite once converted from {unit}")
    if v < 0 and name in CUMULATIVE:
        raise _Reject(NEGATIVE_CUMULATIVE, f"{name} is a cumulative register and cannot be negative ({v})")
    if v < 0 and not q.signed:
        raise _Reject(BAD_VALUE, f"{name} cannot be negative ({v})")
    if name == "power_factor" and not -1.0 <= v <= 1.0:
        raise _Reject(BAD_VALUE, f"power_factor {v} is outside -1..1")
    _plausible(name, v, rule, rules)
    return Reading(meter, name, v, ts)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _plausible(name: str, v: float, rule: MeterRule | None, rules: Rules) -> None:
    base = _base_quantity(name)
    lo, hi = rules.ranges.get(base, (-math.inf, math.inf))
    source = "the plausible range"
    if rule is not None:
        if rule.max_rate is not None and base in _RATES:
            lo, hi, source = max(lo, -rule.max_rate), min(hi, rule.max_rate), "the meter's max_rate"
        if rule.rated_current_a is not None and base == "current_a":
            lim = rule.rated_current_a * RATED_CURRENT_FACTOR
            lo, hi = max(lo, -lim), min(hi, lim)
            source = f"{RATED_CURRENT_FACTOR:g} x the meter's rated current"
        if rule.rollover is not None and name in CUMULATIVE:
            hi, source = min(hi, rule.rollover), "the meter's rollover"
    if not lo <= v <= hi:
        unit = QUANTITIES[name].unit
        raise _Reject(OUT_OF_RANGE, f"{name} {v:g} {unit} is outside {lo:g}..{hi:g} ({source})")


def _check_origin(meter: str, default_meter: str, gateway: str, rules: Rules) -> None:
    """A meter's topic carries only that meter; a gateway only the meters bound to it."""
    if default_meter and meter != default_meter:
        raise _Reject(TOPIC_MISMATCH, f"record names meter {meter!r} on the topic of meter {default_meter!r}")
    if gateway:
        rule = rules.rule(meter)
        if rule is not None and rule.gateway != gateway:
            bound = f"bound to gateway {rule.gateway!r}" if rule.gateway else "bound to no gateway"
            raise _Reject(
                METER_NOT_BOUND, f"gateway {gateway!r} may not carry meter {meter!r}: the meter is {bound}"
            )


def _flat(
    rec: dict[str, Any], default_meter: str, gateway: str, rules: Rules, now_s: float, res: ParseResult
) -> None:
    meter = _meter_id(rec.get("meter"))
    _check_origin(meter, default_meter, gateway, rules)
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
            rej = {"meter": meter, "ts": ts, k[:70]: _excerpt(rec[k], 100)}
            res.rejections.append(Rejection(e.reason, e.detail, rej))


def _senml(
    rec: dict[str, Any],
    base: dict[str, Any],
    default_meter: str,
    gateway: str,
    rules: Rules,
    now_s: float,
    res: ParseResult,
) -> None:
    if "bn" in rec:
        if not isinstance(rec["bn"], str):
            raise _Reject(BAD_STRUCTURE, f"bn must be a string, got {_type_name(rec['bn'])}")
        base["bn"] = rec["bn"]
    if "bt" in rec:
        base["bt"] = _number(rec["bt"], "bt")
    if "bu" in rec:
        if rec["bu"] is not None and not isinstance(rec["bu"], str):
            raise _Reject(BAD_UNIT, f"bu must be a string, got {_type_name(rec['bu'])}")
        base["bu"] = rec["bu"]
    if "n" not in rec and "v" not in rec:
        if any(k in rec for k in ("vs", "vb", "vd", "s")):
            raise _Reject(BAD_VALUE, "only numeric values (v) are accepted")
        if not any(k in rec for k in ("bn", "bt", "bu", "bver")):
            raise _Reject(BAD_STRUCTURE, f"not a SenML record (keys {sorted(rec)[:6]})")
        return  # a base-only record
    n = rec.get("n", "")
    if not isinstance(n, str):
        raise _Reject(BAD_STRUCTURE, f"n must be a string, got {_type_name(n)}")
    name = base["bn"] + n
    if name.startswith(URN_PREFIX):
        meter, _, quantity = name[len(URN_PREFIX) :].rpartition(":")
        if not meter:
            raise _Reject(
                MISSING_METER, f"name {name[:100]!r} lacks a meter: use urn:campus:meter:<id>:<quantity>"
            )
    elif default_meter and ":" not in name:
        meter, quantity = default_meter, name
    else:
        raise _Reject(
            MISSING_METER, f"name {name[:100]!r} lacks a meter: use urn:campus:meter:<id>:<quantity>"
        )
    meter = _meter_id(meter)
    _check_origin(meter, default_meter, gateway, rules)
    if "v" not in rec:
        raise _Reject(BAD_VALUE, f"{quantity[:70]}: only numeric values (v) are accepted")
    t_abs = base["bt"] + _number(rec.get("t", 0), "t")
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


def wait_for_status(
    host: str,
    port: int,
    topic: str,
    want: str = "online",
    timeout: float = 30.0,
    auth: MqttAuth | None = None,
) -> bool:
    """Block until a retained status topic says ``want`` (used by the demo and tests before streaming).

    On a locked broker ``auth`` is a ``monitor`` identity: one of its own, since a client id is its
    user name there and borrowing the collector's would disconnect the collector.
    """
    import threading

    from campusmon.mqtt import make_client

    seen = threading.Event()
    c = make_client("", auth)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, 1)
    c.on_message = lambda _c, _u, m: seen.set() if m.payload.decode(errors="replace") == want else None
    c.connect(host, port)
    c.loop_start()
    try:
        return seen.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
