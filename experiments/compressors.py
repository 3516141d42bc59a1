"""Which compressor to pair with gradient coding and error feedback, at equal bits.

Paper setting: the COCO-EF paper's synthetic linear regression at its scale (100
devices, d = 200, 40 rows per device; experiments/_settings.py), cyclic code s = 1,
fixed decoder, Bernoulli(0.2) stragglers. The quick variant uses 16 devices.

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

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.compressors import make_compressor
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "compressors"
DESCRIPTION = "eight compressors in the COCO-EF pipeline under the same upload budget"

COMPRESSORS = ("topk", "randk", "sign", "scaled_sign", "grouped_sign", "qsgd", "natural", "onebit")
UNBIASED = ("qsgd", "natural", "onebit")
GROUPS = 4  # grouped_sign: d / GROUPS coordinates per scale


def grid(quick: bool = False):
    base = S.linreg(quick)
    d = base.num_features
    group = d // GROUPS
    # budget per device: the bits `budget_steps` iterations of scaled_sign cost
    budget_steps = 250 if quick else 400
    budget = budget_steps * (d + 32)
    k = max(1, round(base.compress_ratio * d))
    steps = []
    for name in COMPRESSORS:
        bits = make_compressor(name, d, k=k, qsgd_levels=base.qsgd_levels, group_size=group).bits
        steps.append(max(base.eval_every, math.floor(budget / bits)))
    return cj.Grid(
        base=base,
        axes={"seed": S.seeds(quick, full=2)},
        zip_axes={
            "compressor": list(COMPRESSORS),
            "steps": steps,
            "group_size": [group if c == "grouped_sign" else None for c in COMPRESSORS],
            # biased compressors with error feedback; unbiased ones as designed, without
            "error_feedback": ["none" if c in UNBIASED else "ef" for c in COMPRESSORS],
        },
        name=NAME,
    )


def figures(df):
    df, y = tables.with_gap(df)
    budget = df.groupby("compressor")["bits"].max().min()
    fig = plots.curves_figure(
        df,
        [("bits", y)],
        hue="compressor",
        logx=[True],
        over=("seed", "steps", "group_size", "error_feedback"),
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
        over=("seed", "steps", "group_size", "error_feedback"),
        title=f"Final gap at the common upload budget (COCO-EF pipeline, {tables.setting_label(df)})",
        xlabel="Compressor (bits per message, feedback)",
    )
    return {"vs_bits": fig, "at_budget": fig2}


def observations(df):
    df, y, what = S.gap_of(df)
    fin = tables.final_means(df, y, by=("compressor",)).set_index("compressor")
    if fin.empty:
        return []
    first = df.sort_values("step").groupby("compressor").tail(1)
    bpm = first.set_index("compressor")["bits_per_message"]
    steps = first.set_index("compressor")["steps"]
    order = fin["final"].sort_values()
    out = [
        f"At the common upload budget, final {what} (mean over seeds), lowest first: "
        + ", ".join(
            f"{c} {rp.num(v)} ({int(bpm.get(c, 0))} b/msg, {int(steps.get(c, 0))} iterations)"
            for c, v in order.items()
        )
        + "."
    ]
    div = fin[fin["diverged"] > 0]
    if not div.empty:
        out.append(
            "Diverged or blown-up runs (dropped from the means): "
            + ", ".join(f"{c} ({int(r.diverged)}/{int(r.runs)})" for c, r in div.iterrows())
            + "."
        )
    return out
