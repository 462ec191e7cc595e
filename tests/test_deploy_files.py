"""The deployment files: systemd units checked by systemd itself, the compose file by the Compose spec.

Nothing here starts a service: systemd is not PID 1 on these machines and there is no container
engine. What can be checked is checked with the real tools (``systemd-analyze verify`` and
``security``) and the real schema (the Compose Specification as shipped in a PyPI package), plus
what neither can see: that every unit and service names commands, options, config keys and files
that exist in this project.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from campusmon.cli import app
from campusmon.config import load_config
from campusmon.services import InfluxDB, Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
INSTALLED_BIN = "/opt/campusmon/.venv/bin/campusmon"
ROLES = ("collector", "api", "worker", "gateway")
# One instance of each template, as an operator would enable it.
INSTANCES = {"collector": "1", "api": "8000", "worker": "1", "gateway": "gw-dorm-1"}

# The Compose Specification's JSON schema comes from a registry package, not from a copy in the
# repository: docker-compose 1.29.2's wheel ships it as compose/config/compose_spec.json. The
# package itself cannot be installed beside this project (it pins PyYAML<6 and jsonschema<4), so
# the wheel is only downloaded (`make venv` puts it in SCHEMA_DIR) and read with zipfile.
SCHEMA_WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
SCHEMA_WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
SCHEMA_DIR = Path(sys.prefix) / "share" / "campusmon-test"


# -- systemd --------------------------------------------------------------------------------------


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows a key more than once, so no dict."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def one(entries: list[tuple[str, str, str]], section: str, key: str) -> str:
    found = values(entries, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected once, found {found}"
    return found[0]


def campusmon_bin() -> Path:
    """The console script of the environment running the tests: a real ExecStart for verify."""
    exe = Path(sys.executable).parent / "campusmon"
    assert exe.is_file(), f"{exe} missing: install the project (make venv)"
    return exe


def render_units(dest: Path) -> list[Path]:
    """The units with ExecStart pointed at a binary that exists here, plus one instance per template."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(UNITS.iterdir()):
        text = src.read_text().replace(INSTALLED_BIN, str(campusmon_bin()))
        names = [src.name]
        if src.name.endswith("@.service"):
            role = src.name.removeprefix("campusmon-").removesuffix("@.service")
            names.append(src.name.replace("@.", f"@{INSTANCES[role]}."))
        for name in names:
            (dest / name).write_text(text)
            out.append(dest / name)
    return out


def verify(paths: list[Path]) -> tuple[int, str]:
    """``systemd-analyze verify``: its exit code and everything it printed (warnings exit 0)."""
    p = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    return p.returncode, (p.stdout + p.stderr).strip()


