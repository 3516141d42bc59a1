"""How label heterogeneity across devices changes the comparison.

Paper setting: a classification setting beside the COCO-EF paper's: softmax regression
on synthetic data (`synthetic`: 20 Gaussian features, 10 classes drawn from a random
linear teacher with Gumbel noise, so the classes overlap and F* is finite; d = 210),
40 training rows per device over 100 devices as in the paper's settings, partitioned in
four ways, from homogeneous to fully label-sorted: iid, Dirichlet label skew with α = 1
and α = 0.1, and sorted by label (each device sees one or two classes). Cyclic code s =
1, Bernoulli(0.2) stragglers, top-k with k/d = 10%, fixed decoder. Every method runs at
its own tuned step (9 candidates around 1/L̂ on tuning seeds 100-101, edges extended)
per partitioning, 5 reported seeds (3 quick) on one data draw. The quick variant uses 16
devices and leaves out Dirichlet α = 1.

Question: as the devices' data become more heterogeneous, how do COCO-EF and the
baselines compare: do the methods that lose partitions (no code: ef-uncoded,
ignore-stragglers) or lose coordinates for ever (no feedback: gc-compressed) suffer more,
and does COCO-EF keep its advantage?

Methods: coco-ef, coco-ef21, gc, gc-compressed, gc-unbiased, gc-diana, ef-uncoded and
ignore-stragglers. Left out for the time budget (every method costs one tuned cell per
partitioning): onebit-gc (another unbiased compressor beside gc-unbiased and gc-diana)
and gd (no stragglers: heterogeneity only matters through lost partitions); the methods
study compares both.

Expected: with iid partitions every device's gradient resembles the full one, so
losing a partition costs little and the uncoded methods are close to the coded ones.
With label-sorted partitions (and Dirichlet α = 0.1) a lost partition removes whole
classes from the step: ef-uncoded's and ignore-stragglers' final loss grows from iid to
sorted, and COCO-EF's advantage over ef-uncoded grows with heterogeneity; COCO-EF ends
below gc-compressed (biased compression without feedback) and gc-unbiased (unbiased
compression) at every partitioning.

Command: coco-jax run experiments/heterogeneity.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np
import pandas as pd

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py
C = helper_module(__file__, "compression")  # exp-b's shared helpers (tuned grid, checks)

NAME = "heterogeneity"
DESCRIPTION = "COCO-EF and the baselines against label heterogeneity (iid, Dirichlet α = 1 and 0.1, sorted)"
METHODS = S.methods_without("onebit-gc", "gd")
EXPECTED = f"{NAME}: Expected"
PAPER = "paper (arXiv 2603.16353)"
# (partitioning, dirichlet_alpha) from homogeneous to label-sorted; alpha is unused by iid and sorted
SPLITS = (("iid", 0.5), ("dirichlet", 1.0), ("dirichlet", 0.1), ("sorted", 0.5))
QUICK_SPLITS = (SPLITS[0], SPLITS[2], SPLITS[3])  # each partitioning is a batch of its own (its data)
STEPS = 300  # at 200 steps coco-ef21 (the best) still falls by 70% over the last 20% of the steps
OVER = ("seed", "data_seed", "lr", "partitioning", "dirichlet_alpha")


def split_name(row) -> str:
    """ "iid", "dirichlet α=1", "dirichlet α=0.1" or "sorted"."""
    if row["partitioning"] == "dirichlet":
        return f"dirichlet α={row['dirichlet_alpha']:g}"
    return str(row["partitioning"])


ORDER = [split_name({"partitioning": p, "dirichlet_alpha": a}) for p, a in SPLITS]


def base(quick: bool) -> cj.ExperimentConfig:
    m = S.devices(quick)
    return cj.ExperimentConfig(
        **S.COMMON,
        task="softmax",
        dataset="synthetic",
        num_features=20,
        num_classes=10,
        num_samples=S.ROWS_PER_DEVICE * m,
        num_test=500,
        num_devices=m,
        lr=0.1,
        steps=STEPS,
        eval_every=10,
    )


def grid(quick: bool = False):
    splits = QUICK_SPLITS if quick else SPLITS
    return C.tuned(
        base(quick),
        {"preset": METHODS},
        NAME,
        quick,
        zip_axes={"partitioning": [p for p, _ in splits], "dirichlet_alpha": [a for _, a in splits]},
    )


def _with_split(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(split=tables.label_column(df, split_name).to_numpy()) if not df.empty else df


def figures(df):
    df, y = tables.with_gap(df)
    fin = _with_split(tables.final_values(df, y))
    fin["split_index"] = fin["split"].map({s: i for i, s in enumerate(ORDER)})
    fig = plots.finals_figure(
        [
            {
                "finals": fin,
                "x": "split_index",
                "y": y,
                "over": OVER,
                "logx": False,
                "title": "final value, each method at its tuned lr",
                "xlabel": "Partitioning: " + ", ".join(f"{i} {s}" for i, s in enumerate(ORDER)),
            }
        ],
        title=f"Label heterogeneity ({tables.setting_label(df)}, p = 0.2, k/d = 0.1)",
    )
    return {"vs_heterogeneity": fig}


def _log_ratios(fin: pd.DataFrame, a: str, b: str, split: str) -> pd.Series:
    """Per seed pair: log10(a's final / b's final) at one partitioning (NaN where missing)."""
    sides = []
    for m in (a, b):
        rows = fin[(fin.method == m) & (fin.split == split)]
        vals = rows["final"].where(~rows["final_diverged"].astype(bool)).to_numpy(np.float64)
        with np.errstate(all="ignore"):
            sides.append(pd.Series(np.log10(vals), index=list(zip(rows["seed"], rows["data_seed"]))))
    return sides[0] - sides[1]


def observations(df):
    df, y, what = S.gap_of(df, "the loss")
    if df.empty:
        return ["No rows."]
    df = _with_split(df)
    out = []
    fin = tables.final_means(df, y, by=("method", "split"))
    for split in [s for s in ORDER if s in set(fin.split)]:
        g = fin[fin.split == split].sort_values("final")
        out.append(
            f"{split}: final {what} (mean over seeds), lowest first: "
            + ", ".join(f"{r.method} {rp.num(r.final)}" for r in g.itertuples())
            + "."
        )
    for other in ("gc-compressed", "gc-unbiased", "ef-uncoded", "gc-diana", "coco-ef21", "gc"):
        out += [
            d.sentence(f"final {what}")
            for d in tables.compare_runs(df, y, "coco-ef", other, by=("split",), log=True)
        ]
    s = C.flatness_sentence(df, y, by=("split",), hue="method")
    if s:
        out.append(s)
    lrs = df.groupby(["method", "split"])["lr"].first()
    out.append("Tuned lr: " + "; ".join(f"{m} at {s}: {rp.num(v)}" for (m, s), v in lrs.items()) + ".")
    return out


def claims(df):
    df, y, what = S.gap_of(df, "the loss")
    if df.empty:
        return []
    df = _with_split(df)
    out = []
    have = set(df.method)
    for other, source, why in (
        ("gc-compressed", PAPER, "biased compression without error feedback"),
        ("gc-unbiased", PAPER, "unbiased compression"),
    ):
        if {"coco-ef", other} <= have:
            out.append(
                rp.claim_all(
                    f"COCO-EF's final {what} is below {other}'s ({why}) at every partitioning",
                    source,
                    tables.compare_runs(df, y, "coco-ef", other, by=("split",), log=True),
                )
            )
    fin = _with_split(tables.final_values(df, y))
    splits = set(fin.split)
    if {"iid", "sorted"} <= splits:
        for m in ("ef-uncoded", "ignore-stragglers"):
            if m in have:
                out.append(
                    rp.claim_all(
                        f"{m}'s final {what} grows from iid to label-sorted partitions",
                        EXPECTED,
                        _split_diff(fin, m),
                        expect="above",
                    )
                )
        if {"coco-ef", "ef-uncoded"} <= have:
            d = tables.paired_difference(
                _log_ratios(fin, "coco-ef", "ef-uncoded", "sorted"),
                _log_ratios(fin, "coco-ef", "ef-uncoded", "iid"),
                labels=("log10(coco-ef / ef-uncoded) at sorted", "at iid"),
            )
            out.append(
                rp.claim_all(
                    "COCO-EF's advantage over ef-uncoded grows with heterogeneity (its log ratio at sorted below "
                    "that at iid)",
                    EXPECTED,
                    [d],
                )
            )
    return out


def _split_diff(fin: pd.DataFrame, method: str) -> list:
    """[paired difference (log10: a ratio) of `method`'s final value at sorted against iid]."""
    sides = []
    for split in ("sorted", "iid"):
        rows = fin[(fin.method == method) & (fin.split == split)]
        if rows.empty:
            return []
        vals = rows["final"].where(~rows["final_diverged"].astype(bool))
        sides.append(pd.Series(vals.to_numpy(), index=list(zip(rows["seed"], rows["data_seed"]))))
    return [tables.paired_difference(sides[0], sides[1], labels=(f"{method} at sorted", "at iid"), log=True)]
