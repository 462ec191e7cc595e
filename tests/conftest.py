"""Real servers for the tests: Mosquitto and InfluxDB 1.x started from their Debian packages.

Session-wide servers serve most tests (each test gets its own database and client ids); tests that
stop or kill a server start private ones with the ``*_factory`` fixtures.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from campusmon.config import CampusConfig, parse_config  # noqa: E402
from campusmon.services import InfluxDB, Mosquitto, Server, free_port  # noqa: E402

VECTORS = ROOT / "tests" / "vectors"


@pytest.fixture(scope="session")
def svc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(svc_root: Path) -> Iterator[Mosquitto]:
    srv = Mosquitto(svc_root / "mosquitto", free_port(), anonymous=True)  # open: a test convenience
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def influxdb(svc_root: Path) -> Iterator[InfluxDB]:
    srv = InfluxDB(svc_root / "influxdb", free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Private servers for tests that stop, kill or restart them."""
    started: list[Server] = []

    def make(kind: str) -> Server:
        cls = {"mosquitto": Mosquitto, "influxdb": InfluxDB}[kind]
        srv = cls(tmp_path / f"{kind}-{len(started)}", free_port())
        if isinstance(srv, Mosquitto):
            srv.anonymous = True  # open broker: a test convenience (tests of the lock use their own)
        srv.start()
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def db_name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_config(tmp_path: Path, db_name: str) -> Callable[..., CampusConfig]:
    """A config aimed at given servers; ``data`` adds buildings, meters and section overrides."""

    def make(
        mosq: Server | None = None,
        influx: Server | None = None,
        data: dict[str, Any] | None = None,
        **sections: Any,
    ) -> CampusConfig:
        base: dict[str, Any] = {
            "database": {"url": f"sqlite:///{tmp_path}/campus.sqlite"},
            "mqtt": {"client_id": "collector-" + uuid.uuid4().hex[:8], "flush_interval_s": 0.2},
            "influxdb": {"database": db_name},
        }
        if mosq is not None:
            base["mqtt"]["port"] = mosq.port
        if influx is not None:
            base["influxdb"]["url"] = f"http://127.0.0.1:{influx.port}"
        for k, v in (data or {}).items():
            base[k] = v
        for k, v in sections.items():
            base.setdefault(k, {}).update(v)
        return parse_config(base, "test-config", environ={})

    return make


SMALL_CAMPUS: dict[str, Any] = {
    "buildings": [
        {"id": "dorm-1", "name": "Dorm 1", "type": "dorm", "floor_area_m2": 6000, "occupants": 480},
        {"id": "teach-1", "name": "Teaching 1", "type": "classroom", "floor_area_m2": 9000, "occupants": 0},
    ],
    "meters": [
        {"id": "e-dorm-1", "building": "dorm-1", "kind": "electricity", "category": "01A00"},
        {"id": "w-dorm-1", "building": "dorm-1", "kind": "water", "category": "02000"},
        {"id": "e-teach-1", "building": "teach-1", "kind": "electricity", "category": "01B00"},
    ],
}


@pytest.fixture(scope="session")
def postgresql() -> Iterator[Any]:
    """A real PostgreSQL cluster (Debian's package), for the relational store's "PostgreSQL by URL"."""
    import shutil
    import tempfile

    from campusmon.services import PostgreSQL

    d = tempfile.mkdtemp(prefix="campusmon-pg-")
    srv = PostgreSQL(Path(d), free_port())
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The relational store's URL: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/campus.sqlite"
    return request.getfixturevalue("postgresql").create_database("t_" + uuid.uuid4().hex[:12])
