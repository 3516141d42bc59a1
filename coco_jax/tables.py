"""Results tables in, tables and labels out: the pandas helpers that figures
(`coco_jax.plots`), reports (`coco_jax.report`) and experiment modules share.

A run is one configuration (with its seed): `run_key` names it. Helpers here reduce a
tidy results table (`coco_jax.results`) to what a figure or a sentence needs: curve
labels (`label_column`, `method_label`, `ordered_labels`), diverged runs (one rule for
tables, figures and sentences: `diverged_runs`), the optimality gap F(θ) − F*
(`with_gap`, F* from `reference.optimum`), each run's final value or the first step
that reaches a target, and their means over seeds. No matplotlib here.

Statistics: `t_interval` (mean and Student-t confidence interval over seeds),
`value_text` (a table cell: "mean ± half-width", or "at the float floor (≤ x)"), and
paired comparisons (`paired_difference`, `compare_runs`): the difference a − b of two
methods paired by seed and data seed, with its confidence interval and the only words
a sentence may use: "below" or "above" when the interval excludes 0, otherwise
"indistinguishable" (`Difference.verdict`).

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
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

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
    "LEVEL",
    "PAIR_FIELDS",
    "Difference",
    "Interval",
    "compare_runs",
    "dataset_text",
    "diverged_runs",
    "final_means",
    "final_values",
    "label_column",
    "method_label",
    "num",
    "optimum",
    "ordered_labels",
    "paired_difference",
    "paired_differences",
    "reach_means",
    "run_key",
    "setting_label",
    "steps_to_target",
    "t_interval",
    "value_text",
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
    GAP_FLOOR · max(F*, 1e-3) (column `gap_floor`): float32 losses cannot resolve
    smaller differences.
    `f_star`: F* of every row (runs on user arrays, `reference.optimum_of_data`)
    instead of the optimum of each row's configured dataset."""
    if df.empty or "loss" not in df:
        return df, "loss"
    cols = [c for c in DATA_FIELDS_OF_OPTIMUM if c in df]
    groups = df.groupby(cols, dropna=False, sort=False).groups if f_star is None else {0: df.index}
    gap = pd.Series(np.nan, index=df.index)
    given = f_star
    floors = pd.Series(np.nan, index=df.index)
    for idx in groups.values():
        f_star = optimum(df.loc[idx[0]]) if given is None else given
        if f_star is None:
            return df, "loss"
        floor = GAP_FLOOR * max(abs(f_star), 1e-3)
        gap[idx] = np.maximum(df.loc[idx, "loss"].to_numpy(np.float64) - f_star, floor)
        floors[idx] = floor
    out = df.copy()
    out["gap"] = gap
    out["gap_floor"] = floors  # a gap equal to it reached the float floor: report it so, never "± 0"
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


# ------------------------------------------------------------------- statistics

LEVEL = 0.95  # the confidence level of every interval the package prints
PAIR_FIELDS = ("seed", "data_seed")  # what pairs two methods' runs: the same randomness and data


def num(x: float, digits: int = 2) -> str:
    """A number for a sentence or a cell: 2 significant digits, scientific below 0.01
    or from 1e5 (``num(0.00172) == "1.7e-03"``), "n/a" when not finite."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a != 0 and (a < 1e-2 or a >= 1e5):
        return f"{x:.{max(digits - 1, 0)}e}"
    if a >= 10**digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile of a mean over n values (n − 1 degrees of
    freedom); NaN for n < 2."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) if n >= 2 else math.nan


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean of n values and its confidence interval [low, high] (Student t with
    n − 1 degrees of freedom; NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether `value` lies outside the interval (False without an interval)."""
        return self.n >= 2 and (self.low > value or self.high < value)

    @property
    def degenerate(self) -> bool:
        """n ≥ 2 values that are all equal: a zero-width interval. It says the runs did
        not vary (e.g. deterministic runs on one data draw, where the seeds change
        nothing), not that the mean is known exactly: one observation, not n."""
        return self.n >= 2 and self.half == 0.0


