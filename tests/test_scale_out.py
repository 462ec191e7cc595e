"""Two of everything that carries load, on PostgreSQL, with one of each killed mid-stream.

Two collectors in one ``$share`` group, two API replicas and two workers run as ``campusmon``
processes against a real Mosquitto, InfluxDB and PostgreSQL. Simulated dorm-room meters report
every second; the waste is labelled: rooms that run a heater over their power cap
(``dorm.over_cap``, an instant rule the collectors judge) and a meter that falls silent
(``data.offline``, a window rule a worker judges under its lease). Two webhook receivers of the
test count notifications by delivery id, and an SSE client follows each API replica, with the SSE
fallback poll at 60 s, so that events reach it through ``LISTEN/NOTIFY``.

Mid-stream one collector, the worker holding the window rules (and one webhook's deliveries) and
one API replica are killed (SIGKILL). The collector is started again, as its service manager would:
Mosquitto deals a shared subscription's messages round-robin to every member's session, a dead
member's included, so its share waits in its session until it is back. The worker and the replica
are not restarted. The worker is killed between two deliveries: delivery is at least once, and one
killed after a receiver's 200 and before its record is sent again (same delivery id).

Leases are short (``lease_ttl_s`` 3 s, renewed every second) so the takeover fits in the test; the
time it took is printed (docs/deployment.md quotes it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from api.alerts.rules import RULES
from campusmon.config import parse_config
from campusmon.influx import open_store
from campusmon.reading import Reading
from campusmon.services import Server, free_port
from campusmon.wire import METER_TOPIC, encode_senml
from firmware_sim.mqtt_meters import BackpressurePublisher
from tests.auth_helpers import admin_token
from tests.helpers import count, spawn_cli, wait_until

ROOMS = [f"r{i:02d}" for i in range(1, 7)]
HEATED = ("r02", "r04", "r06")  # rooms whose heater goes over the cap, one after the other
SILENT = "r05"  # the meter that falls silent
CAP_W = 1500.0
NOTIFIED = ("opened", "cleared", "severity")  # the events the webhooks subscribe to
LEASE_TTL_S = 3.0
RENEW_S = 1.0


class Hooks(ThreadingHTTPServer):
    """The webhook receiver: every POST, with its webhook, delivery id, event and alert."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.lock = threading.Lock()
        self.posts: list[dict[str, Any]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HookHandler(BaseHTTPRequestHandler):
    server: Hooks

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.posts.append(
                {
                    "hook": self.path.strip("/"),
                    "delivery": self.headers["X-Campusmon-Delivery"],
                    "event_id": body["event_id"],
                    "event": body["event"],
                    "alert_id": body["alert"]["id"],
                }
            )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_a: Any) -> None:
        pass


class SseClient(threading.Thread):
    """Follows the alert stream of one replica; when that replica dies, resumes on the next one.

    ``ids`` is every event id received, in order, duplicates included; ``resumed_on`` the replicas
    it reconnected to with ``Last-Event-ID``.
    """

    def __init__(self, urls: list[str], token: str) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.token = token
        self.ids: list[int] = []
        self.events: dict[int, dict[str, Any]] = {}
        self.resumed_on: list[str] = []
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            url = self.urls[i % len(self.urls)]
            headers = {"Authorization": f"Bearer {self.token}"}
            params = {}
            if self.ids:
                headers["Last-Event-ID"] = str(self.ids[-1])
                self.resumed_on.append(url)
            else:
                params["last_event_id"] = "0"  # the whole log, from its first event
            try:
                with httpx.Client(timeout=httpx.Timeout(5.0, read=30.0)) as c:
                    with c.stream("GET", url + "/api/v1/alerts/stream", headers=headers, params=params) as r:
                        r.raise_for_status()
                        self.connected.set()
                        self._read(r)
            except (httpx.HTTPError, OSError):
                pass
            if not self.stop.is_set():
                i += 1  # this replica is gone or failed: the next one
                self.stop.wait(0.2)

    def _read(self, r: httpx.Response) -> None:
        eid: int | None = None
        for line in r.iter_lines():
            if self.stop.is_set():
                return
            if line.startswith("id:"):
                eid = int(line[3:].strip())
            elif line.startswith("data:") and eid is not None:
                self.events[eid] = json.loads(line[5:])
                self.ids.append(eid)
                eid = None


