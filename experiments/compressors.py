"""Which compressor to pair with gradient coding and error feedback, at equal bits.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
fixed decoder, Bernoulli(0.2) stragglers. Every compressor runs at its own tuned step (9
candidates around 1/L̂ on tuning seeds 100-101, edges extended), 5 reported seeds (3
quick) on one data draw. The quick variant uses 16 devices.

Methods: the pipeline is COCO-EF's (cyclic code, fixed decoder); what varies is the
compressor and whether it has error feedback. Of the 10 methods, coco-ef (top-k + EF)
and onebit-gc (onebit, no feedback) are entries of this comparison; gc-unbiased's
rand-k and gc-diana's QSGD + DIANA, coco-ef21 and ef-uncoded change the feedback rule or
drop the code, which is not this question (the methods, compression and heatmap
studies compare them); gc, ignore-stragglers and gd are uncompressed.

Question: inside the COCO-EF pipeline, which compressor gives the lowest loss for the
same total upload budget: top-k, rand-k, sign, scaled sign, grouped sign, QSGD, natural
compression or the 1-bit quantizer of 1-bit gradient coding? Each compressor runs for
as many iterations as the budget pays for (cheap messages buy more iterations). The
biased compressors run with error feedback; the unbiased ones (QSGD, natural, onebit)
without it, as they are designed to be used (with feedback their variance, not a
contraction, makes the memory grow).

Expected: the biased, scaled compressors (scaled_sign, grouped_sign, top-k) make the
most of a bit: with error feedback their bias is harmless and each message is cheap.
Plain sign (no scale) has the wrong magnitude and does worst among the biased ones;
rand-k wastes its budget on uninformative coordinates; the unbiased quantizers (QSGD,
natural, onebit) pay for precision the method does not need.

Command: coco-jax run experiments/compressors.py --quick   (full, 100 devices: without --quick)
"""

import math

from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.compressors import make_compressor
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py
C = helper_module(__file__, "compression")  # exp-b's shared helpers (tuned grid, checks)

NAME = "compressors"
DESCRIPTION = "eight compressors in the COCO-EF pipeline under the same upload budget"

COMPRESSORS = ("topk", "randk", "sign", "scaled_sign", "grouped_sign", "qsgd", "natural", "onebit")
UNBIASED = ("qsgd", "natural", "onebit")
GROUPS = 4  # grouped_sign: d / GROUPS coordinates per scale
OVER = ("seed", "data_seed", "lr", "steps", "group_size", "error_feedback")
BIASED = ("topk", "randk", "sign", "scaled_sign", "grouped_sign")
EXPECTED = f"{NAME}: Expected"


def grid(quick: bool = False):
    base = S.linreg(quick)
    d = base.num_features
    group = d // GROUPS
    # budget per device: the bits `budget_steps` iterations of scaled_sign cost
    budget_steps = 400 if quick else 600  # the long-enough check says whether the best curve is flat
    budget = budget_steps * (d + 32)
    k = max(1, round(base.compress_ratio * d))
    steps = []
    for name in COMPRESSORS:
        bits = make_compressor(name, d, k=k, qsgd_levels=base.qsgd_levels, group_size=group).bits
        steps.append(max(base.eval_every, math.floor(budget / bits)))
    return C.tuned(
        base,
        {},
        NAME,
        quick,
        zip_axes={
            "compressor": list(COMPRESSORS),
            "steps": steps,
            "group_size": [group if c == "grouped_sign" else None for c in COMPRESSORS],
            # biased compressors with error feedback; unbiased ones as designed, without
            "error_feedback": ["none" if c in UNBIASED else "ef" for c in COMPRESSORS],
        },
    )


def figures(df):
    df, y = tables.with_gap(df)
    budget = df.groupby("compressor")["bits"].max().min()
    fig = plots.curves_figure(
        df,
        [("bits", y)],
        hue="compressor",
        logx=[True],
        over=OVER,
        title=f"Compressors in the COCO-EF pipeline: gap against uploaded bits ({tables.setting_label(df)})",
    )
    fig.axes[0].axvline(budget, color="0.5", linestyle=":", linewidth=1)
    finals = tables.final_values(df, y)
    order = list(finals.sort_values("bits_per_message").drop_duplicates("compressor")["compressor"])

    def tick(name, rows):
        r = rows.iloc[0]
        return f"{name}\n{int(r['bits_per_message'])} b/msg\n{'EF' if r['error_feedback'] != 'none' else 'no EF'}"

    fig2 = plots.category_figure(
        finals,
        y,
        hue="compressor",
        order=order,
        tick_text=tick,
        over=OVER,
        title=f"Final gap at the common upload budget (COCO-EF pipeline, {tables.setting_label(df)})",
        xlabel="Compressor (bits per message, feedback)",
    )
    return {"vs_bits": fig, "at_budget": fig2}


def _diff(df, y, a, b):
    return tables.compare_runs(df, y, a, b, hue="compressor", log=True)


def observations(df):
    df, y, what = S.gap_of(df)
    fin = tables.final_means(df, y, by=("compressor",)).set_index("compressor")
    if fin.empty:
        return []
    first = df.sort_values("step").groupby("compressor").tail(1)
    bpm = first.set_index("compressor")["bits_per_message"]
    steps = first.set_index("compressor")["steps"]
    lr = first.set_index("compressor")["lr"]
    order = fin["final"].sort_values()
    out = [
        f"At the common upload budget, final {what} (mean over seeds), lowest first: "
        + ", ".join(
            f"{c} {rp.num(v)} ({int(bpm.get(c, 0))} b/msg, {int(steps.get(c, 0))} iterations, lr {rp.num(lr.get(c))})"
            for c, v in order.items()
        )
        + "."
    ]
    best = order.index[0] if order.notna().any() else None
    if best is not None:
        for other in order.index[1:]:
            out += [d.sentence(f"final {what}") for d in _diff(df, y, best, other)]
    s = C.flatness_sentence(df, y, hue="compressor", what="at the budget")
    if s:
        out.append(s)
    out += C.reach_sentences(df, y, "bits", by=("compressor",), what=what)
    div = fin[fin["diverged"] > 0]
    if not div.empty:
        out.append(
            "Diverged or blown-up runs (left out of the comparisons): "
            + ", ".join(f"{c} ({int(r.diverged)}/{int(r.runs)})" for c, r in div.iterrows())
            + "."
        )
    return out


def claims(df):
    df, y, what = S.gap_of(df)
    have = set(df["compressor"]) if not df.empty else set()
    out = []
    for a, b, why in (
        ("scaled_sign", "sign", "plain sign has the wrong magnitude"),
        ("topk", "randk", "rand-k spends its budget on uninformative coordinates"),
    ):
        if {a, b} <= have:
            out.append(
                rp.claim_all(
                    f"{a} ends below {b} at the common budget ({why}; {what})", EXPECTED, _diff(df, y, a, b)
                )
            )
    biased = [c for c in ("scaled_sign", "grouped_sign", "topk") if c in have]
    unbiased = [c for c in UNBIASED if c in have]
    if biased and unbiased:
        fin = tables.final_means(df[df.compressor.isin(biased)], y, by=("compressor",)).dropna(
            subset=["final"]
        )
        if not fin.empty:
            best = fin.sort_values("final")["compressor"].iloc[0]
            diffs = [d for u in unbiased for d in _diff(df, y, best, u)]
            out.append(
                rp.claim_all(
                    f"The best scaled biased compressor with EF ({best}, lowest mean) ends below every unbiased "
                    f"quantizer ({', '.join(unbiased)}) at the common budget ({what})",
                    EXPECTED,
                    diffs,
                )
            )
    return out
