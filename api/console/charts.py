"""ECharts options for the console's charts, built on the server from the page's figures.

Options are plain JSON (no functions), embedded in the page and drawn by static/console/console.js.
Every label goes through the page's ``_`` so a chart speaks the page's language; times are
campus-local milliseconds drawn with ``useUTC`` (``data.chart_ms``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.console.i18n import N_

Gettext = Callable[..., str]
PALETTE = ["#0b6bcb", "#e07000", "#1a7f37", "#8e44ad", "#c62828", "#41729f", "#b38f00"]
# Carrier names, one table for every page that names a meter kind.
KIND_NAMES = {"electricity": N_("Electricity"), "water": N_("Water"), "gas": N_("Gas"), "heat": N_("Heat")}
SUB_ITEM_NAMES = {
    "01000": N_("Electricity (total)"),
    "01A00": N_("Lighting and sockets"),
    "01B00": N_("HVAC"),
    "01C00": N_("Power"),
    "01D00": N_("Special"),
    "02000": N_("Water"),
    "03000": N_("Gas"),
    "04000": N_("District heat"),
    "05000": N_("District cooling"),
}
EVENT_NAMES = {
    "rollover": N_("rollover"),
    "reset": N_("reset"),
    "level_shift": N_("level shift"),
    "quarantined": N_("quarantined"),
    "conflict": N_("conflict"),
    "unconfirmed": N_("unconfirmed"),
}
QUANTITY_NAMES = {
    "energy_kwh": N_("energy register"),
    "export_energy_kwh": N_("exported energy register"),
    "power_w": N_("active power"),
    "volume_m3": N_("volume register"),
    "flow_m3h": N_("flow"),
    "gas_volume_m3": N_("gas volume register"),
    "gas_flow_m3h": N_("gas flow"),
    "heat_energy_kwh": N_("heat energy register"),
    "heat_power_w": N_("thermal power"),
}
DAY_KINDS = {
    "term": N_("term day"),
    "vacation": N_("vacation day"),
    "weekend": N_("weekend day"),
    "holiday": N_("holiday"),
}


def quantity_name(_: Gettext, name: str) -> str:
    return _(QUANTITY_NAMES[name]) if name in QUANTITY_NAMES else name


def _base(_: Gettext) -> dict[str, Any]:
    return {
        "color": PALETTE,
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 50, "right": 20, "top": 40, "bottom": 40, "containLabel": True},
        "legend": {"top": 0},
        "animation": False,
    }


def week_hourly(_: Gettext, points: list[list[Any]], unit: str) -> dict[str, Any]:
    return {
        **_base(_),
        "xAxis": {"type": "time"},
        "yAxis": {"type": "value", "name": unit},
        "dataZoom": [{"type": "inside"}],
        "series": [{"name": _("Electricity per hour"), "type": "bar", "data": points, "barMaxWidth": 6}],
    }


def today_vs_typical(_: Gettext, typical: dict[str, Any], unit: str) -> dict[str, Any]:
    hours = [f"{h:02d}:00" for h in range(24)]
    kind = _(DAY_KINDS.get(typical["kind"], typical["kind"]))
    return {
        **_base(_),
        "xAxis": {"type": "category", "data": hours},
        "yAxis": {"type": "value", "name": unit},
        "series": [
            {"name": _("Today"), "type": "bar", "data": typical["today"], "barMaxWidth": 14},
            {
                "name": _("Typical %(kind)s (mean of %(n)s days)", kind=kind, n=typical["days"]),
                "type": "line",
                "data": typical["typical"],
                "smooth": True,
                "symbol": "none",
                "lineStyle": {"width": 2},
            },
        ],
    }


def heatmap(_: Gettext, hm: dict[str, Any], unit: str) -> dict[str, Any]:
    slots = [f"{h // 2:02d}:{30 * (h % 2):02d}" for h in range(48)]
    return {
        "animation": False,
        "tooltip": {"position": "top"},
        "grid": {"left": 80, "right": 20, "top": 10, "bottom": 70, "containLabel": True},
        "xAxis": {"type": "category", "data": slots, "splitArea": {"show": True}},
        "yAxis": {"type": "category", "data": hm["days"], "inverse": True},
        "visualMap": {
            "min": 0,
            "max": hm["max"] or 1,
            "calculable": True,
            "orient": "horizontal",
            "left": "center",
            "bottom": 0,
            "text": [unit, ""],
            "inRange": {"color": ["#f0f7ff", "#7fb3e6", "#0b6bcb", "#e07000", "#c62828"]},
        },
        "series": [{"name": _("Electricity per half hour"), "type": "heatmap", "data": hm["cells"]}],
    }


def nightly(_: Gettext, points: list[list[Any]], name: str, unit: str) -> dict[str, Any]:
    return {
        **_base(_),
        "xAxis": {"type": "category", "data": [p[0] for p in points]},
        "yAxis": {"type": "value", "name": unit},
        "series": [{"name": name, "type": "line", "data": [p[1] for p in points], "symbolSize": 4}],
    }


def sub_items(_: Gettext, items: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [i for i in items if i["kind"] == "electricity" and not i["total"]]
    return {
        "animation": False,
        "color": PALETTE,
        "tooltip": {"trigger": "item"},
        "legend": {"bottom": 0},
        "series": [
            {
                "name": _("Electricity by sub-item"),
                "type": "pie",
                "radius": ["35%", "65%"],
                "data": [
                    {"name": _(SUB_ITEM_NAMES.get(i["code"], i["code"])), "value": i["value"]} for i in parts
                ],
            }
        ],
    }


def quota_gauge(_: Gettext, month: dict[str, Any], unit: str) -> dict[str, Any]:
    quota, value, proj = month.get("quota"), month.get("value") or 0.0, month.get("projected")
    top = max(x for x in (quota or 0.0, proj or 0.0, value, 1.0))
    top = round(top * 1.15, 0)
    stops = [[min(1.0, quota / top), "#1a7f37"], [1, "#c62828"]] if quota else [[1, "#0b6bcb"]]
    series = [
        {
            "name": _("Month so far"),
            "type": "gauge",
            "min": 0,
            "max": top,
            "axisLine": {"lineStyle": {"width": 12, "color": stops}},
            "splitNumber": 4,
            "axisLabel": {"distance": 16, "fontSize": 10},
            "pointer": {"width": 5},
            "detail": {"valueAnimation": False, "fontSize": 16, "offsetCenter": [0, "70%"]},
            "title": {"offsetCenter": [0, "95%"], "fontSize": 12},
            "data": [{"value": round(value, 1), "name": _("Month so far") + f" ({unit})"}],
        }
    ]
    if proj is not None:
        series.append(
            {
                "name": _("Projected month end"),
                "type": "gauge",
                "min": 0,
                "max": top,
                "axisLine": {"show": False},
                "axisTick": {"show": False},
                "splitLine": {"show": False},
                "axisLabel": {"show": False},
                "pointer": {"width": 3, "itemStyle": {"color": "#e07000"}},
                "detail": {"show": False},
                "title": {"show": False},
                "data": [{"value": round(proj, 1), "name": _("Projected month end")}],
            }
        )
    return {"animation": False, "tooltip": {"formatter": "{a}: {c}"}, "series": series}


def meter_readings(
    _: Gettext,
    register: tuple[str, str, list[list[Any]]],
    rate: tuple[str, str, list[list[Any]]] | None,
    gaps: list[list[int]],
    estimated: list[list[int]],
    events: list[tuple[int, str, float]],
) -> dict[str, Any]:
    """The register (and the rate, on its own axis), with gaps and estimated spans shaded and events marked."""
    name, unit, data = register
    reg = {
        "name": name,
        "type": "line",
        "data": data,
        "showSymbol": False,
        "connectNulls": False,
        "markArea": {
            "silent": True,
            "data": [
                [{"name": _("gap"), "xAxis": a, "itemStyle": {"color": "rgba(198,40,40,0.12)"}}, {"xAxis": b}]
                for a, b in gaps
            ]
            + [
                [
                    {"name": _("estimated"), "xAxis": a, "itemStyle": {"color": "rgba(224,112,0,0.18)"}},
                    {"xAxis": b},
                ]
                for a, b in estimated
            ],
        },
        "markPoint": {
            "symbolSize": 36,
            "data": [{"name": label, "coord": [t, v], "value": label} for t, label, v in events],
        },
    }
    series: list[dict[str, Any]] = [reg]
    y_axes: list[dict[str, Any]] = [{"type": "value", "name": unit, "scale": True}]
    if rate is not None:
        rname, runit, rdata = rate
        series.append({"name": rname, "type": "line", "yAxisIndex": 1, "data": rdata, "showSymbol": False,
                       "lineStyle": {"width": 1}})  # fmt: skip
        y_axes.append({"type": "value", "name": runit, "scale": True, "splitLine": {"show": False}})
    return {
        **_base(_),
        "grid": {"left": 50, "right": 50, "top": 40, "bottom": 80, "containLabel": True},
        "xAxis": {"type": "time"},
        "yAxis": y_axes,
        "dataZoom": [{"type": "inside"}, {"type": "slider", "bottom": 10}],
        "toolbox": {"feature": {"dataZoom": {"yAxisIndex": "none"}, "restore": {}}},
        "series": series,
    }
