"""The ``campusmon`` command: one entry point for every process and tool of the system."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from campusmon.config import CampusConfig, ConfigError, load_config

app = typer.Typer(
    help="Campus energy monitor: meters → InfluxDB → consumption and waste alerts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
services_app = typer.Typer(
    help="Local Mosquitto and InfluxDB for development and the demo.", no_args_is_help=True
)
collector_app = typer.Typer(
    help="Collectors: MQTT (default) or a serial bus straight into InfluxDB.", invoke_without_command=True
)
config_app = typer.Typer(help="Configuration tools.", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(collector_app, name="collector")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


def _setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("CAMPUSMON_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def config_or_exit(path: Path | None) -> CampusConfig:
    """Load the campus config and validate every section, including those owned by capabilities."""
    try:
        cfg = load_config(path)
        source = str(path or os.environ.get("CAMPUSMON_CONFIG") or "campus.yaml")
        from api.accounting.settings import parse_accounting
        from api.alerts.config import parse_alerts

        parse_accounting(cfg, source)
        parse_alerts(cfg, source)
        return cfg
    except ConfigError as e:
        typer.secho(f"configuration error:\n{e}", err=True, fg="red")
        raise typer.Exit(2) from None


# -- config ---------------------------------------------------------------------------------------


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate a campus.yaml and print a summary."""
    cfg = config_or_exit(config)
    typer.echo(
        f"ok: {len(cfg.buildings)} buildings, {len(cfg.meters)} meters, timezone {cfg.site.timezone}, "
        f"influxdb {cfg.influxdb.backend} {cfg.influxdb.url}, mqtt {cfg.mqtt.host}:{cfg.mqtt.port}"
    )


# -- services -------------------------------------------------------------------------------------


def _servers(cfg: CampusConfig) -> list:
    from campusmon.services import InfluxDB, Mosquitto

    root = Path(cfg.services.data_dir)
    return [
        Mosquitto(root / "mosquitto", cfg.services.mosquitto_port),
        InfluxDB(root / "influxdb", cfg.services.influxdb_port),
    ]


@services_app.command("up")
def services_up(config: ConfigOpt = None) -> None:
    """Start Mosquitto and InfluxDB in the background (data under services.data_dir)."""
    from campusmon.services import ServiceError

    cfg = config_or_exit(config)
    for srv in _servers(cfg):
        if srv.running_pid():
            typer.echo(f"{srv.name}: already running (pid {srv.running_pid()}) on 127.0.0.1:{srv.port}")
            continue
        try:
            srv.start(detach=True)
        except ServiceError as e:
            typer.secho(str(e), err=True, fg="red")
            raise typer.Exit(1) from None
        typer.echo(f"{srv.name}: started (pid {srv.proc.pid if srv.proc else '?'}) on 127.0.0.1:{srv.port}")


@services_app.command("down")
def services_down(config: ConfigOpt = None) -> None:
    """Stop what ``services up`` started (by the PIDs it recorded)."""
    cfg = config_or_exit(config)
    for srv in _servers(cfg):
        pid = srv.running_pid()
        srv.stop()
        typer.echo(f"{srv.name}: {'stopped pid ' + str(pid) if pid else 'not running'}")


@services_app.command("status")
def services_status(config: ConfigOpt = None) -> None:
    cfg = config_or_exit(config)
    down = 0
    for srv in _servers(cfg):
        pid = srv.running_pid()
        down += pid is None
        typer.echo(
            f"{srv.name}: {'running pid ' + str(pid) if pid else 'stopped'} (127.0.0.1:{srv.port}, {srv.data_dir})"
        )
    raise typer.Exit(1 if down else 0)


# -- processes ------------------------------------------------------------------------------------


@collector_app.callback()
def collector(ctx: typer.Context, config: ConfigOpt = None, log_level: str | None = None) -> None:
    """MQTT → InfluxDB (ack after store). ``collector serial`` reads serial buses instead."""
    if ctx.invoked_subcommand is not None:
        return
    _setup_logging(log_level)
    cfg = config_or_exit(config)
    from collectors.mqtt_collector import run_collector

    run_collector(cfg, _reading_hooks(cfg))


def _reading_hooks(cfg: CampusConfig) -> tuple:
    """Instant alert rules run on every stored batch when the alerts capability is installed."""
    try:
        from api.alerts.instant import hooks_for  # type: ignore[attr-defined]
    except ImportError:
        return ()
    return tuple(hooks_for(cfg))


@collector_app.command("serial")
def collector_serial(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml of the buses")],
    log_level: str | None = None,
) -> None:
    """Poll serial buses and write straight into InfluxDB (buses wired to the server)."""
    _setup_logging(log_level)
    from collectors.serial_collector import run_serial_collector

    run_serial_collector(str(config))


@app.command("gateway")
def gateway(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")], log_level: str | None = None
) -> None:
    """The building gateway: poll RS-485 buses, keep readings on disk, forward them over MQTT."""
    _setup_logging(log_level)
    from gateway.service import run_gateway

    run_gateway(str(config))


@app.command("api")
def api(
    config: ConfigOpt = None, host: str | None = None, port: int | None = None, log_level: str | None = None
) -> None:
    """The HTTP API (OpenAPI at /docs)."""
    _setup_logging(log_level)
    cfg = config_or_exit(config)
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(cfg), host=host or cfg.api.host, port=port or cfg.api.port, log_level="warning")


@app.command("demo")
def demo(
    config: ConfigOpt = None,
    hours: Annotated[
        int, typer.Option(help="history to backfill (the last 30 h carry injected waste)", min=31)
    ] = 192,
    interval: Annotated[int, typer.Option(help="live reading interval, seconds")] = 10,
) -> None:
    """Start servers, collector, API and a simulated campus; Ctrl-C stops everything."""
    _setup_logging("WARNING")
    from campusmon.demo import run_demo

    run_demo(config or Path("deploy/campus.yaml"), hours, interval)


def _mount_optional() -> None:
    """Sub-commands that live beside the capability they belong to."""
    from api.accounting.cli import report_app
    from api.alerts.cli import alerts_app
    from firmware_sim.cli import sim_app
    from firmware_sim.mqtt_cli import sim_mqtt
    from gateway.cli import frame_app

    sim_app.command("mqtt")(sim_mqtt)
    app.add_typer(frame_app, name="frame")
    app.add_typer(sim_app, name="sim")
    app.add_typer(report_app, name="report")
    app.add_typer(alerts_app, name="alerts")


_mount_optional()


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
