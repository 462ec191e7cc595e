"""What an operator sees: each process's own /metrics, an INFO log without per-write lines, one
source of truth for the local servers' ports, and a demo that stops calmly. Real servers and real
processes only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import paho.mqtt.publish as publish
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from campusmon.influx import open_store
from campusmon.mqtt import CLIENT_ID_PREFIX, MqttAuth, make_client
from campusmon.services import free_port, wait_port
from campusmon.wire import COLLECTOR_STATUS_TOPIC, wait_for_status
from firmware_sim.mqtt_meters import MqttFleet
from firmware_sim.profiles import sim_meters_for
from tests.conftest import ROOT, SMALL_CAMPUS
from tests.helpers import campus, count, spawn_cli, wait_until, write_config


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text the way a scraper does; a malformed page raises."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _info_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if " INFO " in ln]


def _clean_env() -> dict[str, str]:
    """Our own environment without campus overrides, so only the test's config speaks."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}


@pytest.mark.slow
def test_collector_serves_its_own_metrics_and_logs_counts_not_writes(
    mosquitto, influxdb, make_config, tmp_path
) -> None:
    port = free_port()
    cfg = make_config(
        mosquitto,
        influxdb,
        data=campus(10, 5),
        mqtt={"batch_size": 10, "flush_interval_s": 0.05},
        collector={"metrics_port": port, "counts_log_s": 0.5},
    )
    path = write_config(cfg, tmp_path / "campus.yaml")
    store = open_store(cfg)
    store.ensure_database()
    log = tmp_path / "collector.log"
    proc = spawn_cli(["collector", "-c", str(path)], log, {**_clean_env(), "CAMPUSMON_LOG_LEVEL": "INFO"})
    try:
        status = COLLECTOR_STATUS_TOPIC.format(client_id=cfg.mqtt.client_id)
        assert wait_for_status("127.0.0.1", mosquitto.port, status, "online", 30)
        fleet = MqttFleet(sim_meters_for(cfg, 5), "127.0.0.1", mosquitto.port, 60, 5, client_id="ops-sim")
        fleet.keep_history = True
        start = int(time.time()) // 60 * 60 - 100 * 60
        for k in range(20):  # 20 steps x 15 meters x 2 readings; batches of <= 10 messages
            fleet.step(start + 60 * k)
        fleet.close()
        sent = len(fleet.published)
        assert sent == 600
        wait_until(lambda: count(store) >= sent, 60, 0.2, "every reading stored")

        url = f"http://127.0.0.1:{port}/metrics"
        m = wait_until(
            lambda: (
                (s := _samples(_scrape(url)))[("campusmon_readings_stored_total", (("via", "mqtt"),))] >= sent
                and s
            ),
            30,
            0.2,
            "the stored counter to reach what was sent",
        )
        assert m[("campusmon_readings_stored_total", (("via", "mqtt"),))] == sent == count(store)
        assert m[("campusmon_collector_mqtt_subscribed", (("client_id", cfg.mqtt.client_id),))] == 1
        assert m[("campusmon_store_up", (("via", "mqtt"),))] == 1
        assert not [k for k in m if dict(k[1]).get("via") in ("http", "serial")]  # not this process's

        # The counts line reports the same total; no line per InfluxDB write (at least 30 were made).
        wait_until(
            lambda: any(f"total {sent} stored" in ln for ln in _info_lines(log)), 30, 0.2, "the counts line"
        )
        info = _info_lines(log)
        assert not [ln for ln in info if "HTTP Request" in ln or " httpx" in ln or " httpcore" in ln]
        other = [ln for ln in info if "readings stored" not in ln]
        assert len(other) <= 4, other  # connected, started (and at most a reconnect)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "stopped (" in log.read_text()


