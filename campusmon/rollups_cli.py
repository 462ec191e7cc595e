"""``campusmon rollups``: rebuild or inspect the hourly consumption rollups (docs/consumption.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

rollups_app = typer.Typer(no_args_is_help=True, help="Hourly consumption rollups.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


@rollups_app.command("rebuild")
def rebuild(
    start: Annotated[str, typer.Option("--start", help="local date or date-time (site time zone)")],
    end: Annotated[str | None, typer.Option("--end", help="local date or date-time (default: now)")] = None,
    meters: Annotated[
        str | None, typer.Option("--meters", help="comma-separated meter ids (default: every meter)")
    ] = None,
    config: ConfigOpt = None,
    log_level: str | None = None,
) -> None:
    """Re-derive the rollups from raw readings from --start on, meter batch by meter batch.

    Safe while collectors and workers run: readers take raw readings for the range until it is
    rebuilt, and a pass of the worker meanwhile only does the same work again.
    """
    from api.accounting.periods import parse_local
    from campusmon.cli import _setup_logging, config_or_exit
    from campusmon.db import init_db
    from campusmon.influx import open_store
    from campusmon.rollups import RollupMaintainer

    _setup_logging(log_level)
    cfg = config_or_exit(config)
    tz = cfg.site.tz
    try:
        t0 = parse_local(start, tz)
        t1 = parse_local(end, tz) if end else int(time.time())
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if t1 <= t0:
        typer.echo("error: --end must be after --start", err=True)
        raise typer.Exit(2)
    ids = None
    if meters:
        ids = [m.strip() for m in meters.split(",") if m.strip()]
        unknown = sorted(set(ids) - {m.id for m in cfg.meters})
        if unknown:
            typer.echo(f"error: unknown meter(s): {', '.join(unknown)}", err=True)
            raise typer.Exit(2)
    n = len(ids) if ids is not None else len(cfg.meters)
    _engine, sessions = init_db(cfg.database.url)
    store = open_store(cfg)
    try:
        m = RollupMaintainer(cfg, store, sessions)
        with typer.progressbar(length=n, label="rebuilding rollups", file=sys.stderr) as bar:
            stats = m.rebuild(t0, t1, ids, progress=bar.update)
    finally:
        store.close()
    typer.echo(
        f"rebuilt {stats.series} series of {n} meters: {stats.hours_written} hours from "
        f"{stats.readings_read} readings in {stats.requests} requests"
    )
