"""The engine end to end: exact semantics on small cases, properties, compilation."""

import os
import signal
import threading
import time

import chex
import jax
import numpy as np
import pytest
from conftest import assert_same_history, assert_within, gamma, run_tolerances

import coco_jax as cj
from coco_jax import bench, interrupt, reference
from coco_jax import config as config_lib
from coco_jax.compressors import make_compressor
from coco_jax.engine import prepare
from coco_jax.reference import gradient_descent
from coco_jax.registry import FEEDBACKS, PRESETS
from coco_jax.step import compiled_run, make_run


def test_hand_computed_example():
    """M = K = 3, s = 1 cyclic, top-1 with error feedback, fixed decoder, lr 0.5,
    device 1 straggles at step 1 and device 0 at step 2 (worked by hand)."""
    x = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    y = np.array([1, 2, 3], np.float32)
    trace = np.array([[False, True, False], [True, False, False]])
    cfg = cj.ExperimentConfig(
        task="linreg",
        num_devices=3,
        redundancy=1,
        allocation="cyclic",
        decoder="fixed",
        straggler="trace",
        straggler_prob=0.25,
        compressor="topk",
        compress_k=1,
        error_feedback="ef",
        lr=0.5,
        steps=2,
    )
    res = cj.run(cfg, data=(x, y), straggler_trace=trace)
    # float32 against exact rationals: `conftest.run_tolerances(..., reference="exact")`
    tol = run_tolerances(cfg, data=(x, y), straggler_trace=trace, reference="exact")
    # step 1: coded grads d0=[-1,-2], d2=[-4,-3]; top-1 -> [0,-2], [-4,0];
    # w = 1/(3 * 0.75 * 2) = 1/4.5; ĝ = [-4,-2]/4.5; θ1 = [4/9, 2/9]
    # step 2: v1 = [-21/9,-37/9] -> [0,-37/9]; v2 = [-26/9,-48/9] -> [0,-48/9];
    # ĝ = [0, -85/9]/4.5; θ2 = [4/9, 103/81]
    assert_within(res.params, [4 / 9, 103 / 81], tol["params"], "params")
    assert_within(res.history["loss"][0], (1 + 4 + 9) / 6, tol["loss"][0], "loss 0")
    assert_within(res.history["loss"][2], 16322 / 39366, tol["loss"][2], "loss 2")
    # memories after step 2: e0 kept at [-1, 0], e1 = [-21/9, 0], e2 = [-26/9, 0]
    assert_within(res.history["ef_error_norm"][2], 56 / 27, tol["ef_error_norm"][2], "memory")
    np.testing.assert_array_equal(res.history["stragglers"], [0, 1, 1])
    # top-1 of d = 2: 1 * (32 + 1) bits per message, 2 messages per step
    np.testing.assert_array_equal(res.history["bits"], [0, 66, 132])
    np.testing.assert_array_equal(res.history["step"], [0, 1, 2])


@pytest.mark.parametrize(
    "allocation,redundancy,decoder",
    [
        ("uncoded", 0, "fixed"),
        ("uncoded", 0, "received"),
        ("uncoded", 0, "optimal"),
        ("cyclic", 2, "fixed"),
        ("cyclic", 2, "received"),
        ("cyclic", 2, "optimal"),
        ("frc", 1, "fixed"),
        ("frc", 1, "received"),
        ("frc", 1, "optimal"),
        ("cyclic_mds", 2, "received"),
        ("cyclic_mds", 2, "optimal"),
    ],
)
@pytest.mark.parametrize("error_feedback", FEEDBACKS.builtin_names())
def test_identity_without_stragglers_is_gradient_descent(
    allocation, redundancy, decoder, error_feedback, linreg_data
):
    x, y = linreg_data()
    cfg = cj.ExperimentConfig(
        num_devices=6,
        redundancy=redundancy,
        allocation=allocation,
        decoder=decoder,
        straggler="none",
        compressor="identity",
        error_feedback=error_feedback,
        lr=0.3,
        steps=15,
    )
    res = cj.run(cfg, data=(x, y))
    # float32 against float64 gradient descent (exact to ~1e-15): rounding of each step
    # and the decoder's residual, propagated (`conftest.run_tolerances`)
    tol = run_tolerances(cfg, data=(x, y), reference="exact")
    assert np.linalg.norm(res.params - gradient_descent(x, y, 0.3, 15)) <= tol["params"]


