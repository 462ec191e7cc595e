"""``campusmon worker``: the role that runs the scheduled jobs (docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def worker(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option("--id", help="name in leases and logs (default worker.id, else <host>-<pid>)"),
    ] = None,
    log_level: str | None = None,
) -> None:
    """Window rules, hourly rollups and notification delivery; several share them through PostgreSQL."""
    from campusmon.cli import _setup_logging, config_or_exit
    from campusmon.worker import run_worker

    _setup_logging(log_level)
    run_worker(config_or_exit(config), worker_id)
