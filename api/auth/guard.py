"""Enforcement: one app-wide dependency that authenticates, checks the role and the building scope of
the matched route against ``api.auth.permissions``, and one ASGI middleware that writes the audit log.

The dependency is installed on the app's router before any router is included, so every FastAPI
route carries it; FastAPI's own documentation routes, which carry no dependency, are public in the
table, and any other route without a declared permission is refused by the middleware.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import (  # the effective route (with include prefixes) FastAPI matched
    _FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY,
    _FASTAPI_SCOPE_KEY,
    APIRoute,
    iter_route_contexts,
)
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.permissions import ROLE_OF, Perm, permission
from api.auth.service import ANONYMOUS_ADMIN, AuthStore, Identity, LoginLimiter
from campusmon.config import Auth as AuthCfg
from campusmon.config import is_loopback

log = logging.getLogger(__name__)

IDENTITY_KEY = "campusmon.identity"
SESSION_COOKIE = "campusmon_session"
CSRF_COOKIE = "campusmon_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class AuthRuntime:
    cfg: AuthCfg
    store: AuthStore
    limiter: LoginLimiter


def runtime(request: Request) -> AuthRuntime:
    return request.app.state.auth


def identity(request: Request) -> Identity:
    """The identity the guard established for this request."""
    ident = request.scope.get(IDENTITY_KEY)
    if ident is None:
        raise HTTPException(401, "not authenticated")
    return ident


def actor(request: Request) -> str:
    """The name every write is recorded under: the authenticated identity, never a header."""
    return identity(request).name


def route_path(request: Request) -> str | None:
    """The matched route's template as the app serves it (with any include prefix)."""
    ctx = request.scope.get(_FASTAPI_SCOPE_KEY, {}).get(_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY)
    path = getattr(ctx, "path", None)
    if path:
        return path
    route = request.scope.get("route")
    return getattr(route, "path", None)


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(401, msg, headers={"WWW-Authenticate": "Bearer"})


async def _token(rt: AuthRuntime, raw: str) -> Identity | None:
    hit = rt.store.cached_token(raw)
    if hit is not None:
        return hit[0]
    return await run_in_threadpool(rt.store.by_token, raw)


async def authenticate(request: Request, perm: Perm) -> Identity:
    rt = runtime(request)
    now = datetime.now(UTC)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise _unauthorized("Authorization must be 'Bearer <token>'")
        ident = await _token(rt, raw.strip())
        if ident is None:
            raise _unauthorized("invalid or revoked token")
        if ident.expired(now):
            raise _unauthorized("token expired")
        return ident
    url_token = request.query_params.get("token")
    if url_token is not None:
        if perm.level != "feed":
            raise _unauthorized("a token in the URL is accepted only on feed routes")
        ident = await _token(rt, url_token)
        if ident is None or ident.expired(now):
            raise _unauthorized("invalid, revoked or expired feed token")
        if not ident.feed_only:
            raise _unauthorized("only a feed token may be passed in the URL; send others as a Bearer header")
        return ident
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        hit = rt.store.cached_session(cookie)
        ident = hit[0] if hit is not None else await run_in_threadpool(rt.store.by_session, cookie)
        if ident is None or ident.expired(now):
            raise _unauthorized("session ended; log in again")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not ident.csrf or not secrets.compare_digest(sent.encode(), ident.csrf.encode()):
                raise HTTPException(403, f"CSRF check failed: send the session's {CSRF_HEADER} header")
        return ident
    raise _unauthorized("authentication required: a Bearer token or a login session")


async def guard(request: Request) -> None:
    """The one gate of every API route: permission declared, identity known, role and scope enough.

    It reads the credentials itself rather than through FastAPI's security classes, so the OpenAPI
    document can say per route what is needed (``api.auth.openapi``), public routes included.
    """
    path = route_path(request)
    perm = permission(request.method, path or "")
    if perm is None:
        log.error("route %s %s has no declared permission; refused", request.method, path)
        raise HTTPException(403, "this route has no declared permission (api/auth/permissions.py)")
    rt = runtime(request)
    if not rt.cfg.enabled:
        request.scope[IDENTITY_KEY] = ANONYMOUS_ADMIN
        return
    if perm.level == "public":
        return
    if perm.level == "ops" and rt.cfg.ops_public_on_loopback:
        client = request.client.host if request.client else ""
        if is_loopback(client):
            return
    ident = await authenticate(request, perm)
    request.scope[IDENTITY_KEY] = ident
    if ident.feed_only and perm.level != "feed":
        raise HTTPException(403, "a feed token opens only the feeds")
    need = ROLE_OF[perm.level]
    if not ident.may(need):
        raise HTTPException(403, f"needs role {need}; {ident.name} is {ident.role}")
    if ident.scoped:
        await _check_scope(request, perm, ident)


