"""Logging in and out of the console, and the language switch.

Login goes through the JSON API's own login function, so the rate limit, the audit entry and the
cookies (HttpOnly session, readable CSRF token, SameSite=Strict) are the same as for any browser.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from api.auth import routes as auth_routes
from api.console.i18n import LANGUAGES, N_, gettext_for
from api.console.render import LANG_COOKIE, PREFIX, current_identity, current_lang, render, safe_next

router = APIRouter(include_in_schema=False)
LANG_MAX_AGE_S = 400 * 86400
LOGIN_ERRORS = {
    401: N_("Wrong user name or password."),
    429: N_("Too many failed logins; wait a few minutes and try again."),
}


@router.get(PREFIX + "/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = Query(None, max_length=2000)) -> Response:
    return render(request, "console/login.html", next=safe_next(next), error=None, username="")


@router.post(PREFIX + "/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    _ = gettext_for(current_lang(request))
    target = safe_next(next)
    resp = RedirectResponse(target, status_code=303)
    try:
        body = auth_routes.LoginBody(username=username, password=password)
        auth_routes.login(request, resp, body)
    except ValidationError:
        return _failed(request, target, username, 401, _(LOGIN_ERRORS[401]))
    except HTTPException as e:
        msg = _(LOGIN_ERRORS[e.status_code]) if e.status_code in LOGIN_ERRORS else str(e.detail)
        return _failed(request, target, username, e.status_code, msg, e.headers)
    return resp


def _failed(
    request: Request,
    target: str,
    username: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    resp = render(
        request, "console/login.html", status_code=status, next=target, error=message, username=username
    )
    for k, v in (headers or {}).items():
        if k.lower() == "retry-after":
            resp.headers[k] = v
    return resp


@router.post(PREFIX + "/logout")
def logout(request: Request) -> Response:
    """Ends the session (htmx sends the CSRF header) and sends the browser to the login page."""
    resp = Response(status_code=204, headers={"HX-Redirect": PREFIX + "/login"})
    auth_routes.logout(request, resp)
    return resp


@router.get(PREFIX + "/lang")
def switch_language(
    request: Request,
    lang: str = Query(..., max_length=10),
    next: str | None = Query(None, max_length=2000),
) -> Response:
    """The user's language, kept in a cookie for a year; back to the page the switch was clicked on."""
    if lang not in LANGUAGES:
        raise HTTPException(422, f"language {lang!r} is not one of {', '.join(LANGUAGES)}")
    resp = RedirectResponse(safe_next(next), status_code=303)
    secure = request.app.state.cfg.auth.cookie_secure or request.url.scheme == "https"
    resp.set_cookie(LANG_COOKIE, lang, max_age=LANG_MAX_AGE_S, samesite="lax", secure=secure, path="/")
    return resp


@router.get(PREFIX)
def console_root(request: Request) -> Response:
    return RedirectResponse(PREFIX + "/" if current_identity(request) else PREFIX + "/login", status_code=307)
