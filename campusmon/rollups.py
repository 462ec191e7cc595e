"""Hourly consumption rollups: the consumption policy applied once per reading, kept up incrementally.

For every meter and every cumulative quantity of its kind, the hourly consumption derived by
``api.accounting.consumption`` (rollover, resets, quarantine, gaps, duplicates) is written to the
InfluxDB measurement ``energy_hourly`` (docs/influxdb-schema.md), one point per local hour of the
site time zone, with per-hour flags. Readers (``api.accounting.rolled``) sum hours instead of
re-deriving raw registers; they read raw readings only after the watermark (docs/consumption.md).

Incremental upkeep:

- a per-(meter, quantity) watermark in the relational store: hours before ``until_ts`` are final;
- the ingest path marks, per meter, the earliest reading time it stored since the last pass
  (``rollup_dirty``, an upsert with min, so several collectors can share the load);
- a pass extends each due series from ``resume_ts`` (a few accepted readings before the watermark,
  so the policy resumes in exactly the state a full derivation has there), and re-derives a late
  reading's hours from the stored readings just before it (``context_readings``), leaving out those
  the stored derivation quarantined. Points are overwritten idempotently (same series and time),
  and the watermark is committed after the points are stored, so a pass killed at any moment is
  simply done again.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import sub
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.accounting import periods
from api.accounting.consumption import Curve, Event, Limits, derive_columns
from campusmon.config import CampusConfig, Influx, Meter
from campusmon.db import RollupDirty, RollupEvent, RollupMonth, RollupWatermark
from campusmon.influx import InfluxStore, QueryError, _escape_tag, tag_lookup
from campusmon.quantities import QUANTITIES, MeterKind

log = logging.getLogger(__name__)

MEASUREMENT = "energy_hourly"
# Points are read this far past a window so the interval that spans its end has both readings.
LOOKAROUND_S = 62 * 86400
# A pass resumes this many accepted readings before the watermark: a reset's estimate needs the
# interval before the break, so three readings make the resumed policy state exact.
RESUME_POINTS = 3
# A late reading is re-derived with this many stored readings before it: the policy's decisions
# about a reading depend on the previous accepted one and the next one only, so readings two or
# more before the late one keep their fate, and the derivation restarts in the full one's state.
CONTEXT_READINGS = 10


def context_readings(meter: Meter, context_s: int = 2 * 3600) -> int:
    """Readings of context before a late one: ``context_s`` (at least two hours) of them, so whole
    hours lie between the restart and the hours the late reading can change."""
    return max(CONTEXT_READINGS, max(context_s, 2 * 3600) // max(meter.interval_s, 1) + 4)


HOD_FIELDS = tuple(f"h{h:02d}" for h in range(24))


def _escape_str(v: str) -> str:
    """A string literal's content in InfluxQL."""
    return v.replace("\\", "\\\\").replace("'", "\\'")


def cumulative_quantities(kind: MeterKind) -> list[str]:
    """Every cumulative register of a kind, read from the vocabulary (no unit is hard-coded)."""
    return [q.name for q in QUANTITIES.values() if q.cumulative and q.kind is kind]


@dataclass(frozen=True, slots=True)
class HourRow:
    """One rolled-up local hour of one meter's quantity."""

    hour: datetime  # UTC start of the hour
    quantity: str
    value: float  # consumption in the hour, in the quantity's unit
    estimated_share: float  # share of the hour inside a gap or a register break (0..1)
    quarantined: int  # readings kept out by the policy
    reset: bool  # a reset, replacement or level shift happened in the hour
    readings: int  # distinct reading times in the hour, quarantined ones included
    rollovers: int = 0
    resets: int = 0
    # What window rules need besides consumption (api.alerts.engine): whether the hour lies inside
    # the data with no gap longer than ``gap_limit`` (None in rollups written before this field), and
    # the offsets (s) of its first and last reading from the hour's start (None without a reading).
    known: bool | None = None
    first_s: int | None = None
    last_s: int | None = None


