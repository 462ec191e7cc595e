"""The clean corpus through the real InfluxDB and the backtest: at most 1 false alert per 1,000 meter-days.

50 meters over 60 days with weekends, a public-holiday week with make-up workdays, a vacation, a
meter replacement, a 6-hour gateway outage, resting and never-resting meters, irregular intervals
and clock jitter (``firmware_sim/corpus.py``), no waste. The backtest starts when the data starts,
so cold start counts; the replacement and the outage are labelled and must be caught.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import pytest

from api.alerts.backtest import backtest
from api.alerts.labels import parse_labels, score_labels
from campusmon.influx import open_store
from firmware_sim import corpus as cp


@pytest.mark.slow
def test_clean_corpus_stays_within_one_false_alert_per_1000_meter_days(influxdb, tmp_path: Path) -> None:
    corpus = cp.clean_corpus(date(2025, 9, 1))
    cfg = corpus.campus(
        {
            "influxdb": {
                "url": f"http://127.0.0.1:{influxdb.port}",
                "database": "corpus_" + uuid.uuid4().hex[:8],
            },
            "database": {"url": f"sqlite:///{tmp_path}/campus.sqlite"},
        }
    )
    assert len(cfg.meters) >= 50
    store = open_store(cfg)
    store.ensure_database()
    n = cp.write(corpus, cfg, store)
    assert n > 500_000
    res = backtest(cfg, store, corpus.start, corpus.end, step_s=900)
    store.close()
    score = score_labels(
        parse_labels(corpus.labels), res.alerts, len(cfg.meters), corpus.start, corpus.end, cfg.site.tz
    )
    assert score["meter_days"] >= 3000
    assert score["recall"] == 1.0, [p for p in score["per_incident"] if not p["caught"]]
    assert score["false_per_1000_meter_days"] <= 1.0, score["false"]