def t_interval(values, level: float = LEVEL) -> Interval:
    """Mean and `level` Student-t confidence interval of the mean of the finite `values`:
    mean ± t_{(1+level)/2, n−1} · s / √n with s the sample standard deviation.

    Example:
        >>> iv = t_interval([1.0, 2.0, 3.0])
        >>> round(iv.mean, 3), round(iv.half, 3)
        (2.0, 2.484)
    """
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    if n >= 2 and np.all(v == v[0]):  # exactly degenerate (a rounded mean could give half > 0)
        return Interval(float(v[0]), float(v[0]), float(v[0]), n, level)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    half = t_quantile(n, level) * float(v.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def value_text(values, floor=None, level: float = LEVEL) -> str:
    """A table cell for per-run values (seeds): "mean ± half-width" of the `level`
    t-interval; "x (1 run)"; "x (all n equal)" when every run gives the same number; at
    the float floor (every value ≤ `floor`, the clip of `with_gap`): "at the float floor
    (≤ floor)", never "floor ± 0"; some at it: the interval and "k of n at the float
    floor". "–" without a finite value."""
    v = np.asarray(values, np.float64).ravel()
    fl = None
    if floor is not None:
        fl = np.broadcast_to(np.asarray(floor, np.float64), v.shape)[np.isfinite(v)]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "–"
    at_floor = int(np.sum(v <= fl * (1 + 1e-9))) if fl is not None and np.isfinite(fl).all() else 0
    if at_floor == v.size:
        return f"at the float floor (≤ {num(float(np.max(fl)))})"
    if v.size == 1:
        return f"{num(v[0], 3)} (1 run)"
    iv = t_interval(v, level)
    text = (
        f"{num(v[0], 3)} (all {v.size} equal)"
        if np.all(v == v[0])
        else f"{num(iv.mean, 3)} ± {num(iv.half, 2)}"
    )
    return text + (f" ({at_floor} of {v.size} at the float floor)" if at_floor else "")


def _distinguishing_digits(low: float, high: float, null: float, most: int = 6) -> int:
    """The fewest significant digits (2 to `most`) at which an interval's printed ends
    differ when the ends differ, and neither end prints as the null value (0, or a
    ratio's 1) unless it is that value: "[1, 1.2]" for an interval that excludes 1 would
    contradict the verdict beside it; "[1.004, 1.2]" does not."""
    for digits in range(2, most + 1):
        clear = (low == high or num(low, digits) != num(high, digits)) and all(
            x == null or num(x, digits) != num(null, digits) for x in (low, high)
        )
        if clear:
            return digits
    return most


@dataclasses.dataclass(frozen=True)
class Difference:
    """a − b over runs paired by seed and data seed (`paired_difference`): the mean
    difference and its confidence interval (on log10 values with `log`: a ratio), how
    many pairs it used and how many it dropped (a run diverged, or has no finite value:
    not reached, or missing in the other method).

    `verdict` is the only comparison a sentence may state: "below" (a < b) or "above"
    when the interval excludes 0, otherwise "indistinguishable". A degenerate interval
    (every pair gives the same difference) still has a verdict, but `numbers` says that
    the pairs did not vary and `report.claim_all` does not count it as replicated."""

    a: str
    b: str
    where: str
    interval: Interval
    dropped: int = 0
    log: bool = False

    @property
    def verdict(self) -> str:
        iv = self.interval
        if iv.excludes(0.0):
            return "below" if iv.high < 0 else "above"
        return "indistinguishable"

    def numbers(self) -> str:
        """The difference and its interval in words, e.g. "ratio 0.45 [0.40, 0.51]" or
        "−3.1e-05 [−4.0e-05, −2.2e-05]", with the pairs it rests on."""
        iv = self.interval
        pairs = f"{iv.n} seed pair{'s' if iv.n != 1 else ''}" + (
            f", {self.dropped} dropped (diverged or no value)" if self.dropped else ""
        )
        pct = f"{round(iv.level * 100)}% CI"
        if iv.degenerate:
            value = num(10**iv.mean if self.log else iv.mean)
            return (
                f"{'ratio ' if self.log else ''}{value} in all {pairs}: no spread, the seeds do not vary "
                "it (one observation, no interval)"
            )
        if iv.n < 2:
            head = (
                "no interval"
                if iv.n == 0
                else ("ratio " if self.log else "") + (num(10**iv.mean if self.log else iv.mean, 2))
            )
            return f"{head} ({pairs}: too few for an interval)"
        scale = (lambda x: 10**x) if self.log else (lambda x: x)
        mean, low, high = scale(iv.mean), scale(iv.low), scale(iv.high)
        digits = _distinguishing_digits(low, high, scale(0.0))
        text = f"{num(mean, digits)} [{num(low, digits)}, {num(high, digits)}] ({pct}, {pairs})"
        return ("ratio " if self.log else "") + text

    def text(self) -> str:
        """ "a − b at where: numbers" (a / b with `log`)."""
        op = "/" if self.log else "−"
        at = f" at {self.where}" if self.where else ""
        return f"{self.a} {op} {self.b}{at}: {self.numbers()}"

    def sentence(self, what: str = "") -> str:
        """ "a's <what> is below b's (numbers)" or "... is indistinguishable from b's (...)"."""
        what = f" {what}" if what else ""
        at = f" at {self.where}" if self.where else ""
        rel = {"below": "below", "above": "above", "indistinguishable": "indistinguishable from"}[
            self.verdict
        ]
        return f"{self.a}'s{what}{at} is {rel} {self.b}'s ({self.numbers()})"


def paired_difference(
    a: Mapping | pd.Series,
    b: Mapping | pd.Series,
    *,
    labels: tuple[str, str] = ("a", "b"),
    where: str = "",
    log: bool = False,
    level: float = LEVEL,
) -> Difference:
    """The difference a − b over the keys both have (the pairing: seed and data seed),
    with its `level` t-interval. Pairs where either value is not finite (a diverged run,
    a target not reached) — or not positive with `log` (then log10 a − log10 b, a
    ratio) — are dropped and counted.

    Example:
        >>> d = paired_difference({0: 1.0, 1: 1.1, 2: 0.9}, {0: 2.0, 1: 2.2, 2: 2.1}, labels=("x", "y"))
        >>> d.verdict
        'below'
    """
    a = pd.Series(dict(a)) if not isinstance(a, pd.Series) else a
    b = pd.Series(dict(b)) if not isinstance(b, pd.Series) else b
    keys = a.index.union(b.index)
    av = a.reindex(keys).to_numpy(np.float64)
    bv = b.reindex(keys).to_numpy(np.float64)
    ok = np.isfinite(av) & np.isfinite(bv)
    if log:
        ok &= (av > 0) & (bv > 0)
        with np.errstate(all="ignore"):
            diff = np.log10(av) - np.log10(bv)
    else:
        diff = av - bv
    iv = t_interval(diff[ok], level)
    return Difference(labels[0], labels[1], where, iv, int((~ok).sum()), log)


def _pair_key(rows: pd.DataFrame, pair: Sequence[str]) -> pd.Index:
    cols = [c for c in pair if c in rows]
    return pd.MultiIndex.from_frame(rows[cols].astype("int64")) if len(cols) > 1 else pd.Index(rows[cols[0]])


def paired_differences(
    finals: pd.DataFrame,
    a: str,
    b: str,
    *,
    by: Sequence[str] = (),
    hue: str | Callable = "method",
    log: bool = False,
    level: float = LEVEL,
    pair: Sequence[str] = PAIR_FIELDS,
) -> list[Difference]:
    """Per value of the `by` columns, `paired_difference` of label `a` against label
    `b` (labels of `hue`, as in figures) over per-run values `finals["final"]` (from
    `final_values` or `steps_to_target`; diverged runs, `final_diverged`, count as
    missing). Runs pair by `pair` (seed and data seed)."""
    if finals.empty:
        return []
    fin = finals.assign(_label=label_column(finals, hue).to_numpy())
    vals = fin["final"].to_numpy(np.float64).copy()
    if "final_diverged" in fin:
        vals[fin["final_diverged"].to_numpy(bool)] = np.nan
    fin = fin.assign(_value=vals)
    groups = fin.groupby(list(by), sort=True, dropna=False) if by else [((), fin)]
    out = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k} = {_cell(v)}" for k, v in zip(by, key))
        sides = []
        for lab in (a, b):
            rows = g[g["_label"] == lab]
            if _pair_key(rows, pair).duplicated().any():
                raise ValueError(
                    f"label {lab!r}{' at ' + where if where else ''} has several runs per seed pair: put the "
                    "fields that vary between them in `by` (or in the label)"
                )
            sides.append(
                pd.Series(rows["_value"].to_numpy(), index=_pair_key(rows, pair))
                if len(rows)
                else pd.Series(dtype=float)
            )
        if sides[0].empty and sides[1].empty:
            continue
        out.append(paired_difference(sides[0], sides[1], labels=(a, b), where=where, log=log, level=level))
    return out


def compare_runs(
    df: pd.DataFrame,
    y: str,
    a: str,
    b: str,
    *,
    by: Sequence[str] = (),
    hue: str | Callable = "method",
    tail: float = 0.0,
    log: bool = False,
    level: float = LEVEL,
    pair: Sequence[str] = PAIR_FIELDS,
) -> list[Difference]:
    """`paired_differences` of each run's final `y` (`final_values`, with `tail`) of
    label `a` against label `b`, per value of `by`.

    Example:
        >>> from coco_jax import testing
        >>> df, y = with_gap(testing.synthetic_results())  # doctest: +SKIP
        >>> [d.verdict for d in compare_runs(df, y, "coco-ef", "gc", log=True)]  # doctest: +SKIP
        ['below']
    """
    return paired_differences(
        final_values(df, y, tail=tail), a, b, by=by, hue=hue, log=log, level=level, pair=pair
    )


def _cell(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
