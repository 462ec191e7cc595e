"""``campusmon users …`` and ``campusmon tokens …``: identities made on the server's own command line.

These write the relational store directly (``database.url``), so the first admin can be made before
any identity exists; each change is written to the audit log as done by ``cli:<local user>``.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.auth.service import AuthError, AuthStore

users_app = typer.Typer(help="People who log in to the API (docs/security.md).", no_args_is_help=True)
tokens_app = typer.Typer(
    help="API tokens for programs and feed readers (docs/security.md).", no_args_is_help=True
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="campus.yaml (env CAMPUSMON_CONFIG)")]
BuildingsOpt = Annotated[
    str | None, typer.Option(help="comma-separated building ids it is limited to; default the whole campus")
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from the first line of stdin")
]


def _store(config: Path | None) -> tuple[AuthStore, object]:
    from campusmon.cli import config_or_exit
    from campusmon.db import init_db

    cfg = config_or_exit(config)
    _engine, sessions = init_db(cfg.database.url)
    return AuthStore(sessions, ttl=0), cfg


def _who() -> str:
    try:
        return "cli:" + getpass.getuser()
    except Exception:  # no login name (a container): still a CLI change
        return "cli"


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


def _fail(e: AuthError) -> None:
    typer.secho(str(e), err=True, fg="red")
    raise typer.Exit(1)


def _split(s: str | None) -> list[str]:
    return [b.strip() for b in (s or "").split(",") if b.strip()]


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    buildings: BuildingsOpt = None,
    password_stdin: PasswordStdin = False,
    config: ConfigOpt = None,
) -> None:
    """Create a user (the first admin: ``campusmon users add NAME --role admin``)."""
    store, cfg = _store(config)
    try:
        u = store.add_user(
            name, _password(password_stdin), role, _split(buildings), lambda b: cfg.building(b) is not None
        )
    except AuthError as e:
        _fail(e)
        return
    store.audit(_who(), "users add", detail={"user": name, "role": role, "buildings": u["buildings"]})
    typer.echo(f"user {u['name']} ({u['role']}{', ' + ','.join(u['buildings']) if u['buildings'] else ''})")


@users_app.command("list")
def users_list(config: ConfigOpt = None) -> None:
    store, _ = _store(config)
    for u in store.users():
        scope = ",".join(u["buildings"]) or "campus"
        typer.echo(f"{u['name']}\t{u['role']}\t{scope}\t{'disabled' if u['disabled'] else 'active'}")


@users_app.command("disable")
def users_disable(name: str, config: ConfigOpt = None) -> None:
    """Disable a user: its sessions end and its tokens stop working."""
    store, _ = _store(config)
    try:
        store.update_user(name, disabled=True)
    except AuthError as e:
        _fail(e)
    store.audit(_who(), "users disable", detail={"user": name})
    typer.echo(f"{name}: disabled (running API processes notice within auth.token_cache_s)")


@users_app.command("passwd")
def users_passwd(name: str, password_stdin: PasswordStdin = False, config: ConfigOpt = None) -> None:
    """Set a new password; the user's sessions end."""
    store, _ = _store(config)
    try:
        store.update_user(name, password=_password(password_stdin))
    except AuthError as e:
        _fail(e)
    store.audit(_who(), "users passwd", detail={"user": name})
    typer.echo(f"{name}: password changed")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="what the token is for, e.g. 'dashboard'")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    user: Annotated[str | None, typer.Option(help="act for this user (never above its role)")] = None,
    buildings: BuildingsOpt = None,
    expires_days: Annotated[float | None, typer.Option(help="expiry in days; default never")] = None,
    feed: Annotated[bool, typer.Option("--feed", help="a read-only feed token, usable as ?token=")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    store, cfg = _store(config)
    try:
        raw, t = store.create_token(
            name,
            role,
            user=user,
            buildings=_split(buildings),
            expires_in_s=int(expires_days * 86400) if expires_days else None,
            feed_only=feed,
            created_by=_who(),
            known=lambda b: cfg.building(b) is not None,
        )
    except AuthError as e:
        _fail(e)
        return
    store.audit(_who(), "tokens create", detail={"token": t["id"], "role": role, "user": user})
    typer.echo(f"token {t['id']} ({t['role']}): {raw}\n(shown once; send it as 'Authorization: Bearer …')")


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None) -> None:
    store, _ = _store(config)
    for t in store.tokens():
        state = "revoked" if t["revoked_at"] else "active"
        typer.echo(
            f"{t['id']}\t{t['prefix']}…\t{t['name']}\t{t['role']}{' feed' if t['feed_only'] else ''}\t"
            f"user={t['user'] or '-'}\tbuildings={','.join(t['buildings']) or 'campus'}\t"
            f"expires={t['expires_at'] or 'never'}\tlast_used={t['last_used_at'] or 'never'}\t{state}"
        )


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, config: ConfigOpt = None) -> None:
    """Revoke a token (running API processes refuse it within auth.token_cache_s)."""
    store, _ = _store(config)
    try:
        store.revoke_token(token_id)
    except AuthError as e:
        _fail(e)
    store.audit(_who(), "tokens revoke", detail={"token": token_id})
    typer.echo(f"token {token_id}: revoked")
