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
                f"{self.name}: port 127.0.0.1:{self.port} is already in use; choose another with "
                f"CAMPUSMON_SERVICES__{self.name.upper().replace('-', '')}_PORT or stop what holds it"
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
        try:
            wait_port(self.port, timeout, self.proc)
            self.ready(timeout)
        except ServiceError as e:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-800:] if self.log_file.exists() else ""
            raise ServiceError(f"{self.name}: {e}\n--- {self.log_file} ---\n{tail}") from None
        return self

    def ready(self, timeout: float) -> None:
        """Wait until the server answers requests, not merely accepts connections."""

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

    def stop(self, timeout: float = 20.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: what a power cut looks like to the process."""
        self._signal(signal.SIGKILL, 10)


class Mosquitto(Server):
    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__("mosquitto", Path(data_dir).resolve(), port, MOSQUITTO_BIN)

    @property
    def conf(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    def prepare(self) -> None:
        # The persistence and queue settings are what make "no data loss" hold (libcheck §1c):
        # the default 1000-message queue cap drops, the default 1800 s autosave loses on SIGKILL.
        self.conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
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
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]


class InfluxDB(Server):
    def __init__(self, data_dir: Path, port: int, rpc_port: int | None = None) -> None:
        super().__init__("influxdb", Path(data_dir).resolve(), port, INFLUXD_BIN)
        self.rpc_port = rpc_port or (free_port() if port != 8086 else 8088)

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
  max-body-size = 0
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
