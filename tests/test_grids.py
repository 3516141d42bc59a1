"""Grids at scale (issue 17 item 1, issue 19 items 4 and 9): the results table built
column-wise equals the per-configuration reference (`results.rows_of`), configuration
ids and HParams computed once and column-wise equal their references, a grid's
configurations, ids, static keys and errors equal those of each configuration built on
its own, the grid hash equals its JSON reference, planning does a
constant amount of work per static part (counted calls, never seconds), estimates
become measured once a program ran, and a configuration's rows do not depend on its
batch, the memory budget or the grid's order.

Sizes are small (linreg, M <= 8): the file runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import warnings

import numpy as np
import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import config as config_lib
from coco_jax import costs, engine
from coco_jax import plan as plan_lib
from coco_jax import results as res_lib
from coco_jax.fileio import jsonable
from coco_jax.presets import preset_fields
from coco_jax.program import hparams_columns

sw = importlib.import_module("coco_jax.sweep")
SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure


def _old_config_id(cfg) -> str:
    """The reference: config_id as it was computed per configuration before issue 17."""
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


def _grid_by_hand(base, axes: dict, blocks: list, exclude) -> tuple[list, list, int]:
    """The reference of a product grid: every point's ExperimentConfig built (so
    validated) on its own in grid order, duplicates dropped, each with its static part
    (its preset and its static fields' values with their types), and the number of
    duplicates. A bad point raises ConfigError "grid point {point}: {error}"."""
    label0 = base if isinstance(base, str) else None
    base_fields = cj.preset(base).to_dict() if isinstance(base, str) else base.to_dict()
    factors = [[{k: v} for v in vals] for k, vals in axes.items()]
    factors += [[dict(zip(b, vals)) for vals in zip(*b.values())] for b in blocks]
    configs, parts, seen, duplicates = [], [], set(), 0
    for combo in itertools.product(*factors):
        point = {k: v for part in combo for k, v in part.items()}
        fields = {**base_fields, **(preset_fields(point["preset"]) if "preset" in point else {})}
        fields.update({k: v for k, v in point.items() if k != "preset"})
        label = point.get("preset", label0) or "custom"
        if exclude({**fields, "preset": label}):
            continue
        try:
            cfg = cj.ExperimentConfig(**fields)
        except cj.ConfigError as err:
            raise cj.ConfigError(f"grid point {point}: {err}") from None
        if (label, _old_config_id(cfg)) in seen:
            duplicates += 1
            continue
        seen.add((label, _old_config_id(cfg)))
        configs.append((label, cfg))
        static = tuple((k, type(v), v) for k, v in point.items() if k in config_lib.STATIC_FIELDS)
        parts.append((point.get("preset"), static))
    return configs, parts, duplicates


def _random_grid_spec(rng) -> dict:
    """A random product grid: presets, a static axis, dynamic axes (a repeated value and
    int/float twins sometimes), a dynamic zip block and a zip block of a static and a
    dynamic field, in a random order, and a random exclusion (patterns or a callable)."""
    floats = lambda lo, hi, n: [float(x) for x in rng.uniform(lo, hi, n).round(3)]
    presets = ["coco-ef", "gc", "gc-compressed", "ef-uncoded", "gd", "coco-ef21"]
    lrs = floats(0.01, 0.9, int(rng.integers(1, 5)))
    if rng.random() < 0.5:
        lrs += [lrs[0]] if rng.random() < 0.5 else [1, 1.0]  # a duplicate, or equal values of two types
    axes = {
        "preset": [str(p) for p in rng.choice(presets, size=int(rng.integers(1, 4)), replace=False)],
        "lr": lrs,
        "num_devices": [int(m) for m in rng.choice([4, 6, 8], size=int(rng.integers(1, 3)), replace=False)],
        "momentum": floats(0.0, 0.95, int(rng.integers(1, 4))),
    }
    order = list(axes)
    rng.shuffle(order)
    axes = {k: axes[k] for k in order[: int(rng.integers(2, 5))]}
    n, m = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    blocks = [
        {"straggler_prob": floats(0.0, 0.6, n), "latency_shift": floats(0.0, 2.0, n)},
        {
            "data_seed": [int(x) for x in rng.integers(0, 3, m)],
            "seed": [int(x) for x in rng.integers(0, 99, m)],
        },
    ]
    blocks = [blocks[i] for i in rng.permutation(2)[: int(rng.integers(0, 3))]]
    lr = float(rng.choice(lrs)) if "lr" in axes else 0.1
    if rng.random() < 0.5:
        patterns = [{"lr": lr, "preset": "gc"}, {"num_devices": 6}]
        exclude = patterns
        by_hand = lambda view: any(all(view.get(k) == v for k, v in p.items()) for p in patterns)
    else:
        exclude = by_hand = lambda view: view["lr"] == lr and view["num_devices"] == 8
    base = "coco-ef" if rng.random() < 0.3 else cj.ExperimentConfig(num_devices=8, num_features=5, steps=3)
    return {"base": base, "axes": axes, "blocks": blocks, "exclude": exclude, "by_hand": by_hand}


def _build(spec: dict, grid: bool):
    if grid:
        return cj.Grid(base=spec["base"], axes=spec["axes"], zip_axes=spec["blocks"], exclude=spec["exclude"])
    return _grid_by_hand(spec["base"], spec["axes"], spec["blocks"], spec["by_hand"])


def test_grid_configs_ids_and_static_keys_equal_configurations_built_one_by_one():
    """Grids whose points are made without a check each (issue 19 item 4) give the
    configurations, order, ids, dropped duplicates and static keys of every
    configuration built on its own, on random grids with presets, zip blocks (one of a
    static and a dynamic field) and exclusions."""
    rng = np.random.default_rng(SEED)
    for trial in range(12):
        spec = _random_grid_spec(rng)
        what = f"seed {SEED} trial {trial}: {spec['axes']} {spec['blocks']}"
        want, parts, duplicates = _build(spec, grid=False)
        if not want:
            with pytest.raises(cj.ConfigError, match="every point was excluded"):
                _build(spec, grid=True)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grid = _build(spec, grid=True)
        got = grid.configs()
        assert [m for m, _ in got] == [m for m, _ in want], what
        assert [c for _, c in got] == [c for _, c in want], what
        ids = [res_lib.config_id(c) for _, c in got]  # the grid's ids, kept on its configurations
        assert ids == [_old_config_id(c) for _, c in want] == [_old_config_id(c) for _, c in got], what
        warned = [str(w.message) for w in caught if "duplicate" in str(w.message)]
        assert warned == ([f"grid: {duplicates} duplicate configuration(s) dropped"] if duplicates else []), (
            what
        )
        keys = grid.static_keys()
        assert len(keys) == len(parts), what
        assert len(set(zip(keys, parts))) == len(set(keys)) == len(set(parts)), what  # the same partition


def _outcome(spec: dict, grid: bool):
    """The configurations of a grid (or its reference), or the text of its ConfigError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropped duplicates: the other test checks the warning
            built = _build(spec, grid)
    except cj.ConfigError as err:
        return str(err)
    if not grid and not built[0]:
        return "the grid is empty (every point was excluded)"
    return built.configs() if grid else built[0]


def test_a_bad_value_raises_the_error_of_the_first_bad_point():
    """A bad value of a dynamic axis or zip block, or of a static axis, raises the
    ConfigError (text) of the first point, in grid order, whose configuration built on
    its own is refused (none where the bad points are excluded)."""
    rng = np.random.default_rng(SEED)
    for trial in range(12):
        spec = _random_grid_spec(rng)
        where = ["lr", "momentum", "num_devices", "zip"][trial % 4]
        if where == "zip":
            spec["blocks"] = [{"momentum": [0.5, 1.5], "straggler_count": [1, 2]}]
            spec["axes"].pop("momentum", None)
        else:
            bad = {"lr": -float(rng.uniform(0.1, 1)), "momentum": 1.0, "num_devices": 0}[where]
            values = list(spec["axes"].get(where, [0.1]))
            values.insert(int(rng.integers(0, len(values) + 1)), bad)
            spec["axes"][where] = values
        if trial < 4:  # nothing excluded: the grid must fail
            spec["exclude"] = spec["by_hand"] = lambda view: False
        what = f"seed {SEED} trial {trial}: {spec['axes']} {spec['blocks']}"
        want = _outcome(spec, grid=False)
        assert trial >= 4 or (isinstance(want, str) and want.startswith("grid point {")), what
        assert _outcome(spec, grid=True) == want, what
        if where == "lr":  # only excluded points are bad: a valid grid
            spec["exclude"] = spec["by_hand"] = lambda view: view["lr"] < 0
            want = _outcome(spec, grid=False)
            assert not isinstance(want, str) and _outcome(spec, grid=True) == want, what


def test_grid_hash_is_the_hash_of_the_sorted_keys():
    """`grid_hash` (no data) is the SHA-256 of the JSON of the sorted (method, id) pairs,
    also for methods and ids that need JSON escapes."""
    rng = np.random.default_rng(SEED)
    methods = ["custom", "coco-ef", 'quo"te', "dé", "gc"]
    for trial in range(4):
        n = int(rng.integers(0, 300))
        ids = ["".join(rng.choice(list("0123456789abcdef"), 16)) for _ in range(n)]
        if trial == 3 and n:
            ids[0] = 'a"\\é'
        entries = [plan_lib.Entry(i, str(rng.choice(methods)), None, ids[i]) for i in range(n)]
        entries += entries[: n // 10]  # repeated keys count
        text = json.dumps(sorted(list(e.key) for e in entries))
        want = hashlib.sha256(text.encode()).hexdigest()[:24]
        assert plan_lib.grid_hash(entries, None, None, None) == want, f"seed {SEED} trial {trial}"


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
