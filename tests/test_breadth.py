"""Engine-level properties of the breadth features: minibatches, time, codes with
K ≠ M, device momentum, DIANA, neural tasks, non-iid partitions, new-field errors."""

import jax
import numpy as np
import pytest

import coco_jax as cj
from coco_jax import config as config_lib
from coco_jax.engine import prepare
from coco_jax.reference import gradient_descent
from coco_jax.step import make_run


def _vmapped_over_seeds(cfg, seeds, data=None):
    prep = prepare(cfg, data=data)
    hps = [config_lib.hparams_of(cfg.replace(seed=s)) for s in seeds]
    hp = jax.tree_util.tree_map(lambda *a: np.stack(a), *hps)
    params, hist = jax.jit(jax.vmap(make_run(prep.static), (0, None)))(hp, prep.data)
    return np.asarray(params), hist


@pytest.mark.parametrize("shared", [True, False])
def test_minibatch_gradients_are_unbiased(shared, linreg_data):
    """One step from θ = 0: the mean of θ1 over seeds is the full-gradient step, for
    shared and independent (faithful) minibatches alike."""
    x, y = linreg_data(d=5, noise=0.0)
    cfg = cj.ExperimentConfig(
        num_devices=4,
        redundancy=1,
        straggler="none",
        compressor="identity",
        error_feedback="none",
        batch_size=3,
        shared_minibatch=shared,
        lr=1.0,
        steps=1,
    )
    seeds = np.arange(3000)
    params, _ = _vmapped_over_seeds(cfg, seeds, data=(x, y))
    expected = gradient_descent(x, y, 1.0, 1)
    stderr = params.std(axis=0) / np.sqrt(len(seeds))
    assert np.all(params.std(axis=0) > 0)  # really stochastic
    np.testing.assert_array_less(np.abs(params.mean(axis=0) - expected), 5 * stderr + 1e-6)


