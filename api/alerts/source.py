"""Reading what rules need from InfluxDB, the quotas from accounting's targets table, and gateways' last status."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from api.alerts.rules.context import GatewayWord, Quota
from api.alerts.series import RATE, REGISTER
from campusmon.config import CampusConfig, Meter
from campusmon.db import GatewayStatus
from campusmon.influx import InfluxStore
from campusmon.quantities import MeterKind
from campusmon.reading import Reading

log = logging.getLogger(__name__)

CHUNK = 50
INSTANT_QUANTITIES = ("power_w", "power_factor", "current_a", "current_l1_a", "current_l2_a", "current_l3_a")


def _where_meters(ids: Sequence[str]) -> str:
    # Meter ids are validated as [A-Za-z0-9_.-]+ by the config, so they are safe inside quotes.
    return "(" + " OR ".join(f"\"meter\" = '{m}'" for m in ids) + ")"


def _per_meter(
    store: InfluxStore, meters: Iterable[Meter], query: Callable[[MeterKind, str], str]
) -> dict[str, list[tuple[int, float]]]:
    """Run ``query(kind, where)`` per meter kind in chunks of meters; points per meter, oldest first."""
    out: dict[str, list[tuple[int, float]]] = {}
    by_kind: dict[MeterKind, list[str]] = {}
    for m in meters:
        by_kind.setdefault(m.kind, []).append(m.id)
    for kind, ids in by_kind.items():
        for i in range(0, len(ids), CHUNK):
            for series in store.query(query(kind, _where_meters(ids[i : i + CHUNK]))):
                vals = out.setdefault(series["tags"].get("meter"), [])
                vals.extend((int(t), float(v)) for t, v in series["values"] if v is not None)
    return out


def fetch_registers(
    store: InfluxStore, meters: Iterable[Meter], start: int, end: int
) -> dict[str, list[tuple[int, float]]]:
    """Raw cumulative register readings of each meter in ``[start, end)``, oldest first."""
    return _per_meter(
        store,
        meters,
        lambda kind, where: (
            f'SELECT "{REGISTER[kind]}" FROM "{kind.value}" WHERE {where} AND time >= {int(start)}s '
            f'AND time < {int(end)}s GROUP BY "meter"'
        ),
    )


def fetch_rates(
    store: InfluxStore, meters: Iterable[Meter], start: int, end: int
) -> dict[str, list[tuple[int, float]]]:
    """Hourly peak of each meter's reported flow or power in ``[start, end)``: evidence that it moved."""
    return _per_meter(
        store,
        meters,
        lambda kind, where: (
            f'SELECT max("{RATE[kind]}") FROM "{kind.value}" WHERE {where} '
            f"AND time >= {int(start)}s AND time < {int(end)}s "
            f'GROUP BY time(1h), "meter" fill(none)'
        ),
    )


class ReadingSource(Protocol):
    """Where rules' readings come from: InfluxDB here, any store that answers the same three reads."""

    def registers(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]: ...

    def rates(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]: ...

    def instant(self, meters: Iterable[Meter], start: int, end: int) -> list[Reading]: ...


class InfluxSource:
    """The readings as stored in InfluxDB (``fetch_registers``, ``fetch_rates``, ``fetch_instant``)."""

    def __init__(self, store: InfluxStore) -> None:
        self.store = store

    def registers(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]:
        return fetch_registers(self.store, meters, start, end)

    def rates(self, meters: Iterable[Meter], start: int, end: int) -> dict[str, list[tuple[int, float]]]:
        return fetch_rates(self.store, meters, start, end)

    def instant(self, meters: Iterable[Meter], start: int, end: int) -> list[Reading]:
        return fetch_instant(self.store, meters, start, end)


def fetch_instant(store: InfluxStore, meters: Iterable[Meter], start: int, end: int) -> list[Reading]:
    """Power, power factor and current readings of the given meters, in time order (for replaying instant rules)."""
    ids = [m.id for m in meters if m.kind is MeterKind.ELECTRICITY]
    out: list[Reading] = []
    fields = ", ".join(f'"{q}"' for q in INSTANT_QUANTITIES)
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        q = (
            f'SELECT {fields} FROM "electricity" WHERE {_where_meters(part)} AND time >= {int(start)}s '
            f'AND time < {int(end)}s GROUP BY "meter"'
        )
        for series in store.query(q):
            meter = series["tags"].get("meter")
            cols = series["columns"]
            for row in series["values"]:
                ts = int(row[0])
                for name, v in zip(cols[1:], row[1:], strict=True):
                    if v is not None:
                        out.append(Reading(meter, name, float(v), ts))
    out.sort(key=lambda r: (r.ts, r.meter))
    return out


