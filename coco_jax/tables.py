"""Results tables in, tables and labels out: the pandas helpers that figures
(`coco_jax.plots`), reports (`coco_jax.report`) and experiment modules share.

A run is one configuration (with its seed): `run_key` names it. Helpers here reduce a
tidy results table (`coco_jax.results`) to what a figure or a sentence needs: curve
labels (`label_column`, `method_label`, `ordered_labels`), diverged runs, the
optimality gap F(θ) − F* (`with_gap`, F* from `reference.optimum`), each run's final
value or the first step that reaches a target, and their means over seeds. No
matplotlib here.

Example:
    >>> from coco_jax import tables, testing
    >>> df, y = tables.with_gap(testing.synthetic_results())   # doctest: +SKIP
    >>> tables.final_means(df, y).set_index("method")["final"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import types
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from coco_jax.config import ExperimentConfig
from coco_jax.data import dataset_label
from coco_jax.reference import DATA_FIELDS_OF_OPTIMUM
from coco_jax.reference import optimum as f_star
from coco_jax.results import config_values_from_row

__all__ = [
    "BLOWUP",
    "CONFIG_FIELDS",
    "GAP_FLOOR",
    "LABEL_ORDER",
    "dataset_text",
    "diverged_runs",
    "final_means",
    "final_values",
    "label_column",
    "method_label",
    "optimum",
    "ordered_labels",
    "reach_means",
    "run_key",
    "setting_label",
    "steps_to_target",
    "with_gap",
]

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))

# Known curve labels in the order figures and tables list them (COCO-EF first): the
# methods (presets), then the compressors, then the codes; `plots.STYLES` styles each.
LABEL_ORDER = (
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
    "topk",
    "randk",
    "randk_unbiased",
    "sign",
    "scaled_sign",
    "grouped_sign",
    "qsgd",
    "topk_qsgd",
    "onebit",
    "natural",
    "identity",
    "cyclic",
    "frc",
    "bernoulli",
    "cyclic_mds",
    "uncoded",
)


# ------------------------------------------------------------------------ labels


def label_column(df: pd.DataFrame, hue: str | Callable[[pd.Series], str]) -> pd.Series:
    """The curve label of every row: a column name or a function of the row."""
    if callable(hue):
        return df.apply(hue, axis=1).astype(str)
    values = df[hue]
    if hue in ("method", "compressor", "allocation"):
        return values.astype(str)
    return values.map(lambda v: f"{hue.replace('_', ' ')} = {v:g}" if isinstance(v, (int, float)) else str(v))


def run_key(df: pd.DataFrame) -> pd.Series:
    """The identity of one run (configuration incl. seed)."""
    if "config_id" in df:
        return df["config_id"].astype(str) + "|" + df.get("method", "").astype(str)
    return df["seed"].astype(str)


def ordered_labels(labels: Sequence[str]) -> list[str]:
    """Known names in the order of `LABEL_ORDER` (COCO-EF first), then the rest as given."""
    known = [k for k in LABEL_ORDER if k in labels]
    rest = [k for k in labels if k not in LABEL_ORDER]
    return known + rest


def method_label(row: pd.Series) -> str:
    """The preset name, or for custom configurations their method fields."""
    m = str(row.get("method", "custom"))
    if m != "custom":
        return m
    ef = row.get("error_feedback", "none")
    return f"{row.get('compressor')} + {'no EF' if ef == 'none' else ef.upper()} ({row.get('allocation')})"


BLOWUP = 10.0  # a run whose final loss exceeds BLOWUP x its initial loss counts as diverged


def diverged_runs(df: pd.DataFrame, y: str | None = None) -> set:
    """Runs (`run_key`) that diverged: θ became non-finite, the loss is non-finite, the
    metric `y` is ever ±inf (NaN entries that describe no update, such as step 0 of
    `contraction`, are not divergence), or the final loss exceeds BLOWUP times the
    initial loss (finite but blown up)."""
    key = run_key(df)
    bad = np.zeros(len(df), bool)
    if "loss" in df and "step" in df and len(df):
        order = df.assign(_key=key.to_numpy()).sort_values("step")
        grouped = order.groupby("_key", sort=False)["loss"]
        first, last = grouped.first(), grouped.last()
        blown = set(first.index[(last > BLOWUP * first.abs()) & np.isfinite(first)])
        bad |= key.isin(blown).to_numpy()
    if "diverged" in df:
        bad |= df["diverged"].fillna(False).astype(bool).to_numpy()
    if "diverged_step" in df:
        bad |= df["diverged_step"].fillna(-1).to_numpy() >= 0
    if "loss" in df:
        bad |= ~np.isfinite(df["loss"].to_numpy(np.float64))
    if y is not None and y in df:
        bad |= np.isinf(df[y].to_numpy(np.float64))
    return set(key[bad])


# ----------------------------------------------------------------------- setting


def dataset_text(row) -> str:
    """The honest name of a row's dataset (`coco_jax.data.dataset_label`): "mnist (5k
    subset)" for the packaged subset, never "MNIST" alone."""
    data_dir = row.get("data_dir") if hasattr(row, "get") else getattr(row, "data_dir", None)
    if isinstance(data_dir, float) and math.isnan(data_dir):
        data_dir = None
    dataset = row.get("dataset") if hasattr(row, "get") else row.dataset
    return dataset_label(types.SimpleNamespace(dataset=str(dataset), data_dir=data_dir))


