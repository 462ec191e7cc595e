"""``campusmon db``: the relational store's schema revision (docs/deployment.md, "Upgrades")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

db_app = typer.Typer(help="The relational store's schema (Alembic migrations).", no_args_is_help=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


@db_app.command("current")
def db_current(config: ConfigOpt = None) -> None:
    """The revision the database is at, and the newest this version knows."""
    from campusmon.cli import config_or_exit
    from campusmon.db import make_engine
    from campusmon.migrate import current, head

    engine = make_engine(config_or_exit(config).database.url)
    rev = current(engine)
    typer.echo(f"database: {rev or 'none (not yet created, or made before migrations)'}")
    typer.echo(f"newest:   {head()}")
    if rev != head():
        typer.echo("run `campusmon db upgrade` (every role also upgrades at start)")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Bring the schema to the newest revision; safe while other roles run or start."""
    from campusmon.cli import config_or_exit
    from campusmon.db import make_engine
    from campusmon.migrate import current, migrate

    engine = make_engine(config_or_exit(config).database.url)
    before = current(engine)
    after = migrate(engine)
    typer.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'none'})"))


def backup_cmd(
    out: Annotated[Path, typer.Option("--out", help="a new, empty folder")],
    config: ConfigOpt = None,
) -> None:
    """Back up InfluxDB, the relational store and the config (docs/deployment.md, "Backups")."""
    from campusmon.backup import BackupError, backup
    from campusmon.cli import config_or_exit

    cfg = config_or_exit(config)
    source = Path(config or os.environ.get("CAMPUSMON_CONFIG") or "campus.yaml")
    try:
        backup(cfg, out, source, progress=typer.echo)
    except BackupError as e:
        typer.echo(f"backup failed: {e}", err=True)
        raise typer.Exit(1) from None


def restore_cmd(
    src: Annotated[Path, typer.Option("--from", help="a folder written by campusmon backup")],
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="replace the current data without asking")] = False,
) -> None:
    """Replace the current data with a backup's; stop the other roles first."""
    from campusmon.backup import BackupError, restore
    from campusmon.cli import config_or_exit

    cfg = config_or_exit(config)
    if not yes:
        typer.confirm(
            f"Replace InfluxDB database {cfg.influxdb.database!r} and the relational store with {src}?", abort=True
        )
    try:
        restore(cfg, src, progress=typer.echo)
    except BackupError as e:
        typer.echo(f"restore failed: {e}", err=True)
        raise typer.Exit(1) from None
