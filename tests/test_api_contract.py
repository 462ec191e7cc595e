"""The HTTP API keeps its published contract: schemathesis, with all its checks, against the live API.

The API runs under uvicorn with the example campus (deploy/campus.yaml) against real Mosquitto and
InfluxDB, so /readyz is ready and every 5xx would be a real fault. schemathesis.toml in the
repository root lists the few operations whose rules JSON Schema cannot state, and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from campusmon.config import load_config
from campusmon.services import free_port, wait_port
from tests.auth_helpers import admin_headers, admin_token
from tests.conftest import SMALL_CAMPUS

ROOT = Path(__file__).resolve().parent.parent
ST = Path(sys.executable).with_name("st")
HUGE = "1" * 400
BIG_ID = str(2**63)  # one past the largest 64-bit row id

# The SSE stream never ends, so no generated request to it can complete; tests/test_alert_api.py
# covers it. A backtest evaluates every rule at every step of up to 400 days, minutes of CPU for
# one generated request, so it runs here only with its documented example (see the second run).
EXCLUDED = ("GET /api/v1/alerts/stream", "POST /api/v1/alerts/backtest")
TOKENS: dict[str, str] = {}


@pytest.fixture
def live_api(mosquitto, influxdb, tmp_path: Path, db_name: str) -> Iterator[str]:
    env = {
        **os.environ,
        "CAMPUSMON_INFLUXDB__URL": f"http://127.0.0.1:{influxdb.port}",
        "CAMPUSMON_INFLUXDB__DATABASE": db_name,
        "CAMPUSMON_DATABASE__URL": f"sqlite:///{tmp_path}/campus.sqlite",
        "CAMPUSMON_MQTT__PORT": str(mosquitto.port),
    }
    cfg = load_config(ROOT / "deploy" / "campus.yaml", environ=env)
    TOKENS["admin"] = admin_token(cfg)  # every route but the public ones needs an identity
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, start_jobs=False), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="contract-api", daemon=True)
    thread.start()
    try:
        wait_port(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").status_code == 200  # servers up: no 503 is expected
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


def _st(base: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(ST), "--config-file", str(ROOT / "schemathesis.toml"), "run", f"{base}/openapi.json"]
    cmd += ["--checks", "all", "--seed", "20261001", "--workers", "2", "--no-color", *args]
    cmd += ["--header", f"Authorization: Bearer {TOKENS['admin']}"]
    # cwd: schemathesis keeps a cache directory where it runs; it does not belong in the repository.
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_schemathesis_all_checks_pass(live_api: str, tmp_path: Path) -> None:
    excluded = [a for name in EXCLUDED for a in ("--exclude-name", name)]
    r = _st(live_api, tmp_path, "--max-examples", "40", *excluded)
    assert r.returncode == 0, r.stdout + r.stderr

    # The backtest with its documented example body: a real (one-day) run through every check.
    r = _st(live_api, tmp_path, "--include-name", EXCLUDED[1], "--phases", "examples")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout, r.stdout


# --- the defects the contract run found, each pinned by a direct test --------------------------------


@pytest.fixture
def client(influxdb, mosquitto, make_config) -> Iterator[TestClient]:
    cfg = make_config(mosquitto, influxdb, data=SMALL_CAMPUS)
    app = create_app(cfg, start_jobs=False)
    with TestClient(app, raise_server_exceptions=False, headers=admin_headers(cfg)) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/v1/alerts/backtest", "POST"),
        ("GET", "/api/v1/alerts/evaluate", "POST"),
        ("PUT", "/api/v1/targets/history", "GET"),
        ("OPTIONS", "/api/v1/targets", "GET, POST"),
        ("OPTIONS", "/api/v1/targets/1", "DELETE, GET, PATCH, PUT"),
        ("OPTIONS", "/api/v1/alerts/silences", "GET, POST"),
        ("DELETE", "/api/v1/alerts/1", "GET"),
    ],
)
def test_a_wrong_method_is_405_listing_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json() == {"error": "Method Not Allowed", "status": 405}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/alerts/{}", None),
        ("GET", "/api/v1/targets/{}", None),
        ("DELETE", "/api/v1/alerts/silences/{}", None),
        ("POST", "/api/v1/alerts/{}/assign", {"assignee": "ops"}),
        ("POST", "/api/v1/alerts/deliveries/{}/retry", None),
        ("GET", "/api/v1/ingest/rejections/{}/payload", None),
    ],
)
@pytest.mark.parametrize("ident", [BIG_ID, HUGE])
def test_a_path_id_beyond_64_bits_is_422(
    client: TestClient, method: str, path: str, body: dict | None, ident: str
) -> None:
    r = client.request(method, path.format(ident), json=body)
    assert r.status_code == 422, r.text
    assert r.json()["status"] == 422


@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/alerts?since={HUGE}",
        f"/api/v1/alerts/events?after={HUGE}",
        f"/api/v1/ingest/rejections?before={HUGE}",
        f"/api/v1/meters/e-dorm-1/readings?start={HUGE}",
        f"/api/v1/consumption?start={HUGE}",
    ],
)
def test_a_400_digit_number_in_the_query_is_422(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["status"] == 422


def test_the_targets_body_has_a_real_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ref = spec["paths"]["/api/v1/targets"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    assert {"scope", "type", "value"} <= set(body["required"])
    assert body["additionalProperties"] is False
    assert body["properties"]["type"]["enum"] == ["quota", "intensity", "per_capita", "reduction"]
    assert body["properties"]["value"]["exclusiveMinimum"] == 0
    patch = spec["paths"]["/api/v1/targets/{target_id}"]["patch"]["requestBody"]["content"][
        "application/json"
    ]
    assert "$ref" in patch["schema"]


def test_every_operation_documents_its_errors_as_json(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/api/v1/alerts/feed.atom"]["get"]["responses"]["200"]["content"] == {
        "application/atom+xml": {"schema": {"type": "string"}}
    }
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    assert list(resp["content"]) == ["application/json"], (method, path, code)
                    assert resp["content"]["application/json"]["schema"]["required"] == ["error", "status"]
            if "{" in path:
                assert "404" in op["responses"], (method, path)
