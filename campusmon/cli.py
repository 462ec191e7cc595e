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
devices_app = typer.Typer(
    help="Broker credentials of meters, gateways, collectors and the API (docs/security.md).",
    no_args_is_help=True,
)
certs_app = typer.Typer(help="A private CA and TLS certificates (docs/security.md).", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(devices_app, name="devices")
app.add_typer(certs_app, name="certs")
app.add_typer(collector_app, name="collector")
app.add_typer(config_app, name="config")
from campusmon.bridge_cli import bridge_app  # noqa: E402  (its commands import lazily)

app.add_typer(bridge_app, name="bridge")
from campusmon.db_cli import backup_cmd, db_app, restore_cmd  # noqa: E402

app.add_typer(db_app, name="db")
app.command("backup")(backup_cmd)
app.command("restore")(restore_cmd)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]


# Libraries that log every HTTP request or job run at INFO; at INFO the log is an operator's log.
QUIET_LOGGERS = ("httpx", "httpcore", "apscheduler", "urllib3", "uvicorn.access", "alembic")


def _setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("CAMPUSMON_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # DEBUG shows everything
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def config_or_exit(path: Path | None) -> CampusConfig:
    """Load the campus config and validate every section, including those owned by capabilities."""
    try:
        cfg = load_config(path)
        source = str(path or os.environ.get("CAMPUSMON_CONFIG") or "campus.yaml")
        from api.accounting.assessment import assessment_settings
        from api.accounting.settings import parse_accounting
        from api.alerts.config import parse_alerts

        parse_accounting(cfg, source)
        parse_alerts(cfg, source)
        assessment_settings(cfg, source)
        return cfg
    except ConfigError as e:
        typer.secho(f"configuration error:\n{e}", err=True, fg="red")
        raise typer.Exit(2) from None


# -- config ---------------------------------------------------------------------------------------


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate a campus.yaml and print a summary; refuse ports the local servers would not serve."""
    cfg = config_or_exit(config)
    _ports_agree_or_exit(cfg, config)
    typer.echo(
        f"ok: {len(cfg.buildings)} buildings, {len(cfg.meters)} meters, timezone {cfg.site.timezone}, "
        f"influxdb {cfg.influxdb.backend} {cfg.influxdb.url}, mqtt {cfg.mqtt.host}:{cfg.mqtt.port}"
    )


def _ports_agree_or_exit(cfg: CampusConfig, path: Path | None) -> None:
    from campusmon.config import service_port_conflicts

    source = str(path or os.environ.get("CAMPUSMON_CONFIG") or "campus.yaml")
    problems = service_port_conflicts(cfg, source)
    if problems:
        typer.secho("configuration error:\n" + "\n".join(problems), err=True, fg="red")
        raise typer.Exit(2)


# -- services -------------------------------------------------------------------------------------


def _servers(cfg: CampusConfig) -> list:
    """The local servers; a running one is described by the port it was started on."""
    from campusmon.rollups import retention_statements
    from campusmon.services import InfluxDB, Mosquitto

    root = Path(cfg.services.data_dir)
    s = cfg.services
    servers = [
        Mosquitto(
            root / "mosquitto",
            s.mosquitto_port,
            tls_port=s.mosquitto_tls_port,
            tls_host=s.mosquitto_tls_host,
            certs_dir=Path(s.certs_dir) if s.certs_dir else root / "certs",
            require_certificate=s.require_certificate,
        ),
        InfluxDB(
            root / "influxdb",
            s.influxdb_port,
            auth=s.influxdb_auth,
            databases=(cfg.influxdb.database,),
            setup=tuple(retention_statements(cfg.influxdb)),
        ),
    ]
    for srv in servers:
        if srv.running_pid() and srv.recorded_port():
            srv.port = srv.recorded_port()
    return servers


def services_env(cfg: CampusConfig, mqtt_port: int, influx_port: int) -> dict[str, str]:
    """The settings that point the collector, API and tools at these servers."""
    scheme = "https" if cfg.influxdb.url.startswith("https:") else "http"
    return {
        "CAMPUSMON_MQTT__HOST": "127.0.0.1",
        "CAMPUSMON_MQTT__PORT": str(mqtt_port),
        "CAMPUSMON_INFLUXDB__URL": f"{scheme}://127.0.0.1:{influx_port}",
        "CAMPUSMON_SERVICES__MOSQUITTO_PORT": str(mqtt_port),
        "CAMPUSMON_SERVICES__INFLUXDB_PORT": str(influx_port),
    }


@services_app.command("up")
def services_up(
    config: ConfigOpt = None,
    free_ports: Annotated[
        bool,
        typer.Option(
            "--free-ports",
            help="use a free port where the configured one is taken; the settings to use are printed "
            "and written to <services.data_dir>/services.env",
        ),
    ] = False,
) -> None:
    """Start Mosquitto and InfluxDB in the background (data under services.data_dir)."""
    from campusmon.config import is_loopback
    from campusmon.services import ServiceError, free_port, port_free

    cfg = config_or_exit(config)
    _ports_agree_or_exit(cfg, config)
    servers = _servers(cfg)
    env_file = Path(cfg.services.data_dir) / "services.env"
    identities = _local_identities(cfg, servers[0].data_dir, env_file)
    for srv in servers:
        if srv.running_pid():
            typer.echo(f"{srv.name}: already running (pid {srv.running_pid()}) on 127.0.0.1:{srv.port}")
            continue
        if free_ports and not port_free(srv.port):
            taken, srv.port = srv.port, free_port()
            typer.echo(f"{srv.name}: 127.0.0.1:{taken} is taken; using {srv.port}")
        try:
            srv.start(detach=True)
        except ServiceError as e:
            typer.secho(str(e), err=True, fg="red")
            raise typer.Exit(1) from None
        typer.echo(f"{srv.name}: started (pid {srv.proc.pid if srv.proc else '?'}) on 127.0.0.1:{srv.port}")
    env = services_env(cfg, servers[0].port, servers[1].port)
    env.update(identities)
    env.update(servers[1].client_env())
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds passwords
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{k}={v}\n" for k, v in env.items()))
    if identities:
        typer.echo(
            f"broker identities of the collector and the API are in {env_file} (0600); load it with\n"
            f"  set -a; . {env_file}; set +a"
        )
    if (servers[0].port, servers[1].port) != (cfg.services.mosquitto_port, cfg.services.influxdb_port):
        typer.echo(
            f"these ports differ from the configuration; point every campusmon process at them with\n"
            f"  set -a; . {env_file}; set +a\nor:"
        )
        for k, v in env.items():
            typer.echo(f"  export {k}={v}")
    elif not is_loopback(cfg.mqtt.host):
        typer.echo(f"note: mqtt.host is {cfg.mqtt.host}; the collector uses that broker, not this one")


def _local_identities(cfg: CampusConfig, broker_dir: Path, env_file: Path) -> dict[str, str]:
    """Broker credentials for this machine's collector and API, made once and kept in services.env.

    The broker is locked, so the local processes need identities of their own; where the config
    already sets a password the operator manages that identity and nothing is made.
    """
    from campusmon.devices import DeviceRegistry

    try:
        kept = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if "=" in ln)
    except FileNotFoundError:
        kept = {}
    reg = DeviceRegistry(broker_dir)
    m = cfg.mqtt
    out: dict[str, str] = {}
    for key, name, kind, given in (
        ("CAMPUSMON_MQTT__", m.username or m.client_id, "collector", m.password),
        ("CAMPUSMON_MQTT__API_", m.api_username or "campusmon-api", "api", m.api_password),
    ):
        if given:
            continue
        user, pw = key + "USERNAME", key + "PASSWORD"
        if reg.get(name) is not None and kept.get(user) == name and kept.get(pw):
            out[user], out[pw] = name, kept[pw]
            continue
        out[user] = name
        out[pw] = reg.rotate(name) if reg.get(name) is not None else reg.add(name, kind)
    return out


@services_app.command("down")
def services_down(config: ConfigOpt = None) -> None:
    """Stop what ``services up`` started (by the PIDs it recorded)."""
    cfg = config_or_exit(config)
    for srv in _servers(cfg):
        pid = srv.running_pid()
        srv.stop()
        typer.echo(f"{srv.name}: {'stopped pid ' + str(pid) if pid else 'not running'}")
    (Path(cfg.services.data_dir) / "services.env").unlink(missing_ok=True)


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
    config: ConfigOpt = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str | None = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(help="serve HTTPS with this certificate (`campusmon certs init` makes api.crt)"),
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="its private key")] = None,
) -> None:
    """The HTTP API (OpenAPI at /docs); HTTPS with --ssl-certfile/--ssl-keyfile."""
    _setup_logging(log_level)
    cfg = config_or_exit(config)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        typer.secho("--ssl-certfile and --ssl-keyfile go together", err=True, fg="red")
        raise typer.Exit(2)
    import uvicorn

    from api.app import create_app

    tls = {"ssl_certfile": str(ssl_certfile), "ssl_keyfile": str(ssl_keyfile)} if ssl_certfile else {}
    uvicorn.run(
        create_app(cfg), host=host or cfg.api.host, port=port or cfg.api.port, log_level="warning", **tls
    )


# -- devices and certificates ---------------------------------------------------------------------

BrokerDirOpt = Annotated[
    Path | None, typer.Option(help="the broker's data directory; default <services.data_dir>/mosquitto")
]


def _broker(cfg: CampusConfig, broker_dir: Path | None) -> tuple:
    from campusmon.devices import DeviceRegistry
    from campusmon.services import Mosquitto

    srv = _servers(cfg)[0]
    if broker_dir is not None:
        srv = Mosquitto(broker_dir, srv.port)
    return srv, DeviceRegistry(srv.data_dir)


def _reload_note(srv: object) -> None:
    if srv.reload():  # type: ignore[attr-defined]
        typer.echo("broker reloaded: the change is in force for connected clients too")
    else:
        typer.echo("broker not running: the change takes effect when it starts")


@devices_app.command("add")
def devices_add(
    name: Annotated[str, typer.Argument(help="user name; for a meter its meter id, for a gateway its id")],
    kind: Annotated[str, typer.Option(help="meter, gateway, collector, api, monitor or bridge")] = "meter",
    meters: Annotated[
        str | None, typer.Option(help="comma-separated meter ids a head-end relays (kind meter)")
    ] = None,
    config: ConfigOpt = None,
    broker_dir: BrokerDirOpt = None,
) -> None:
    """Create a device's credential; its password is printed once and stored only as a hash."""
    from campusmon.devices import DeviceError

    cfg = config_or_exit(config)
    srv, reg = _broker(cfg, broker_dir)
    try:
        pw = reg.add(name, kind, [m for m in (meters or "").split(",") if m])
    except DeviceError as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"{name} ({kind}) password: {pw}\n(shown once; give it to the device now)")
    _reload_note(srv)