def _outside(ident: Identity) -> HTTPException:
    return HTTPException(403, f"outside the buildings of {ident.name} ({', '.join(sorted(ident.buildings))})")


async def _check_scope(request: Request, perm: Perm, ident: Identity) -> None:
    kind, _, param = perm.scope.partition(":")
    if kind in ("any", "filtered"):
        return
    if kind == "campus":
        raise HTTPException(
            403, f"{ident.name} is limited to {', '.join(sorted(ident.buildings))}; this covers the campus"
        )
    cfg = request.app.state.cfg
    if kind == "consumption":
        scope = request.query_params.get("scope", "campus")
        what, _, sid = scope.partition(":")
        building = sid if what == "building" else _meter_building(cfg, sid) if what == "meter" else None
        if building is None or not ident.sees(building):
            raise _outside(ident)
        return
    value = request.path_params.get(param)
    if value is None:
        raise _outside(ident)
    if kind == "building":
        building = str(value)
    elif kind == "meter":
        building = _meter_building(cfg, str(value))
        if building is None:
            return  # the route answers 404 for a meter that does not exist
    elif kind in ("alert", "target"):
        found, building = await run_in_threadpool(_row_building, request, kind, int(value))
        if not found:
            return  # the route's own 404
    else:
        raise _outside(ident)
    if building is None or not ident.sees(building):
        raise _outside(ident)


def _meter_building(cfg: Any, meter_id: str) -> str | None:
    m = cfg.meter(meter_id)
    return m.building if m is not None else None


def _row_building(request: Request, kind: str, row_id: int) -> tuple[bool, str | None]:
    """(exists, its building); a campus-wide target has no building."""
    sessions = request.app.state.sessions
    with sessions() as s:
        if kind == "alert":
            from api.alerts.models import Alert

            a = s.get(Alert, row_id)
            return (a is not None, a.building if a is not None else None)
        from api.accounting.models import Target

        t = s.get(Target, row_id)
        if t is None:
            return (False, None)
        if t.scope == "building":
            return (True, t.scope_id)
        if t.scope == "meter":
            return (True, _meter_building(request.app.state.cfg, t.scope_id))
        return (True, None)


class AuditMiddleware:
    """Records every state-changing request that carried an identity, with the status it got.

    It also refuses a route that bypasses the guard (not a FastAPI route) and has no permission.
    """

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._unguarded: list[Any] | None = None

    def _routes_without_guard(self) -> list[Any]:
        if self._unguarded is None:
            out = []
            for rc in iter_route_contexts(self.fastapi_app.routes):
                r = rc.original_route
                if isinstance(r, APIRoute):
                    continue
                methods = getattr(r, "methods", None) or {"GET"}
                if any(permission(m, rc.path or "") is None for m in methods):
                    out.append(rc._effective_route)
            self._unguarded = out
        return self._unguarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for r in self._routes_without_guard():
            if r.matches(scope)[0] is Match.FULL:
                from starlette.responses import JSONResponse

                body = {"error": "this route has no declared permission", "status": 403}
                await JSONResponse(body, 403)(scope, receive, send)
                return
        if scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        status = {"code": 0}

        async def send_status(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ident = scope.get(IDENTITY_KEY)
            if ident is not None:
                await run_in_threadpool(self._record, scope, ident, status["code"])

    def _record(self, scope: Scope, ident: Identity, status: int) -> None:
        req = Request(scope)
        client = scope.get("client") or ("", 0)
        try:
            self.fastapi_app.state.auth.store.audit(
                ident.name,
                f"{scope['method']} {route_path(req) or scope['path']}",
                scope["path"],
                status,
                str(client[0]),
                {k: str(v) for k, v in (scope.get("path_params") or {}).items()} or None,
            )
        except Exception:  # the response is sent: a lost audit row is logged, not raised
            log.exception("could not write the audit log for %s %s", scope["method"], scope["path"])
