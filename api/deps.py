"""Small lookups shared by the API's routers, and the error responses every route documents."""

from __future__ import annotations

import socket
from typing import Annotated, Any

from fastapi import HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from campusmon.config import CampusConfig, Meter

# Row ids are 64-bit; a larger number can name no row, and must be a 422, not an overflow deeper down.
MAX_ID = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="row id")]
# Registry ids (campusmon.config: buildings and meters); anything else names nothing.
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
MeterId = Annotated[
    str, Path(pattern=ID_PATTERN, max_length=200, description="meter id from the campus registry")
]


class ErrorBody(BaseModel):
    """Every error leaves as this object; validation errors add ``problems``, ingest adds its refusals."""

    model_config = ConfigDict(extra="allow")

    error: Any = Field(description="what is wrong, in words")
    status: int = Field(description="the HTTP status again, for clients that lose it")


_ERROR_SCHEMA = ErrorBody.model_json_schema()
_DEFAULT_TEXT = {
    400: "the body is not parseable (not JSON, or not UTF-8)",
    404: "no such resource",
    413: "body too large",
    422: "a parameter or the body is invalid; the message names it",
    502: "InfluxDB refused the query",
    503: "InfluxDB (or the broker) is down; retry after Retry-After seconds",
}


def errors(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries with the JSON error body; ``texts`` override a description (``e404=...``)."""
    named = {int(k[1:]) for k in texts}
    return {
        c: {
            "description": texts.get(f"e{c}", _DEFAULT_TEXT.get(c, "error")),
            # JSON whatever the route's own media type (an Atom feed, a CSV report) is.
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for c in sorted({*codes, *named})
    }


def broker_ok(cfg: CampusConfig, timeout: float = 1.0) -> bool:
    """A TCP connect is enough for readiness; the collector reports MQTT-level trouble itself."""
    try:
        with socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout):
            return True
    except OSError:
        return False


def get_meter(request: Request, meter_id: str) -> Meter:
    m = request.app.state.cfg.meter(meter_id)
    if m is None:
        raise HTTPException(404, f"meter {meter_id!r} is not in the campus registry")
    return m