@pytest.mark.slow
def test_api_metrics_are_its_own_and_its_info_log_has_no_request_or_job_lines(
    mosquitto, influxdb, make_config, tmp_path
) -> None:
    cfg = make_config(mosquitto, influxdb, data=SMALL_CAMPUS)
    path = write_config(cfg, tmp_path / "campus.yaml")
    port = free_port()
    log = tmp_path / "api.log"
    proc = spawn_cli(["api", "-c", str(path), "--port", str(port)], log, _clean_env())
    try:
        wait_port(port, 60, proc)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200  # queries InfluxDB
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    m = _samples(text)
    assert ("campusmon_readings_stored_total", (("via", "http"),)) in m
    # The collector's series live on the collector's endpoint: a 0 here would contradict it.
    assert not [k for k in m if dict(k[1]).get("via") == "mqtt"], text
    info = _info_lines(log)
    assert not [ln for ln in info if "HTTP Request" in ln or " apscheduler" in ln], info


def _yaml(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / f"campus-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path}/c.sqlite"}, **data}))
    return p


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**_clean_env(), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "campusmon.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=ROOT,
        timeout=120,
    )


def test_config_check_and_services_up_refuse_ports_that_disagree(tmp_path) -> None:
    bad = _yaml(
        tmp_path,
        {
            "mqtt": {"port": 1883},
            "influxdb": {"url": "http://127.0.0.1:8086"},
            "services": {"data_dir": str(tmp_path / "svc"), "mosquitto_port": 1884, "influxdb_port": 8087},
        },
    )
    r = _cli(["config", "check", "-c", str(bad)])
    assert r.returncode == 2
    assert "services.mosquitto_port is 1884 but mqtt.port is 1883" in r.stderr
    assert "services.influxdb_port is 8087 but influxdb.url is http://127.0.0.1:8086" in r.stderr
    try:
        r = _cli(["services", "up", "-c", str(bad)])
        assert r.returncode == 2 and "services.mosquitto_port is 1884" in r.stderr
        assert not (tmp_path / "svc").exists()  # nothing was started
    finally:
        _cli(["services", "down", "-c", str(bad)])  # had it started anything, it stops here

    # An environment override of one side only is caught the same way.
    good = _yaml(tmp_path, {"mqtt": {"port": 1883}, "services": {"mosquitto_port": 1883}})
    assert _cli(["config", "check", "-c", str(good)]).returncode == 0
    r = _cli(["config", "check", "-c", str(good)], {"CAMPUSMON_MQTT__PORT": "1999"})
    assert r.returncode == 2 and "services.mosquitto_port is 1883 but mqtt.port is 1999" in r.stderr

    # Unset, the services ports follow the clients' settings; a remote broker is not compared.
    follow = _yaml(tmp_path, {"mqtt": {"port": 1999}, "influxdb": {"url": "http://localhost:9999"}})
    assert _cli(["config", "check", "-c", str(follow)]).returncode == 0
    r = _cli(["services", "status", "-c", str(follow)])
    assert "127.0.0.1:1999" in r.stdout and "127.0.0.1:9999" in r.stdout
    remote = _yaml(tmp_path, {"mqtt": {"host": "broker.campus.example", "port": 8883}})
    assert _cli(["config", "check", "-c", str(remote)]).returncode == 0


def publish_refused_anonymously(host: str, port: int) -> bool:
    import threading

    done, result = threading.Event(), []
    c = make_client("anon-probe")
    c.on_connect = lambda _c, _u, _f, rc, _p: (result.append(rc), done.set())
    c.connect(host, port)
    c.loop_start()
    try:
        return done.wait(10) and getattr(result[0], "is_failure", False)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.slow
