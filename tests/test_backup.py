"""Backup and restore round-trip against the real engines: back up, wipe, restore, the data is equal,
raw readings and hourly rollups in InfluxDB and every relational table, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import MetaData, select, text
from typer.testing import CliRunner

from campusmon.backup import BackupError, backup, restore
from campusmon.db import Base, DeadLetter, init_db, load_models
from campusmon.influx import QueryError, open_store
from campusmon.reading import Reading
from campusmon.rollups import RollupMaintainer
from tests.conftest import SMALL_CAMPUS

START = 1_790_000_000 // 3600 * 3600


def _influx_dump(store: Any) -> dict[str, list]:
    out: dict[str, list] = {}
    for rp in ("autogen", "forever"):
        try:
            series = store.query(f'SELECT * FROM "{rp}"./.*/')
        except QueryError as e:
            assert "database not found" in str(e)
            return {}
        for s in series:
            out[f"{rp}.{s['name']}"] = sorted(map(tuple, s["values"]), key=repr)
    return out


def _relational_dump(engine: Any) -> dict[str, list]:
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as c:
        return {
            name: sorted(map(tuple, c.execute(select(t)).all()), key=repr) for name, t in meta.tables.items()
        }


@pytest.fixture
def campus(influxdb: Any, make_config: Any, db_url: str) -> Any:
    cfg = make_config(
        influx=influxdb,
        data=SMALL_CAMPUS,
        database={"url": db_url},
        influxdb={"rpc_address": f"127.0.0.1:{influxdb.rpc_port}"},
    )
    store = open_store(cfg)
    store.ensure_database()
    readings = [
        Reading(m, q, base + i * step, START + i * 600)
        for i in range(6 * 24)
        for m, q, base, step in (
            ("e-dorm-1", "energy_kwh", 100.0, 1.5),
            ("e-teach-1", "energy_kwh", 50.0, 0.25),
            ("w-dorm-1", "volume_m3", 10.0, 0.01),
            ("e-dorm-1", "power_w", 9000.0, 0.0),
        )
    ]
    assert not store.write(readings).rejected
    engine, sessions = init_db(cfg.database.url)
    stats = RollupMaintainer(cfg, store, sessions).pass_once()
    assert stats.meters
    with sessions.begin() as s:
        s.add(
            DeadLetter(
                source="mqtt:campus/v1/meters/x/readings",
                reason="malformed_json",
                detail="line 1",
                payload="{x",
            )
        )
    yield cfg, store, engine
    store.close()


def test_backup_wipe_restore_gives_back_every_point_and_row(campus: Any, tmp_path: Any) -> None:
    cfg, store, engine = campus
    influx_before, rel_before = _influx_dump(store), _relational_dump(engine)
    assert {"autogen.electricity", "autogen.water", "forever.energy_hourly"} <= set(influx_before)
    assert (
        rel_before["dead_letter_messages"]
        and rel_before["rollup_watermarks"]
        and rel_before["alembic_version"]
    )
    lines: list[str] = []
    manifest = backup(cfg, tmp_path / "bk", progress=lines.append)
    assert manifest["relational"]["schema_revision"] == rel_before["alembic_version"][0][0]
    assert any(line.startswith("[3/3]") for line in lines)

    store.query(f'DROP DATABASE "{cfg.influxdb.database}"')  # the wipe
    load_models()
    with engine.begin() as c:
        Base.metadata.drop_all(c)
        c.execute(text("DROP TABLE alembic_version"))
    assert _influx_dump(store) == {} and set(_relational_dump(engine)) == set()

    restore(cfg, tmp_path / "bk", progress=lines.append)
    engine.dispose()
    assert _diff(_influx_dump(store), influx_before) == {}
    assert _diff(_relational_dump(engine), rel_before) == {}


def _diff(after: dict[str, list], before: dict[str, list]) -> dict[str, Any]:
    """Only what differs, per table: a failure names the rows, not two whole dumps."""
    out: dict[str, Any] = {}
    for key in sorted(set(after) | set(before)):
        a, b = set(after.get(key, [])), set(before.get(key, []))
        if a != b or len(after.get(key, [])) != len(before.get(key, [])):
            out[key] = {"lost": sorted(b - a, key=repr)[:5], "extra": sorted(a - b, key=repr)[:5]}
    return out


def test_refusals_are_clear(campus: Any, tmp_path: Any) -> None:
    cfg, _store, _engine = campus
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(BackupError, match="not empty"):
        backup(cfg, tmp_path / "full", progress=lambda _m: None)
    with pytest.raises(BackupError, match="not a campusmon backup"):
        restore(cfg, tmp_path / "full", progress=lambda _m: None)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    bad = cfg.model_copy(update={"influxdb": cfg.influxdb.model_copy(update={"rpc_address": "127.0.0.1:1"})})
    with pytest.raises(BackupError, match="influxd backup failed"):
        backup(bad, tmp_path / "new", progress=lambda _m: None)


def test_the_commands_run_end_to_end(campus: Any, tmp_path: Any) -> None:
    from campusmon.cli import app
    from tests.helpers import write_config

    cfg, store, _engine = campus
    path = write_config(cfg, tmp_path / "campus.yaml")
    before = _influx_dump(store)
    run = CliRunner()
    out = run.invoke(app, ["backup", "--out", str(tmp_path / "bk"), "-c", str(path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "bk" / "config" / "campus.yaml").exists()
    again = run.invoke(app, ["restore", "--from", str(tmp_path / "bk"), "-c", str(path), "--yes"])
    assert again.exit_code == 0, again.output
    assert _diff(_influx_dump(store), before) == {}
