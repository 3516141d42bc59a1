"""Step-size schedules (`lr_schedule`, `lr_decay_steps`): the formulas against a plain
NumPy reference on fresh random inputs, the engine's update using eta_t, the
constant-equivalence of inverse_time with an unbounded horizon, and a grid over the
schedule's fields as one compiled program."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import coco_jax as cj
from coco_jax.config import LR_SCHEDULES
from coco_jax.data import load_dataset
from coco_jax.schedules import factor

SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure
EPS32 = float(np.finfo(np.float32).eps)


def reference_factor(kind: str, t: np.ndarray, t0: float) -> np.ndarray:
    """The formulas of DESIGN.md ("Step sizes"), in float64."""
    t = np.asarray(t, np.float64)
    if kind == "constant":
        return np.ones_like(t)
    if kind == "inverse_time":
        return 1.0 / (1.0 + t / t0)
    if kind == "inverse_sqrt":
        return 1.0 / np.sqrt(1.0 + t / t0)
    if kind == "cosine":
        return (1.0 + np.cos(np.pi * np.minimum(t, t0) / t0)) / 2.0
    return 0.1 ** np.floor(t / t0)


@pytest.mark.parametrize("kind", LR_SCHEDULES)
def test_factor_matches_the_formula(kind):
    rng = np.random.default_rng([SEED, LR_SCHEDULES.index(kind)])
    t = rng.integers(0, 5000, size=256)
    t0 = float(rng.uniform(1.0, 600.0))
    got = np.asarray(factor(jnp.int32(LR_SCHEDULES.index(kind)), jnp.asarray(t), jnp.float32(t0)))
    want = reference_factor(kind, t, np.float32(t0))
    # each formula is a handful of float32 operations on t/t0 (t is exact in float32):
    # relative error below ~8 eps; floor(t/t0) of `step` may flip where t/t0 is within
    # eps of an integer, which the comparison excludes
    ratio = t / np.float32(t0)
    ok = np.abs(ratio - np.round(ratio)) > 4 * EPS32 * np.maximum(ratio, 1.0) if kind == "step" else True
    np.testing.assert_allclose(got[ok], want[ok], rtol=8 * EPS32, atol=8 * EPS32)
    assert got.dtype == np.float32


def test_every_schedule_starts_at_lr_and_decays_monotonically():
    t = jnp.arange(400)
    for i, kind in enumerate(LR_SCHEDULES):
        f = np.asarray(factor(jnp.int32(i), t, jnp.float32(50.0)))
        assert f[0] == 1.0, kind
        assert np.all(np.diff(f) <= 0), kind


def _problem(**over):
    base = {"task": "linreg", "num_devices": 4, "num_samples": 64, "num_test": 0, "num_features": 6,
            "steps": 12, "eval_every": 1, "lr": 0.3}  # fmt: skip
    return cj.preset("gd", **{**base, **over})


@pytest.mark.parametrize("kind", LR_SCHEDULES)
def test_engine_steps_with_eta_t(kind):
    """Full-batch gradient descent on linreg: θ_{t+1} = θ_t − η_t ∇F(θ_t), η_t = lr·f(t)
    with t = 0, 1, ... (the first update uses f(0) = 1), against float64 NumPy."""
    cfg = _problem(lr_schedule=kind, lr_decay_steps=5.0, data_seed=SEED % 1000)
    res = cj.run(cfg)
    ds = load_dataset(cfg)
    x, y = ds.x_train.astype(np.float64), ds.y_train.astype(np.float64)
    theta = np.zeros(x.shape[1])
    losses = [0.5 * np.mean((x @ theta - y) ** 2)]
    for t in range(cfg.steps):
        eta = cfg.lr * reference_factor(kind, np.asarray(t), 5.0)
        theta = theta - eta * x.T @ (x @ theta - y) / x.shape[0]
        losses.append(0.5 * np.mean((x @ theta - y) ** 2))
    # float32 engine vs float64 reference: each step rounds the n-row gradient sums
    # (relative n·eps) and a contraction (lr < 2/L) keeps the errors from growing,
    # so the loss agrees to about steps·n·eps relative
    tol = cfg.steps * x.shape[0] * EPS32
    np.testing.assert_allclose(res.history["loss"], losses, rtol=tol)


def test_inverse_time_with_an_unbounded_horizon_is_constant():
    """f = 1/(1 + t/t0) is exactly 1.0 in float32 once t/t0 < eps/2: the runs are equal."""
    cfg = _problem(straggler="bernoulli", straggler_prob=0.3, compressor="topk", error_feedback="ef")
    const = cj.run(cfg)
    inv = cj.run(cfg.replace(lr_schedule="inverse_time", lr_decay_steps=1e30))
    for key in ("loss", "grad_norm_sq", "bits", "stragglers"):
        np.testing.assert_array_equal(inv.history[key], const.history[key])
    np.testing.assert_array_equal(inv.params, const.params)


def test_a_grid_over_the_schedule_is_one_program():
    """lr_schedule and lr_decay_steps are traced: one static group, one compilation, and
    each configuration's rows equal its lone run."""
    base = _problem(straggler="bernoulli", straggler_prob=0.2, steps=8, eval_every=4)
    grid = cj.Grid(base=base, axes={"lr_schedule": list(LR_SCHEDULES), "lr_decay_steps": [2.0, 7.0]})
    df = cj.sweep(grid, progress=False)
    assert df.stats.groups == 1 and df.stats.compilations <= 1
    for _, cfg in grid.configs()[::3]:
        alone = cj.run(cfg).history["loss"]
        rows = df[(df.lr_schedule == cfg.lr_schedule) & (df.lr_decay_steps == cfg.lr_decay_steps)]
        # the same program vmapped: at most float32 reassociation per step
        np.testing.assert_allclose(rows.sort_values("step").loss.to_numpy(), alone, rtol=64 * EPS32)


def test_bad_schedule_fields_are_refused():
    with pytest.raises(cj.ConfigError, match="lr_schedule='linear' is invalid: must be one of constant"):
        _problem(lr_schedule="linear")
    with pytest.raises(cj.ConfigError, match=r"lr_decay_steps=0.0 is invalid: must lie in \(0.0"):
        _problem(lr_decay_steps=0.0)
    assert _problem().lr_decay_steps is None  # the horizon defaults to the run
