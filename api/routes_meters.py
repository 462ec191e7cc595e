"""Meters from the registry and their readings from InfluxDB."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from api.auth import identity
from api.deps import ID_PATTERN, MeterId, errors, get_meter
from api.timeparse import DURATION_PATTERN, TIME_DOC, TIME_PATTERN, parse_duration, time_range
from campusmon.quantities import QUANTITIES

router = APIRouter(prefix="/api/v1/meters", tags=["meters"], responses=errors(422))

MAX_POINTS = 20000
QuantityName = Enum("QuantityName", {n: n for n in QUANTITIES}, type=str)  # type: ignore[misc]
_NO_METER = errors(404, e404="the meter is not in the campus registry")


def _meter_json(request: Request, meter_id: str) -> dict[str, Any]:
    m = get_meter(request, meter_id)
    b = request.app.state.cfg.building(m.building)
    return {
        **m.model_dump(mode="json", exclude_none=True),
        "building_name": b.name if b else "",
        "building_type": b.type if b else "",
        "quantities": [q.name for q in QUANTITIES.values() if q.kind == m.kind],
    }


@router.get("", responses=errors(404, e404="the building is not in the campus config"))
def list_meters(
    request: Request,
    building: str | None = Query(None, pattern=ID_PATTERN, max_length=200),
    kind: Literal["electricity", "water"] | None = None,
    category: str | None = Query(None, max_length=40, description="sub-item code prefix, e.g. 01A"),
) -> dict[str, Any]:
    """Meters in the registry, optionally filtered."""
    cfg = request.app.state.cfg
    if building is not None and cfg.building(building) is None:
        raise HTTPException(404, f"building {building!r} is not defined")
    mine = identity(request)  # a building-limited identity sees only its buildings' meters
    ms = [
        m
        for m in cfg.meters
        if mine.sees(m.building)
        and (building is None or m.building == building)
        and (kind is None or m.kind == kind)
        and (category is None or m.category.startswith(category))
    ]
    return {"count": len(ms), "meters": [m.model_dump(mode="json", exclude_none=True) for m in ms]}


@router.get("/{meter_id}", responses=_NO_METER)
def meter(request: Request, meter_id: MeterId) -> dict[str, Any]:
    return _meter_json(request, meter_id)


@router.get("/{meter_id}/latest", responses=_NO_METER | errors(503))
def latest(request: Request, meter_id: MeterId) -> dict[str, Any]:
    """The newest value of every quantity, each with its own timestamp, in one request."""
    m = get_meter(request, meter_id)
    names = [q.name for q in QUANTITIES.values() if q.kind == m.kind]
    q = ";".join(f'SELECT last("{n}") AS "{n}" FROM "{m.kind.value}" WHERE "meter" = $meter' for n in names)
    out: dict[str, Any] = {}
    for series in request.app.state.store.query(q, {"meter": meter_id}):
        name = series["columns"][1]
        for ts, v in series["values"]:
            out[name] = {"value": v, "ts": ts, "unit": QUANTITIES[name].unit}
    return {"meter": meter_id, "latest": out}


@router.get(
    "/{meter_id}/readings",
    responses=_NO_METER
    | errors(
        503,
        e422="invalid parameter, start not before end, a quantity of the other kind, or too many buckets",
    ),
)
def readings(
    request: Request,
    meter_id: MeterId,
    start: str | None = Query(None, pattern=TIME_PATTERN, description=TIME_DOC + "; default end - 24 h"),
    end: str | None = Query(None, pattern=TIME_PATTERN, description=TIME_DOC + "; default now"),
    quantity: list[QuantityName] | None = Query(  # type: ignore[valid-type]
        None, description="repeatable; default every quantity of the meter"
    ),
    every: str | None = Query(
        None,
        pattern=DURATION_PATTERN,
        description="downsample: 15m, 1h, 1d (cumulative: last; rates: mean)",
    ),
    limit: int = Query(MAX_POINTS, ge=1, le=MAX_POINTS),
) -> dict[str, Any]:
    """Raw or downsampled readings of one meter over a time range."""
    m = get_meter(request, meter_id)
    cfg = request.app.state.cfg
    s, e = time_range(start, end, cfg.site.tz)
    names = (
        [q.value for q in quantity] if quantity else [q.name for q in QUANTITIES.values() if q.kind == m.kind]
    )
    for n in names:
        q = QUANTITIES.get(n)
        if q is None or q.kind != m.kind:
            raise HTTPException(
                422,
                f"quantity {n!r} is not a {m.kind.value} quantity; valid: "
                + ", ".join(x.name for x in QUANTITIES.values() if x.kind == m.kind),
            )
    where = f'"meter" = $meter AND time >= {s}s AND time < {e}s'
    if every:
        step = parse_duration(every, "every")
        if (e - s) / step > MAX_POINTS:
            raise HTTPException(422, f"{(e - s) // step} buckets requested; at most {MAX_POINTS}")
        fields = ", ".join(f'{"last" if QUANTITIES[n].cumulative else "mean"}("{n}") AS "{n}"' for n in names)
        q = f'SELECT {fields} FROM "{m.kind.value}" WHERE {where} GROUP BY time({step}s) fill(none)'
    else:
        fields = ", ".join(f'"{n}"' for n in names)
        q = f'SELECT {fields} FROM "{m.kind.value}" WHERE {where} LIMIT {limit}'
    series = request.app.state.store.query(q, {"meter": meter_id})
    cols = ["ts", *names]
    points: list[list[Any]] = []
    for sr in series:
        idx = [sr["columns"].index(n) for n in names]
        for row in sr["values"]:
            if any(row[i] is not None for i in idx):
                points.append([row[0], *(row[i] for i in idx)])
    return {
        "meter": meter_id,
        "start": s,
        "end": e,
        "every": every,
        "columns": cols,
        "units": {n: QUANTITIES[n].unit for n in names},
        "count": len(points),
        "points": points,
    }