class Meters(threading.Thread):
    """Dorm-room meters reporting power and energy every second; the test switches the waste on."""

    def __init__(self, pub: BackpressurePublisher) -> None:
        super().__init__(daemon=True)
        self.pub = pub
        self.second = 0
        self.sent: list[Reading] = []
        self.stop = threading.Event()
        self.tick = threading.Condition()
        self.heating: dict[str, int] = {}  # room -> seconds its heater stays on
        self.silent: set[str] = set()

    def heat(self, room: str, seconds: int = 2) -> None:
        with self.tick:
            self.heating[room] = seconds

    def silence(self, room: str) -> None:
        with self.tick:
            self.silent.add(room)

    def run(self) -> None:
        last_ts = 0
        energy = dict.fromkeys(ROOMS, 100.0)
        while not self.stop.is_set():
            ts = max(int(time.time()), last_ts + 1)
            last_ts = ts
            with self.tick:
                on = {r for r, n in self.heating.items() if n > 0}
                self.heating = {r: n - 1 for r, n in self.heating.items() if n > 1}
                silent = set(self.silent)
            for room in ROOMS:
                if room in silent:
                    continue
                power = 2 * CAP_W if room in on else 120.0
                energy[room] += power / 3.6e6
                batch = [
                    Reading(room, "power_w", power, ts),
                    Reading(room, "energy_kwh", round(energy[room], 6), ts),
                ]
                self.pub.publish(METER_TOPIC.format(meter_id=room), encode_senml(batch))
                self.sent += batch
            with self.tick:
                self.second += 1
                self.tick.notify_all()
            self.stop.wait(max(0.0, ts + 1 - time.time()))

    def wait_second(self, n: int, timeout: float = 60.0) -> None:
        with self.tick:
            assert self.tick.wait_for(lambda: self.second >= n, timeout), f"stream second {n} never came"


def _campus(pg_url: str, mosq_port: int, influx_port: int, db: str, hooks: str) -> dict[str, Any]:
    rules: dict[str, Any] = {r: {"enabled": False} for r in RULES}
    rules["dorm.over_cap"] = {"cap_w": CAP_W, "duration_s": 0}
    # Silent after 10 missed readings: a machine stalled for a few seconds does not silence a meter.
    rules["data.offline"] = {"intervals": 10}
    return {
        "buildings": [
            {"id": "dorm-a", "name": "Dorm A", "type": "dorm", "floor_area_m2": 5000, "occupants": 300}
        ],
        "meters": [
            {"id": r, "building": "dorm-a", "kind": "electricity", "room": r, "interval_s": 1} for r in ROOMS
        ],
        "database": {"url": pg_url},
        "mqtt": {"port": mosq_port, "share_group": "scale", "flush_interval_s": 0.2},
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}", "database": db},
        # The fallback poll at its longest: SSE events arrive through LISTEN/NOTIFY.
        "api": {"run_jobs": False, "sse_poll_s": 60},
        "worker": {"lease_ttl_s": LEASE_TTL_S, "renew_s": RENEW_S, "rollup_shards": 1},
        "alerts": {
            "rules": rules,
            "schedule": {"interval_s": 10, "settle_s": 0, "catchup_days": 0},
            # Two receivers, so that the worker killed holds one of them (units are dealt in turn).
            "webhooks": [{"name": n, "url": f"{hooks}/{n}", "events": list(NOTIFIED)} for n in ("a", "b")],
            "delivery": {"poll_s": 0.2, "backoff_s": 0.5},
        },
    }


@pytest.fixture
def pg_url(postgresql: Any) -> str:
    return postgresql.create_database("t_" + uuid.uuid4().hex[:12])


class Procs:
    """The roles as child processes of the test, each with its own log; stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        p = spawn_cli(args, self.tmp / f"{name}.log")
        self.procs[name] = p
        return p

    def kill(self, name: str) -> None:
        p = self.procs[name]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n} ---\n{(self.tmp / f'{n}.log').read_text(errors='replace')[-1500:]}" for n in self.procs
        )


def _leases(pg_url: str) -> dict[str, str]:
    """unit -> holder's worker id, for the units whose lease is valid now."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT name, holder FROM worker_leases WHERE name NOT LIKE 'member:%' "
            "AND holder <> '' AND expires_at > extract(epoch from clock_timestamp())"
        ).fetchall()
    return {name: holder.split("#")[0] for name, holder in rows}


