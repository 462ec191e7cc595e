"""The admin page: people who log in, API tokens, and the broker's device credentials.

Users and tokens are changed through the JSON API's own functions (``api.auth.routes``): the same
checks, the same audit entry, and a secret (a new token) shown once and stored only as a hash.
Device credentials are the registry ``campusmon devices`` keeps beside the local broker
(``<services.data_dir>/mosquitto``); the page adds, rotates and revokes them as that command does
and sends the broker SIGHUP, so the change is in force without a restart. Where the broker runs on
another server the page says so and lists nothing. Every route here is admin-only in
``api/auth/permissions.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from api.auth import identity
from api.auth import routes as auth_routes
from api.auth.guard import runtime
from api.console.i18n import N_, gettext_for
from api.console.render import PREFIX, current_lang, env, render
from api.deps import RowId
from campusmon.devices import KINDS, DeviceError, DeviceRegistry
from campusmon.services import Mosquitto

router = APIRouter(include_in_schema=False)
BASE = PREFIX + "/admin"
AUDIT_ROWS = 50
ROLES = ("viewer", "operator", "admin")
DEVICE_KINDS = {
    "meter": N_("meter (pushes its own readings)"),
    "gateway": N_("building gateway"),
    "collector": N_("collector"),
    "api": N_("API (publishes alerts)"),
    "monitor": N_("status monitor"),
    "bridge": N_("campus bridge"),
}
Text = Annotated[str, Form(max_length=2000)]
Name = Annotated[str, Path(max_length=120, pattern=r"^[^\s/]+$")]


def broker(request: Request) -> Mosquitto:
    """The local broker whose ``passwd`` and ``acl`` the device registry writes."""
    s = request.app.state.cfg.services
    return Mosquitto(FsPath(s.data_dir) / "mosquitto", s.mosquitto_port)


def _split(text: str) -> list[str]:
    return [b.strip() for b in text.replace(" ", ",").split(",") if b.strip()]


def _errors(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'form'}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )


def _fragment(request: Request, status: int, **ctx: Any) -> HTMLResponse:
    """The answer htmx puts above a form: a refusal, or a secret shown this once."""
    _ = gettext_for(current_lang(request))
    return HTMLResponse(env.get_template("console/_admin_msg.html").render(_=_, **ctx), status_code=status)


def _refused(request: Request, detail: str) -> HTMLResponse:
    _ = gettext_for(current_lang(request))
    return _fragment(request, 422, error=_("Not done:"), detail=detail)


def _attempt(
    request: Request, call: Callable[[], Any], refusable: tuple[int, ...] = (404, 422)
) -> tuple[Any, HTMLResponse | None]:
    """Run an API function; what the API refuses (bad input, unknown name) becomes the form's answer."""
    try:
        return call(), None
    except ValidationError as e:
        return None, _refused(request, _errors(e))
    except HTTPException as e:
        if e.status_code not in refusable:
            raise
        return None, _refused(request, str(e.detail))


def _go(url: str) -> Response:
    return Response(status_code=204, headers={"HX-Redirect": url})


def _devices(request: Request) -> dict[str, Any]:
    srv = broker(request)
    reg = DeviceRegistry(srv.data_dir)
    here = reg.registry.exists() or reg.password_file.exists()
    return {"dir": str(srv.data_dir), "here": here, "devices": reg.devices() if here else []}


@router.get(BASE, response_class=HTMLResponse)
def admin_page(request: Request) -> Response:
    store = runtime(request).store
    cfg = request.app.state.cfg
    return render(
        request,
        "console/admin.html",
        active="admin",
        users=store.users(),
        tokens=store.tokens(),
        dev=_devices(request),
        audit=store.audit_log(AUDIT_ROWS, None, None),
        roles=ROLES,
        device_kinds=DEVICE_KINDS,
        buildings=cfg.buildings,
        me=identity(request).name,
        base=BASE,
    )


@router.post(BASE + "/users", response_class=HTMLResponse)
def add_user(
    request: Request,
    name: Text = "",
    password: Text = "",
    role: Text = "viewer",
    buildings: Text = "",
) -> Response:
    _made, refused = _attempt(
        request,
        lambda: auth_routes.add_user(
            request,
            auth_routes.UserBody(
                name=name.strip(), password=password, role=role, buildings=_split(buildings)
            ),  # type: ignore[arg-type]
        ),
    )
    return refused or _go(BASE + "#users")


