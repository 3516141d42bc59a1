"""The quantities COCO-EF's convergence analysis is about, measured on the real runs.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1;
p = 0, 0.2, 0.3, 0.5 at k/d = 10% and k/d varies at p = 0.2. Every method runs at its
own tuned step (9 candidates around 1/L̂ on tuning seeds 100-101, edges extended), 5
reported seeds (3 quick) on one data draw. The quick variant uses 16 devices and p = 0,
0.1, 0.2, 0.4.

Methods: the four whose messages carry a compression error the analysis bounds
(coco-ef, coco-ef21, gc-compressed, ef-uncoded). Not applicable: gc, ignore-stragglers
and gd send uncompressed gradients (no contraction, no memory); gc-unbiased,
gc-diana and onebit-gc use unbiased compressors, which are not contractions (their
‖C(v) − v‖²/‖v‖² can exceed 1), so the contraction bound the analysis uses is not
theirs.

Question: during training, what are (1) the compressor's empirical contraction
‖C(v) − v‖²/‖v‖² on the messages actually sent (v = coded gradient + error memory),
(2) the error-feedback memory ‖e‖ averaged over devices, and (3) the decoded
gradient's error ‖ĝ − ∇F(θ)‖², per step, and how do they move with the straggling
probability p and the compression level k/d?

Expected: top-k's contraction is at most 1 − k/d by construction (it keeps the k
largest entries); how far below it the real messages are is measured, not claimed.
The memory ‖e‖ stays
bounded (error feedback does not blow up) and grows as k/d shrinks; the decoding error
grows with p (fewer messages, a noisier fixed decoder) and as k/d shrinks, and is what
sets COCO-EF's error floor; coco-ef21's server keeps every device's last state, so its
decoding error decays.

Command: coco-jax run experiments/theory.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np
import pandas as pd

from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py
C = helper_module(__file__, "compression")  # exp-b's shared helpers (tuned grid, checks)

NAME = "theory"
DESCRIPTION = "empirical contraction, error-feedback memory and decoding error per step, against p and k/d"

METHODS = ("coco-ef", "coco-ef21", "gc-compressed", "ef-uncoded")
QUANTITIES = ("contraction", "ef_error_norm", "grad_error_sq")
REPORT_METRICS = QUANTITIES
BASE_P = 0.2
BASE_RATIO = 0.1
OVER = ("seed", "data_seed", "lr")  # the tuned lr differs between the cells of one curve
TAIL = 0.5  # "final" = mean over the last half of the evaluated steps (noisy quantities)


def grid(quick: bool = False):
    probs = [0.0, 0.1, 0.2, 0.4] if quick else [0.0, 0.2, 0.3, 0.5]  # full: 4 levels (time budget)
    ratios = S.ratios(quick)
    return C.tuned(
        S.linreg(quick, straggler_prob=BASE_P, compress_ratio=BASE_RATIO),
        {"preset": list(METHODS), "straggler_prob": probs, "compress_ratio": ratios},
        NAME,
        quick,
        exclude=off_the_two_lines,
    )


def off_the_two_lines(p) -> bool:
    """Only p at the base k/d and k/d at the base p are drawn: skip the other cells."""
    return not (np.isclose(p["straggler_prob"], BASE_P) or np.isclose(p["compress_ratio"], BASE_RATIO))


def figures(df):
    base = df[np.isclose(df.straggler_prob, BASE_P) & np.isclose(df.compress_ratio, BASE_RATIO)]
    per_step = plots.curves_figure(
        base,
        [("step", q) for q in QUANTITIES],
        over=("seed", "data_seed", "lr"),
        title=f"Per step (p = {BASE_P:g}, k/d = {BASE_RATIO:g}; {tables.setting_label(base)})",
    )
    panels_p, panels_r = [], []
    for q in QUANTITIES:
        fp = tables.final_values(df[np.isclose(df.compress_ratio, BASE_RATIO)], q, tail=TAIL)
        fr = tables.final_values(df[np.isclose(df.straggler_prob, BASE_P)], q, tail=TAIL)
        panels_p.append({"finals": fp, "x": "straggler_prob", "y": q, "over": OVER})
        ref = None
        if q == "contraction":
            xs = np.geomspace(fr.compress_ratio.min(), fr.compress_ratio.max(), 50)
            ref = (xs, 1 - xs, "top-k bound 1 − k/d")
        panels_r.append(
            {"finals": fr, "x": "compress_ratio", "y": q, "logx": True, "reference": ref, "over": OVER}
        )
    vs_p = plots.finals_figure(
        panels_p, title=f"Against p (k/d = {BASE_RATIO:g}; mean over the last half of training)"
    )
    vs_r = plots.finals_figure(
        panels_r, title=f"Against k/d (p = {BASE_P:g}; mean over the last half of training)"
    )
    return {"per_step": per_step, "vs_p": vs_p, "vs_ratio": vs_r}


def _tail_means(df, q, by):
    return tables.final_means(df, q, by=by, tail=TAIL)


def observations(df):
    out = []
    at_r = df[np.isclose(df.compress_ratio, BASE_RATIO)]
    at_p = df[np.isclose(df.straggler_prob, BASE_P)]
    c = _tail_means(at_p, "contraction", ("method", "compress_ratio"))
    c = c[c.method == "coco-ef"].sort_values("compress_ratio")
    if not c.empty:
        out.append(
            "COCO-EF's empirical top-k contraction (mean over the last half of training) against the bound "
            "1 − k/d: "
            + ", ".join(f"{rp.num(v)} vs {1 - r:g} at k/d = {r:g}" for r, v in zip(c.compress_ratio, c.final))
            + " (top-k cannot exceed the bound: it keeps the k largest entries)."
        )
    e = _tail_means(at_p, "ef_error_norm", ("method", "compress_ratio"))
    e = e[e.method == "coco-ef"].sort_values("compress_ratio")
    if not e.empty:
        out.append(
            "COCO-EF's mean memory ‖e‖ by k/d (p = "
            + f"{BASE_P:g}): "
            + rp.listing({f"k/d = {r:g}": v for r, v in zip(e.compress_ratio, e.final)})
            + "."
        )
    ep = _tail_means(at_r, "ef_error_norm", ("method", "straggler_prob"))
    ep = ep[ep.method == "coco-ef"].sort_values("straggler_prob")
    if not ep.empty:
        out.append(
            f"COCO-EF's mean memory ‖e‖ by p (k/d = {BASE_RATIO:g}): "
            + rp.listing({f"p = {p:g}": v for p, v in zip(ep.straggler_prob, ep.final)})
            + "."
        )
    g = _tail_means(at_r, "grad_error_sq", ("method", "straggler_prob"))
    for m in ("coco-ef", "coco-ef21"):
        gm = g[g.method == m].sort_values("straggler_prob")
        if not gm.empty:
            out.append(
                f"{m}'s decoding error ‖ĝ − ∇F‖² (mean over the last half) by p (k/d = {BASE_RATIO:g}): "
                + rp.listing({f"p = {p:g}": v for p, v in zip(gm.straggler_prob, gm.final)})
                + "."
            )
    return out


# ------------------------------------------------------------------------ claims


def _ends(fin: pd.DataFrame, x: str, method: str, where: str) -> list:
    """Paired difference (over seed pairs) of `method`'s tail mean at the largest `x`
    against the smallest (log10: a ratio); [] with fewer than two levels."""
    m = fin[fin.method == method]
    xs = sorted(m[x].unique())
    if len(xs) < 2:
        return []
    side = []
    for v in (xs[-1], xs[0]):
        rows = m[np.isclose(m[x], v)]
        vals = rows["final"].where(~rows["final_diverged"].astype(bool))
        side.append(pd.Series(vals.to_numpy(), index=list(zip(rows["seed"], rows["data_seed"]))))
    return [
        tables.paired_difference(
            side[0],
            side[1],
            labels=(f"{method} at {x} = {xs[-1]:g}", f"at {x} = {xs[0]:g}"),
            where=where,
            log=True,
        )
    ]


def claims(df):
    src = f"{NAME}: Expected"
    out = [
        rp.claim_by_construction(
            "top-k's empirical contraction ‖C(v) − v‖²/‖v‖² is at most 1 − k/d",
            src,
            "top-k keeps the k largest of d entries, so the dropped mass is at most (d − k)/d of ‖v‖²",
        )
    ]
    at_r = df[np.isclose(df.compress_ratio, BASE_RATIO)]
    at_p = df[np.isclose(df.straggler_prob, BASE_P)]
    if at_p.empty or at_r.empty:
        return out
    trends = (  # (rows, column, axis, where, statement, expect)
        (at_p, "ef_error_norm", "compress_ratio", f"p = {BASE_P:g}",
         "COCO-EF's memory ‖e‖ grows as k/d shrinks (smallest k/d above largest)", "below"),
        (at_r, "grad_error_sq", "straggler_prob", f"k/d = {BASE_RATIO:g}",
         "COCO-EF's decoding error ‖ĝ − ∇F‖² grows with p (largest p above smallest)", "above"),
        (at_p, "grad_error_sq", "compress_ratio", f"p = {BASE_P:g}",
         "COCO-EF's decoding error grows as k/d shrinks (smallest k/d above largest)", "below"),
    )  # fmt: skip
    for rows, column, axis, where, statement, expect in trends:
        diffs = _ends(tables.final_values(rows, column, tail=TAIL), axis, "coco-ef", where)
        if diffs:
            out.append(rp.claim_all(statement, src, diffs, expect=expect))
    if {"coco-ef", "coco-ef21"} <= set(at_r.method):
        diffs = tables.compare_runs(
            at_r, "grad_error_sq", "coco-ef21", "coco-ef", by=("straggler_prob",), tail=TAIL, log=True
        )
        out.append(
            rp.claim_all(
                "coco-ef21's decoding error (server keeps every device's last state) is below COCO-EF's at every p",
                src,
                diffs,
            )
        )
    return out