def test_every_role_has_a_template_unit_under_one_target() -> None:
    names = {p.name for p in UNITS.iterdir()}
    assert {f"campusmon-{r}@.service" for r in ROLES} | {"campusmon.target"} <= names
    for role in ROLES:
        u = parse_unit(UNITS / f"campusmon-{role}@.service")
        assert one(u, "Unit", "PartOf") == "campusmon.target"
        assert "campusmon.target" in one(u, "Install", "WantedBy").split()
        exec_start = shlex.split(one(u, "Service", "ExecStart"))
        assert exec_start[:2] == [INSTALLED_BIN, role]
    target = parse_unit(UNITS / "campusmon.target")
    assert one(target, "Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify_accepts_every_unit_without_a_word(tmp_path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (Debian package systemd, make deps)"
    rendered = render_units(tmp_path)
    assert len(rendered) == len(list(UNITS.iterdir())) + len(ROLES)
    rc, out = verify(rendered)
    assert rc == 0 and out == "", out


def test_verify_reports_a_broken_unit(tmp_path) -> None:
    """The check above can fail: a misspelt key is a warning (exit 0), a bad value too."""
    rendered = render_units(tmp_path)
    api = tmp_path / "campusmon-api@8000.service"
    api.write_text(api.read_text().replace("NoNewPrivileges=true", "NoNewPrivilege=true"))
    _rc, out = verify(rendered)
    assert "Unknown key" in out and "NoNewPrivilege" in out
    api.write_text(api.read_text().replace("NoNewPrivilege=true", "ProtectSystem=stricter"))
    _rc, out = verify([api, tmp_path / "campusmon.target"])
    assert "stricter" in out and api.name in out


def test_units_are_hardened_alike() -> None:
    services = sorted(UNITS.glob("*.service"))
    assert len(services) == len(ROLES) + 1  # the templates and the single-gateway unit
    for path in services:
        u = parse_unit(path)
        where = path.name
        assert one(u, "Service", "User") == "campusmon", where
        assert one(u, "Service", "ProtectSystem") == "strict", where
        state = one(u, "Service", "StateDirectory")
        assert values(u, "Service", "ReadWritePaths") == [f"/var/lib/{state}"], where
        assert one(u, "Service", "WorkingDirectory") == f"/var/lib/{state}", where
        for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables"):
            assert one(u, "Service", key) == "true", (where, key)
        assert one(u, "Service", "CapabilityBoundingSet") == "", where
        assert one(u, "Service", "AmbientCapabilities") == "", where
        assert set(one(u, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
        assert one(u, "Service", "Restart") == "on-failure", where
        assert one(u, "Service", "RestartPreventExitStatus") == "2", where
        assert int(one(u, "Unit", "StartLimitBurst")) >= 3, where
        assert int(one(u, "Unit", "StartLimitIntervalSec")) > 0, where
        env_files = values(u, "Service", "EnvironmentFile")
        if "gateway" in path.name:  # a building gateway's host holds only its own secret
            assert len(env_files) == 1 and env_files[0].startswith("-/etc/campusmon/gateway"), where
            assert "dialout" in one(u, "Service", "SupplementaryGroups")
        else:
            assert env_files[0] == "/etc/campusmon/campusmon.env", where
            assert one(u, "Service", "PrivateDevices") == "true", where


def test_no_unit_claims_a_watchdog_the_code_does_not_feed() -> None:
    """WatchdogSec= and Type=notify need sd_notify(); the roles do not call it, so neither is set."""
    sources = [p for d in ("campusmon", "collectors", "api", "gateway") for p in (ROOT / d).rglob("*.py")]
    notifies = any("NOTIFY_SOCKET" in p.read_text(encoding="utf-8") for p in sources)
    for path in UNITS.glob("*.service"):
        u = parse_unit(path)
        if not notifies:
            assert values(u, "Service", "WatchdogSec") == [], path.name
            assert one(u, "Service", "Type") in ("exec", "simple"), path.name


def test_exposure_level_of_every_instance_is_low(tmp_path) -> None:
    """`systemd-analyze security` scores what a compromised process could do: 0 best, 10 worst."""
    render_units(tmp_path)
    instances = [f"campusmon-{r}@{i}.service" for r, i in INSTANCES.items()] + ["campusmon-gateway.service"]
    for name in instances:
        p = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
        assert m, p.stdout + p.stderr
        assert float(m.group(1)) <= 2.0, p.stdout


def _unit_command(path: Path, instance: str) -> tuple[list[str], dict[str, str]]:
    u = parse_unit(path)
    argv = shlex.split(one(u, "Service", "ExecStart").replace("%i", instance))[1:]
    env = {}
    for line in values(u, "Service", "Environment"):
        for pair in shlex.split(line.replace("%i", instance)):
            k, _, v = pair.partition("=")
            env[k] = v
    return argv, env


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_unit_commands_and_settings_are_the_projects_own(tmp_path) -> None:
    """Every ExecStart parses as a campusmon command; every variable is a real config key."""
    runner = CliRunner()
    shared = read_env_file(DEPLOY / "env" / "campusmon.env.example")
    assert shared and all(k.startswith("CAMPUSMON_") for k in shared)
    secrets = [k for k in shared if k.endswith(("PASSWORD", "TOKEN"))]
    assert secrets and all("CHANGE_ME" in shared[k] for k in secrets)
    for role, instance in INSTANCES.items():
        argv, env = _unit_command(UNITS / f"campusmon-{role}@.service", instance)
        res = runner.invoke(app, [*argv, "--help"])
        assert res.exit_code == 0, (role, argv, res.output)
        if role == "gateway":
            continue
        # The unit's settings over the shared file load with the example config: names are right.
        cfg = load_config(DEPLOY / "campus.yaml", environ={**env, **shared})
        assert cfg.database.url.startswith("postgresql+psycopg://")
        if role == "collector":
            assert cfg.mqtt.client_id == cfg.mqtt.username == "collector-1"
            assert cfg.mqtt.share_group == "collectors"
        else:
            assert cfg.mqtt.api_username == f"{role}-{instance}"


# -- compose --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """compose_spec.json out of the docker-compose wheel (downloaded by pip if `make venv` did not)."""
    wheel = SCHEMA_DIR / SCHEMA_WHEEL
    if not wheel.exists():
        SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            + ["-d", str(SCHEMA_DIR), "docker-compose==1.29.2"],
            check=True,
            timeout=300,
        )
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == SCHEMA_WHEEL_SHA256
    with zipfile.ZipFile(wheel) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the `<<: *anchor` merges


def validate(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    v = jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(compose_schema) -> None:
    assert compose_schema["title"] == "Compose Specification"
    assert validate(load_compose(), compose_schema) == []


def test_the_schema_check_rejects_what_compose_would_reject(compose_schema) -> None:
    doc = load_compose()
    doc["services"]["api-1"]["restart_policy"] = "always"  # not a service key
    doc["services"]["api-2"]["depends_on"] = {"postgres": {"condition": "when_ready"}}
    errors = validate(doc, compose_schema)
    assert any("restart_policy" in e for e in errors), errors
    assert any("when_ready" in e or "depends_on" in e for e in errors), errors


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:?msg}`` and ``${VAR:-default}``, enough for this file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in env:
            return env[name]
        assert op == ":-", f"${{{name}}} is not in deploy/env/compose.env.example"
        return arg

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[?-])([^}]*))?\}", sub, value.replace("$$", "\0")).replace("\0", "$")