def test_optimal_decoder_recovers_gradient_with_decodable_stragglers(linreg_data):
    """gc with ≤ s stragglers (cyclic) or one survivor per frc group is exactly GD."""
    x, y = linreg_data(n=60)
    rng = np.random.default_rng(1)
    steps, m = 12, 6
    cyclic_trace = np.zeros((steps, m), bool)
    for t in range(steps):
        cyclic_trace[t, rng.choice(m, size=2, replace=False)] = True
    frc_trace = np.zeros((steps, m), bool)
    for t in range(steps):  # groups {0,1,2}, {3,4,5}: kill two of each group
        for g in (0, 3):
            frc_trace[t, g + rng.choice(3, size=2, replace=False)] = True
    for allocation, trace in (("cyclic", cyclic_trace), ("frc", frc_trace), ("cyclic_mds", cyclic_trace)):
        cfg = cj.preset(
            "gc", num_devices=m, redundancy=2, allocation=allocation, straggler="trace", lr=0.3, steps=steps
        )
        res = cj.run(cfg, data=(x, y), straggler_trace=trace)
        tol = run_tolerances(cfg, data=(x, y), straggler_trace=trace, reference="exact")
        assert np.linalg.norm(res.params - gradient_descent(x, y, 0.3, steps)) <= tol["params"], allocation
        # exact decoding: ||g_hat - grad F||^2 within its rounding and decode-residual bound
        assert_within(res.history["grad_error_sq"][1:], 0, tol["own_grad_error_sq"][1:], allocation)


def _static_and_data(cfg):
    prep = prepare(cfg)
    return prep.static, prep.data


def test_jitted_equals_not_jitted():
    cfg = cj.preset("coco-ef", task="logreg", num_devices=4, steps=4, eval_every=2, num_samples=64)
    static, data = _static_and_data(cfg)
    run = make_run(static)
    hp = config_lib.hparams_of(cfg)
    p_jit, h_jit = jax.jit(run)(hp, data)
    with jax.disable_jit():
        p_eager, h_eager = run(hp, data)
    tol = run_tolerances(cfg)  # two float32 programs of one configuration
    assert np.linalg.norm(np.asarray(p_jit) - np.asarray(p_eager)) <= tol["params"]
    assert_same_history(h_jit, h_eager, tol, "jit vs eager")


def test_dynamic_values_do_not_recompile():
    cfg = cj.preset("coco-ef", num_devices=4, steps=5)
    static, data = _static_and_data(cfg)
    chex.clear_trace_counter()
    run = jax.jit(chex.assert_max_traces(make_run(static), n=1))
    outs = []
    for changes in ({}, {"lr": 0.05, "straggler_prob": 0.4, "seed": 7}, {"lr": 0.2, "seed": 3}):
        other = cfg.replace(**changes)
        assert prepare(other).static == static
        outs.append(run(config_lib.hparams_of(other), data)[1]["loss"])
    assert not np.allclose(outs[0], outs[1])  # other lr, p and seed: O(1) apart, not rounding
    # cj.run reuses the cached program for configurations of one static group
    cj.run(cfg)
    sizes = [p._cache_size() for p in compiled_run(static)]
    cj.run(cfg.replace(lr=0.01, seed=11, straggler_prob=0.1))
    assert [p._cache_size() for p in compiled_run(static)] == sizes


def test_vmapped_runs_equal_runs_one_by_one():
    base = cj.preset("coco-ef", task="logreg", num_devices=4, steps=6, num_samples=64)
    cfgs = [
        base.replace(lr=lr, seed=s, straggler_prob=p)
        for lr, s, p in ((0.1, 0, 0.2), (0.3, 1, 0.0), (0.05, 2, 0.5))
    ]
    static, data = _static_and_data(base)
    hps = jax.tree_util.tree_map(lambda *a: np.stack(a), *[config_lib.hparams_of(c) for c in cfgs])
    params, hist = jax.jit(jax.vmap(make_run(static), (0, None)))(hps, data)
    for i, c in enumerate(cfgs):
        one = cj.run(c)
        tol = run_tolerances(c)  # two float32 programs of one configuration
        assert np.linalg.norm(params[i] - one.params) <= tol["params"]
        assert_within(hist["loss"][i], one.history["loss"], tol["loss"], f"loss {i}")


