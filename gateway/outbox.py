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

When a commit fails (disk full, I/O error) the writer keeps the failed batch in its own hands and
retries it with a backoff; it never puts anything back into the queue it drains, so it can never
wait on its own producers. Producers then meet a full queue: ``put`` waits for room (back-pressure)
and, while the disk stays unwritable, drops the readings it cannot queue, counted as
``dropped_unwritable`` and logged, so a bus thread is delayed but never stopped. Everything that was
queued is committed, in order, once the disk takes writes again.
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
_MAX_QUEUED_OPS = 20000
_RETRY_MIN_S = 0.05  # first retry after a failed commit; doubles up to _RETRY_MAX_S
_RETRY_MAX_S = 1.0
_DROP_LOG_PERIOD_S = 60.0

_Op = tuple[str, object]


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    capacity: int
    fill: float
    dropped_full: int
    dropped_expired: int
    dropped_unwritable: int
    oldest_ts: int | None
    warning: bool
    write_error: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class OutboxClosed(Exception):
    """The outbox was closed; nothing more is accepted."""


class OutboxBusy(Exception):
    """Another process has this outbox open: two writers would send every reading twice."""


class Outbox:
    def __init__(self, path: str | Path, max_readings: int = 8_000_000, max_age_s: float = 35 * 86400,
                 warn_fill: float = 0.9, synchronous: str = "full", clock: Callable[[], float] = time.time,
                 put_wait_s: float = 5.0) -> None:  # fmt: skip
        self.path = Path(path)
        self.max_readings = max_readings
        self.max_age_s = max_age_s
        self.warn_fill = warn_fill
        self.clock = clock
        self.put_wait_s = put_wait_s
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
        self._dropped_unwritable = self._unwritable_saved = int(meta.get("dropped_unwritable", 0))
        self._drop_lock = threading.Lock()
        self._drop_logged = -_DROP_LOG_PERIOD_S
        self._depth = int(self._w.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
        self._last_id = int(self._w.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()[0])
        self._warned = False
        self._ops: queue.Queue[_Op] = queue.Queue(maxsize=_MAX_QUEUED_OPS)
        self._cond = threading.Condition()
        self._closed = False
        self._stopping = threading.Event()
        self._error: str | None = None  # the last failed commit's error while writes fail, else None
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

    def put(self, readings: Sequence[Reading]) -> bool:
        """Queue readings for the writer; they are durable once a later ``flush`` returns.

        False when they were dropped (counted and logged) because the queue stayed full: at once
        while commits are failing (waiting would not help), else after ``put_wait_s`` of waiting
        for room behind a writer that is only slow.
        """
        if self._closed:
            raise OutboxClosed("outbox is closed")
        if not readings:
            return True
        op = ("put", list(readings))
        try:
            if self._error is not None:
                self._ops.put_nowait(op)  # the writer is retrying a failed commit: waiting will not help
            else:
                self._ops.put(op, timeout=self.put_wait_s)
        except queue.Full:
            self._count_unwritable(len(op[1]))
            return False
        return True

    def ack(self, ids: Sequence[int]) -> None:
        """The broker (or InfluxDB) has these rows: delete them.

        Never dropped: a lost ack would strand its rows until a restart. The caller waits for room
        instead, which also stops it sending more while the writer cannot keep up.
        """
        if not ids:
            return
        op = ("ack", list(ids))
        while not self._closed:
            try:
                self._ops.put(op, timeout=_RETRY_MAX_S)
                return
            except queue.Full:
                continue

    def expire_now(self) -> None:
        """Apply the age bound at once instead of at the next periodic pass."""
        if not self._closed:
            try:
                self._ops.put_nowait(("expire", None))
            except queue.Full:
                pass  # the periodic pass will do it

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is committed; False if that took longer than ``timeout``."""
        if self._closed:
            return True
        done = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._ops.put(("flush", done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _count_unwritable(self, n: int) -> None:
        with self._drop_lock:
            self._dropped_unwritable += n
            total = self._dropped_unwritable
            now = time.monotonic()
            say = now - self._drop_logged >= _DROP_LOG_PERIOD_S
            if say:
                self._drop_logged = now
        if say:
            log.error("outbox cannot write (%s) and its queue is full: dropping new readings "
                      "(%d dropped so far)", self._error or "writer behind", total)  # fmt: skip

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
            self._dropped_unwritable,
            oldest,
            fill >= self.warn_fill,
            self._error,
        )

    @property
    def depth(self) -> int:
        return self._depth

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._stopping.set()
        try:
            self._ops.put_nowait(("stop", None))  # wakes an idle writer; a busy one sees _stopping
        except queue.Full:
            pass
        self._writer.join(timeout)
        with self._cond:
            self._cond.notify_all()
        with self._rlock:
            self._r.close()
        os.close(self._lock_fd)  # closing the descriptor releases the lock

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_expiry = time.monotonic()
        held: list[_Op] = []  # a batch whose commit failed: retried from here, never re-queued
        delay = _RETRY_MIN_S
        failures = 0
        while True:
            batch = held or self._next_batch(next_expiry)
            if time.monotonic() >= next_expiry:
                batch.append(("expire", None))
                next_expiry = time.monotonic() + _EXPIRY_PERIOD_S
            stopping = self._stopping.is_set()
            try:
                self._apply(batch)
            except sqlite3.Error as e:  # disk full, I/O error: keep the batch and keep running
                held = [op for op in batch if op[0] != "expire"]
                failures += 1
                if self._error is None:
                    log.error("outbox write failed (%s); %d queued operations wait in memory and are "
                              "retried", e, len(held) + self._ops.qsize())  # fmt: skip
                self._error = str(e)
                if stopping:
                    self._give_up(held)
                    return
                self._stopping.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if failures:
                log.warning("outbox writes again after %d failed attempts", failures)
            held, delay, failures = [], _RETRY_MIN_S, 0
            for kind, arg in batch:
                if kind == "flush":
                    arg.set()  # type: ignore[attr-defined]
            if any(kind == "stop" for kind, _ in batch) or (stopping and self._ops.empty()):
                self._w.close()
                return

    def _next_batch(self, next_expiry: float) -> list[_Op]:
        """Whatever has queued up, up to one commit's worth; waits for the first op until expiry is due."""
        try:
            batch = [self._ops.get(timeout=max(0.0, next_expiry - time.monotonic()))]
        except queue.Empty:
            return []
        while len(batch) < _MAX_OPS_PER_COMMIT:
            try:
                batch.append(self._ops.get_nowait())
            except queue.Empty:
                break
        return batch

    def _give_up(self, held: list[_Op]) -> None:
        """Closing while the disk takes no writes: say how much never reached it."""
        while True:
            try:
                held.append(self._ops.get_nowait())
            except queue.Empty:
                break
        lost = sum(len(arg) for kind, arg in held if kind == "put")  # type: ignore[arg-type]
        log.error(
            "outbox closed while writes fail (%s): %d queued readings were not written", self._error, lost
        )
        self._w.close()

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
            unwritable = self._dropped_unwritable
            if unwritable != self._unwritable_saved:
                w.execute("INSERT OR REPLACE INTO meta VALUES ('dropped_unwritable', ?)", (unwritable,))
            last = w.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:  # a failed COMMIT (SQLITE_FULL) has rolled back already
                w.execute("ROLLBACK")
            self._names = {n: i for i, n in w.execute("SELECT id, name FROM names")}
            raise
        self._error = None
        self._unwritable_saved = unwritable
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
