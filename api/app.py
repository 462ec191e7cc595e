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
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.influx import QueryError, StoreUnavailable, open_store

log = logging.getLogger(__name__)

OPTIONAL_ROUTERS = ("api.accounting.routes", "api.alerts.routes")


def _error(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(cfg: CampusConfig, start_jobs: bool = True) -> FastAPI:
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
        app.state.store.close()

    app = FastAPI(
        title="Campus Energy Monitor",
        version="0.1.0",
        description="Meter readings, consumption against energy-saving targets, and waste alerts.",
        lifespan=lifespan,
    )
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
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
    return app
