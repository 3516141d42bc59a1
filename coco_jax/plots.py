"""Figures from results tables: tidy table in, matplotlib `Figure` out (the table
helpers they share with reports are `coco_jax.tables`).

Every figure follows the same rules, so that figures of different experiments can be
put side by side in a paper:

- one curve per method (or per compressor / code, whatever the figure compares), drawn
  with that label's fixed colour and marker (`style`), the same in every figure;
- each curve is the mean over seeds with a shaded band: the 95 % confidence interval
  of the mean (Student t over seeds, `band="ci95"`, the default) or ± one standard
  deviation (`band="std"`); the legend title says which, and how many seeds (one seed:
  no band, and the title says so);
- runs that diverged (`tables.diverged_runs`: θ or the loss became non-finite, the
  final loss exceeds 10× the initial, or the plotted metric is ±inf; the rule of the
  report's tables and sentences too) are dropped from the mean and the legend title
  says how many, per x value in panels of final values; a label whose runs all
  diverged keeps its legend entry, marked "(diverged)", so the figure still names it;
- axes carry units; the y axis is logarithmic when the plotted values span more than
  a decade;
- one legend per figure, outside the axes (below them), so it never hides a curve;
- `save_figure` writes PNG (200 dpi) and PDF; the backend is Agg (no display needed).

Losses of convex tasks (linreg, logreg, softmax) are plotted as the optimality gap
F(θ) − F* where F* is computed from the dataset (`tables.with_gap`, float64), so
linear convergence and error floors show on a log axis. Other tasks plot F(θ) itself.

Example:
    >>> from coco_jax import plots, testing
    >>> df = testing.synthetic_results()        # a results-shaped table, no JAX needed
    >>> fig = plots.curves_figure(df, [("step", "loss"), ("bits", "loss")])
    >>> paths = plots.save_figure(fig, "/tmp/figs", "methods")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import textwrap
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter, NullLocator

from coco_jax.fileio import atomic_write_bytes
from coco_jax.tables import (
    CONFIG_FIELDS,
    LEVEL,
    PAIR_FIELDS,
    diverged_runs,
    label_column,
    method_label,
    ordered_labels,
    run_key,
    t_quantile,
    with_gap,
)

__all__ = [
    "AXIS_LABELS",
    "STYLES",
    "band_label",
    "category_figure",
    "curve_panel",
    "curves_figure",
    "final_panel",
    "finals_figure",
    "heatmap_figure",
    "save_figure",
    "standard_figures",
    "style",
]

# ------------------------------------------------------------------------- styles

# Methods (presets): COCO-EF is red, solid and on top; the ideal reference is black dashed.
# Keys in `tables.LABEL_ORDER`, the order curves are drawn and listed in.
STYLES: dict[str, dict[str, Any]] = {
    "coco-ef": {"color": "#d62728", "marker": "o", "linestyle": "-", "zorder": 10, "linewidth": 2.2},
    "coco-ef21": {"color": "#ff7f0e", "marker": "s", "linestyle": "-"},
    "gc": {"color": "#1f77b4", "marker": "^", "linestyle": "-"},
    "gc-compressed": {"color": "#9467bd", "marker": "v", "linestyle": "-"},
    "gc-unbiased": {"color": "#8c564b", "marker": "D", "linestyle": "-"},
    "gc-diana": {"color": "#e377c2", "marker": "P", "linestyle": "-"},
    "onebit-gc": {"color": "#7f7f7f", "marker": "X", "linestyle": "-"},
    "ef-uncoded": {"color": "#bcbd22", "marker": "<", "linestyle": "-"},
    "ignore-stragglers": {"color": "#17becf", "marker": ">", "linestyle": "-"},
    "gd": {"color": "#000000", "marker": "*", "linestyle": "--"},
    # compressors
    "topk": {"color": "#d62728", "marker": "o", "linestyle": "-"},
    "randk": {"color": "#1f77b4", "marker": "^", "linestyle": "-"},
    "randk_unbiased": {"color": "#8c564b", "marker": "D", "linestyle": "-"},
    "sign": {"color": "#2ca02c", "marker": "s", "linestyle": "-"},
    "scaled_sign": {"color": "#ff7f0e", "marker": "v", "linestyle": "-"},
    "grouped_sign": {"color": "#9467bd", "marker": "P", "linestyle": "-"},
    "qsgd": {"color": "#e377c2", "marker": "X", "linestyle": "-"},
    "topk_qsgd": {"color": "#17becf", "marker": "h", "linestyle": "-"},
    "onebit": {"color": "#7f7f7f", "marker": "<", "linestyle": "-"},
    "natural": {"color": "#bcbd22", "marker": ">", "linestyle": "-"},
    "identity": {"color": "#000000", "marker": "*", "linestyle": "--"},
    # codes
    "cyclic": {"color": "#d62728", "marker": "o", "linestyle": "-"},
    "frc": {"color": "#1f77b4", "marker": "s", "linestyle": "-"},
    "bernoulli": {"color": "#2ca02c", "marker": "^", "linestyle": "-"},
    "cyclic_mds": {"color": "#9467bd", "marker": "D", "linestyle": "-"},
    "uncoded": {"color": "#7f7f7f", "marker": "x", "linestyle": "--"},
}

_FALLBACK_COLORS = [matplotlib.colormaps["tab20"](i) for i in range(20)]
_FALLBACK_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "p", "*"]


def style(label: str) -> dict[str, Any]:
    """Colour, marker and line style of a curve label: fixed for every method, compressor
    and code name (`STYLES`); any other label gets a colour and marker picked by a stable
    hash of its text, so it too is the same in every figure.

    Composite labels such as ``"topk + EF"`` use the colour of their first word
    (``topk``); "no EF" makes the line dashed, "DIANA" dash-dotted (with another marker).
    """
    if label in STYLES:
        out = dict(STYLES[label])
    else:
        head = label.split(" ")[0]
        if head in STYLES and label != head:
            out = dict(STYLES[head])
            out["linestyle"] = "--" if "no EF" in label else "-." if "DIANA" in label else "-"
            if "no EF" in label or "DIANA" in label:
                swap = {"o": "s", "^": "v", "D": "d", "X": "x"} if "no EF" in label else {}
                out["marker"] = swap.get(out["marker"], "*" if "DIANA" in label else "x")
        else:
            h = zlib.crc32(label.encode())
            out = {
                "color": _FALLBACK_COLORS[h % len(_FALLBACK_COLORS)],
                "marker": _FALLBACK_MARKERS[(h // 20) % len(_FALLBACK_MARKERS)],
                "linestyle": "-",
            }
    out.setdefault("linewidth", 1.6)
    out.setdefault("zorder", 5)
    return out


AXIS_LABELS: dict[str, str] = {
    "step": "Iteration",
    "bits": "Cumulative uploaded bits (all devices)",
    "time": "Simulated wall-clock time (time units)",
    "loss": "Training loss F(θ)",
    "gap": "Optimality gap F(θ) − F*",
    "test_loss": "Test loss",
    "accuracy": "Training accuracy (%)",
    "test_accuracy": "Test accuracy (%)",
    "grad_norm_sq": "‖∇F(θ)‖²",
    "grad_error_sq": "Decoding error ‖ĝ − ∇F(θ)‖²",
    "ef_error_norm": "Mean error-feedback memory ‖eₘ‖",
    "contraction": "Empirical contraction ‖C(v) − v‖² / ‖v‖²",
    "stragglers": "Stragglers per iteration",
    "delivered": "Delivered messages (cumulative)",
    "straggler_prob": "Straggling probability p",
    "compress_ratio": "Compression level k/d",
    "qsgd_levels": "QSGD levels (per coordinate)",
    "redundancy": "Redundancy s (extra copies of each partition)",
    "num_devices": "Number of devices M",
    "lr": "Learning rate",
    "bits_per_message": "Bits per message",
}
PERCENT_METRICS = ("accuracy", "test_accuracy")


def axis_label(name: str) -> str:
    return AXIS_LABELS.get(name, name.replace("_", " "))


# ------------------------------------------------------------------ aggregation


BANDS = ("ci95", "std")


def band_label(band: str) -> str:
    """What a band shows, for legend titles."""
    if band not in BANDS:
        raise ValueError(f"band={band!r} is invalid: must be one of {', '.join(BANDS)}")
    return {
        "std": "±1 standard deviation over seeds",
        "ci95": f"{round(LEVEL * 100)}% CI of the mean (Student t)",
    }[band]


def _spread(values: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean, low, high over axis 0 (runs), ignoring NaN (no band where one run is finite)."""
    band_label(band)
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(values, axis=0)
        n = np.sum(np.isfinite(values), axis=0)
        std = np.where(n > 1, np.nanstd(values, axis=0, ddof=1), 0.0)
        if band == "ci95":
            t = np.array([t_quantile(int(k)) if k > 1 else 0.0 for k in np.ravel(n)]).reshape(np.shape(n))
            half = np.where(n > 1, t * std / np.sqrt(np.maximum(n, 1)), 0.0)
        else:
            half = std
    return mean, mean - half, mean + half


