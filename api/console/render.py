"""Rendering a console page: one Jinja2 environment, and the context every page gets.

``render(request, "console/x.html", **ctx)`` adds who is logged in (``user``, ``role``), the page's
language (``lang``, ``_``), the session's CSRF token (``csrf``, sent by htmx on every request),
locale-aware formatters (``fmt``), the navigation (``nav``) and ``may(role)`` for showing actions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from api.auth.guard import IDENTITY_KEY
from api.auth.service import Identity
from api.console.i18n import LANGUAGE_NAMES, LANGUAGES, N_, TEMPLATES, Formatter, gettext_for

LANG_COOKIE = "campusmon_lang"
PREFIX = "/console"
STATIC = "/static"


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str  # a msgid
    href: str
    role: str = "viewer"  # the least role that sees the entry
    campus: bool = False  # campus-wide: not shown to an identity limited to some buildings


# Every console page family; the alert inbox, targets, reports and admin pages are their own modules.
NAV = (
    NavItem("overview", N_("Overview"), PREFIX + "/"),
    NavItem("buildings", N_("Buildings"), PREFIX + "/buildings"),
    NavItem("alerts", N_("Alerts"), PREFIX + "/alerts"),
    NavItem("targets", N_("Targets"), PREFIX + "/targets", campus=True),
    NavItem("reports", N_("Reports"), PREFIX + "/reports", campus=True),
    NavItem("admin", N_("Admin"), PREFIX + "/admin", "admin", campus=True),
)
ROLE_NAMES = {"viewer": N_("viewer"), "operator": N_("operator"), "admin": N_("admin")}

env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html", "xml"]),
    extensions=["jinja2.ext.i18n"],  # only for the extractor's sake; pages call _() from the context
    trim_blocks=True,
    lstrip_blocks=True,
)


def _chart_json(value: Any) -> Markup:
    """Data for a ``<script type="application/json">`` block; ``</`` cannot close the script early."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("</", "<\\/"))


env.filters["chart_json"] = _chart_json


def current_identity(request: Request) -> Identity | None:
    return request.scope.get(IDENTITY_KEY)


def current_lang(request: Request) -> str:
    """The user's pick (cookie), else the site's default language."""
    picked = request.cookies.get(LANG_COOKIE)
    if picked in LANGUAGES:
        return picked
    return request.app.state.cfg.console.default_language


def safe_next(target: str | None, default: str = PREFIX + "/") -> str:
    """Only a path inside the console: a login or language link must not send anyone elsewhere."""
    if not target or not target.startswith(PREFIX) or target.startswith("//") or "\\" in target:
        return default
    return target


def context(request: Request, **ctx: Any) -> dict[str, Any]:
    ident = current_identity(request)
    lang = current_lang(request)
    _ = gettext_for(lang)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    role = ident.role if ident is not None else None
    return {
        "request": request,
        "user": ident.name if ident is not None else None,
        "role": role,
        "role_name": _(ROLE_NAMES[role]) if role in ROLE_NAMES else "",
        "identity": ident,
        "may": (lambda need: ident is not None and ident.may(need)),
        "lang": lang,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "lang_href": lambda code: f"{PREFIX}/lang?lang={code}&next={quote(here, safe='')}",
        "_": _,
        "gettext": _,
        "csrf": (ident.csrf if ident is not None else None) or "",
        "fmt": Formatter(lang, request.app.state.cfg.site.tz),
        "nav": [
            n for n in NAV if ident is not None and ident.may(n.role) and not (n.campus and ident.scoped)
        ],
        "here": request.url.path,
        "prefix": PREFIX,
        "static": STATIC,
        "site": request.app.state.cfg.site,
        **ctx,
    }


def render(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """The page ``template`` with the console's common context plus ``ctx``."""
    html = env.get_template(template).render(context(request, **ctx))
    resp = HTMLResponse(html, status_code=status_code)
    resp.headers["Cache-Control"] = "no-store"  # pages carry a CSRF token and live figures
    resp.headers["Content-Language"] = "zh-Hans" if ctx.get("lang", current_lang(request)) == "zh" else "en"
    return resp