def test_history_fields_and_eval_points():
    res = cj.run(cj.preset("coco-ef", task="logreg", steps=10, eval_every=4))
    np.testing.assert_array_equal(res.history["step"], [0, 4, 8, 10])
    for key in (
        "loss",
        "bits",
        "stragglers",
        "grad_norm_sq",
        "grad_error_sq",
        "ef_error_norm",
        "accuracy",
        "time",
        "test_accuracy",
        "diverged",
    ):
        assert res.history[key].shape == (4,), key
    assert np.all(np.diff(res.history["bits"]) > 0)
    assert res.history["loss"][-1] < res.history["loss"][0]
    # θ = 0 for logreg: softplus(0) = log 2 (a few ulp: exp and log1p), averaged over
    # the n rows (gamma_n)
    n = res.config.num_samples
    assert np.isclose(res.history["loss"][0], np.log(2), rtol=gamma(n + 4), atol=0)
    assert "accuracy" not in cj.run(cj.preset("coco-ef", steps=2)).history


def test_divergence_is_recorded_not_raised():
    res = cj.run(cj.preset("gd", lr=50.0, steps=40))
    assert res.diverged and res.diverged_step is not None and 1 <= res.diverged_step <= 40
    assert res.history["diverged"][-1] and not res.history["diverged"][0]
    assert not np.isfinite(res.history["loss"][-1])


def test_float64_without_x64_falls_back_to_float32():
    res = cj.run(cj.ExperimentConfig(dtype="float64", steps=2))
    assert res.history["loss"].dtype == np.float32


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"task": "ridge"}, "task"),
        ({"allocation": "mds"}, "allocation"),
        ({"decoder": "magic"}, "decoder"),
        ({"straggler": "sometimes"}, "straggler"),
        ({"compressor": "zip"}, "compressor"),
        ({"error_feedback": "ef3"}, "error_feedback"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"redundancy": -1}, "redundancy"),
        ({"redundancy": 8}, "redundancy"),
        ({"allocation": "frc", "redundancy": 2}, "redundancy"),
        ({"allocation": "uncoded", "redundancy": 1}, "redundancy"),
        ({"straggler_prob": 1.0}, "straggler_prob"),
        ({"straggler_prob": -0.1}, "straggler_prob"),
        ({"compress_k": 0}, "compress_k"),
        ({"compress_ratio": 0.0}, "compress_ratio"),
        ({"num_devices": 0}, "num_devices"),
        ({"lr": -1.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"lr": "fast"}, "lr"),
        ({"straggler": "heterogeneous", "straggler_probs": (0.1, 0.2)}, "straggler_probs"),
    ],
)
def test_invalid_config_names_field(changes, field):
    with pytest.raises(ValueError, match=field) as info:
        cj.ExperimentConfig(**changes)
    assert isinstance(info.value, cj.ConfigError)
    assert repr(next(iter(changes.values()))) in str(info.value) or field in str(info.value)


def test_data_dependent_errors_before_compiling(monkeypatch, linreg_data):
    from coco_jax import step

    def boom(*a, **k):
        raise AssertionError("compiled before validating")

    monkeypatch.setattr(step, "compiled_run", boom)
    monkeypatch.setattr(cj.engine, "compiled_run", boom)
    x, y = linreg_data(n=50)
    with pytest.raises(cj.ConfigError, match="data"):
        cj.run(cj.ExperimentConfig(num_devices=8), data=(x, y))  # 50 rows, K = 8
    with pytest.raises(cj.ConfigError, match="compress_k"):
        cj.run(cj.ExperimentConfig(compress_k=1000))
    cfg = cj.ExperimentConfig(straggler="trace", steps=3, num_devices=4)
    with pytest.raises(cj.ConfigError, match="shape"):
        cj.run(cfg, straggler_trace=np.zeros((3, 5), bool))
    with pytest.raises(cj.ConfigError, match="dtype"):
        cj.run(cfg, straggler_trace=np.zeros((3, 4), np.int32))
    with pytest.raises(cj.ConfigError, match="straggler_trace"):
        cj.run(cfg)


def test_presets_build_and_learn():
    for name in PRESETS.builtin_names():
        res = cj.run(cj.preset(name, task="logreg", steps=30, num_devices=6))
        assert res.history["loss"][-1] < res.history["loss"][0], name
    with pytest.raises(cj.ConfigError, match="preset"):
        cj.preset("coco-xx")


def test_cli_run_writes_history_and_config(tmp_path, capsys):
    from coco_jax.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--preset",
            "coco-ef",
            "--task",
            "logreg",
            "--num-devices",
            "4",
            "--steps",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "loss" in printed and "accuracy" in printed
    table = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(table["step"], np.arange(6))
    import json

    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["num_devices"] == 4 and meta["config"]["error_feedback"] == "ef"
    assert main(["run", "--num-devices", "4", "--redundancy", "7"]) == 2
    assert "redundancy" in capsys.readouterr().err


