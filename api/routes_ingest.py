"""HTTP ingest for devices that push over HTTP, and the view of what was refused."""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from api.deps import MAX_ID, RowId
from campusmon.db import DeadLetter
from campusmon.deadletter import DeadLetters
from campusmon.ingest import Ingestor, Message
from campusmon.wire import METER_TOPIC, REASONS

router = APIRouter(prefix="/api/v1", tags=["ingest"])
Reason = Enum("Reason", {r: r for r in REASONS}, type=str)  # type: ignore[misc]

PAYLOAD_PREVIEW = 4096  # characters of a refused payload shown in a listing; the whole one is one call away

_SENML_RECORD = {
    "type": "object",
    "description": "SenML record (RFC 8428): bn, bt, bu, n, u, v, t",
    "properties": {
        "bn": {"type": "string"},
        "bt": {"type": "number"},
        "bu": {"type": "string"},
        "n": {"type": "string"},
        "u": {"type": "string"},
        "v": {"type": "number"},
        "t": {"type": "number"},
    },
}
_FLAT_RECORD = {
    "type": "object",
    "description": "flat record: meter, ts (Unix seconds or ISO 8601 with offset) and one key per quantity",
    "required": ["meter", "ts"],
    "properties": {"meter": {"type": "string"}, "ts": {"type": ["number", "string"]}},
    "additionalProperties": {"type": "number"},
}
READINGS_BODY = {
    "description": "a SenML pack or flat JSON (docs/wire-format.md)",
    "oneOf": [
        {"type": "array", "items": {"anyOf": [_SENML_RECORD, _FLAT_RECORD]}},
        _FLAT_RECORD,
    ],
}
_REFUSAL = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "enum": list(REASONS)},
        "detail": {"type": "string"},
        "record": {},
    },
}
_INGEST_RESULT = {
    "type": "object",
    "properties": {"stored": {"type": "integer"}, "rejected": {"type": "array", "items": _REFUSAL}},
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {}, "status": {"type": "integer"}},
                    "required": ["error", "status"],
                }
            }
        },
    }


def _ingestor(request: Request) -> Ingestor:
    st = request.app.state
    if getattr(st, "ingestor", None) is None:
        st.ingestor = Ingestor(
            st.cfg, st.store, DeadLetters(st.sessions), "http", getattr(st, "reading_hooks", ())
        )
    return st.ingestor


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit``: never read whole first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds ingest.max_payload_bytes ({limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body exceeds ingest.max_payload_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/readings",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": READINGS_BODY},
                "application/senml+json": {"schema": READINGS_BODY},
            },
        }
    },
    responses={
        200: {
            "description": "stored, with any per-record refusals",
            "content": {"application/json": {"schema": _INGEST_RESULT}},
        },
        400: _err("the body could not be read"),
        413: _err("body larger than ingest.max_payload_bytes"),
        422: _err("nothing in the body was acceptable (every record refused, with reasons)"),
        503: _err("InfluxDB is down: nothing was kept, retry after Retry-After seconds"),
    },
)
async def post_readings(
    request: Request,
    meter: str | None = Query(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="act as this meter's topic (bare SenML names)"
    ),
) -> JSONResponse:
    """Same payloads as MQTT (SenML pack or flat JSON). 200 when stored (with any per-record rejections),
    422 when nothing in the body was acceptable, 503 while InfluxDB is down (retry; nothing kept)."""
    ingestor = _ingestor(request)
    body = await _read_bounded(request, ingestor.rules.max_payload_bytes)
    topic = METER_TOPIC.format(meter_id=meter) if meter else None
    started = time.monotonic()
    res = await run_in_threadpool(ingestor.process, [Message(topic, body, "http")], started)
    rejected = [{"reason": r.reason, "detail": r.detail, "record": r.record} for _, r in res.rejected]
    status = 200 if res.stored or not rejected else 422
    out: dict[str, Any] = {"stored": res.stored, "rejected": rejected}
    if status == 422:
        out = {"error": "no acceptable readings in the request", "status": 422, **out}
    return JSONResponse(out, status_code=status)


def _item(d: DeadLetter, reasons: dict[str, int]) -> dict[str, Any]:
    payload = d.payload
    return {
        "id": d.id,
        "received_at": d.received_at.isoformat(),
        "source": d.source,
        "reason": d.reason,
        "reasons": reasons,
        "refused": d.refused,
        "detail": d.detail,
        "record": (d.records or [{}])[0].get("record") if isinstance(d.records, list) else None,
        "records": d.records if isinstance(d.records, list) else [],
        "payload": payload[:PAYLOAD_PREVIEW],
        "payload_bytes": d.payload_bytes,
        "payload_truncated": len(payload) > PAYLOAD_PREVIEW,
    }


@router.get("/ingest/rejections", responses={422: _err("unknown reason or bad paging parameter")})
def rejections(
    request: Request,
    reason: Reason | None = Query(None),  # type: ignore[valid-type]
    before: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Refused messages, newest first: the reasons and first refusals of each, and a preview of its raw
    payload (the whole one at ``/ingest/rejections/{id}/payload``); counts per reason; page with ``before``."""
    dl = DeadLetters(request.app.state.sessions)
    items = dl.page(reason.value if reason is not None else None, before, limit)
    reasons = dl.reasons_of([d.id for d in items])
    return {
        "counts": dl.counts(),
        "dropped": dl.dropped(),
        "items": [_item(d, reasons[d.id]) for d in items],
        "next_before": items[-1].id if len(items) == limit else None,
    }


@router.get(
    "/ingest/rejections/{message_id:int}/payload",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "the raw payload (non-UTF-8 bytes as base64:...)",
        },
        404: _err("no such refused message (or already pruned)"),
        422: _err("bad id"),
    },
)
def rejection_payload(request: Request, message_id: RowId) -> PlainTextResponse:
    """The whole raw payload of one refused message, for inspection or replay."""
    d = DeadLetters(request.app.state.sessions).get(message_id)
    if d is None:
        raise HTTPException(404, f"no refused message {message_id}")
    return PlainTextResponse(d.payload)
