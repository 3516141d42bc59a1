"""Why biased compression needs error feedback, and wins with it.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
Bernoulli(0.2) stragglers, compression from k/d = 1% to 30% and QSGD with 1 to 16
levels. Every method runs at its own tuned step (9 candidates around 1/L̂ on tuning
seeds 100-101, edges extended), 5 reported seeds (3 quick) on one data draw. The quick variant uses 16
devices, k/d from 2% and QSGD with 1 and 4 levels.

Question: how does the final optimality gap depend on the compression level: the kept
fraction k/d of top-k (biased) and rand-k (unbiased, scaled by d/k), and the number of
QSGD levels, with and without error feedback, under gradient coding with stragglers?

Methods: the sparsification part compares every method whose message depends on k/d:
coco-ef, coco-ef21, gc-compressed (top-k, no feedback), gc-unbiased (rand-k) and
ef-uncoded. The quantization part compares QSGD with classic error feedback, without
feedback, and with DIANA (gc-diana is QSGD + DIANA at each level). Not applicable: gc,
ignore-stragglers and gd upload uncompressed gradients, so they do not depend on the
compression level (reference lines: the methods study compares them); onebit-gc's
1-bit quantiser has no level to vary (also in the methods study).

Expected: top-k without error feedback (gc-compressed) stalls at a gap that grows as
k/d shrinks: the coordinates it drops are lost for ever. With error feedback (COCO-EF)
the dropped mass is sent later and top-k reaches a small gap even at small k/d, better
than top-k without feedback and than unbiased rand-k at the same k (whose variance
grows like d/k) — the COCO-EF paper's central claim. QSGD with few levels is noisy
without feedback; DIANA removes most of that noise.

Command: coco-jax run experiments/compression.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np
import pandas as pd

from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "compression"
DESCRIPTION = "final loss against k/d (top-k, rand-k) and QSGD levels, with and without error feedback"
SPARSE_METHODS = ("coco-ef", "coco-ef21", "gc-compressed", "gc-unbiased", "ef-uncoded")
METHODS = SPARSE_METHODS
PAPER = "paper (arXiv 2603.16353)"
EXPECTED = f"{NAME}: Expected"
FLAT_WINDOW = 0.2  # the "long enough" rule: < 5% change over the last 20% of the steps
FLAT_CHANGE = 0.05
STEPS = 400  # k/d = 2% with EF21 still falls at 200 steps (the "long enough" check)


def levels(quick: bool) -> list[int]:
    return [1, 4] if quick else [1, 4, 16]


def grid(quick: bool = False):
    base = S.linreg(quick, steps=STEPS)
    sparse = tuned(
        base,
        {"preset": list(SPARSE_METHODS), "compress_ratio": S.ratios(quick)},
        "sparsification",
        quick,
    )
    quant = tuned(
        base.replace(compressor="qsgd"),
        {"error_feedback": ["ef", "none", "diana"], "qsgd_levels": levels(quick)},
        "quantization",
        quick,
    )
    return [sparse, quant]


def label(row) -> str:
    """The method of a sparsification row; "qsgd + EF/no EF/DIANA" in the quantization part."""
    if str(row.get("method", "custom")) != "custom":
        return str(row["method"])
    ef = row["error_feedback"]
    if ef == "diana":
        return f"{row['compressor']} + DIANA"
    return f"{row['compressor']} + {'EF' if ef != 'none' else 'no EF'}"


def figures(df):
    df, y = tables.with_gap(df)
    sp = tables.final_values(df[df.part == "sparsification"], y)
    qu = tables.final_values(df[df.part == "quantization"], y)
    panels = []
    if not sp.empty:
        panels.append(
            {
                "finals": sp,
                "x": "compress_ratio",
                "y": y,
                "hue": label,
                "logx": True,
                "over": ("seed", "data_seed", "lr"),
                "title": "sparsification (k of d coordinates), tuned lr",
            }
        )
    if not qu.empty:
        panels.append(
            {
                "finals": qu,
                "x": "qsgd_levels",
                "y": y,
                "hue": label,
                "logx": True,
                "over": ("seed", "data_seed", "lr"),
                "title": "QSGD quantization, tuned lr",
            }
        )
    fig = plots.finals_figure(
        panels,
        title=f"Compression level, each method at its tuned step ({tables.setting_label(df)}, p = 0.2)",
    )
    return {"vs_level": fig}


# ------------------------------------------------ helpers shared by exp-b's modules


# every run of a part on the data of base.data_seed (see `_settings.tuned_one_draw`)
tuned = S.tuned_one_draw


def relative_gap(df: pd.DataFrame, y: str) -> pd.DataFrame:
    """`df` with column "rel": each run's `y` over its own value at step 0."""
    key = tables.run_key(df)
    first = df.assign(_k=key).sort_values("step").groupby("_k")[y].transform("first")
    return df.assign(rel=df[y] / first)


