"""Query-string times: ISO 8601 with offset, a date, or Unix seconds; naive times are campus-local.

The patterns below are what the OpenAPI schema publishes and what FastAPI enforces, so a client can
tell a valid time from the schema alone: they spell out real calendar dates (month lengths and leap
years included) within the years 1970-2199, a span InfluxDB can store and query.
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import HTTPException

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: beyond it no date type can follow
MAX_DURATION_S = 100 * 366 * 86400

# [0-9], not \d: a JSON Schema pattern is ECMA 262, where \d is ASCII only, but Python's is not.
_D = "[0-9]"
_YEAR = f"(?:19[7-9]{_D}|2[01]{_D}{_D})"
_LEAP = "(?:19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26])|21(?:[02468][48]|[13579][26]|[2468]0))"
_DATE = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]{_D}|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]{_D}|30)"
    f"|02-(?:0[1-9]|1{_D}|2[0-8]))|{_LEAP}-02-29)"
)
_CLOCK = f"(?:[01]{_D}|2[0-3]):[0-5]{_D}(?::[0-5]{_D}(?:\\.{_D}{{1,6}})?)?"
_OFFSET = f"(?:Z|[+-](?:[01]{_D}|2[0-3]):[0-5]{_D})"
_ISO = f"{_DATE}(?:[T ]{_CLOCK}{_OFFSET}?)?"
_UNIX = f"(?:{_D}{{1,9}}|[1-6]{_D}{{9}})(?:\\.{_D}{{1,6}})?"  # at most 6999999999: the year 2191

DATE_PATTERN = f"^{_DATE}$"
LOCAL_TIME_PATTERN = f"^{_ISO}$"  # a date (local midnight) or a date-time, naive = campus-local
TIME_PATTERN = f"^(?:{_UNIX}|{_ISO})$"  # the same, or Unix seconds
MONTH_PATTERN = f"^{_YEAR}-(?:0[1-9]|1[0-2])$"
# Each unit's digit count keeps every match positive and within MAX_DURATION_S.
DURATION_PATTERN = (
    "^(?:[1-9][0-9]{0,8}s?|[1-9][0-9]{0,6}m|[1-9][0-9]{0,4}h|[1-9][0-9]{0,3}d|[1-9][0-9]{0,2}w)$"
)
TIME_DOC = (
    "ISO 8601 date-time (naive = campus-local), a date (local midnight) or Unix seconds; years 1970-2199"
)
LOCAL_TIME_DOC = "ISO 8601 date-time (naive = campus-local) or a date (local midnight); years 1970-2199"


def parse_time(value: str | None, tz: ZoneInfo, name: str, default: float | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise HTTPException(422, f"{name} is required")
        return int(default)
    try:
        f = float(value)
    except ValueError:
        f = None
    if f is not None:
        if not -MAX_TS <= f <= MAX_TS:  # also NaN and the infinities
            raise HTTPException(422, f"{name}={value[:40]!r}: Unix seconds must lie within years 1..9999")
        return int(f)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}={value[:60]!r}: use ISO 8601 (2026-10-01T00:00+08:00), a date, or Unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    try:
        return int(dt.timestamp())
    except (OverflowError, ValueError, OSError):
        raise HTTPException(422, f"{name}={value[:60]!r} is outside the years 1..9999") from None


def parse_duration(value: str, name: str) -> int:
    """'15m', '1h', '1d' or plain seconds."""
    try:
        if value[-1] in _UNITS:
            n = int(value[:-1]) * _UNITS[value[-1]]
        else:
            n = int(value)
    except (ValueError, IndexError):
        raise HTTPException(422, f"{name}={value!r}: use a duration such as 15m, 1h, 1d") from None
    if n <= 0:
        raise HTTPException(422, f"{name} must be positive")
    if n > MAX_DURATION_S:
        raise HTTPException(422, f"{name}={value[:40]!r} is longer than 100 years")
    return n


def time_range(
    start: str | None, end: str | None, tz: ZoneInfo, default_span: int = 86400
) -> tuple[int, int]:
    e = parse_time(end, tz, "end", time.time() + 1)
    s = parse_time(start, tz, "start", e - default_span)
    if s >= e:
        raise HTTPException(422, f"start ({s}) must be before end ({e})")
    return s, e


# What to tell a client whose value misses one of the patterns (the regex itself helps nobody).
PATTERN_HINTS = {
    TIME_PATTERN: "use ISO 8601 (2026-10-01T00:00+08:00), a date, or Unix seconds, within the years 1970-2199",
    LOCAL_TIME_PATTERN: "use ISO 8601 (2026-10-01T00:00+08:00, naive = campus-local) or a date, years 1970-2199",
    DATE_PATTERN: "use a calendar date YYYY-MM-DD within the years 1970-2199",
    MONTH_PATTERN: "use YYYY-MM (for example 2026-10), years 1970-2199",
    DURATION_PATTERN: "use a duration such as 15m, 1h, 1d (at most 100 years)",
}