def _pending(pg_url: str) -> int:
    """Deliveries not yet recorded as sent (or failed)."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as c:
        return int(c.execute("SELECT count(*) FROM alert_deliveries WHERE status = 'pending'").fetchone()[0])


def _ready(url: str) -> Callable[[], bool]:
    def ok() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ok


def test_two_of_everything_on_postgresql_survive_a_kill_of_one_of_each(
    tmp_path: Path, server_factory: Callable[[str], Server], influxdb: Server, db_name: str, pg_url: str
) -> None:
    mosq = server_factory("mosquitto")
    hooks = Hooks()
    data = _campus(pg_url, mosq.port, influxdb.port, db_name, hooks.url)
    cfg = parse_config(data, "scale-out", environ={})
    token = admin_token(cfg)  # also creates the schema before the roles start
    store = open_store(cfg)
    store.ensure_database()

    def config(name: str, **mqtt: Any) -> Path:
        d = json.loads(json.dumps(data))
        d["mqtt"].update(mqtt)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path

    procs = Procs(tmp_path)
    api_urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    collector_args = {
        f"collector-{i}": ["collector", "-c", str(config(f"collector-{i}", client_id=f"collector-{i}"))]
        for i in (1, 2)
    }
    shared = config("roles")
    meters: Meters | None = None
    clients: list[SseClient] = []
    pub: BackpressurePublisher | None = None
    try:
        for name, args in collector_args.items():
            procs.start(name, args)
        for i, url in enumerate(api_urls, 1):
            procs.start(f"api-{i}", ["api", "-c", str(shared), "--port", url.rsplit(":", 1)[1]])
        for i in (1, 2):
            procs.start(f"worker-{i}", ["worker", "-c", str(shared), "--id", f"worker-{i}"])
        for url in api_urls:
            wait_until(_ready(url), timeout=180, what=f"API replica {url}")
        units = {
            "alerts.window",
            "deliver:webhook:a",
            "deliver:webhook:b",
            "deliver:*",
            "deliver:mqtt",
            "rollups:0/1",
        }
        wait_until(
            lambda: set(held := _leases(pg_url)) == units and set(held.values()) == {"worker-1", "worker-2"},
            timeout=120,
            what="both workers holding their share of the units",
        )
        # One SSE client per replica; client 0 moves to replica 2 when replica 1 dies.
        clients = [SseClient(api_urls, token), SseClient(api_urls[::-1], token)]
        for c in clients:
            c.start()
            assert c.connected.wait(60)

        auth = {"Authorization": f"Bearer {token}"}

        def alerts() -> list[dict[str, Any]]:
            r = httpx.get(api_urls[1] + "/api/v1/alerts", params={"limit": 200}, headers=auth, timeout=10)
            r.raise_for_status()
            return r.json()["alerts"]

        def event_log() -> list[dict[str, Any]]:
            r = httpx.get(
                api_urls[1] + "/api/v1/alerts/events",
                params={"after": 0, "limit": 1000},
                headers=auth,
                timeout=10,
            )
            r.raise_for_status()
            return r.json()["events"]

        def settled(rooms: set[str]) -> bool:
            """These rooms' alerts opened and cleared, and every event so far delivered and recorded."""
            now = alerts()
            done = {
                a["subject"]["id"] for a in now if a["rule"] == "dorm.over_cap" and a["status"] == "cleared"
            }
            wanted = {(e["id"], h) for e in event_log() if e["type"] in NOTIFIED for h in ("a", "b")}
            return (
                done >= rooms
                and {(p["event_id"], p["hook"]) for p in hooks.posts} >= wanted
                and not _pending(pg_url)
            )

        pub = BackpressurePublisher("127.0.0.1", mosq.port, "meters-dorm-a")
        meters = Meters(pub)
        meters.start()
        meters.wait_second(2)
        meters.heat("r02")

        # A collector dies mid-stream; the other goes on storing; its service manager restarts it.
        meters.wait_second(4)
        procs.kill("collector-1")
        stored_then = count(store)
        meters.silence(SILENT)
        wait_until(
            lambda: count(store) > stored_then, timeout=60, what="the other collector to go on storing"
        )
        meters.wait_second(7)
        procs.start("collector-1", collector_args["collector-1"])
        meters.heat("r04")

        # The worker holding the window rules dies between two deliveries (a delivery sent and not
        # yet recorded is sent again by the next holder, with the same delivery id: at least once).
        wait_until(lambda: settled({"r02", "r04"}), timeout=120, what="r02 and r04 alerts delivered")
        held = _leases(pg_url)
        victim = held["alerts.window"]
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        moved = {u for u, w in held.items() if w == victim}
        assert {"alerts.window", "deliver:webhook:b"} <= moved, held
        last_before_kill = event_log()[-1]["id"]
        procs.kill(victim)
        killed_at = time.monotonic()
        wait_until(
            lambda: set(now := _leases(pg_url)) == units and set(now.values()) == {survivor},
            timeout=60,
            interval=0.1,
            what=f"{survivor} to take over the units of {victim}",
        )
        takeover_s = time.monotonic() - killed_at

        # An API replica dies; its SSE client resumes on the other one.
        procs.kill("api-1")
        meters.heat("r06")

        expected = {("dorm.over_cap", room) for room in HEATED} | {("data.offline", SILENT)}
        seen: set[tuple[str, str]] = set()

        def raised() -> bool:
            seen.update((a["rule"], a["subject"]["id"]) for a in alerts())
            return seen >= expected and settled(set(HEATED))

        wait_until(raised, timeout=180, what=f"the alerts {sorted(expected)} (raised: {seen})")
        log = event_log()
        # Stop before the end of the stream makes every meter silent (data.offline would judge them).
        meters.stop.set()
        meters.join(10)
        for name in ("worker-1", "worker-2"):
            procs.stop(name)
        assert pub.flush(30)
        wait_until(
            lambda: count(store) >= len(meters.sent), timeout=120, what=f"{len(meters.sent)} readings stored"
        )
        for name in ("collector-1", "collector-2"):
            procs.stop(name)
        assert count(store) == len(meters.sent)  # none lost (a reading delivered twice overwrites itself)

        got = alerts()
        keys = Counter((a["rule"], a["subject"]["id"]) for a in got)
        assert set(keys) == expected, got
        assert all(n == 1 for n in keys.values()), keys

        # The event log, as the surviving replica serves it, is the truth the others are held to.
        assert event_log() == log  # nothing happened after the waste
        ids = [e["id"] for e in log]
        opened = Counter(e["alert_id"] for e in log if e["type"] == "opened")
        assert sorted(opened) == sorted(a["id"] for a in got) and set(opened.values()) == {1}
        wait_until(lambda: all(c.ids[-1:] == ids[-1:] for c in clients), timeout=30, what="the SSE clients")
        for c in clients:
            assert c.ids == ids  # every event once, in order
        assert clients[0].resumed_on and set(clients[0].resumed_on) == {api_urls[1]}
        assert not clients[1].resumed_on

        # Every notification delivered once to each receiver: one delivery id, one POST.
        posts = list(hooks.posts)
        wanted = sorted((e["id"], h) for e in log if e["type"] in NOTIFIED for h in ("a", "b"))
        assert sorted((p["event_id"], p["hook"]) for p in posts) == wanted
        assert len({p["delivery"] for p in posts}) == len(posts)
        after_kill = [p for p in posts if p["hook"] == "b" and p["event_id"] > last_before_kill]
        assert after_kill  # the survivor delivered to the receiver the killed worker served
        print(
            f"takeover of {sorted(moved)} by {survivor}: {takeover_s:.1f} s; {len(log)} events, "
            f"{len(posts)} webhook posts ({len(after_kill)} by the survivor on b), {count(store)} readings"
        )
    except BaseException:
        print(procs.logs())
        raise
    finally:
        if meters is not None:
            meters.stop.set()
        for c in clients:
            c.stop.set()
        if pub is not None:
            pub.close(5)
        procs.stop_all()
        hooks.shutdown()
        store.close()
