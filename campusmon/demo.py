"""``campusmon demo``: the whole system on one machine, with a simulated campus feeding it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import typer

from campusmon.config import CampusConfig, load_config
from campusmon.services import InfluxDB, Mosquitto, Server, ServiceError, free_port, port_free, wait_port
from campusmon.wire import COLLECTOR_STATUS_TOPIC, wait_for_status

if TYPE_CHECKING:
    from firmware_sim.profiles import SimMeter

DEMO_DIR = Path("var/demo")


def _port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


def _child(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "campusmon.cli", *args],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def run_demo(config: Path, hours: int, interval: int) -> None:
    base = load_config(config)
    if hours < RULE_HISTORY_H:
        typer.secho(
            f"note: {hours} h of history may be too little for the waste rules to learn what is usual "
            f"(a week of the same kind of day); use --hours {RULE_HISTORY_H} to see them fire",
            fg="yellow",
        )
    ports = {
        "mqtt": _port(base.services.mosquitto_port),
        "influx": _port(base.services.influxdb_port),
        "api": _port(base.api.port),
    }
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "CAMPUSMON_CONFIG": str(config),
            "CAMPUSMON_MQTT__PORT": str(ports["mqtt"]),
            "CAMPUSMON_INFLUXDB__URL": f"http://127.0.0.1:{ports['influx']}",
            "CAMPUSMON_API__PORT": str(ports["api"]),
            "CAMPUSMON_DATABASE__URL": f"sqlite:///{DEMO_DIR}/campus.sqlite",
            "CAMPUSMON_SERVICES__DATA_DIR": str(DEMO_DIR / "services"),
            "CAMPUSMON_ALERTS__SCHEDULE__INTERVAL_S": "60",  # window rules every minute, so alerts show quickly
        }
    )
    cfg = load_config(config, env)
    servers: list[Server] = [
        Mosquitto(DEMO_DIR / "mosquitto", ports["mqtt"]),
        InfluxDB(DEMO_DIR / "influxdb", ports["influx"]),
    ]
    children: list[subprocess.Popen[bytes]] = []
    cleanup: list[object] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for s in servers:
            typer.echo(f"starting {s.name} on 127.0.0.1:{s.port} …")
            s.start()
        children.append(_child(["collector"], env, DEMO_DIR / "collector.log"))
        status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)
        if not wait_for_status("127.0.0.1", ports["mqtt"], status, "online", 30):
            raise ServiceError(f"the collector did not come online; see {DEMO_DIR}/collector.log")
        from firmware_sim.mqtt_meters import MqttFleet
        from firmware_sim.profiles import sim_meters_for

        gw_meters = _start_gateway(env, ports["mqtt"], children, cleanup)
        fleet = MqttFleet(
            [m for m in sim_meters_for(cfg, 1) if m.id not in gw_meters],
            "127.0.0.1",
            ports["mqtt"],
            interval_s=900,
            seed=1,
            flat_share=0.2,
            fault_rate=0.002,
            client_id="campusmon-demo-sim",
        )
        now = int(time.time())
        steps = hours * 4
        with typer.progressbar(
            length=steps, label=f"simulating {hours} h of {len(fleet.meters)} meters"
        ) as bar:
            # Clean history first, so rules that learn what is usual have something to learn from;
            # then the last hours carry the injected waste.
            since = waste_start(now, hours)
            fleet.backfill(now - hours * 3600, since, lambda i, t: bar.update(1))
            waste = inject_waste(fleet.meters, cfg)
            fleet.backfill(since, now - 60, lambda i, t: bar.update(1))
        # Rules judge what is stored: start the API (and its window rules) only once the history
        # is in InfluxDB and the gateway's meters have answered, or every meter looks silent.
        typer.echo("waiting for the collector to store the history and the gateway's first poll …")
        _wait_stored(cfg, fleet.meters[-1].id, now - 60 - 900, stop)
        _wait_stored(cfg, sorted(gw_meters)[0], now - 120, stop)
        children.append(_child(["api"], env, DEMO_DIR / "api.log"))
        wait_port(ports["api"], 30, children[-1])
        fleet.interval_s = interval
        live = threading.Thread(target=fleet.follow, args=(stop,), daemon=True)
        live.start()
        for delay, on in ((30, True), (240, False)):
            t = threading.Timer(delay, _kettle, args=(fleet, on))
            t.daemon = True  # must not keep the demo alive after Ctrl-C
            t.start()
        api = f"http://127.0.0.1:{ports['api']}"
        m = cfg.meters[0].id
        _wait_for_data(api, m, stop)
        typer.echo(f"""
Campus energy monitor demo is running ({len(cfg.buildings)} buildings, {len(cfg.meters)} meters).
  API docs          {api}/docs
  meters            {api}/api/v1/meters
  readings          {api}/api/v1/meters/{m}/readings?every=1h
  latest            {api}/api/v1/meters/{m}/latest
  waste alerts      {api}/api/v1/alerts   (live: {api}/api/v1/alerts/stream, Atom: {api}/api/v1/alerts/feed.atom)
  consumption       {api}/api/v1/consumption?scope=campus&period=hour
  monthly report    {api}/api/v1/reports/monthly?format=html
  rejected payloads {api}/api/v1/ingest/rejections
  metrics           {api}/metrics
  MQTT broker       127.0.0.1:{ports["mqtt"]}   InfluxDB http://127.0.0.1:{ports["influx"]} (db {cfg.influxdb.database})
