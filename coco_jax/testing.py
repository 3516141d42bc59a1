"""Test fixtures: results-shaped tables with made-up, plausible curves, for tests and
examples of the figure, table and report functions (no JAX, nothing compiled).

Example:
    >>> from coco_jax import plots, testing
    >>> df = testing.synthetic_results(methods=("coco-ef", "gc"), seeds=2)
    >>> fig = plots.curves_figure(df, [("step", "loss"), ("bits", "loss")])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from coco_jax.presets import preset
from coco_jax.results import rows_of

__all__ = ["synthetic_results"]


def synthetic_results(
    methods: Sequence[str] = ("coco-ef", "gc", "gc-compressed", "ef-uncoded", "gd"),
    *,
    seeds: int = 3,
    steps: int = 50,
    eval_every: int = 5,
    straggler_probs: Sequence[float] = (0.2,),
    compress_ratios: Sequence[float] = (0.1,),
    diverge: Sequence[str] = (),
    task: str = "linreg",
) -> pd.DataFrame:
    """A results table with the sweep's columns and made-up, plausible curves (no JAX):
    for tests and examples of the figure functions. Methods in `diverge` blow up
    halfway (loss inf, `diverged` True) in every seed."""
    frames = []
    rng = np.random.default_rng(0)
    for (mi, method), p, ratio, seed in itertools.product(
        enumerate(methods), straggler_probs, compress_ratios, range(seeds)
    ):
        cfg = preset(
            method,
            task=task,
            straggler_prob=p,
            compress_ratio=ratio,
            seed=seed,
            steps=steps,
            eval_every=eval_every,
        )
        bpm = 32 * 32 if method in ("gc", "gd", "ignore-stragglers") else int(ratio * 32) * 37 + 1
        hist, div_step = _made_up_history(rng, mi, p, ratio, steps, eval_every, method in diverge, bpm, task)
        frames.append(rows_of(method, cfg, hist, bpm, div_step))
    return pd.concat(frames, ignore_index=True)


def _made_up_history(
    rng, mi: int, p: float, ratio: float, steps: int, eval_every: int, diverge: bool, bpm: int, task
):
    """Plausible history of method number `mi` (`synthetic_results`); (history, divergence step)."""
    step = np.arange(0, steps + 1, eval_every)
    rate = 0.02 + 0.01 * mi + 0.05 * p + 0.02 * (1 - ratio)
    floor = 1e-3 * (1 + mi) * (1 + p)
    loss = 0.5 * np.exp(-rate * step) + floor + 1e-4 * rng.random(step.size)
    div_step = None
    diverged = np.zeros(step.size, bool)
    if diverge:
        div_step = int(step[step.size // 2])
        loss = np.where(step >= div_step, np.inf, loss)
        diverged = step >= div_step
    delivered = np.round(step * 8 * (1 - p)).astype(np.int64)
    hist = {
        "step": step,
        "loss": loss.astype(np.float32),
        "grad_norm_sq": (loss**2).astype(np.float32),
        "test_loss": (loss * 1.1).astype(np.float32),
        "bits": (delivered * bpm).astype(np.float64),
        "time": step.astype(np.float32) * (1 + p),
        "delivered": delivered,
        "stragglers": np.full(step.size, int(8 * p)),
        "grad_error_sq": np.where(step > 0, 0.1 * loss, np.nan).astype(np.float32),
        "ef_error_norm": np.where(step > 0, 0.5 * np.sqrt(loss), 0.0).astype(np.float32),
        "contraction": np.where(step > 0, 1 - ratio + 0.01 * rng.random(step.size), np.nan).astype(
            np.float32
        ),
        "diverged": diverged,
    }
    if task != "linreg":
        acc = np.clip(0.95 - loss, 0, 1).astype(np.float32)
        hist["accuracy"] = acc
        hist["test_accuracy"] = acc - 0.02
    return hist, div_step
