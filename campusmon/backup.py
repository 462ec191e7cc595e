"""Backup and restore with each engine's own tools: ``influxd backup/restore -portable`` for InfluxDB 1.x,
``pg_dump``/``pg_restore`` for PostgreSQL, SQLite's online backup API for SQLite.

A backup is a folder: ``manifest.json`` (what, when, schema revision), ``influxdb/`` (the portable
backup of the campus database, every retention policy: raw readings and hourly rollups),
``relational.sqlite`` or ``relational.dump``, and ``config/`` (the campus config given). Secrets
that live outside the config (the environment file, the CA key, broker password files) are listed in
docs/deployment.md; they are backed up with the host, not here.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from campusmon.config import CampusConfig
from campusmon.influx import QueryError, open_store

FORMAT = 1
Progress = Callable[[str], None]


class BackupError(RuntimeError):
    """A backup or restore step failed; the message says which and what the tool printed."""


def _tool(name: str) -> str:
    if name in ("pg_dump", "pg_restore", "psql"):
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
        if found:
            return str(found[-1])
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise BackupError(f"{name} not found: install its Debian package (influxdb, postgresql-client)")
    return path


def _run(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")


def _pg_args(url: str) -> tuple[list[str], dict[str, str]]:
    u = make_url(url)
    import os

    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    args = ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return args + ["-d", u.database or "postgres"], env


def _influx_check(cfg: CampusConfig, what: str) -> None:
    """Fail fast: ``influxd backup`` retries an unreachable RPC address for about four minutes."""
    if cfg.influxdb.backend != "v1":
        raise BackupError(
            "campusmon backup covers InfluxDB 1.x; for the v2 back-end use the server's own tool "
            "(influx backup, or vmbackup for VictoriaMetrics): docs/deployment.md"
        )
    host, _, port = cfg.influxdb.rpc_address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise BackupError(
            f"{what} failed: nothing answers on influxdb.rpc_address {cfg.influxdb.rpc_address} ({e}); "
            "InfluxDB's RPC service is its bind-address setting (default 127.0.0.1:8088)"
        ) from None


def _measurements(cfg: CampusConfig) -> list[str]:

    store = open_store(cfg)
    try:
        series = store.query(f'SHOW MEASUREMENTS ON "{cfg.influxdb.database}"')
    finally:
        store.close()
    return sorted(v[0] for s in series for v in s.get("values") or [])


def _await_measurements(cfg: CampusConfig, expected: list[str], timeout_s: float = 60.0) -> None:
    """``influxd restore`` returns before the server has opened every shard it imported; the roles
    must not start against a half-visible database, so wait until the backup's measurements answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            missing = sorted(set(expected) - set(_measurements(cfg)))
        except QueryError as e:  # the database itself is not there yet
            missing = [str(e)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"influxd restore: measurements {missing} not visible after {timeout_s:.0f} s")
        time.sleep(0.2)


def backup(
    cfg: CampusConfig, out: Path, config_file: Path | None = None, progress: Progress = print
) -> dict[str, Any]:
    """Write a complete backup folder; refuses to write into a non-empty one."""
    _influx_check(cfg, "influxd backup")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    db = cfg.influxdb.database
    progress(f"[1/3] InfluxDB: database {db} from {cfg.influxdb.rpc_address} (influxd backup -portable)")
    _run(
        [
            _tool("influxd"),
            "backup",
            "-portable",
            "-host",
            cfg.influxdb.rpc_address,
            "-db",
            db,
            str(out / "influxdb"),
        ],
        "influxd backup",
    )
    measurements = _measurements(cfg)
    url = cfg.database.url
    from campusmon.db import make_engine
    from campusmon.migrate import current

    revision = current(make_engine(url))
    kind = make_url(url).get_backend_name()
    progress(f"[2/3] relational store ({kind}, schema {revision})")
    if kind == "sqlite":
        src = sqlite3.connect(make_url(url).database or "")
        dst = sqlite3.connect(out / "relational.sqlite")
        with dst:
            src.backup(dst)  # consistent while the roles keep writing
        src.close()
        dst.close()
        rel = "relational.sqlite"
    elif kind == "postgresql":
        args, env = _pg_args(url)
        _run([_tool("pg_dump"), "-Fc", "-f", str(out / "relational.dump"), *args], "pg_dump", env)
        rel = "relational.dump"
    else:
        raise BackupError(f"no backup for a {kind} database")
    progress("[3/3] configuration")
    (out / "config").mkdir()
    if config_file is not None and Path(config_file).exists():
        shutil.copy2(config_file, out / "config" / Path(config_file).name)
    manifest = {
        "format": FORMAT,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "influxdb": {"database": db, "folder": "influxdb", "measurements": measurements},
        "relational": {"kind": kind, "file": rel, "schema_revision": revision},
        "config": sorted(p.name for p in (out / "config").iterdir()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress(f"backup written to {out} in {time.monotonic() - t0:.1f} s")
    return manifest


def restore(cfg: CampusConfig, src: Path, progress: Progress = print) -> dict[str, Any]:
    """Replace the campus database and the relational store with a backup's.

    InfluxDB restores only into a database that does not exist, so the current one is dropped first;
    stop the collectors, the API and the workers before restoring.
    """
    _influx_check(cfg, "influxd restore")
    src = Path(src)
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{src} is not a campusmon backup (manifest.json: {e})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')} is not {FORMAT}")
    db = cfg.influxdb.database
    progress(f"[1/2] InfluxDB: dropping {db}, restoring {manifest['influxdb']['database']} into it")
    store = open_store(cfg)
    try:
        store.query(f'DROP DATABASE "{db}"')
    finally:
        store.close()
    _run(
        [
            _tool("influxd"),
            "restore",
            "-portable",
            "-host",
            cfg.influxdb.rpc_address,
            "-db",
            manifest["influxdb"]["database"],
            "-newdb",
            db,
            str(src / manifest["influxdb"]["folder"]),
        ],
        "influxd restore",
    )
    _await_measurements(cfg, manifest["influxdb"].get("measurements", []))
    rel = manifest["relational"]
    kind = make_url(cfg.database.url).get_backend_name()
    if kind != rel["kind"]:
        raise BackupError(f"the backup holds a {rel['kind']} store; this config uses {kind}")
    progress(f"[2/2] relational store ({kind})")
    if kind == "sqlite":
        # The backup API writes through SQLite's own pager, so a WAL file and any idle connection
        # of a stopped service stay consistent; deleting the WAL beside an open file corrupts it.
        target = Path(make_url(cfg.database.url).database or "")
        back = sqlite3.connect(src / rel["file"])
        dst = sqlite3.connect(target)
        with dst:
            back.backup(dst)
        back.close()
        dst.close()
    else:
        args, env = _pg_args(cfg.database.url)
        _run(
            [
                _tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                *args,
                str(src / rel["file"]),
            ],
            "pg_restore",
            env,
        )
    from campusmon.db import init_db

    init_db(cfg.database.url)  # a backup of an older version is upgraded to this one's schema
    progress("restored")
    return manifest