def setting_label(df: pd.DataFrame, short: bool = False) -> str:
    """The setting of a results table for titles and reports: dataset (honest name, see
    `dataset_text`), task, M and, for synthetic data, d, e.g. "mnist (5k subset) softmax,
    M = 100" or "synthetic linreg, d = 200, M = 100"; `short`: only "M = 100[, d = 200]".
    Fields that vary within the table are listed with "/"."""
    if df.empty:
        return ""

    def values(col):
        return list(dict.fromkeys(df[col].tolist())) if col in df else []

    names = list(dict.fromkeys(dataset_text(r) for _, r in df.drop_duplicates(["dataset"]).iterrows()))
    tasks = values("task")
    m = values("num_devices")
    parts = [f"M = {'/'.join(str(v) for v in m)}"] if m else []
    if "synthetic" in names and "num_features" in df:
        parts.append(f"d = {'/'.join(str(v) for v in values('num_features'))}")
    head = f"{'/'.join(names)} {'/'.join(str(t) for t in tasks)}".strip()
    return ", ".join(parts) if short else ", ".join([head, *parts])


# --------------------------------------------------------------- optimum (F*)


def optimum(cfg: ExperimentConfig | pd.Series | dict) -> float | None:
    """F* = min_θ F(θ) over the run's whole training set (`reference.optimum`) for the
    convex tasks; None for networks or when the data cannot be loaded. Reads only the
    data fields of a table row, so it works without the run's plugins imported."""
    values = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else config_values_from_row(cfg)
    try:
        return f_star(tuple((f, values[f]) for f in DATA_FIELDS_OF_OPTIMUM if f in values))
    except Exception:  # noqa: BLE001 - a missing file or odd data: plot F(θ) instead
        return None


GAP_FLOOR = 1e-6  # relative to max(F*, 1e-3): below this the float32 loss is rounding noise


def with_gap(df: pd.DataFrame, f_star: float | None = None) -> tuple[pd.DataFrame, str]:
    """`df` with a `gap` column F(θ) − F* when every dataset in it has a computable F*
    (returns (df, "gap")), else (df, "loss"). The gap is clipped below at
    GAP_FLOOR · max(F*, 1e-3): float32 losses cannot resolve smaller differences.
    `f_star`: F* of every row (runs on user arrays, `reference.optimum_of_data`)
    instead of the optimum of each row's configured dataset."""
    if df.empty or "loss" not in df:
        return df, "loss"
    cols = [c for c in DATA_FIELDS_OF_OPTIMUM if c in df]
    groups = df.groupby(cols, dropna=False, sort=False).groups if f_star is None else {0: df.index}
    gap = pd.Series(np.nan, index=df.index)
    given = f_star
    for idx in groups.values():
        f_star = optimum(df.loc[idx[0]]) if given is None else given
        if f_star is None:
            return df, "loss"
        floor = GAP_FLOOR * max(abs(f_star), 1e-3)
        gap[idx] = np.maximum(df.loc[idx, "loss"].to_numpy(np.float64) - f_star, floor)
    out = df.copy()
    out["gap"] = gap
    return out, "gap"


