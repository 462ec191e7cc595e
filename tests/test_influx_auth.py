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
