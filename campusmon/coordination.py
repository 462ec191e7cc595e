"""Who runs which scheduled job: leases in PostgreSQL, one lock file on SQLite.

Scheduled work is cut into units (``alerts.window``, ``deliver:<channel>``, ``rollups:<k>/<n>``).
On PostgreSQL every worker process registers a membership lease and holds ``ceil(units / live
members)`` unit leases, claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and renewed every
``worker.renew_s``; a unit whose holder stops renewing is free once its lease expires, so a killed
worker's share is taken over within ``lease_ttl_s + renew_s``. Times are the database's clock.

SQLite has no shared state to coordinate through: one process (a worker, or the API with
``api.run_jobs``) takes an exclusive lock file beside the database and runs every unit; a second
one is refused with :class:`SharedStateRefused`. The kernel drops the lock when its holder dies.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from campusmon.config import CampusConfig
from campusmon.db import WorkerLease

log = logging.getLogger(__name__)

MEMBER = "member:"
WINDOW_UNIT = "alerts.window"
DELIVER_UNIT = "deliver:"
OTHER_CHANNELS = DELIVER_UNIT + "*"  # deliveries to channels no longer configured (they fail visibly)
ROLLUP_UNIT = "rollups:"


class SharedStateRefused(RuntimeError):
    """A configuration that needs shared state (a second job runner) on a store that has none."""


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def jobs_in_api(cfg: CampusConfig) -> bool:
    """``api.run_jobs``: auto runs them in the API on SQLite (single node), leaves them to workers otherwise."""
    rj = cfg.api.run_jobs
    return is_sqlite(cfg.database.url) if rj == "auto" else bool(rj)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def rollup_units(shards: int) -> list[str]:
    return [f"{ROLLUP_UNIT}{k}/{shards}" for k in range(shards)]


def shard_of(unit: str) -> tuple[int, int]:
    k, n = unit.removeprefix(ROLLUP_UNIT).split("/")
    return int(k), int(n)


def job_lock_path(url: str) -> Path | None:
    """``<database file>.jobs.lock``; None for an in-memory database (nothing else can see it)."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path.startswith(":memory:"):
        return None
    return Path(path.split("?", 1)[0] + ".jobs.lock")


