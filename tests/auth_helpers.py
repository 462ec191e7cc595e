"""Real credentials for tests that exercise other things through the locked API."""

from __future__ import annotations

from campusmon.config import CampusConfig


def admin_token(cfg: CampusConfig, role: str = "admin", buildings: list[str] | None = None) -> str:
    """A fresh API token in the config's relational store (the same store the app under test reads)."""
    from api.auth.service import AuthStore
    from campusmon.db import init_db

    engine, sessions = init_db(cfg.database.url)
    try:
        raw, _ = AuthStore(sessions, ttl=0).create_token(f"test-{role}", role, buildings=buildings)
    finally:
        engine.dispose()
    return raw


def admin_headers(cfg: CampusConfig, role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(cfg, role)}"}