@router.post(BASE + "/users/{name}", response_class=HTMLResponse)
def change_user(request: Request, name: Name, disabled: Text = "", role: Text = "") -> Response:
    """Disable or enable a login, or change its role; its sessions end either way."""
    _ = gettext_for(current_lang(request))
    if name == identity(request).name:
        return _refused(request, _("Your own login cannot be changed here; ask another admin."))
    change: dict[str, Any] = {}
    if disabled in ("0", "1"):
        change["disabled"] = disabled == "1"
    if role:
        change["role"] = role
    _done, refused = _attempt(
        request, lambda: auth_routes.update_user(request, name, auth_routes.UserPatch(**change))
    )
    return refused or _go(BASE + "#users")


@router.post(BASE + "/tokens", response_class=HTMLResponse)
def add_token(
    request: Request,
    name: Text = "",
    role: Text = "viewer",
    user: Text = "",
    buildings: Text = "",
    expires_days: Text = "",
    feed_only: Text = "",
) -> Response:
    _ = gettext_for(current_lang(request))
    try:
        days = float(expires_days) if expires_days.strip() else None
    except ValueError:
        return _refused(request, f"expires_days: {expires_days!r} is not a number")
    made, refused = _attempt(
        request,
        lambda: auth_routes.create_token(
            request,
            auth_routes.TokenBody(
                name=name.strip(),
                role=role,  # type: ignore[arg-type]
                user=user.strip() or None,
                buildings=_split(buildings),
                expires_in_s=int(days * 86400) if days else None,
                feed_only=feed_only == "1",
            ),
        ),
    )
    if refused:
        return refused
    return _fragment(
        request,
        201,
        done=_(
            "Token %(id)s (%(name)s) created. Copy it now: it is shown only this once.",
            id=made["id"],
            name=made["name"],
        ),  # fmt: skip
        secret=made["token"],
        reload=_("Reload the page to see it in the list."),
    )


@router.post(BASE + "/tokens/{token_id:int}/revoke", response_class=HTMLResponse)
def revoke_token(request: Request, token_id: RowId) -> Response:
    _done, refused = _attempt(request, lambda: auth_routes.revoke_token(request, token_id), (404, 409))
    return refused or _go(BASE + "#tokens")


def _reloaded(request: Request) -> str:
    _ = gettext_for(current_lang(request))
    if broker(request).reload():
        return _("The broker has re-read its credentials: the change is in force now.")
    return _("The broker is not running here: the change takes effect when it starts.")


@router.post(BASE + "/devices", response_class=HTMLResponse)
def add_device(request: Request, name: Text = "", kind: Text = "meter", meters: Text = "") -> Response:
    _ = gettext_for(current_lang(request))
    reg = DeviceRegistry(broker(request).data_dir)
    if kind not in KINDS:
        return _refused(request, f"kind: one of {', '.join(KINDS)}")
    try:
        pw = reg.add(name.strip(), kind, _split(meters))
    except DeviceError as e:
        return _refused(request, str(e))
    return _fragment(
        request,
        201,
        done=_("Device %(name)s added. Its password is shown only this once:", name=name.strip()),
        secret=pw,
        note=_reloaded(request),
        reload=_("Reload the page to see it in the list."),
    )


@router.post(BASE + "/devices/{name}/rotate", response_class=HTMLResponse)
def rotate_device(request: Request, name: Name) -> Response:
    _ = gettext_for(current_lang(request))
    try:
        pw = DeviceRegistry(broker(request).data_dir).rotate(name)
    except DeviceError as e:
        return _refused(request, str(e))
    return _fragment(
        request,
        200,
        done=_("New password of %(name)s, shown only this once:", name=name),
        secret=pw,
        note=_reloaded(request),
    )


@router.post(BASE + "/devices/{name}/revoke", response_class=HTMLResponse)
def revoke_device(request: Request, name: Name) -> Response:
    try:
        DeviceRegistry(broker(request).data_dir).revoke(name)
    except DeviceError as e:
        return _refused(request, str(e))
    broker(request).reload()
    return _go(BASE + "#devices")
