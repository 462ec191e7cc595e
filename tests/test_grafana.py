"""Grafana provisioning: the dashboards are what the generator writes, they are well formed, every
InfluxQL panel returns the expected series from a real InfluxDB holding simulated data, and every
Prometheus metric a panel names is one the project exports."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import pytest
import yaml

from campusmon.influx import open_store
from campusmon.reading import Reading
from tests.conftest import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
CAMPUS = {
    "buildings": [
        {"id": "dorm-1", "name": "Dorm 1", "type": "dorm", "floor_area_m2": 6000, "occupants": 480},
        {"id": "teach-1", "name": "Teaching 1", "type": "classroom", "floor_area_m2": 9000, "occupants": 0},
    ],
    "meters": [
        {"id": "e-dorm-1", "building": "dorm-1", "kind": "electricity", "category": "01A00"},
        {"id": "e-dorm-1-ac", "building": "dorm-1", "kind": "electricity", "category": "01B00"},
        {"id": "w-dorm-1", "building": "dorm-1", "kind": "water", "category": "02000"},
        {"id": "e-teach-1", "building": "teach-1", "kind": "electricity", "category": "01B00"},
    ],
}
ELEC = {"e-dorm-1": "dorm-1", "e-dorm-1-ac": "dorm-1", "e-teach-1": "teach-1"}
START = 1_790_000_000 // 3600 * 3600  # an hour boundary in 2026
HOURS = 30

# For each panel, the tag its series are grouped by and the values expected: every meter, building
# or sub-item that has data must appear, and nothing else. Panels without GROUP BY tags give one series.
EXPECTED: dict[str, tuple[str | None, set[str]]] = {
    "Electricity per building per day": ("building", {"dorm-1", "teach-1"}),
    "Water per building per day": ("building", {"dorm-1"}),
    "Electricity by sub-item": ("category", {"01A00", "01B00"}),
    "Campus power": (None, set()),
    "Power per meter": ("meter", set(ELEC)),
    "Hourly electricity by sub-item": ("category", {"01A00", "01B00"}),
    "Hourly water": (None, set()),
    "Water flow": ("meter", {"w-dorm-1"}),
    "Estimated share of the hourly figures": ("meter", set(ELEC) | {"w-dorm-1"}),
    "Electricity readings per meter per hour": ("meter", set(ELEC)),
    "Water readings per meter per hour": ("meter", {"w-dorm-1"}),
    "Last electricity register per meter": ("meter", set(ELEC)),
    "Readings behind each hourly figure": ("meter", set(ELEC) | {"w-dorm-1"}),
}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _targets(kind: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (name, p, t)
        for name, d in _dashboards().items()
        for p in d["panels"]
        for t in p["targets"]
        if t["datasource"]["type"] == kind
    ]


def test_committed_dashboards_equal_the_generator() -> None:
    rendered = _generator().render()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "run: python deploy/grafana/dashboards.py"


def test_dashboards_are_well_formed() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "campusmon.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    influx = next(d for d in provisioned["datasources"] if d["type"] == "influxdb")
    assert influx["jsonData"]["dbName"], "InfluxQL data sources need jsonData.dbName"
    assert "password" not in influx, "secrets belong in secureJsonData from the environment"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "campusmon.yaml").read_text())
    assert provider["providers"][0]["options"]["path"]
    dashboards = _dashboards()
    assert set(dashboards) == {"campus-overview.json", "building.json", "meter-health.json", "system.json"}
    seen_uids: set[str] = set()
    for name, d in dashboards.items():
        assert d["uid"] not in seen_uids and len(d["uid"]) <= 40, name
        seen_uids.add(d["uid"])
        variables = {v["name"] for v in d["templating"]["list"]}
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{name}: {p['title']} off the grid"
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{name}: {p['title']} overlaps another panel"
            cells |= mine
            for t in p["targets"]:
                assert uids.get(t["datasource"]["uid"]) == t["datasource"]["type"], f"{name}: unknown data source"
                text = t.get("query") or t.get("expr") or ""
                for var in re.findall(r"\$([a-z]\w*)", text):
                    assert var in variables | {"timeFilter", "tag_building", "tag_meter", "tag_category"}, (
                        f"{name}: {p['title']} uses ${var}, which is not defined"
                    )
            assert p["title"] in EXPECTED or p["targets"][0]["datasource"]["type"] == "prometheus", p["title"]


def _grafana_query(q: str, start: int, end: int) -> str:
    """What Grafana sends for a panel: its macros expanded, the building variable set to 'All'."""
    all_buildings = "(" + "|".join(re.escape(b) for b in ("dorm-1", "teach-1")) + ")"
    return (
        q.replace("$timeFilter", f"time >= {start}s and time <= {end}s")
        .replace("$__interval", "10m")
        .replace("$building", all_buildings)
    )


@pytest.fixture
def simulated_store(influxdb: Any, make_config: Any) -> Any:
    """Two buildings' meters for 30 hours at 5-minute readings (one gap), with the hourly rollups up to date."""
    cfg = make_config(influx=influxdb, data=CAMPUS)
    store = open_store(cfg)
    store.ensure_database()
    readings: list[Reading] = []
    for i in range(HOURS * 12 + 1):
        ts = START + i * 300
        for n, m in enumerate(ELEC):
            if m == "e-teach-1" and 120 < i < 150:
                continue  # a gap of 2.5 hours: its hours are estimated
            readings.append(Reading(m, "energy_kwh", 1000.0 + n * 100 + i * 0.5 * (n + 1), ts))
            readings.append(Reading(m, "power_w", 6000.0 * (n + 1), ts))
        readings.append(Reading("w-dorm-1", "volume_m3", 500.0 + i * 0.1, ts))
        readings.append(Reading("w-dorm-1", "flow_m3h", 1.2, ts))
    outcome = store.write(readings)
    assert not outcome.rejected
    from campusmon.db import init_db
    from campusmon.rollups import RollupMaintainer

    _engine, sessions = init_db(cfg.database.url)
    RollupMaintainer(cfg, store, sessions).pass_once()
    yield store
    store.close()


