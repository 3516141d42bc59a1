"""Grids at scale (issue 17 item 1, issue 19 items 4 and 9): the results table built
column-wise equals the per-configuration reference (`results.rows_of`), configuration
ids and HParams computed once and column-wise equal their references, planning does a
constant amount of work per static part (counted calls, never seconds), estimates
become measured once a program ran, and a configuration's rows do not depend on its
batch, the memory budget or the grid's order.

Sizes are small (linreg, M <= 8): the file runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import config as config_lib
from coco_jax import costs, engine
from coco_jax import plan as plan_lib
from coco_jax import results as res_lib
from coco_jax.fileio import jsonable
from coco_jax.program import hparams_columns

sw = importlib.import_module("coco_jax.sweep")
SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure


def _old_config_id(cfg) -> str:
    """The reference: config_id as it was computed per configuration before issue 17."""
    import hashlib

    text = json.dumps(jsonable(cfg.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _random_configs(rng, task: str, n: int) -> list:
    """n valid configurations of one task mixing presets and optional (None) fields."""
    out = []
    presets = ["coco-ef", "gc", "gc-compressed", "ef-uncoded", "gc-unbiased", "coco-ef21", "gd"]
    while len(out) < n:
        fields = dict(cj.preset(str(rng.choice(presets))).to_dict())
        fields.update(task=task, num_devices=4, num_samples=64, num_test=8, num_features=6, steps=4)
        if task == "softmax":
            fields["num_classes"] = 3
        choice = rng.integers(6)
        if choice == 0:
            fields["compress_k"] = int(rng.integers(1, 5))
        elif choice == 1:
            fields.update(straggler="heterogeneous", straggler_probs=tuple(rng.uniform(0, 0.5, 4).round(3)))
        elif choice == 2:
            fields.update(straggler="latency", wait_for=int(rng.integers(1, 5)), decoder="fixed")
        elif choice == 3:
            fields["upload_bandwidth"] = float(rng.uniform(1e3, 1e5))
        elif choice == 4:
            fields["lr_decay_steps"] = float(rng.uniform(1, 10))
        fields["lr"] = float(rng.choice([0.1, 0.05, 1, 0.25]))
        fields["seed"] = int(rng.integers(0, 2**31))
        fields["hidden_sizes"] = tuple(int(w) for w in rng.integers(1, 9, size=rng.integers(1, 3)))
        try:
            out.append((str(rng.choice(presets + ["custom"])), cj.ExperimentConfig(**fields)))
        except cj.ConfigError:
            continue
    return out


def _random_history(rng, task: str, b: int, p: int) -> dict:
    hist = {
        "step": np.tile(np.arange(p, dtype=np.int32), (b, 1)),
        "loss": rng.normal(size=(b, p)).astype(np.float32),
        "grad_norm_sq": rng.random((b, p)).astype(np.float32),
        "test_loss": rng.normal(size=(b, p)).astype(np.float32),
        "stragglers": rng.integers(0, 4, (b, p)).astype(np.int32),
        "grad_error_sq": rng.random((b, p)).astype(np.float32),
        "ef_error_norm": rng.random((b, p)).astype(np.float32),
        "contraction": np.where(rng.random((b, p)) < 0.2, np.nan, rng.random((b, p))).astype(np.float32),
        "delivered": np.cumsum(rng.integers(0, 4, (b, p)), axis=1).astype(np.int32),
        "time": np.cumsum(rng.random((b, p)), axis=1).astype(np.float32),
        "diverged": rng.random((b, p)) < 0.1,
    }
    if task != "linreg":
        hist["accuracy"] = rng.random((b, p)).astype(np.float32)
        hist["test_accuracy"] = rng.random((b, p)).astype(np.float32)
    return hist


def test_batch_table_equals_the_per_configuration_reference():
    """Column-wise tables of random batches (presets, tasks, None and tuple fields, fresh
    values each run) equal `pd.concat` of `rows_of` per configuration: values, dtypes and
    column order, per batch, concatenated over batches, and as read back from Parquet."""
    rng = np.random.default_rng(SEED)
    new_frames, ref_frames = [], []
    for task in ("linreg", "logreg", "softmax", "linreg"):
        b, p = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        items = _random_configs(rng, task, b)
        hist = _random_history(rng, task, b, p)
        bits = rng.integers(1, 10_000, b)
        div = np.where(rng.random(b) < 0.3, rng.integers(1, 5, b), -1)
        new = res_lib.batch_table([m for m, _ in items], [c for _, c in items], hist, bits, div)
        ref = []
        for i, (method, cfg) in enumerate(items):
            one = {k: v[i] for k, v in hist.items()}
            one["bits"] = one["delivered"].astype(np.float64) * float(bits[i])
            ref.append(res_lib.rows_of(method, cfg, one, int(bits[i]), None if div[i] < 0 else int(div[i])))
        ref = pd.concat(ref, ignore_index=True)
        pd.testing.assert_frame_equal(new, ref, check_exact=True, obj=f"seed {SEED} task {task}")
        new_frames.append(new)
        ref_frames.append(ref)
    new_all = pd.concat(new_frames, ignore_index=True)
    ref_all = pd.concat(ref_frames, ignore_index=True)
    pd.testing.assert_frame_equal(new_all, ref_all, check_exact=True, obj=f"seed {SEED}")
    pd.testing.assert_frame_equal(res_lib.normalise(new_all), res_lib.normalise(ref_all), check_exact=True)


def test_config_id_equals_the_reference_and_is_computed_once():
    rng = np.random.default_rng(SEED)
    for _, cfg in _random_configs(rng, "logreg", 20):
        assert res_lib.config_id(cfg) == _old_config_id(cfg), f"seed {SEED}"
    cfg = cj.ExperimentConfig(lr=-0.0, upload_bandwidth=1e300, data_dir="dir/é")  # -0.0, huge, non-ASCII
    assert res_lib.config_id(cfg) == _old_config_id(cfg)
    assert res_lib.config_id(cfg.replace(lr=0.0)) != res_lib.config_id(cfg)
    assert cfg == cfg.replace(seed=cfg.seed) and "_config_id" not in cfg.to_dict()  # not a field


def test_hparams_columns_equal_stacked_hparams():
    """HParams stacked column-wise for a batch equal each configuration's HParams in its
    group (`hparams_in_group`) stacked, with the batch-uniform fields as one scalar."""
    rng = np.random.default_rng(SEED)
    base = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=32, num_features=6, steps=4)
    grid = cj.Grid(
        base=base,
        axes={"preset": ["coco-ef", "gc", "gc-unbiased"], "compress_ratio": [0.2, 0.5]},
        zip_axes={
            "lr": list(rng.uniform(0.01, 0.5, 3).round(4)),
            "seed": list(rng.integers(0, 1000, 3)),
            "wait_for": [None, None, None],
        },
    )
    plan = plan_lib.plan_sweep(grid)
    (group,) = plan.groups
    uniform = set(group.static.uniform_hparams())
    for batch in plan.batches:
        cols = hparams_columns(group, batch.entries, batch.size)
        cfgs = [e.cfg for e in batch.entries]
        cfgs += [cfgs[-1]] * (batch.size - len(cfgs))
        ref = [config_lib.hparams_in_group(group.static, c) for c in cfgs]
        for name in config_lib.HPARAM_NAMES:
            want = np.stack([np.asarray(getattr(h, name)) for h in ref])
            got = np.asarray(getattr(cols, name))
            if name in uniform:
                assert got.shape == want.shape[1:] and (want == got).all(), name
            else:
                np.testing.assert_array_equal(got, want, err_msg=name)
                assert got.dtype == want.dtype, name


def test_planning_work_is_per_static_part_not_per_configuration(monkeypatch):
    """Planning N and 4N configurations of the same static parts prepares, traces and
    keys each static part once: the counted calls do not grow with N."""
    calls = {"prepare": 0, "signature": 0, "eval_shape": 0}
    real_prepare, real_signature = engine.prepare, plan_lib._signature
    import jax

    real_eval_shape = jax.eval_shape
    monkeypatch.setattr(
        engine,
        "prepare",
        lambda *a, **k: calls.__setitem__("prepare", calls["prepare"] + 1) or real_prepare(*a, **k),
    )
    monkeypatch.setattr(
        plan_lib,
        "_signature",
        lambda p: calls.__setitem__("signature", calls["signature"] + 1) or real_signature(p),
    )
    monkeypatch.setattr(
        jax,
        "eval_shape",
        lambda *a, **k: calls.__setitem__("eval_shape", calls["eval_shape"] + 1) or real_eval_shape(*a, **k),
    )
    base = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=32, num_features=6, steps=4)
    counts = []
    for n in (4, 8, 32):  # the first plan also fills the component caches
        for k in calls:
            calls[k] = 0
        grid = cj.Grid(base=base, axes={"preset": ["coco-ef", "gc"], "lr": list(np.linspace(0.01, 0.3, n))})
        plan = plan_lib.plan_sweep(grid)
        assert len(plan.entries) == 2 * n and len(plan.groups) == 1
        counts.append(dict(calls))
    assert counts[1] == counts[2], counts
    assert counts[1]["prepare"] == counts[1]["signature"] == 2


def test_estimates_are_measured_after_a_run_and_within_3x(tmp_path, monkeypatch):
    """Before a program ran here its estimate is a guess; after one run of it, the
    estimate of a second run of the same program is labelled measured and lies within
    3x of that second run's measured seconds."""
    monkeypatch.setenv("COCO_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(costs, "cache_dir", lambda: str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(costs, "_memory", [])
    sw.clear_programs()
    base = cj.ExperimentConfig(task="linreg", num_devices=8, num_samples=512, num_features=64, steps=60)
    grid = cj.Grid(base=base, axes={"lr": [0.01, 0.02, 0.03, 0.04], "seed": [0, 1, 2, 3]})
    plan = plan_lib.plan_sweep(grid)
    from coco_jax.program import plan_estimates

    before = plan_estimates(plan)
    assert not before[0]["measured"] and not before[0]["cached"]
    assert "a guess" in plan.describe(before)
    cj.sweep(grid, progress=False)  # first run: compiles and records
    est = plan_estimates(plan_lib.plan_sweep(grid))
    assert est[0]["measured"] and est[0]["cached"] and "measured here" in plan.describe(est)
    second = cj.sweep(grid, progress=False)
    ratio = est[0]["run_s"] / second.stats.run_s
    assert 1 / 3 <= ratio <= 3, (est[0]["run_s"], second.stats.run_s)


def test_a_long_sweep_says_so_before_it_starts(monkeypatch, capsys):
    monkeypatch.setattr(costs, "LONG_S", 0.0)
    grid = cj.Grid(
        base=cj.ExperimentConfig(num_devices=2, num_samples=16, num_features=3, steps=2),
        axes={"seed": [0, 1]},
    )
    df = cj.sweep(grid, progress=False)
    err = capsys.readouterr().err
    assert len(df) == 2 * 3
    lines = [line for line in err.splitlines() if "estimated at" in line]
    assert (
        len(lines) == 1
        and lines[0].startswith("coco-jax: this sweep is estimated at")
        and "starts now" in lines[0]
    )


@pytest.mark.parametrize("compressor", ["qsgd", "scaled_sign"])
def test_batch_size_budget_and_order_do_not_change_results(compressor):
    """Issue 19 item 9: batches of 10 or 20 configurations (memory budgets), one batch
    (the default budget) or the grid in another order give the same rows bit for bit
    for qsgd and scaled_sign with and without error feedback (chaotic methods that
    amplify any rounding difference): every configuration is computed by the group's
    program on its fixed width, whatever batch it is in."""
    base = cj.ExperimentConfig(
        task="linreg",
        num_devices=8,
        num_samples=4096,
        num_features=96,
        steps=12,
        eval_every=3,
        compressor=compressor,
    )
    axes = {"error_feedback": ["ef", "none"], "lr": list(np.geomspace(0.01, 1.0, 10)), "seed": [0, 1, 2, 3]}
    grid = cj.Grid(base=base, axes=axes)
    permuted = cj.Grid(base=base, axes=dict(reversed(list(axes.items()))))
    plan = plan_lib.plan_sweep(grid)
    (group,) = plan.groups
    width = group.width
    assert 1 < width <= 8, width  # several configurations per call, fewer than a budget's batch
    per, data_bytes = group.config_bytes, group.data_bytes
    tables = {
        "default": cj.sweep(grid, progress=False),
        "10": cj.sweep(grid, progress=False, memory_budget=data_bytes + 10 * per),
        "20": cj.sweep(grid, progress=False, memory_budget=data_bytes + 20 * per),
        "permuted": cj.sweep(permuted, progress=False),
    }
    sizes = {k: sorted({s for s, _ in t.stats.batches}) for k, t in tables.items()}
    assert len({tuple(v) for v in sizes.values()} | {tuple(sizes["default"])}) >= 3, sizes
    key = ["method", "config_id", "step"]
    ref = tables["default"].sort_values(key).reset_index(drop=True)
    for name, t in tables.items():
        t = t.sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(t, ref, check_exact=True, obj=name)
