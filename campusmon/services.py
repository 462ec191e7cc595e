"""Local Mosquitto, InfluxDB 1.x and VictoriaMetrics as child processes on loopback.

Used by ``campusmon services``, the demo, the tests and the benchmarks, so that every one of them
runs against real servers configured for no data loss, with data under a project-local folder.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from campusmon.mqtt import CLIENT_ID_PREFIX

MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INFLUXD_BIN = shutil.which("influxd") or "/usr/bin/influxd"
VM_BIN = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


class ServiceError(Exception):
    """A local server could not be started; the message says why and what to do."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Server:
    """One child server; ``pid_file`` lets ``campusmon services down`` stop exactly what ``up`` started."""

    name: str
    data_dir: Path
    port: int
    binary: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    user: str | None = None  # run the child as this user (PostgreSQL refuses to run as root)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def port_file(self) -> Path:
        """The port ``up`` started the server on, which may not be the configured one (``--free-ports``)."""
        return self.data_dir / f"{self.name}.port"

    def recorded_port(self) -> int | None:
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files; called before every start."""

    def start(self, timeout: float = 30.0, detach: bool = False) -> Server:
        if not Path(self.binary).exists():
            raise ServiceError(
                f"{self.name}: {self.binary} not found; install it with `make deps` (apt package)"
            )
        if self.running_pid() is not None:
            raise ServiceError(f"{self.name} already running (pid {self.running_pid()}, see {self.pid_file})")
        if not port_free(self.port):
            raise ServiceError(
                f"{self.name}: port 127.0.0.1:{self.port} is already in use; stop what holds it, "
                "choose another port, or let `campusmon services up --free-ports` pick one"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            user=self.user,
        )
        log.close()
        self.pid_file.write_text(str(self.proc.pid))
        self.port_file.write_text(str(self.port))
        try:
            wait_port(self.port, timeout, self.proc)
            self.ready(timeout)
            self.after_ready()
        except ServiceError as e:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-800:] if self.log_file.exists() else ""
            raise ServiceError(f"{self.name}: {e}\n--- {self.log_file} ---\n{tail}") from None
        return self

    def ready(self, timeout: float) -> None:
        """Wait until the server answers requests, not merely accepts connections."""

    def after_ready(self) -> None:
        """Set-up that needs the server answering (users, databases)."""

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if Path(self.binary).name.encode() in cmdline else None

    def _signal(self, sig: int, timeout: float) -> None:
        pid = self.proc.pid if self.proc is not None else self.running_pid()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        else:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.running_pid() is not None:
                time.sleep(0.05)
        self.proc = None
        self.pid_file.unlink(missing_ok=True)
        self.port_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: what a power cut looks like to the process."""
        self._signal(signal.SIGKILL, 10)


