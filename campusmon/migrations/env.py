"""Alembic environment of the relational store: the models' metadata, one connection handed in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from campusmon.db import Base, load_models

load_models()
target_metadata = Base.metadata


def run() -> None:
    conn = context.config.attributes.get("connection")
    if conn is None:  # the alembic command line, with sqlalchemy.url set
        engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as c:
            _migrate(c)
        return
    _migrate(conn)


def _migrate(conn: object) -> None:
    # render_as_batch: SQLite alters a table by copying it, and batch mode writes that for us.
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against the database")
run()
