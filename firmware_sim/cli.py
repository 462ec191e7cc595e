"""Command line of the simulated meters."""

from __future__ import annotations

import typer

from firmware_sim.scenario import sim_scenario
from firmware_sim.serial.cli import sim_serial

sim_app = typer.Typer(help="Simulated meters that speak the real protocols.", no_args_is_help=True)
sim_app.command("serial")(sim_serial)
sim_app.command("scenario")(sim_scenario)
