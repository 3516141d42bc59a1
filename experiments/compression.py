"""Why biased compression needs error feedback, and wins with it.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
Bernoulli(0.2) stragglers, compression from k/d = 1% to 30% and QSGD with 1 to 16
levels. The quick variant uses 16 devices and k/d from 2%.

Question: how does the final optimality gap depend on the compression level: the kept
fraction k/d of top-k (biased) and rand-k (unbiased, scaled by d/k), and the number of
QSGD levels, with and without error feedback, under gradient coding with stragglers?

Expected: top-k without error feedback (gc-compressed) stalls at a gap that grows as
k/d shrinks: the coordinates it drops are lost for ever. With error feedback (COCO-EF)
the dropped mass is sent later and top-k reaches a small gap even at small k/d, better
than unbiased rand-k at the same k (whose variance grows like d/k) — the COCO-EF
paper's central claim. QSGD with few levels is noisy without feedback; DIANA removes
most of that noise; classic error feedback on an unbiased quantiser that is not a
contraction can make the memory grow.

Command: coco-jax run experiments/compression.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "compression"
DESCRIPTION = "final loss against k/d (top-k, rand-k) and QSGD levels, with and without error feedback"


def grid(quick: bool = False):
    base = S.linreg(quick)
    ratios = S.ratios(quick)
    levels = [1, 4, 16]
    seeds = S.seeds(quick, full=2)
    sparse = cj.Grid(
        base=base,
        axes={
            "compressor": ["topk", "randk_unbiased"],
            "error_feedback": ["ef", "none"],
            "compress_ratio": ratios,
            "seed": seeds,
        },
        exclude=unbiased_randk_with_ef,
        name="sparsification",
    )
    quant = cj.Grid(
        base=base.replace(compressor="qsgd"),
        axes={"error_feedback": ["ef", "none", "diana"], "qsgd_levels": levels, "seed": seeds},
        name="quantization",
    )
    return [sparse, quant]


def unbiased_randk_with_ef(p) -> bool:
    """Rand-k with EF is outside the question (unbiased compressors need no feedback)."""
    return p["compressor"] == "randk_unbiased" and p["error_feedback"] == "ef"


def label(row) -> str:
    ef = row["error_feedback"]
    if ef == "diana":
        return f"{row['compressor']} + DIANA"
    return f"{row['compressor']} + {'EF' if ef != 'none' else 'no EF'}"


def figures(df):
    df, y = tables.with_gap(df)
    sp = tables.final_values(df[df.part == "sparsification"], y)
    qu = tables.final_values(df[df.part == "quantization"], y)
    fig = plots.finals_figure(
        [
            {
                "finals": sp,
                "x": "compress_ratio",
                "y": y,
                "hue": label,
                "logx": True,
                "title": "sparsification (k of d coordinates)",
            },
            {
                "finals": qu,
                "x": "qsgd_levels",
                "y": y,
                "hue": label,
                "logx": True,
                "title": "QSGD quantization",
            },
        ],
        title=f"Compression level, with and without error feedback ({tables.setting_label(df)}, p = 0.2)",
    )
    return {"vs_level": fig}


def _factors(table, ref, other):
    """other / ref per x where both are finite."""
    if ref not in table or other not in table:
        return {}
    r = table[other] / table[ref]
    return {x: v for x, v in r.items() if np.isfinite(v)}


def observations(df):
    df, y, what = S.gap_of(df)
    out = []
    sp = df[df.part == "sparsification"]
    if not sp.empty:
        fin = tables.final_means(sp, y, by=("compress_ratio",), hue=label)
        table = fin.pivot(index="compress_ratio", columns="label", values="final")
        for other in ("topk + no EF", "randk_unbiased + no EF"):
            f = _factors(table, "topk + EF", other)
            if not f:
                continue
            wins = [x for x, v in f.items() if v > 1.01]
            lo, hi = min(f.values()), max(f.values())
            where = (
                "at every k/d"
                if len(wins) == len(f)
                else f"at k/d ∈ {{{', '.join(f'{x:g}' for x in wins)}}} of {len(f)} levels"
                if wins
                else "at no k/d"
            )
            out.append(
                f"Sparsification: top-k with error feedback ends below {other} {where}; {other}'s final "
                f"{what} is {rp.num(lo)}× to {rp.num(hi)}× that of top-k + EF "
                f"({', '.join(f'{rp.num(v)}× at {x:g}' for x, v in f.items())})."
            )
        if "topk + EF" in table:
            t = table["topk + EF"]
            out.append(
                f"Top-k + EF's final {what} goes from {rp.num(t.iloc[0])} at k/d = {t.index[0]:g} to "
                f"{rp.num(t.iloc[-1])} at k/d = {t.index[-1]:g}."
            )
    qu = df[df.part == "quantization"]
    if not qu.empty:
        fin = tables.final_means(qu, y, by=("qsgd_levels",), hue=label)
        table = fin.pivot(index="qsgd_levels", columns="label", values="final")
        best = {int(lv): table.loc[lv].idxmin() for lv in table.index if table.loc[lv].notna().any()}
        if best:
            out.append(
                f"Quantization, lowest final {what} per number of QSGD levels: "
                + ", ".join(f"{lv} levels: {m} ({rp.num(table.loc[lv, m])})" for lv, m in best.items())
                + "."
            )
        div = fin[fin["diverged"] > 0]
        if not div.empty:
            out.append(
                "Diverged or blown-up runs (dropped from the means): "
                + ", ".join(
                    f"{r.label} with {int(r.qsgd_levels)} levels ({r.diverged}/{r.runs})"
                    for r in div.itertuples()
                )
                + "."
            )
    return out
