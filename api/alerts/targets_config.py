"""Targets declared in ``campus.yaml`` (``targets:``), loaded into accounting's targets store.

A campus keeps its quotas under version control. Loading is idempotent: a target is known by its
name; an unchanged one is left alone, a changed one is updated, a new one created, each with an audit
entry whose actor names the config file. Targets made at run time through the API are never touched,
and removing a target from the file does not delete it (delete it through the API).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import sessionmaker

from campusmon.config import CampusConfig, ConfigError


def config_targets(cfg: CampusConfig, source: str = "campus.yaml") -> list[Any]:
    """The validated ``targets:`` of the config; every problem names the file and the entry."""
    from api.accounting.targets import TargetInvalid, validate_spec

    out, errors, names = [], [], set()
    for i, raw in enumerate(cfg.targets):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not name:
            errors.append(f"{source}: targets[{i}]: a name is required (it is how a reload finds the target)")
            continue
        if name in names:
            errors.append(f"{source}: targets[{i}]: duplicate name {name!r}")
        names.add(name)
        try:
            out.append(validate_spec(raw, cfg))
        except TargetInvalid as e:
            errors.append(f"{source}: targets[{i}] ({name}): {e}")
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def load_config_targets(
    cfg: CampusConfig, sessions: sessionmaker, source: str = "campus.yaml"
) -> dict[str, int]:
    """Create or update the config's targets; returns how many were created, updated and unchanged."""
    from api.accounting import target_repo

    specs = config_targets(cfg, source)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    if not specs:
        return counts
    actor = f"config:{source}"
    with sessions() as s:
        by_name = {t.name: t for t in target_repo.all_targets(s)}
        for spec in specs:
            row = by_name.get(spec.name)
            if row is None:
                target_repo.create(s, spec, actor)
                counts["created"] += 1
            elif target_repo.as_spec(row) == spec:
                counts["unchanged"] += 1
            else:
                target_repo.update(s, row.id, spec, actor)
                counts["updated"] += 1
    return counts
