"""The project's InfluxDB with authentication: no anonymous access, a writer and a reader that cannot write."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from campusmon.influx import QueryError, open_store
from campusmon.reading import Reading
from campusmon.services import InfluxDB, free_port


@pytest.fixture
def influx_auth(tmp_path: Path, db_name: str) -> Iterator[InfluxDB]:
    srv = InfluxDB(tmp_path / "influx", free_port(), auth=True, databases=(db_name,))
    srv.start()
    yield srv
    srv.stop()


def test_anonymous_writes_and_queries_are_refused(influx_auth, db_name) -> None:
    base = f"http://127.0.0.1:{influx_auth.port}"
    w = httpx.post(f"{base}/write", params={"db": db_name}, content=b"electricity,meter=x energy_kwh=1 1")
    q = httpx.get(f"{base}/query", params={"db": db_name, "q": "SHOW MEASUREMENTS"})
    assert (w.status_code, q.status_code) == (401, 401)
    assert httpx.get(f"{base}/ping").status_code == 204  # health stays open


def test_writer_writes_reader_reads_and_the_reader_cannot_write(influx_auth, db_name, make_config) -> None:
    users = influx_auth.users()
    (wu, wp), (ru, rp) = users["writer"], users["reader"]
    data = {"buildings": [{"id": "b1"}], "meters": [{"id": "e-1", "building": "b1", "kind": "electricity"}]}
    url = f"http://127.0.0.1:{influx_auth.port}"
    ts = int(time.time()) - 60
    # The collector's and the API's store: writes as the writer, queries as the reader.
    cfg = make_config(data=data, influxdb={"url": url, "username": wu, "password": wp, "read_username": ru,
                                          "read_password": rp, "create_database": False})  # fmt: skip
    store = open_store(cfg)
    try:
        out = store.write([Reading("e-1", "energy_kwh", 3.5, ts)])
        assert out.stored == 1
        series = store.query('SELECT "energy_kwh" FROM "electricity"')
        assert series[0]["values"] == [[ts, 3.5]]
    finally:
        store.close()
    # The writer alone cannot read, the reader cannot write or drop.
    writer_only = open_store(make_config(data=data, influxdb={"url": url, "username": wu, "password": wp}))
    reader_only = open_store(make_config(data=data, influxdb={"url": url, "username": ru, "password": rp}))
    try:
        with pytest.raises(QueryError):
            writer_only.query('SELECT "energy_kwh" FROM "electricity"')
        r = httpx.post(f"{url}/write", params={"db": db_name}, auth=(ru, rp),
                       content=f"electricity,meter=e-1 energy_kwh=9 {ts}".encode())  # fmt: skip
        assert r.status_code == 403, r.text
        with pytest.raises(QueryError):
            reader_only.query(f'DROP DATABASE "{db_name}"')
    finally:
        writer_only.close()
        reader_only.close()


def test_users_survive_a_restart(tmp_path, db_name) -> None:
    srv = InfluxDB(tmp_path / "influx", free_port(), auth=True, databases=(db_name,))
    srv.start()
    first = srv.users()
    srv.stop()
    srv.start()  # the admin exists now: set-up runs as that admin and changes nothing
    try:
        assert srv.users() == first
        q = httpx.get(f"http://127.0.0.1:{srv.port}/query", params={"q": "SHOW USERS"}, auth=first["admin"])
        names = {row[0] for row in q.json()["results"][0]["series"][0]["values"]}
        assert names == {u for u, _ in first.values()}
    finally:
        srv.stop()


def test_set_up_makes_the_rollup_policies_so_the_writer_alone_keeps_rollups(
    tmp_path, db_name, make_config
) -> None:
    """The writer may not create retention policies: the server's set-up does (as ``campusmon services`` and
    the demo start it), and the rollup maintainer, writing as the writer, then has nothing to complain of."""
    from campusmon import rollups
    from campusmon.db import init_db

    data = {"buildings": [{"id": "b1"}], "meters": [{"id": "e-1", "building": "b1", "kind": "electricity"}]}
    plain = make_config(data=data)
    srv = InfluxDB(
        tmp_path / "influx", free_port(), auth=True, databases=(db_name,),
        setup=tuple(rollups.retention_statements(plain.influxdb)),
    )  # fmt: skip
    srv.start()
    try:
        (wu, wp), (ru, rp) = srv.users()["writer"], srv.users()["reader"]
        cfg = make_config(data=data, influxdb={"url": f"http://127.0.0.1:{srv.port}", "username": wu, "password": wp,
                                              "read_username": ru, "read_password": rp, "create_database": False})  # fmt: skip
        store = open_store(cfg)
        t0 = int(time.time()) // 3600 * 3600 - 6 * 3600
        store.write([Reading("e-1", "energy_kwh", 10.0 + k, t0 + k * 900) for k in range(20)])
        assert rollups.ensure_retention(store, cfg) == []  # in force already: nothing refused
        _e, sessions = init_db(cfg.database.url)
        st = rollups.RollupMaintainer(cfg, store, sessions).pass_once(now=t0 + 20 * 900)
        rows = rollups.read_hourly(store, ["e-1"], t0, t0 + 20 * 900, sessions)["e-1"]
        store.close()
        assert st.hours_written > 0
        assert sum(r.value for r in rows if r.quantity == "energy_kwh") == pytest.approx(16.0)
    finally:
        srv.stop()
    # Without the set-up, the writer is refused the policies and says so.
    bare = InfluxDB(tmp_path / "bare", free_port(), auth=True, databases=(db_name,))
    bare.start()
    try:
        (wu, wp) = bare.users()["writer"]
        cfg = make_config(data=data, influxdb={"url": f"http://127.0.0.1:{bare.port}", "username": wu, "password": wp,
                                              "create_database": False})  # fmt: skip
        store = open_store(cfg)
        problems = rollups.ensure_retention(store, cfg)
        store.close()
        assert any("CREATE RETENTION POLICY" in p and "admin" in p for p in problems), problems
    finally:
        bare.stop()
