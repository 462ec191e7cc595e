"""Event ids become visible in order on PostgreSQL, whoever writes them (live rules or a backtest commit).

An SSE reader resumes after the last id it saw; if a higher id commits while a lower one is still in
an open transaction, the reader moves past the lower one and never sends it.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import text

from api.alerts.backtest import backtest
from api.alerts.config import alerts_config
from api.alerts.models import AlertEvent
from api.alerts.store import AlertStore
from campusmon.db import init_db
from campusmon.influx import open_store
from campusmon.reading import Reading
from tests.helpers import wait_until

T0 = 1_760_000_000
DORM = {
    "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}],
    "meters": [{"id": "e-r1", "building": "d1", "kind": "electricity", "room": "d1-101", "interval_s": 10}],
}


def _pg_database(postgresql: Any) -> str:
    return postgresql.create_database("t_" + uuid.uuid4().hex[:12])


def test_backtest_commit_waits_for_the_event_ordering_lock(postgresql, influxdb, make_config) -> None:
    url = _pg_database(postgresql)
    cfg = make_config(None, influxdb, data=DORM, database={"url": url})
    influx = open_store(cfg)
    influx.ensure_database()
    # Two kettles in the stored history: the backtest finds two alerts to commit.
    rs = [
        Reading("e-r1", "power_w", 150.0 + (2000 if 3 <= i < 12 or 30 <= i < 40 else 0), T0 + 10 * i)
        for i in range(60)
    ]
    assert influx.write(rs).stored == 60
    engine, sessions = init_db(url)
    acfg = alerts_config(cfg)
    live = AlertStore(cfg, acfg, sessions)
    holding, release = threading.Event(), threading.Event()

    def live_writer() -> None:
        """The live path mid-transaction: ordering lock taken, its event id drawn, not yet committed."""
        with sessions() as s, s.begin():
            live._lock_events(s)
            s.add(AlertEvent(alert_id=0, type="note", at=T0, actor="live", data={}))
            s.flush()
            holding.set()
            release.wait(60)

    committed: list[list[int]] = []

    def commit_backtest() -> None:
        res = backtest(cfg, influx, T0, T0 + 600, ["dorm.high_power"], 60, sessions, acfg, commit=True)
        committed.append(res.committed)

    def waiting_for_the_lock() -> bool:
        with engine.connect() as c:
            q = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool(c.execute(text(q)).scalar())

    lw = threading.Thread(target=live_writer, daemon=True)
    bt = threading.Thread(target=commit_backtest, daemon=True)
    try:
        lw.start()
        assert holding.wait(30)
        bt.start()
        wait_until(lambda: committed or waiting_for_the_lock(), 60, 0.05, "the commit to finish or wait")
        seen = [e["id"] for e in live.events_after(0)]  # what an SSE reader sees at this moment
    finally:
        release.set()
        lw.join(30)
        bt.join(60)
    assert committed and len(committed[0]) == 2
    every = [e["id"] for e in live.events_after(0)]
    assert len(every) == 3
    late = [i for i in every if i not in seen]
    # Nothing may become visible below an id a reader has already passed.
    assert not seen or all(i > max(seen) for i in late), f"reader saw {seen}, then {late} appeared"
    engine.dispose()
    influx.close()