class _quiet:
    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@dataclasses.dataclass
class _Notes:
    """What a figure's legend title reports: band, seeds, dropped runs."""

    band: str = "ci95"
    seeds: set = dataclasses.field(default_factory=set)
    dropped: dict = dataclasses.field(default_factory=dict)  # label -> (bad runs, all runs)
    at: dict = dataclasses.field(default_factory=dict)  # label -> {x text: (bad runs, all runs)}
    extra: list = dataclasses.field(default_factory=list)

    def add_dropped(self, label, bad_runs, all_runs, at: str | None = None):
        """Record a label's runs and which of them diverged (sets of run keys, so a run
        drawn in several panels counts once); `at` names the x value of a final panel."""
        bad, every = self.dropped.get(label, (set(), set()))
        self.dropped[label] = (bad | set(bad_runs), every | set(all_runs))
        if at is not None:
            here = self.at.setdefault(label, {})
            b, e = here.get(at, (set(), set()))
            here[at] = (b | set(bad_runs), e | set(all_runs))

    def title(self) -> str:
        n = sorted(self.seeds)
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else "?"
        band = "no band (one seed)" if n == [1] else f"band: {band_label(self.band)}"
        lines = [f"Mean over {seeds} seed{'s' if n != [1] else ''}; {band}"]
        shown = {k: (len(a), len(b)) for k, (a, b) in sorted(self.dropped.items()) if a}
        if shown:
            parts = []
            for k, (a, b) in shown.items():
                where = [f"{x}: {len(bb)}/{len(ee)}" for x, (bb, ee) in self.at.get(k, {}).items() if bb]
                parts.append(f"{k} {a}/{b}" + (f" ({', '.join(where)})" if where else ""))
            lines.append(f"diverged runs dropped: {', '.join(parts)}")
        lines.extend(self.extra)
        return "\n".join(lines)


