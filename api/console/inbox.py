"""The alert inbox: open alerts grouped by rule and subject, live through the SSE stream, with the actions
the user's role allows.

Pages read the alert store the JSON API reads; every action the page offers is a request to the JSON
API's own permission-guarded, CSRF-checked routes, so the console can do nothing a token could not.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from babel.messages.extract import extract_from_dir
from babel.numbers import format_decimal
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.alerts.models import AlertEvent
from api.alerts.rules import RULES, Severity
from api.alerts.rules.base import baseline_text
from api.alerts.scheduler import alert_services
from api.auth import identity
from api.console.i18n import N_, Formatter, gettext_for
from api.console.render import current_lang, render
from api.deps import RowId
from campusmon.quantities import QUANTITIES

router = APIRouter(include_in_schema=False)
PREFIX = "/console/alerts"
DATA = "/console/data/alerts"
STATUS_CHOICES = ("active", "active_unack", "active_ack", "cleared", "all")
SEVERITIES = tuple(s.value for s in Severity)
LIST_LIMIT = 300
# The unit an alert states its value in -> the quantity its evidence chart shows.
UNIT_QUANTITY = {"W": "power_w", "A": "current_a", "m3/h": "flow_m3h", "kWh": "energy_kwh", "m3": "volume_m3"}
MAX_EVIDENCE_S = 14 * 86400
MAX_EVIDENCE_POINTS = 600


@dataclass
class Filters:
    status: str = "active"
    severity: str = ""
    building: str = ""
    rule: str = ""

    def query(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass
class Group:
    """One rule on one subject: the newest alert, and how often it came back."""

    key: str
    latest: dict[str, Any]
    earlier: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return 1 + len(self.earlier)


def group_key(a: dict[str, Any]) -> str:
    return f"{a['rule']}|{a['subject']['kind']}:{a['subject']['id']}"


def grouped(alerts: list[dict[str, Any]]) -> list[Group]:
    """Repeats of one rule on one subject fold into one entry, newest first (``alerts`` is newest first)."""
    out: OrderedDict[str, Group] = OrderedDict()
    for a in alerts:
        k = group_key(a)
        if k in out:
            out[k].earlier.append(a)
        else:
            out[k] = Group(k, a)
    return list(out.values())


def _filters(status: str | None, severity: str | None, building: str | None, rule: str | None) -> Filters:
    f = Filters(
        status=status if status in STATUS_CHOICES else "active",
        severity=severity if severity in SEVERITIES else "",
        building=building or "",
        rule=rule if rule in RULES else "",
    )
    return f


def _scope(request: Request, building: str) -> str | None:
    """The buildings to list for this identity; "" when it asked only for buildings it cannot see."""
    mine = identity(request).buildings
    if not mine:
        return building or None
    asked = {building} if building else set(mine)
    return ",".join(sorted(asked & mine))


def _history(request: Request, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every recorded event of these alerts, oldest first: who did what, and when."""
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    with request.app.state.sessions() as s:
        rows = s.execute(
            select(AlertEvent.alert_id, AlertEvent.type, AlertEvent.at, AlertEvent.actor, AlertEvent.data)
            .where(AlertEvent.alert_id.in_(ids))
            .order_by(AlertEvent.id)
        ).all()
    for alert_id, etype, at, actor, data in rows:
        change = (data or {}).get("change") if isinstance(data, dict) else None
        out[alert_id].append({"type": etype, "at": at, "actor": actor, "change": change})
    return out


