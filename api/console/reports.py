"""The monthly report as a page: the campus summary first, then charts, then every row of the report.

The figures are ``service.monthly_report``, the function behind ``GET /api/v1/reports/monthly``, and
the page links to that route's CSV. It prints to PDF from the browser: a print stylesheet
(``pages.css``, ``@media print``) drops the navigation and forms, keeps the charts whole and repeats
the table heading on every sheet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from api.accounting import periods, service
from api.accounting.campus import ELECTRICITY_SUB_ITEMS, KIND_CODE
from api.console import data
from api.console.charts import KIND_NAMES, SUB_ITEM_NAMES
from api.console.i18n import N_, Formatter, gettext_for
from api.console.render import PREFIX, current_lang, render
from api.timeparse import MONTH_PATTERN
from campusmon.quantities import MeterKind

router = APIRouter(include_in_schema=False)
MONTHS_OFFERED = 13
SCOPE_NAMES = {
    "building": N_("Buildings"),
    "group": N_("Groups"),
    "unit": N_("Units"),
    "campus": N_("Campus"),
}
TARGET_TYPES = {
    "quota": N_("quota"),
    "intensity": N_("intensity target"),
    "per_capita": N_("per-person target"),
    "reduction": N_("reduction target"),
}


@dataclass
class KindSummary:
    """One carrier on the whole campus this month, and how its buildings stand against their targets."""

    kind: str
    row: service.ReportRow
    buildings: int
    with_target: int
    over_target: int


def summary(rep: service.MonthlyReport) -> list[KindSummary]:
    out = []
    for r in rep.rows:
        if r.scope != "campus":
            continue
        code = KIND_CODE[MeterKind(r.kind)]
        rows = [b for b in rep.rows if b.scope == "building" and b.category == code]
        if r.kind not in ("electricity", "water") and not rows:
            continue
        targeted = [b for b in rows if b.deviation_pct is not None]
        out.append(
            KindSummary(r.kind, r, len(rows), len(targeted), sum(1 for b in targeted if b.deviation_pct > 0))
        )
    return out


def _bars(_: Any, fmt: Formatter, rows: list[service.ReportRow], unit: str) -> dict[str, Any]:
    """Consumption per building, best (lowest) last; the target of each, where it has one, as a mark."""
    rows = sorted(rows, key=lambda r: r.consumption)
    names = [r.name for r in rows]
    series: list[dict[str, Any]] = [
        {
            "name": _("Consumption"),
            "type": "bar",
            "data": [
                {"value": round(r.consumption, 3), "itemStyle": {"color": "#c62828"}}
                if r.deviation_pct is not None and r.deviation_pct > 0
                else round(r.consumption, 3)
                for r in rows
            ],
        }
    ]
    if any(r.target is not None for r in rows):
        series.append(
            {
                "name": _("Target"),
                "type": "scatter",
                "symbol": "rect",
                "symbolSize": [4, 16],
                "itemStyle": {"color": "#12324f"},
                "data": [None if r.target is None else round(r.target, 3) for r in rows],
            }
        )
    return {
        "animation": False,
        "grid": {"left": 8, "right": 24, "top": 28, "bottom": 8, "containLabel": True},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "legend": {"top": 0},
        "xAxis": {"type": "value", "name": fmt.unit(unit)},
        "yAxis": {"type": "category", "data": names, "axisLabel": {"width": 110, "overflow": "truncate"}},
        "series": series,
    }


def _sub_items(_: Any, rep: service.MonthlyReport) -> dict[str, Any] | None:
    parts = []
    for code in ELECTRICITY_SUB_ITEMS:
        v = sum(r.consumption for r in rep.rows if r.scope == "building" and r.category == code)
        if v > 0:
            parts.append({"name": _(SUB_ITEM_NAMES[code]), "value": round(v, 3)})
    if not parts:
        return None
    return {
        "animation": False,
        "tooltip": {"trigger": "item", "formatter": "{b}: {c} ({d}%)"},
        "legend": {"bottom": 0},
        "series": [{"name": _("Sub-items"), "type": "pie", "radius": ["35%", "65%"], "data": parts}],
    }


def _months(now: int, tz: Any) -> list[str]:
    """This month and the twelve before it, newest first."""
    label = periods.buckets(now, now + 1, "month", tz)[0].label
    y, m = int(label[:4]), int(label[5:])
    out = []
    for _i in range(MONTHS_OFFERED):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out


@router.get(PREFIX + "/reports", response_class=HTMLResponse)
def report_page(
    request: Request, month: str | None = Query(None, pattern=MONTH_PATTERN, max_length=7)
) -> Response:
    cfg = data.cfg_of(request)
    now = int(time.time())
    months = _months(now, cfg.site.tz)
    month = month or months[0]
    rep = data.store_errors(
        service.monthly_report,
        data.store_of(request),
        cfg,
        data.settings_of(request),
        month,
        data.targets_of(request),
        now,
    )
    lang = current_lang(request)
    _ = gettext_for(lang)
    fmt = Formatter(lang, cfg.site.tz)
    opts: dict[str, Any] = {}
    for kind in ("electricity", "water"):
        rows = [r for r in rep.rows if r.scope == "building" and r.category == KIND_CODE[MeterKind(kind)]]
        if rows:
            opts[kind] = _bars(_, fmt, rows, rows[0].unit)
    sub = _sub_items(_, rep)
    if sub is not None:
        opts["sub_items"] = sub
    order = {"building": 0, "group": 1, "unit": 2, "campus": 3}
    return render(
        request,
        "console/reports.html",
        active="reports",
        rep=rep,
        month=rep.month,
        months=months if month in months else [month, *months],
        kinds=summary(rep),
        low=[r for r in rep.rows if r.low_completeness],
        rows=sorted(rep.rows, key=lambda r: order.get(r.scope, 3)),
        opts=opts,
        scope_names=SCOPE_NAMES,
        kind_names=KIND_NAMES,
        sub_item_names=SUB_ITEM_NAMES,
        target_types=TARGET_TYPES,
        csv_url=f"/api/v1/reports/monthly?month={rep.month}&format=csv",
        generated=now,
        running=periods.month_range(rep.month, cfg.site.tz).end > now,
    )