def load_gateway_status(sessions: sessionmaker | None) -> dict[str, GatewayWord]:
    """Each gateway's last status as ingest recorded it; none without a database or its table.

    The status only adds words to a gateway alert, so a store that cannot be read leaves it out
    (logged) rather than stopping the rule pass.
    """
    if sessions is None:
        return {}
    try:
        with sessions() as s:
            rows = list(s.scalars(select(GatewayStatus)))
    except SQLAlchemyError as e:
        log.warning("gateway status not read: %s", e)
        return {}
    out = {}
    for r in rows:
        at = r.received_at if r.received_at.tzinfo is not None else r.received_at.replace(tzinfo=UTC)
        out[r.gateway] = GatewayWord(r.state, int(at.timestamp()))
    return out


def load_quotas(cfg: CampusConfig, sessions: sessionmaker | None, first_day: object = None) -> list[Quota]:
    """Quota targets of the accounting capability (none when it is not installed or has none)."""
    if sessions is None:
        return []
    try:
        from api.accounting.campus import Scope, highest, in_category, scope_meters
        from api.accounting.target_repo import all_targets, as_spec
        from api.accounting.targets import in_force
    except ImportError:
        return []
    out: list[Quota] = []
    with sessions() as s:
        rows = [t for t in all_targets(s) if t.type == "quota"]
        specs = [(t.id, as_spec(t)) for t in rows]
    for tid, spec in specs:
        if first_day is not None and not in_force(spec, first_day, first_day):  # type: ignore[arg-type]
            continue
        kind = spec.kind or MeterKind.ELECTRICITY
        if spec.scope == "unit":
            out.extend(_unit_quota(cfg, tid, spec, kind))
            continue
        scope = Scope(spec.scope, spec.scope_id)
        ms = scope_meters(cfg, scope, kind)
        if spec.category and spec.category not in ("01000", "02000"):
            members = {
                m.id
                for m in cfg.meters
                if spec.scope == "campus" or _in_scope(cfg, m, spec.scope, spec.scope_id)
            }
            ms = highest(
                cfg,
                [
                    m
                    for m in cfg.meters
                    if m.kind is kind and m.id in members and in_category(m, spec.category)
                ],
            )
        out.append(
            Quota(
                scope=spec.scope,
                id=spec.scope_id,
                kind=kind.value,
                period=spec.period or "month",
                limit=spec.value,
                name=spec.name,
                building=spec.scope_id if spec.scope == "building" else "",
                meters=tuple(m.id for m in ms),
                target_id=tid,
                valid_from=spec.valid_from,
                valid_to=spec.valid_to,
            )
        )
    return out


def _unit_quota(cfg: CampusConfig, tid: int | None, spec: Any, kind: MeterKind) -> list[Quota]:
    """A unit's quota counts its shares as accounting does (``api.accounting.units``); none for a unit
    no longer in the config."""
    from api.accounting.units import term_meters, unit_terms

    unit = cfg.unit(spec.scope_id)
    if unit is None:
        return []
    terms = unit_terms(cfg, unit, kind)
    return [
        Quota(
            scope="unit",
            id=unit.id,
            kind=kind.value,
            period=spec.period or "month",
            limit=spec.value,
            name=spec.name,
            meters=tuple(m.id for m in term_meters(terms)),
            terms=tuple(
                (t.factor, tuple(m.id for m in t.meters), tuple(m.id for m in t.minus)) for t in terms
            ),
            target_id=tid,
            valid_from=spec.valid_from,
            valid_to=spec.valid_to,
        )
    ]


def _in_scope(cfg: CampusConfig, m: Meter, scope: str, scope_id: str) -> bool:
    if scope == "building":
        return m.building == scope_id
    b = cfg.building(m.building)
    return b is not None and b.group == scope_id
