"""The staff console: server-rendered pages under ``/console``, static files under ``/static``, and
``/docs``/``/redoc`` served from vendored files so nothing loads from a CDN.

``install_console(app)`` runs after the app's other routers (so the auth guard is already an app
dependency). It includes every console router module that exists — each page family is its own
module with a ``router`` — and makes errors on console pages pages too: a visitor who is not logged
in is sent to the login page instead of getting JSON 401, and a refusal is a page in their language.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.console.i18n import N_, gettext_for
from api.console.render import PREFIX, STATIC, current_lang, render

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Page families; a module that does not exist (yet) is skipped, one that fails to import is an error.
CONSOLE_ROUTERS = (
    "api.console.docs",
    "api.console.session",
    "api.console.pages",
    "api.console.inbox",
    "api.console.targets",
    "api.console.reports",
    "api.console.admin",
)
DATA_PREFIX = PREFIX + "/data/"  # small JSON endpoints of the pages answer JSON errors, as the API does
HEADINGS = {
    403: N_("Not allowed"),
    404: N_("Not found"),
    405: N_("Not allowed"),
    422: N_("Invalid request"),
    429: N_("Too many attempts"),
    500: N_("Server error"),
    502: N_("Server error"),
    503: N_("Service unavailable"),
}
MESSAGES = {
    403: N_("Your role does not allow this page or action."),
    404: N_("There is no such page, building or meter."),
    503: N_("The database is not reachable just now; try again in a moment."),
}


def is_page(request: Request) -> bool:
    path = request.url.path
    return (path == PREFIX or path.startswith(PREFIX + "/")) and not path.startswith(DATA_PREFIX)


def install_console(app: FastAPI) -> None:
    for mod in CONSOLE_ROUTERS:
        try:
            app.include_router(importlib.import_module(mod).router)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    app.mount(STATIC, StaticFiles(directory=str(STATIC_DIR)), name="static")
    json_handler = app.exception_handlers[StarletteHTTPException]

    async def console_errors(request: Request, exc: Any) -> Response:
        if not is_page(request):
            return await json_handler(request, exc)
        status = exc.status_code
        if status == 401:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = f"{PREFIX}/login?next={quote(here, safe='')}"
            if request.headers.get("hx-request"):
                return Response(status_code=401, headers={"HX-Redirect": login})
            return RedirectResponse(login, status_code=303)
        if request.headers.get("hx-request"):
            return await json_handler(request, exc)  # htmx shows nothing for an error; keep the detail
        _ = gettext_for(current_lang(request))
        heading = _(HEADINGS.get(status, N_("Error")))
        message = _(MESSAGES[status]) if status in MESSAGES else str(exc.detail)
        resp = render(request, "console/error.html", status_code=status, heading=heading, message=message)
        for k, v in (getattr(exc, "headers", None) or {}).items():
            resp.headers[k] = v
        return resp

    app.add_exception_handler(StarletteHTTPException, console_errors)