@devices_app.command("list")
def devices_list(config: ConfigOpt = None, broker_dir: BrokerDirOpt = None) -> None:
    cfg = config_or_exit(config)
    _, reg = _broker(cfg, broker_dir)
    for d in reg.devices():
        extra = f" meters={','.join(d.meters)}" if d.meters else ""
        typer.echo(f"{d.name}\t{d.kind}\tcreated {d.created}\trotated {d.rotated or '-'}{extra}")


@devices_app.command("revoke")
def devices_revoke(name: str, config: ConfigOpt = None, broker_dir: BrokerDirOpt = None) -> None:
    """Remove a credential; a connected device is disconnected at the reload, without a restart."""
    from campusmon.devices import DeviceError

    cfg = config_or_exit(config)
    srv, reg = _broker(cfg, broker_dir)
    try:
        reg.revoke(name)
    except DeviceError as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"{name}: revoked")
    _reload_note(srv)


@devices_app.command("rotate")
def devices_rotate(name: str, config: ConfigOpt = None, broker_dir: BrokerDirOpt = None) -> None:
    """A new password; the old one stops working (and its connections drop) at the reload."""
    from campusmon.devices import DeviceError

    cfg = config_or_exit(config)
    srv, reg = _broker(cfg, broker_dir)
    try:
        pw = reg.rotate(name)
    except DeviceError as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"{name} new password: {pw}\n(shown once)")
    _reload_note(srv)


