"""Engine-level properties of the breadth features: minibatches, time, codes with
K ≠ M, device momentum, DIANA, neural tasks, non-iid partitions, new-field errors."""

import jax
import numpy as np
import pytest
from conftest import assert_within, gamma, run_tolerances, unit_roundoff

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
    # rounding can bias every draw alike: θ1 = -lr ĝ, ĝ a decoded mean of minibatch
    # gradients x_i y_i (θ = 0) over d + batch + L + M + 10 roundings (the fixed weights
    # sum to one over the code): at most gamma_N max_i |x_i| |y_i| per coordinate
    rounding = gamma(5 + 3 + 2 + 4 + 10) * (np.abs(x) * np.abs(y)[:, None]).max(axis=0)
    np.testing.assert_array_less(np.abs(params.mean(axis=0) - expected), 5 * stderr + rounding)


def test_shared_and_faithful_minibatches_differ_per_draw(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    base = cj.ExperimentConfig(
        num_devices=4, straggler="none", compressor="identity", error_feedback="none", batch_size=3, steps=3
    )
    a = cj.run(base.replace(shared_minibatch=True), data=(x, y)).params
    b = cj.run(base.replace(shared_minibatch=False), data=(x, y)).params
    # other minibatches move θ by O(lr |g|), far above 3 steps' float32 rounding (the
    # default 1e-5 relative of allclose is ~100 gamma_(d + batch + ...))
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
        tol = run_tolerances(cfg, data=(x, y), reference="exact")["params"]  # float32 vs float64 GD
        assert np.linalg.norm(cj.run(cfg, data=(x, y)).params - gradient_descent(x, y, 0.2, 10)) <= tol
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
    expected = gradient_descent(x, y, 0.05, 12, momentum=0.8)
    tol = _heavy_ball_tolerance(x, y, 0.05, 12, 0.8, num_devices=4)
    assert np.linalg.norm(cj.run(cfg, data=(x, y)).params - expected) <= tol
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
    assert np.linalg.norm(cj.run(server, data=(x, y)).params - expected) <= tol


def _heavy_ball_tolerance(x, y, lr, steps, beta, num_devices, redundancy=1) -> float:
    """Bound on ||θ_T(float32 engine) - θ_T(float64 heavy ball)||_2 (linreg, identity
    compressor, no stragglers, the cyclic code with the fixed decoder).

    Each step's ĝ is within gamma_N a (a = |X_k|^T (|X_k| |θ| + |y_k|) / n_k, the largest
    over partitions: the weights sum to one over the code) with N = d + n_k + (s+1) + M
    + 10 (gradient, encoding, decoding, weights); the buffer u = β u + ĝ adds gamma_2
    (β |u| + a), per device and decoded (device momentum) or at the server, and
    θ - lr u two more roundings. Errors (θ, u) propagate by [[||I - lr H||, lr β],
    [||H||, β]] (heavy ball linearised, H = X^T X / n), from the float64 trajectory."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    n_k = n // num_devices
    h = x.T @ x / n
    prop = np.array([[np.linalg.norm(np.eye(d) - lr * h, 2), lr * beta], [np.linalg.norm(h, 2), beta]])
    g_n = gamma(d + n_k + redundancy + 1 + num_devices + 10)
    theta, buf, buf_abs, err = np.zeros(d), np.zeros(d), np.zeros(d), np.zeros(2)
    for _ in range(steps):
        xa = np.abs(x).reshape(num_devices, n_k, d)
        ya = np.abs(y).reshape(num_devices, n_k)
        a = (np.einsum("knd,kn->kd", xa, xa @ np.abs(theta) + ya) / n_k).max(axis=0)
        buf = beta * buf + x.T @ (x @ theta - y) / n
        buf_abs = beta * buf_abs + a
        theta = theta - lr * buf
        d_buf = np.linalg.norm(g_n * a + gamma(2) * buf_abs)
        d_theta = lr * d_buf + 2 * unit_roundoff() * np.linalg.norm(np.abs(theta) + lr * buf_abs)
        err = prop @ err + np.array([d_theta, d_buf])
    return float(err[0])


def test_diana_with_identity_is_gradient_descent(linreg_data):
    x, y = linreg_data(d=5, noise=0.0)
    cfg = cj.preset("gc-diana", num_devices=4, straggler="none", compressor="identity", lr=0.2, steps=10)
    tol = run_tolerances(cfg, data=(x, y), reference="exact")["params"]  # float32 vs float64 GD
    assert np.linalg.norm(cj.run(cfg, data=(x, y)).params - gradient_descent(x, y, 0.2, 10)) <= tol


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
    # exact recovery from any M - s devices, at the cost of thrice the load per device:
    # ||ĝ - ∇F||^2 within the rounding and decode-residual bound of `run_tolerances`
    own = run_tolerances(coded, reference="exact")["own_grad_error_sq"]
    assert_within(res_c.history["grad_error_sq"][1:], 0, own[1:], "exact recovery")
    slowest_shift = 3 * 1.0
    assert np.all(np.diff(res_c.history["time"]) >= slowest_shift)
    deadline = cj.run(cj.preset("coco-ef", num_devices=m, straggler="latency", deadline=2.5, steps=40))
    steps_time = np.diff(deadline.history["time"])
    # cumulative float32 time: each sum rounds by u |t|, the float32 difference by u more
    slack = gamma(2) * (2.5 + float(np.max(deadline.history["time"])))
    assert np.all(steps_time <= 2.5 + slack) and np.any(deadline.history["stragglers"] > 0)


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
    # a stationary two-state chain: the mean of T steps has variance pi (1 - pi) (1 + l) /
    # ((1 - l) T) per device, l = 1 - p_gb - p_bg = 0.6 (devices independent): 5 of them
    lam = 1 - 0.1 - 0.3
    sd = np.sqrt(0.25 * 0.75 * (1 + lam) / ((1 - lam) * m * steps))
    assert abs(rate - 0.25) < 5 * sd, (rate, sd)


def test_bernoulli_code_differs_by_seed_and_learns():
    cfg = cj.preset("coco-ef", allocation="bernoulli", num_devices=8, redundancy=2, steps=40)
    a, b = cj.run(cfg), cj.run(cfg.replace(seed=1))
    assert not np.allclose(a.params, b.params)  # another code: O(1) apart, not rounding (1e-5 rel)
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
