"""The standard problem a user experiment may start from (`standard_config`, `seeds`).

The shipped experiments run the COCO-EF paper's two settings (experiments/_settings.py);
this older shared problem stays for user experiments that build on it.
"""

from __future__ import annotations

from typing import Any

from coco_jax.config import ExperimentConfig

__all__ = ["seeds", "standard_config"]


def standard_config(quick: bool = False, **overrides) -> ExperimentConfig:
    """A label-sorted synthetic logistic-regression problem (the shipped experiments
    used it before issue 12; they now run the COCO-EF paper's two settings from
    experiments/_settings.py). Kept for user experiments.

    Logistic regression (convex, so the optimality gap F(θ) − F* is exact) on synthetic
    data with label-sorted partitions: half of the partitions hold only one class, the
    rest only the other, the heterogeneity under which ignoring stragglers biases the
    gradient and gradient coding matters. Stragglers are Bernoulli(p = 0.2), the code is
    cyclic with s = 1, the compressor keeps k/d = 10% of the coordinates.

    quick: M = 16 devices, d = 100, 1024 training rows, 200 steps (a 2-core CPU).
    full: M = 100 devices (the COCO-EF paper's scale), d = 500, 10 000 rows, 1000 steps.
    """
    # the method is ExperimentConfig's default: COCO-EF (cyclic s = 1, Bernoulli p = 0.2,
    # top-k 10% with error feedback, fixed decoder, SGD)
    base: dict[str, Any] = {
        "task": "logreg",
        "dataset": "synthetic",
        "partitioning": "sorted",
        "noise": 0.05,
        "lr": 1.0,
    }
    if quick:
        base.update(num_devices=16, num_features=100, num_samples=1024, num_test=512, steps=200, eval_every=5)
    else:
        base.update(
            num_devices=100, num_features=500, num_samples=10000, num_test=2000, steps=1000, eval_every=10
        )
    base.update(overrides)
    return ExperimentConfig(**base)


def seeds(quick: bool) -> range:
    """Seeds per configuration: 3 quick, 5 full."""
    return range(3) if quick else range(5)