def _notes(request: Request, alert_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    from api.alerts.models import AlertNote

    out: dict[int, list[dict[str, Any]]] = {i: [] for i in alert_ids}
    if not alert_ids:
        return out
    with request.app.state.sessions() as s:
        for n in s.scalars(select(AlertNote).where(AlertNote.alert_id.in_(alert_ids)).order_by(AlertNote.id)):
            out[n.alert_id].append({"at": n.at, "author": n.author, "text": n.text})
    return out


def _groups(request: Request, f: Filters, subject: str | None = None, rule: str | None = None) -> list[Group]:
    store = alert_services(request.app).store
    building = _scope(request, f.building)
    if building == "":
        return []
    items, _ = store.query(
        f.status,
        f.severity or None,
        building,
        rule or f.rule or None,
        None,
        None,
        LIST_LIMIT,
        "live",
        subject,
    )
    return grouped(items)


STATUS_NAMES = {
    "active": N_("Active"),
    "active_unack": N_("Active, not acknowledged"),
    "active_ack": N_("Active, acknowledged"),
    "cleared": N_("Cleared"),
    "all": N_("All"),
}
SEVERITY_NAMES = {
    "critical": N_("Critical"),
    "major": N_("Major"),
    "minor": N_("Minor"),
    "warning": N_("Warning"),
    "info": N_("Info"),
}
STATE_NAMES = {"open": N_("Open"), "acknowledged": N_("Acknowledged"), "cleared": N_("Cleared")}
EVENT_NAMES = {
    "opened": N_("raised the alert"),
    "severity": N_("changed the severity"),
    "acknowledged": N_("acknowledged"),
    "cleared": N_("cleared"),
    "assigned": N_("assigned"),
    "note": N_("added a note"),
}
# Who acted when no person did: the rule itself, a backtest, the config loader.
ACTOR_NAMES = {"rule": N_("the rule"), "api": N_("the API"), "backtest": N_("a backtest")}
SUBJECT_NAMES = {
    "room": N_("room %(id)s"),
    "meter": N_("meter %(id)s"),
    "gateway": N_("gateway %(id)s"),
    "unit": N_("unit %(id)s"),
    "campus": N_("the whole campus"),
}


RULES_DIR = Path(__file__).resolve().parent.parent / "alerts" / "rules"


def baseline_msgids() -> dict[str, list[str]]:
    """The evidence templates the rules pass to ``baseline_text``, read from their source.

    Extracted rather than listed, so a rule's new text cannot miss the catalogues unnoticed.
    """
    out: dict[str, list[str]] = {}
    keywords = {baseline_text.__name__: None}
    for fn, line, msg, _c, _ctx in extract_from_dir(str(RULES_DIR), [("**.py", "python")], keywords=keywords):
        for m in msg if isinstance(msg, tuple) else (msg,):
            if m:
                out.setdefault(m, []).append(f"api/alerts/rules/{fn}:{line}")
    return out


def dynamic_msgids() -> dict[str, list[str]]:
    """Rule titles, what-to-check texts and evidence templates: shown through the catalogue, but not
    literals of the console."""
    out: dict[str, list[str]] = {}
    for r in RULES.values():
        for text in (r.title, r.check):
            if text:
                out.setdefault(text, []).append(f"api/alerts/rules ({r.id})")
    for text, where in baseline_msgids().items():
        out.setdefault(text, []).extend(where)
    return out


def _helpers(request: Request) -> dict[str, Any]:
    lang = current_lang(request)
    _ = gettext_for(lang)
    fmt = Formatter(lang, request.app.state.cfg.site.tz)

    def subject_label(a: dict[str, Any]) -> str:
        kind, sid = a["subject"]["kind"], a["subject"]["id"]
        if kind == "building":
            return str(a.get("building_name") or sid)
        if kind == "unit" and (u := request.app.state.cfg.unit(sid)) is not None:
            sid = u.name or u.id
        return _(SUBJECT_NAMES[kind], id=sid) if kind in SUBJECT_NAMES else sid

    def actor_label(who: str | None) -> str:
        return _(ACTOR_NAMES[who]) if who in ACTOR_NAMES else (who or _("the rule"))

    def figure(name: str, v: Any) -> str:
        """One value of an evidence template, written the way the page's language writes numbers."""
        if isinstance(v, bool) or not isinstance(v, int | float):
            return str(v)
        if name.endswith("_share"):
            return fmt.pct(v)
        return format_decimal(v, format="#,##0.######", locale=fmt.locale)  # a threshold like 0.0038 m3/h

    def baseline(a: dict[str, Any]) -> str:
        """How the usual level was made, translated; alerts stored before templates keep their English."""
        ev = a.get("evidence") or {}
        msg = ev.get("baseline_msg")
        if isinstance(msg, dict) and isinstance(msg.get("id"), str) and isinstance(msg.get("args"), dict):
            try:
                return str(_(msg["id"], **{k: figure(k, v) for k, v in msg["args"].items()}))
            except (KeyError, TypeError, ValueError):
                pass  # a template its values do not fit: show the English text instead
        return str(ev.get("baseline_method") or "")

    def summary(a: dict[str, Any]) -> str:
        """The alert in the page's language from its recorded figures (the stored message is English)."""
        title = _(RULES[a["rule"]].title) if a["rule"] in RULES else a["title"]
        place = " ".join(x for x in (str(a["building_name"]), subject_label(a)) if x)
        text = _(
            "%(title)s at %(place)s: measured %(value)s against a threshold of %(threshold)s.",
            title=title,
            place=place,
            value=fmt.qty(a.get("value"), a.get("unit") or "", 1),
            threshold=fmt.qty(a.get("threshold"), a.get("unit") or "", 1),
        )
        w = a.get("waste") or {}
        if w.get("per_day") is not None:
            text += " " + _(
                "Left on, this wastes about %(waste)s a day.",
                waste=fmt.qty(w["per_day"], w.get("unit") or "", 1),
            )
        return text

    return {
        "status_names": STATUS_NAMES,
        "severity_names": SEVERITY_NAMES,
        "state_names": STATE_NAMES,
        "event_names": EVENT_NAMES,
        "rule_titles": {r.id: r.title for r in RULES.values()},
        "rule_checks": {r.id: r.check for r in RULES.values()},
        "subject_label": subject_label,
        "actor_label": actor_label,
        "baseline": baseline,
        "summary": summary,
    }


def _ctx(request: Request, groups: list[Group]) -> dict[str, Any]:
    ids = [a["id"] for g in groups for a in [g.latest, *g.earlier]]
    latest = [g.latest["id"] for g in groups]
    return {
        "groups": groups,
        "history": _history(request, ids),
        "notes": _notes(request, latest),
        "may_act": identity(request).may("operator"),
        "active": "alerts",
        **_helpers(request),
    }


@router.get(PREFIX, response_class=HTMLResponse)
def inbox(
    request: Request,
    status: str | None = Query(None, max_length=20),
    severity: str | None = Query(None, max_length=20),
    building: str | None = Query(None, max_length=200),
    rule: str | None = Query(None, max_length=80),
) -> HTMLResponse:
    cfg = request.app.state.cfg
    f = _filters(status, severity, building, rule)
    groups = _groups(request, f)
    mine = identity(request).buildings
    buildings = [b for b in cfg.buildings if not mine or b.id in mine]
    return render(
        request,
        "console/inbox.html",
        filters=f,
        statuses=STATUS_CHOICES,
        severities=SEVERITIES,
        buildings=buildings,
        rules=list(RULES.values()),
        live=not mine,  # the stream is campus-wide: a building-limited identity reloads instead
        **_ctx(request, groups),
    )


@router.get(PREFIX + "/{alert_id:int}/card", response_class=HTMLResponse)
def card(
    request: Request,
    alert_id: RowId,
    status: str | None = Query(None, max_length=20),
    severity: str | None = Query(None, max_length=20),
    building: str | None = Query(None, max_length=200),
    rule: str | None = Query(None, max_length=80),
) -> HTMLResponse:
    """The group an alert belongs to, as the page shows it under the given filters (empty if none)."""
    a = alert_services(request.app).store.get(alert_id)
    if a is None:
        raise HTTPException(404, f"alert {alert_id} not found")
    f = _filters(status, severity, building, rule)
    groups = [g for g in _groups(request, f, a["subject"]["id"], a["rule"]) if g.key == group_key(a)]
    return render(request, "console/inbox_cards.html", **_ctx(request, groups))


def _quantity(ev: dict[str, Any], kind: str) -> str | None:
    q = ev.get("quantity")
    if isinstance(q, str) and q in QUANTITIES:
        return q
    q = UNIT_QUANTITY.get(str(ev.get("unit") or q or ""))
    if q is not None and QUANTITIES[q].kind.value == kind:
        return q
    return {"electricity": "power_w", "water": "flow_m3h"}.get(kind)


@router.get(DATA + "/{alert_id:int}/evidence")
def evidence(request: Request, alert_id: RowId) -> dict[str, Any]:
    """An ECharts option: the readings of the window the alert was judged on, its threshold and baseline.

    Hourly evidence the rule kept itself (used against usual) is drawn as it is; otherwise the meter's
    readings around the window are read from the store. Times are campus-local (drawn with useUTC).
    """
    cfg = request.app.state.cfg
    a = alert_services(request.app).store.get(alert_id)
    if a is None:
        raise HTTPException(404, f"alert {alert_id} not found")
    _ = gettext_for(current_lang(request))
    ev = a.get("evidence") or {}
    tz = cfg.site.tz

    def local_ms(ts: int) -> int:
        off = datetime.fromtimestamp(ts, tz).utcoffset()
        return (ts + int(off.total_seconds() if off else 0)) * 1000

    series: list[dict[str, Any]] = []
    unit = str(ev.get("unit") or a.get("unit") or "")
    threshold, baseline = ev.get("threshold"), ev.get("baseline")
    window: tuple[int, int] | None = None
    hours = ev.get("hours")
    if isinstance(hours, list) and hours and isinstance(hours[0], dict):
        keys = [k for k in hours[0] if k != "start"]
        used = next((k for k in keys if not k.startswith("usual_")), None)
        usual = next((k for k in keys if k.startswith("usual_")), None)
        for name, key in ((_("Used"), used), (_("Usual"), usual)):
            if key:
                data = [[local_ms(int(h["start"])), h.get(key)] for h in hours if "start" in h]
                series.append({"name": name, "type": "bar", "data": data})
        unit = "m3" if used and "m3" in used else "kWh"
        threshold = None
    else:
        meter = cfg.meter(str(ev.get("meter") or a.get("meter") or ""))
        q = _quantity(ev, meter.kind.value) if meter is not None else None
        if meter is not None and q is not None:
            end = int(ev.get("end") or 0) or int(datetime.fromisoformat(a["last_seen"]).timestamp())
            start = int(ev.get("start") or 0) or end - 3600
            pad = max(600, (end - start) // 4)
            s, e = max(start - pad, end - MAX_EVIDENCE_S), end + pad
            step = (e - s) // MAX_EVIDENCE_POINTS
            agg = "last" if QUANTITIES[q].cumulative else "mean"
            where = f'"meter" = $meter AND time >= {s}s AND time < {e}s'
            if step >= 60:
                sql = (
                    f'SELECT {agg}("{q}") AS v FROM "{meter.kind.value}" WHERE {where} '
                    f"GROUP BY time({step}s) fill(none)"
                )
            else:
                sql = f'SELECT "{q}" AS v FROM "{meter.kind.value}" WHERE {where} LIMIT {MAX_EVIDENCE_POINTS * 2}'
            rows = [r for sr in request.app.state.store.query(sql, {"meter": meter.id}) for r in sr["values"]]
            data = [[local_ms(int(t)), v] for t, v in rows if v is not None]
            series.append(
                {"name": meter.id, "type": "line", "showSymbol": len(data) < 40, "step": "end", "data": data}
            )
            unit = QUANTITIES[q].unit
            window = (local_ms(start), local_ms(end))
    if series:
        marks = []
        if threshold is not None:
            marks.append({"name": _("Threshold"), "yAxis": threshold, "lineStyle": {"color": "#c62828"}})
        if baseline is not None:
            marks.append({"name": _("Usual level"), "yAxis": baseline, "lineStyle": {"color": "#5b6875"}})
        if marks:
            series[0]["markLine"] = {"symbol": "none", "label": {"formatter": "{b}"}, "data": marks}
        if window is not None:
            series[0]["markArea"] = {
                "itemStyle": {"color": "rgba(198,40,40,0.08)"},
                "data": [[{"xAxis": window[0], "name": _("Judged window")}, {"xAxis": window[1]}]],
            }
    fmt_unit = Formatter(current_lang(request), tz).unit(unit)
    return {
        "animation": False,
        "grid": {"left": 56, "right": 16, "top": 32, "bottom": 28},
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 0},
        "xAxis": {"type": "time"},
        "yAxis": {"type": "value", "name": fmt_unit, "scale": True},
        "series": series,
    }