def test_float64_is_honoured_under_x64():
    """In a fresh process with x64 enabled: float64 histories, parameters and a
    gradient-descent trajectory exact to float64 rounding; float32 still works."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import numpy as np
        import coco_jax as cj
        rng = np.random.default_rng(0)
        x = rng.normal(size=(24, 4)); y = x @ rng.normal(size=4)
        cfg = cj.ExperimentConfig(num_devices=4, straggler="none", compressor="identity",
                                  error_feedback="none", lr=0.2, steps=8, dtype="float64")
        res = cj.run(cfg, data=(x, y))
        theta = np.zeros(4)
        for _ in range(8):
            theta = theta - 0.2 * x.T @ (x @ theta - y) / 24
        assert res.params.dtype == np.float64 and res.history["loss"].dtype == np.float64
        # two float64 evaluations of 8 GD steps: each step's gradient within
        # gamma_(n+d+4) |x|^T (|x| |theta| + |y|) / n (and the update within 2u), an
        # error propagated by ||I - lr H||_2 per step
        u = 2.0**-53
        g = lambda k: k * u / (1 - k * u)
        rho = np.linalg.norm(np.eye(4) - 0.2 * x.T @ x / 24, 2)
        err, th = 0.0, np.zeros(4)
        for _ in range(8):
            a = np.abs(x).T @ (np.abs(x) @ np.abs(th) + np.abs(y)) / 24
            th = th - 0.2 * x.T @ (x @ th - y) / 24
            err = rho * err + 2 * np.linalg.norm(0.2 * g(24 + 4 + 4) * a + g(2) * np.abs(th))
        assert np.linalg.norm(res.params - theta) <= err, (np.linalg.norm(res.params - theta), err)
        for task in ("logreg", "mlp"):
            r = cj.run(cj.preset("coco-ef", task=task, dtype="float64", steps=3))
            assert r.history["loss"].dtype == np.float64, task
        assert cj.run(cj.preset("coco-ef", steps=3)).history["loss"].dtype == np.float32
        print("ok")
        """
    )
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_given_trace_is_the_straggler_pattern():
    """As in the contract, `cj.run(cfg, data=(X, y), straggler_trace=T)` with a config
    naming another straggler model runs exactly the trace."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5)).astype(np.float32)
    trace = rng.random((6, 8)) < 0.3
    cfg = cj.preset("coco-ef", straggler="bernoulli", straggler_prob=0.2, steps=6)
    res = cj.run(cfg, data=(x, y), straggler_trace=trace)
    np.testing.assert_array_equal(res.history["stragglers"][1:], trace.sum(axis=1))
    assert res.config.straggler == "trace"
    explicit = cj.run(cfg.replace(straggler="trace"), data=(x, y), straggler_trace=trace)
    np.testing.assert_array_equal(res.params, explicit.params)
    with pytest.raises(cj.ConfigError, match="shape"):
        cj.run(cfg, data=(x, y), straggler_trace=trace[:5])


# ------------------------------------------------- the engine equals the NumPy references
# coco_jax.reference implements the COCO-EF step as a per-device loop and fully
# vectorised in NumPy (the benchmark's baselines); both must equal the engine.

M, N_K, D, S, K, STEPS, P, LR = 6, 5, 20, 2, 3, 12, 0.2, 0.1


def _case(task: str):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((M * N_K, D)).astype(np.float32) / np.float32(np.sqrt(D))
    z = x @ rng.standard_normal(D).astype(np.float32)
    y = z if task == "linreg" else (z > 0).astype(np.float32)
    trace = rng.random((STEPS, M)) < P
    return x, y.astype(np.float32), trace


def _config(task: str):
    return cj.ExperimentConfig(
        task=task,
        num_devices=M,
        redundancy=S,
        allocation="cyclic",
        decoder="fixed",
        straggler="trace",
        straggler_prob=P,
        compressor="topk",
        compress_k=K,
        error_feedback="ef",
        optimizer="sgd",
        lr=LR,
        steps=STEPS,
        eval_every=1,
    )


def _engine(task: str, x, y, trace):
    y_engine = y if task == "linreg" else y.astype(np.int32)
    return cj.run(_config(task), data=(x, y_engine), straggler_trace=trace)


@pytest.mark.parametrize("task", ["linreg", "logreg"])
@pytest.mark.parametrize(
    "step_fn", [reference.loop_step, reference.vectorized_step], ids=["loop", "vectorized"]
)
def test_references_match_engine(task, step_fn):
    x, y, trace = _case(task)
    assert trace.any() and not trace.all()
    res = _engine(task, x, y, trace)
    b = bench.code_matrix(M, S)
    w = np.tile(bench.decode_weights(M, S, P), (STEPS, 1))  # 1/(K(1-p)(s+1)); stragglers zeroed by the step
    # 1 - p, two products and a quotient in float32: gamma_4
    np.testing.assert_allclose(w[0], 1.0 / (M * (1 - P) * (S + 1)), rtol=gamma(4), atol=0)
    theta, losses = reference.reference_run(step_fn, task, x, y, b, trace, w, K, LR, True)
    assert theta.dtype == np.float32
    # the NumPy step is another float32 program of the same configuration
    y_engine = y if task == "linreg" else y.astype(np.int32)
    tol = run_tolerances(_config(task), data=(x, y_engine), straggler_trace=trace)
    assert_within(res.history["loss"], losses, tol["loss"], "loss")
    assert np.linalg.norm(res.params - theta) <= tol["params"]
    assert losses[-1] < losses[0]


def _stable_argsort_topk(v, k):
    out = np.zeros_like(v)
    idx = np.argsort(-np.abs(v), kind="stable")[:k]
    out[idx] = v[idx]
    return out


def test_reference_topk_ties_match_engine_compressor():
    rng = np.random.default_rng(0)
    for trial in range(40):
        d = int(rng.integers(1, 30))
        k = int(rng.integers(1, d + 1))
        v = (rng.integers(-3, 4, size=(4, d)) * 0.5).astype(np.float32)  # many ties, zeros, both signs
        comp = make_compressor("topk", d, k=k)
        # as the engine runs it: jitted, vmapped over devices (one compilation per trial
        # instead of one per row: the bisection's loop recompiles on every eager call)
        engine = np.asarray(jax.jit(jax.vmap(comp.compress, (None, 0)))(jax.random.key(0), v))
        np.testing.assert_array_equal(reference.topk(v, k), engine)
        np.testing.assert_array_equal(reference._topk_rows(v, k), engine)
        np.testing.assert_array_equal(np.stack([_stable_argsort_topk(r, k) for r in v]), engine)


def test_chunking_never_changes_a_run():
    """`engine.run` advances in chunks of adaptive length; any chunking runs the same
    compiled step, so the results are bitwise equal (here: one step at a time, uneven
    chunks, and the whole run at once)."""
    cfg = cj.preset("coco-ef", task="logreg", num_devices=4, steps=9, eval_every=2, num_samples=64)
    prep = prepare(cfg)
    progs = compiled_run(prep.static)
    hp = config_lib.hparams_of(cfg)

    def chunked(lengths):
        carry, t = progs.init(hp, prep.data), 0
        for n in lengths:
            carry = progs.advance(carry, hp, prep.data, np.int32(t), np.int32(n))
            t += n
        return carry

    whole = chunked([9])
    for lengths in ([1] * 9, [2, 5, 2], [4, 20]):  # steps past the end are no-ops
        chex.assert_trees_all_equal(chunked(lengths).records, whole.records)
        chex.assert_trees_all_equal(chunked(lengths).state.params, whole.state.params)
    np.testing.assert_array_equal(cj.run(cfg).history["loss"], np.asarray(whole.records["loss"]))


def test_a_long_run_stops_soon_after_a_signal():
    """With the CLI's signal handling active, SIGINT during a run that would take hours
    stops it at the next chunk boundary (chunks take about CHUNK_SECONDS) with
    `Interrupted` and exit status 130."""
    cfg = cj.preset("coco-ef", num_devices=8, steps=50_000_000, eval_every=100_000)  # hours to finish
    cj.run(cfg.replace(steps=10))  # compile outside the timed part
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    with interrupt.handling(), pytest.raises(interrupt.Interrupted) as info:
        timer.start()
        start = time.perf_counter()
        cj.run(cfg)
    elapsed = time.perf_counter() - start
    timer.join()
    assert info.value.exit_code == 130
    # stopped at a chunk boundary, not at the end of the run: a bound with a wide margin
    # for a loaded machine (the seconds themselves are measured in benchmarks, not here)
    assert elapsed < 120.0, elapsed
