"""Alerts in the relational store: apply findings through the lifecycle, record events, answer the feeds.

Every change is written in one transaction together with its event (the log SSE and Atom read)
and the deliveries it owes to notification channels, so a crash never leaves an alert changed
but unannounced. Several processes may write (the API runs window rules, the collector runs
instant rules); the unique ``open_key`` keeps one open alert per (rule, subject) between them.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.alerts.config import AlertsConfig
from api.alerts.lifecycle import Action, decide
from api.alerts.messages import compose, display_round
from api.alerts.models import Alert, AlertEvent, AlertNote, AlertSilence, Delivery, RuleState
from api.alerts.rules import RULES, rule_matches
from api.alerts.rules.base import SEVERITY_RANK, Finding, Level, Severity, Subject
from campusmon.config import CampusConfig

log = logging.getLogger(__name__)

EventListener = Callable[[list[dict[str, Any]]], None]
EVENTS_CHANNEL = "campusmon_alert_events"  # PostgreSQL NOTIFY channel: "a new event id committed"
LATCH_REFRESH_S = 10.0
STATUSES = ("active", "cleared", "active_unack", "active_ack", "cleared_unack", "cleared_ack", "all")


def open_key(rule: str, subject: Subject) -> str:
    return f"{rule}|{subject_key(subject)}"


def subject_key(subject: Subject) -> str:
    tail = f"#{subject.variant}" if subject.variant else ""
    return f"{subject.kind}:{subject.id}@{subject.building}{tail}"


def _iso(ts: int | None, cfg: CampusConfig) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, cfg.site.tz).isoformat()


def alert_json(a: Alert, cfg: CampusConfig, notes: Iterable[AlertNote] | None = None) -> dict[str, Any]:
    b = cfg.building(a.building)
    out: dict[str, Any] = {
        "id": a.id,
        "rule": a.rule,
        "title": a.title,
        "severity": a.severity,
        "status": "active" if a.active else "cleared",
        "acknowledged": a.acknowledged,
        "silenced": a.silenced,
        "source": a.source,
        "subject": {"kind": a.subject_kind, "id": a.subject_id},
        "building": a.building,
        "building_name": (b.name or b.id) if b else a.building,
        "meter": a.meter,
        "first_seen": _iso(a.first_seen, cfg),
        "last_seen": _iso(a.last_seen, cfg),
        "since": _iso(a.since, cfg),
        "acked_at": _iso(a.acked_at, cfg),
        "acked_by": a.acked_by,
        "cleared_at": _iso(a.cleared_at, cfg),
        "cleared_by": a.cleared_by,
        "assignee": a.assignee,
        "value": display_round(a.value, a.unit),
        "threshold": display_round(a.threshold, a.unit),
        "unit": a.unit,
        "waste": {
            "per_day": None if a.waste_per_day is None else round(a.waste_per_day, 3),
            "unit": a.waste_unit,
            "cost_per_day": None if a.cost_per_day is None else round(a.cost_per_day, 2),
            "currency": a.currency,
        },
        "message": a.message,
        "check": RULES[a.rule].check if a.rule in RULES else "",
        "detail": {k: v for k, v in (a.detail or {}).items() if k != "evidence"},
        "evidence": (a.detail or {}).get("evidence") or {},
    }
    if notes is not None:
        out["notes"] = [
            {"id": n.id, "at": _iso(n.at, cfg), "author": n.author, "text": n.text} for n in notes
        ]
    return out


def encode_cursor(alert_id: int) -> str:
    return base64.urlsafe_b64encode(f"a{alert_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("a"):
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor {cursor!r} is not one this API returned") from None


class AlertStore:
    """Lifecycle and queries over the alert tables; ``source`` tags alerts made by a backtest."""

    def __init__(
        self,
        cfg: CampusConfig,
        acfg: AlertsConfig,
        sessions: sessionmaker,
        source: str = "live",
        clock: Callable[[], float] = time.time,
        deliveries: bool = True,
    ) -> None:
        self.cfg = cfg
        self.acfg = acfg
        self.sessions = sessions
        self.source = source
        self.clock = clock
        self.deliveries = deliveries
        self.listeners: list[EventListener] = []
        self._open: dict[str, int] = {}
        self._states: dict[tuple[str, str], dict[str, Any]] = {}
        self._latched: set[tuple[str, str]] = set()
        self._silences: tuple[float, list[AlertSilence]] = (0.0, [])
        self._latched_at = time.monotonic()
        self.latch_refresh_s = LATCH_REFRESH_S
        self.load()

    # -- state -----------------------------------------------------------------------------------------

    def load(self, rules: Iterable[str] | None = None) -> None:
        """Read open alerts and rule state (at start-up, so a restart picks up where it stopped)."""
        wanted = set(rules) if rules is not None else None
        with self.sessions() as s:
            self._open = {
                a.open_key: a.id
                for a in s.scalars(select(Alert).where(Alert.open_key.is_not(None)))
                if wanted is None or a.rule in wanted
            }
            self._states, self._latched = {}, set()
            for st in s.scalars(select(RuleState)):
                if wanted is not None and st.rule not in wanted:
                    continue
                self._states[(st.rule, st.subject)] = dict(st.state or {})  # type: ignore[arg-type]
                if st.latched:
                    self._latched.add((st.rule, st.subject))

    def state(self, rule: str, subject: Subject) -> dict[str, Any]:
        return dict(self._states.get((rule, subject_key(subject)), {}))

    def state_by_key(self, rule: str, key: str) -> dict[str, Any]:
        return dict(self._states.get((rule, key), {}))

    def save_states(self, states: dict[tuple[str, str], dict[str, Any]]) -> None:
        """Persist rule state that changed (instant rules batch theirs)."""
        changed = {k: v for k, v in states.items() if self._states.get(k) != v}
        if not changed:
            return
        now = int(self.clock())
        with self.sessions() as s, s.begin():
            for (rule, subj), st in changed.items():
                self._put_state(s, rule, subj, st, now)

    def _put_state(
        self, s: Session, rule: str, subj: str, st: dict[str, Any], now: int, latched: bool | None = None
    ) -> None:
        row = s.get(RuleState, (rule, subj))
        if row is None:
            row = RuleState(rule=rule, subject=subj, state=st, latched=bool(latched), updated_at=now)
            s.add(row)
        else:
            row.state = dict(st)
            row.updated_at = now
            if latched is not None:
                row.latched = latched
        self._states[(rule, subj)] = dict(st)
        if latched is not None:
            (self._latched.add if latched else self._latched.discard)((rule, subj))

    # -- silences --------------------------------------------------------------------------------------

    def _db_silences(self) -> list[AlertSilence]:
        at, cached = self._silences
        if self.clock() - at < 10:
            return cached
        with self.sessions() as s:
            rows = list(
                s.scalars(select(AlertSilence).where(AlertSilence.end > int(self.clock()) - 86400 * 366))
            )
        self._silences = (self.clock(), rows)
        return rows

    def _refresh_latched(self) -> None:
        """Another process (the API) may clear an alert by hand; pick up its latch within seconds."""
        now = time.monotonic()
        if now - self._latched_at < self.latch_refresh_s:
            return
        self._latched_at = now
        with self.sessions() as s:
            self._latched = {
                (r.rule, r.subject) for r in s.scalars(select(RuleState).where(RuleState.latched.is_(True)))
            }

    def forget_silences(self) -> None:
        """The next check re-reads silences from the database (after one is added or removed)."""
        self._silences = (0.0, [])

    def silenced(self, rule: str, subject: Subject, meter: str | None, ts: int) -> tuple[bool, bool]:
        """(muted, in maintenance) at ``ts`` for this rule and subject."""
        mute = maint = False
        tz = self.cfg.site.tz
        items: list[tuple[str, list[str], list[str], list[str], int, int]] = []
        for c in self.acfg.settings.silences:
            start = c.start if c.start.tzinfo else c.start.replace(tzinfo=tz)
            end = c.end if c.end.tzinfo else c.end.replace(tzinfo=tz)
            items.append(
                (c.kind, c.rules, c.buildings, c.subjects, int(start.timestamp()), int(end.timestamp()))
            )
        for r in self._db_silences():
            items.append((r.kind, list(r.rules), list(r.buildings), list(r.subjects), r.start, r.end))  # type: ignore[arg-type]
        for kind, rules, buildings, subjects, start, end in items:
            if not start <= ts < end:
                continue
            if not rule_matches(rule, rules):
                continue
            if buildings and subject.building not in buildings:
                continue
            if subjects and subject.id not in subjects and (meter is None or meter not in subjects):
                continue
            if kind == "maintenance":
                maint = True
            else:
                mute = True
        return mute, maint

    # -- applying findings -----------------------------------------------------------------------------

    def apply(self, findings: Iterable[Finding]) -> list[dict[str, Any]]:
        """Run findings through the lifecycle; returns the events written (after commit)."""
        findings = list(findings)
        if not findings:
            return []
        self._refresh_latched()
        for attempt in (1, 2):
            try:
                events = self._apply(findings)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
                log.warning("another process changed the same alert; reloading and retrying")
                self.load()
        for listener in self.listeners:
            try:
                listener(events)
            except Exception:  # a listener must never undo a committed change
                log.exception("alert event listener failed")
        return events

    def _lock_events(self, s: Session) -> None:
        """On PostgreSQL, serialise event writers so ids become visible in order (SSE never skips one)."""
        if s.bind is not None and s.bind.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(722001)"))

    def _needs_db(self, f: Finding) -> bool:
        sk = (f.rule, subject_key(f.subject))
        if f.state is not None and f.state != self._states.get(sk, {}):
            return True
        return f.level is Level.FIRING or open_key(f.rule, f.subject) in self._open or sk in self._latched

    def _apply(self, findings: list[Finding]) -> list[dict[str, Any]]:
        if not any(self._needs_db(f) for f in findings):
            return []  # nothing open, nothing firing, no state change: no transaction at all
        out: list[dict[str, Any]] = []
        with self.sessions() as s, s.begin():
            locked = False
            for f in findings:
                key = open_key(f.rule, f.subject)
                sk = (f.rule, subject_key(f.subject))
                now = int(f.ts)
                if f.state is not None and f.state != self._states.get(sk, {}):
                    self._put_state(s, f.rule, sk[1], f.state, now)
                cached_open = key in self._open
                if not cached_open and f.level is not Level.FIRING and sk not in self._latched:
                    continue
                row = (
                    s.scalar(select(Alert).where(Alert.open_key == key))
                    if (cached_open or f.level is Level.FIRING)
                    else None
                )
                if row is None:
                    self._open.pop(key, None)
                else:
                    self._open[key] = row.id
                latched = sk in self._latched
                if row is None and f.level is Level.FIRING:
                    st = s.get(RuleState, sk)
                    latched = bool(st and st.latched)
                mute, maint = self.silenced(f.rule, f.subject, f.meter, now)
                action = decide(
                    row is not None, row.ok_count if row else 0, latched, f.level, f.clear_after, maint
                )
                if action is Action.NOTHING:
                    continue
                if not locked:
                    self._lock_events(s)
                    locked = True
                if action is Action.OPEN:
                    row = self._new_alert(f, key, now, mute)
                    s.add(row)
                    s.flush()
                    self._open[key] = row.id
                    out += self._write_events(s, [(row, "opened", "rule", None)])
                elif action is Action.UPDATE:
                    assert row is not None
                    before = row.severity
                    self._refresh(row, f, now)
                    if row.severity != before:
                        out += self._write_events(
                            s, [(row, "severity", "rule", {"from": before, "to": row.severity})]
                        )
                elif action is Action.COUNT_OK:
                    assert row is not None
                    row.ok_count += 1
                elif action is Action.RESET_OK:
                    assert row is not None
                    row.ok_count = 0
                elif action is Action.CLEAR:
                    assert row is not None
                    row.ok_count += 1
                    self._clear(row, now, "rule")
                    self._open.pop(key, None)
                    self._release(s, f.rule, sk[1], now)
                    out += self._write_events(s, [(row, "cleared", "rule", None)])
                elif action is Action.UNLATCH:
                    self._put_state(s, f.rule, sk[1], self._states.get(sk, {}), now, latched=False)
        return out

    def _release(self, s: Session, rule: str, subj: str, now: int) -> None:
        """A cleared alert lets go of what its rule froze while it was open (a learned baseline)."""
        st = self._states.get((rule, subj), {})
        kept = released(rule, st)
        if kept != st:
            self._put_state(s, rule, subj, kept, now)

    def _new_alert(self, f: Finding, key: str, now: int, muted: bool) -> Alert:
        p_sev = f.severity or RULES[f.rule].severity
        since = f.since if f.since is not None else now
        title, message, cost = compose(self.cfg, self.acfg, f, since)
        return Alert(
            rule=f.rule,
            subject_kind=f.subject.kind,
            subject_id=f.subject.id,
            variant=f.subject.variant,
            building=f.subject.building,
            meter=f.meter,
            open_key=key,
            severity=p_sev.value,
            active=True,
            acknowledged=False,
            silenced=muted,
            source=self.source,
            first_seen=now,
            last_seen=now,
            since=since,
            ok_count=0,
            value=f.value,
            threshold=f.threshold,
            unit=f.unit,
            waste_per_day=f.waste_per_day,
            waste_unit=f.waste_unit,
            cost_per_day=cost.per_day,
            currency=cost.currency,
            title=title,
            message=message,
            detail=with_evidence(f, since),
            updated_at=now,
        )

    def _refresh(self, row: Alert, f: Finding, now: int) -> None:
        row.last_seen = max(row.last_seen, now)
        row.ok_count = 0
        row.value, row.threshold, row.unit = f.value, f.threshold, f.unit
        row.waste_per_day, row.waste_unit = f.waste_per_day, f.waste_unit
        if f.severity is not None:
            row.severity = f.severity.value
        title, message, cost = compose(self.cfg, self.acfg, f, row.since)
        row.title, row.message, row.cost_per_day, row.currency = title, message, cost.per_day, cost.currency
        row.detail = with_evidence(f, row.since)
        row.updated_at = now

    def _clear(self, row: Alert, now: int, by: str) -> None:
        row.active = False
        row.open_key = None
        row.cleared_at = now
        row.cleared_by = by
        row.updated_at = now

    def _write_events(
        self, s: Session, events: list[tuple[Alert, str, str, dict[str, Any] | None]]
    ) -> list[dict[str, Any]]:
        out = []
        for row, etype, actor, extra in events:
            snap = alert_json(row, self.cfg)
            if extra:
                snap["change"] = extra
            ev = AlertEvent(
                alert_id=row.id, type=etype, at=int(row.updated_at or self.clock()), actor=actor, data=snap
            )
            s.add(ev)
            s.flush()
            if self.deliveries and not row.silenced and row.source == "live":
                from api.alerts.notify.channels import channels_for

                for ch in channels_for(self.acfg, etype, snap):
                    s.add(
                        Delivery(
                            event_id=ev.id,
                            alert_id=row.id,
                            channel=ch,
                            status="pending",
                            attempts=0,
                            next_attempt_at=0.0,
                            created_at=int(self.clock()),
                        )
                    )
            out.append(event_json(ev))
        if out and s.bind is not None and s.bind.dialect.name == "postgresql":
            # Delivered at commit, to every API replica's feed listener (api/alerts/fanout.py).
            s.execute(text("SELECT pg_notify(:ch, :id)"), {"ch": EVENTS_CHANNEL, "id": str(out[-1]["id"])})
        return out

    def add_closed(self, rows: Iterable[Alert], actor: str) -> list[int]:
        """Copy finished alerts in (a backtest's results) by the live write path: one transaction under
        the ordering lock, one ``opened`` event each, listeners told. They stay out of the lifecycle
        (no ``open_key``) and owe no notifications (their ``source`` is not live)."""
        ids: list[int] = []
        evs: list[dict[str, Any]] = []
        now = int(self.clock())
        with self.sessions() as s, s.begin():
            self._lock_events(s)
            for a in rows:
                copy = Alert(
                    **{c.name: getattr(a, c.name) for c in Alert.__table__.columns if c.name != "id"}
                )
                copy.open_key = None
                copy.source = self.source
                copy.updated_at = now
                s.add(copy)
                s.flush()
                evs += self._write_events(s, [(copy, "opened", actor, None)])
                ids.append(copy.id)
        for listener in self.listeners:
            try:
                listener(evs)
            except Exception:
                log.exception("alert event listener failed")
        return ids

    # -- people's actions ------------------------------------------------------------------------------

    def _act(
        self,
        alert_id: int,
        fn: Callable[[Session, Alert, int], tuple[str, dict[str, Any] | None] | None],
        actor: str,
    ) -> dict[str, Any] | None:
        now = int(self.clock())
        with self.sessions() as s, s.begin():
            self._lock_events(s)
            row = s.get(Alert, alert_id)
            if row is None:
                return None
            res = fn(s, row, now)
            evs = []
            if res is not None:
                row.updated_at = now
                evs = self._write_events(s, [(row, res[0], actor, res[1])])
            out = alert_json(
                row,
                self.cfg,
                s.scalars(select(AlertNote).where(AlertNote.alert_id == row.id).order_by(AlertNote.id)),
            )
        for listener in self.listeners:
            try:
                listener(evs)
            except Exception:
                log.exception("alert event listener failed")
        return out

    def ack(self, alert_id: int, actor: str) -> dict[str, Any] | None:
        def fn(_s: Session, row: Alert, now: int) -> tuple[str, dict[str, Any] | None] | None:
            if row.acknowledged:
                return None
            row.acknowledged, row.acked_at, row.acked_by = True, now, actor
            return "acknowledged", None

        return self._act(alert_id, fn, actor)

    def clear(self, alert_id: int, actor: str) -> dict[str, Any] | None:
        def fn(s: Session, row: Alert, now: int) -> tuple[str, dict[str, Any] | None] | None:
            if not row.active:
                return None
            if row.open_key is not None:
                self._open.pop(row.open_key, None)
            subj = subject_key(Subject(row.subject_kind, row.subject_id, row.building, row.variant))  # type: ignore[arg-type]
            kept = released(row.rule, self._states.get((row.rule, subj), {}))
            self._put_state(s, row.rule, subj, kept, now, latched=True)
            self._clear(row, now, actor)
            return "cleared", {"by": actor}

        return self._act(alert_id, fn, actor)

    def assign(self, alert_id: int, assignee: str | None, actor: str) -> dict[str, Any] | None:
        def fn(_s: Session, row: Alert, _now: int) -> tuple[str, dict[str, Any] | None] | None:
            if row.assignee == assignee:
                return None
            before, row.assignee = row.assignee, assignee
            return "assigned", {"from": before, "to": assignee}

        return self._act(alert_id, fn, actor)

    def add_note(self, alert_id: int, author: str, note: str) -> dict[str, Any] | None:
        def fn(s: Session, row: Alert, now: int) -> tuple[str, dict[str, Any] | None] | None:
            s.add(AlertNote(alert_id=row.id, at=now, author=author, text=note))
            return "note", {"author": author, "text": note}

        return self._act(alert_id, fn, author)

    # -- queries ---------------------------------------------------------------------------------------

    def get(self, alert_id: int) -> dict[str, Any] | None:
        with self.sessions() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                return None
            notes = s.scalars(select(AlertNote).where(AlertNote.alert_id == alert_id).order_by(AlertNote.id))
            return alert_json(row, self.cfg, notes)

    def query(
        self,
        status: str | None = None,
        severity: str | None = None,
        building: str | None = None,
        rule: str | None = None,
        since: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
        source: str | None = "live",
        subject: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; ``since`` keeps alerts changed at or after it; the cursor continues a listing."""
        q = select(Alert)
        st = status or "all"
        if st not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        if st.startswith("active"):
            q = q.where(Alert.active.is_(True))
        elif st.startswith("cleared"):
            q = q.where(Alert.active.is_(False))
        if st.endswith("_unack"):
            q = q.where(Alert.acknowledged.is_(False))
        elif st.endswith("_ack"):
            q = q.where(Alert.acknowledged.is_(True))
        if severity:
            sevs = [x.strip() for x in severity.split(",") if x.strip()]
            for x in sevs:
                if x not in {v.value for v in Severity}:
                    raise ValueError(f"severity {x!r} is not one of {', '.join(v.value for v in Severity)}")
            q = q.where(Alert.severity.in_(sevs))
        if building:
            q = q.where(Alert.building.in_([b.strip() for b in building.split(",")]))
        if rule:
            rules = [r.strip() for r in rule.split(",")]
            conds = [Alert.rule.like(r[:-1] + "%") if r.endswith("*") else Alert.rule == r for r in rules]
            q = q.where(or_(*conds))
        if subject:
            q = q.where(Alert.subject_id == subject)
        if since is not None:
            q = q.where(Alert.updated_at >= since)
        if source:
            q = q.where(Alert.source == source)
        if cursor:
            q = q.where(Alert.id < decode_cursor(cursor))
        q = q.order_by(Alert.id.desc()).limit(limit + 1)
        with self.sessions() as s:
            rows = list(s.scalars(q))
            more = len(rows) > limit
            rows = rows[:limit]
            items = [alert_json(r, self.cfg) for r in rows]
        return items, (encode_cursor(rows[-1].id) if more and rows else None)

    def events_after(self, last_id: int, limit: int = 500) -> list[dict[str, Any]]:
        with self.sessions() as s:
            evs = s.scalars(
                select(AlertEvent).where(AlertEvent.id > last_id).order_by(AlertEvent.id).limit(limit)
            )
            return [event_json(e) for e in evs]

    def recent_events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.sessions() as s:
            evs = list(s.scalars(select(AlertEvent).order_by(AlertEvent.id.desc()).limit(limit)))
            return [event_json(e) for e in evs]

    def last_event_id(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.max(AlertEvent.id))) or 0)

    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(
                select(Alert.severity, func.count())
                .where(Alert.active.is_(True), Alert.source == self.source)
                .group_by(Alert.severity)
            ).all()
        return {sev: n for sev, n in rows}


def released(rule: str, state: dict[str, Any]) -> dict[str, Any]:
    """The rule's state without the keys it freezes while an alert is open."""
    frozen = RULES[rule].frozen if rule in RULES else ()
    return {k: v for k, v in state.items() if k not in frozen}


def with_evidence(f: Finding, since: int | None) -> dict[str, Any]:
    """The finding's detail plus its evidence, filled in from the finding where the rule gave less."""
    ev: dict[str, Any] = {
        "meter": f.meter,
        "quantity": f.unit,
        "start": since,
        "end": f.ts,
        "value": f.value,
        "threshold": f.threshold,
        "unit": f.unit,
        "baseline": None,
        "baseline_method": RULES[f.rule].basis if f.rule in RULES else "",
    }
    ev.update(f.evidence)
    return {**f.detail, "evidence": ev}


def event_json(e: AlertEvent) -> dict[str, Any]:
    return {"id": e.id, "type": e.type, "alert_id": e.alert_id, "at": e.at, "actor": e.actor, "alert": e.data}


def severity_at_least(severity: str, minimum: Severity) -> bool:
    return SEVERITY_RANK.get(Severity(severity), 0) >= SEVERITY_RANK[minimum]
