"""Console pages of the campus, its buildings and its meters (the alert, target, report and admin pages
are their own modules)."""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from api import routes_meters
from api.accounting import periods, service
from api.console import charts, data
from api.console.charts import KIND_NAMES
from api.console.i18n import N_, Formatter, gettext_for
from api.console.render import PREFIX, current_identity, current_lang, render
from api.deps import ID_PATTERN, MeterId, get_meter
from api.timeparse import LOCAL_TIME_PATTERN
from campusmon.quantities import QUANTITIES, MeterKind

router = APIRouter(include_in_schema=False)
BuildingId = Annotated[str, Path(pattern=ID_PATTERN, max_length=200)]
RANKING_METRICS = {
    "intensity": N_("Intensity per m²"),
    "per_capita": N_("Per person and day"),
    "vs_target": N_("Against target"),
}
BUILDING_TYPES = {
    "dorm": N_("dormitory"),
    "classroom": N_("classroom building"),
    "office": N_("office"),
    "lab": N_("laboratory"),
    "library": N_("library"),
    "canteen": N_("canteen"),
    "sports": N_("sports"),
    "admin": N_("administration"),
    "other": N_("other"),
}
STATUS_NAMES = {
    "ok": N_("reporting"),
    "offline": N_("offline"),
    "quarantined": N_("reading quarantined"),
    "reset": N_("register reset"),
}
SEVERITY_NAMES = {
    "critical": N_("critical"),
    "major": N_("major"),
    "minor": N_("minor"),
    "warning": N_("warning"),
    "info": N_("info"),
}
TABLE_ROWS = 500


def _common() -> dict[str, object]:
    return {
        "kind_names": KIND_NAMES,
        "building_types": BUILDING_TYPES,
        "severity_names": SEVERITY_NAMES,
        "status_names": STATUS_NAMES,
        "sub_item_names": charts.SUB_ITEM_NAMES,
        "event_names": charts.EVENT_NAMES,
    }


@router.get(PREFIX + "/", response_class=HTMLResponse)
def overview_page(request: Request) -> Response:
    ident = current_identity(request)
    ov = data.overview(request, ident)
    return render(request, "console/overview.html", active="overview", ov=ov, **_common())


@router.get(PREFIX + "/ranking", response_class=HTMLResponse)
def ranking_page(
    request: Request,
    metric: Literal["intensity", "per_capita", "vs_target"] = "intensity",
    kind: Literal["electricity", "water"] = "electricity",
) -> Response:
    rk = data.ranking(request, current_identity(request), metric, MeterKind(kind))
    return render(
        request,
        "console/ranking.html",
        active="overview",
        rk=rk,
        metric=metric,
        kind=kind,
        metrics=RANKING_METRICS,
        **_common(),
    )


@router.get(PREFIX + "/buildings", response_class=HTMLResponse)
def buildings_page(request: Request) -> Response:
    cfg = request.app.state.cfg
    shown = data.visible_buildings(cfg, current_identity(request))
    counts = {b.id: sum(1 for m in cfg.meters if m.building == b.id) for b in shown}
    return render(
        request, "console/buildings.html", active="buildings", buildings=shown, counts=counts, **_common()
    )


@router.get(PREFIX + "/buildings/{building_id}", response_class=HTMLResponse)
def building_page(request: Request, building_id: BuildingId) -> Response:
    bp = data.building_page(request, building_id)
    _ = gettext_for(current_lang(request))
    elec = next((k for k in bp["summary"]["kinds"] if k["kind"] == "electricity"), None)
    water = next((k for k in bp["summary"]["kinds"] if k["kind"] == "water"), None)
    kwh, m3 = _("kWh"), _("m³")
    opts = {
        "typical": charts.today_vs_typical(_, bp["typical"], kwh),
        "week": charts.week_hourly(_, bp["week"], kwh),
        "heatmap": charts.heatmap(_, bp["heatmap"], kwh),
        "base_load": charts.nightly(_, bp["base_load"], _("Night base load (mean 1:00–5:00)"), _("kW")),
        "sub_items": charts.sub_items(_, bp["sub_items"]),
    }
    if elec is not None:
        opts["gauge"] = charts.quota_gauge(_, elec["month"], kwh)
    if water is not None:
        opts["gauge_water"] = charts.quota_gauge(_, water["month"], m3)
    if bp["has_water"]:
        opts["night_flow"] = charts.nightly(
            _, bp["night_flow"], _("Water night flow (lowest hour 1:00–5:00)"), _("m³/h")
        )
    live = data.live_power(request, building_id)
    return render(
        request,
        "console/building.html",
        active="buildings",
        bp=bp,
        b=bp["building"],
        elec=elec,
        water=water,
        opts=opts,
        live=live,
        **_common(),
    )


@router.get(PREFIX + "/buildings/{building_id}/live", response_class=HTMLResponse)
def building_live(request: Request, building_id: BuildingId) -> Response:
    """The live power box, refreshed by htmx every 30 s."""
    if request.app.state.cfg.building(building_id) is None:
        raise HTTPException(404, f"building {building_id!r} is not in the campus config")
    return render(request, "console/_live.html", live=data.live_power(request, building_id), b_id=building_id)