def _check_single(df: pd.DataFrame, label: str, over: Sequence[str], x: str | None = None):
    """Raise if rows of one curve differ in a config field other than those averaged over."""
    ignore = set(over) | {"config_id", x or ""}
    varying = [c for c in CONFIG_FIELDS if c in df and c not in ignore and df[c].nunique(dropna=False) > 1]
    if varying:
        raise ValueError(
            f"curve {label!r} mixes runs that differ in {', '.join(varying)}; filter the table or "
            f"put those fields in the label (hue) or in `over`"
        )


def _prepare(df: pd.DataFrame, hue, y: str, notes: _Notes, over, x: str | None = None):
    """(label -> sub-table of finite runs) in a stable order, recording drops and seeds."""
    df = df.copy()
    df["_label"] = label_column(df, hue)
    df["_run"] = run_key(df)
    bad = diverged_runs(df, y)
    out: dict[str, pd.DataFrame] = {}
    for label, sub in df.groupby("_label", sort=False):
        _check_single(sub, label, over, x)
        runs = set(sub["_run"].unique())
        notes.add_dropped(label, runs & bad, runs)
        notes.seeds.add(len(runs))
        out[label] = sub[~sub["_run"].isin(bad)]
    return out


def _scale(metric: str, values: np.ndarray) -> np.ndarray:
    return values * 100.0 if metric in PERCENT_METRICS else values


