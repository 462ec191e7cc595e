"""Energy-saving targets in the console: the list, one target with its change history, and the forms
that create, change and delete them.

Every write goes through the JSON API's own target functions (``api.accounting.routes``), so the
same validation, the same audit record (who, when, before and after) and the same permission table
apply; a viewer sees no forms, and the guard refuses a viewer's forged POST anyway (403).
Forms are sent by htmx (which adds the CSRF header); an invalid target answers 422 with the reason,
shown above the form, and nothing is stored.
"""

from __future__ import annotations

from typing import Any

from babel.numbers import format_decimal
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.accounting import routes as acc_routes
from api.accounting import target_repo
from api.auth import identity
from api.console.charts import KIND_NAMES, SUB_ITEM_NAMES
from api.console.i18n import N_, Formatter, gettext_for
from api.console.render import PREFIX, current_lang, env, render
from api.deps import RowId

router = APIRouter(include_in_schema=False)
BASE = PREFIX + "/targets"
HISTORY_ROWS = 200
TYPE_NAMES = {
    "quota": N_("Quota"),
    "intensity": N_("Intensity per m² and year"),
    "per_capita": N_("Per person and day"),
    "reduction": N_("Reduction below a baseline"),
}
SCOPE_NAMES = {
    "building": N_("Building"),
    "group": N_("Group"),
    "unit": N_("Unit"),
    "campus": N_("Whole campus"),
}
PERIOD_NAMES = {"day": N_("per day"), "month": N_("per month"), "year": N_("per year")}
ACTION_NAMES = {"create": N_("created"), "update": N_("changed"), "delete": N_("deleted")}
UNIT_NAMES = {
    "kWh/day": N_("kWh per day"),
    "kWh/month": N_("kWh per month"),
    "kWh/year": N_("kWh per year"),
    "m3/day": N_("m³ per day"),
    "m3/month": N_("m³ per month"),
    "m3/year": N_("m³ per year"),
    "kWh/m2/year": N_("kWh/m² per year"),
    "m3/m2/year": N_("m³/m² per year"),
    "kWh/person/day": N_("kWh per person and day"),
    "L/person/day": N_("L per person and day"),
    "% below baseline": N_("% below the baseline"),
}
FIELD_NAMES = {
    "name": N_("Name"),
    "scope": N_("Applies to"),
    "scope_id": N_("Building, group or unit"),
    "kind": N_("Carrier"),
    "category": N_("Sub-item"),
    "type": N_("Type"),
    "period": N_("Period"),
    "value": N_("Value"),
    "baseline_start": N_("Baseline from"),
    "baseline_end": N_("Baseline to"),
    "valid_from": N_("Valid from"),
    "valid_to": N_("Valid to"),
    "note": N_("Note"),
}
FORM_FIELDS = tuple(FIELD_NAMES)


def _session(request: Request) -> Any:
    factory = getattr(request.app.state, "sessions", None)
    if factory is None:
        raise HTTPException(503, "the target database is not configured")
    return factory()


def _helpers(request: Request) -> dict[str, Any]:
    cfg = request.app.state.cfg
    names = {b.id: b.name or b.id for b in cfg.buildings}
    unit_names = {u.id: u.name or u.id for u in cfg.units}
    _ = gettext_for(current_lang(request))

    def scope_label(t: dict[str, Any]) -> str:
        if t["scope"] == "campus":
            return _("Whole campus")
        if t["scope"] == "building":
            return str(names.get(t["scope_id"], t["scope_id"]))
        if t["scope"] == "unit":
            return str(unit_names.get(t["scope_id"], t["scope_id"]))
        return _("group %(name)s", name=t["scope_id"])

    def unit_label(u: str) -> str:
        return _(UNIT_NAMES[u]) if u in UNIT_NAMES else u

    locale = Formatter(current_lang(request), cfg.site.tz).locale
    names_of = {"scope": SCOPE_NAMES, "kind": KIND_NAMES, "type": TYPE_NAMES, "period": PERIOD_NAMES}

    def value_label(f: str, v: Any) -> str:
        """A recorded field value as the page's language shows it (enum names, numbers, sub-items)."""
        if v is None or v == "":
            return "—"
        if f in names_of and v in names_of[f]:
            return _(names_of[f][v])
        if f == "category" and v in SUB_ITEM_NAMES:
            return f"{v} {_(SUB_ITEM_NAMES[v])}"
        if isinstance(v, int | float) and not isinstance(v, bool):
            return format_decimal(v, locale=locale)
        return str(v)

    return {
        "type_names": TYPE_NAMES,
        "scope_names": SCOPE_NAMES,
        "period_names": PERIOD_NAMES,
        "action_names": ACTION_NAMES,
        "kind_names": KIND_NAMES,
        "field_names": FIELD_NAMES,
        "sub_items": SUB_ITEM_NAMES,
        "scope_label": scope_label,
        "unit_label": unit_label,
        "value_label": value_label,
        "buildings": cfg.buildings,
        "groups": sorted({b.group for b in cfg.buildings if b.group}),
        "units": cfg.units,
        "may_edit": identity(request).may("operator"),
        "base": BASE,
        "active": "targets",
    }