@dataclass(slots=True)
class RollupStats:
    meters: int = 0  # meters processed
    series: int = 0  # (meter, quantity) derived
    late: int = 0  # series re-derived for late or out-of-order readings
    hours_written: int = 0
    readings_read: int = 0
    requests: int = 0
    seconds: float = 0.0

    def add(self, other: RollupStats) -> None:
        for f in ("meters", "series", "late", "hours_written", "readings_read", "requests"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.seconds += other.seconds


# --- where the rollups live ------------------------------------------------------------------


def rollup_source(influx: Influx) -> str:
    """``"rp"."energy_hourly"``: rollups sit in their own retention policy (v2: DBRP-mapped bucket)."""
    return f'"{influx.rollup_retention_policy}"."{MEASUREMENT}"'


def write_target(influx: Influx) -> str | None:
    if influx.backend == "v2":
        return influx.rollup_bucket
    return influx.rollup_retention_policy


def retention_statements(ic: Influx) -> list[str]:
    """InfluxDB 1.x statements (admin only) that keep rollups for ever and raw readings for
    ``influxdb.raw_retention``: run by whoever sets the server up (``campusmon services``, the demo)
    and tried again by the rollup maintainer."""
    db, rp = ic.database, ic.rollup_retention_policy
    stmts = [f'CREATE RETENTION POLICY "{rp}" ON "{db}" DURATION INF REPLICATION 1']
    if ic.retention_policy and ic.retention_policy != rp:
        stmts.append(f'ALTER RETENTION POLICY "{ic.retention_policy}" ON "{db}" DURATION {ic.raw_retention}')
    return stmts


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _seconds(duration: str) -> int:
    """``104w``, ``17472h0m0s``, ``INF``/``0s`` (for ever: 0) in seconds."""
    if duration.upper() == "INF":
        return 0
    return sum(int(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)([smhdw])", duration))


def _policies(store: InfluxStore, db: str) -> dict[str, int]:
    """Retention policies of ``db`` and their durations (s, 0 = for ever); empty if they cannot be read."""
    try:
        series = store.query(f'SHOW RETENTION POLICIES ON "{db}"')
    except Exception:
        return {}
    out: dict[str, int] = {}
    for sr in series:
        idx = {c: k for k, c in enumerate(sr.get("columns", []))}
        if "name" not in idx or "duration" not in idx:
            continue
        for v in sr.get("values", []):
            out[str(v[idx["name"]])] = _seconds(str(v[idx["duration"]]))
    return out


def _in_force(stmt: str, have: dict[str, int], ic: Influx) -> bool:
    """Whether a statement of ``retention_statements`` would change nothing (so a user without the
    right to run it is not told it failed)."""
    if stmt.startswith("CREATE"):
        return have.get(ic.rollup_retention_policy) == 0
    return have.get(ic.retention_policy) == _seconds(ic.raw_retention)


def ensure_retention(store: InfluxStore, cfg: CampusConfig) -> list[str]:
    """Rollups for ever, raw readings for ``influxdb.raw_retention``; returns what could not be done.

    v1: ``CREATE RETENTION POLICY <rollups> DURATION INF`` and ``ALTER`` of the raw policy's duration.
    v2: the bucket's own retention applies to raw readings (set it on the bucket); the rollup bucket
    (``influxdb.rollup_bucket``, default the same bucket) gets a DBRP mapping for InfluxQL reads.
    Best effort: a user without the right is told, and rollups still work in the default policy's
    lifetime.
    """
    ic = cfg.influxdb
    problems: list[str] = []
    if ic.backend == "v1":
        try:
            store.ensure_database()
        except Exception as e:
            problems.append(f"create database: {e}")
        have = _policies(store, ic.database)
        stmts = [q for q in retention_statements(ic) if not _in_force(q, have, ic)]
        for q in stmts:
            try:
                store.query(q)
            except QueryError as e:
                if "already exists" not in str(e):
                    problems.append(f"{q}: {e}")
            except Exception as e:
                problems.append(f"{q}: {e}")
        return problems
    try:  # pragma: no cover - needs an InfluxDB 2.x server
        from influxdb_client.domain.dbrp_create import DBRPCreate
        from influxdb_client.service.dbr_ps_service import DBRPsService

        client = store.client  # type: ignore[attr-defined]
        bucket = client.buckets_api().find_bucket_by_name(ic.rollup_bucket or ic.bucket)
        if bucket is not None:
            svc = DBRPsService(client.api_client)
            have = svc.get_dbrps(org_id=bucket.org_id, db=ic.database, rp=ic.rollup_retention_policy)
            if not (have.content or []):
                svc.post_dbrp(
                    DBRPCreate(
                        org_id=bucket.org_id,
                        bucket_id=bucket.id,
                        database=ic.database,
                        retention_policy=ic.rollup_retention_policy,
                        default=False,
                    )
                )
    except Exception as e:
        problems.append(f"DBRP mapping for rollups: {e}")
    return problems


# --- new-data marks (written by the ingest path) ---------------------------------------------


def mark_dirty(sessions: sessionmaker[Session], marks: dict[str, int]) -> None:
    """Record per meter the earliest reading time just stored: one upsert, min of old and new.

    Called after the readings are in InfluxDB and before they are acked, so a pass that clears a
    mark has already been able to read what the mark stands for.
    """
    if not marks:
        return
    rows = [{"meter": m, "dirty_from": int(t), "version": 1} for m, t in sorted(marks.items())]
    with sessions.begin() as s:
        name = s.get_bind().dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(RollupDirty)
            least: Callable[..., Any] = func.least
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(RollupDirty)
            least = func.min
        stmt = stmt.on_conflict_do_update(
            index_elements=["meter"],
            set_={
                "dirty_from": least(RollupDirty.dirty_from, stmt.excluded.dirty_from),
                "version": RollupDirty.version + 1,
            },
        )
        s.execute(stmt, rows)


def dirty_marks(sessions: sessionmaker[Session], meter_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{meter: (dirty_from, version)}`` for the given meters."""
    out: dict[str, tuple[int, int]] = {}
    ids = sorted(set(meter_ids))
    with sessions() as s:
        for i in range(0, len(ids), 500):
            for r in s.execute(select(RollupDirty).where(RollupDirty.meter.in_(ids[i : i + 500]))).scalars():
                out[r.meter] = (r.dirty_from, r.version)
    return out


def watermarks(
    sessions: sessionmaker[Session], meter_ids: Iterable[str]
) -> dict[tuple[str, str], RollupWatermark]:
    out: dict[tuple[str, str], RollupWatermark] = {}
    ids = sorted(set(meter_ids))
    with sessions() as s:
        for i in range(0, len(ids), 500):
            q = select(RollupWatermark).where(RollupWatermark.meter.in_(ids[i : i + 500]))
            for r in s.execute(q).scalars():
                out[(r.meter, r.quantity)] = r
    return out


# The longest InfluxQL text sent in one request (it travels in the URL of a GET).
MAX_QUERY = 30_000


def query_parts(stmts: list[str]) -> list[list[str]]:
    """Statements grouped into requests whose joined text stays under MAX_QUERY characters."""
    parts: list[list[str]] = []
    size = 0
    for st in stmts:
        if not parts or size + len(st) + 1 > MAX_QUERY:
            parts.append([])
            size = 0
        parts[-1].append(st)
        size += len(st) + 1
    return parts


def query_all(store: InfluxStore, stmts: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Every statement's series, in as few requests as a URL carries; with the error's text instead
    where the database or its rollup retention policy is not there yet (nothing stored so far)."""
    series: list[dict[str, Any]] = []
    try:
        for part in query_parts(stmts):
            series += store.query(";".join(part), chunked=True)
    except QueryError as e:
        if "not found" in str(e):
            return [], str(e)
        raise
    return series, None


# --- reading rollups -------------------------------------------------------------------------


def _ts(t: int | datetime) -> int:
    return int(t.timestamp()) if isinstance(t, datetime) else int(t)


def meter_regex(ids: Iterable[str]) -> str:
    return "|".join(re.escape(i) for i in sorted(ids))


def read_hourly(
    store: InfluxStore,
    meter_ids: Iterable[str],
    start: int | datetime,
    end: int | datetime,
    sessions: sessionmaker[Session] | None = None,
    quantities: Iterable[str] | None = None,
) -> dict[str, list[HourRow]]:
    """Rolled-up hours of the meters in ``[start, end)``, every cumulative quantity (or ``quantities``), oldest first.

    With ``sessions``, only final hours (before each series' watermark) are returned; later ones may
    be rewritten by the next pass, and the caller takes them from raw readings.
    """
    ids = sorted(set(meter_ids))
    out: dict[str, list[HourRow]] = {m: [] for m in ids}
    if not ids:
        return out
    t0, t1 = _ts(start), _ts(end)
    cfg: Influx = store.cfg  # type: ignore[attr-defined]
    limit: dict[tuple[str, str], int] = {}
    if sessions is not None:
        limit = {k: w.until_ts for k, w in watermarks(sessions, ids).items()}
    cols = (
        "value",
        "estimated_share",
        "quarantined",
        "reset",
        "readings",
        "rollovers",
        "known",
        "first_s",
        "last_s",
    )
    sel = ",".join(f'"{c}"' for c in cols)
    only = ""
    if quantities is not None:
        only = f' AND "quantity" =~ /^({meter_regex(quantities)})$/'
    stmts = []
    for i in range(0, len(ids), 1000):
        rx = meter_regex(ids[i : i + 1000])
        stmts.append(
            f"SELECT {sel} FROM {rollup_source(cfg)} WHERE time >= {t0}s AND time < {t1}s"
            f' AND "meter" =~ /^({rx})$/{only} GROUP BY "meter", "quantity"'
        )
    series, missing = query_all(store, stmts)
    if missing:
        return out
    for s in series:
        mid, q = s["tags"].get("meter"), s["tags"].get("quantity")
        if mid not in out or q is None:
            continue
        until = limit.get((mid, q)) if sessions is not None else None
        if sessions is not None and until is None:
            continue
        idx = {c: k for k, c in enumerate(s["columns"])}
        for v in s["values"]:
            t = int(v[0])
            if until is not None and t >= until:
                continue
            resets = int(v[idx["reset"]] or 0)
            out[mid].append(
                HourRow(
                    hour=datetime.fromtimestamp(t, UTC),
                    quantity=q,
                    value=float(v[idx["value"]] or 0.0),
                    estimated_share=float(v[idx["estimated_share"]] or 0.0),
                    quarantined=int(v[idx["quarantined"]] or 0),
                    reset=resets > 0,
                    readings=int(v[idx["readings"]] or 0),
                    rollovers=int(v[idx["rollovers"]] or 0),
                    resets=resets,
                    known=None if v[idx["known"]] is None else bool(v[idx["known"]]),
                    first_s=_opt_int(v[idx["first_s"]]),
                    last_s=_opt_int(v[idx["last_s"]]),
                )
            )
    for rows in out.values():
        rows.sort(key=lambda r: (r.hour, r.quantity))
    return out


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


# --- deriving hours --------------------------------------------------------------------------


@dataclass(slots=True)
class Derived:
    """What one derivation produced for the hours ``[start, until)`` of one series."""

    start: int
    until: int
    hours: list[int]
    values: list[float]
    shares: list[float]
    readings: list[int]
    quarantined: list[int]
    resets: list[int]
    rollovers: list[int]
    events: list[RollupEvent]
    known: list[bool] = field(default_factory=list)
    first_s: list[int | None] = field(default_factory=list)
    last_s: list[int | None] = field(default_factory=list)
    hods: list[int] = field(default_factory=list)  # each hour's local hour of day (0..23)


def gap_limit(meter: Meter) -> int:
    """A gap longer than this is missing data, not a slow meter: window rules skip hours inside it."""
    return max(3 * meter.interval_s, 2 * 3600)


def known_hours(
    pts: list[int] | Any, bounds: list[int], limit: int, first: int | None, last: int | None
) -> list[bool]:
    """Hours ``bounds[i]..bounds[i+1]`` inside ``[first, last]`` that overlap no gap longer than ``limit``
    between the readings ``pts`` (sorted): the hours window rules trust (``api.alerts.series``).
    ``first`` None: the data starts before the first bound."""
    n = len(bounds) - 1
    out = [False] * max(n, 0)
    if n <= 0 or not pts or last is None:
        return out
    gaps = [(a, b) for a, b in zip(pts, pts[1:], strict=False) if b - a > limit]
    g = 0
    for i in range(n):
        s0, e0 = bounds[i], bounds[i + 1]
        if (s0 < first if first is not None else e0 <= pts[0]) or e0 > last:
            continue
        while g < len(gaps) and gaps[g][1] <= s0:
            g += 1
        out[i] = not (g < len(gaps) and gaps[g][0] < e0)
    return out


def derive_hours(
    curve: Curve,
    meter: Meter,
    quantity: str,
    start: int,
    until: int,
    tz: Any,
    from_first: bool = True,
) -> Derived:
    """Hourly figures of ``curve`` over ``[start, until)`` (local hours of ``tz``).

    ``from_first``: the curve begins with the series' first reading (hours before it are not known
    to window rules); otherwise it resumes from readings the series had before ``start``."""
    hours = periods.hour_starts(start, until, tz) if until > start else []
    bounds = hours + [until] if hours else []
    values = curve.deltas(bounds) if hours else []
    rec = curve.received
    cuts = [bisect_left(rec, b) for b in bounds]
    readings = list(map(sub, cuts[1:], cuts[:-1]))
    n = len(hours)
    quarantined, resets, rollovers = [0] * n, [0] * n, [0] * n
    events: list[RollupEvent] = []

    def hour_of(t: int) -> int:
        return bisect_right(hours, t) - 1

    for e in curve.events:
        if not start <= e.ts < until:
            continue
        h = hour_of(e.ts)
        if e.kind in ("quarantined", "unconfirmed"):
            quarantined[h] += 1
        elif e.kind in ("reset", "level_shift"):
            resets[h] += 1
        elif e.kind == "rollover":
            rollovers[h] += 1
        events.append(
            RollupEvent(
                meter=meter.id, quantity=quantity, ts=e.ts, kind=e.kind, value=e.value,
                previous=e.previous, start_ts=None, detail=e.detail,
            )
        )  # fmt: skip
    # Estimated time: register breaks, and intervals longer than twice the reading interval (gaps).
    est: list[tuple[int, int]] = [(a, b) for a, b, _ in curve.estimated]
    for a, b, amount in curve.estimated:
        if start <= b < until:
            events.append(
                RollupEvent(
                    meter=meter.id, quantity=quantity, ts=b, kind="estimated", value=amount,
                    previous=None, start_ts=a, detail="interval across a register break, estimated",
                )
            )  # fmt: skip
    ts = curve.ts
    if ts and hours:
        lo = max(bisect_right(ts, start) - 1, 0)
        hi = min(bisect_left(ts, until) + 1, len(ts))
        seg = ts[lo:hi]
        gap = 2 * meter.interval_s
        dts = list(map(sub, seg[1:], seg[:-1]))
        est.extend((seg[i], seg[i + 1]) for i, d in enumerate(dts) if d > gap)
    shares = [0.0] * n
    for a, b in est:
        if b <= start or a >= until:
            continue
        h = max(hour_of(max(a, start)), 0)
        while h < n:
            h0, h1 = bounds[h], bounds[h + 1]
            if h0 >= b:
                break
            ov = min(b, h1) - max(a, h0)
            if ov > 0:
                shares[h] += ov / (h1 - h0)
            h += 1
    shares = [min(1.0, s) for s in shares]
    pts = curve.ts or rec
    known = known_hours(
        pts, bounds, gap_limit(meter), (pts[0] if pts else None) if from_first else None,
        pts[-1] if pts else None,
    )  # fmt: skip
    first_s: list[int | None] = [None] * n
    last_s: list[int | None] = [None] * n
    for i in range(n):
        if readings[i]:
            first_s[i] = rec[cuts[i]] - bounds[i]
            last_s[i] = rec[cuts[i + 1] - 1] - bounds[i]
    hods = [datetime.fromtimestamp(h, tz).hour for h in hours]
    return Derived(
        start, until, hours, values, shares, readings, quarantined, resets, rollovers, events,
        known, first_s, last_s, hods,
    )  # fmt: skip


def to_lines(d: Derived, meter: Meter, quantity: str, tags: dict[str, str]) -> list[str]:
    tag = f"meter={_escape_tag(meter.id)}"
    for k, v in tags.items():
        if v:
            tag += f",{k}={_escape_tag(v)}"
    tag += f",kind={meter.kind.value},quantity={quantity}"
    out = []
    for i, h in enumerate(d.hours):
        v = d.values[i]
        edge = "" if d.first_s[i] is None else f"first_s={d.first_s[i]}i,last_s={d.last_s[i]}i,"
        out.append(
            f"{MEASUREMENT},{tag} value={v!r},estimated_share={d.shares[i]!r},"
            f"quarantined={d.quarantined[i]}i,reset={d.resets[i]}i,readings={d.readings[i]}i,"
            f"rollovers={d.rollovers[i]}i,known={int(d.known[i])}i,{edge}{HOD_FIELDS[d.hods[i]]}={v!r} {h}"
        )
    return out


# --- the maintainer --------------------------------------------------------------------------


@dataclass(slots=True)
class _Task:
    meter: Meter
    quantity: str
    fetch_from: int  # readings from here on are read
    rewrite_from: int | None  # first hour rewritten; None: decided from the late reading
    late_at: int | None = None  # the late reading's time
    lookaround: bool = False  # also read the nearest reading before fetch_from
    keep_all: bool = False  # keep readings the group read before fetch_from (more context)
    old_until: int | None = None
    kept_out: list[Event] = field(default_factory=list)  # context readings stored as quarantined
    series_start: bool = False  # a late reading's context reaches back to the series' first reading
    from_first: bool = False  # a new series: derived from its first reading


@dataclass(slots=True)
class _Outcome:
    task: _Task
    derived: Derived | None
    until: int
    resume: int | None
    last: int | None
    lines: list[str] = field(default_factory=list)


class RollupMaintainer:
    """Keeps ``energy_hourly`` up to date; ``pass_once`` is idempotent and resumable.

    Safe to run at the same time on disjoint meter sets (several workers split the meters); two
    passes over the same meter compute the same points, so overlap wastes work but corrupts nothing.
    """

    def __init__(self, cfg: CampusConfig, store: InfluxStore, sessions: sessionmaker[Session]) -> None:
        self.cfg = cfg
        self.store = store
        self.sessions = sessions
        self.tz = cfg.site.tz
        self.grid = cfg.site.timezone
        self.tags = tag_lookup(cfg)
        self.target = write_target(cfg.influxdb)
        self._retention_checked = False
        self._now = int(time.time())

    # -- planning --

    def _plan(
        self, chosen: list[Meter], now: int
    ) -> tuple[list[_Task], list[_Task], dict[str, tuple[int, int]]]:
        ids = [m.id for m in chosen]
        wms = watermarks(self.sessions, ids)
        dirty = dirty_marks(self.sessions, ids)
        tasks: list[_Task] = []
        new: list[_Task] = []
        for m in chosen:
            qs = cumulative_quantities(m.kind)
            d = dirty.get(m.id)
            mine = [wms.get((m.id, q)) for q in qs]
            stale = any(w is None or w.grid != self.grid for w in mine)
            recheck = any(w is not None and w.checked_at < now - self.cfg.rollups.recheck_s for w in mine)
            if d is None and not stale and not recheck:
                continue
            for q, w in zip(qs, mine, strict=True):
                if w is None or w.grid != self.grid:
                    new.append(_Task(m, q, 0, None))
                    continue
                base = w.resume_ts if w.resume_ts is not None else w.until_ts
                seen = w.last_ts if w.last_ts is not None else w.until_ts - 1
                if d is not None and d[0] <= seen:
                    # A reading before the newest one seen: the interval it splits may begin before the
                    # watermark, so re-derive from a few accepted readings before it.
                    tasks.append(_Task(m, q, d[0], None, d[0], True, False, w.until_ts))
                else:  # new readings (or late ones after the watermark): resume where the pass left off
                    tasks.append(_Task(m, q, base, w.until_ts, old_until=w.until_ts))
        return tasks, new, dirty

    def _query(self, stmts: list[str]) -> list[dict[str, Any]]:
        """Statements in as few requests as a URL can carry (a request's query is at most MAX_QUERY chars)."""
        out: list[dict[str, Any]] = []
        for part in query_parts(stmts):
            try:
                out += self.store.query(";".join(part), chunked=True)
            except QueryError as e:
                if "database not found" in str(e):
                    return []
                raise
        return out

    # -- the pass --

    def pass_once(self, meters: Iterable[str] | None = None, now: int | None = None) -> RollupStats:
        """Bring the rollups of ``meters`` (default every configured meter) up to date."""
        t_start = time.perf_counter()
        now = int(time.time()) if now is None else int(now)
        self._now = now
        if not self._retention_checked:
            for p in ensure_retention(self.store, self.cfg):
                log.warning("rollup retention: %s", p)
            self._retention_checked = True
        wanted = None if meters is None else set(meters)
        chosen = [m for m in self.cfg.meters if wanted is None or m.id in wanted]
        stats = RollupStats()
        if not chosen:
            return stats
        tasks, new, dirty = self._plan(chosen, now)
        if new:
            firsts = self._first_series(new, stats)
            for t in new:
                f = firsts.get((t.meter.id, t.quantity))
                if f is None:
                    self._commit_empty(t, now)
                    continue
                t.fetch_from = f
                t.rewrite_from = periods.floor(f, "hour", self.tz)
                t.from_first = True
                tasks.append(t)
        done_meters: set[str] = set()
        for group in self._groups(tasks):
            outcomes = self._run_group(group, now, stats)
            lines = [ln for o in outcomes for ln in o.lines]
            if lines:
                self.store.write_derived(lines, self.target)
            self._commit(outcomes, now)
            done_meters.update(o.task.meter.id for o in outcomes)
        # Clear the marks this pass has read (a mark touched meanwhile has a new version and stays).
        processed = {t.meter.id for t in tasks} | {t.meter.id for t in new}
        with self.sessions.begin() as s:
            for mid in sorted(processed):
                if mid in dirty:
                    s.execute(
                        delete(RollupDirty).where(
                            RollupDirty.meter == mid, RollupDirty.version == dirty[mid][1]
                        )
                    )
        stats.meters = len(processed)
        stats.seconds = time.perf_counter() - t_start
        return stats

    def _first_series(self, new: list[_Task], stats: RollupStats) -> dict[tuple[str, str], int]:
        stmts: list[str] = []
        by_kq: dict[tuple[MeterKind, str], list[str]] = {}
        for t in new:
            by_kq.setdefault((t.meter.kind, t.quantity), []).append(t.meter.id)
        lo = self.cfg.ingest.min_ts
        n = self.cfg.rollups.batch_meters
        for (kind, q), ids in by_kq.items():
            for i in range(0, len(ids), n):
                rx = meter_regex(ids[i : i + n])
                stmts.append(
                    f'SELECT first("{q}") AS "{q}" FROM "{kind.value}" WHERE time >= {lo}s'
                    f' AND "meter" =~ /^({rx})$/ GROUP BY "meter"'
                )
        out: dict[tuple[str, str], int] = {}
        for i in range(0, len(stmts), 50):
            part = stmts[i : i + 50]
            stats.requests += 1
            for s in self._query(part):
                mid, q = s["tags"].get("meter"), s["columns"][1]
                for v in s["values"]:
                    if v[1] is not None:
                        out[(mid, q)] = int(v[0])
        return out

    def _groups(self, tasks: list[_Task]) -> list[list[_Task]]:
        """Tasks of one kind whose reads start close together share a request."""
        out: list[list[_Task]] = []
        n = self.cfg.rollups.batch_meters
        by_kind: dict[MeterKind, list[_Task]] = {}
        for t in tasks:
            by_kind.setdefault(t.meter.kind, []).append(t)
        for _, ts in sorted(by_kind.items()):
            ts.sort(key=lambda t: (t.lookaround, t.fetch_from))
            cur: list[_Task] = []
            meters: set[str] = set()
            for t in ts:
                if cur and (
                    t.fetch_from - cur[0].fetch_from > 3 * 3600
                    or t.lookaround != cur[0].lookaround
                    or (len(meters) >= n and t.meter.id not in meters)
                ):
                    out.append(cur)
                    cur, meters = [], set()
                cur.append(t)
                meters.add(t.meter.id)
            if cur:
                out.append(cur)
        return out

    def _run_group(self, group: list[_Task], now: int, stats: RollupStats) -> list[_Outcome]:
        kind = group[0].meter.kind
        qs = sorted({t.quantity for t in group})
        ids = sorted({t.meter.id for t in group})
        lo = min(t.fetch_from for t in group)
        hi = now + self.cfg.ingest.max_future_s + 3600
        rx = meter_regex(ids)
        where = f'"meter" =~ /^({rx})$/ GROUP BY "meter"'
        sel = ",".join(f'"{q}"' for q in qs)
        stmts = [f'SELECT {sel} FROM "{kind.value}" WHERE time >= {lo}s AND time < {hi}s AND {where}']
        look = group[0].lookaround
        if look:  # late readings: the last CONTEXT_READINGS readings before each, newest first
            for t in group:
                assert t.late_at is not None
                stmts.append(
                    f'SELECT "{t.quantity}" AS "ctx:{t.quantity}" FROM "{kind.value}"'
                    f" WHERE time >= {t.late_at - LOOKAROUND_S}s AND time < {t.late_at}s"
                    f' AND "meter" = \'{_escape_str(t.meter.id)}\' GROUP BY "meter"'
                    f" ORDER BY time DESC LIMIT {context_readings(t.meter, self.cfg.rollups.context_s)}"
                )
        stats.requests += 1
        res = self._query(stmts)
        raw: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        before: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for s in res:
            mid = s["tags"].get("meter", "")
            cols = s["columns"]
            if cols[1].startswith("ctx:"):
                before[(mid, cols[1][4:])] = [
                    (int(v[0]), float(v[1])) for v in reversed(s["values"]) if v[1] is not None
                ]
                continue
            for k, q in enumerate(cols[1:], start=1):
                if q not in qs:
                    continue
                ts_l, vs_l = raw.setdefault((mid, q), ([], []))
                for v in s["values"]:
                    if v[k] is not None:
                        ts_l.append(int(v[0]))
                        vs_l.append(float(v[k]))
        dropped = self._quarantined(group, before) if look else {}
        outcomes = []
        for t in group:
            key = (t.meter.id, t.quantity)
            ts_l, vs_l = raw.get(key, ([], []))
            if not t.keep_all and ts_l and ts_l[0] < t.fetch_from:
                k = bisect_left(ts_l, t.fetch_from)
                ts_l, vs_l = ts_l[k:], vs_l[k:]
            if look:
                ctx = before.get(key, [])
                t.series_start = len(ctx) < context_readings(t.meter, self.cfg.rollups.context_s)
                # Context the stored derivation quarantined stays out (its fate cannot change), so
                # the policy restarts from readings the full derivation accepted; the last one stays.
                gone = dropped.get(key, {})
                keep = [k == len(ctx) - 1 or p[0] not in gone for k, p in enumerate(ctx)]
                # They still count as received and stay on record as quarantined.
                t.kept_out = [gone[p[0]] for p, k in zip(ctx, keep, strict=True) if not k]
                ctx = [p for p, k in zip(ctx, keep, strict=True) if k]
                ts_l, vs_l = [p[0] for p in ctx] + ts_l, [p[1] for p in ctx] + vs_l
            stats.readings_read += len(ts_l)
            outcomes.append(self._derive(t, ts_l, vs_l, stats))
        return outcomes

    def _quarantined(
        self, group: list[_Task], before: dict[tuple[str, str], list[tuple[int, float]]]
    ) -> dict[tuple[str, str], dict[int, Event]]:
        """Times of context readings the stored derivation quarantined (an unconfirmed one may still count)."""
        out: dict[tuple[str, str], dict[int, Event]] = {}
        with self.sessions() as s:
            for t in group:
                ctx = before.get((t.meter.id, t.quantity))
                if not ctx:
                    continue
                q = select(RollupEvent).where(
                    RollupEvent.meter == t.meter.id,
                    RollupEvent.quantity == t.quantity,
                    RollupEvent.kind == "quarantined",
                    RollupEvent.ts >= ctx[0][0],
                    RollupEvent.ts <= ctx[-1][0],
                )
                out[(t.meter.id, t.quantity)] = {
                    r.ts: Event(r.ts, "quarantined", r.value, r.previous, r.detail) for r in s.scalars(q)
                }
        return out

    def _derive(self, t: _Task, ts_l: list[int], vs_l: list[float], stats: RollupStats) -> _Outcome:
        tz = self.tz
        curve = derive_columns(ts_l, vs_l, Limits.for_meter(t.meter))
        if t.kept_out:
            curve.received = sorted(set(curve.received) | {e.ts for e in t.kept_out})
            curve.events = sorted([*curve.events, *t.kept_out], key=lambda e: e.ts)
        stats.series += 1
        if not curve.ts:
            # Nothing stored for the series: its hours up to now are known to be empty (a reading
            # that comes later is a late one and re-derives them).
            until = periods.floor(self._now, "hour", tz)
            if t.old_until is not None and (curve.received or t.old_until > until):
                until = t.old_until
            return _Outcome(t, None, until, None, curve.received[-1] if curve.received else None)
        pts = curve.ts
        if t.rewrite_from is None:  # a late reading: from a few accepted readings before it
            stats.late += 1
            assert t.late_at is not None
            k = bisect_left(pts, t.late_at)
            if t.series_start or k < 4:  # nothing older (or nothing accepted): from the first reading
                start = periods.floor(pts[0], "hour", tz)
            else:
                # The policy restarted at pts[0], a reading the full derivation accepted, so from
                # pts[1] on it is in the same state (and a break after pts[1] has the interval
                # before it for its estimate). A late reading changes the interval it falls in,
                # the fate of the reading before it and a neighbouring break's estimate: nothing
                # before the accepted reading three before it. The first hour rewritten is whole
                # after pts[1] and starts no later than that reading's hour.
                h = periods.floor(pts[1], "hour", tz)
                after = h if h == pts[1] else periods.hour_starts(h, h + 3 * 3600, tz)[1]
                start = min(after, periods.floor(pts[k - 3], "hour", tz))
            if t.old_until is not None:
                start = min(start, t.old_until)
        else:
            start = t.rewrite_from
        until = periods.floor(pts[-1], "hour", tz)
        j = bisect_left(pts, until) - RESUME_POINTS
        resume = pts[max(j, 0)]
        last = max(pts[-1], curve.received[-1])
        if until <= start:
            return _Outcome(t, None, until if until < start else start, resume, last)
        d = derive_hours(curve, t.meter, t.quantity, start, until, tz, t.from_first or t.series_start)
        tags = self.tags(t.meter.id)
        stats.hours_written += len(d.hours)
        return _Outcome(t, d, until, resume, last, to_lines(d, t.meter, t.quantity, tags))

    def _commit(self, outcomes: list[_Outcome], now: int) -> None:
        """Events and watermarks in one transaction, after the points are stored."""
        with self.sessions.begin() as s:
            for o in outcomes:
                m, q = o.task.meter.id, o.task.quantity
                if o.derived is not None:
                    s.execute(
                        delete(RollupEvent).where(
                            RollupEvent.meter == m,
                            RollupEvent.quantity == q,
                            RollupEvent.ts >= o.derived.start,
                            RollupEvent.ts < o.derived.until,
                        )
                    )
                    s.add_all(o.derived.events)
                    self._sum_months(s, o)
                s.merge(
                    RollupWatermark(
                        meter=m, quantity=q, until_ts=o.until, resume_ts=o.resume, last_ts=o.last,
                        grid=self.grid, checked_at=float(now),
                    )
                )  # fmt: skip

    def _sum_months(self, s: Session, o: _Outcome) -> None:
        """Add appended hours to their months' sums (``rollup_months``); drop a month whose hours were rewritten.

        In the watermark's transaction, so a pass killed before it commits adds nothing, and the
        pass that does it again adds once.
        """
        d = o.derived
        assert d is not None
        m, q = o.task.meter.id, o.task.quantity
        extends = o.task.rewrite_from is not None and o.task.rewrite_from == d.start
        months: dict[tuple[int, int], list[int]] = {}
        ms = me = None
        for i, h in enumerate(d.hours):
            if me is None or h >= me:  # local months: the boundary is computed once per month
                ms = periods.floor(h, "month", self.tz)
                me = periods.floor(ms + 32 * 86400, "month", self.tz)
            months.setdefault((ms, me), []).append(i)
        for (ms, me), idx in months.items():
            row = s.get(RollupMonth, (m, q, ms))
            first = d.hours[idx[0]]
            if not extends:
                if row is not None:
                    s.delete(row)  # rewritten hours: a report sums the month again
                continue
            if row is None:
                if first != ms and not o.task.from_first:
                    continue  # the month's earlier hours are not summed here: a report sums it
                row = RollupMonth(
                    meter=m, quantity=q, month_start=ms, month_end=me, covered_until=first,
                    value=0.0, readings=0, by_hod=json.dumps([0.0] * 24),
                )  # fmt: skip
                s.add(row)
            elif row.covered_until != first:
                s.delete(row)
                continue
            by_hod = json.loads(row.by_hod)
            for i in idx:
                by_hod[d.hods[i]] += d.values[i]
            row.by_hod = json.dumps(by_hod)
            row.value += sum(d.values[i] for i in idx)
            row.readings += sum(d.readings[i] for i in idx)
            nxt = idx[-1] + 1
            row.covered_until = d.hours[nxt] if nxt < len(d.hours) else d.until

    def _commit_empty(self, t: _Task, now: int) -> None:
        """A series without any reading yet: checked up to this hour; late readings come as marks."""
        with self.sessions.begin() as s:
            s.merge(
                RollupWatermark(
                    meter=t.meter.id, quantity=t.quantity, until_ts=periods.floor(now, "hour", self.tz),
                    resume_ts=None, last_ts=None, grid=self.grid, checked_at=float(now),
                )
            )  # fmt: skip

    # -- rebuild --

    def rebuild(
        self,
        start: int,
        end: int,
        meters: Iterable[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RollupStats:
        """Re-derive ``[start, end)`` from raw readings (with context before), meter batch by batch.

        The watermark moves back to ``start`` first, so readers take raw readings for the range
        while it is rebuilt, then a pass brings every series forward again.
        """
        wanted = None if meters is None else set(meters)
        chosen = [m for m in self.cfg.meters if wanted is None or m.id in wanted]
        total = RollupStats()
        step = max(1, min(self.cfg.rollups.batch_meters, 200))
        for i in range(0, len(chosen), step):
            part = chosen[i : i + step]
            with self.sessions.begin() as s:
                for m in part:
                    for q in cumulative_quantities(m.kind):
                        w = s.get(RollupWatermark, (m.id, q))
                        if w is not None and w.grid == self.grid and w.until_ts > start:
                            w.until_ts = periods.floor(start, "hour", self.tz)
            # A late mark at the start makes the pass re-derive from there with context.
            mark_dirty(self.sessions, {m.id: start for m in part})
            st = self.pass_once([m.id for m in part], now=max(end, int(time.time())) if end else None)
            total.add(st)
            if progress is not None:
                progress(len(part))
        return total


def hour_floor(ts: int, tz: Any) -> int:
    return periods.floor(ts, "hour", tz)


def is_finite(v: float) -> bool:
    return math.isfinite(v)
