"""Identities on the API: users, tokens, sessions, roles, building scopes and the audit log.

``install_auth(app)`` must run before the app includes its routers: the guard is an app-level
dependency, and FastAPI copies those into a router when it is included.
"""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI

from api.auth.guard import AuditMiddleware, AuthRuntime, actor, guard, identity
from api.auth.service import AuthStore, Identity, LoginLimiter

__all__ = ["Identity", "actor", "identity", "install_auth"]
log = logging.getLogger(__name__)


def install_auth(app: FastAPI) -> None:
    cfg = app.state.cfg.auth
    store = AuthStore(app.state.sessions, cfg.token_cache_s)
    app.state.auth = AuthRuntime(
        cfg,
        store,
        LoginLimiter(cfg.login_max_failures_user, cfg.login_max_failures_client, cfg.login_window_s),
    )
    app.router.dependencies.append(Depends(guard))
    app.add_middleware(AuditMiddleware, fastapi_app=app)
    from api.auth.routes import router

    app.include_router(router)
    if not cfg.enabled:
        log.warning("auth.enabled is false: every request acts as an anonymous admin (benchmarks only)")
    elif not store.has_admin():
        log.warning(
            "no admin user yet: create the first with `campusmon users add NAME --role admin` "
            "(every API route except /healthz needs an identity)"
        )
