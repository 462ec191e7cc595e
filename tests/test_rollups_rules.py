"""The incremental rule engine raises exactly the alerts a full recomputation raises, on every labelled scenario.

The backtest streams the period through the engine (``api.alerts.engine``: hourly series kept and
extended day by day, verdicts reused while their inputs are unchanged); ``full=True`` holds every
reading at once and runs every rule at every step. Both must give the same alerts: same rule, same
subject, same first-seen time. The live evaluator is held to the same over a stretch of passes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from api.alerts.backtest import backtest
from api.alerts.window import WindowEvaluator
from campusmon.db import init_db
from campusmon.influx import open_store
from firmware_sim import corpus as cp
from firmware_sim import scenario as sc


def _key(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    return sorted((a["rule"], a["subject"]["kind"], a["subject"]["id"], a["first_seen"]) for a in alerts)


def _stored(influxdb: Any, tmp: Path, make: Callable[[], Any], name: str) -> tuple[Any, Any, Any, Any]:
    scn = make()
    cfg = scn.campus(
        {
            "influxdb": {
                "url": f"http://127.0.0.1:{influxdb.port}",
                "database": f"{name}_{uuid.uuid4().hex[:8]}",
            },
            "database": {"url": f"sqlite:///{tmp}/campus.sqlite"},
        }
    )
    store = open_store(cfg)
    store.ensure_database()
    return scn, cfg, store, init_db(cfg.database.url)[1]


SCENARIOS = {
    "campus_week": lambda: sc.campus_week(date(2025, 11, 3)),
    "term_end": lambda: sc.term_end(date(2025, 6, 30)),
    "quiet_month": lambda: sc.quiet_month(date(2025, 9, 1)),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_gives_the_same_alerts_incrementally_and_in_full(
    influxdb, tmp_path: Path, name: str
) -> None:
    scn, cfg, store, sessions = _stored(influxdb, tmp_path, SCENARIOS[name], name)
    sc.write(scn, cfg, store)
    sc.install_targets(scn, cfg, sessions)
    inc = backtest(cfg, store, scn.week_start, scn.end, None, 900, sessions)
    full = backtest(cfg, store, scn.week_start, scn.end, None, 900, sessions, full=True)
    store.close()
    if scn.events:  # a scenario with labelled waste must raise something, or the comparison proves nothing
        assert inc.alerts, "the scenario raised nothing"
    assert _key(inc.alerts) == _key(full.alerts)
    # Evidence too: the same hours were judged, so the same figures are quoted.
    by_key = {(a["rule"], a["subject"]["id"], a["first_seen"]): a for a in full.alerts}
    for a in inc.alerts:
        b = by_key[(a["rule"], a["subject"]["id"], a["first_seen"])]
        assert a["message"] == b["message"], (a["rule"], a["subject"])


@pytest.mark.slow
def test_the_clean_corpus_gives_the_same_alerts_incrementally_and_in_full(influxdb, tmp_path: Path) -> None:
    corpus, cfg, store, _s = _stored(influxdb, tmp_path, lambda: cp.clean_corpus(date(2025, 9, 1)), "corpus")
    cp.write(corpus, cfg, store)
    inc = backtest(cfg, store, corpus.start, corpus.end, step_s=900)
    full = backtest(cfg, store, corpus.start, corpus.end, step_s=900, full=True)
    store.close()
    assert inc.alerts
    assert _key(inc.alerts) == _key(full.alerts)


def test_the_live_evaluator_gives_the_same_alerts_incrementally_and_in_full(influxdb, tmp_path: Path) -> None:
    """Two live evaluators over the campus week: a catch-up, then a pass every 15 minutes for six hours."""
    scn, cfg, store, _s = _stored(influxdb, tmp_path, SCENARIOS["campus_week"], "live")
    sc.write(scn, cfg, store)
    results = []
    for incremental in (True, False):
        _e, sessions = init_db(f"sqlite:///{tmp_path}/live-{incremental}.sqlite")
        sc.install_targets(scn, cfg, sessions)
        t0 = scn.end - 6 * 3600
        clock = [float(t0)]
        ev = WindowEvaluator(cfg, store, sessions, clock=lambda c=clock: c[0], incremental=incremental)
        for t in range(t0, scn.end, 900):
            clock[0] = float(t)
            ev.run(now=t)
        results.append(_key(_alerts(sessions, cfg)))
    store.close()
    assert results[0], "no alert in the week"
    assert results[0] == results[1]


def test_the_live_evaluator_takes_settled_hours_from_rollups_and_raises_the_same_alerts(
    influxdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings arrive in stretches; before each, a rollup pass (as the worker runs it) and a rebuilt book.

    The evaluator that seeds its book from rollups must raise what a raw recomputation raises, and
    must really have taken its hours from the rollups (most meters, most hours).
    """
    from api.alerts import window
    from campusmon.rollups import RollupMaintainer

    monkeypatch.setattr(window, "FULL_REFRESH_S", 2 * 3600)
    scn, cfg, store, _s = _stored(influxdb, tmp_path, SCENARIOS["campus_week"], "seeded")
    t0 = scn.end - 6 * 3600
    cuts = [t0, t0 + 2 * 3600, t0 + 4 * 3600, scn.end + 1]
    _e, sessions = init_db(f"sqlite:///{tmp_path}/seeded.sqlite")
    sc.install_targets(scn, cfg, sessions)
    clock = [float(t0)]
    ev = WindowEvaluator(cfg, store, sessions, clock=lambda c=clock: c[0], incremental=True, rollups=True)
    maintainer = RollupMaintainer(cfg, store, sessions)
    seeded = []
    sc.write(scn, cfg, store, until=t0)
    for a, b in zip(cuts, cuts[1:], strict=False):
        maintainer.pass_once(now=a)
        sc.write(scn, cfg, store, since=a, until=b)
        for t in range(a, min(b, scn.end), 900):
            clock[0] = float(t)
            ev.run(now=t)
            if ev.last_pass["rebuilt"]:
                seeded.append(ev.last_pass["seeded"])
    seeded_alerts = _key(_alerts(sessions, cfg))

    _e2, ref_sessions = init_db(f"sqlite:///{tmp_path}/raw.sqlite")
    sc.install_targets(scn, cfg, ref_sessions)
    ref = WindowEvaluator(cfg, store, ref_sessions, clock=lambda c=clock: c[0], incremental=False)
    for t in range(t0, scn.end, 900):
        clock[0] = float(t)
        ref.run(now=t)
    store.close()
    assert len(seeded) == 3, seeded
    for st in seeded:  # every rebuild took nearly every meter's settled hours from rollups
        assert st["meters_from_rollups"] >= 0.9 * len(cfg.meters), st
        assert st["hours_from_rollups"] > 0, st
    assert seeded_alerts, "no alert in the week"
    assert seeded_alerts == _key(_alerts(ref_sessions, cfg))


def _alerts(sessions: Any, cfg: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from api.alerts.models import Alert
    from api.alerts.store import alert_json

    with sessions() as s:
        return [alert_json(a, cfg) for a in s.scalars(select(Alert).order_by(Alert.first_seen, Alert.id))]
