"""Targets declared in ``campus.yaml`` reach the targets store at start, idempotently, with an audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.accounting import target_repo
from api.accounting.targets import validate_spec
from api.alerts.targets_config import load_config_targets
from campusmon.config import CampusConfig, ConfigError, parse_config
from campusmon.db import init_db
from tests.auth_helpers import admin_headers

QUOTA = {
    "name": "canteen daily electricity quota",
    "scope": "building",
    "scope_id": "c1",
    "kind": "electricity",
    "type": "quota",
    "period": "day",
    "value": 900.0,
}


def cfg_with(tmp: Path, targets: list[dict[str, Any]]) -> CampusConfig:
    return parse_config(
        {
            "database": {"url": f"sqlite:///{tmp}/campus.sqlite"},
            "buildings": [{"id": "c1", "name": "Canteen 1", "type": "canteen"}],
            "meters": [{"id": "e-c1", "building": "c1", "kind": "electricity", "category": "01000"}],
            "targets": targets,
        },
        "campus.yaml",
        environ={},
    )


def test_config_targets_load_once_update_on_change_and_leave_api_targets_alone(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, [QUOTA])
    _e, sessions = init_db(cfg.database.url)
    with sessions() as s:  # a target made at run time through the API
        target_repo.create(s, validate_spec({**QUOTA, "name": "made by hand", "value": 5.0}, cfg), "warden")
    assert load_config_targets(cfg, sessions) == {"created": 1, "updated": 0, "unchanged": 0}
    assert load_config_targets(cfg, sessions) == {"created": 0, "updated": 0, "unchanged": 1}
    changed = cfg_with(tmp_path, [{**QUOTA, "value": 950.0}])
    assert load_config_targets(changed, sessions)["updated"] == 1
    with sessions() as s:
        rows = {t.name: t.value for t in target_repo.all_targets(s)}
        audit = [(a["action"], a["actor"]) for a in reversed(target_repo.history(s))]
    assert rows == {"made by hand": 5.0, QUOTA["name"]: 950.0}
    assert audit == [("create", "warden"), ("create", "config:campus.yaml"), ("update", "config:campus.yaml")]


def test_bad_config_targets_name_the_file_and_the_entry(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, [{**QUOTA, "scope_id": "nowhere"}, {**QUOTA, "name": ""}])
    _e, sessions = init_db(cfg.database.url)
    with pytest.raises(ConfigError) as e:
        load_config_targets(cfg, sessions)
    assert "campus.yaml: targets[0] (canteen daily electricity quota)" in str(e.value)
    assert "campus.yaml: targets[1]: a name is required" in str(e.value)


def test_the_api_loads_config_targets_when_its_alert_services_start(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    cfg = cfg_with(tmp_path, [QUOTA])
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as c:
        assert c.get("/api/v1/alerts").status_code == 200
        names = [t["name"] for t in c.get("/api/v1/targets").json()["targets"]]
    assert names == [QUOTA["name"]]


def test_a_backtest_without_a_campus_database_counts_the_config_quotas(
    influxdb: Any, make_config: Any
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from api.alerts.backtest import backtest
    from campusmon.influx import open_store
    from campusmon.reading import Reading

    cfg = make_config(
        influx=influxdb,
        data={
            "buildings": [{"id": "c1", "name": "Canteen 1", "type": "canteen"}],
            "meters": [{"id": "e-c1", "building": "c1", "kind": "electricity", "category": "01000"}],
            "targets": [{**QUOTA, "value": 100.0}],
        },
    )
    start = int(datetime(2025, 10, 6, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    store = open_store(cfg)
    store.ensure_database()
    # 10 kW all day: 240 kWh against a 100 kWh daily quota.
    store.write(
        [
            Reading("e-c1", "energy_kwh", 10.0 * (ts - start) / 3600, ts)
            for ts in range(start, start + 86400, 900)
        ]
    )
    res = backtest(cfg, store, start, start + 86400, rules=["quota.exceeded"], step_s=900)
    store.close()
    assert [a["rule"] for a in res.alerts] == ["quota.exceeded"]