def flatness(df: pd.DataFrame, y: str, by=(), hue=label) -> list[dict]:
    """Per setting of `by`: the best label (lowest mean final `y`), the relative change
    of its seed-mean curve over the last FLAT_WINDOW of the steps (|ȳ(T) − ȳ(0.8 T)| /
    ȳ(0.8 T)), and whether its mean reached the smallest target of S.TARGETS (a
    fraction of the initial value): the issue's "long enough" rule."""
    if df.empty:
        return []
    df = relative_gap(df, y).assign(_label=tables.label_column(df, hue).to_numpy())
    bad = tables.diverged_runs(df, y)
    df = df[~tables.run_key(df).isin(bad)]
    out = []
    groups = df.groupby(list(by), sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        curves = g.groupby(["_label", "step"])["rel"].mean()
        last = curves.groupby(level=0).last()
        if last.dropna().empty:
            continue
        best = last.idxmin()
        c = curves.loc[best]
        steps = c.index.to_numpy()
        start = steps[np.searchsorted(steps, steps[-1] * (1 - FLAT_WINDOW))]
        ref = float(c.loc[start])
        change = abs(float(c.iloc[-1]) - ref) / ref if ref > 0 else float("nan")
        reached = bool(c.iloc[-1] <= min(S.TARGETS))
        where = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in zip(by, key))
        out.append(
            {
                "where": where,
                "best": best,
                "change": change,
                "reached": reached,
                "ok": reached or change < 0.05,
            }
        )
    return out


def flatness_sentence(df: pd.DataFrame, y: str, by=(), hue=label, what: str = "") -> str | None:
    """One sentence stating the "long enough" check of `flatness` at every setting."""
    rows = flatness(df, y, by, hue)
    if not rows:
        return None
    parts = [
        f"{r['where'] + ': ' if r['where'] else ''}{r['best']} changes {r['change'] * 100:.1f}%"
        + (f", reaches {min(S.TARGETS):g} of the initial value" if r["reached"] else "")
        + (" (flat)" if r["ok"] else " (NOT flat)")
        for r in rows
    ]
    ok = sum(r["ok"] for r in rows)
    return (
        f"Long enough{' (' + what + ')' if what else ''}: the best method's mean curve changes by less than "
        f"{FLAT_CHANGE:.0%} over the last {FLAT_WINDOW:.0%} of the steps, or reaches the smallest target, at "
        f"{ok} of {len(rows)} settings: " + "; ".join(parts) + "."
    )


def reach_sentences(df: pd.DataFrame, y: str, x: str, by=("method",), what: str = "") -> list[str]:
    """Per target of S.TARGETS (a fraction of each run's initial `y`): the mean `x`
    (step, bits, time) at which each `by` value gets there, "not reached" unless every
    non-diverged run did."""
    if df.empty:
        return []
    rel = relative_gap(df, y)
    out = []
    for t in S.TARGETS:
        r = tables.reach_means(rel, "rel", t, x=x, by=by)
        cells = []
        for row in r.itertuples():
            name = ", ".join(str(getattr(row, b)) for b in by)
            v = row.final
            cells.append(
                f"{name} {rp.num(v)}"
                if np.isfinite(v)
                else f"{name} not reached ({row.reached}/{row.runs} runs)"
            )
        out.append(f"{x.capitalize()} to {t:g} of the initial {what or y}: " + ", ".join(cells) + ".")
    return out


def tuned_lr_sentence(df: pd.DataFrame, by, hue=label) -> str | None:
    """The chosen step of each cell, from the reported rows."""
    if df.empty or "lr" not in df:
        return None
    d = df.assign(_label=tables.label_column(df, hue).to_numpy())
    lrs = d.groupby(["_label", *by])["lr"].first()
    return (
        "Tuned lr per cell: "
        + "; ".join(
            f"{k[0]}{' at ' + ', '.join(f'{b} = {v:g}' for b, v in zip(by, k[1:])) if by else ''}: {rp.num(v)}"
            for k, v in lrs.items()
        )
        + "."
    )


# ------------------------------------------------------------- observations, claims


