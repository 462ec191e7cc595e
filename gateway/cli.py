"""Command line of the serial side: frame decoding, the gateway process, the direct serial collector."""

from __future__ import annotations

import typer

frame_app = typer.Typer(help="Decode meter frames (DL/T 645, CJ/T 188, Modbus RTU) for field work.", no_args_is_help=True)
