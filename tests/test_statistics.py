"""Statistics of coco_jax/tables.py: Student-t intervals over seeds, table cells, and
paired-by-seed comparisons whose verdict ("below", "above", "indistinguishable") is the
only comparison a sentence may state."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from coco_jax import tables, testing


def test_t_interval_equals_scipy_on_fresh_random_samples():
    """Against scipy.stats.t.interval on 200 fresh samples of 2..30 values at three
    levels. Both compute mean ± t·s/√n in float64 (scipy via sem): they agree to
    reassociation, rtol 1e-12 (plus an atol of 1e-12 × the scale for means near 0)."""
    rng = np.random.default_rng()
    for _ in range(200):
        n = int(rng.integers(2, 31))
        scale = 10 ** rng.uniform(-6, 3)
        x = rng.normal(rng.normal() * scale, scale, size=n)
        level = float(rng.choice([0.9, 0.95, 0.99]))
        iv = tables.t_interval(x, level)
        lo, hi = stats.t.interval(level, n - 1, loc=x.mean(), scale=stats.sem(x))
        np.testing.assert_allclose([iv.low, iv.high], [lo, hi], rtol=1e-12, atol=1e-12 * scale)
        assert (
            iv.n == n
            and iv.level == level
            and iv.mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-12 * scale)
        )


def test_t_interval_edge_cases():
    one = tables.t_interval([3.0, np.nan, np.inf])  # non-finite values are not runs
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.low) and not one.excludes(0.0)
    assert tables.t_interval([]).n == 0
    # a textbook value: {1, 2, 3}: mean 2, s = 1, t_{0.975, 2} = 4.302653 -> half-width 2.484
    assert tables.t_interval([1.0, 2.0, 3.0]).half == pytest.approx(
        4.302652729749464 / math.sqrt(3), rel=1e-12
    )


def test_the_interval_covers_the_mean_at_its_level():
    """Coverage: over 4000 fresh normal samples of 5, the 95% interval holds the true
    mean in 95% of them; the binomial standard error is √(0.95·0.05/4000) ≈ 0.0034, so
    ±0.015 (4.4 standard errors) fails by chance with probability < 1e-5."""
    rng = np.random.default_rng()
    x = rng.normal(1.0, 2.0, size=(4000, 5))
    hits = [tables.t_interval(row).low <= 1.0 <= tables.t_interval(row).high for row in x]
    assert abs(np.mean(hits) - 0.95) < 0.015


def test_paired_difference_verdicts_and_pairing():
    """Pairing removes what the seeds share: per-seed values that differ a lot between
    seeds but by a steady 1 % between methods are 'below' when paired, although the two
    methods' own intervals overlap."""
    rng = np.random.default_rng()
    base = rng.uniform(1, 10, size=6)
    b = pd.Series(base, index=range(6))
    a = pd.Series(base * 0.99 * (1 + 1e-4 * rng.normal(size=6)), index=range(6))
    d = tables.paired_difference(a, b, labels=("coco-ef", "gc"), where="p = 0.2")
    assert d.verdict == "below" and d.interval.n == 6 and d.dropped == 0
    ia, ib = tables.t_interval(a), tables.t_interval(b)
    assert ia.high > ib.low  # unpaired, they could not be told apart
    assert tables.paired_difference(b, a).verdict == "above"
    # noise of either sign: the interval contains 0
    c = pd.Series(base + rng.normal(0, 1e-3, size=6) * np.array([1, -1, 1, -1, 1, -1]), index=range(6))
    e = tables.paired_difference(c, b)
    assert (e.verdict == "indistinguishable") == (e.interval.low <= 0 <= e.interval.high)
    # ratios: log10 a − log10 b; a = b / 2 everywhere → ratio 0.5 exactly
    r = tables.paired_difference(b / 2, b, log=True)
    assert r.interval.mean == pytest.approx(math.log10(0.5), rel=1e-12) and r.verdict == "below"
    assert "ratio 0.5 [0.5, 0.5]" in r.text()
    # non-finite and missing values drop their pair; fewer than 2 pairs: no verdict
    gap = tables.paired_difference({0: 1.0, 1: np.inf, 2: 3.0}, {0: 2.0, 1: 1.0, 3: 1.0})
    assert gap.interval.n == 1 and gap.dropped == 3 and gap.verdict == "indistinguishable"
    assert "too few for an interval" in gap.text() and "3 dropped" in gap.text()


