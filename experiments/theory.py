"""The quantities COCO-EF's convergence analysis is about, measured on the real runs.

Question: during training, what are (1) the compressor's empirical contraction
‖C(v) − v‖²/‖v‖² on the messages actually sent (v = coded gradient + error memory),
(2) the error-feedback memory ‖e‖ averaged over devices, and (3) the decoded
gradient's error ‖ĝ − ∇F(θ)‖², per step, and how do they move with the straggling
probability p and the compression level k/d?

Expected: top-k's contraction stays below its worst-case bound 1 − k/d (real gradients
are far from uniform), so the analysis' δ is conservative; the memory ‖e‖ stays
bounded (error feedback does not blow up) and grows as k/d shrinks and as p grows
(stragglers keep their memory); the decoding error grows with p (fewer messages, a
noisier fixed decoder) and as k/d shrinks, and is what sets COCO-EF's error floor.

Observed (quick variant): the contraction of top-k at k/d = 0.1 is about 0.72, well
below the bound 0.9; the memory ‖e‖ is bounded (about 2.1) and grows sharply as k/d
shrinks (about 11 at k/d = 0.02) but hardly moves with p; the decoding error grows with
p (0.023 to 0.041) and as k/d shrinks; coco-ef21's decoding error decays to about 1e-9.

Command: coco-jax run experiments/theory.py --quick   (full: without --quick, a GPU)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots
from coco_jax.experiment import seeds, standard_config

NAME = "theory"
DESCRIPTION = "empirical contraction, error-feedback memory and decoding error per step, against p and k/d"

METHODS = ("coco-ef", "coco-ef21", "gc-compressed", "ef-uncoded")
QUANTITIES = ("contraction", "ef_error_norm", "grad_error_sq")
REPORT_METRICS = QUANTITIES
BASE_P = 0.2
BASE_RATIO = 0.1
TAIL = 0.5  # "final" = mean over the last half of the evaluated steps (noisy quantities)


def grid(quick: bool = False):
    probs = [0.0, 0.1, 0.2, 0.4] if quick else [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    ratios = [0.02, 0.1, 0.3] if quick else [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    return cj.Grid(
        base=standard_config(quick, straggler_prob=BASE_P, compress_ratio=BASE_RATIO),
        axes={
            "preset": list(METHODS),
            "straggler_prob": probs,
            "compress_ratio": ratios,
            "seed": seeds(quick),
        },
        name=NAME,
    )


def figures(df):
    base = df[np.isclose(df.straggler_prob, BASE_P) & np.isclose(df.compress_ratio, BASE_RATIO)]
    per_step = plots.curves_figure(
        base,
        [("step", q) for q in QUANTITIES],
        title=f"Per step (p = {BASE_P:g}, k/d = {BASE_RATIO:g})",
    )
    panels_p, panels_r = [], []
    for q in QUANTITIES:
        fp = plots.final_values(df[np.isclose(df.compress_ratio, BASE_RATIO)], q, tail=TAIL)
        fr = plots.final_values(df[np.isclose(df.straggler_prob, BASE_P)], q, tail=TAIL)
        panels_p.append({"finals": fp, "x": "straggler_prob", "y": q})
        ref = None
        if q == "contraction":
            xs = np.geomspace(fr.compress_ratio.min(), fr.compress_ratio.max(), 50)
            ref = (xs, 1 - xs, "top-k bound 1 − k/d")
        panels_r.append({"finals": fr, "x": "compress_ratio", "y": q, "logx": True, "reference": ref})
    vs_p = plots.finals_figure(
        panels_p, title=f"Against p (k/d = {BASE_RATIO:g}; mean over the last half of training)"
    )
    vs_r = plots.finals_figure(
        panels_r, title=f"Against k/d (p = {BASE_P:g}; mean over the last half of training)"
    )
    return {"per_step": per_step, "vs_p": vs_p, "vs_ratio": vs_r}
