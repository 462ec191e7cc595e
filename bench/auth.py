"""Cost of authentication: requests/s to ``GET /api/v1/alerts`` with a bearer token, against the same
route with ``auth.enabled: false``, in one run.

Both APIs run as separate processes (uvicorn, one worker) on the same relational store holding the
same alerts; one keep-alive client measures them in alternating rounds, so drift of the shared
machine hits both alike; the ratio is of the medians. The token look-up is cached (``auth.token_cache_s``): a request costs a
SHA-256 and a dictionary look-up, never a password hash or a query. Goal: ratio >= 0.95.

Run: ``.venv/bin/python bench/auth.py [--requests 200] [--rounds 40]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from campusmon.config import parse_config  # noqa: E402
from campusmon.services import free_port, wait_port  # noqa: E402

CAMPUS = {
    "buildings": [{"id": f"b{i}", "name": f"B{i}", "type": "dorm"} for i in range(4)],
    "meters": [{"id": f"e-{i}", "building": f"b{i % 4}", "kind": "electricity"} for i in range(40)],
    "alerts": {"mqtt": {"enabled": False}},
}


def serve(config_json: str, port: int) -> None:
    import uvicorn

    from api.app import create_app

    cfg = parse_config(json.loads(config_json), "bench-auth", environ={})
    uvicorn.run(create_app(cfg, start_jobs=False), host="127.0.0.1", port=port, log_level="warning")


def seed(cfg_data: dict, alerts: int) -> str:
    """The alerts both APIs list, and an operator token for the locked one."""
    from api.alerts.models import Alert
    from api.auth.service import AuthStore
    from campusmon.db import init_db

    cfg = parse_config(cfg_data, "bench-auth", environ={})
    engine, sessions = init_db(cfg.database.url)
    now = int(time.time())
    with sessions() as s, s.begin():
        for i in range(alerts):
            m = cfg.meters[i % len(cfg.meters)]
            s.add(
                Alert(
                    rule="leak.night_flow",
                    subject_kind="meter",
                    subject_id=m.id,
                    building=m.building,
                    meter=m.id,
                    severity="major",
                    first_seen=now - 3600 + i,
                    last_seen=now,
                    updated_at=now - i,
                    title=f"bench alert {i}",
                )
            )
    raw, _ = AuthStore(sessions).create_token("bench", "operator")
    engine.dispose()
    return raw


def rate(client: httpx.Client, n: int) -> float:
    for _ in range(50):  # warm-up: connections, caches
        client.get("/api/v1/alerts").raise_for_status()
    t0 = time.perf_counter()
    for _ in range(n):
        r = client.get("/api/v1/alerts")
        if r.status_code != 200:
            raise SystemExit(f"unexpected {r.status_code}: {r.text[:200]}")
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--alerts", type=int, default=50)
    ap.add_argument("--serve", nargs=2, metavar=("CONFIG_JSON", "PORT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve[0], int(a.serve[1]))
        return
    with tempfile.TemporaryDirectory(prefix="campusmon-bench-auth-") as d:
        base = {**CAMPUS, "database": {"url": f"sqlite:///{d}/campus.sqlite"}}
        token = seed(base, a.alerts)
        procs, clients = [], {}
        try:
            for name, auth in (("token", {"enabled": True}), ("off", {"enabled": False})):
                port = free_port()
                cfg = json.dumps({**base, "auth": auth})
                p = subprocess.Popen([sys.executable, __file__, "--serve", cfg, str(port)])
                procs.append(p)
                wait_port(port, 30, p)
                hdr = {"Authorization": f"Bearer {token}"} if name == "token" else {}
                clients[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=hdr, timeout=10)
            r = clients["off"].get("/api/v1/alerts")
            assert r.status_code == 200 and r.json()["count"] == min(a.alerts, 50), r.text
            r = httpx.get(str(clients["token"].base_url) + "/api/v1/alerts", timeout=10)
            assert r.status_code == 401, "the locked API must refuse a request without a token"
            got: dict[str, list[float]] = {"token": [], "off": []}
            for i in range(a.rounds):
                order = ("token", "off") if i % 2 == 0 else ("off", "token")
                for name in order:
                    got[name].append(rate(clients[name], a.requests))
            med = {k: statistics.median(v) for k, v in got.items()}
            ratio = med["token"] / med["off"]
            rounds = {k: ", ".join(f"{x:.0f}" for x in v) for k, v in got.items()}
            print(
                f"GET /api/v1/alerts ({min(a.alerts, 50)} alerts a page), {a.rounds} rounds of {a.requests}"
            )
            print(f"  with bearer token: {med['token']:8.1f} req/s median (rounds {rounds['token']})")
            print(f"  auth switched off: {med['off']:8.1f} req/s median (rounds {rounds['off']})")
            print(f"  ratio {ratio:.3f} (goal >= 0.95)")
        finally:
            for c in clients.values():
                c.close()
            for p in procs:
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
