"""Targets in the relational store: create, update, delete, each written with its audit record."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.accounting.models import Target, TargetAudit
from api.accounting.targets import TargetSpec, target_unit

FIELDS = (
    "name",
    "scope",
    "scope_id",
    "kind",
    "category",
    "type",
    "period",
    "value",
    "baseline_start",
    "baseline_end",
    "valid_from",
    "valid_to",
    "note",
)


def _plain(v: Any) -> Any:
    if isinstance(v, date | datetime):
        return v.isoformat()
    return getattr(v, "value", v)  # enums


def as_dict(t: Target) -> dict[str, Any]:
    out = {"id": t.id, **{f: _plain(getattr(t, f)) for f in FIELDS}}
    out["unit"] = target_unit(t.type, t.kind, t.period)
    out["created_at"] = _plain(t.created_at)
    out["updated_at"] = _plain(t.updated_at)
    return out


def as_spec(t: Target) -> TargetSpec:
    return TargetSpec.model_validate({f: getattr(t, f) for f in FIELDS})


def _audit(s: Session, t: Target, action: str, actor: str, before: dict[str, Any] | None) -> None:
    after = as_dict(t) if action != "delete" else None
    s.add(TargetAudit(target_id=t.id, action=action, actor=actor, before=before, after=after))


def _assign(t: Target, spec: TargetSpec) -> None:
    for f in FIELDS:
        setattr(t, f, _plain(getattr(spec, f)) if f == "kind" else getattr(spec, f))


def create(s: Session, spec: TargetSpec, actor: str) -> dict[str, Any]:
    t = Target()
    _assign(t, spec)
    s.add(t)
    s.flush()
    _audit(s, t, "create", actor, None)
    s.commit()
    return as_dict(t)


def update(s: Session, target_id: int, spec: TargetSpec, actor: str) -> dict[str, Any] | None:
    t = s.get(Target, target_id)
    if t is None:
        return None
    before = as_dict(t)
    _assign(t, spec)
    s.flush()
    _audit(s, t, "update", actor, before)
    s.commit()
    return as_dict(t)


def delete(s: Session, target_id: int, actor: str) -> bool:
    t = s.get(Target, target_id)
    if t is None:
        return False
    _audit(s, t, "delete", actor, as_dict(t))
    s.delete(t)
    s.commit()
    return True


def get(s: Session, target_id: int) -> Target | None:
    return s.get(Target, target_id)


def all_targets(s: Session, scope: str | None = None, scope_id: str | None = None) -> list[Target]:
    q = select(Target).order_by(Target.id)
    if scope:
        q = q.where(Target.scope == scope)
    if scope_id is not None:
        q = q.where(Target.scope_id == scope_id)
    return list(s.scalars(q))


def history(s: Session, target_id: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
    q = select(TargetAudit).order_by(TargetAudit.id.desc()).limit(limit)
    if target_id is not None:
        q = q.where(TargetAudit.target_id == target_id)
    return [
        {
            "id": a.id,
            "target_id": a.target_id,
            "action": a.action,
            "at": _plain(a.at),
            "actor": a.actor,
            "before": a.before,
            "after": a.after,
        }
        for a in s.scalars(q)
    ]