class JobLock:
    """The one job runner of a SQLite store: an exclusive ``flock`` held for the process's life."""

    def __init__(self, path: Path, who: str) -> None:
        self.path = path
        self.who = who
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # held open while locked
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise SharedStateRefused(
                f"the scheduled jobs of this SQLite store already run in {holder} (lock {self.path}). "
                "SQLite is the single-node store: one process runs the jobs. For several workers, put "
                "database.url on PostgreSQL; to run them in a worker rather than the API, set "
                "api.run_jobs: false (docs/deployment.md)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{self.who} (pid {os.getpid()}, since {datetime.now(UTC).isoformat(timespec='seconds')})\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None


class Coordinator:
    """The units of scheduled work this process holds now; ``tick()`` renews and rebalances them.

    ``on_change(acquired, lost)`` is called after a tick that changed the holding, so a job can
    reload what another process may have changed while it did not hold the unit.
    """

    def __init__(
        self,
        cfg: CampusConfig,
        engine: Engine,
        sessions: sessionmaker,
        units: Iterable[str],
        role: str = "worker",
        worker_id: str | None = None,
        on_change: Callable[[set[str], set[str]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.sessions = sessions
        self.units = sorted(set(units))
        self.role = role
        self.name = worker_id or cfg.worker.id or default_worker_id()
        # Unique per process even when two are given the same id, so two can never share a lease.
        self.holder = f"{self.name}#{secrets.token_hex(3)}"
        self.ttl = cfg.worker.lease_ttl_s
        self.renew_s = cfg.worker.renew_s or self.ttl / 3
        self.margin = min(1.0, self.ttl / 10)
        self.on_change = on_change
        self.backend = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"
        self._held: dict[str, tuple[int, float]] = {}  # unit -> (epoch, valid until, monotonic)
        self._lock = threading.Lock()
        self._file_lock: JobLock | None = None
        self.takeovers = 0

    # -- queries -----------------------------------------------------------------------------------

    def holds(self, unit: str) -> bool:
        """Held, and the lease still valid by this process's own reckoning (with a safety margin)."""
        with self._lock:
            h = self._held.get(unit)
            return h is not None and time.monotonic() < h[1]

    def held(self) -> set[str]:
        with self._lock:
            now = time.monotonic()
            return {u for u, (_e, until) in self._held.items() if now < until}

    def epoch(self, unit: str) -> int | None:
        with self._lock:
            h = self._held.get(unit)
            return h[0] if h else None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Coordinator:
        """Take the SQLite lock (or raise :class:`SharedStateRefused`), or join the PostgreSQL leases."""
        if self.backend == "sqlite":
            path = job_lock_path(str(self.engine.url))
            if path is not None:
                self._file_lock = JobLock(path, f"{self.role} {self.name}")
                self._file_lock.acquire()
            with self._lock:
                self._held = {u: (1, math.inf) for u in self.units}
            if self.on_change:
                self.on_change(set(self.units), set())
            return self
        self.tick()
        return self

    def tick(self) -> None:
        """Renew what is held, then give up or claim units until this process holds its fair share."""
        if self.backend == "sqlite":
            return
        before = set(self._held)
        t0 = time.monotonic()
        with self.sessions() as s, s.begin():
            now = self._now(s)
            self._heartbeat(s, now)
            s.execute(
                delete(WorkerLease).where(
                    WorkerLease.name.like(MEMBER + "%"), WorkerLease.expires_at < now - 10 * self.ttl
                )
            )
            members = sorted(
                s.scalars(
                    select(WorkerLease.name).where(
                        WorkerLease.name.like(MEMBER + "%"), WorkerLease.expires_at > now
                    )
                )
            )
        self._renew(t0)
        me = MEMBER + self.holder
        if me not in members:
            members = sorted([*members, me])
        rank, n = members.index(me), len(members)
        # Units are dealt out in turn (unit i to member i mod n): every member gets its fair share,
        # the same view gives the same deal everywhere, and a joiner takes over whole units.
        preferred = {u for i, u in enumerate(self.units) if i % n == rank}
        for unit in sorted(self._held):
            if unit not in preferred:  # a worker joined: hand its units over
                self.release(unit, handover=True)
        for unit in self.units:
            if unit in self._held:
                continue
            # Someone else's unit only when nobody has held it for a whole TTL (its member is gone,
            # or runs with a different set of units).
            self._claim(unit, stale_only=unit not in preferred)
        after = set(self._held)
        if after != before:
            log.info("%s %s holds %s", self.role, self.name, ", ".join(sorted(after)) or "nothing")
            if self.on_change:
                self.on_change(after - before, before - after)

    def release(self, unit: str, handover: bool = False) -> None:
        """Give a unit up; at a hand-over it stays reserved for its new owner for one TTL."""
        with self._lock:
            self._held.pop(unit, None)
        if self.backend == "sqlite":
            return
        with self.sessions() as s, s.begin():
            until = self._now(s) if handover else 0.0
            s.execute(
                update(WorkerLease)
                .where(WorkerLease.name == unit, WorkerLease.holder == self.holder)
                .values(expires_at=until, holder="")
            )

    def close(self) -> None:
        """Hand everything back at once (a clean stop needs no lease to expire)."""
        if self.backend == "sqlite":
            if self._file_lock is not None:
                self._file_lock.release()
            with self._lock:
                self._held.clear()
            return
        with self._lock:
            self._held.clear()
        try:
            with self.sessions() as s, s.begin():
                s.execute(
                    update(WorkerLease)
                    .where(WorkerLease.holder == self.holder, ~WorkerLease.name.like(MEMBER + "%"))
                    .values(expires_at=0.0, holder="")
                )
                s.execute(delete(WorkerLease).where(WorkerLease.name == MEMBER + self.holder))
        except Exception as e:  # the database may be gone; the leases then expire on their own
            log.warning("could not release the leases of %s: %s", self.name, e)

    # -- PostgreSQL --------------------------------------------------------------------------------

    def _now(self, s: Session) -> float:
        return float(s.scalar(text("SELECT extract(epoch from clock_timestamp())")))

    def _heartbeat(self, s: Session, now: float) -> None:
        """This process's membership lease: the live members deal the units out among themselves."""
        values = {"expires_at": now + self.ttl, "renewed_at": now, "holder": self.holder}
        s.execute(
            pg_insert(WorkerLease)
            .values(name=MEMBER + self.holder, epoch=1, acquired_at=now, **values)
            .on_conflict_do_update(index_elements=[WorkerLease.name], set_=values)
        )

    def _claim(self, unit: str, stale_only: bool = False) -> bool:
        t0 = time.monotonic()
        with self.sessions() as s, s.begin():
            s.execute(pg_insert(WorkerLease).values(name=unit, holder="", epoch=0).on_conflict_do_nothing())
            row = s.scalars(
                select(WorkerLease).where(WorkerLease.name == unit).with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return False  # another process is claiming it right now
            now = self._now(s)
            if row.holder and row.holder != self.holder and row.expires_at > now:
                return False
            if stale_only and row.holder != self.holder and row.expires_at > now - self.ttl:
                return False
            if row.holder != self.holder:
                self.takeovers += bool(row.holder)
                if row.holder:
                    log.warning(
                        "%s %s takes over %s from %s (lease expired)", self.role, self.name, unit, row.holder
                    )
                row.epoch += 1
                row.acquired_at = now
            row.holder, row.expires_at, row.renewed_at = self.holder, now + self.ttl, now
            epoch = row.epoch
        with self._lock:
            self._held[unit] = (epoch, t0 + self.ttl - self.margin)
        return True

    def _renew(self, t0: float) -> None:
        with self._lock:
            mine = dict(self._held)
        if not mine:
            return
        with self.sessions() as s, s.begin():
            now = self._now(s)
            kept = set(
                s.scalars(
                    update(WorkerLease)
                    .where(WorkerLease.name.in_(list(mine)), WorkerLease.holder == self.holder)
                    .values(expires_at=now + self.ttl, renewed_at=now)
                    .returning(WorkerLease.name)
                )
            )
        with self._lock:
            for unit, (epoch, _until) in mine.items():
                if unit in kept:
                    self._held[unit] = (epoch, t0 + self.ttl - self.margin)
                else:
                    log.warning("%s %s lost %s (another process holds it now)", self.role, self.name, unit)
                    self._held.pop(unit, None)


def run_ticks(coord: Coordinator, stop: threading.Event) -> threading.Thread:
    """Tick every ``renew_s`` until ``stop``; a failing tick (database down) is logged and retried."""

    def loop() -> None:
        while not stop.wait(coord.renew_s):
            try:
                coord.tick()
            except Exception as e:
                log.warning("lease renewal failed (%s); retrying in %.1f s", e, coord.renew_s)

    t = threading.Thread(target=loop, name="leases", daemon=True)
    t.start()
    return t


def describe(coord: Coordinator) -> dict[str, Any]:
    return {"holder": coord.holder, "backend": coord.backend, "held": sorted(coord.held())}
