"""Where COCO-EF beats its best rival: a map over straggling and compression.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
p from 0.1 to 0.5 and k/d from 1% to 30%. The quick variant uses 16 devices and a
4 × 4 map.

Question: over a grid of straggling probabilities p and compression levels k/d, by how
much does COCO-EF's final optimality gap differ from that of the best baseline that
uploads comparable messages (gc-compressed: top-k without feedback; gc-unbiased:
unbiased rand-k; ef-uncoded: top-k with feedback but no code — all three send k
values per message, so each cell compares equal message sizes)?

Expected: COCO-EF wins (blue cells, negative log-ratio) nearly everywhere, most
clearly at aggressive compression (small k/d), where biased compression without
feedback and unbiased compression both suffer, and at high p, where the uncoded method
loses most partitions. The margin shrinks at large k/d and small p, where every method
is close to uncompressed gradient descent.

Command: coco-jax run experiments/heatmap.py --quick   (full, 100 devices: without --quick)
"""

import collections

import numpy as np
import pandas as pd

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "heatmap"
DESCRIPTION = "COCO-EF's loss gap to the best compressed baseline over a (p, k/d) grid"
BASELINES = ("gc-compressed", "gc-unbiased", "ef-uncoded")


def grid(quick: bool = False):
    probs = [0.1, 0.2, 0.3, 0.4] if quick else [0.1, 0.2, 0.3, 0.4, 0.5]
    ratios = S.ratios(quick)
    return cj.Grid(
        base=S.linreg(quick),
        axes={
            "preset": ["coco-ef", *BASELINES],
            "straggler_prob": probs,
            "compress_ratio": ratios,
            "seed": S.seeds(quick, full=2),
        },
        name=NAME,
    )


def gap_table(df) -> tuple:
    """(log10 ratio table [p x k/d], winner table): COCO-EF's mean final gap over the best
    baseline's, per cell."""
    df, y = tables.with_gap(df)
    fin = tables.final_values(df, y)
    fin = fin[~fin["final_diverged"]]
    means = fin.groupby(["method", "straggler_prob", "compress_ratio"])["final"].mean()
    ratios = sorted(fin["compress_ratio"].unique())
    probs = sorted(fin["straggler_prob"].unique())
    out = np.full((len(probs), len(ratios)), np.nan)
    best = np.empty((len(probs), len(ratios)), dtype=object)
    for i, p in enumerate(probs):
        for j, r in enumerate(ratios):
            coco = means.get(("coco-ef", p, r), np.nan)
            rivals = {}
            for b in BASELINES:
                v = means.get((b, p, r), np.nan)
                if np.isfinite(v):
                    rivals[b] = v
            if rivals and np.isfinite(coco):
                name = min(rivals, key=rivals.get)
                out[i, j] = np.log10(coco / rivals[name])
                best[i, j] = name
    return pd.DataFrame(out, index=probs, columns=ratios), pd.DataFrame(best, index=probs, columns=ratios), y


def figures(df):
    table, best, y = gap_table(df)
    what = S.gap_name(y, "loss")
    fig = plots.heatmap_figure(
        table,
        xlabel="Compression level k/d",
        ylabel="Straggling probability p",
        colorbar_label=f"log10( COCO-EF {what} / best baseline {what} )",
        title=f"COCO-EF vs the best compressed baseline (blue: COCO-EF better; {tables.setting_label(df)})",
        note="Cell: log10 of the ratio of the mean final values over seeds, and the best baseline at that cell "
        "(among "
        + ", ".join(BASELINES)
        + "); grey: no finite value (diverged). Same k, so same message size.",
        annotations=best,
    )
    return {"gap_map": fig}


def observations(df):
    table, best, y = gap_table(df)
    what = S.gap_name(y, "loss")
    vals = table.to_numpy(np.float64)
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        return ["No cell has finite final values for COCO-EF and a baseline."]
    wins = int((finite < 0).sum())
    out = [
        (
            f"COCO-EF's mean final {what} is below the best compressed baseline's in {wins} of {finite.size} "
            f"cells (p × k/d); log10 ratios range from {finite.min():.2f} to {finite.max():.2f} "
            f"(COCO-EF's value is {rp.num(10 ** finite.min())}× to {rp.num(10 ** finite.max())}× "
            "the best baseline's)."
        )
    ]
    lost = [
        f"(p = {p:g}, k/d = {r:g})"
        for i, p in enumerate(table.index)
        for j, r in enumerate(table.columns)
        if np.isfinite(vals[i, j]) and vals[i, j] >= 0
    ]
    if lost:
        out.append(f"Cells where a baseline is at least as good: {', '.join(lost)}.")
    names = collections.Counter(b for b in best.to_numpy().ravel() if isinstance(b, str))
    if names:
        out.append(
            "Best baseline per cell: " + ", ".join(f"{n} in {c} cells" for n, c in names.most_common()) + "."
        )
    missing = int((~np.isfinite(vals)).sum())
    if missing:
        out.append(f"{missing} cells have no finite value (every run of a side diverged).")
    return out