def test_shared_and_faithful_minibatches_differ_per_draw(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    base = cj.ExperimentConfig(
        num_devices=4, straggler="none", compressor="identity", error_feedback="none", batch_size=3, steps=3
    )
    a = cj.run(base.replace(shared_minibatch=True), data=(x, y)).params
    b = cj.run(base.replace(shared_minibatch=False), data=(x, y)).params
    assert not np.allclose(a, b)


def test_more_partitions_than_devices(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    for allocation, s in (("cyclic", 1), ("frc", 1), ("uncoded", 0)):
        cfg = cj.ExperimentConfig(
            num_devices=4,
            num_partitions=8,
            redundancy=s,
            allocation=allocation,
            decoder="optimal",
            straggler="none",
            compressor="identity",
            error_feedback="none",
            lr=0.2,
            steps=10,
        )
        np.testing.assert_allclose(
            cj.run(cfg, data=(x, y)).params, gradient_descent(x, y, 0.2, 10), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(cj.ConfigError, match="num_partitions"):
        cj.ExperimentConfig(num_devices=4, num_partitions=6, allocation="cyclic")


def test_device_momentum_without_compression_is_heavy_ball(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    cfg = cj.ExperimentConfig(
        num_devices=4,
        straggler="none",
        compressor="identity",
        error_feedback="ef",
        device_momentum=0.8,
        lr=0.05,
        steps=12,
    )
    np.testing.assert_allclose(
        cj.run(cfg, data=(x, y)).params, gradient_descent(x, y, 0.05, 12, momentum=0.8), rtol=1e-4, atol=1e-5
    )
    server = cj.ExperimentConfig(
        num_devices=4,
        straggler="none",
        compressor="identity",
        error_feedback="none",
        optimizer="momentum",
        momentum=0.8,
        lr=0.05,
        steps=12,
    )
    np.testing.assert_allclose(
        cj.run(server, data=(x, y)).params, gradient_descent(x, y, 0.05, 12, momentum=0.8), rtol=1e-4
    )


def test_diana_with_identity_is_gradient_descent(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    cfg = cj.preset("gc-diana", num_devices=4, straggler="none", compressor="identity", lr=0.2, steps=10)
    np.testing.assert_allclose(
        cj.run(cfg, data=(x, y)).params, gradient_descent(x, y, 0.2, 10), rtol=1e-4, atol=1e-5
    )


def test_latency_time_and_wait_for():
    m = 6
    uncoded = cj.preset(
        "ignore-stragglers", num_devices=m, straggler="latency", wait_for=m, steps=30, latency_rate=2.0
    )
    res = cj.run(uncoded)
    assert np.all(res.history["stragglers"] == 0)  # waits for everyone
    assert np.all(np.diff(res.history["time"]) > 0)
    coded = cj.preset(
        "gc", num_devices=m, redundancy=2, straggler="latency", wait_for=m - 2, steps=30, latency_rate=2.0
    )
    res_c = cj.run(coded)
    assert np.all(res_c.history["stragglers"][1:] == 2)
    # exact recovery from any M - s devices, at the cost of thrice the load per device
    np.testing.assert_allclose(res_c.history["grad_error_sq"][1:], 0, atol=1e-8)
    slowest_shift = 3 * 1.0
    assert np.all(np.diff(res_c.history["time"]) >= slowest_shift)
    deadline = cj.run(cj.preset("coco-ef", num_devices=m, straggler="latency", deadline=2.5, steps=40))
    steps_time = np.diff(deadline.history["time"])
    assert np.all(steps_time <= 2.5 + 1e-6) and np.any(deadline.history["stragglers"] > 0)


def test_heterogeneous_and_markov_rates_in_history():
    m, steps = 10, 400
    probs = tuple(np.linspace(0.0, 0.6, m).round(3))
    het = cj.run(
        cj.preset("coco-ef", num_devices=m, straggler="heterogeneous", straggler_probs=probs, steps=steps)
    )
    rate = het.history["stragglers"][1:].mean() / m
    assert abs(rate - np.mean(probs)) < 5 * np.sqrt(np.mean(probs) / (m * steps))
    mk = cj.run(
        cj.preset("coco-ef", num_devices=m, straggler="markov", markov_p_gb=0.1, markov_p_bg=0.3, steps=steps)
    )
    rate = mk.history["stragglers"][1:].mean() / m
    assert abs(rate - 0.25) < 0.08  # correlated in time: a loose but failing-when-wrong bound


def test_bernoulli_code_differs_by_seed_and_learns():
    cfg = cj.preset("coco-ef", allocation="bernoulli", num_devices=8, redundancy=2, steps=40)
    a, b = cj.run(cfg), cj.run(cfg.replace(seed=1))
    assert not np.allclose(a.params, b.params)
    assert a.history["loss"][-1] < 0.5 * a.history["loss"][0]


@pytest.mark.parametrize(
    "changes",
    [
        {"task": "mlp", "dataset": "digits", "hidden_sizes": (16,)},
        {"task": "mlp", "dataset": "synthetic", "hidden_sizes": (8, 8)},
        {"task": "cnn", "dataset": "digits", "cnn_channels": (4,)},
        {"task": "softmax", "dataset": "digits", "partitioning": "sorted"},
        {"task": "softmax", "dataset": "digits", "partitioning": "dirichlet", "dirichlet_alpha": 0.3},
        {"task": "logreg", "dataset": "breast_cancer", "partitioning": "iid", "batch_size": 8},
        {
            "task": "mlp",
            "dataset": "digits",
            "hidden_sizes": (16,),
            "compressor": "grouped_sign",
            "error_feedback": "ef",
        },
    ],
)
def test_tasks_and_datasets_learn(changes):
    cfg = cj.preset("coco-ef", num_devices=4, steps=25, lr=0.1, **{k: v for k, v in changes.items()})
    res = cj.run(cfg)
    assert res.history["loss"][-1] < res.history["loss"][0]
    assert res.history["accuracy"][-1] > 0.3
    assert "test_accuracy" in res.history


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"straggler": "heterogeneous"}, "straggler_probs"),
        ({"straggler_probs": (0.1, 1.2, 0, 0, 0, 0, 0, 0)}, "straggler_probs"),
        ({"markov_p_gb": 1.5}, "markov_p_gb"),
        ({"markov_p_bg": 0.0}, "markov_p_bg"),
        ({"deadline": 0.0}, "deadline"),
        ({"latency_rate": -1.0}, "latency_rate"),
        ({"straggler": "latency", "wait_for": 9}, "wait_for"),
        ({"wait_for": 3}, "wait_for"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"hidden_sizes": (8, 0)}, "hidden_sizes"),
        ({"cnn_channels": (-1,)}, "cnn_channels"),
        ({"group_size": 0}, "group_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"straggler_error": "forget"}, "straggler_error"),
        ({"device_momentum": 1.0}, "device_momentum"),
        ({"error_feedback": "diana", "compressor": "topk"}, "compressor"),
        ({"task": "cnn", "dataset": "synthetic"}, "dataset"),
        ({"partitioning": "sorted"}, "partitioning"),
        ({"allocation": "cyclic_mds", "decoder": "fixed"}, "decoder"),
        ({"allocation": "cyclic_mds", "decoder": "optimal", "num_partitions": 16}, "num_partitions"),
    ],
)
def test_invalid_breadth_fields(changes, field):
    with pytest.raises(cj.ConfigError, match=field):
        cj.ExperimentConfig(**changes)
