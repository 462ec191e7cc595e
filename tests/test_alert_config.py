"""The alerts: section: layered rule settings and errors that name the file, the key and the problem."""

from __future__ import annotations

import pytest

from api.alerts.config import parse_alerts
from campusmon.config import ConfigError, parse_config

CAMPUS = {
    "buildings": [{"id": "d1", "type": "dorm"}, {"id": "d2", "type": "dorm"}, {"id": "l1", "type": "lab"}],
    "meters": [
        {"id": "w-d1", "building": "d1", "kind": "water"},
        {"id": "w-d2", "building": "d2", "kind": "water"},
        {"id": "w-l1", "building": "l1", "kind": "water"},
    ],
}


def acfg(alerts: dict):
    return parse_alerts(parse_config({**CAMPUS, "alerts": alerts}, "campus.yaml", environ={}), "campus.yaml")


def test_settings_layer_from_campus_to_type_to_building_to_meter() -> None:
    a = acfg(
        {
            "rules": {"leak.night_flow": {"increase_m3h": 0.03, "nights": 2}},
            "building_types": {"dorm": {"leak.night_flow": {"increase_m3h": 0.1}}},
            "buildings": {"d2": {"leak.night_flow": {"ratio": 2.0}}},
            "meters": {"w-d2": {"leak.night_flow": {"nights": 3, "severity": "critical"}}},
        }
    )
    lab = a.params("leak.night_flow", "l1", "w-l1")
    d1 = a.params("leak.night_flow", "d1", "w-d1")
    d2 = a.params("leak.night_flow", "d2", "w-d2")
    assert (lab.increase_m3h, lab.nights, lab.ratio) == (0.03, 2, 1.3)  # type: ignore[attr-defined]
    assert (d1.increase_m3h, d1.nights, d1.ratio) == (0.1, 2, 1.3)  # type: ignore[attr-defined]
    assert (d2.increase_m3h, d2.nights, d2.ratio) == (0.1, 3, 2.0)  # type: ignore[attr-defined]
    assert (
        a.severity("leak.night_flow", d2).value == "critical"
        and a.severity("leak.night_flow", d1).value == "major"
    )


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        ({"rules": {"leak.nightflow": {}}}, "campus.yaml: alerts.rules.leak.nightflow: unknown rule id"),
        (
            {"rules": {"leak.night_flow": {"treshold": 1}}},
            "alerts.rules.leak.night_flow.treshold: unknown setting",
        ),
        (
            {"buildings": {"d1": {"leak.night_flow": {"ratio": 0.5}}}},
            "alerts.buildings.d1.leak.night_flow.ratio: Input should be greater than or equal to 1",
        ),
        ({"buildings": {"nope": {}}}, "alerts.buildings.nope: building 'nope' is not defined"),
        ({"meters": {"w-x": {}}}, "alerts.meters.w-x: meter 'w-x' is not defined"),
        ({"building_types": {"castle": {}}}, "campus.yaml: alerts.building_types.castle"),
        ({"webhooks": [{"name": "a", "url": "ftp://x"}]}, "alerts.webhooks[0].url"),
        (
            {"webhooks": [{"name": "a", "url": "http://x", "rules": ["dorm.kettle"]}]},
            "alerts.webhooks[0].rules: 'dorm.kettle' matches no rule id",
        ),
        (
            {"webhooks": [{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]},
            "duplicate webhook name",
        ),
        ({"silences": [{"start": "2026-01-02", "end": "2026-01-01"}]}, "alerts.silences[0]"),
        ({"smtp": {"host": "h", "sender": "a@b"}}, "alerts.smtp.to"),
        ({"schedule": {"interval_s": 1}}, "alerts.schedule.interval_s"),
        ({"rules": []}, "alerts.rules"),
    ],
)
def test_errors_name_file_key_and_problem(alerts: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        acfg(alerts)
    assert message in str(e.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        acfg({"rules": {"leak.x": {}, "spike.baseline": {"ratio": "high"}}})
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("campus.yaml: alerts.rules.") for line in lines)