def changes(entry: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, before, after) of each field an audit entry changed; every set field of a creation."""
    before, after = entry.get("before") or {}, entry.get("after") or {}
    out = []
    for f in FORM_FIELDS:
        b, a = before.get(f), after.get(f)
        if b != a and (b not in (None, "") or a not in (None, "")):
            out.append((f, b, a))
    return out


@router.get(BASE, response_class=HTMLResponse)
def targets_page(request: Request) -> Response:
    with _session(request) as s:
        targets = [target_repo.as_dict(t) for t in target_repo.all_targets(s)]
        history = target_repo.history(s, None, HISTORY_ROWS)
    return render(
        request,
        "console/targets.html",
        targets=targets,
        history=history,
        changes=changes,
        form=None,
        **_helpers(request),
    )


@router.get(BASE + "/{target_id:int}", response_class=HTMLResponse)
def target_page(request: Request, target_id: RowId) -> Response:
    with _session(request) as s:
        t = target_repo.get(s, target_id)
        history = target_repo.history(s, target_id)
        if t is None and not history:
            raise HTTPException(404, f"target {target_id} does not exist")
        target = target_repo.as_dict(t) if t is not None else None
    return render(
        request,
        "console/target.html",
        target=target,
        target_id=target_id,
        history=history,
        changes=changes,
        **_helpers(request),
    )


def _body(form: Any) -> dict[str, Any]:
    """The form as a target body: empty fields left out, the value a number (422 if it is not)."""
    out: dict[str, Any] = {}
    for f in FORM_FIELDS:
        v = form.get(f)
        if not isinstance(v, str):
            continue
        v = v.strip()
        if v == "":
            continue
        out[f] = v
    if out.get("scope") == "campus":
        out.pop("scope_id", None)
    if out.get("type") != "quota":
        out.pop("period", None)
    if out.get("type") != "reduction":
        out.pop("baseline_start", None)
        out.pop("baseline_end", None)
    if "value" in out:
        try:
            out["value"] = float(out["value"].replace(",", ""))
        except ValueError:
            raise HTTPException(422, f"value: {out['value']!r} is not a number") from None
    return out


def _target_body(data: dict[str, Any]) -> Any:
    try:
        return acc_routes.TargetBody.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise HTTPException(422, "; ".join(parts)) from None


def _refused(request: Request, e: HTTPException) -> Response:
    """The reason a target was not saved, as the fragment htmx puts above the form."""
    _ = gettext_for(current_lang(request))
    html = env.get_template("console/_form_error.html").render(
        _=_, heading=_("The target was not saved:"), detail=str(e.detail)
    )
    return HTMLResponse(html, status_code=e.status_code)


def _go(url: str) -> Response:
    return Response(status_code=204, headers={"HX-Redirect": url})


@router.post(BASE, response_class=HTMLResponse)
async def create_target(request: Request) -> Response:
    form = await request.form()
    try:
        body = _target_body(_body(form))
        made = await run_in_threadpool(acc_routes.create_target, request, body)
    except HTTPException as e:
        if e.status_code != 422:
            raise
        return _refused(request, e)
    return _go(f"{BASE}/{made['id']}")


@router.post(BASE + "/{target_id:int}", response_class=HTMLResponse)
async def update_target(request: Request, target_id: RowId) -> Response:
    form = await request.form()
    try:
        body = _target_body(_body(form))
        await run_in_threadpool(acc_routes.replace_target, request, target_id, body)
    except HTTPException as e:
        if e.status_code != 422:
            raise
        return _refused(request, e)
    return _go(f"{BASE}/{target_id}")


@router.post(BASE + "/{target_id:int}/delete")
def delete_target(request: Request, target_id: RowId) -> Response:
    acc_routes.delete_target(request, target_id)
    return _go(BASE)