class Mosquitto(Server):
    """The project's broker: locked by default (passwords, per-device ACL, client ids bound to users).

    ``anonymous=True`` writes the open configuration the test suite's shared broker uses; it is a
    test convenience and never what ``services up`` or the demo start. Device credentials live in
    ``passwd`` and ``acl`` beside the config and are managed by :mod:`campusmon.devices`;
    :meth:`reload` (SIGHUP) makes the broker re-read both and cut off clients that lost access.
    With ``tls_port`` a TLS listener serves the certificates in ``certs_dir`` (``campusmon certs``);
    the plain listener is always on loopback only.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        anonymous: bool = False,
        tls_port: int | None = None,
        tls_host: str = "127.0.0.1",
        certs_dir: Path | None = None,
        require_certificate: bool = False,
        include_dir: Path | None = None,
    ) -> None:
        super().__init__("mosquitto", Path(data_dir).resolve(), port, MOSQUITTO_BIN)
        # Extra *.conf files read last, as Debian's /etc/mosquitto/conf.d: a campus bridge lives there.
        self.include_dir = Path(include_dir).resolve() if include_dir else None
        self.anonymous = anonymous
        self.tls_port = tls_port
        self.tls_host = tls_host
        self.certs_dir = Path(certs_dir).resolve() if certs_dir else None
        self.require_certificate = require_certificate

    @property
    def conf(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.data_dir / "acl"

    def _auth_lines(self) -> list[str]:
        if self.anonymous:
            return ["allow_anonymous true"]
        for f in (self.password_file, self.acl_file):
            if not f.exists():
                f.touch(mode=0o600)
        return [
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            # Only ids with the prefix, which no user name has: see campusmon.mqtt.CLIENT_ID_PREFIX.
            f"clientid_prefixes {CLIENT_ID_PREFIX}",
        ]

    def _listener_lines(self) -> list[str]:
        # A listener option: a client id is its user name, so nobody can connect as the collector's
        # client id and throw its persistent session (and every queued reading in it) away.
        return [] if self.anonymous else ["use_username_as_clientid true"]

    def _tls_lines(self) -> list[str]:
        if self.tls_port is None:
            return []
        d = self.certs_dir or self.data_dir / "certs"
        files = {"cafile": d / "ca.crt", "certfile": d / "broker.crt", "keyfile": d / "broker.key"}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise ServiceError(
                f"mosquitto: TLS listener needs {', '.join(missing)}; create them with `campusmon certs init`"
            )
        lines = [f"listener {self.tls_port} {self.tls_host}", *self._listener_lines(), "tls_version tlsv1.2"]
        lines += [f"{k} {v}" for k, v in files.items()]
        if self.require_certificate:
            # The certificate's CN is the user name, so the device ACL applies unchanged.
            lines += ["require_certificate true", "use_identity_as_username true"]
        return lines

    def prepare(self) -> None:
        # The persistence and queue settings are what make "no data loss" hold
        # (docs/references.md#mosquitto-persistence): the default 1000-message queue cap drops, the default 1800 s autosave loses on SIGKILL.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    *self._auth_lines(),
                    f"user {getpass.getuser()}",
                    "persistence true",
                    f"persistence_location {self.data_dir}/",
                    "autosave_interval 1",
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "max_inflight_messages 20",
                    "queue_qos0_messages false",
                    "persistent_client_expiration 30d",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    f"listener {self.port} 127.0.0.1",
                    *self._listener_lines(),
                    *self._tls_lines(),
                    *([f"include_dir {self.include_dir}"] if self.include_dir else []),
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]

    def start(self, timeout: float = 30.0, detach: bool = False) -> Server:
        super().start(timeout, detach)
        if self.tls_port is not None:
            try:
                wait_port(self.tls_port, timeout, self.proc)
            except ServiceError as e:
                self.stop()
                raise ServiceError(f"{self.name}: TLS listener: {e}") from None
        return self

    def reload(self) -> bool:
        """SIGHUP: re-read passwd and acl; clients whose password is gone are disconnected at once.

        False when no broker of ours is running (the files take effect at its next start).
        """
        pid = self.proc.pid if self.proc is not None and self.proc.poll() is None else self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGHUP)
        return True


class InfluxDB(Server):
    """InfluxDB 1.x; ``max_body_size`` bounds a write request, as a production server should be bounded.

    The collector's store splits its writes to stay under ``influxdb.max_body_bytes`` (default below
    this bound) and splits again on a 413, so a bounded server never stalls ingest.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        rpc_port: int | None = None,
        max_body_size: int = 25_000_000,
        *,
        auth: bool = False,
        databases: tuple[str, ...] = ("campus",),
        setup: tuple[str, ...] = (),
    ) -> None:
        super().__init__("influxdb", Path(data_dir).resolve(), port, INFLUXD_BIN)
        self.rpc_port = rpc_port or (free_port() if port != 8086 else 8088)
        self.max_body_size = max_body_size
        self.auth = auth
        self.databases = databases
        # Statements only the admin may run, after the databases exist (the rollups' retention
        # policies: ``campusmon.rollups.retention_statements``); with auth off, clients run them.
        self.setup = setup

    @property
    def users_file(self) -> Path:
        """``{"admin"|"writer"|"reader": [name, password]}``, 0600: made once, kept across restarts."""
        return self.data_dir / "influxdb-users.json"

    def users(self) -> dict[str, tuple[str, str]]:
        import json

        try:
            return {k: (v[0], v[1]) for k, v in json.loads(self.users_file.read_text()).items()}
        except FileNotFoundError:
            return {}

    @property
    def conf(self) -> Path:
        return self.data_dir / "influxdb.conf"

    def prepare(self) -> None:
        d = self.data_dir
        self.conf.write_text(
            f"""reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  pprof-enabled = false
  max-body-size = {self.max_body_size}
  auth-enabled = {"true" if self.auth else "false"}
[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.conf)]

    def ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServiceError("influxd did not answer /ping")

    def client_env(self) -> dict[str, str]:
        """Settings that give the collector and API the writer and the reader (the writer may not
        create databases, so set-up made them)."""
        users = self.users() if self.auth else {}
        if not users:
            return {}
        (wu, wp), (ru, rp) = users["writer"], users["reader"]
        return {
            "CAMPUSMON_INFLUXDB__USERNAME": wu,
            "CAMPUSMON_INFLUXDB__PASSWORD": wp,
            "CAMPUSMON_INFLUXDB__READ_USERNAME": ru,
            "CAMPUSMON_INFLUXDB__READ_PASSWORD": rp,
            "CAMPUSMON_INFLUXDB__CREATE_DATABASE": "false",
        }

    def after_ready(self) -> None:
        if self.auth:
            self._ensure_users()

    def _ensure_users(self) -> None:
        """An admin, a write-only user (collectors, HTTP ingest) and a read-only one (queries).

        InfluxDB 1.x lets the first admin be created without credentials; every later statement
        runs as that admin. The databases are created here, since the writer may not create them.
        """
        import json
        import secrets

        import httpx

        users = self.users()
        base = f"http://127.0.0.1:{self.port}/query"
        if not users:
            users = {r: (f"campusmon-{r}", secrets.token_urlsafe(18)) for r in ("admin", "writer", "reader")}
            name, pw = users["admin"]
            r = httpx.post(
                base, params={"q": f"CREATE USER \"{name}\" WITH PASSWORD '{pw}' WITH ALL PRIVILEGES"}
            )
            if r.status_code != 200 or "error" in r.text:
                raise ServiceError(f"influxdb: cannot create the admin user: {r.text[:200]}")
            fd = os.open(self.users_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({k: list(v) for k, v in users.items()}, fh)
        admin = httpx.BasicAuth(*users["admin"])
        stmts = [f'CREATE DATABASE "{db}"' for db in self.databases]
        stmts += self.setup
        for role, grant in (("writer", "WRITE"), ("reader", "READ")):
            name, pw = users[role]
            stmts.append(f"CREATE USER \"{name}\" WITH PASSWORD '{pw}'")
            stmts += [f'GRANT {grant} ON "{db}" TO "{name}"' for db in self.databases]
        for q in stmts:  # CREATE USER of an existing user with the same password is a no-op
            r = httpx.post(base, params={"q": q}, auth=admin)
            if r.status_code == 200 and "already exists" in r.text and q in self.setup:
                continue  # a policy an operator has since changed is theirs to keep
            if r.status_code != 200 or '"error"' in r.text:
                raise ServiceError(f"influxdb: {q.split(' WITH ')[0]}: {r.text[:200]}")


class VictoriaMetrics(Server):
    """A real server that implements the InfluxDB v2 write API; used to test the v2 back-end."""

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__("victoria-metrics", Path(data_dir).resolve(), port, VM_BIN)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}/data",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-influxListenAddr=",
            "-loggerLevel=ERROR",
        ]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PostgreSQL(Server):
    """A throw-away PostgreSQL cluster for tests of the relational store (targets, alerts, dead letters).

    As root it runs as the ``postgres`` user, so its data directory must not sit below a 0700 folder
    of root's: use ``tempfile.mkdtemp()`` rather than pytest's tmp_path.
    """

    def __init__(self, data_dir: Path, port: int) -> None:
        bindir = _pg_bin()
        super().__init__(
            "postgresql", Path(data_dir).resolve(), port, str(bindir / "postgres") if bindir else "postgres"
        )
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://campus@127.0.0.1:{self.port}/postgres"

    def prepare(self) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        if self.user:
            import shutil as _sh

            _sh.chown(self.data_dir, self.user, self.user)
        initdb = str(Path(self.binary).parent / "initdb")
        subprocess.run(
            [initdb, "-D", str(pgdata), "-U", "campus", "--auth=trust", "-E", "UTF8", "--no-instructions"],
            check=True,
            capture_output=True,
            user=self.user,
        )

    def command(self) -> list[str]:
        return [
            self.binary,
            "-D",
            str(self.data_dir / "pgdata"),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.data_dir),
            "-c",
            "fsync=on",
        ]

    def create_database(self, name: str) -> str:
        """A new, empty database in this cluster; returns its SQLAlchemy URL (tests and benches get one each)."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=campus dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://campus@127.0.0.1:{self.port}/{name}"

    def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError("postgres exited")
            try:
                import psycopg

                psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=campus dbname=postgres", connect_timeout=1
                ).close()
                return
            except Exception:  # starting up
                time.sleep(0.2)
        raise ServiceError("postgres did not accept connections")