CertsDirOpt = Annotated[
    Path | None, typer.Option(help="default services.certs_dir or <services.data_dir>/certs")
]


def _certs_dir(cfg: CampusConfig, certs_dir: Path | None) -> Path:
    return certs_dir or Path(cfg.services.certs_dir or Path(cfg.services.data_dir) / "certs")


@certs_app.command("init")
def certs_init(
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="host name or address of the broker and API (repeat); default localhost, 127.0.0.1"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="replace an existing CA (every issued certificate stops working)")
    ] = False,
    config: ConfigOpt = None,
    certs_dir: CertsDirOpt = None,
) -> None:
    """A private CA, and server certificates for the broker (broker.crt) and the API (api.crt)."""
    from campusmon.certs import CertError, init_all

    cfg = config_or_exit(config)
    d = _certs_dir(cfg, certs_dir)
    try:
        paths = init_all(d, hosts=host or None, force=force)
    except CertError as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    for p in paths:
        typer.echo(f"wrote {p} (key {p.with_suffix('.key')})")
    typer.echo(f"clients trust {paths[0]} (mqtt.ca_certs); keep ca.key offline if you can")


@certs_app.command("issue")
def certs_issue(
    name: Annotated[
        str, typer.Argument(help="CN: for a client certificate, the broker user name it logs in as")
    ],
    server: Annotated[
        bool, typer.Option(help="a server certificate (with --host SANs) instead of a client one")
    ] = False,
    host: Annotated[list[str] | None, typer.Option(help="SAN of a server certificate (repeat)")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650)] = 825,
    config: ConfigOpt = None,
    certs_dir: CertsDirOpt = None,
) -> None:
    """A certificate signed by the CA: a gateway's client certificate, or another server's."""
    from campusmon.certs import CertError, issue

    cfg = config_or_exit(config)
    try:
        crt, key = issue(_certs_dir(cfg, certs_dir), name, server=server, hosts=host or None, days=days)
    except CertError as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"wrote {crt} and {key}")


