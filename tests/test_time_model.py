"""Simulated time: uploads (`upload_bandwidth`) and the latency model's
load-independent delay (`latency_fixed`).

A delivered message arrives bits_per_message / upload_bandwidth after its compute
time; the latency model's deadline and wait-for-n act on arrival times; every other
model adds the upload time to its one time unit per step. Checked step by step against
times re-derived from the same random keys, and the closed-form straggling rates
against Monte Carlo, on fresh random parameters."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coco_jax as cj
from coco_jax.config import ExperimentConfig, hparams_of
from coco_jax.stragglers import latency_rate_closed_form, latency_times, make_straggler_model

SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure
EPS32 = float(np.finfo(np.float32).eps)
SMALL = {"task": "linreg", "num_devices": 6, "num_samples": 48, "num_test": 0, "num_features": 8,
         "steps": 10, "eval_every": 1}  # fmt: skip


def _hp(**fields):
    return jax.tree.map(jnp.asarray, hparams_of(ExperimentConfig(**fields)))


def test_upload_time_adds_to_every_step_of_a_unit_time_model():
    """bernoulli: each step takes 1 + bits/bandwidth, stragglers or not (float32 sums)."""
    rng = np.random.default_rng(SEED)
    bandwidth = float(rng.uniform(50.0, 500.0))
    cfg = cj.preset("coco-ef", **SMALL, upload_bandwidth=bandwidth)
    res = cj.run(cfg)
    step = np.float32(1.0) + np.float32(res.bits_per_message / np.float32(bandwidth))
    expected = np.concatenate([[0.0], np.cumsum(np.full(cfg.steps, step, np.float32), dtype=np.float32)])
    np.testing.assert_array_equal(res.history["time"], expected)
    # unlimited bandwidth (the default) is one unit per step
    np.testing.assert_array_equal(cj.run(cfg.replace(upload_bandwidth=None)).history["time"], np.arange(11))


@pytest.mark.parametrize("wait_for", [None, 4])
def test_latency_acts_on_arrival_times(wait_for):
    """Per step, re-derived from the run's own keys: arrival = compute time + u; a
    deadline refuses late arrivals, wait-for-n keeps the n first; the step time is
    the deadline, the last or the n-th arrival."""
    rng = np.random.default_rng([SEED, 1])
    fields = dict(SMALL, straggler="latency", latency_shift=float(rng.uniform(0.2, 1.0)),
                  latency_rate=float(rng.uniform(0.5, 2.0)), latency_fixed=float(rng.uniform(0.0, 1.5)),
                  deadline=float(rng.uniform(2.0, 4.0)), upload_bandwidth=float(rng.uniform(20.0, 80.0)),
                  wait_for=wait_for, seed=int(rng.integers(1000)))  # fmt: skip
    cfg = cj.preset("coco-ef", **fields)
    res = cj.run(cfg)
    hp = _hp(**fields)
    upload = np.float32(res.bits_per_message) / np.float32(fields["upload_bandwidth"])
    load = jnp.full(cfg.num_devices, cfg.redundancy + 1.0)
    step_key = jax.random.fold_in(jax.random.key(cfg.seed), 3)  # step._KEY_STEPS
    times, stragglers = [], []
    for t in range(1, cfg.steps + 1):
        k_strag = jax.random.fold_in(jax.random.fold_in(step_key, t), 0)
        arrival = np.asarray(latency_times(k_strag, hp, load)) + upload
        if wait_for is None:
            late = arrival > fields["deadline"]
            times.append(fields["deadline"] if late.any() else arrival.max())
        else:
            late = np.argsort(np.argsort(arrival, kind="stable"), kind="stable") >= wait_for
            times.append(np.sort(arrival)[wait_for - 1])
        stragglers.append(late.sum())
    np.testing.assert_array_equal(res.history["stragglers"][1:], stragglers)
    # a float32 running sum of `steps` terms: relative error below steps·eps
    np.testing.assert_allclose(res.history["time"][1:], np.cumsum(times), rtol=cfg.steps * EPS32)


def _monte_carlo_rate(hp, load, upload, n, key):
    times = jax.jit(jax.vmap(lambda k: latency_times(k, hp, load)))(jax.random.split(key, n))
    return np.mean(np.asarray(times) + upload > float(hp.deadline), axis=0)


@pytest.mark.parametrize("case", range(6))
def test_deadline_rate_closed_form_matches_monte_carlo(case):
    """P(load·(shift + Exp(rate)) + Exp(1/fixed) + u > deadline), the hypoexponential
    tail, on random parameters, including fixed = 0 and l1 = l2 (the formula's
    removable singularity); within 5 Monte-Carlo standard errors."""
    rng = np.random.default_rng([SEED, 2, case])
    loads = jnp.asarray([0.0, 1.0, 2.0, 3.0])
    rate = float(rng.uniform(0.5, 2.0))
    fixed = 0.0 if case == 0 else (2.0 / rate if case == 1 else float(rng.uniform(0.1, 2.0)))
    hp = _hp(num_devices=4, straggler="latency", latency_shift=float(rng.uniform(0.0, 1.0)), latency_rate=rate,
             latency_fixed=fixed, deadline=float(rng.uniform(1.0, 6.0)))  # fmt: skip
    upload = float(rng.uniform(0.0, 0.5))
    closed = np.asarray(latency_rate_closed_form(hp, loads, upload))
    n = 40_000
    empirical = _monte_carlo_rate(hp, loads, upload, n, jax.random.key(SEED + case))
    se = np.sqrt(np.maximum(closed * (1 - closed), 1.0 / n) / n)
    assert np.all(np.abs(empirical - closed) <= 5 * se), (empirical, closed, se)
    assert closed[0] == 0.0  # a device holding nothing never straggles
    model = make_straggler_model("latency", 4, loads=np.asarray(loads))
    np.testing.assert_allclose(model.marginal_rate(hp, loads, upload), closed, rtol=4 * EPS32)


def test_no_fixed_delay_is_the_load_scaled_model():
    """latency_fixed = 0: time_m = load_m (shift + Exp(rate)) from the same key, exactly."""
    hp = _hp(num_devices=5, straggler="latency", latency_shift=0.7, latency_rate=1.3)
    load = jnp.asarray([1.0, 2.0, 2.0, 3.0, 1.0])
    key = jax.random.key(SEED)
    expo = jax.random.exponential(key, (5,), jnp.float32) / hp.latency_rate
    np.testing.assert_array_equal(latency_times(key, hp, load), load * (hp.latency_shift + expo))
    with_delay = latency_times(key, dataclasses.replace(hp, latency_fixed=jnp.float32(2.0)), load)
    assert np.all(np.asarray(with_delay) >= np.asarray(latency_times(key, hp, load)))


def test_the_fixed_decoder_stays_unbiased_with_uploads_and_delays():
    """The engine's nominal rates include the upload time and the delay: the delivered
    fraction over many steps matches 1 − mean rate (5 standard errors)."""
    cfg = cj.preset("coco-ef", **{**SMALL, "steps": 400, "eval_every": 400}, straggler="latency",
                    latency_fixed=0.8, deadline=3.5, upload_bandwidth=60.0)  # fmt: skip
    res = cj.run(cfg)
    hp = _hp(**{**SMALL, "straggler": "latency", "latency_fixed": 0.8, "deadline": 3.5})
    upload = res.bits_per_message / 60.0
    rate = float(np.mean(latency_rate_closed_form(hp, jnp.full(6, 2.0), upload)))
    n = cfg.steps * cfg.num_devices
    delivered = res.history["delivered"][-1] / n
    se = np.sqrt(rate * (1 - rate) / n)
    assert abs(delivered - (1 - rate)) <= 5 * se + 1.0 / n, (delivered, 1 - rate, se)


def test_bad_time_fields_are_refused():
    with pytest.raises(cj.ConfigError, match=r"upload_bandwidth=0.0 is invalid"):
        ExperimentConfig(upload_bandwidth=0.0)
    with pytest.raises(cj.ConfigError, match=r"latency_fixed=-1.0 is invalid"):
        ExperimentConfig(latency_fixed=-1.0)
