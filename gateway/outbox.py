"""Store-and-forward outbox: every reading is on disk before it leaves, and leaves it only when acknowledged.

One SQLite file in WAL mode. A single writer thread owns every write (inserts, acknowledged
deletes, expiry, the size bound) and commits whatever has queued up in one transaction, so a
burst of replies costs one fsync and there is never a "database is locked" loop. Readers use their
own connection, which WAL lets run beside the writer.

``synchronous=FULL`` by default: in WAL mode FULL fsyncs the log at every commit, so a reading
whose commit returned survives a power cut. NORMAL fsyncs only at checkpoints and can lose the
last commits on power loss (never corrupt the file); it is offered for SD cards that wear fast.
SIGKILL loses nothing in either mode (the data is in the OS page cache already).

A row is one reading, kept with its original timestamp; ids only grow (AUTOINCREMENT), which is
the drain order. When the bound is reached the oldest rows go first, counted in ``meta`` so the
count survives restarts, logged, and shown on the status topic.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from campusmon.reading import Reading

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    m INTEGER NOT NULL,      -- names.id of the meter
    q INTEGER NOT NULL,      -- names.id of the quantity
    v REAL NOT NULL,
    ts INTEGER NOT NULL      -- Unix seconds when the meter was read; never changed
);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_EXPIRY_PERIOD_S = 60.0
_MAX_OPS_PER_COMMIT = 5000


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    capacity: int
    fill: float
    dropped_full: int
    dropped_expired: int
    oldest_ts: int | None
    warning: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class OutboxClosed(Exception):
    """The outbox was closed; nothing more is accepted."""


class OutboxBusy(Exception):
    """Another process has this outbox open: two writers would send every reading twice."""


class Outbox:
    def __init__(self, path: str | Path, max_readings: int = 8_000_000, max_age_s: float = 35 * 86400,
                 warn_fill: float = 0.9, synchronous: str = "full", clock: Callable[[], float] = time.time
                 ) -> None:  # fmt: skip
        self.path = Path(path)
        self.max_readings = max_readings
        self.max_age_s = max_age_s
        self.warn_fill = warn_fill
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._w = self._open(synchronous)
        self._r = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._r.execute("PRAGMA busy_timeout=10000")
        self._rlock = threading.Lock()
        self._names: dict[str, int] = {n: i for i, n in self._w.execute("SELECT id, name FROM names")}
        self._ids: dict[int, str] = {i: n for n, i in self._names.items()}
        meta = dict(self._w.execute("SELECT key, value FROM meta"))
        self._dropped_full = int(meta.get("dropped_full", 0))
        self._dropped_expired = int(meta.get("dropped_expired", 0))
        self._depth = int(self._w.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        self._last_id = int(self._w.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()[0])
        self._warned = False
        self._ops: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=20000)
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._writer.start()
        if self._depth:
            log.info("outbox %s holds %d readings from before the restart", self.path, self._depth)

    def _take_lock(self) -> int:
        """An exclusive lock held for the life of the process; the kernel drops it even on SIGKILL."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutboxBusy(
                f"{self.path} is in use by another process (a second gateway on the same data_dir?)"
            ) from None
        return fd

    def _open(self, synchronous: str) -> sqlite3.Connection:
        """Open, and if the file is not a database, keep it aside and start empty rather than not start."""
        for attempt in (1, 2):
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=10000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
                conn.execute("PRAGMA journal_size_limit=67108864")
                conn.executescript(_SCHEMA)
                return conn
            except sqlite3.DatabaseError as e:
                conn.close()
                if attempt == 2:
                    raise
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                log.error(
                    "outbox %s is unreadable (%s); moved it to %s and starting empty", self.path, e, aside
                )
                self.path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    # -- producer side --------------------------------------------------------------------------

    def put(self, readings: Sequence[Reading]) -> None:
        """Queue readings for the writer; they are durable once a later ``flush`` returns."""
        if self._closed:
            raise OutboxClosed("outbox is closed")
        if readings:
            self._ops.put(("put", list(readings)))

    def ack(self, ids: Sequence[int]) -> None:
        """The broker (or InfluxDB) has these rows: delete them."""
        if ids and not self._closed:
            self._ops.put(("ack", list(ids)))

    def expire_now(self) -> None:
        """Apply the age bound at once instead of at the next periodic pass."""
        if not self._closed:
            self._ops.put(("expire", None))

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is committed."""
        if self._closed:
            return True
        done = threading.Event()
        self._ops.put(("flush", done))
        return done.wait(timeout)

    # -- consumer side --------------------------------------------------------------------------

    def fetch(self, after_id: int, limit: int) -> list[tuple[int, Reading]]:
        """The oldest committed rows after ``after_id``, in insertion order."""
        with self._rlock:
            rows = self._r.execute(
                "SELECT id, m, q, v, ts FROM readings WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        ids = self._ids
        return [(i, Reading(ids[m], ids[q], v, ts)) for i, m, q, v, ts in rows]

    def wait_beyond(self, after_id: int, timeout: float) -> bool:
        """Block until a row newer than ``after_id`` is committed (or timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._last_id > after_id or self._closed, timeout)

    def stats(self) -> OutboxStats:
        with self._rlock:
            row = self._r.execute("SELECT ts FROM readings ORDER BY id LIMIT 1").fetchone()
        depth = self._depth
        fill = depth / self.max_readings
        oldest = row[0] if row else None
        return OutboxStats(
            depth,
            self.max_readings,
            round(fill, 6),
            self._dropped_full,
            self._dropped_expired,
            oldest,
            fill >= self.warn_fill,
        )

    @property
    def depth(self) -> int:
        return self._depth

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._ops.put(("stop", None))
        self._writer.join(timeout)
        with self._cond:
            self._cond.notify_all()
        with self._rlock:
            self._r.close()
        os.close(self._lock_fd)  # closing the descriptor releases the lock

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_expiry = time.monotonic()
        while True:
            try:
                op = self._ops.get(timeout=max(0.0, next_expiry - time.monotonic()))
            except queue.Empty:
                op = ("expire", None)
            batch = [op]
            while len(batch) < _MAX_OPS_PER_COMMIT:
                try:
                    batch.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            if time.monotonic() >= next_expiry:
                batch.append(("expire", None))
                next_expiry = time.monotonic() + _EXPIRY_PERIOD_S
            try:
                self._apply(batch)
            except sqlite3.Error as e:  # disk full, I/O error: keep running, the ops are retried
                self._error = e
                log.error("outbox write failed (%s); retrying in 1 s", e)
                time.sleep(1.0)
                for item in batch:
                    if item[0] != "expire":
                        self._ops.put(item)
                continue
            for kind, arg in batch:
                if kind == "flush":
                    arg.set()  # type: ignore[attr-defined]
            if any(kind == "stop" for kind, _ in batch):
                self._w.close()
                return

    def _apply(self, batch: list[tuple[str, object]]) -> None:
        w = self._w
        inserted = deleted = expired = 0
        w.execute("BEGIN IMMEDIATE")
        try:
            for kind, arg in batch:
                if kind == "put":
                    rows = [(self._name(w, r.meter), self._name(w, r.quantity), float(r.value), int(r.ts))
                            for r in arg]  # type: ignore[attr-defined]  # fmt: skip
                    w.executemany("INSERT INTO readings (m, q, v, ts) VALUES (?, ?, ?, ?)", rows)
                    inserted += len(rows)
                elif kind == "ack":
                    cur = w.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in arg])  # type: ignore[attr-defined]
                    deleted += max(cur.rowcount, 0)
                elif kind == "expire":
                    expired += self._expire(w)
            overflow = self._depth + inserted - deleted - expired - self.max_readings
            dropped = 0
            if overflow > 0:
                cur = w.execute(
                    "DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT ?)",
                    (overflow,),
                )
                dropped = max(cur.rowcount, 0)
            if dropped:
                w.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('dropped_full', ?)", (self._dropped_full + dropped,)
                )
            if expired:
                w.execute("INSERT OR REPLACE INTO meta VALUES ('dropped_expired', ?)",
                          (self._dropped_expired + expired,))  # fmt: skip
            last = w.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            self._names = {n: i for i, n in w.execute("SELECT id, name FROM names")}
            raise
        self._error = None
        self._depth += inserted - deleted - expired - dropped
        self._dropped_full += dropped
        self._dropped_expired += expired
        if dropped:
            log.warning("outbox full (%d readings): dropped the %d oldest (%d dropped in total)",
                        self.max_readings, dropped, self._dropped_full)  # fmt: skip
        if expired:
            log.warning(
                "outbox: %d readings older than %.0f days expired unsent", expired, self.max_age_s / 86400
            )
        self._check_fill()
        with self._cond:
            if last:
                self._last_id = int(last[0])
            self._cond.notify_all()

    def _name(self, w: sqlite3.Connection, name: str) -> int:
        i = self._names.get(name)
        if i is None:
            i = int(w.execute("INSERT INTO names (name) VALUES (?) RETURNING id", (name,)).fetchone()[0])
            self._names[name] = i
            self._ids[i] = name
        return i

    def _expire(self, w: sqlite3.Connection) -> int:
        """Drop rows past the age bound from the head (rows are in time order there)."""
        cutoff = int(self.clock() - self.max_age_s)
        total = 0
        while True:
            head = w.execute("SELECT id, ts FROM readings ORDER BY id LIMIT 5000").fetchall()
            old = [(i,) for i, ts in head if ts < cutoff]
            if not old:
                return total
            w.executemany("DELETE FROM readings WHERE id = ?", old)
            total += len(old)
            if len(old) < len(head):
                return total

    def _check_fill(self) -> None:
        fill = self._depth / self.max_readings
        if fill >= self.warn_fill and not self._warned:
            self._warned = True
            log.warning("outbox is %.0f%% full (%d of %d readings): the uplink has been down a long time",
                        fill * 100, self._depth, self.max_readings)  # fmt: skip
        elif fill < self.warn_fill * 0.9:
            self._warned = False