Administration Hall: {len(gw_meters)} meters on a simulated RS-485 bus (DL/T 645, CJ/T 188, Modbus RTU),
  read every 30 s by a building gateway (campus/v1/gateways/gw-admin-hall/status).
Injected waste: {waste}; a dorm kettle switches on in 30 s.
Logs in {DEMO_DIR}/. Press Ctrl-C to stop.""")
        while not stop.wait(1):
            for c in children:
                if c.poll() is not None:
                    typer.secho(
                        f"a child process exited ({c.args[3:]} code {c.returncode}); see {DEMO_DIR}/*.log",
                        fg="red",
                    )
                    stop.set()
    except KeyboardInterrupt:
        pass
    except ServiceError as e:
        typer.secho(str(e), err=True, fg="red")
    finally:
        stop.set()
        typer.echo("stopping …")
        for c in reversed(children):
            c.send_signal(signal.SIGINT)
        for c in children:
            try:
                c.wait(20)
            except subprocess.TimeoutExpired:
                c.kill()
        for obj in cleanup:
            obj.stop()  # type: ignore[attr-defined]
        for s in reversed(servers):
            s.stop()
        typer.echo("stopped.")


def _wait_stored(
    cfg: CampusConfig, meter: str, since: int, stop: threading.Event, timeout: float = 180
) -> None:
    """Until InfluxDB holds a reading of ``meter`` at or after ``since``."""
    from campusmon.influx import StoreUnavailable, open_store

    m = cfg.meter(meter)
    field = "energy_kwh" if m is None or m.kind.value == "electricity" else "volume_m3"
    store = open_store(cfg)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                q = f'SELECT last("{field}") FROM "{m.kind.value if m else "electricity"}" WHERE "meter" = $m'
                series = store.query(q, {"m": meter})
                if series and series[0]["values"][0][0] >= since:
                    return
            except StoreUnavailable:
                pass
            time.sleep(0.5)
    finally:
        store.close()


def _wait_for_data(api: str, meter: str, stop: threading.Event, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            r = httpx.get(f"{api}/api/v1/meters/{meter}/readings", params={"every": "1h"}, timeout=5)
            if r.status_code == 200 and r.json()["count"] > 0:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


KETTLE_METER = "e-dorm-1-room-101"

# Window rules judge whole hours that ended at least ``settle_s`` ago: a running toilet must cover
# 24 of them (leak.continuous_flow) or a whole 02:00-05:00 night (leak.night_flow) before it can be
# seen. Waste injected exactly 24 h ago never fills 24 such hours, and misses the last whole night
# when the demo starts between 02:00 and about 05:20, so it starts 30 h back.
WASTE_HOURS = 30
# Clean history the rules learn from: 3 nights of baseline (leak.night_flow), 3 resting days
# (leak.continuous_flow), 2 earlier days of the same kind (after_hours.usage, across a weekend).
RULE_HISTORY_H = 8 * 24


def waste_start(now: int, hours: int) -> int:
    """When the injected waste starts in a history of ``hours`` ending at ``now``."""
    return now - min(WASTE_HOURS, hours) * 3600


def inject_waste(sim_meters: list[SimMeter], cfg: CampusConfig) -> str:
    """Labelled waste from ``waste_start`` on, so the window rules have something real to find.

    The load is added to the sub-meter and to every meter above it: a main meter sees what its
    sub-circuits draw.
    """
    meters = {m.id: m for m in sim_meters}
    found = []
    for mid, extra, label in (
        ("w-teach-1-toilets", 0.12, "running toilet in teach-1 (0.12 m3/h day and night)"),
        ("e-library-light", 12000.0, "library lights on all night (+12 kW)"),
    ):
        m = cfg.meter(mid)
        if m is None or mid not in meters:
            continue
        while m is not None:
            if m.id in meters:
                meters[m.id].extra_load += extra
            m = cfg.meter(m.parent) if m.parent else None
        found.append(label)
    return "; ".join(found) or "none (meters not in this config)"


def _kettle(fleet: object, on: bool) -> None:
    m = next((m for m in fleet.meters if m.id == KETTLE_METER), None)  # type: ignore[attr-defined]
    if m is not None:
        m.extra_load = 1800.0 if on else 0.0


DEMO_BUS = Path("deploy/demo-bus.yaml")
DEMO_GATEWAY = Path("deploy/demo-gateway.yaml")


def _start_gateway(env: dict[str, str], mqtt_port: int, children: list, cleanup: list) -> set[str]:
    """Serve the hall's simulated bus on loopback TCP and run a real gateway process against it."""
    import yaml

    from firmware_sim.serial import load_bus
    from firmware_sim.serial.spec import serve

    bus = load_bus(DEMO_BUS)
    url = serve(bus, tcp=f"127.0.0.1:{free_port()}")[0]
    cleanup.append(bus)
    gw = yaml.safe_load(DEMO_GATEWAY.read_text())
    gw["mqtt"]["port"] = mqtt_port
    gw["gateway"]["data_dir"] = str(DEMO_DIR / "gateway")
    gw["buses"][0]["port"] = url
    path = DEMO_DIR / "gateway.yaml"
    path.write_text(yaml.safe_dump(gw, sort_keys=False))
    # A field gateway has an environment of its own; the campus-side overrides are not for it.
    gw_env = {k: v for k, v in env.items() if not k.startswith("CAMPUSMON_")}
    children.append(_child(["gateway", "-c", str(path)], gw_env, DEMO_DIR / "gateway.log"))
    return {m["id"] for b in gw["buses"] for m in b["meters"]}
