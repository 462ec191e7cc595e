"""Configuration: a wrong file fails at start naming the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from campusmon.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT, SMALL_CAMPUS


def _err(data: object) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "campus.yaml", environ={})
    return str(e.value)


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "campus.yaml", environ={})
    assert cfg.site.timezone == "Asia/Shanghai"
    assert len(cfg.meters) >= 40 and {b.type for b in cfg.buildings} >= {"dorm", "classroom", "canteen"}


def test_defaults() -> None:
    cfg = parse_config({}, environ={})
    assert cfg.site.timezone == "Asia/Shanghai" and cfg.api.host == "127.0.0.1" and cfg.api.port == 8000
    assert cfg.influxdb.backend == "v1" and cfg.database.url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"site": {"timezone": "Mars/Olympus"}},
            "campus.yaml: site.timezone: unknown time zone 'Mars/Olympus'",
        ),
        ({"mqtt": {"port": 70000}}, "campus.yaml: mqtt.port: Input should be less than or equal to 65535"),
        ({"mqtt": {"prot": 1}}, "campus.yaml: mqtt.prot: Extra inputs are not permitted"),
        ({"influxdb": {"backend": "v3"}}, "campus.yaml: influxdb.backend: Input should be 'v1' or 'v2'"),
        (
            {**SMALL_CAMPUS, "meters": [{"id": "m", "building": "nowhere", "kind": "water"}]},
            "building 'nowhere' is not defined",
        ),
        (
            {**SMALL_CAMPUS, "meters": [{"id": "m", "building": "dorm-1", "kind": "steam"}]},
            "campus.yaml: meters[0].kind: Input should be 'electricity', 'water', 'gas' or 'heat'",
        ),
        (
            {
                **SMALL_CAMPUS,
                "meters": [{"id": "m", "building": "dorm-1", "kind": "water", "category": "01A00"}],
            },
            "category 01A00 does not fit a water meter",
        ),
        (
            {
                **SMALL_CAMPUS,
                "meters": [
                    {"id": "a", "building": "dorm-1", "kind": "water"},
                    {"id": "a", "building": "dorm-1", "kind": "water"},
                ],
            },
            "duplicate meter id(s): a",
        ),
        (
            {**SMALL_CAMPUS, "meters": [{"id": "a", "building": "dorm-1", "kind": "water", "parent": "zz"}]},
            "parent 'zz' is not a defined meter",
        ),
        ({"buildings": [{"id": "b 1"}]}, "campus.yaml: buildings[0].id: String should match pattern"),
        (
            {"buildings": [{"id": "b", "floor_area_m2": -5}]},
            "buildings[0].floor_area_m2: Input should be greater",
        ),
        ([1, 2], "campus.yaml: (top level): expected a mapping"),
    ],
)
def test_errors_name_file_key_and_problem(data: object, expected: str) -> None:
    assert expected in _err(data)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("site:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: not valid YAML"):
        load_config(bad, environ={})


def test_environment_overrides_every_setting(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("mqtt:\n  host: broker.campus\n  port: 1883\n")
    env = {
        "CAMPUSMON_MQTT__PORT": "1884",
        "CAMPUSMON_INFLUXDB__TOKEN": "12345",
        "CAMPUSMON_INFLUXDB__URL": "http://db:8086",
        "CAMPUSMON_DATABASE__URL": "postgresql+psycopg://u:p@db/campus",
        "UNRELATED": "x",
    }
    cfg = load_config(f, environ=env)
    assert cfg.mqtt.host == "broker.campus" and cfg.mqtt.port == 1884
    assert cfg.influxdb.token == "12345" and isinstance(cfg.influxdb.token, str)
    assert cfg.influxdb.url == "http://db:8086" and cfg.database.url.startswith("postgresql")


def test_bad_environment_value_is_reported_like_a_file_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: mqtt.port: Input should be a valid integer"):
        load_config(f, environ={"CAMPUSMON_MQTT__PORT": "eighteen"})


def test_cli_reports_config_errors_with_exit_code_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from campusmon.cli import app

    f = tmp_path / "c.yaml"
    f.write_text("influxdb:\n  backend: v9\n")
    r = CliRunner().invoke(app, ["config", "check", "-c", str(f)])
    assert r.exit_code == 2
    assert "influxdb.backend" in r.output


def test_processes_creating_the_schema_at_once_do_not_fail(tmp_path: Path) -> None:
    """The collector and the API start together on a fresh database."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/race.sqlite"
    code = "import sys; from campusmon.db import init_db; init_db(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
