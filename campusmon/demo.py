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
from campusmon.devices import DeviceRegistry
from campusmon.mqtt import MqttAuth
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


def _name(c: subprocess.Popen[bytes]) -> str:
    return str(c.args[3]) if isinstance(c.args, list) and len(c.args) > 3 else str(c.args)


def exited_children(children: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    return [c for c in children if c.poll() is not None]


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the demo: stopping is what was asked for, not a failure."""


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_demo(config: Path, hours: int, interval: int, data_dir: Path = DEMO_DIR) -> None:
    """Servers, collector, gateway, API and simulated meters; Ctrl-C (or SIGTERM) stops all of it.

    A terminal's Ctrl-C reaches every child too, so children exiting while the demo stops are
    expected. The handlers are installed explicitly: a demo started from a script inherits SIGINT
    ignored, and would otherwise only notice its collector leaving.
    """
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
        "collector_metrics": free_port(),
        "gateway_metrics": free_port(),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "CAMPUSMON_CONFIG": str(config),
            "CAMPUSMON_MQTT__PORT": str(ports["mqtt"]),
            "CAMPUSMON_INFLUXDB__URL": f"http://127.0.0.1:{ports['influx']}",
            "CAMPUSMON_SERVICES__MOSQUITTO_PORT": str(ports["mqtt"]),
            "CAMPUSMON_SERVICES__INFLUXDB_PORT": str(ports["influx"]),
            "CAMPUSMON_API__PORT": str(ports["api"]),
            "CAMPUSMON_COLLECTOR__METRICS_PORT": str(ports["collector_metrics"]),
            "CAMPUSMON_DATABASE__URL": f"sqlite:///{data_dir}/campus.sqlite",
            # the servers below live here, so the console's admin page finds the broker's devices
            "CAMPUSMON_SERVICES__DATA_DIR": str(data_dir),
            "CAMPUSMON_ALERTS__SCHEDULE__INTERVAL_S": "60",  # window rules every minute, so alerts show quickly
        }
    )
    cfg = load_config(config, env)
    from campusmon.rollups import retention_statements  # the accounting policy loads only here

    servers: list[Server] = [
        Mosquitto(data_dir / "mosquitto", ports["mqtt"]),
        InfluxDB(
            data_dir / "influxdb",
            ports["influx"],
            auth=True,
            databases=(cfg.influxdb.database,),
            setup=tuple(retention_statements(cfg.influxdb)),
        ),
    ]
    creds = demo_identities(cfg, DeviceRegistry(servers[0].data_dir))
    env.update(
        {
            "CAMPUSMON_MQTT__USERNAME": creds["collector"].username or "",
            "CAMPUSMON_MQTT__PASSWORD": creds["collector"].password or "",
            "CAMPUSMON_MQTT__API_USERNAME": creds["api"].username or "",
            "CAMPUSMON_MQTT__API_PASSWORD": creds["api"].password or "",
        }
    )
    children: list[subprocess.Popen[bytes]] = []
    cleanup: list[object] = []
    stop = threading.Event()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in servers:
            typer.echo(f"starting {s.name} on 127.0.0.1:{s.port} …")
            # A session of their own: Ctrl-C stops the clients first, then the servers they write to.
            s.start(detach=True)
        env.update(servers[1].client_env())  # the writer and reader the demo's InfluxDB was given
        cfg = load_config(config, env)
        children.append(_child(["collector"], env, data_dir / "collector.log"))
        status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)
        if not wait_for_status("127.0.0.1", ports["mqtt"], status, "online", 30, auth=creds["monitor"]):
            raise ServiceError(f"the collector did not come online; see {data_dir}/collector.log")
        from firmware_sim.mqtt_meters import MqttFleet
        from firmware_sim.profiles import sim_meters_for

        gw_meters = _start_gateway(env, ports, children, cleanup, data_dir, creds["gateway"])
        fleet = MqttFleet(
            [m for m in sim_meters_for(cfg, 1) if m.id not in gw_meters],
            "127.0.0.1",
            ports["mqtt"],
            interval_s=900,
            seed=1,
            flat_share=0.2,
            fault_rate=0.002,
            client_id="campusmon-demo-sim",
            auth=creds["sim"],
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
        _wait_stored(cfg, fleet.meters[-1].id, now - 60 - 900, stop, children, data_dir)
        _wait_stored(cfg, sorted(gw_meters)[0], now - 120, stop, children, data_dir)
        logins = demo_logins(cfg)
        children.append(_child(["api"], env, data_dir / "api.log"))
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
        _wait_for_data(api, m, stop, headers={"Authorization": f"Bearer {logins['operator token']}"})
        typer.echo(f"""
Campus energy monitor demo is running ({len(cfg.buildings)} buildings, {len(cfg.meters)} meters).
  staff console     {api}/console/   (log in as demo-operator or demo-admin, below)
  API docs          {api}/docs
  meters            {api}/api/v1/meters
  readings          {api}/api/v1/meters/{m}/readings?every=1h
  latest            {api}/api/v1/meters/{m}/latest
  waste alerts      {api}/api/v1/alerts   (live: {api}/api/v1/alerts/stream, Atom: {api}/api/v1/alerts/feed.atom)
  consumption       {api}/api/v1/consumption?scope=campus&period=hour
  monthly report    {api}/api/v1/reports/monthly?format=html   (in standard coal: &measure=kgce)
  annual assessment {api}/api/v1/assessment/annual?format=html   (units: {api}/api/v1/units)
  rejected payloads {api}/api/v1/ingest/rejections
  metrics           API {api}/metrics   collector http://127.0.0.1:{ports["collector_metrics"]}/metrics
                    gateway http://127.0.0.1:{ports["gateway_metrics"]}/metrics
  MQTT broker       127.0.0.1:{ports["mqtt"]}   InfluxDB http://127.0.0.1:{ports["influx"]} (db {cfg.influxdb.database})
{credentials_text(creds, servers[1])}
{logins_text(logins, api)}
Administration Hall: {len(gw_meters)} meters on a simulated RS-485 bus (DL/T 645, CJ/T 188, Modbus RTU),
  read every 30 s by a building gateway (campus/v1/gateways/gw-admin-hall/status).
Injected waste: {waste}; a dorm kettle switches on in 30 s.
Logs in {data_dir}/. Press Ctrl-C to stop.""")
        while not stop.wait(1):
            gone = exited_children(children)
            if gone:
                raise ServiceError(
                    "; ".join(f"{_name(c)} exited unexpectedly (code {c.returncode})" for c in gone)
                    + f"; see {data_dir}/*.log"
                )
    except _Stop as e:
        typer.echo(f"\n{e.args[0] if e.args else 'signal'} received: stopping the demo …")
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: stopping the demo …")
    except ServiceError as e:
        typer.secho(str(e), err=True, fg="red")
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        stop.set()
        typer.echo("stopping …")
        for c in reversed(children):
            if c.poll() is None:
                c.send_signal(signal.SIGINT)
        for c in children:
            try:
                c.wait(20)
            except subprocess.TimeoutExpired:
                typer.echo(f"{_name(c)} did not stop within 20 s; killing it")
                c.kill()
                c.wait(5)
        for obj in cleanup:
            obj.stop()  # type: ignore[attr-defined]
        for s in reversed(servers):
            s.stop()
        for sig, h in previous.items():
            signal.signal(sig, h)
        typer.echo("stopped.")


DEMO_SIM = "campusmon-demo-sim"


def demo_identities(cfg: CampusConfig, reg: DeviceRegistry) -> dict[str, MqttAuth]:
    """Broker credentials of the demo's processes, fresh each run (passwords are never stored).

    The simulated meters share one uplink, so they log in as one head-end allowed exactly their
    meters' topics; the gateway, collector and API have their own, and the demo's own status
    checks use a read-only monitor, so none borrows another's identity (and client id).
    """
    import yaml

    gw_id = yaml.safe_load(DEMO_GATEWAY.read_text())["gateway"]["id"]
    gw_meters = {m.id for m in cfg.meters if m.gateway == gw_id}
    wanted = {
        "collector": (cfg.mqtt.client_id, "collector", []),
        "api": ("campusmon-api", "api", []),
        "monitor": ("campusmon-demo-monitor", "monitor", []),
        "gateway": (gw_id, "gateway", []),
        "sim": (DEMO_SIM, "meter", sorted(m.id for m in cfg.meters if m.id not in gw_meters)),
    }
    out = {}
    for role, (name, kind, meters) in wanted.items():
        if reg.get(name) is not None:
            reg.revoke(name)
        out[role] = MqttAuth(name, reg.add(name, kind, meters))
    return out


DEMO_LOGINS = (("demo-admin", "admin"), ("demo-operator", "operator"))


def demo_logins(cfg: CampusConfig) -> dict[str, str]:
    """API logins of the demo, with fresh passwords each run, and an operator token (docs/security.md).

    The demo's store outlives a run, so existing demo users get a new password and old demo tokens
    are revoked: nothing printed by an earlier run keeps working.
    """
    import secrets

    from api.auth.service import AuthError, AuthStore
    from campusmon.db import init_db

    engine, sessions = init_db(cfg.database.url)
    store = AuthStore(sessions, ttl=0)
    out: dict[str, str] = {}
    try:
        for name, role in DEMO_LOGINS:
            pw = secrets.token_urlsafe(12)
            try:
                store.add_user(name, pw, role)
            except AuthError:
                store.update_user(name, password=pw, role=role, disabled=False)
            out[name] = pw
        for t in store.tokens():
            if t["name"] == "demo-operator" and not t["revoked_at"]:
                store.revoke_token(t["id"])
        out["operator token"], _ = store.create_token("demo-operator", "operator", created_by="demo")
    finally:
        engine.dispose()
    return out


def logins_text(logins: dict[str, str], api: str) -> str:
    lines = [
        "Logins for the console and the API (every route but /healthz needs one; these change every run):"
    ]
    for name, role in DEMO_LOGINS:
        lines.append(f"  {role:<17} user {name}  password {logins[name]}  ({api}/console/login)")
    lines.append(f"  operator token    {logins['operator token']}")
    lines.append(f"  try: curl -H 'Authorization: Bearer {logins['operator token']}' {api}/api/v1/alerts")
    return "\n".join(lines)


def credentials_text(creds: dict[str, MqttAuth], influx: InfluxDB) -> str:
    lines = ["Broker logins (anonymous access is refused; these change every run):"]
    for role, a in creds.items():
        lines.append(f"  {role:<17} user {a.username}  password {a.password}")
    for role, (u, p) in sorted(influx.users().items()):
        lines.append(f"  influxdb {role:<8} user {u}  password {p}")
    return "\n".join(lines)


def _check_children(children: list[subprocess.Popen[bytes]], data_dir: Path) -> None:
    gone = exited_children(children)
    if gone:
        c = gone[0]
        raise ServiceError(f"{_name(c)} exited (code {c.returncode}); see {data_dir}/{_name(c)}.log")


def _wait_stored(
    cfg: CampusConfig,
    meter: str,
    since: int,
    stop: threading.Event,
    children: list[subprocess.Popen[bytes]],
    data_dir: Path,
    timeout: float = 180,
) -> None:
    """Until InfluxDB holds a reading of ``meter`` at or after ``since``; a child that dies ends the wait."""
    from campusmon.influx import StoreUnavailable, open_store
    from campusmon.quantities import REGISTER, MeterKind

    m = cfg.meter(meter)
    field = REGISTER[m.kind if m is not None else MeterKind.ELECTRICITY]  # gas and heat have their own
    store = open_store(cfg)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not stop.is_set():
            _check_children(children, data_dir)
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


def _wait_for_data(
    api: str, meter: str, stop: threading.Event, timeout: float = 60, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            r = httpx.get(
                f"{api}/api/v1/meters/{meter}/readings", params={"every": "1h"}, headers=headers, timeout=5
            )
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


def _start_gateway(
    env: dict[str, str], ports: dict[str, int], children: list, cleanup: list, data_dir: Path, auth: MqttAuth
) -> set[str]:
    """Serve the hall's simulated bus on loopback TCP and run a real gateway process against it."""
    import yaml

    from firmware_sim.serial import load_bus
    from firmware_sim.serial.spec import serve

    bus = load_bus(DEMO_BUS)
    url = serve(bus, tcp=f"127.0.0.1:{free_port()}")[0]
    cleanup.append(bus)
    gw = yaml.safe_load(DEMO_GATEWAY.read_text())
    gw["mqtt"]["port"] = ports["mqtt"]
    gw["mqtt"]["username"], gw["mqtt"]["password"] = auth.username, auth.password
    gw["gateway"]["data_dir"] = str(data_dir / "gateway")
    gw.setdefault("health", {})["prometheus_port"] = ports["gateway_metrics"]
    gw["buses"][0]["port"] = url
    path = data_dir / "gateway.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the gateway's password
    with os.fdopen(fd, "w") as fh:
        fh.write(yaml.safe_dump(gw, sort_keys=False))
    # A field gateway has an environment of its own; the campus-side overrides are not for it.
    gw_env = {k: v for k, v in env.items() if not k.startswith("CAMPUSMON_")}
    children.append(_child(["gateway", "-c", str(path)], gw_env, data_dir / "gateway.log"))
    return {m["id"] for b in gw["buses"] for m in b["meters"]}
