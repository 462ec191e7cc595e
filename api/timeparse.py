"""Query-string times: ISO 8601 with offset, a date, or Unix seconds; naive times are campus-local."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from fastapi import HTTPException

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str | None, tz: ZoneInfo, name: str, default: float | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise HTTPException(422, f"{name} is required")
        return int(default)
    try:
        return int(float(value))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}={value!r}: use ISO 8601 (2026-10-01T00:00+08:00), a date, or Unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp())


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
    return n


def time_range(
    start: str | None, end: str | None, tz: ZoneInfo, default_span: int = 86400
) -> tuple[int, int]:
    e = parse_time(end, tz, "end", time.time() + 1)
    s = parse_time(start, tz, "start", e - default_span)
    if s >= e:
        raise HTTPException(422, f"start ({s}) must be before end ({e})")
    return s, e
