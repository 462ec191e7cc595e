"""``campusmon sim serial``: simulated meters on an RS-485 bus, served on a pty or on TCP."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from firmware_sim.serial.faults import FaultError, parse_fault_specs
from firmware_sim.serial.spec import PROTOCOLS, BusSpec, SpecError, build_bus, load_spec, serve

FIRST_ADDRESS = {"dlt645": "000000000001", "cjt188": "00000000000001", "modbus": "1"}


def sim_serial(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="bus YAML (meters, line, faults)")
    ] = None,
    protocol: Annotated[str, typer.Option(help="dlt645 | cjt188 | modbus (without --config)")] = "dlt645",
    meters: Annotated[int, typer.Option(help="number of meters, consecutive addresses", min=1)] = 1,
    address: Annotated[str | None, typer.Option(help="first address (12/14 digits, or Modbus unit)")] = None,
    model: Annotated[str, typer.Option(help="Modbus register map: sdm630 | sdm120 | xintai")] = "sdm630",
    profile: Annotated[str | None, typer.Option(help="load profile (a building type, pv, constant)")] = None,
    baud: Annotated[int, typer.Option(help="line speed used for byte pacing", min=1)] = 2400,
    bytesize: Annotated[int, typer.Option(min=5, max=8)] = 8,
    parity: Annotated[str, typer.Option(help="N | E | O (counts one bit per byte when not N)")] = "N",
    stopbits: Annotated[float, typer.Option()] = 1,
    pty: Annotated[str | None, typer.Option(help="serve on a pty and put a symlink here")] = None,
    tcp: Annotated[
        str | None, typer.Option(help="serve on HOST:PORT like a transparent serial server")
    ] = None,
    faults: Annotated[
        str | None, typer.Option(help="ADDR=fault[:value],... e.g. 000000000002=no_reply")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the load models and noise")] = 0,
    pace: Annotated[bool, typer.Option(help="take the real wire time per byte")] = True,
    turnaround_ms: Annotated[float, typer.Option(help="meter response delay", min=0)] = 20.0,
    speed: Annotated[float, typer.Option(help="simulator clock speed (1 = real time)", min=0.001)] = 1.0,
    tz: Annotated[str, typer.Option(help="time zone of the meter clocks and tariffs")] = "UTC",
    duration: Annotated[float, typer.Option(help="seconds to run; 0 = until Ctrl-C", min=0)] = 0.0,
) -> None:
    """Simulated DL/T 645, CJ/T 188 and Modbus RTU meters sharing one bus."""
    try:
        spec = _spec(config, protocol, meters, address, model, profile, seed, tz, speed)
        if config is None:
            spec.baud, spec.bytesize, spec.parity, spec.stopbits = baud, bytesize, parity.upper(), stopbits
            spec.pace, spec.turnaround_ms = pace, turnaround_ms
        bus = build_bus(spec)
        for target, fault, params in parse_fault_specs(faults or ""):
            try:
                bus.meter(target).set_fault(fault, **params)
            except KeyError as exc:
                raise SpecError(str(exc.args[0])) from None
    except (SpecError, FaultError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    link = pty or spec.pty
    try:
        serve(bus, pty=link, tcp=tcp or spec.tcp)
    except (OSError, SpecError) as exc:
        bus.stop()
        typer.secho(f"error: cannot serve the bus: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    line = f"{bus.baud} {bus.bytesize}{bus.parity}{bus.stopbits:g}"
    typer.echo(f"{len(bus.meters)} meters at {line}, {'paced' if bus.pace else 'unpaced'}; serving on:")
    if bus.tcp_url:
        typer.echo(f"  {bus.tcp_url}")
    if bus.pty_path:
        typer.echo(f"  {link} -> {bus.pty_path}" if link else f"  {bus.pty_path}")
    for m in bus.meters:
        active = m.faults()
        typer.echo(f"  {m.describe()}" + (f"  faults: {', '.join(active)}" if active else ""))
    typer.echo("Ctrl-C stops.")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(duration if duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        bus.stop()
    s = bus.stats
    typer.echo(f"stopped: {s['requests']} requests, {s['replies']} replies, {s['unanswered']} unanswered")


def _spec(config: Path | None, protocol: str, meters: int, address: str | None, model: str,
          profile: str | None, seed: int, tz: str, speed: float) -> BusSpec:  # fmt: skip
    if config is not None:
        spec = load_spec(config)
        if seed:
            spec.seed = seed
        return spec
    if protocol not in PROTOCOLS:
        raise SpecError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    entry: dict[str, Any] = {"protocol": protocol, "count": meters}
    first = address or FIRST_ADDRESS[protocol]
    entry["unit" if protocol == "modbus" else "address"] = first
    if protocol == "modbus":
        entry["model"] = model
    if profile:
        entry["profile"] = profile
    data: dict[str, Any] = {"seed": seed, "tz": tz, "meters": [entry]}
    if speed != 1.0:
        data["clock"] = {"speed": speed}
    try:
        return BusSpec.model_validate(data)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