def _meter_range(
    request: Request, range_: str | None, start: str | None, end: str | None
) -> tuple[int, int, str]:
    tz = request.app.state.cfg.site.tz
    now = int(time.time())
    if start or end:
        s = periods.parse_local(start, tz) if start else now - data.RANGES["7d"]
        e = periods.parse_local(end, tz) if end else now
        if e <= s:
            raise HTTPException(422, "end must be after start")
        if e - s > 366 * 86400:
            raise HTTPException(422, "at most a year of readings at a time")
        return s, e, "custom"
    key = range_ if range_ in data.RANGES else "7d"
    return now - data.RANGES[key], now + 1, key


def _readings(request: Request, meter_id: str, s: int, e: int) -> dict[str, object]:
    """The JSON API's own readings route, called in process (the same query and the same limits)."""
    return data.store_errors(
        routes_meters.readings,
        request,
        meter_id,
        start=str(s),
        end=str(e),
        quantity=None,
        every=None,
        limit=routes_meters.MAX_POINTS,
    )


RangeKey = Query(None, pattern="^(24h|7d|30d)$", alias="range")
Start = Query(None, pattern=LOCAL_TIME_PATTERN, max_length=40)
End = Query(None, pattern=LOCAL_TIME_PATTERN, max_length=40)


@router.get(PREFIX + "/meters/{meter_id}", response_class=HTMLResponse)
def meter_page(
    request: Request,
    meter_id: MeterId,
    range_: str | None = RangeKey,
    start: str | None = Start,
    end: str | None = End,
) -> Response:
    cfg = request.app.state.cfg
    m = get_meter(request, meter_id)
    s, e, key = _meter_range(request, range_, start, end)
    got = _readings(request, meter_id, s, e)
    curves = data.store_errors(
        service.fetch_curves, data.store_of(request), cfg, [m], s, e, data.settings_of(request)
    )
    ev = data.meter_events(cfg, m, curves[m.id], s, e)
    _ = gettext_for(current_lang(request))
    cols: list[str] = got["columns"]  # type: ignore[assignment]
    points: list[list[object]] = got["points"]  # type: ignore[assignment]
    register = next((n for n in cols[1:] if QUANTITIES[n].cumulative and not n.startswith("export")), None)
    rate = next((n for n in cols[1:] if n in ("power_w", "flow_m3h", "gas_flow_m3h", "heat_power_w")), None)

    def series(name: str) -> list[list[object]]:
        i = cols.index(name)
        return [[data.chart_ms(int(p[0]), cfg), p[i]] for p in points if p[i] is not None]  # type: ignore[call-overload]

    opt = None
    if register is not None:
        reg_unit = QUANTITIES[register].unit
        reg_points = series(register)
        by_ts = {int(p[0]): p[cols.index(register)] for p in points}  # type: ignore[call-overload]
        marks = [
            (data.chart_ms(x.ts, cfg), _(charts.EVENT_NAMES.get(x.kind, x.kind)), by_ts.get(x.ts, x.value))
            for x in ev["events"]
        ]
        fmt = Formatter(current_lang(request), cfg.site.tz)
        opt = charts.meter_readings(
            _,
            (charts.quantity_name(_, register), fmt.unit(reg_unit), reg_points),
            (charts.quantity_name(_, rate), fmt.unit(QUANTITIES[rate].unit), series(rate)) if rate else None,
            [[data.chart_ms(a, cfg), data.chart_ms(b, cfg)] for a, b in ev["gaps"]],
            [[data.chart_ms(a, cfg), data.chart_ms(b, cfg)] for a, b, _amt in ev["estimated"]],
            marks,
        )
    tz = cfg.site.tz
    b = cfg.building(m.building)
    return render(
        request,
        "console/meter.html",
        active="buildings",
        m=m,
        b=b,
        cols=cols,
        units=got["units"],
        rows=list(reversed(points))[:TABLE_ROWS],
        total=len(points),
        table_rows=TABLE_ROWS,
        opt=opt,
        ev=ev,
        range_key=key,
        start_text=periods.iso(s, tz)[:16].replace("T", " "),
        start_value=periods.iso(s, tz)[:10],
        end_value=periods.iso(max(s, e - 1), tz)[:10],
        s=s,
        e=e,
        **_common(),
    )


@router.get(PREFIX + "/meters/{meter_id}/readings.csv")
def meter_csv(
    request: Request,
    meter_id: MeterId,
    range_: str | None = RangeKey,
    start: str | None = Start,
    end: str | None = End,
) -> Response:
    """The raw readings of the page's range as CSV, local times with their offset."""
    cfg = request.app.state.cfg
    get_meter(request, meter_id)
    s, e, _key = _meter_range(request, range_, start, end)
    got = _readings(request, meter_id, s, e)
    cols: list[str] = got["columns"]  # type: ignore[assignment]
    units: dict[str, str] = got["units"]  # type: ignore[assignment]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["time", "unix_s", *(f"{c} ({units[c]})" if units.get(c) else c for c in cols[1:])])
    for p in got["points"]:  # type: ignore[attr-defined]
        w.writerow([periods.iso(int(p[0]), cfg.site.tz), int(p[0]), *("" if v is None else v for v in p[1:])])
    name = f"{meter_id}-{periods.iso(s, cfg.site.tz)[:10]}-{periods.iso(e - 1, cfg.site.tz)[:10]}.csv"
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