def referenced_variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))


def test_compose_services_are_pinned_healthchecked_and_ordered() -> None:
    doc = load_compose()
    services = doc["services"]
    assert {"mosquitto", "influxdb", "postgres", "grafana"} <= set(services)
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} not pinned"
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in ("CMD", "CMD-SHELL") and hc.get("interval"), f"{name}: no healthcheck"
        if hc["test"][:2] == ["CMD", "python"]:
            ast.parse(hc["test"][hc["test"].index("-c") + 1])  # the one-liners are Python
        assert svc.get("restart") == "unless-stopped", name
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert how["condition"] in ("service_healthy", "service_started"), (name, dep)
            if dep in ("mosquitto", "influxdb", "postgres"):
                assert how["condition"] == "service_healthy", (name, dep)
    assert services["influxdb"]["image"].startswith("influxdb:1.8.")
    assert services["grafana"]["depends_on"]["influxdb"]["condition"] == "service_healthy"


def test_compose_runs_two_collectors_two_apis_and_a_worker_with_their_own_identities() -> None:
    env = read_env_file(DEPLOY / "env" / "compose.env.example")
    services = interpolate(load_compose()["services"], env)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for svc in services.values():
        if svc["image"].startswith("campusmon:"):
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (DEPLOY / svc["build"]["context"]).resolve() == ROOT
            by_role.setdefault(svc["command"][0], []).append(svc)
    assert {k: len(v) for k, v in by_role.items()} == {"collector": 2, "api": 2, "worker": 1}
    identities = []
    for role, svcs in by_role.items():
        for svc in svcs:
            e = svc["environment"]
            res = CliRunner().invoke(app, [*svc["command"], "--help"])
            assert res.exit_code == 0, (svc["command"], res.output)
            cfg = load_config(DEPLOY / "campus.yaml", environ={k: str(v) for k, v in e.items()})
            assert cfg.database.url.startswith("postgresql+psycopg://campusmon:")
            assert cfg.influxdb.url == "http://influxdb:8086" and not cfg.influxdb.create_database
            if role == "collector":
                assert cfg.mqtt.share_group == "collectors" and cfg.mqtt.client_id == cfg.mqtt.username
                identities.append(cfg.mqtt.username)
            else:
                identities.append(cfg.mqtt.api_username)
            if role == "api":
                assert cfg.api.run_jobs is False  # the worker runs the jobs on PostgreSQL
    assert len(identities) == len(set(identities)) == 5, identities