def test_services_up_free_ports_starts_elsewhere_and_says_where(mosquitto, influxdb, tmp_path) -> None:
    data_dir = tmp_path / "svc"
    # The configured ports are taken (by the session's servers), as 1883 often is on a developer's machine.
    cfg = _yaml(
        tmp_path,
        {
            "mqtt": {"port": mosquitto.port},
            "influxdb": {"url": f"http://127.0.0.1:{influxdb.port}"},
            "services": {"data_dir": str(data_dir)},
        },
    )
    try:
        r = _cli(["services", "up", "-c", str(cfg)])
        assert r.returncode == 1 and "--free-ports" in r.stderr
        r = _cli(["services", "up", "--free-ports", "-c", str(cfg)])
        assert r.returncode == 0, r.stderr
        env = dict(ln.split("=", 1) for ln in (data_dir / "services.env").read_text().splitlines())
        mqtt_port = int(env["CAMPUSMON_MQTT__PORT"])
        influx_url = env["CAMPUSMON_INFLUXDB__URL"]
        assert mqtt_port != mosquitto.port and influx_url != f"http://127.0.0.1:{influxdb.port}"
        assert f"export CAMPUSMON_MQTT__PORT={mqtt_port}" in r.stdout
        # What it printed is where the servers answer, and the settings make a consistent config.
        assert httpx.get(f"{influx_url}/ping", timeout=5).status_code == 204
        # The broker is locked; the collector identity `up` made is in services.env.
        assert publish_refused_anonymously("127.0.0.1", mqtt_port)
        me = MqttAuth(env["CAMPUSMON_MQTT__USERNAME"], env["CAMPUSMON_MQTT__PASSWORD"])
        probe = f"campus/v1/collectors/{me.username}/probe"
        publish.single(probe, "here", qos=1, retain=True, hostname="127.0.0.1", port=mqtt_port,
                       client_id=CLIENT_ID_PREFIX + "probe", auth={"username": me.username, "password": me.password})  # fmt: skip
        assert wait_for_status("127.0.0.1", mqtt_port, probe, "here", 10, auth=me)
        assert _cli(["config", "check", "-c", str(cfg)], env).returncode == 0
        st = _cli(["services", "status", "-c", str(cfg)])
        assert st.returncode == 0 and f"127.0.0.1:{mqtt_port}" in st.stdout, st.stdout
    finally:
        down = _cli(["services", "down", "-c", str(cfg)])
    assert down.returncode == 0 and down.stdout.count("stopped pid") == 2, down.stdout
    assert not (data_dir / "services.env").exists()


@pytest.mark.slow
def test_demo_stops_calmly_when_its_process_group_is_interrupted(tmp_path) -> None:
    """Ctrl-C reaches every process of the terminal's group at once; children leaving then is expected.

    Started the way a script starts a background job (SIGINT ignored), which is where the demo used
    to miss its own Ctrl-C and report its collector's clean exit as a failure.
    """
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    env = {
        **_clean_env(),
        "PYTHONPATH": str(ROOT),
        "CAMPUSMON_MQTT__PORT": str(free_port()),
        "CAMPUSMON_INFLUXDB__URL": f"http://127.0.0.1:{free_port()}",
        "CAMPUSMON_API__PORT": str(free_port()),
    }
    out = tmp_path / "demo.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campusmon.cli", "demo", "-c", "deploy/campus.yaml", "--hours", "31"],
            cwd=tmp_path,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a process group of our own, like a terminal's job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        wait_until(
            lambda: "Press Ctrl-C to stop" in out.read_text(errors="replace") or proc.poll() is not None,
            400,
            0.5,
            "the demo to be up",
        )
        assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
        up = out.read_text(errors="replace")
        # The printed endpoints are each process's own page.
        coll = _samples(_scrape(re.search(r"collector (http://\S+/metrics)", up).group(1)))
        assert coll[("campusmon_readings_stored_total", (("via", "mqtt"),))] > 0
        gw = _samples(_scrape(re.search(r"gateway (http://\S+/metrics)", up).group(1)))
        assert ("campusmon_gateway_mqtt_connected", (("gateway", "gw-admin-hall"),)) in gw
        demo_dir = tmp_path / "var" / "demo"
        servers = [int((demo_dir / n / f"{n}.pid").read_text()) for n in ("mosquitto", "influxdb")]
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = out.read_text(errors="replace")
    tail = text[text.index("Press Ctrl-C to stop") :]
    assert "exited" not in tail, tail
    assert "SIGINT received: stopping the demo" in tail and tail.rstrip().endswith("stopped."), tail
    with pytest.raises(ProcessLookupError):  # every child of the demo is gone
        os.killpg(proc.pid, 0)
    for pid in servers:  # and so are the servers it started in sessions of their own
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
