"""The alert feed of one API process: one reader of the event log serves every SSE stream.

On PostgreSQL a listener thread waits on ``LISTEN campusmon_alert_events``. Every writer of events
(a worker's window rules, a collector's instant rules, an API replica's acks) sends ``NOTIFY`` in
the transaction that writes them, so it arrives at commit, on every replica. The thread then reads
the new events once and wakes every stream of its process. It also looks every ``api.sse_poll_s``
(default 5 s), so a notification missed while its connection was being re-made costs seconds, not
events. SQLite has no NOTIFY: events written by this process wake the reader at once, events
written by other processes (the collector) are found by a poll every 0.5 s.

The reader keeps the latest events in memory (every id after ``base``), so N streams cost one query
per batch of events, not one per stream every 0.2 s. A stream resuming from an id older than that
(``Last-Event-ID`` after a long gap, or on another replica) reads the database until it catches up.
Ids become visible in order (writers serialise on an advisory lock), so reading "after the last id"
never skips one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from bisect import bisect_right
from typing import Any

from sqlalchemy.engine import make_url

from api.alerts.store import EVENTS_CHANNEL, AlertStore

log = logging.getLogger(__name__)

SQLITE_POLL_S = 0.5
POSTGRES_POLL_S = 5.0
KEEP = 2000  # events kept in memory for streams to take without a query
BATCH = 500

Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class EventBus:
    """Wakes this process's SSE streams when events commit, and hands them the events from memory."""

    def __init__(self, store: AlertStore | None = None, url: str = "", poll_s: float | None = None) -> None:
        self.store = store
        self.url = url
        self.postgres = url.startswith("postgresql")
        self.poll_s = poll_s or (POSTGRES_POLL_S if self.postgres else SQLITE_POLL_S)
        self._waiters: set[Waiter] = set()
        self._ids: list[int] = []
        self._evs: list[dict[str, Any]] = []
        self._base = 0  # memory holds every event with base < id <= head
        self._head = 0
        self._ready = False
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = False  # a LISTEN connection is up (PostgreSQL)
        self.reads = 0  # queries of the event log by the reader (not by resuming streams)

    # -- streams (event loop side) -----------------------------------------------------------------

    def register(self) -> Waiter:
        w = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.add(w)
        self._start()
        return w

    def unregister(self, w: Waiter) -> None:
        self._waiters.discard(w)

    def after(self, last: int, limit: int = BATCH) -> list[dict[str, Any]] | None:
        """Events after ``last`` from memory; None when memory does not reach back that far."""
        with self._lock:
            if not self._ready or last < self._base:
                return None
            i = bisect_right(self._ids, last)
            return self._evs[i : i + limit]

    # -- writers in this process (store listener) --------------------------------------------------

    def notify(self, events: list[dict[str, Any]]) -> None:
        if events:
            self._kick.set()

    # -- the reader thread -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None and self.store is not None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="alert-feed", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 2)

    def _run(self) -> None:
        assert self.store is not None
        while not self._stop.is_set():
            try:
                head = self.store.last_event_id()
                break
            except Exception as e:
                log.warning("alert feed: event log unreadable (%s); retrying", e)
                self._stop.wait(self.poll_s)
        else:
            return
        with self._lock:
            self._base = self._head = head
            self._ready = True
        while not self._stop.is_set():
            if self.postgres:
                self._listen()  # returns when its connection fails, or at stop
            if not self._stop.is_set():
                self._kick.wait(self.poll_s)
                self._kick.clear()
                self._refresh()

    def _listen(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=5)
        except psycopg.Error as e:
            log.warning("alert feed: cannot LISTEN (%s); polling every %.1f s", e, self.poll_s)
            return
        try:
            conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            self.listening = True
            self._refresh()  # what committed before LISTEN took effect
            while not self._stop.is_set():
                for _n in conn.notifies(timeout=self.poll_s, stop_after=1):
                    pass
                self._refresh()
        except psycopg.Error as e:
            if not self._stop.is_set():
                log.warning("alert feed: LISTEN connection lost (%s); re-making it", e)
        finally:
            self.listening = False
            conn.close()

    def _refresh(self) -> None:
        assert self.store is not None
        got = False
        try:
            while True:
                evs = self.store.events_after(self._head, BATCH)
                self.reads += 1
                if not evs:
                    break
                with self._lock:
                    self._ids.extend(e["id"] for e in evs)
                    self._evs.extend(evs)
                    self._head = evs[-1]["id"]
                    if len(self._ids) > 2 * KEEP:
                        cut = len(self._ids) - KEEP
                        self._base = self._ids[cut - 1]
                        del self._ids[:cut], self._evs[:cut]
                got = True
                if len(evs) < BATCH:
                    break
        except Exception as e:  # the database is down: streams wait, the next poll tries again
            log.warning("alert feed: reading the event log failed: %s", e)
        if got:
            self._wake()

    def _wake(self) -> None:
        for loop, ev in list(self._waiters):
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the loop has closed
                self._waiters.discard((loop, ev))
