"""``campusmon sim mqtt``: the configured campus's meters pushing SenML over MQTT."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer


def sim_mqtt(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml")] = None,
    interval: Annotated[int, typer.Option(help="seconds between readings of one meter")] = 60,
    backfill: Annotated[
        float, typer.Option(help="hours of history to publish first, as fast as possible")
    ] = 0.0,
    speed: Annotated[
        float, typer.Option(help="live: publish this many times faster than the interval")
    ] = 1.0,
    duration: Annotated[float, typer.Option(help="live seconds to run; 0 = until Ctrl-C")] = 0.0,
    flat_share: Annotated[float, typer.Option(help="share of messages sent as flat JSON")] = 0.0,
    fault_rate: Annotated[
        float, typer.Option(help="chance per message of also sending a faulty payload")
    ] = 0.0,
    memory: Annotated[
        int,
        typer.Option(
            min=1,
            help="reading sets each meter keeps while the broker is unreachable (its load-profile "
            "memory); when full the oldest is dropped and counted",
        ),
    ] = 2880,
    seed: int = 0,
    username: Annotated[
        str | None,
        typer.Option(
            help="broker identity of the simulated meters (`campusmon devices add NAME --meters ...`)"
        ),
    ] = None,
    password: Annotated[
        str | None, typer.Option(envvar="CAMPUSMON_SIM_PASSWORD", help="its password")
    ] = None,
) -> None:
    """Simulated electricity and water meters with realistic load profiles by building type."""
    from campusmon.cli import config_or_exit
    from campusmon.mqtt import MqttAuth
    from firmware_sim.mqtt_meters import MqttFleet
    from firmware_sim.profiles import sim_meters_for

    cfg = config_or_exit(config)
    fleet = MqttFleet(
        sim_meters_for(cfg, seed),
        cfg.mqtt.host,
        cfg.mqtt.port,
        interval,
        seed,
        flat_share,
        fault_rate,
        client_id=f"campusmon-sim-{seed}",
        memory=memory,
        # The collector's own identity is not borrowed: on a locked broker it would disconnect it.
        auth=MqttAuth.of(cfg.mqtt, username, password) if username else MqttAuth.of(cfg.mqtt, ""),
    )
    now = int(time.time())
    if backfill > 0:
        with typer.progressbar(length=int(backfill * 3600 / interval), label="backfill") as bar:
            n = fleet.backfill(now - int(backfill * 3600), now, lambda i, _t: bar.update(1))
        typer.echo(f"backfilled {n} messages from {len(fleet.meters)} meters")
    stop = threading.Event()
    if duration:
        threading.Timer(duration, stop.set).start()
    typer.echo(
        f"publishing live every {interval / speed:.1f} s to {cfg.mqtt.host}:{cfg.mqtt.port}; Ctrl-C stops"
    )
    try:
        fleet.follow(stop, speed)
    except KeyboardInterrupt:
        pass
    finally:
        if not fleet.close(timeout=30):
            typer.echo("the broker did not take every kept reading within 30 s; the rest is lost")
        dropped = sum(fleet.dropped.values())
        if dropped:
            typer.echo(f"reading sets dropped from full meter memories: {dropped}")
        if fleet.faults_sent:
            typer.echo(f"faulty payloads sent: {fleet.faults_sent}")
