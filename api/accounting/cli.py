"""Command line of consumption accounting: reports."""

from __future__ import annotations

import typer

report_app = typer.Typer(help="Consumption reports.", no_args_is_help=True)
