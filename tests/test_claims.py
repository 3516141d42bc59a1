"""The Claims machinery of coco_jax/report.py: `Claim`, the verdict helpers that decide
a claim from paired intervals, and the "Claims" table at the top of report.md.

The synthetic tables (`coco_jax.testing.synthetic_results`) run 400 steps, after which
the made-up floor 1e-3·(1 + i)(1 + p) of method number i decides every comparison: the
answer is known, in both directions."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from coco_jax import report, tables, testing
from coco_jax.report import Claim, claim_all, claim_by_construction, claim_threshold


@pytest.fixture(scope="module")
def df():
    return testing.synthetic_results(
        methods=("coco-ef", "gc", "ef-uncoded"), straggler_probs=(0.1, 0.3), seeds=4, steps=400, eval_every=50
    )


def _below(df, a, b):
    return tables.compare_runs(df, "loss", a, b, by=("straggler_prob",), log=True)


def test_a_claim_that_holds_and_the_same_check_failing(df):
    """The check can fail: the claim in the wrong direction is contradicted."""
    holds = claim_all("COCO-EF ends below gc at every p", "paper", _below(df, "coco-ef", "gc"))
    assert holds.verdict == "holds" and len(holds.evidence) == 2
    assert all("ratio" in e and "95% CI, 4 seed pairs" in e for e in holds.evidence)
    wrong = claim_all("gc ends below COCO-EF at every p", "paper", _below(df, "gc", "coco-ef"))
    assert wrong.verdict == "contradicted"
    above = claim_all(
        "gc ends above COCO-EF", "module: Expected", _below(df, "gc", "coco-ef"), expect="above"
    )
    assert above.verdict == "holds"


def test_inconclusive_when_an_interval_contains_zero(df):
    """A method against a copy of itself with sign-alternating noise: no interval
    excludes 0 on either side; one setting with a single seed pair has no interval."""
    a = df[df.method == "coco-ef"].copy()
    b = a.assign(method="copy", loss=a["loss"].astype(np.float64))
    rng = np.random.default_rng(1)
    last = b.step == b.step.max()
    b.loc[last, "loss"] *= 1 + 1e-3 * np.where(b.loc[last, "seed"] % 2 == 0, 1, -1) * (
        1 + 0.1 * rng.random(last.sum())
    )
    diffs = tables.compare_runs(pd.concat([a, b]), "loss", "coco-ef", "copy", by=("straggler_prob",))
    claim = claim_all("COCO-EF below its copy", "test", diffs)
    assert {d.verdict for d in diffs} == {"indistinguishable"} and claim.verdict == "inconclusive"
    one_pair = tables.paired_difference({0: 1.0}, {0: 2.0})
    assert claim_all("x", "y", [one_pair]).verdict == "inconclusive"  # no interval: no verdict
    assert claim_all("x", "y", []).verdict == "inconclusive"
    # mixed: one setting holds, one contradicts -> contradicted
    mixed = [_below(df, "coco-ef", "gc")[0], _below(df, "gc", "coco-ef")[1]]
    assert claim_all("x", "y", mixed).verdict == "contradicted"


def test_a_zero_width_interval_is_one_observation():
    """Seed pairs that all give the same difference (deterministic runs on one data
    draw) are one observation: they say so, never make a claim hold alone, and on the
    wrong side keep it from holding without contradicting it."""
    rng = np.random.default_rng()
    seeds = range(int(rng.integers(3, 7)))
    lo, hi = float(rng.uniform(0.1, 0.5)), float(rng.uniform(2.0, 5.0))
    same = lambda v: {s: v for s in seeds}
    noisy = lambda v: {s: v * (1 + 0.05 * rng.standard_normal()) for s in seeds}
    flat_below = tables.paired_difference(same(lo), same(1.0), log=True)
    flat_above = tables.paired_difference(same(hi), same(1.0), log=True)
    varied_below = tables.paired_difference(noisy(lo), noisy(1.0), log=True)
    varied_above = tables.paired_difference(noisy(hi), noisy(1.0), log=True)
    assert flat_below.interval.degenerate and not varied_below.interval.degenerate
    assert flat_below.verdict == "below" and "no spread" in flat_below.numbers()
    assert "[" not in flat_below.numbers()  # no zero-width "[x, x]" interval printed
    assert claim_all("x", "y", [flat_below]).verdict == "inconclusive"
    assert claim_all("x", "y", [flat_below, varied_below]).verdict == "holds"
    assert claim_all("x", "y", [flat_above, varied_below]).verdict == "inconclusive"
    assert claim_all("x", "y", [flat_below, varied_above]).verdict == "contradicted"
    assert claim_all("x", "y", [flat_below, varied_below], minimum=2).verdict == "inconclusive"
    iv = tables.t_interval
    flat, varied = iv([lo] * len(seeds)), iv([lo, lo * 1.1, lo * 0.9])
    assert flat.degenerate and not varied.degenerate
    assert claim_threshold("below 1", "s", {"a": flat}, below=1.0).verdict == "inconclusive"
    assert claim_threshold("below 1", "s", {"a": flat, "b": varied}, below=1.0).verdict == "holds"
    wrong = claim_threshold("below 1", "s", {"a": iv([hi] * 3), "b": varied}, below=1.0)
    assert wrong.verdict == "inconclusive" and "no spread: one observation" in wrong.evidence[0]


def test_threshold_claims_and_claims_by_construction():
    iv = tables.t_interval
    assert claim_threshold("below 1", "s", {"a": iv([0.5, 0.6, 0.55])}, below=1.0).verdict == "holds"
    assert claim_threshold("below 1", "s", {"a": iv([1.5, 1.6, 1.55])}, below=1.0).verdict == "contradicted"
    assert claim_threshold("below 1", "s", {"a": iv([0.5, 1.5, 1.0])}, below=1.0).verdict == "inconclusive"
    assert (
        claim_threshold(
            "above 1", "s", {"a": iv([1.5, 1.6, 1.55]), "b": iv([2.0, 2.1, 2.05])}, above=1.0
        ).verdict
        == "holds"
    )
    with pytest.raises(ValueError, match="exactly one"):
        claim_threshold("x", "s", {}, below=1.0, above=2.0)
    c = claim_by_construction(
        "top-k's contraction is below 1 - k/d", "theory", "top-k keeps the k largest entries"
    )
    assert c.verdict == "holds by construction" and c.evidence == ("top-k keeps the k largest entries",)
    with pytest.raises(ValueError, match="verdict='probably'"):
        Claim("x", "y", "probably")


def test_report_lists_the_claims_at_its_top(tmp_path, df):
    """Every section's claims, in one table right after the run block, before any
    section; a failing claims() is said, not raised; the verdicts match the evidence."""
    exp = types.SimpleNamespace(name="x", description="d", doc="", parts=("a", "b"), path=tmp_path / "x.py")
    claims_a = lambda d: [
        claim_all("COCO-EF below gc at every p", "paper", _below(d, "coco-ef", "gc")),
        claim_all("gc below COCO-EF at every p", "a: Expected", _below(d, "gc", "coco-ef")),
        claim_by_construction("the code is exact", "a: Expected", "s = M - 1"),
    ]
    a = report.Section("a", "first", "", {}, df.assign(part="a"), claims=claims_a)
    b = report.Section("b", "second", "", {}, df.assign(part="b"), claims=lambda d: 1 / 0)
    report.write_report(tmp_path, exp, [a, b], {"quick": True})
    text = (tmp_path / "report.md").read_text()
    assert text.index(f"## {report.CLAIMS_HEADING}") < text.index("## Contents") < text.index("## a")
    rows = [ln for ln in text.splitlines() if ln.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    assert len(rows) == 3
    assert "| a | COCO-EF below gc at every p | paper | **holds** |" in rows[0]
    assert "**contradicted**" in rows[1] and "**holds by construction**" in rows[2]
    assert rows[0].count("straggler_prob = ") == 2 and "<br>" in rows[0]
    assert "1 holds, 1 contradicted, 1 holds by construction." in text
    assert "_(b: claims could not be computed: ZeroDivisionError" in text
    # no claims anywhere: no section
    report.write_report(
        tmp_path, exp, [report.Section("a", "first", "", {}, df.assign(part="a"))], {"quick": True}
    )
    assert report.CLAIMS_HEADING not in (tmp_path / "report.md").read_text().split("## a")[0].replace(
        "Contents", ""
    )
