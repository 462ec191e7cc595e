"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import broker_ok
from campusmon.deadletter import DeadLetters

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


_READY = {
    "type": "object",
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {
            "type": "object",
            "properties": {"mqtt": {"type": "boolean"}, "influxdb": {"type": "boolean"}},
        },
    },
}


@router.get(
    "/readyz",
    response_class=JSONResponse,
    responses={
        200: {"description": "ready", "content": {"application/json": {"schema": _READY}}},
        503: {
            "description": "the broker or InfluxDB is unreachable; the checks say which",
            "content": {"application/json": {"schema": _READY}},
        },
    },
)
def readyz(request: Request) -> JSONResponse:
    """Broker and InfluxDB reachable: the service can do its job."""
    cfg = request.app.state.cfg
    checks = {"mqtt": broker_ok(cfg), "influxdb": request.app.state.store.ping()}
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text: ingest counters of this process plus the dead-letter store's counts by reason."""
    body = generate_latest()
    dl = DeadLetters(request.app.state.sessions)
    counts = dl.counts()
    extra = [
        "# HELP campusmon_dead_letters Records kept in the dead-letter store, by reason",
        "# TYPE campusmon_dead_letters gauge",
    ]
    extra += [f'campusmon_dead_letters{{reason="{r}"}} {n}' for r, n in sorted(counts.items())]
    dropped = dl.dropped()
    extra += [
        "# HELP campusmon_dead_letters_bytes Size of the dead-letter store (its bound is ingest.deadletter_max_bytes)",
        "# TYPE campusmon_dead_letters_bytes gauge",
        f"campusmon_dead_letters_bytes {dl.size_bytes()}",
        "# HELP campusmon_dead_letters_dropped Refused records pruned from the bounded store, oldest first",
        "# TYPE campusmon_dead_letters_dropped gauge",
        f"campusmon_dead_letters_dropped {dropped['records']}",
    ]
    return Response(body + ("\n".join(extra) + "\n").encode(), media_type=CONTENT_TYPE_LATEST)