def test_sentences_say_below_only_when_the_interval_excludes_zero():
    b = pd.Series([1.0, 2.0, 3.0, 4.0])
    below = tables.paired_difference(b - pd.Series([0.4, 0.5, 0.6, 0.5]), b, labels=("coco-ef", "gc"))
    assert below.sentence("final gap").startswith("coco-ef's final gap is below gc's (-0.5 [-0.63, -0.37]")
    flat = tables.paired_difference(b - 0.5, b, labels=("coco-ef", "gc"))  # every pair -0.5: no spread
    assert flat.sentence("final gap") == (
        "coco-ef's final gap is below gc's (-0.5 in all 4 seed pairs: no spread, the seeds do not vary it "
        "(one observation, no interval))"
    )
    mixed = tables.paired_difference(b + pd.Series([0.1, -0.1, 0.2, -0.2]), b, labels=("a", "b"))
    assert mixed.verdict == "indistinguishable"
    assert "is indistinguishable from b's" in mixed.sentence() and "95% CI, 4 seed pairs" in mixed.sentence()


def test_compare_runs_pairs_by_seed_and_data_seed():
    """On synthetic results after 400 steps, where the made-up floors 1e-3·(1 + i)(1 + p)
    of method number i dominate (testing._made_up_history), coco-ef's final loss is
    below gc's at every p; runs pair by (seed, data_seed): shifting gc's data seeds
    leaves nothing to pair."""
    df = testing.synthetic_results(
        methods=("coco-ef", "gc"), straggler_probs=(0.1, 0.3), seeds=4, steps=400, eval_every=50
    )
    diffs = tables.compare_runs(df, "loss", "coco-ef", "gc", by=("straggler_prob",), log=True)
    assert [d.where for d in diffs] == ["straggler_prob = 0.1", "straggler_prob = 0.3"]
    assert all(d.verdict == "below" and d.interval.n == 4 for d in diffs)
    assert [d.verdict for d in tables.compare_runs(df, "loss", "gc", "coco-ef", by=("straggler_prob",))] == [
        "above",
        "above",
    ]
    moved = df.copy()
    moved.loc[moved.method == "gc", "data_seed"] = 7
    unpaired = tables.compare_runs(moved, "loss", "coco-ef", "gc", by=("straggler_prob",))
    assert all(d.interval.n == 0 and d.dropped == 8 for d in unpaired)
    with pytest.raises(ValueError, match="several runs per seed pair"):
        tables.compare_runs(df, "loss", "coco-ef", "gc")  # two p values per seed: put p in `by`


def test_diverged_runs_drop_their_pairs():
    df = testing.synthetic_results(methods=("coco-ef", "gc"), seeds=3, steps=400, eval_every=50)
    bad = (df.method == "gc") & (df.seed == 0) & (df.step == df.step.max())
    df.loc[bad, "loss"] = 1e6  # a finite blow-up: diverged by the one rule
    (d,) = tables.compare_runs(df, "loss", "coco-ef", "gc")
    assert d.interval.n == 2 and d.dropped == 1


def test_interval_text_never_prints_an_excluded_null_or_equal_ends():
    """Printed bounds carry the digits that keep them apart and away from the null value
    when the numbers are: a ratio interval that excludes 1 is never shown as "[1, ...]",
    a narrow one never as "[x, x]"; a wide one keeps two significant digits."""
    rng = np.random.default_rng()
    for _ in range(200):
        low = 1 + rng.uniform(1e-5, 1e-2) * rng.choice([-1, 1])
        width = 10 ** rng.uniform(-5, 0)
        high = low + width if low > 1 else 1 + rng.uniform(1e-5, 1e-2) * rng.choice([-1, 1])
        low, high = min(low, high), max(low, high)
        iv = tables.Interval(math.log10((low * high) ** 0.5), math.log10(low), math.log10(high), 3)
        text = tables.Difference("a", "b", "", iv, log=True).numbers()
        ends = text[text.index("[") + 1 : text.index("]")].split(", ")
        if low != high:
            assert ends[0] != ends[1], text
        for shown, value in zip(ends, (low, high)):
            assert shown != "1" or value == 1, text
            assert float(shown) == pytest.approx(value, rel=10**-1), text
        excludes = iv.excludes(0.0)
        assert excludes == (low > 1 or high < 1)
    wide = tables.Difference("a", "b", "", tables.Interval(0.0, -0.5, 0.5, 3), log=True).numbers()
    assert wide.startswith("ratio 1 [0.32, 3.2]"), wide
    diff = tables.Difference("a", "b", "", tables.Interval(0.01105, 0.01101, 0.01109, 4)).numbers()
    assert diff.startswith("0.0111 [0.011, 0.0111]"), diff  # 2 digits would print [0.011, 0.011]