def test_every_influxql_panel_returns_its_series(simulated_store: Any) -> None:
    start, end = START, START + HOURS * 3600
    checked = 0
    for name, panel, target in _targets("influxdb"):
        q = _grafana_query(target["query"], start, end)
        series = simulated_store.query(q)
        assert series, f"{name}: {panel['title']} returned nothing for: {q}"
        values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
        assert any(v != 0 for v in values), f"{name}: {panel['title']} returned only zeros or nulls"
        tag, want = EXPECTED[panel["title"]]
        if tag is None:
            assert len(series) == 1, f"{panel['title']}: expected one series, got {len(series)}"
        else:
            got = {s.get("tags", {}).get(tag) for s in series}
            assert got == want, f"{name}: {panel['title']} grouped by {tag}: {got} != {want}"
        checked += 1
    assert checked == len(EXPECTED)
    for name, d in _dashboards().items():
        for v in d["templating"]["list"]:
            series = simulated_store.query(v["query"])
            assert {row[1] for s in series for row in s["values"]} == {"dorm-1", "teach-1"}, name


def test_the_daily_panel_sums_the_rollups_to_the_metered_use(simulated_store: Any) -> None:
    """Daily electricity per building equals the register rise: the panel adds hours, not registers."""
    start, end = START, START + HOURS * 3600
    q = next(t["query"] for _n, p, t in _targets("influxdb") if p["title"] == "Electricity per building per day")
    series = simulated_store.query(_grafana_query(q, start, end))
    totals = {s["tags"]["building"]: sum(row[1] or 0 for row in s["values"]) for s in series}
    steps = HOURS * 12
    assert totals["teach-1"] == pytest.approx(steps * 0.5 * 3, rel=1e-9)
    assert totals["dorm-1"] == pytest.approx(steps * 0.5 * (1 + 2), rel=1e-9)


def test_every_prometheus_metric_is_exported() -> None:
    from prometheus_client import REGISTRY

    import campusmon.metrics  # noqa: F401  (registers the series)

    exported: set[str] = set()
    for fam in REGISTRY.collect():
        exported |= {fam.name, fam.name + "_total", fam.name + "_bucket", fam.name + "_count", fam.name + "_sum"}
    targets = _targets("prometheus")
    assert targets
    for name, panel, target in targets:
        names = set(re.findall(r"\bcampusmon_\w+", target["expr"]))
        assert names, f"{name}: {panel['title']} names no campusmon metric"
        assert names <= exported, f"{name}: {panel['title']} names {names - exported}, not exported"
