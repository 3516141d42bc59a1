"""COCO-EF on neural networks: an MLP and a small CNN on the digits images.

Question: does COCO-EF's advantage carry over to non-convex models trained with
minibatches: an MLP (one hidden layer of 32) and a CNN (two 3×3 conv layers, 4 and 8
channels; 128 + 64 and 16 + 32 in the full variant) on
scikit-learn's 8×8 digits, label-sorted over the devices, with Bernoulli(0.2)
stragglers? Test accuracy against uploaded bits.

Expected: per uploaded bit COCO-EF reaches a given test accuracy with roughly ten times
fewer bits than uncompressed gradient coding (gc) at similar final accuracy; top-k
without error feedback (gc-compressed) learns more slowly, and ef-uncoded is hurt by
the stragglers' missing classes.

Observed (quick variant): the MLP reaches about 97% test accuracy with every method;
COCO-EF does it with 20 Mbit against 150 Mbit for gc. On the CNN COCO-EF (89%),
ef-uncoded and gc end close together, gc with 7.5 times the bits; gc-compressed lags
(84%).

Command: coco-jax run experiments/neural.py --quick   (full: without --quick, a GPU)
"""

import coco_jax as cj
from coco_jax import plots
from coco_jax.experiment import seeds, standard_config

NAME = "neural"
DESCRIPTION = "MLP and CNN on digits: COCO-EF vs main baselines, test accuracy against bits"
METHODS = ("coco-ef", "gc", "gc-compressed", "ef-uncoded")


def grid(quick: bool = False):
    common = {"dataset": "digits", "lr": 0.3, "batch_size": 8, "shared_minibatch": True}
    if quick:
        common.update(steps=150, eval_every=10)
    else:
        common.update(steps=2000, eval_every=20)  # 14 rows per partition at M = 100
    mlp = standard_config(quick, task="mlp", hidden_sizes=(32,) if quick else (128, 64), **common)
    cnn = standard_config(quick, task="cnn", cnn_channels=(4, 8) if quick else (16, 32), **common)
    return [
        cj.Grid(base=mlp, axes={"preset": list(METHODS), "seed": seeds(quick)}, name="mlp"),
        cj.Grid(base=cnn, axes={"preset": list(METHODS), "seed": seeds(quick)}, name="cnn"),
    ]


def figures(df):
    mlp = df[df.part == "mlp"]
    cnn = df[df.part == "cnn"]
    acc = plots.curves_figure(
        df,
        [("bits", "test_accuracy"), ("bits", "test_accuracy")],
        tables=[mlp, cnn],
        panel_titles=["MLP", "CNN"],
        title="Test accuracy against uploaded bits (digits, 8×8)",
    )
    loss = plots.curves_figure(
        df,
        [("step", "loss"), ("step", "loss")],
        tables=[mlp, cnn],
        panel_titles=["MLP", "CNN"],
        title="Training loss per iteration (digits)",
    )
    return {"accuracy_vs_bits": acc, "loss": loss}
