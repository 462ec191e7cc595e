"""Schema migrations: the revision chain builds exactly the models' schema, on SQLite and PostgreSQL,
and every way a database can be found (empty, from before migrations, at an older revision) ends there.

A model changed without a new revision fails here: add one with
``python -m campusmon.migrate revision -m "what changed"`` (docs/deployment.md, "Upgrades").
"""

from __future__ import annotations

import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from campusmon.db import Base, load_models, make_engine
from campusmon.migrate import BASELINE, alembic_config, current, head, migrate


def _differences(engine) -> list:
    load_models()
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)


def test_replaying_every_revision_gives_the_models_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    assert current(engine) == head()
    assert _differences(engine) == [], "a model changed without a migration revision"


def test_an_empty_database_is_built_and_stamped(db_url: str) -> None:
    engine = make_engine(db_url)
    assert migrate(engine) == head()
    assert current(engine) == head()
    assert _differences(engine) == []
    assert migrate(engine) == head()  # again: nothing to do


def test_a_database_from_before_migrations_is_upgraded(db_url: str) -> None:
    """Tables as the baseline made them, no ``alembic_version``: stamped at the baseline, then upgraded."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
    assert current(engine) is None
    before = set(inspect(engine).get_table_names())
    assert migrate(engine) == head()
    assert before <= set(inspect(engine).get_table_names())
    assert _differences(engine) == []


def test_processes_starting_together_migrate_once(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(e) -> None:
        try:
            migrate(e)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert current(engines[0]) == head()
    assert _differences(engines[0]) == []


def test_the_db_commands_report_and_upgrade(tmp_path) -> None:
    from typer.testing import CliRunner

    from campusmon.cli import app

    cfg = tmp_path / "campus.yaml"
    cfg.write_text(f"database:\n  url: sqlite:///{tmp_path}/campus.sqlite\n")
    run = CliRunner()
    before = run.invoke(app, ["db", "current", "-c", str(cfg)])
    assert before.exit_code == 0 and "database: none" in before.output
    up = run.invoke(app, ["db", "upgrade", "-c", str(cfg)])
    assert up.exit_code == 0 and f"schema at {head()} (was none)" in up.output, up.output
    after = run.invoke(app, ["db", "current", "-c", str(cfg)])
    assert f"database: {head()}" in after.output


def test_targets_never_reuse_an_id_on_sqlite_even_one_deleted_before_the_upgrade(tmp_path) -> None:
    """SQLite reuses the newest deleted rowid unless the table has AUTOINCREMENT, which the schema
    comparison cannot see: the replayed chain must add it and start past every audited target id."""
    engine = make_engine(f"sqlite:///{tmp_path}/old.sqlite")
    row = (
        "INSERT INTO targets (id, name, scope, scope_id, kind, category, type, value, note, created_at, "
        "updated_at) VALUES (:i, 't', 'building', 'b1', 'electricity', '01000', 'quota', 1, '', "
        "'2026-01-01', '2026-01-01')"
    )
    audit = "INSERT INTO target_audit (target_id, action, at, actor) VALUES (:i, 'create', '2026-01-01', 'x')"
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
        for i in (1, 2):
            conn.execute(text(row), {"i": i})
            conn.execute(text(audit), {"i": i})
        conn.execute(text("DELETE FROM targets WHERE id = 2"))  # the newest, deleted before the upgrade
    assert migrate(engine) == head()
    assert _differences(engine) == []
    with engine.begin() as conn:
        made = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'targets'")).scalar_one()
        assert "AUTOINCREMENT" in made
        conn.execute(text(row.replace("(id, ", "(").replace("(:i, ", "(")))
        assert conn.execute(text("SELECT id FROM targets ORDER BY id")).scalars().all() == [1, 3]
    fresh = make_engine(f"sqlite:///{tmp_path}/new.sqlite")
    assert migrate(fresh) == head()
    with fresh.connect() as conn:
        made = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'targets'")).scalar_one()
    assert "AUTOINCREMENT" in made
