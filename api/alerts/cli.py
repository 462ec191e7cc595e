"""Command line of waste alerts: backtests."""

from __future__ import annotations

import typer

alerts_app = typer.Typer(help="Waste alerts: backtest rules over stored data.", no_args_is_help=True)
