"""Users, tokens, sessions and the audit log: the one place that reads and writes them.

The CLI and the API routes both go through here, so a token made on the command line and one made
through the API are the same thing. Token and session look-ups are cached for ``ttl`` seconds so a
request costs a dictionary look-up, not a query; a revocation made in this process drops its
cache entry at once, one made by another process (the CLI) is seen within ``ttl``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.auth.models import ROLES, ApiToken, AuditEntry, AuthSession, User

log = logging.getLogger(__name__)
_hasher = PasswordHasher()
# Compared against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("campusmon-no-such-user")
TOKEN_PREFIX = "cm_"
LAST_USED_EVERY_S = 60.0


class AuthError(ValueError):
    """A request to the auth store that cannot be met (unknown user, bad role, …), in words."""


def rank(role: str) -> int:
    return ROLES.index(role)


def token_hash(raw: str) -> str:
    """SHA-256 is right here: a token has 256 random bits, so no slow hash is needed to resist guessing."""
    return hashlib.sha256(raw.encode()).hexdigest()


def _aware(d: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive; they were written in UTC."""
    return d.replace(tzinfo=UTC) if d is not None and d.tzinfo is None else d


@dataclass(frozen=True)
class Identity:
    """Who a request is. ``buildings`` empty: the whole campus."""

    name: str
    role: str
    buildings: frozenset[str] = frozenset()
    kind: str = "token"  # token | session | anonymous
    token_id: int | None = None
    user_id: int | None = None
    feed_only: bool = False
    expires_at: datetime | None = None
    csrf: str | None = None

    def may(self, role: str) -> bool:
        return rank(self.role) >= rank(role)

    def sees(self, building: str | None) -> bool:
        return not self.buildings or building in self.buildings

    @property
    def scoped(self) -> bool:
        return bool(self.buildings)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


ANONYMOUS_ADMIN = Identity("anonymous", "admin", kind="anonymous")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def check_buildings(buildings: list[str], known: Callable[[str], bool] | None) -> list[str]:
    bad = [b for b in buildings if known is not None and not known(b)]
    if bad:
        raise AuthError(f"unknown building(s): {', '.join(bad)}")
    return sorted(set(buildings))


def check_password(pw: str) -> str:
    if len(pw) < 10:
        raise AuthError("a password needs at least 10 characters")
    if len(pw) > 1000:
        raise AuthError("a password may have at most 1000 characters")
    return pw


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)


