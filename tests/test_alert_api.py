"""The alert feed over real HTTP: uvicorn serving the app, readings ingested, SSE resumed after a drop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from campusmon.config import CampusConfig
from campusmon.services import free_port
from tests.auth_helpers import admin_headers
from tests.helpers import wait_until

CAMPUS = {
    "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}],
    "meters": [
        {"id": f"e-r{i}", "building": "d1", "kind": "electricity", "room": f"d1-{i}", "interval_s": 10}
        for i in range(1, 4)
    ],
}
QUIET = {
    "rules": {"data.offline": {"enabled": False}, "data.completeness": {"enabled": False}},
    "mqtt": {"enabled": False},
}
T0 = int(time.time()) - 3600


class Served:
    """The real app under uvicorn in a thread, on a free port."""

    def __init__(self, cfg: CampusConfig) -> None:
        self.app = create_app(cfg)
        self.headers = admin_headers(cfg)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, 0.02, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def cfg(make_config, influxdb) -> CampusConfig:
    return make_config(None, influxdb, data={**CAMPUS, "alerts": QUIET})


def kettle(meter: str, start: int, on_s: int = 60) -> list[dict[str, Any]]:
    out = []
    for i in range(-3, on_s // 10 + 3):
        ts = start + i * 10
        out.append({"meter": meter, "ts": ts, "power_w": 150.0 + (1900.0 if 0 <= i < on_s // 10 else 0.0)})
    return out


def ingest(c: httpx.Client, records: list[dict[str, Any]]) -> None:
    r = c.post("/api/v1/readings", json=records)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] > 0


def sse_events(
    resp: httpx.Response, n: int, ready: threading.Event | None = None
) -> Iterator[dict[str, Any]]:
    """Parse up to ``n`` events from an open SSE response (the client's read timeout bounds each wait).

    ``ready`` is set at the stream's ``retry:`` line: the server has then fixed where the stream starts.
    """
    got = 0
    ev: dict[str, Any] = {}
    for line in resp.iter_lines():
        if line.startswith("retry: ") and ready is not None:
            ready.set()
        if line.startswith("id: "):
            ev["id"] = int(line[4:])
        elif line.startswith("event: "):
            ev["event"] = line[7:]
        elif line.startswith("data: "):
            ev["data"] = json.loads(line[6:])
        elif line == "" and "id" in ev:
            yield ev
            got += 1
            ev = {}
            if got >= n:
                return


def test_feed_lifecycle_and_sse_resume_after_a_dropped_connection(cfg: CampusConfig) -> None:
    with Served(cfg) as srv, httpx.Client(base_url=srv.url, timeout=10, headers=srv.headers) as c:
        # A kettle in room 1 raises two alerts (high power and over cap) and clears them when switched off.
        ingest(c, kettle("e-r1", T0))
        alerts = c.get("/api/v1/alerts", params={"rule": "dorm.*"}).json()["alerts"]
        assert {a["rule"] for a in alerts} == {"dorm.high_power", "dorm.over_cap"}
        hp = next(a for a in alerts if a["rule"] == "dorm.high_power")
        for key in (
            "id",
            "rule",
            "severity",
            "status",
            "acknowledged",
            "subject",
            "building",
            "first_seen",
            "last_seen",
            "message",
            "waste",
        ):
            assert key in hp
        assert hp["subject"] == {"kind": "room", "id": "d1-1"} and hp["status"] == "cleared"

        # The stream from the start of the log.
        with httpx.stream(
            "GET",
            srv.url + "/api/v1/alerts/stream",
            params={"last_event_id": 0},
            headers=srv.headers,
            timeout=10,
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            first = list(sse_events(r, 3))
        seen = [e["id"] for e in first]
        assert [e["event"] for e in first][:2] == ["opened", "opened"]
        # While nobody listens, people work on the alert and another kettle goes on.
        assert c.post(f"/api/v1/alerts/{hp['id']}/ack", json={"by": "warden"}).json()["acknowledged"] is True
        assert c.post(f"/api/v1/alerts/{hp['id']}/assign", json={"assignee": "floor warden"}).json()[
            "assignee"
        ]
        r = c.post(
            f"/api/v1/alerts/{hp['id']}/notes", json={"text": "kettle confiscated", "author": "warden"}
        )
        assert r.status_code == 201 and r.json()["notes"][0]["text"] == "kettle confiscated"
        ingest(c, kettle("e-r2", T0 + 600))
        log = c.get("/api/v1/alerts/events", params={"after": 0}).json()["events"]
        expected = [e["id"] for e in log if e["id"] > seen[-1]]
        assert len(expected) >= 6
        # Reconnect with Last-Event-ID: everything after it, once, in order.
        hdr = {"Last-Event-ID": str(seen[-1]), **srv.headers}
        with httpx.stream("GET", srv.url + "/api/v1/alerts/stream", headers=hdr, timeout=10) as r:
            resumed = list(sse_events(r, len(expected)))
        assert [e["id"] for e in resumed] == expected
        assert {e["event"] for e in resumed} >= {"acknowledged", "assigned", "note", "opened", "cleared"}

        # Live: a stream opened now gets the next event (its first, not an older one).
        got: list[dict[str, Any]] = []
        listening = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", srv.url + "/api/v1/alerts/stream", headers=srv.headers, timeout=10) as r:
                got.extend(sse_events(r, 1, listening))

        th = threading.Thread(target=listen)
        th.start()
        assert listening.wait(10), "the stream did not open"
        ingest(c, kettle("e-r3", T0 + 1200))
        th.join(15)
        assert got and got[0]["event"] == "opened" and got[0]["data"]["alert"]["subject"]["id"] == "d1-3"


def test_feed_filters_pagination_atom_and_errors(cfg: CampusConfig) -> None:
    with Served(cfg) as srv, httpx.Client(base_url=srv.url, timeout=10, headers=srv.headers) as c:
        for i, m in enumerate(("e-r1", "e-r2", "e-r3")):
            ingest(c, kettle(m, T0 + i * 300, on_s=120))
        page = c.get("/api/v1/alerts", params={"limit": 4}).json()
        assert page["count"] == 4 and page["next_cursor"]
        rest = c.get("/api/v1/alerts", params={"limit": 4, "cursor": page["next_cursor"]}).json()
        ids = [a["id"] for a in page["alerts"] + rest["alerts"]]
        assert len(ids) == 6 and len(set(ids)) == 6 and rest["next_cursor"] is None
        crit = c.get("/api/v1/alerts", params={"severity": "critical"}).json()["alerts"]
        assert {a["rule"] for a in crit} == {"dorm.high_power"}
        assert c.get("/api/v1/alerts", params={"since": "2190-01-01"}).json()["count"] == 0
        assert c.get("/api/v1/alerts", params={"status": "bogus"}).status_code == 422
        assert c.get("/api/v1/alerts", params={"cursor": "nope"}).status_code == 422
        assert c.get("/api/v1/alerts/99999").status_code == 404
        assert c.post("/api/v1/alerts/99999/ack").status_code == 404
        assert c.post(f"/api/v1/alerts/{ids[0]}/notes", json={"text": ""}).status_code == 422
        feed = c.get("/api/v1/alerts/feed.atom", params={"rule": "dorm.high_power"})
        assert feed.headers["content-type"].startswith("application/atom+xml")
        import xml.etree.ElementTree as ET

        root = ET.fromstring(feed.text)
        ns = {"a": "http://www.w3.org/2005/Atom"}
        titles = [e.findtext("a:title", namespaces=ns) for e in root.findall("a:entry", ns)]
        assert len(titles) == 6 and all("High-power appliance" in t for t in titles)
        rules = c.get("/api/v1/alerts/rules").json()["rules"]
        assert {r["id"] for r in rules} >= {"leak.night_flow", "dorm.high_power", "data.counter_backwards"}
        s = c.post(
            "/api/v1/alerts/silences",
            json={"kind": "maintenance", "buildings": ["d1"], "start": "2020-01-01", "end": "2190-01-01"},
        )
        assert s.status_code == 201
        ingest(c, kettle("e-r1", T0 + 2400))
        assert c.get("/api/v1/alerts", params={"status": "active"}).json()["count"] == 0
        assert c.delete(f"/api/v1/alerts/silences/{s.json()['id']}").json()["deleted"] is True


def test_restart_keeps_alerts_and_a_step_in_progress(cfg: CampusConfig) -> None:
    start = T0 + 3000
    with Served(cfg) as srv, httpx.Client(base_url=srv.url, timeout=10, headers=srv.headers) as c:
        ingest(c, [{"meter": "e-r1", "ts": start + i * 10, "power_w": 150.0} for i in range(-3, 0)])
        ingest(c, [{"meter": "e-r1", "ts": start, "power_w": 2050.0}])  # a heater goes on ...
        assert c.get("/api/v1/alerts", params={"rule": "dorm.high_power"}).json()["count"] == 0
    with (
        Served(cfg) as srv,
        httpx.Client(base_url=srv.url, timeout=10, headers=srv.headers) as c,
    ):  # ... the API restarts ...
        ingest(
            c, [{"meter": "e-r1", "ts": start + 30, "power_w": 2050.0}]
        )  # ... and it is still on 30 s later
        alerts = c.get("/api/v1/alerts", params={"rule": "dorm.high_power"}).json()["alerts"]
        assert len(alerts) == 1 and alerts[0]["status"] == "active"
        from datetime import datetime

        assert (
            int(datetime.fromisoformat(alerts[0]["since"]).timestamp()) == start
        )  # the step began before the restart
        assert int(datetime.fromisoformat(alerts[0]["first_seen"]).timestamp()) == start + 30
        aid = alerts[0]["id"]
    with Served(cfg) as srv, httpx.Client(base_url=srv.url, timeout=10, headers=srv.headers) as c:
        a = c.get(f"/api/v1/alerts/{aid}").json()
        assert a["status"] == "active" and a["rule"] == "dorm.high_power"
        ingest(c, [{"meter": "e-r1", "ts": start + 40, "power_w": 2050.0}])
        assert (
            c.get("/api/v1/alerts", params={"rule": "dorm.high_power"}).json()["count"] == 1
        )  # updated, not new
