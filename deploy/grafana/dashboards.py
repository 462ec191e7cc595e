"""Grafana dashboards as code: ``python deploy/grafana/dashboards.py`` writes ``deploy/grafana/dashboards/*.json``.

The JSON files are committed so Grafana's file provisioning can load them as they are; the tests check
that they equal this script's output, that every panel's InfluxQL returns the expected series from a
real InfluxDB holding simulated data, and that every Prometheus metric a panel names is exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

INFLUX = {"type": "influxdb", "uid": "campusmon-influxdb"}
PROM = {"type": "prometheus", "uid": "campusmon-prometheus"}
SCHEMA_VERSION = 39

# Hourly consumption (kWh, m³) from the rollups: sum over meters, not differences of registers, so
# resets, rollovers and quarantined glitches are handled once by the consumption policy.
# They live in their own retention policy, ``influxdb.rollup_retention_policy`` (default "forever").
HOURLY = '"forever"."energy_hourly"'


def influx_target(query: str, alias: str = "", ref: str = "A", fmt: str = "time_series") -> dict[str, Any]:
    t: dict[str, Any] = {
        "refId": ref,
        "datasource": INFLUX,
        "rawQuery": True,
        "query": query,
        "resultFormat": fmt,
    }
    if alias:
        t["alias"] = alias
    return t


def prom_target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend}


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def panel(
        self,
        title: str,
        kind: str,
        targets: list[dict[str, Any]],
        w: int = 12,
        h: int = 8,
        unit: str = "",
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        p: dict[str, Any] = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "datasource": targets[0]["datasource"],
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
            "options": options or {},
        }
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return p


def variable(name: str, label: str, query: str, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": INFLUX,
        "query": query,
        "definition": query,
        "refresh": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "sort": 1,
    }


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["campusmon"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "timezone": "browser",
        "time": kw.get("time", {"from": "now-7d", "to": "now"}),
        "refresh": kw.get("refresh", "5m"),
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [{"title": "Campus dashboards", "type": "dashboards", "tags": ["campusmon"], "asDropdown": True}],
        "panels": panels,
    }


BUILDINGS_VAR = variable("building", "Building", 'SHOW TAG VALUES FROM "electricity" WITH KEY = "building"')


def campus_overview() -> dict[str, Any]:
    lay = Layout()
    panels = [
        lay.panel(
            "Electricity per building per day",
            "barchart",
            [influx_target(
                f'SELECT sum("value") FROM {HOURLY} WHERE "kind" = \'electricity\' AND $timeFilter '
                'GROUP BY time(1d), "building" fill(0)',
                "$tag_building",
            )],
            w=24, unit="kwatth",
            description="Sum of the meters' hourly consumption (rollups), per calendar day.",
        ),
        lay.panel(
            "Water per building per day",
            "barchart",
            [influx_target(
                f'SELECT sum("value") FROM {HOURLY} WHERE "kind" = \'water\' AND $timeFilter '
                'GROUP BY time(1d), "building" fill(0)',
                "$tag_building",
            )],
            unit="m3",
        ),
        lay.panel(
            "Electricity by sub-item",
            "piechart",
            [influx_target(
                f'SELECT sum("value") FROM {HOURLY} WHERE "kind" = \'electricity\' AND $timeFilter '
                'GROUP BY "category"',
                "$tag_category",
            )],
            unit="kwatth",
            description="01A00 lighting and sockets, 01B00 HVAC, 01C00 power, 01D00 special.",
        ),
        lay.panel(
            "Campus power",
            "timeseries",
            [influx_target(
                'SELECT sum("p") FROM (SELECT mean("power_w") AS "p" FROM "electricity" WHERE $timeFilter '
                'GROUP BY time($__interval), "meter" fill(none)) WHERE $timeFilter GROUP BY time($__interval)',
                "campus",
            )],
            w=24, unit="watt",
        ),
    ]
    return dashboard("campusmon-overview", "Campus overview", panels, [])


def building() -> dict[str, Any]:
    lay = Layout()
    sel = '"building" =~ /^$building$/'
    panels = [
        lay.panel(
            "Power per meter",
            "timeseries",
            [influx_target(
                f'SELECT mean("power_w") FROM "electricity" WHERE {sel} AND $timeFilter '
                'GROUP BY time($__interval), "meter" fill(none)',
                "$tag_meter",
            )],
            w=24, unit="watt",
        ),
        lay.panel(
            "Hourly electricity by sub-item",
            "timeseries",
            [influx_target(
                f'SELECT sum("value") FROM {HOURLY} WHERE "kind" = \'electricity\' AND {sel} AND $timeFilter '
                'GROUP BY time(1h), "category" fill(0)',
                "$tag_category",
            )],
            unit="kwatth",
        ),
        lay.panel(
            "Hourly water",
            "timeseries",
            [influx_target(
                f'SELECT sum("value") FROM {HOURLY} WHERE "kind" = \'water\' AND {sel} AND $timeFilter '
                'GROUP BY time(1h) fill(0)',
                "water",
            )],
            unit="m3",
        ),
        lay.panel(
            "Water flow",
            "timeseries",
            [influx_target(
                f'SELECT mean("flow_m3h") FROM "water" WHERE {sel} AND $timeFilter '
                'GROUP BY time($__interval), "meter" fill(none)',
                "$tag_meter",
            )],
            unit="m3/h",
            description="Flow that never falls to zero at night is a leak (rule leak.night_flow).",
        ),
        lay.panel(
            "Estimated share of the hourly figures",
            "timeseries",
            [influx_target(
                f'SELECT mean("estimated_share") FROM {HOURLY} WHERE {sel} AND $timeFilter '
                'GROUP BY time(1d), "meter" fill(none)',
                "$tag_meter",
            )],
            unit="percentunit",
            description="Share of each day's consumption interpolated across gaps in the readings.",
        ),
    ]
    return dashboard("campusmon-building", "Building", panels, [BUILDINGS_VAR])


def meter_health() -> dict[str, Any]:
    lay = Layout()
    panels = [
        lay.panel(
            "Electricity readings per meter per hour",
            "timeseries",
            [influx_target(
                'SELECT count("energy_kwh") FROM "electricity" WHERE "building" =~ /^$building$/ AND $timeFilter '
                'GROUP BY time(1h), "meter" fill(0)',
                "$tag_meter",
            )],
            description="A meter that drops to 0 is silent (rules data.offline, data.gateway_offline).",
        ),
        lay.panel(
            "Water readings per meter per hour",
            "timeseries",
            [influx_target(
                'SELECT count("volume_m3") FROM "water" WHERE "building" =~ /^$building$/ AND $timeFilter '
                'GROUP BY time(1h), "meter" fill(0)',
                "$tag_meter",
            )],
        ),
        lay.panel(
            "Last electricity register per meter",
            "table",
            [influx_target(
                'SELECT last("energy_kwh") FROM "electricity" WHERE "building" =~ /^$building$/ AND $timeFilter '
                'GROUP BY "meter"',
                fmt="table",
            )],
            unit="kwatth",
            description="The time column is the meter's last reading.",
        ),
        lay.panel(
            "Readings behind each hourly figure",
            "timeseries",
            [influx_target(
                f'SELECT sum("readings") FROM {HOURLY} WHERE "building" =~ /^$building$/ AND $timeFilter '
                'GROUP BY time(1d), "meter" fill(0)',
                "$tag_meter",
            )],
        ),
    ]
    return dashboard("campusmon-meter-health", "Meter health", panels, [BUILDINGS_VAR], time={"from": "now-2d", "to": "now"})


def system() -> dict[str, Any]:
    lay = Layout()
    panels = [
        lay.panel(
            "Readings stored per second",
            "timeseries",
            [prom_target("sum by (via) (rate(campusmon_readings_stored_total[5m]))", "{{via}}")],
            unit="ops",
        ),
        lay.panel(
            "Records refused per second, by reason",
            "timeseries",
            [prom_target("sum by (reason) (rate(campusmon_readings_rejected_total[5m]))", "{{reason}}")],
            unit="ops",
        ),
        lay.panel(
            "Messages waiting for their ack",
            "timeseries",
            [prom_target("sum by (instance) (campusmon_backlog_messages)", "{{instance}}")],
        ),
        lay.panel(
            "Batch latency, 95th percentile",
            "timeseries",
            [prom_target(
                "histogram_quantile(0.95, sum by (le, via) (rate(campusmon_batch_seconds_bucket[5m])))", "{{via}}"
            )],
            unit="s",
        ),
        lay.panel(
            "InfluxDB writes succeeding",
            "stat",
            [prom_target("min by (instance) (campusmon_store_up)", "{{instance}}")],
            w=8,
        ),
        lay.panel(
            "Collectors healthy",
            "stat",
            [prom_target("min by (client_id) (campusmon_collector_healthy)", "{{client_id}}")],
            w=8,
        ),
        lay.panel(
            "Store retries per second",
            "timeseries",
            [prom_target("sum by (via) (rate(campusmon_store_retries_total[5m]))", "{{via}}")],
            w=8, unit="ops",
        ),
    ]
    return dashboard("campusmon-system", "System", panels, [], time={"from": "now-6h", "to": "now"}, refresh="30s")


DASHBOARDS = {
    "campus-overview.json": campus_overview,
    "building.json": building,
    "meter-health.json": meter_health,
    "system.json": system,
}


def render() -> dict[str, str]:
    return {name: json.dumps(make(), indent=2, ensure_ascii=False) + "\n" for name, make in DASHBOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
