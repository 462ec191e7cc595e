"""The OpenAPI document says what the guard enforces: each operation's credentials and its 401/403."""

from __future__ import annotations

from typing import Any

from api.auth.permissions import permission

SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API token (`campusmon tokens create`)"},
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "campusmon_session",
        "description": "the login cookie of POST /api/v1/auth/login; writes also need X-CSRF-Token",
    },
    "feedToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "a feed token (`campusmon tokens create --feed`), on feed routes only",
    },
}
_WHO = [{"bearer": []}, {"session": []}]


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Security requirements and the 401/403 answers of every operation, from the permission table."""
    from api.deps import errors

    extra = errors(
        401,
        403,
        e401="no credentials, or an unknown, revoked or expired token or session",
        e403="the identity's role or buildings do not reach this route, or the CSRF token is missing",
    )
    schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEMES)
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            perm = permission(method.upper(), path)
            if perm is None or perm.level == "public":
                op["security"] = []
                continue
            if perm.level == "ops":  # public on loopback by default, so credentials are optional
                op["security"] = [{}, *_WHO]
            elif perm.level == "feed":
                op["security"] = [*_WHO, {"feedToken": []}]
            else:
                op["security"] = list(_WHO)
            responses = op.setdefault("responses", {})
            for code, body in extra.items():
                responses.setdefault(str(code), body)
    return schema
