"""How the methods degrade as devices straggle more often.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
top-k at k/d = 10%, straggling probability p from 0 to 0.5, 2 seeds (gc, whose
least-squares decoder is the costliest step here, 1 seed). The quick variant uses 16
devices, p up to 0.4 and 3 seeds.

Question: as the straggling probability p grows, how do the final optimality gap and
the number of iterations needed to reach a target gap change for COCO-EF and its
baselines?

Expected: every method slows down with p, but the coded methods degrade gracefully:
COCO-EF's fixed decoder stays unbiased (its weights grow like 1/(1−p)) and its error
feedback keeps the stragglers' compression errors for later, so its gap grows slowly
with p; gc decodes exactly while the code can and is barely affected. The uncoded
methods (ef-uncoded, ignore-stragglers) lose whole partitions, so their error floor
grows with p; gc-compressed (no feedback) and the unbiased compressors stay above
COCO-EF at every p. At p = 0 COCO-EF is EF-SGD with top-k on a code.

Command: coco-jax run experiments/straggler_prob.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "straggler_prob"
DESCRIPTION = "final loss and iterations to a target loss against the straggling probability p"

METHODS = S.methods_without("gc-diana", "gd")
TARGET_GAP = 1e-3  # optimality gap F - F* counted as "reached"


def grid(quick: bool = False):
    probs = [0.0, 0.1, 0.2, 0.3, 0.4] if quick else [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    return cj.Grid(
        base=S.linreg(quick),
        axes={"preset": list(METHODS), "straggler_prob": probs, "seed": S.seeds(quick, full=2)},
        exclude=None if quick else gc_first_seed_only,
        name=NAME,
    )


def gc_first_seed_only(p) -> bool:
    """Full variant: gc (whose optimal decoder solves a least-squares problem over the
    100 devices every step, the costliest method here) runs the first seed only."""
    return p["preset"] == "gc" and p["seed"] > 0


def figures(df):
    df, y = tables.with_gap(df)
    finals = tables.final_values(df, y)
    hits = tables.steps_to_target(df, y, TARGET_GAP)
    steps = int(df["steps"].max())
    fig = plots.finals_figure(
        [
            {"finals": finals, "x": "straggler_prob", "y": y, "title": "final optimality gap"},
            {
                "finals": hits,
                "x": "straggler_prob",
                "y": "step",
                "ylabel": f"Iterations to F − F* ≤ {TARGET_GAP:g}",
                "title": "iterations to the target gap",
                "missing_note": f"missing points: target not reached within {steps} iterations",
                "logy": False,
            },
        ],
        title=f"Effect of the straggling probability p ({tables.setting_label(df)})",
    )
    return {"vs_p": fig}


def observations(df):
    df, y, what = S.gap_of(df)
    fin = tables.final_means(df, y, by=("method", "straggler_prob"))
    table = fin.pivot(index="straggler_prob", columns="method", values="final")
    if "coco-ef" not in table:
        return []
    coco = table["coco-ef"]
    probs = list(table.index)
    out = [
        (
            f"COCO-EF's final {what} (mean over seeds) is {rp.num(coco.iloc[0])} at p = {probs[0]:g} and "
            f"{rp.num(coco.iloc[-1])} at p = {probs[-1]:g} "
            f"({', '.join(f'{rp.num(v)} at {p:g}' for p, v in coco.items())})."
        )
    ]
    always, never, some = [], [], {}
    for m in table.columns:
        if m == "coco-ef":
            continue
        better = [p for p in probs if rp.compare(coco[p], table.loc[p, m]) == "below"]
        if len(better) == len(probs):
            always.append(m)
        elif not better:
            never.append(m)
        else:
            some[m] = better
    if always:
        out.append(f"COCO-EF ends below {', '.join(always)} at every p.")
    if never:
        out.append(f"COCO-EF ends at or above {', '.join(never)} at every p.")
    for m, ps in some.items():
        out.append(f"COCO-EF ends below {m} only at p ∈ {{{', '.join(f'{p:g}' for p in ps)}}}.")
    hits = tables.reach_means(df, y, TARGET_GAP, by=("method", "straggler_prob"))
    reach = hits.pivot(index="straggler_prob", columns="method", values="final")
    steps = int(df["steps"].max())
    for m in ("coco-ef", "gc"):
        if m in reach:
            r = reach[m]
            ok = [f"{v:.0f} at p = {p:g}" for p, v in r.items() if np.isfinite(v)]
            missed = [f"{p:g}" for p, v in r.items() if not np.isfinite(v)]
            out.append(
                f"{m} reaches {what} ≤ {TARGET_GAP:g} after (iterations, mean over seeds) "
                + (", ".join(ok) if ok else "no p")
                + (
                    f"; not within {steps} iterations in every seed at p ∈ {{{', '.join(missed)}}}"
                    if missed
                    else ""
                )
                + "."
            )
    never_reach = [m for m in reach.columns if not np.isfinite(reach[m]).any()]
    if never_reach:
        out.append(
            f"Never reaching {what} ≤ {TARGET_GAP:g} within {steps} iterations: {', '.join(never_reach)}."
        )
    return out
