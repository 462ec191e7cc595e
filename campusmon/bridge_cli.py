"""``campusmon bridge``: join a campus broker to the central one (docs/deployment.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

bridge_app = typer.Typer(
    help="Campus brokers joined to a central broker by Mosquitto bridges (docs/deployment.md).",
    no_args_is_help=True,
)


@bridge_app.command("config")
def bridge_config(
    campus: Annotated[str, typer.Option(help="campus id: the topic prefix and the bridge's user name")],
    central_host: Annotated[
        str, typer.Option(help="central broker's host name, as in its certificate's SANs")
    ] = "localhost",
    central_port: Annotated[int, typer.Option(help="central broker's TLS listener")] = 8883,
    ca_file: Annotated[
        str | None,
        typer.Option(help="the central CA's path on the campus server; default <certs_dir>/ca.crt"),
    ] = None,
    certfile: Annotated[str | None, typer.Option(help="bridge client certificate (require_certificate)")] = None,
    keyfile: Annotated[str | None, typer.Option(help="its key")] = None,
    tls: Annotated[bool, typer.Option(help="--no-tls only for a link that never leaves a host")] = True,
    password_stdin: Annotated[
        bool, typer.Option(help="use the password of an existing bridge identity, read from stdin")
    ] = False,
    rotate: Annotated[bool, typer.Option(help="give the existing bridge identity a new password")] = False,
    out: Annotated[Path | None, typer.Option(help="write here (0600) instead of standard output")] = None,
    keepalive: Annotated[int, typer.Option(min=5, help="seconds; a dead link is noticed within 1.5x")] = 30,
    restart_base: Annotated[int, typer.Option(min=1, help="first reconnect delay, seconds")] = 5,
    restart_cap: Annotated[int, typer.Option(min=1, help="longest reconnect delay, seconds")] = 60,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="the central campus.yaml")] = None,
    broker_dir: Annotated[
        Path | None, typer.Option(help="the central broker's data directory (identities live there)")
    ] = None,
) -> None:
    """The Mosquitto bridge section for campus CAMPUS, and its identity on the central broker.

    Run on the central server: the bridge identity (kind ``bridge``, allowed to publish only
    under ``CAMPUS/campus/v1/``) is made in the central broker's registry with a new password,
    which goes only into the generated file. Copy the file to the campus broker's conf.d.
    """
    from campusmon.bridge import BridgeError, BridgeSpec, check_campus, render, write
    from campusmon.cli import _broker, _certs_dir, config_or_exit
    from campusmon.devices import DeviceError

    cfg = config_or_exit(config)
    try:
        check_campus(campus)
        srv, reg = _broker(cfg, broker_dir)
        if password_stdin:
            password = sys.stdin.readline().strip()
            dev = reg.get(campus)
            if dev is None or dev.kind != "bridge":
                raise BridgeError(f"no bridge identity {campus!r} on the central broker (`devices add "
                                  f"{campus} --kind bridge`)")  # fmt: skip
        elif rotate:
            dev = reg.get(campus)
            if dev is None or dev.kind != "bridge":
                raise BridgeError(f"no bridge identity {campus!r} to rotate")
            password = reg.rotate(campus)
        else:
            if reg.get(campus) is not None:
                raise BridgeError(f"identity {campus!r} exists; use --rotate or --password-stdin")
            password = reg.add(campus, "bridge")
        cafile = (ca_file or str((_certs_dir(cfg, None) / "ca.crt").resolve())) if tls else None
        text = render(
            BridgeSpec(
                campus, central_host, central_port, campus, password, cafile, certfile, keyfile,
                keepalive_s=keepalive, restart_base_s=restart_base, restart_cap_s=restart_cap,
            )
        )  # fmt: skip
    except (BridgeError, DeviceError) as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(1) from None
    if not tls:
        typer.secho("warning: the bridge password crosses the link in clear text", err=True, fg="yellow")
    if out is None:
        typer.echo(text, nl=False)
    else:
        write(out, text)
        typer.echo(f"wrote {out} (0600; it holds the bridge password)", err=True)
    if not password_stdin:
        if srv.reload():
            typer.echo("central broker reloaded: the bridge identity is in force", err=True)
        else:
            typer.echo("central broker not running: the identity takes effect when it starts", err=True)