def _span_decades(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    v = v[v > 0]
    if v.size == 0 or v.size < values[np.isfinite(values)].size:
        return 0.0  # non-positive values: no log axis
    return float(np.log10(v.max() / v.min())) if v.min() > 0 else 0.0


def _apply_log(ax, which: str, values: np.ndarray, mode) -> bool:
    use = (_span_decades(values) > 1.0) if mode == "auto" else bool(mode)
    if use:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    return use


def _markevery(n: int) -> int:
    return max(1, n // 8)


def _draw(ax, label, xs, mean, lo, hi, *, log_y: bool, markersize: int = 5, thin_markers: bool = True):
    """A label's mean curve with its band (clipped above zero on a log axis)."""
    st = style(label)
    if log_y:
        positive = mean[np.isfinite(mean) & (mean > 0)]
        floor = positive.min() * 1e-2 if positive.size else 1e-12
        lo = np.maximum(lo, floor)
    ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.18, linewidth=0, zorder=st["zorder"] - 1)
    (line,) = ax.plot(
        xs,
        mean,
        label=label,
        color=st["color"],
        marker=st["marker"],
        linestyle=st["linestyle"],
        linewidth=st["linewidth"],
        markersize=markersize,
        markevery=_markevery(len(xs)) if thin_markers else None,
        zorder=st["zorder"],
    )
    return line


def _label_axes(ax, x: str, y: str, xlabel: str | None, ylabel: str | None) -> None:
    ax.set_xlabel(xlabel or axis_label(x))
    ax.set_ylabel(ylabel or axis_label(y))
    ax.grid(True, which="major", alpha=0.3)
    _sci(ax)


def _empty_line(ax, label):
    st = style(label)
    (line,) = ax.plot(
        [], [], label=f"{label} (diverged)", color=st["color"], marker=st["marker"], linestyle=st["linestyle"]
    )
    return line


# ------------------------------------------------------------------ curves figure


def _by_step(sub: pd.DataFrame, col: str) -> np.ndarray:
    """[runs, steps] matrix of column `col` (NaN where a run lacks a step)."""
    frame = pd.DataFrame(
        {"_run": sub["_run"].to_numpy(), "_step": sub["step"].to_numpy(), "_v": sub[col].to_numpy()}
    )
    wide = frame.drop_duplicates(["_run", "_step"]).set_index(["_run", "_step"])["_v"].unstack("_step")
    return wide.sort_index(axis=1).to_numpy(np.float64)


def curve_panel(
    ax,
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    hue="method",
    band: str = "ci95",
    logy="auto",
    logx="auto",
    over: Sequence[str] = PAIR_FIELDS,
    notes: _Notes | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> dict[str, Line2D]:
    """Draw metric `y` against `x` (step, bits or time) for each label on `ax`.

    Runs of one label are aligned by step: the curve is the mean over runs of y (and of
    x, for bits and time, which differ slightly between seeds) at each evaluated step.
    `logx="auto"` puts bits on a log axis when the curves' bits span over a decade
    (compressed and uncompressed methods side by side). Returns label -> line.
    """
    notes = notes if notes is not None else _Notes(band=band)
    groups = _prepare(df, hue, y, notes, over)
    lines: dict[str, Line2D] = {}
    drawn = []
    data = {}
    for label in ordered_labels(list(groups)):
        sub = groups[label]
        if sub.empty or y not in sub or sub[y].notna().sum() == 0:
            continue
        yv = _scale(y, _by_step(sub, y))
        xv = _by_step(sub, x)
        mean, lo, hi = _spread(yv, band)
        xs = np.nanmean(xv, axis=0) if xv.size else xv
        keep = np.isfinite(mean) & np.isfinite(xs)
        data[label] = (xs[keep], mean[keep], lo[keep], hi[keep])
    if logx == "auto":
        ends = [d[0][-1] for d in data.values() if d[0].size and d[0][-1] > 0]
        logx = x == "bits" and len(ends) > 1 and max(ends) / min(ends) > 5
    if logx:
        ax.set_xscale("log")
        data = {k: tuple(a[d[0] > 0] for a in d) for k, d in data.items()}
    drawn = [d[1] for d in data.values()]
    log_y = _apply_log(ax, "y", np.concatenate(drawn) if drawn else np.array([]), logy)
    for label in ordered_labels(list(groups)):
        if label in data:
            lines[label] = _draw(ax, label, *data[label], log_y=log_y)
        else:
            lines[label] = _empty_line(ax, label)
    if y in PERCENT_METRICS and not log_y:
        _focus(ax, [d[1] for d in data.values()])
    _label_axes(ax, x, y, xlabel, ylabel)
    return lines


def _sci(ax):
    """Scientific notation on linear axes with large numbers (bits, time); plain
    decimals down to 1e-4 (an offset label would collide with a panel title)."""
    for axis, scale, limits in (("x", ax.get_xscale(), (-3, 5)), ("y", ax.get_yscale(), (-4, 5))):
        if scale == "linear":
            try:
                ax.ticklabel_format(axis=axis, style="sci", scilimits=limits, useMathText=True)
            except AttributeError:  # fixed tick labels
                pass


def _focus(ax, curves: list[np.ndarray]) -> None:
    """Accuracy panels: start the y axis where the curves are after their first tenth
    (the initial climb from chance level would squeeze the comparison into a sliver)."""
    tails = [c[max(1, len(c) // 10) :] for c in curves if len(c) > 2]
    tails = [t[np.isfinite(t)] for t in tails]
    tails = [t for t in tails if t.size]
    if not tails:
        return
    low = min(float(t.min()) for t in tails)
    high = max(float(np.nanmax(c)) for c in curves if len(c))
    span = max(high - low, 1e-9)
    lo_all = min(float(np.nanmin(c)) for c in curves if len(c))
    if lo_all < low - 0.05 * span:
        ax.set_ylim(low - 0.05 * span, high + 0.05 * span)
        ax.text(
            0.99,
            0.01,
            "early iterations below the axis",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.4",
        )


def _row_major(items: list, ncols: int) -> list:
    """Reorder legend entries so that matplotlib's column-wise fill reads row by row."""
    nrows = math.ceil(len(items) / ncols)
    grid = [items[r * ncols : (r + 1) * ncols] for r in range(nrows)]
    return [grid[r][c] for c in range(ncols) for r in range(nrows) if c < len(grid[r])]


def _finish(fig: Figure, lines: dict[str, Line2D], notes: _Notes, title: str | None) -> Figure:
    """One legend for the whole figure, below the axes (never over a curve); as many
    columns as the figure's width holds."""
    handles = list(lines.values())
    labels = [h.get_label() for h in handles]
    width_in = fig.get_size_inches()[0]
    longest = max((len(lb) for lb in labels), default=1)
    per_entry = 0.62 + 0.075 * longest  # inches: handle + text at fontsize 9
    ncols = max(1, min(len(handles), int(width_in // per_entry)))
    fig.legend(
        _row_major(handles, ncols),
        _row_major(labels, ncols),
        loc="outside lower center",
        ncols=ncols,
        title=notes.title(),
        title_fontsize=8.5,
        fontsize=9,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    fig._coco_notes = notes.title()
    return fig


def _figure(npanels: int, *, width_per=4.3, height=3.5, nrows=1) -> tuple[Figure, np.ndarray]:
    ncols = math.ceil(npanels / nrows)
    width = max(width_per * ncols, 6.4)  # room for a legend of a few columns
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height * nrows + 1.3), layout="constrained", squeeze=False
    )
    axes = axes.ravel()
    for ax in axes[npanels:]:
        ax.remove()
    return fig, axes[:npanels]


def _merge(all_lines: dict, new: dict):
    for k, v in new.items():
        if k not in all_lines or (not all_lines[k].get_xdata().size and v.get_xdata().size):
            all_lines[k] = v


def curves_figure(
    df: pd.DataFrame,
    panels: Sequence[tuple[str, str]],
    *,
    hue="method",
    band: str = "ci95",
    title: str | None = None,
    panel_titles: Sequence[str] | None = None,
    tables: Sequence[pd.DataFrame] | None = None,
    logx: Sequence[bool | str] | bool | str = "auto",
    logy="auto",
    over: Sequence[str] = PAIR_FIELDS,
    nrows: int = 1,
) -> Figure:
    """A row of panels, each metric y against x (("step", "loss"), ("bits", "loss"), ...),
    one curve per label in each, one shared legend below. `tables` optionally gives
    each panel its own table (e.g. a latency-model run for the time panel)."""
    notes = _Notes(band=band)
    fig, axes = _figure(len(panels), nrows=nrows)
    lines: dict[str, Line2D] = {}
    logxs = [logx] * len(panels) if isinstance(logx, (bool, str)) else list(logx)
    for i, (ax, (x, y)) in enumerate(zip(axes, panels)):
        table = df if tables is None else tables[i]
        if y == "loss":
            table, y = with_gap(table)
        _merge(
            lines,
            curve_panel(
                ax, table, x, y, hue=hue, band=band, logy=logy, logx=logxs[i], over=over, notes=notes
            ),
        )
        if panel_titles:
            ax.set_title(panel_titles[i], fontsize=10)
    return _finish(fig, lines, notes, title)


# ------------------------------------------------------------ final values figure


def final_panel(
    ax,
    finals: pd.DataFrame,
    x: str,
    y: str,
    *,
    hue="method",
    band: str = "ci95",
    logy="auto",
    logx=False,
    over: Sequence[str] = PAIR_FIELDS,
    notes: _Notes | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    missing_note: str | None = None,
) -> dict[str, Line2D]:
    """Draw the per-run values `finals["final"]` (from `tables.final_values`/`steps_to_target`)
    against the config field `x`, one curve per label, mean ± band over seeds.
    A point whose runs all diverged or have no value is left out; `missing_note`, if
    given, is added to the legend title when that happens."""
    notes = notes if notes is not None else _Notes(band=band)
    finals = finals.copy()
    finals["_label"] = label_column(finals, hue)
    data, missing = {}, False
    for label in ordered_labels(list(dict.fromkeys(finals["_label"]))):
        data[label], gap = _final_points(finals[finals["_label"] == label], label, x, y, band, over, notes)
        missing = missing or gap
    drawn = [m for _, m, _, _ in data.values()]
    log_y = _apply_log(ax, "y", np.concatenate(drawn) if drawn else np.array([]), logy)
    if logx:
        ax.set_xscale("log")
    lines = {
        label: _draw(ax, label, *d, log_y=log_y, markersize=6, thin_markers=False)
        if d[0].size
        else _empty_line(ax, label)
        for label, d in data.items()
    }
    values = sorted({float(v) for v in finals[x].unique() if not logx or float(v) > 0})
    if logx or len(values) <= 12:
        _value_ticks(ax, values)
    if missing and missing_note and missing_note not in notes.extra:
        notes.extra.append(missing_note)
    _label_axes(ax, x, y, xlabel, ylabel)
    return lines


def _final_points(sub: pd.DataFrame, label: str, x: str, y: str, band: str, over, notes: _Notes):
    """((xs, mean, lo, hi) over the values of field `x` of one label's runs, whether a
    value had no finite run)."""
    _check_single(sub.drop(columns=["step"], errors="ignore"), label, over, x)
    ok = sub[~sub["final_diverged"]]
    points, missing = [], False
    for xv, pts in sub.groupby(x, sort=True):
        at = f"{x.replace('_', ' ')} {xv:g}" if isinstance(xv, (int, float)) else f"{x} {xv}"
        notes.add_dropped(label, set(pts.loc[pts["final_diverged"], "_run"]), set(pts["_run"]), at)
        notes.seeds.add(len(pts))
        vals = _scale(y, ok.loc[ok[x] == xv, "final"].to_numpy(np.float64))
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            missing = True
            continue
        m, lo, hi = _spread(vals[:, None], band)
        points.append((float(xv), m[0], lo[0], hi[0]))
    cols = (
        tuple(np.asarray(c, np.float64) for c in zip(*points))
        if points
        else tuple(np.zeros(0) for _ in range(4))
    )
    return cols, missing


def _value_ticks(ax, values: Sequence[float]) -> None:
    """Major ticks at the grid's values, plain labels, no minor labels (log axes)."""
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(values, [f"{v:g}" for v in values])


def finals_figure(
    panels: Sequence[dict],
    *,
    band: str = "ci95",
    title: str | None = None,
    nrows: int = 1,
) -> Figure:
    """A row of `final_panel`s; each dict holds `final_panel`'s arguments
    (finals, x, y, and optionally hue, logx, logy, over, xlabel, ylabel, title,
    missing_note, reference=(xs, ys, label) for a dashed theory line)."""
    notes = _Notes(band=band)
    fig, axes = _figure(len(panels), nrows=nrows)
    lines: dict[str, Line2D] = {}
    for ax, spec in zip(axes, panels):
        spec = dict(spec)
        panel_title = spec.pop("title", None)
        reference = spec.pop("reference", None)
        finals = spec.pop("finals")
        x = spec.pop("x")
        y = spec.pop("y")
        _merge(lines, final_panel(ax, finals, x, y, band=band, notes=notes, **spec))
        if reference is not None:
            rx, ry, rlabel = reference
            (lines[rlabel],) = ax.plot(
                rx, ry, color="0.35", linestyle=":", linewidth=1.5, label=rlabel, zorder=3
            )
        if panel_title:
            ax.set_title(panel_title, fontsize=10)
    return _finish(fig, lines, notes, title)


# ------------------------------------------------------------ categories figure


def category_figure(
    finals: pd.DataFrame,
    y: str,
    *,
    hue="method",
    band: str = "ci95",
    order: Sequence[str] | None = None,
    tick_text: Callable[[str, pd.DataFrame], str] | None = None,
    logy="auto",
    over: Sequence[str] = PAIR_FIELDS,
    title: str | None = None,
    xlabel: str = "",
    ylabel: str | None = None,
) -> Figure:
    """One point per label (mean ± band over its runs' `final`), labels side by side
    on a categorical x axis: a dot plot, for comparisons with no numeric x."""
    notes = _Notes(band=band)
    finals = finals.copy()
    finals["_label"] = label_column(finals, hue)
    labels = list(order) if order is not None else ordered_labels(list(dict.fromkeys(finals["_label"])))
    labels = [lb for lb in labels if lb in set(finals["_label"])]
    fig, (ax,) = _figure(1, width_per=max(6.4, 0.9 * len(labels) + 1.5))
    stats = {}
    for label in labels:
        sub = finals[finals["_label"] == label]
        _check_single(sub.drop(columns=["step"], errors="ignore"), label, over)
        notes.add_dropped(label, set(sub.loc[sub["final_diverged"], "_run"]), set(sub["_run"]))
        notes.seeds.add(len(sub))
        vals = _scale(y, sub.loc[~sub["final_diverged"], "final"].to_numpy(np.float64))
        vals = vals[np.isfinite(vals)]
        stats[label] = _spread(vals[:, None], band) if vals.size else None
    means = np.array([s[0][0] for s in stats.values() if s is not None])
    log_y = _apply_log(ax, "y", means, logy)
    lines: dict[str, Line2D] = {}
    for i, label in enumerate(labels):
        st = style(label)
        if stats[label] is None:
            lines[label] = _empty_line(ax, label)
            continue
        m, lo, hi = (float(a[0]) for a in stats[label])
        if log_y and lo <= 0:
            lo = m * 1e-2
        ax.vlines(i, lo, hi, color=st["color"], linewidth=6, alpha=0.25, zorder=st["zorder"] - 1)
        (lines[label],) = ax.plot(
            [i],
            [m],
            label=label,
            color=st["color"],
            marker=st["marker"],
            markersize=9,
            linestyle="none",
            zorder=st["zorder"],
        )
    texts = [tick_text(lb, finals[finals["_label"] == lb]) if tick_text else lb for lb in labels]
    ax.set_xticks(range(len(labels)), texts, fontsize=8.5)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or axis_label(y))
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, lines, notes, title)


# ------------------------------------------------------------------------ heatmap


def heatmap_figure(
    values: pd.DataFrame,
    *,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
    title: str | None = None,
    note: str | None = None,
    center: float | None = 0.0,
    fmt: str = "{:.2f}",
    annotations: pd.DataFrame | None = None,
) -> Figure:
    """A heatmap of a 2-D table (index: y values, columns: x values), each cell
    annotated with its value (and the text of `annotations`, if given); a diverging
    colour map centred on `center` (blue below, red above). Non-finite cells are grey."""
    width = max(6.4, 1.5 + 1.25 * values.shape[1])
    height = 2.2 + 0.85 * max(3, values.shape[0])
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    arr = values.to_numpy(np.float64)
    finite = arr[np.isfinite(arr)]
    if center is not None and finite.size:
        lim = max(abs(finite.max() - center), abs(finite.min() - center), 1e-12)
        vmin, vmax, cmap = center - lim, center + lim, "RdBu_r"
    else:
        vmin, vmax, cmap = (finite.min(), finite.max(), "viridis") if finite.size else (0, 1, "viridis")
    masked = np.ma.masked_invalid(arr)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    im = ax.imshow(masked, cmap=cm, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{c:g}" for c in values.columns])
    ax.set_yticks(range(values.shape[0]), [f"{r:g}" for r in values.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ref = center or 0.0
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            v = arr[i, j]
            text = "n/a" if not np.isfinite(v) else fmt.format(v)
            if annotations is not None and isinstance(annotations.iat[i, j], str):
                text += "\n" + annotations.iat[i, j]
            shade = 0.0 if not np.isfinite(v) else abs(v - ref) / max(abs(vmax - ref), 1e-12)
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8.5, color="white" if shade > 0.6 else "black"
            )
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(colorbar_label)
    if title:  # wrapped to the figure's width (a long title would be clipped at its edges)
        fig.suptitle("\n".join(textwrap.wrap(title, int(width * 11))), fontsize=10)
    if note:
        fig.supxlabel("\n".join(textwrap.wrap(note, int(width * 13))), fontsize=8)
    fig._coco_notes = note or ""
    return fig


# ------------------------------------------------------------- standard figures

_STANDARD_SKIP = (*PAIR_FIELDS, "config_id")  # seeds and their data are averaged


def standard_label(df: pd.DataFrame) -> Callable[[pd.Series], str]:
    """The curve label of the standard figures: the method label (the preset, or the
    compressor, feedback and code of a custom configuration), followed by every other
    config field that varies between runs of that method (seeds are averaged)."""
    labels = df.apply(method_label, axis=1)
    varying = [
        c
        for c in CONFIG_FIELDS
        if c in df and c not in _STANDARD_SKIP and (df.groupby(labels)[c].nunique(dropna=False) > 1).any()
    ]

    def label(row: pd.Series) -> str:
        extra = ", ".join(f"{c}={_cell(row[c])}" for c in varying)
        return f"{method_label(row)}, {extra}" if extra else method_label(row)

    return label


def _cell(v) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


def standard_figures(df: pd.DataFrame) -> dict[str, Figure]:
    """The standard curves of any results table (what `coco-jax plot` draws for a sweep
    without an experiment module): the loss (optimality gap for convex tasks) against
    steps and uploaded bits, and the test accuracy when the runs have a test split;
    one curve per method label (`standard_label`), mean over seeds. A table with a
    `part` column (several grids) gets one figure of each kind per part."""
    figs: dict[str, Figure] = {}
    parts = sorted(df["part"].unique()) if "part" in df and df["part"].nunique() > 1 else [None]
    for part in parts:
        sub = df if part is None else df[df["part"] == part]
        prefix = "" if part is None else str(part).replace("/", "_") + "_"
        hue = standard_label(sub)
        title = None if part is None else str(part)
        figs[prefix + "loss"] = curves_figure(sub, [("step", "loss"), ("bits", "loss")], hue=hue, title=title)
        if "test_accuracy" in sub and sub["test_accuracy"].notna().any():
            figs[prefix + "test_accuracy"] = curves_figure(
                sub, [("step", "test_accuracy"), ("bits", "test_accuracy")], hue=hue, title=title
            )
    return figs


# ------------------------------------------------------------------------ saving


def save_figure(fig: Figure, out_dir: str | pathlib.Path, name: str) -> list[pathlib.Path]:
    """Write `name`.png (200 dpi) and `name`.pdf into `out_dir`, each atomically (drawn in
    memory, written to a temporary file, renamed over the target: a full disk or a kill
    leaves the previous file or none, and the OSError names the file); close the figure."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            kwargs = {"dpi": 200} if ext == "png" else {}
            # fixed metadata so that redrawing the same table gives the same PDF bytes
            meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, metadata=meta, **kwargs)
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
