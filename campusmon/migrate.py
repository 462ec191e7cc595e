"""Schema migrations of the relational store (Alembic), configured in code so they run from a wheel.

``migrate(engine)`` brings any database to the newest schema:

- an empty database is created from the models in one go and stamped with the newest revision
  (Alembic's "build from scratch" recipe: faster than replaying every revision, same schema, and
  ``tests/test_migrations.py`` proves the replayed chain equals the models);
- a database of an earlier version is upgraded revision by revision;
- a database made before migrations existed (tables, no ``alembic_version``) is stamped with the
  baseline it has, then upgraded.

Processes that start together (collector, API, worker) take a lock first: an advisory lock on
PostgreSQL, a lock file beside an SQLite database.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

HERE = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
_LOCK_KEY = 0x63616D70  # "camp": the advisory lock of schema changes


def alembic_config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def head() -> str:
    h = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert h is not None, "no migration revisions"
    return h


def current(engine: Engine) -> str | None:
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            c.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            try:
                yield
            finally:
                c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
        return
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:":
        yield
        return
    with open(f"{db}.schema-lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine) -> str:
    """The newest schema, whatever the database had; returns the revision it is at."""
    from campusmon.db import Base, load_models

    load_models()
    with _schema_lock(engine):
        rev = current(engine)
        if rev == head():
            return rev
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            if rev is None:
                if not set(inspect(conn).get_table_names()) & set(Base.metadata.tables):
                    Base.metadata.create_all(conn)
                    command.stamp(cfg, "head")
                    return head()
                command.stamp(cfg, BASELINE)  # tables from before migrations: the baseline's
            command.upgrade(cfg, "head")
    return head()


def new_revision(message: str) -> None:
    """Write the next revision: the models compared with a scratch SQLite database at the head.

    Check the generated file by hand (renames come out as drop + add), then ``ruff format`` it.
    """
    import tempfile

    from sqlalchemy import create_engine

    from campusmon.db import load_models

    load_models()
    with tempfile.TemporaryDirectory() as d:
        engine = create_engine(f"sqlite:///{d}/scratch.sqlite")
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            n = int(head()) + 1
            command.revision(cfg, message=message, autogenerate=True, rev_id=f"{n:04d}")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Add a schema migration revision from the models.")
    p.add_argument("command", choices=["revision"])
    p.add_argument("-m", "--message", required=True)
    a = p.parse_args()
    new_revision(a.message)