# ------------------------------------------------------------------ per run


def final_values(df: pd.DataFrame, y: str, *, tail: float = 0.0, runs_by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: its config columns and the final value of `y` (the last
    evaluated step; with `tail` > 0 the mean over the last `tail` fraction of the
    evaluated steps, for noisy per-step quantities), plus `final_diverged`."""
    df = df.copy()
    df["_run"] = run_key(df)
    bad = diverged_runs(df, y)
    df = df.sort_values(["_run", "step"])
    rows = []
    for run, sub in df.groupby("_run", sort=False):
        vals = sub[y].to_numpy(np.float64)
        if tail > 0:
            n = max(1, round(len(vals) * tail))
            tail_vals = vals[-n:]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                value = float(np.nanmean(tail_vals)) if np.isfinite(tail_vals).any() else float("nan")
        else:
            value = float(vals[-1])
        row = sub.iloc[-1].to_dict()
        row["final"] = value
        row["final_diverged"] = run in bad
        rows.append(row)
    return pd.DataFrame(rows)


def steps_to_target(df: pd.DataFrame, y: str, target: float, *, x: str = "step") -> pd.DataFrame:
    """One row per run: the first `x` (step, bits or time) at which `y` <= target
    (`final` = NaN when never reached; `final_diverged` as in `final_values`)."""
    df = df.copy()
    df["_run"] = run_key(df)
    bad = diverged_runs(df, y)
    rows = []
    for run, sub in df.sort_values("step").groupby("_run", sort=False):
        hit = sub[sub[y] <= target]
        row = sub.iloc[-1].to_dict()
        row["final"] = float(hit[x].iloc[0]) if len(hit) else float("nan")
        row["final_diverged"] = run in bad
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------- means over seeds


def final_means(
    df: pd.DataFrame, y: str, by=("method",), *, hue=None, tail: float = 0.0, drop_diverged: bool = True
) -> pd.DataFrame:
    """Mean over seeds of each run's final `y` (last evaluated step; with `tail` the mean
    over the last `tail` share of the steps), per value of the `by` columns (and per
    `hue` label, a column or a function of a row, stored as column "label").
    Columns: the keys, "final" (mean), "runs", "diverged" (runs dropped as diverged)."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "final", "runs", "diverged"])
    fin = final_values(df, y, tail=tail)
    keys = list(by)
    if hue is not None:
        fin["label"] = label_column(fin, hue).to_numpy()
        keys = ["label", *keys]
    rows = []
    for key, g in fin.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        bad = g["final_diverged"].to_numpy(bool)
        vals = g.loc[~bad if drop_diverged else slice(None), "final"].to_numpy(np.float64)
        vals = vals[np.isfinite(vals)]
        row = dict(zip(keys, key))
        row["final"] = float(vals.mean()) if vals.size else float("nan")
        row["runs"] = len(g)
        row["diverged"] = int(bad.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def reach_means(df: pd.DataFrame, y: str, target: float, *, x: str = "step", by=("method",)) -> pd.DataFrame:
    """Per value of `by`: the mean over seeds of the first `x` (step, bits, time) at
    which `y` <= target, NaN unless every non-diverged run reached it; columns: the
    keys, "final" (that mean), "reached" (runs that reached it), "runs"."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "final", "reached", "runs"])
    hits = steps_to_target(df, y, target, x=x)
    rows = []
    for key, g in hits.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[~g["final_diverged"].to_numpy(bool)]
        vals = ok["final"].to_numpy(np.float64)
        reached = int(np.isfinite(vals).sum())
        row = dict(zip(by, key))
        row["final"] = float(vals.mean()) if len(vals) and reached == len(vals) else float("nan")
        row["reached"] = reached
        row["runs"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows)
