"""HTTP ingest for devices that push over HTTP, and the view of what was refused."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from campusmon.deadletter import DeadLetters
from campusmon.ingest import Ingestor, Message
from campusmon.wire import METER_TOPIC, REASONS

router = APIRouter(prefix="/api/v1", tags=["ingest"])


def _ingestor(request: Request) -> Ingestor:
    st = request.app.state
    if getattr(st, "ingestor", None) is None:
        st.ingestor = Ingestor(
            st.cfg, st.store, DeadLetters(st.sessions), "http", getattr(st, "reading_hooks", ())
        )
    return st.ingestor


@router.post(
    "/readings",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {}}, "application/senml+json": {"schema": {}}},
        }
    },
)
async def post_readings(
    request: Request, meter: str | None = Query(None, description="act as this meter's topic")
) -> JSONResponse:
    """Same payloads as MQTT (SenML pack or flat JSON). 200 when stored (with any per-record rejections),
    422 when nothing in the body was acceptable, 503 while InfluxDB is down (retry; nothing kept)."""
    body = await request.body()
    topic = METER_TOPIC.format(meter_id=meter) if meter else None
    started = time.monotonic()
    res = await run_in_threadpool(_ingestor(request).process, [Message(topic, body, "http")], started)
    rejected = [{"reason": r.reason, "detail": r.detail, "record": r.record} for _, r in res.rejected]
    status = 200 if res.stored or not rejected else 422
    out: dict[str, Any] = {"stored": res.stored, "rejected": rejected}
    if status == 422:
        out = {"error": "no acceptable readings in the request", "status": 422, **out}
    return JSONResponse(out, status_code=status)


@router.get("/ingest/rejections")
def rejections(
    request: Request,
    reason: str | None = None,
    before: int | None = Query(None, ge=1),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Counts per reason and the newest rejected records with their raw payloads; page with ``before``."""
    if reason is not None and reason not in REASONS:
        raise HTTPException(422, f"unknown reason {reason!r}; one of: {', '.join(REASONS)}")
    dl = DeadLetters(request.app.state.sessions)
    items = dl.page(reason, before, limit)
    return {
        "counts": dl.counts(),
        "items": [
            {
                "id": d.id,
                "received_at": d.received_at.isoformat(),
                "source": d.source,
                "reason": d.reason,
                "detail": d.detail,
                "record": d.record,
                "payload": d.payload,
            }
            for d in items
        ],
        "next_before": items[-1].id if len(items) == limit else None,
    }
