"""Login and logout for browsers, one's own identity, and the admin's users, tokens and audit log."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from api.auth.guard import CSRF_COOKIE, SESSION_COOKIE, actor, identity, runtime
from api.auth.service import AuthError
from api.deps import MAX_ID, RowId, errors

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=errors(422))
Role = Literal["viewer", "operator", "admin"]
Name = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[^\s]+$")]
Building = Annotated[str, Field(max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")]
_AUTH = errors(401, 403, e401="not authenticated", e403="the identity's role or buildings do not reach")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(_Body):
    username: Name
    password: str = Field(min_length=1, max_length=1000)


class UserBody(_Body):
    name: Name
    password: str = Field(min_length=10, max_length=1000)
    role: Role
    buildings: list[Building] = Field(default=[], description="empty: the whole campus")


class UserPatch(_Body):
    role: Role | None = None
    buildings: list[Building] | None = None
    disabled: StrictBool | None = None
    password: str | None = Field(default=None, min_length=10, max_length=1000)


class TokenBody(_Body):
    name: Name
    role: Role = "viewer"
    user: Name | None = Field(default=None, description="the token acts for this user, never above its role")
    buildings: list[Building] = []
    expires_in_s: StrictInt | None = Field(default=None, ge=60, le=10 * 365 * 86400)
    feed_only: StrictBool = Field(
        default=False, description="read-only, feeds only; may be passed as ?token="
    )


def _known(request: Request) -> Any:
    cfg = request.app.state.cfg
    return lambda b: cfg.building(b) is not None


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post(
    "/login",
    responses=errors(
        400, 401, 429, e401="wrong user name or password", e429="too many failed logins; retry later"
    ),
)
def login(request: Request, response: Response, body: LoginBody) -> dict[str, Any]:
    """A browser session: an HttpOnly, SameSite=Strict cookie, and a CSRF token to echo in ``X-CSRF-Token``
    on every state-changing request (it is also set as the readable ``campusmon_csrf`` cookie)."""
    rt = runtime(request)
    client = _client(request)
    wait = rt.limiter.blocked(body.username, client)
    if wait > 0:
        log.warning("login of %r from %s refused: too many failures", body.username, client)
        raise HTTPException(429, "too many failed logins; retry later", {"Retry-After": str(int(wait) + 1)})
    got = rt.store.login(body.username, body.password, rt.cfg.session_ttl_s)
    if got is None:
        rt.limiter.failed(body.username, client)
        log.warning("failed login for %r from %s", body.username, client)
        rt.store.audit(body.username, "login failed", request.url.path, 401, client)
        raise HTTPException(401, "wrong user name or password", {"WWW-Authenticate": "Bearer"})
    raw, ident = got
    rt.limiter.succeeded(body.username)
    rt.store.audit(ident.name, "login", request.url.path, 200, client)
    secure = rt.cfg.cookie_secure or request.url.scheme == "https"
    common: dict[str, Any] = {
        "max_age": rt.cfg.session_ttl_s,
        "samesite": "strict",
        "secure": secure,
        "path": "/",
    }
    response.set_cookie(SESSION_COOKIE, raw, httponly=True, **common)
    response.set_cookie(CSRF_COOKIE, ident.csrf or "", httponly=False, **common)
    return {
        "user": ident.name,
        "role": ident.role,
        "buildings": sorted(ident.buildings),
        "csrf_token": ident.csrf,
        "expires_at": ident.expires_at.isoformat() if ident.expires_at else None,
    }


@router.post("/logout", responses=_AUTH)
def logout(request: Request, response: Response) -> dict[str, Any]:
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        runtime(request).store.logout(raw)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return {"logged_out": bool(raw)}


@router.get("/me", responses=_AUTH)
def me(request: Request) -> dict[str, Any]:
    i = identity(request)
    return {
        "name": i.name,
        "role": i.role,
        "buildings": sorted(i.buildings),
        "kind": i.kind,
        "feed_only": i.feed_only,
        "expires_at": i.expires_at.isoformat() if i.expires_at else None,
    }


def _auth_error(e: AuthError) -> HTTPException:
    return HTTPException(404 if str(e).startswith("no ") else 422, str(e))


@router.get("/users", responses=_AUTH)
def list_users(request: Request) -> dict[str, Any]:
    return {"users": runtime(request).store.users()}


@router.post("/users", status_code=201, responses=_AUTH | errors(400))
def add_user(request: Request, body: UserBody) -> dict[str, Any]:
    try:
        return runtime(request).store.add_user(
            body.name, body.password, body.role, body.buildings, _known(request)
        )
    except AuthError as e:
        raise _auth_error(e) from None


@router.patch("/users/{name}", responses=_AUTH | errors(400, 404, e404="no such user"))
def update_user(
    request: Request,
    name: Annotated[str, Path(max_length=120, pattern=r"^[^\s]+$")],
    body: UserPatch,
) -> dict[str, Any]:
    """Change role, buildings, password or disable; the user's sessions end, its tokens follow at once."""
    try:
        return runtime(request).store.update_user(
            name, known=_known(request), **body.model_dump(exclude_unset=True)
        )
    except AuthError as e:
        raise _auth_error(e) from None


@router.get("/tokens", responses=_AUTH)
def list_tokens(request: Request) -> dict[str, Any]:
    """Every token without its secret: prefix, role, buildings, expiry, last use and revocation."""
    return {"tokens": runtime(request).store.tokens()}


@router.post("/tokens", status_code=201, responses=_AUTH | errors(400, 404, e404="no such user"))
def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
    """A new token; ``token`` is shown in this answer only and stored as a hash."""
    try:
        raw, info = runtime(request).store.create_token(
            body.name,
            body.role,
            user=body.user,
            buildings=body.buildings,
            expires_in_s=body.expires_in_s,
            feed_only=body.feed_only,
            created_by=actor(request),
            known=_known(request),
        )
    except AuthError as e:
        raise _auth_error(e) from None
    return {"token": raw, **info}


@router.delete(
    "/tokens/{token_id:int}",
    responses=_AUTH | errors(404, 409, e404="no such token", e409="the token this request is made with"),
)
def revoke_token(request: Request, token_id: RowId) -> dict[str, Any]:
    """Revoke a token; not the one the request itself uses (no admin locks itself out by a slip)."""
    if identity(request).token_id == token_id:
        raise HTTPException(409, "this request is made with that token; revoke it with another identity")
    try:
        return runtime(request).store.revoke_token(token_id)
    except AuthError as e:
        raise _auth_error(e) from None


@router.get("/audit", responses=_AUTH)
def audit_log(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=MAX_ID, description="id of the oldest entry of the last page"),
    actor_name: str | None = Query(None, alias="actor", max_length=200),
) -> dict[str, Any]:
    """Every write through the API, newest first: who, what, where, and the status it got."""
    items = runtime(request).store.audit_log(limit, before, actor_name)
    return {"count": len(items), "entries": items}
