"""The FastAPI service: health, metrics, meters and readings, HTTP ingest and the dead-letter view.

Routers of later capabilities (accounting, alerts) are mounted when their packages provide them.
Every error leaves as JSON ``{"error": ..., "status": ...}``, never as a stack trace.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.timeparse import PATTERN_HINTS
from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.influx import QueryError, StoreUnavailable, open_store
from campusmon.metrics import declare as declare_series

log = logging.getLogger(__name__)

OPTIONAL_ROUTERS = ("api.accounting.routes", "api.accounting.assessment_routes", "api.alerts.routes")


def _error(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(cfg: CampusConfig, start_jobs: bool = True) -> FastAPI:
    """The API; ``start_jobs=False`` never runs scheduled jobs, True leaves it to ``api.run_jobs``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.store.ensure_database()
        except (StoreUnavailable, QueryError) as e:
            log.warning("InfluxDB not ready at start-up (%s); /readyz reports it", e)
        jobs = None
        if start_jobs:
            try:
                sched = importlib.import_module("api.alerts.scheduler")
                jobs = sched.start_alert_jobs(app)
            except ModuleNotFoundError:
                pass
        yield
        if jobs is not None:
            jobs.shutdown(wait=False)
        alerts = getattr(app.state, "alerts", None)
        if alerts is not None:
            alerts.bus.close()  # the SSE feed's reader thread and its LISTEN connection
        app.state.store.close()

    app = FastAPI(
        title="Campus Energy Monitor",
        version="0.1.0",
        description="Meter readings, consumption against energy-saving targets, and waste alerts.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from api.console.docs, with vendored assets (no CDN)
        redoc_url=None,
    )
    app.state.cfg = cfg
    # /metrics is per process: the API's own ingest path only; the collector serves via="mqtt" itself.
    declare_series("http")
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)

    install_error_handlers(app)
    from api.auth import install_auth

    install_auth(app)  # before any router is included: the guard is an app-level dependency

    from api.routes_ingest import router as ingest_router
    from api.routes_meters import router as meters_router
    from api.routes_ops import router as ops_router

    app.include_router(ops_router)
    app.include_router(meters_router)
    app.include_router(ingest_router)
    for mod in OPTIONAL_ROUTERS:
        try:
            app.include_router(importlib.import_module(mod).router)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    from api.console import install_console

    install_console(app)  # after the other routers: it wraps their error handler for console pages
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path. FastAPI makes one route per method, and Starlette's
    405 names only the first route that matched the path, so each method is asked of the router."""
    base = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    routes = request.app.router.routes
    allowed = [
        m
        for m in _METHODS
        if any(
            r.matches({**base, "method": m, "headers": [], "query_string": b""})[0] is Match.FULL
            for r in routes
        )
    ]
    return ", ".join(allowed)


def _problem(e: dict[str, Any]) -> str:
    """Pydantic's message, except that a missed time or duration pattern says what to send instead."""
    hint = PATTERN_HINTS.get((e.get("ctx") or {}).get("pattern", ""))
    if e.get("type") == "string_pattern_mismatch" and hint and e["loc"]:
        return f"{e['loc'][-1]}={str(e.get('input'))[:60]!r}: {hint}"
    return e["msg"]


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": ..., "status": ...}``, never a stack trace or FastAPI's own shape."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return _error(exc.status_code, exc.detail, headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": _problem(e)}
            for e in jsonable_encoder(exc.errors())
        ]
        text = "; ".join(f"{p['where']}: {p['problem']}" for p in problems)
        return JSONResponse({"error": f"invalid request: {text}", "status": 422, "problems": problems}, 422)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_r: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(503, f"InfluxDB unavailable: {exc}", {"Retry-After": "5"})

    @app.exception_handler(QueryError)
    async def _query_error(_r: Request, exc: QueryError) -> JSONResponse:
        return _error(400, f"query refused by InfluxDB: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, minus ``null`` as a value of query, path and header parameters.

    An optional parameter is one a client leaves out; ``anyOf: [..., {"type": "null"}]`` would tell
    a client (and a contract tester) to send the text ``null`` instead, which no route takes.
    """
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for item in schema.get("paths", {}).values():
            for op in item.values():
                for param in op.get("parameters", []):
                    s = param.get("schema", {})
                    alts = [a for a in s.get("anyOf", []) if a.get("type") != "null"]
                    if "anyOf" in s and len(alts) == 1:
                        del s["anyOf"]
                        s.update(alts[0])
        from api.auth.openapi import document_security

        app.openapi_schema = document_security(schema)  # each route's credentials, 401 and 403
    return app.openapi_schema