@app.command("demo")
def demo(
    config: ConfigOpt = None,
    hours: Annotated[
        int, typer.Option(help="history to backfill (the last 30 h carry injected waste)", min=31)
    ] = 192,
    interval: Annotated[int, typer.Option(help="live reading interval, seconds")] = 10,
    data_dir: Annotated[Path, typer.Option(help="data, logs and the SQLite store")] = Path("var/demo"),
) -> None:
    """Start servers, collector, API and a simulated campus; Ctrl-C stops everything."""
    _setup_logging("WARNING")
    from campusmon.demo import run_demo

    run_demo(config or Path("deploy/campus.yaml"), hours, interval, data_dir)


def _mount_optional() -> None:
    """Sub-commands that live beside the capability they belong to."""
    from api.accounting.cli import report_app
    from api.alerts.cli import alerts_app
    from api.auth.cli import tokens_app, users_app
    from firmware_sim.cli import sim_app
    from firmware_sim.mqtt_cli import sim_mqtt
    from gateway.cli import frame_app

    sim_app.command("mqtt")(sim_mqtt)
    app.add_typer(frame_app, name="frame")
    app.add_typer(sim_app, name="sim")
    app.add_typer(report_app, name="report")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    from api.accounting.assessment_cli import fuel_app, readings_app  # also adds report annual|allocation

    app.add_typer(fuel_app, name="fuel")
    app.add_typer(readings_app, name="readings")
    from campusmon.worker_cli import worker

    app.command("worker")(worker)
    from campusmon.rollups_cli import rollups_app

    app.add_typer(rollups_app, name="rollups")


_mount_optional()


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
