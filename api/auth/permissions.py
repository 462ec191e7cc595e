"""Who may call which route: one table, keyed by (method, path template), read by ``api.auth.guard``.

A route missing here is refused (403) and fails the route-matrix test, so a new route cannot ship
unlocked by accident. Levels:

- ``public``: no credentials (liveness, the OpenAPI document, login).
- ``ops``: public from a loopback client when ``auth.ops_public_on_loopback`` (default), otherwise ``read``.
- ``read``: any identity, viewer and up. ``feed``: like ``read``, and a feed-only token may also be
  passed as ``?token=`` (feed readers cannot send headers).
- ``operate``: operator and admin. ``admin``: admin only.

Scope says how a building-limited identity is checked:

- ``any``: the route shows nothing of a building (rules, one's own identity).
- ``campus``: campus-wide data or action; a building-limited identity is refused (403).
- ``filtered``: the route itself narrows what it returns to the identity's buildings.
- ``building:<param>``, ``meter:<param>``, ``alert:<param>``, ``target:<param>``: the path parameter
  names a building, or a row whose building is checked; another building's row is 404, as if absent.
- ``consumption``: the ``scope`` query parameter (``building:<id>`` or ``meter:<id>``) is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("public", "ops", "read", "feed", "operate", "admin")
# The role a level needs (ops and feed fall back to read).
ROLE_OF = {"ops": "viewer", "read": "viewer", "feed": "viewer", "operate": "operator", "admin": "admin"}


@dataclass(frozen=True)
class Perm:
    level: str
    scope: str = "campus"


P = Perm
A = "/api/v1/alerts"
T = "/api/v1/targets"
M = "/api/v1/meters"
AUTH = "/api/v1/auth"
C = "/console"

PERMISSIONS: dict[tuple[str, str], Perm] = {
    # the OpenAPI document and its viewers (FastAPI's own routes)
    ("GET", "/openapi.json"): P("public", "any"),
    ("GET", "/docs"): P("public", "any"),
    ("GET", "/docs/oauth2-redirect"): P("public", "any"),
    ("GET", "/redoc"): P("public", "any"),
    # operations
    ("GET", "/healthz"): P("public", "any"),
    ("GET", "/readyz"): P("ops", "any"),
    ("GET", "/metrics"): P("ops", "campus"),
    # meters and readings
    ("GET", M): P("read", "filtered"),
    ("GET", M + "/{meter_id}"): P("read", "meter:meter_id"),
    ("GET", M + "/{meter_id}/latest"): P("read", "meter:meter_id"),
    ("GET", M + "/{meter_id}/readings"): P("read", "meter:meter_id"),
    # ingest: a device pushing readings over HTTP holds an operator token
    ("POST", "/api/v1/readings"): P("operate", "campus"),
    ("GET", "/api/v1/ingest/rejections"): P("read", "campus"),
    ("GET", "/api/v1/ingest/rejections/{message_id:int}/payload"): P("read", "campus"),
    # accounting
    ("GET", "/api/v1/consumption"): P("read", "consumption"),
    ("GET", "/api/v1/buildings/{building_id}/summary"): P("read", "building:building_id"),
    ("GET", "/api/v1/rankings"): P("read", "campus"),
    ("GET", "/api/v1/reports/monthly"): P("read", "campus"),
    # units, fuel, hand-read meters, factors, annual assessment, cost allocation (docs/assessment.md)
    ("GET", "/api/v1/factors"): P("read", "any"),
    ("GET", "/api/v1/units"): P("read", "campus"),
    ("GET", "/api/v1/units/{unit_id}/consumption"): P("read", "campus"),
    ("GET", "/api/v1/rankings/units"): P("read", "campus"),
    ("GET", "/api/v1/assessment/annual"): P("read", "campus"),
    ("GET", "/api/v1/assessment/overrides"): P("read", "campus"),
    ("POST", "/api/v1/assessment/overrides"): P("admin", "campus"),
    ("GET", "/api/v1/fuel"): P("read", "campus"),
    ("POST", "/api/v1/fuel"): P("operate", "campus"),
    ("POST", "/api/v1/readings/manual"): P("operate", "campus"),
    ("GET", "/api/v1/allocation/monthly"): P("read", "campus"),
    ("GET", T): P("read", "campus"),
    ("GET", T + "/history"): P("read", "campus"),
    ("POST", T): P("operate", "campus"),
    ("GET", T + "/{target_id:int}"): P("read", "target:target_id"),
    ("PUT", T + "/{target_id:int}"): P("operate", "campus"),
    ("PATCH", T + "/{target_id:int}"): P("operate", "campus"),
    ("DELETE", T + "/{target_id:int}"): P("operate", "target:target_id"),
    ("GET", T + "/{target_id:int}/history"): P("read", "target:target_id"),
    # alerts
    ("GET", A): P("read", "filtered"),
    ("GET", A + "/rules"): P("read", "any"),
    ("GET", A + "/stream"): P("read", "campus"),
    ("GET", A + "/events"): P("read", "campus"),
    ("GET", A + "/feed.atom"): P("feed", "campus"),
    ("GET", A + "/deliveries"): P("admin", "campus"),
    ("POST", A + "/deliveries/{delivery_id:int}/retry"): P("admin", "campus"),
    ("GET", A + "/silences"): P("read", "campus"),
    ("POST", A + "/silences"): P("operate", "campus"),
    ("DELETE", A + "/silences/{silence_id:int}"): P("operate", "campus"),
    ("POST", A + "/backtest"): P("admin", "campus"),
    ("POST", A + "/evaluate"): P("admin", "campus"),
    ("GET", A + "/{alert_id:int}"): P("read", "alert:alert_id"),
    ("POST", A + "/{alert_id:int}/ack"): P("operate", "alert:alert_id"),
    ("POST", A + "/{alert_id:int}/clear"): P("operate", "alert:alert_id"),
    ("POST", A + "/{alert_id:int}/assign"): P("operate", "alert:alert_id"),
    ("POST", A + "/{alert_id:int}/notes"): P("operate", "alert:alert_id"),
    # identities
    ("POST", AUTH + "/login"): P("public", "any"),
    ("POST", AUTH + "/logout"): P("read", "any"),
    ("GET", AUTH + "/me"): P("read", "any"),
    ("GET", AUTH + "/users"): P("admin", "campus"),
    ("POST", AUTH + "/users"): P("admin", "campus"),
    ("PATCH", AUTH + "/users/{name}"): P("admin", "campus"),
    ("GET", AUTH + "/tokens"): P("admin", "campus"),
    ("POST", AUTH + "/tokens"): P("admin", "campus"),
    ("DELETE", AUTH + "/tokens/{token_id:int}"): P("admin", "campus"),
    ("GET", AUTH + "/audit"): P("admin", "campus"),
    # console core (api/console/): static files, login, language, overview, buildings, meters
    ("GET", "/static"): P("public", "any"),
    ("GET", C): P("read", "any"),
    ("GET", C + "/login"): P("public", "any"),
    ("POST", C + "/login"): P("public", "any"),
    ("POST", C + "/logout"): P("read", "any"),
    ("GET", C + "/lang"): P("public", "any"),
    ("GET", C + "/"): P("read", "filtered"),
    ("GET", C + "/ranking"): P("read", "filtered"),
    ("GET", C + "/buildings"): P("read", "filtered"),
    ("GET", C + "/buildings/{building_id}"): P("read", "building:building_id"),
    ("GET", C + "/buildings/{building_id}/live"): P("read", "building:building_id"),
    ("GET", C + "/meters/{meter_id}"): P("read", "meter:meter_id"),
    ("GET", C + "/meters/{meter_id}/readings.csv"): P("read", "meter:meter_id"),
    # console alert inbox (its actions are requests to the API's own alert routes)
    ("GET", C + "/alerts"): P("read", "filtered"),
    ("GET", C + "/alerts/{alert_id:int}/card"): P("read", "alert:alert_id"),
    ("GET", C + "/data/alerts/{alert_id:int}/evidence"): P("read", "alert:alert_id"),
    # console targets (writes go through the API's own target functions), reports, admin
    ("GET", C + "/targets"): P("read", "campus"),
    ("POST", C + "/targets"): P("operate", "campus"),
    ("GET", C + "/targets/{target_id:int}"): P("read", "target:target_id"),
    ("POST", C + "/targets/{target_id:int}"): P("operate", "campus"),
    ("POST", C + "/targets/{target_id:int}/delete"): P("operate", "target:target_id"),
    ("GET", C + "/reports"): P("read", "campus"),
    ("GET", C + "/admin"): P("admin", "campus"),
    ("POST", C + "/admin/users"): P("admin", "campus"),
    ("POST", C + "/admin/users/{name}"): P("admin", "campus"),
    ("POST", C + "/admin/tokens"): P("admin", "campus"),
    ("POST", C + "/admin/tokens/{token_id:int}/revoke"): P("admin", "campus"),
    ("POST", C + "/admin/devices"): P("admin", "campus"),
    ("POST", C + "/admin/devices/{name}/rotate"): P("admin", "campus"),
    ("POST", C + "/admin/devices/{name}/revoke"): P("admin", "campus"),
}


def permission(method: str, path: str) -> Perm | None:
    """The declared permission; HEAD is GET's."""
    m = "GET" if method == "HEAD" else method
    return PERMISSIONS.get((m, path))