class LoginLimiter:
    """Failed logins per user name and per client address in a sliding window (per process)."""

    def __init__(self, per_user: int, per_client: int, window_s: float) -> None:
        self.per_user, self.per_client, self.window_s = per_user, per_client, window_s
        self._fails: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        f = self._fails.get(key)
        if f is None:
            return []
        f.times = [t for t in f.times if now - t < self.window_s]
        if not f.times:
            del self._fails[key]
            return []
        return f.times

    def blocked(self, user: str, client: str) -> float:
        """Seconds until another attempt is allowed; 0 if it is allowed now."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key, cap in ((f"u:{user}", self.per_user), (f"c:{client}", self.per_client)):
                ts = self._recent(key, now)
                if len(ts) >= cap:
                    waits.append(self.window_s - (now - ts[-cap]))
            return max(waits, default=0.0)

    def failed(self, user: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"u:{user}", f"c:{client}"):
                self._fails.setdefault(key, _Failures()).times.append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._fails.pop(f"u:{user}", None)


class AuthStore:
    def __init__(self, sessions: sessionmaker[Session], ttl: float = 5.0) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._used: dict[int, float] = {}
        self._lock = threading.Lock()

    # -- users ------------------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password: str,
        role: str,
        buildings: list[str] | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        check_role(role)
        bs = check_buildings(buildings or [], known)
        if not name or len(name) > 120 or any(c.isspace() for c in name) or name.startswith("token:"):
            raise AuthError("a user name is 1 to 120 characters, no spaces, not starting with 'token:'")
        h = _hasher.hash(check_password(password))
        with self.sessions() as s, s.begin():
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise AuthError(f"user {name!r} exists")
            u = User(name=name, password_hash=h, role=role, buildings=bs)
            s.add(u)
            s.flush()
            return user_json(u)

    def users(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [user_json(u) for u in s.scalars(select(User).order_by(User.name))]

    def _user(self, s: Session, name: str) -> User:
        u = s.scalar(select(User).where(User.name == name))
        if u is None:
            raise AuthError(f"no user {name!r}")
        return u

    def update_user(
        self,
        name: str,
        *,
        role: str | None = None,
        buildings: list[str] | None = None,
        disabled: bool | None = None,
        password: str | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """Any change of a user ends its sessions; disabling also stops its tokens (cache dropped)."""
        h = _hasher.hash(check_password(password)) if password is not None else None
        with self.sessions() as s, s.begin():
            u = self._user(s, name)
            if role is not None:
                u.role = check_role(role)
            if buildings is not None:
                u.buildings = check_buildings(buildings, known)
            if disabled is not None:
                u.disabled = disabled
            if h is not None:
                u.password_hash, u.password_changed_at = h, datetime.now(UTC)
            for sess in s.scalars(select(AuthSession).where(AuthSession.user_id == u.id)):
                s.delete(sess)
            out = user_json(u)
        self.forget()
        return out

    def has_admin(self) -> bool:
        with self.sessions() as s:
            q = select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False))
            return bool(s.scalar(q))

    # -- tokens -----------------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        role: str,
        *,
        user: str | None = None,
        buildings: list[str] | None = None,
        expires_in_s: int | None = None,
        feed_only: bool = False,
        created_by: str = "",
        known: Callable[[str], bool] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new token; the raw value is returned once and never stored."""
        check_role(role)
        bs = check_buildings(buildings or [], known)
        if feed_only and role != "viewer":
            raise AuthError("a feed token is read-only: role viewer")
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        exp = datetime.now(UTC) + timedelta(seconds=expires_in_s) if expires_in_s else None
        with self.sessions() as s, s.begin():
            uid = self._user(s, user).id if user else None
            t = ApiToken(
                token_hash=token_hash(raw),
                prefix=raw[: len(TOKEN_PREFIX) + 5],
                name=name[:120] or "token",
                user_id=uid,
                role=role,
                buildings=bs,
                feed_only=feed_only,
                created_by=created_by,
                expires_at=exp,
            )
            s.add(t)
            s.flush()
            return raw, token_json(t, user)

    def tokens(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            names = {u.id: u.name for u in s.scalars(select(User))}
            return [
                token_json(t, names.get(t.user_id or 0))
                for t in s.scalars(select(ApiToken).order_by(ApiToken.id))
            ]

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        with self.sessions() as s, s.begin():
            t = s.get(ApiToken, token_id)
            if t is None:
                raise AuthError(f"no token {token_id}")
            if t.revoked_at is None:
                t.revoked_at = datetime.now(UTC)
            out = token_json(t, None)
        self.forget()
        return out

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _fresh(self, key: str) -> tuple[Identity | None] | None:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return (hit[1],)
        return None

    def cached_token(self, raw: str) -> tuple[Identity | None] | None:
        """A fresh cache entry (as a 1-tuple, its identity possibly None), or None: call ``by_token``."""
        return self._fresh("t:" + token_hash(raw))

    def cached_session(self, raw: str) -> tuple[Identity | None] | None:
        return self._fresh("s:" + token_hash(raw))

    def by_token(self, raw: str) -> Identity | None:
        """The identity of a bearer token (None if unknown or revoked), read from the store and cached."""
        key = "t:" + token_hash(raw)
        ident = self._load_token(key[2:])
        now = time.monotonic()
        with self._lock:
            self._cache[key] = (now, ident)
        if ident is not None and ident.token_id is not None:
            if now - self._used.get(ident.token_id, -LAST_USED_EVERY_S) >= LAST_USED_EVERY_S:
                self._used[ident.token_id] = now
                self._touch(ident.token_id)
        return ident

    def _load_token(self, h: str) -> Identity | None:
        with self.sessions() as s:
            t = s.scalar(select(ApiToken).where(ApiToken.token_hash == h))
            if t is None or t.revoked_at is not None:
                return None
            role, buildings, name = t.role, set(t.buildings or []), f"token:{t.name}"
            if t.user_id is not None:
                u = s.get(User, t.user_id)
                if u is None or u.disabled:
                    return None
                role = min(role, u.role, key=rank)
                name = u.name
                if u.buildings:
                    buildings = buildings & set(u.buildings) if buildings else set(u.buildings)
                    if not buildings:
                        return None
            return Identity(
                name=name,
                role=role,
                buildings=frozenset(buildings),
                kind="token",
                token_id=t.id,
                user_id=t.user_id,
                feed_only=t.feed_only,
                expires_at=_aware(t.expires_at),
            )

    def _touch(self, token_id: int) -> None:
        try:
            with self.sessions() as s, s.begin():
                t = s.get(ApiToken, token_id)
                if t is not None:
                    t.last_used_at = datetime.now(UTC)
        except Exception as e:  # a busy store must not fail the request it counts
            log.warning("could not record the last use of token %s: %s", token_id, e)

    # -- sessions ---------------------------------------------------------------------------------

    def login(self, name: str, password: str, ttl_s: int) -> tuple[str, Identity] | None:
        """A new session for a right password; None otherwise (same cost for an unknown name)."""
        with self.sessions() as s:
            u = s.scalar(select(User).where(User.name == name))
            stored = u.password_hash if u is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if u is None or u.disabled:
            return None
        raw, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        exp = datetime.now(UTC) + timedelta(seconds=ttl_s)
        with self.sessions() as s, s.begin():
            s.execute(delete(AuthSession).where(AuthSession.expires_at < datetime.now(UTC)))  # ended ones
            s.add(AuthSession(id_hash=token_hash(raw), user_id=u.id, csrf=csrf, expires_at=exp))
            if _hasher.check_needs_rehash(stored):
                s.get(User, u.id).password_hash = _hasher.hash(password)  # type: ignore[union-attr]
        ident = Identity(
            u.name, u.role, frozenset(u.buildings or []), "session", user_id=u.id, expires_at=exp, csrf=csrf
        )
        return raw, ident

    def by_session(self, raw: str) -> Identity | None:
        key = "s:" + token_hash(raw)
        ident = self._load_session(key[2:])
        with self._lock:
            self._cache[key] = (time.monotonic(), ident)
        return ident

    def _load_session(self, h: str) -> Identity | None:
        with self.sessions() as s:
            row = s.get(AuthSession, h)
            if row is None:
                return None
            u = s.get(User, row.user_id)
            if u is None or u.disabled:
                return None
            return Identity(
                u.name,
                u.role,
                frozenset(u.buildings or []),
                "session",
                user_id=u.id,
                expires_at=_aware(row.expires_at),
                csrf=row.csrf,
            )

    def logout(self, raw: str) -> None:
        with self.sessions() as s, s.begin():
            row = s.get(AuthSession, token_hash(raw))
            if row is not None:
                s.delete(row)
        self.forget()

    # -- audit ------------------------------------------------------------------------------------

    def audit(
        self,
        actor: str,
        action: str,
        path: str = "",
        status: int = 0,
        client: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self.sessions() as s, s.begin():
            s.add(
                AuditEntry(
                    actor=actor[:200],
                    action=action[:200],
                    path=path,
                    status=status,
                    client=client[:100],
                    detail=detail,
                )
            )

    def audit_log(
        self, limit: int = 100, before: int | None = None, actor: str | None = None
    ) -> list[dict[str, Any]]:
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if before is not None:
            q = q.where(AuditEntry.id < before)
        if actor is not None:
            q = q.where(AuditEntry.actor == actor)
        with self.sessions() as s:
            return [
                {
                    "id": e.id,
                    "at": _aware(e.at).isoformat() if e.at else None,  # type: ignore[union-attr]
                    "actor": e.actor,
                    "action": e.action,
                    "path": e.path,
                    "status": e.status,
                    "client": e.client,
                    "detail": e.detail,
                }
                for e in s.scalars(q)
            ]


def _iso(d: datetime | None) -> str | None:
    d = _aware(d)
    return d.isoformat() if d is not None else None


def user_json(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "buildings": list(u.buildings or []),
        "disabled": bool(u.disabled),
        "created_at": _iso(u.created_at),
    }


def token_json(t: ApiToken, user: str | None) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "user": user,
        "role": t.role,
        "buildings": list(t.buildings or []),
        "feed_only": bool(t.feed_only),
        "created_by": t.created_by,
        "created_at": _iso(t.created_at),
        "expires_at": _iso(t.expires_at),
        "last_used_at": _iso(t.last_used_at),
        "revoked_at": _iso(t.revoked_at),
    }