def test_compose_secrets_come_from_the_environment_only() -> None:
    text = COMPOSE.read_text()
    example = read_env_file(DEPLOY / "env" / "compose.env.example")
    assert referenced_variables(text) == set(example)
    assert all(v == "CHANGE_ME" for v in example.values())
    for name, svc in load_compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}: {key} is not from env"


def test_compose_volumes_and_mounted_files_exist() -> None:
    doc = load_compose()
    used = set()
    made_by_operator = {"./broker", "./secrets/api_metrics_token"}  # passwd/acl and a token, per site
    for name, svc in doc["services"].items():
        for spec in svc.get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith("."):
                assert source in made_by_operator or (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                used.add(source)
            assert target.startswith("/"), (name, spec)
    assert used == set(doc["volumes"]), "every named volume declared, every declared one used"
    for secret in doc["secrets"].values():
        assert secret["file"] in made_by_operator


def test_compose_broker_is_configured_like_the_projects_own(tmp_path) -> None:
    """The settings that make "no reading lost" and the lock hold are those of `services up`."""
    keys = {
        "allow_anonymous",
        "clientid_prefixes",
        "persistence",
        "autosave_interval",
        "max_queued_messages",
        "max_queued_bytes",
        "max_inflight_messages",
        "queue_qos0_messages",
        "persistent_client_expiration",
        "use_username_as_clientid",
    }

    def settings(text: str) -> dict[str, str]:
        pairs = (line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#"))
        return {k: v for k, v in pairs if k in keys}

    srv = Mosquitto(tmp_path, 1883)
    srv.prepare()
    ours = settings((DEPLOY / "compose" / "mosquitto.conf").read_text())
    assert ours == settings(srv.conf.read_text())
    assert set(ours) == keys


def test_compose_grafana_and_prometheus_point_at_the_services() -> None:
    doc = load_compose()
    services = doc["services"]
    grafana = services["grafana"]["volumes"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/campusmon.yaml").read_text())
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/campusmon.yaml").read_text())
    for ds in sources["datasources"]:
        host = re.match(r"https?://([^:/]+)", ds["url"]).group(1)
        assert host in services, f"data source {ds['name']} points at {host}, not a service"
        for var in referenced_variables(yaml.safe_dump(ds)):
            assert var in services["grafana"]["environment"], var
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for t in targets:
        host, port = t.split(":")
        env = services[host]["environment"]
        assert port == (env.get("CAMPUSMON_COLLECTOR__METRICS_PORT") or services[host]["command"][-1]), t


# -- the compose health checks, run here against real processes --------------------------------------


def healthcheck(service: str, replace: dict[str, str]) -> list[str]:
    """A service's health check as a local command: container ports and hosts swapped for ours."""
    test = load_compose()["services"][service]["healthcheck"]["test"]
    kind, args = test[0], [a.replace("$$", "$") for a in test[1:]]
    for old, new in replace.items():
        args = [a.replace(old, new) for a in args]
    if kind == "CMD-SHELL":
        return ["sh", "-c", *args]
    return [sys.executable, *args[1:]] if args[0] == "python" else args


def healthy(argv: list[str], env: dict[str, str]) -> bool:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
    return subprocess.run(argv, env={**base, **env}, capture_output=True, timeout=60).returncode == 0


def eventually(pred: Any, timeout: float = 90.0) -> bool:
    """A health check is polled, as the container engine does; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.5)
    return False


@contextmanager
def role(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
    proc = subprocess.Popen(
        [str(campusmon_bin()), *argv], env={**base, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def write_config(tmp_path: Path, **sections: Any) -> Path:
    from tests.conftest import SMALL_CAMPUS

    path = tmp_path / "campus.yaml"
    path.write_text(yaml.safe_dump({**SMALL_CAMPUS, **sections}))
    return path


def test_broker_health_check_logs_in_as_the_monitor_identity(tmp_path) -> None:
    """The locked broker of the project, the identity made as docs/deployment.md says."""
    assert shutil.which("mosquitto_sub"), (
        "mosquitto_sub missing: Debian package mosquitto-clients (make deps)"
    )
    broker = Mosquitto(tmp_path / "mq", free_port())  # locked: passwords, ACL, client-id prefix
    res = CliRunner().invoke(
        app,
        ["devices", "add", "healthcheck", "--kind", "monitor", "--broker-dir", str(broker.data_dir)]
        + ["-c", str(DEPLOY / "campus.yaml")],
    )
    assert res.exit_code == 0, res.output
    password = re.search(r"password: (\S+)", res.output).group(1)
    broker.start()
    try:
        argv = healthcheck("mosquitto", {"-p 1883": f"-p {broker.port}"})
        assert healthy(argv, {"MQTT_HEALTHCHECK_PASSWORD": password})
        assert not healthy(argv, {"MQTT_HEALTHCHECK_PASSWORD": password + "x"})
    finally:
        broker.stop()
    assert not healthy(argv, {"MQTT_HEALTHCHECK_PASSWORD": password})


def test_collector_health_check_follows_its_subscription(tmp_path, influxdb, db_name) -> None:
    broker = Mosquitto(tmp_path / "mq", free_port(), anonymous=True).start()
    metrics = free_port()
    cfg = write_config(
        tmp_path,
        mqtt={"port": broker.port, "client_id": "collector-1", "flush_interval_s": 0.2},
        influxdb={"url": f"http://127.0.0.1:{influxdb.port}", "database": db_name},
        database={"url": f"sqlite:///{tmp_path}/campus.sqlite"},
        collector={"metrics_host": "127.0.0.1", "metrics_port": metrics},
    )
    argv = healthcheck("collector-1", {"127.0.0.1:9101": f"127.0.0.1:{metrics}"})
    env = {"CAMPUSMON_MQTT__CLIENT_ID": "collector-1"}
    try:
        with role(["collector", "-c", str(cfg)], {}) as proc:
            assert eventually(lambda: healthy(argv, env)), proc.stderr
            assert not healthy(argv, {"CAMPUSMON_MQTT__CLIENT_ID": "collector-2"})  # it reads its own line
            broker.stop()  # the broker goes: no longer subscribed, no longer healthy
            assert eventually(lambda: not healthy(argv, env))
    finally:
        broker.stop()


def test_api_health_check_is_its_readiness(tmp_path, mosquitto, db_name) -> None:
    influx = InfluxDB(tmp_path / "ix", free_port()).start()
    port = free_port()
    cfg = write_config(
        tmp_path,
        mqtt={"port": mosquitto.port},
        influxdb={"url": f"http://127.0.0.1:{influx.port}", "database": db_name},
        database={"url": f"sqlite:///{tmp_path}/campus.sqlite"},
        api={"run_jobs": False},
    )
    argv = healthcheck("api-1", {"127.0.0.1:8000": f"127.0.0.1:{port}"})
    try:
        with role(["api", "-c", str(cfg), "--host", "127.0.0.1", "--port", str(port)], {}):
            assert eventually(lambda: healthy(argv, {}))
            influx.stop()  # /readyz answers 503 without InfluxDB
            assert eventually(lambda: not healthy(argv, {}))
    finally:
        influx.stop()


def test_worker_health_check_follows_its_lease(tmp_path, postgresql, influxdb, db_name) -> None:
    url = postgresql.create_database(db_name)
    cfg = write_config(
        tmp_path,
        influxdb={"url": f"http://127.0.0.1:{influxdb.port}", "database": db_name},
        database={"url": url},
        worker={"lease_ttl_s": 3},
    )
    argv = healthcheck("worker-1", {})
    env = {"CAMPUSMON_DATABASE__URL": url}
    with role(["worker", "-c", str(cfg), "--id", "worker-1"], {}) as proc:
        assert eventually(lambda: healthy(argv, env)), proc.stderr
        proc.kill()  # a dead worker stops renewing: unhealthy once its lease lapses
        proc.wait(10)
        assert eventually(lambda: not healthy(argv, env), timeout=30)
    with role(["worker", "-c", str(cfg), "--id", "worker-2"], {}) as proc:
        assert eventually(
            lambda: healthy(healthcheck("worker-1", {"member:worker-1#": "member:worker-2#"}), env)
        )
        assert not healthy(argv, env)  # worker-1's check is about worker-1 only