def _sentences(diffs, what):
    """The comparison sentences of the differences that rest on at least one seed pair
    (a side whose every run diverged is reported by the divergence sentence instead)."""
    return [d.sentence(what) for d in diffs if d.interval.n > 0]


def observations(df):
    df, y, what = S.gap_of(df)
    out = []
    sp = df[df.part == "sparsification"]
    if not sp.empty:
        for other in ("gc-compressed", "gc-unbiased", "ef-uncoded", "coco-ef21"):
            diffs = tables.compare_runs(sp, y, "coco-ef", other, by=("compress_ratio",), log=True)
            out += _sentences(diffs, f"final {what}")
        s = flatness_sentence(sp, y, by=("compress_ratio",), what="sparsification")
        if s:
            out.append(s)
        s = tuned_lr_sentence(sp, ("compress_ratio",))
        if s:
            out.append(s)
    qu = df[df.part == "quantization"]
    if not qu.empty:
        for a, b in (("qsgd + DIANA", "qsgd + no EF"), ("qsgd + EF", "qsgd + no EF")):
            diffs = tables.compare_runs(qu, y, a, b, by=("qsgd_levels",), hue=label, log=True)
            out += _sentences(diffs, f"final {what}")
        s = flatness_sentence(qu, y, by=("qsgd_levels",), what="quantization")
        if s:
            out.append(s)
        fin = tables.final_means(qu, y, by=("qsgd_levels",), hue=label)
        div = fin[fin["diverged"] > 0]
        if not div.empty:
            out.append(
                "Diverged or blown-up runs (dropped from the comparisons): "
                + ", ".join(
                    f"{r.label} with {int(r.qsgd_levels)} levels ({r.diverged}/{r.runs})"
                    for r in div.itertuples()
                )
                + "."
            )
    return out or ["No sparsification or quantization rows."]


def between_levels(fin: pd.DataFrame, x: str, a, b, label: str, *, hue="method", where: str = "") -> list:
    """[paired difference (over seed pairs, log10: a ratio) of `label`'s per-run value
    `fin["final"]` (`tables.final_values` / `steps_to_target`) at `x` = a against
    `x` = b], or [] when either level is missing. Diverged runs count as missing."""
    m = fin[tables.label_column(fin, hue).to_numpy() == label] if not fin.empty else fin
    side = []
    for v in (a, b):
        rows = m[np.isclose(m[x].astype(float), float(v))] if not m.empty else m
        if rows.empty:
            return []
        vals = rows["final"].where(~rows["final_diverged"].astype(bool))
        side.append(pd.Series(vals.to_numpy(), index=list(zip(rows["seed"], rows["data_seed"]))))
    return [
        tables.paired_difference(
            side[0], side[1], labels=(f"{label} at {x} = {a:g}", f"at {x} = {b:g}"), where=where, log=True
        )
    ]


def claims(df):
    df, y, what = S.gap_of(df)
    out = []
    sp = df[df.part == "sparsification"]
    methods = set(sp["method"]) if not sp.empty else set()
    for other, source, why in (
        ("gc-compressed", PAPER, "biased compression without error feedback"),
        ("gc-unbiased", PAPER, "unbiased compression"),
        ("ef-uncoded", EXPECTED, "error feedback without a code"),
    ):
        if {"coco-ef", other} <= methods:
            diffs = tables.compare_runs(sp, y, "coco-ef", other, by=("compress_ratio",), log=True)
            out.append(
                rp.claim_all(f"COCO-EF's final {what} is below {other}'s ({why}) at every k/d", source, diffs)
            )
    if "gc-compressed" in methods:
        fin = tables.final_values(sp, y)
        xs = sorted(fin["compress_ratio"].unique())
        out.append(
            rp.claim_all(
                f"gc-compressed's final {what} grows as k/d shrinks (smallest k/d above largest)",
                EXPECTED,
                between_levels(fin, "compress_ratio", xs[0], xs[-1], "gc-compressed") if len(xs) > 1 else [],
                expect="above",
            )
        )
    qu = df[df.part == "quantization"]
    if not qu.empty:
        labels = set(tables.label_column(qu, label))
        if {"qsgd + DIANA", "qsgd + no EF"} <= labels:
            diffs = tables.compare_runs(
                qu, y, "qsgd + DIANA", "qsgd + no EF", by=("qsgd_levels",), hue=label, log=True
            )
            out.append(
                rp.claim_all(
                    f"QSGD + DIANA ends below QSGD without feedback at every number of levels ({what})",
                    EXPECTED,
                    diffs,
                )
            )
    return out
