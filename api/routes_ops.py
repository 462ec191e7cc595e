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


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Broker and InfluxDB reachable: the service can do its job."""
    cfg = request.app.state.cfg
    checks = {"mqtt": broker_ok(cfg), "influxdb": request.app.state.store.ping()}
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text: ingest counters of this process plus the dead-letter store's counts by reason."""
    body = generate_latest()
    counts = DeadLetters(request.app.state.sessions).counts()
    extra = [
        "# HELP campusmon_dead_letters Records kept in the dead-letter store, by reason",
        "# TYPE campusmon_dead_letters gauge",
    ]
    extra += [f'campusmon_dead_letters{{reason="{r}"}} {n}' for r, n in sorted(counts.items())]
    return Response(body + ("\n".join(extra) + "\n").encode(), media_type=CONTENT_TYPE_LATEST)
