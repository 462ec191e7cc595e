"""The consumption policy on hand-made register sequences (pure: no servers)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.accounting.consumption import Limits, derive
from campusmon.config import Meter

Q = 900  # a reading every 15 minutes


def series(values: list[float], t0: int = 1_700_000_100) -> list[tuple[int, float]]:
    return [(t0 + i * Q, v) for i, v in enumerate(values)]


def kinds(curve) -> list[str]:
    return [e.kind for e in curve.events]


def test_clean_register_is_the_difference_of_readings():
    c = derive(series([100.0, 101.5, 103.0, 103.0, 110.25]))
    assert c.total == pytest.approx(10.25)
    assert c.events == []


@pytest.mark.parametrize(
    ("rollover", "modulus"),
    [(999999.99, 1_000_000.0), (9999.99, 10_000.0), (65535, 65536.0), (99999.999, 100_000.0)],
)
def test_modulus_is_the_maximum_plus_one_step(rollover, modulus):
    assert Limits(rollover=rollover).modulus == pytest.approx(modulus)


def test_rollover_is_added_not_subtracted():
    c = derive(series([999_998.50, 999_999.80, 0.70, 2.00]), Limits(rollover=999999.99, max_per_hour=100))
    # 1.30 + (1_000_000 - 999_999.80 + 0.70) + 1.30
    assert c.total == pytest.approx(1.30 + 0.90 + 1.30)
    assert kinds(c) == ["rollover"]


def test_rollover_without_max_rate_needs_a_small_wrapped_amount():
    near = derive(series([9_990.0, 5.0, 9.0]), Limits(rollover=9999.99))
    assert kinds(near) == ["rollover"] and near.total == pytest.approx(10.0 + 5 + 4)
    # A drop from the middle of the register is not a wrap: it is a restart.
    far = derive(series([5_000.0, 5_010.0, 3.0, 9.0, 15.0]), Limits(rollover=9999.99))
    assert "rollover" not in kinds(far) and "reset" in kinds(far)


def test_meter_replacement_starts_a_segment_and_never_goes_negative():
    # Old register climbs 10 per interval; the new one starts near 0 and climbs 10 per interval.
    c = derive(series([5000.0, 5010.0, 5020.0, 4.0, 14.0, 24.0]))
    assert kinds(c) == ["reset"]
    assert all(b >= a for a, b in zip(c.cum, c.cum[1:], strict=False))
    # The interval across the swap is estimated from its neighbours' rates (10 per interval).
    assert c.total == pytest.approx(10 + 10 + 10 + 10 + 10)
    assert c.estimated == [(c.ts[2], c.ts[3], pytest.approx(10.0))]


def test_isolated_spike_is_quarantined_and_visible():
    lim = Limits(max_per_hour=100.0)  # at most 25 per interval
    c = derive(series([100.0, 110.0, 1e9, 130.0, 140.0]), lim)
    assert c.total == pytest.approx(40.0)
    assert kinds(c) == ["quarantined"]
    assert c.events[0].value == 1e9


def test_isolated_dip_is_quarantined_not_a_reset():
    c = derive(series([100.0, 110.0, 0.0, 130.0, 140.0]))
    assert kinds(c) == ["quarantined"]
    assert c.total == pytest.approx(40.0)


def test_jump_that_persists_is_a_level_shift_and_not_counted():
    lim = Limits(max_per_hour=100.0)
    c = derive(series([100.0, 110.0, 5000.0, 5010.0, 5020.0]), lim)
    assert kinds(c) == ["level_shift"]
    # 10, estimated 10 across the shift, 10, 10: the 4890 jump itself never counts.
    assert c.total == pytest.approx(40.0)


def test_pending_suspect_at_the_end_is_not_counted_yet():
    c = derive(series([100.0, 110.0, 3.0]))
    assert kinds(c) == ["unconfirmed"]
    assert c.total == pytest.approx(10.0)


def test_gap_is_spread_evenly_over_the_time_it_spans():
    t0 = 1_700_000_000
    c = derive([(t0, 0.0), (t0 + 6 * 3600, 60.0)])  # 6-hour gap, 60 consumed
    hours = [t0 + h * 3600 for h in range(7)]
    assert c.deltas(hours) == pytest.approx([10.0] * 6)
    # A boundary inside an interval takes its share of it.
    assert c.between(t0, t0 + 5400) == pytest.approx(15.0)


def test_nothing_is_counted_outside_the_readings():
    c = derive(series([10.0, 20.0], t0=1000))
    assert c.at(0) == 0.0 and c.at(1000 + 10 * Q) == pytest.approx(10.0)


def test_conflicting_values_for_one_timestamp_keep_the_last_and_say_so():
    pts = series([1.0, 2.0, 3.0])
    c = derive([*pts, (pts[1][0], 2.5)])
    assert c.total == pytest.approx(2.0)
    assert kinds(c) == ["conflict"]


def test_not_a_number_and_negative_registers_are_quarantined():
    c = derive(series([1.0, float("nan"), 3.0, -5.0, 4.0]))
    assert c.total == pytest.approx(3.0)
    assert kinds(c).count("quarantined") == 2


def test_received_counts_every_distinct_timestamp():
    pts = series([1.0, 2.0, 3.0, 4.0])
    c = derive(pts + pts[:2])
    assert c.count_in(pts[0][0], pts[-1][0] + 1) == 4
    assert c.count_in(pts[1][0], pts[3][0]) == 2


def test_limits_follow_the_meter_config():
    e = Meter(id="e", building="b", kind="electricity", rollover=99999.99, max_rate=50_000)
    w = Meter(id="w", building="b", kind="water", max_rate=12)
    assert Limits.for_meter(e) == Limits(99999.99, 50.0)  # W -> kWh per hour
    assert Limits.for_meter(w) == Limits(None, 12.0)


@st.composite
def registers(draw):
    """A register with consumption, wraps, restarts and glitches, as (points, limits)."""
    n = draw(st.integers(2, 60))
    mod = 1000.0
    v = draw(st.floats(0, 999))
    out = []
    for i in range(n):
        step = draw(st.sampled_from(["inc", "inc", "inc", "reset", "glitch"]))
        if step == "inc":
            v = (v + draw(st.floats(0, 20))) % mod
            out.append((i * Q, round(v, 2)))
        elif step == "reset":
            v = draw(st.floats(0, 5))
            out.append((i * Q, round(v, 2)))
        else:
            out.append((i * Q, draw(st.floats(0, 1e7))))
    return out, Limits(rollover=999.99, max_per_hour=draw(st.sampled_from([None, 80.0, 200.0])))


@settings(max_examples=200, deadline=None)
@given(registers(), st.randoms(use_true_random=False), st.floats(0, 0.5))
def test_no_negative_consumption_and_delivery_order_does_not_matter(
    data, rnd: random.Random, dup_share: float
):
    pts, lim = data
    ref = derive(pts, lim)
    assert all(b >= a for a, b in zip(ref.cum, ref.cum[1:], strict=False))
    assert all(c >= 0 for c in ref.at_many(ref.ts))
    shuffled = pts + rnd.sample(pts, int(len(pts) * dup_share))
    rnd.shuffle(shuffled)
    other = derive(shuffled, lim)
    assert other.ts == ref.ts and other.at_many(other.ts) == pytest.approx(ref.at_many(ref.ts))
