"""Tests of the sweep engine (coco_jax/sweep.py) and result tables (coco_jax/results.py).

Sizes are tiny (linreg, M <= 4, d = 8, <= 8 steps) so the file runs in well under two
minutes on 2 CPU cores. Subprocesses run what needs a fresh JAX: several host devices
(XLA_FLAGS before import) and a sweep killed with SIGKILL mid-way.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import plan as plan_lib
from coco_jax import results as res_lib
from coco_jax import store
from coco_jax.bench import CompileCounter
from coco_jax.config import DYNAMIC_FIELDS, ConfigError
from coco_jax.engine import prepare

sw = importlib.import_module("coco_jax.sweep")  # `coco_jax.sweep` the attribute is the function
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import sweep_helper
from conftest import assert_same_history, assert_same_tables, assert_within, run_tolerances

HISTORY = ["step", "loss", "grad_norm_sq", "test_loss", "bits", "time", "delivered", "stragglers"]
HISTORY += ["grad_error_sq", "ef_error_norm", "contraction", "diverged"]


def _rows(df: pd.DataFrame, cfg) -> pd.DataFrame:
    return df[df.config_id == res_lib.config_id(cfg)].sort_values("step").reset_index(drop=True)


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame):
    """Tables equal row for row (per configuration and step), floats within the bound on
    two float32 executions of each configuration (`conftest.run_tolerances`)."""
    assert_same_tables(a, b)


def _assert_rows_equal_run(rows: pd.DataFrame, cfg, res) -> None:
    """A configuration's sweep rows equal `cj.run` of it alone: another float32 program
    of the same configuration (`conftest.run_tolerances`)."""
    tol = run_tolerances(cfg)
    assert_same_history({k: rows[k].to_numpy(np.float64) for k in res.history}, res.history, tol, str(cfg.lr))


@pytest.fixture
def fresh_programs():
    """Drop compiled sweep programs so compilation counts start from zero."""
    sw.clear_programs()
    yield


# ------------------------------------------------------------------ correctness


def test_mixed_grid_equals_run_one_compilation_per_group(tmp_path, fresh_programs):
    grid = sweep_helper.grid("mixed")  # 2 presets x 2 lr x 2 seeds x num_devices {4, 2}
    assert len(grid) == 16
    with CompileCounter() as cc:
        df = cj.sweep(grid, out=tmp_path / "out", progress=False)
    info = df.stats
    assert info.groups == 2  # one program per num_devices: coco-ef and gc share it
    assert info.compilations == 2  # one per group: its init and step programs
    assert cc.count == 2 * 2
    assert len(df) == 16 * 4  # steps 0, 2, 4, 6
    assert not df.duplicated(["method", "config_id", "step"]).any()
    for method, cfg in grid.configs():
        rows = _rows(df, cfg)
        assert set(rows.method) == {method}
        res = cj.run(cfg)
        _assert_rows_equal_run(rows, cfg, res)
        assert (
            rows.lr.iloc[0] == cfg.lr
            and rows.seed.iloc[0] == cfg.seed
            and rows.num_devices.iloc[0] == cfg.num_devices
        )


def test_chunking_and_tail_interval_equal_run(fresh_programs, small_base):
    # steps = 7 is not a multiple of eval_every = 2: the last interval is 1 step
    grid = cj.Grid(base=small_base(steps=7), axes={"lr": [0.05, 0.2], "seed": [0, 3]})
    tables = [cj.sweep(grid, progress=False, chunk_steps=c) for c in (None, 2, 3, 100)]
    assert [t.stats.compilations for t in tables] == [1, 0, 0, 0]  # the chunk length is an argument
    for t in tables[1:]:  # the same compiled step, any number of times per call: the same bits
        pd.testing.assert_frame_equal(tables[0], t)
    for _, cfg in grid.configs():
        rows = _rows(tables[0], cfg)
        res = cj.run(cfg)
        assert list(rows.step) == [0, 2, 4, 6, 7]
        assert_within(rows.loss.to_numpy(), res.history["loss"], run_tolerances(cfg)["loss"], "loss")
        np.testing.assert_array_equal(rows.bits.to_numpy(), res.history["bits"])


def test_permuted_grid_and_other_batching_give_same_rows(fresh_programs, small_base):
    a = cj.sweep(sweep_helper.grid("six"), progress=False)
    permuted = cj.Grid(base=small_base(), axes={"seed": [1, 0], "lr": [0.2, 0.05, 0.1]})
    one = sweep_helper.one_config_budget(permuted)  # 1-configuration batches
    b = cj.sweep(permuted, progress=False, memory_budget=one)
    assert b.stats.batches == [(1, 1)] * 6
    assert b.stats.compilations == 1  # batches of one size reuse one program
    assert list(a.config_id.unique()) != list(b.config_id.unique())  # really another order
    _assert_same_rows(a, b)


def test_memory_budget_batches_do_not_change_results(fresh_programs):
    grid = sweep_helper.grid("resume")  # 2 groups x 8
    whole = cj.sweep(grid, progress=False)
    assert sorted(whole.stats.batches) == [(8, 8), (8, 8)]
    prep = prepare(grid.configs()[0][1])
    per = plan_lib.estimate_config_bytes(prep)
    data_bytes = plan_lib._tree_nbytes(prep.data)
    budget = data_bytes + 3 * per  # three configurations per device
    split = cj.sweep(grid, progress=False, memory_budget=budget)
    assert sorted(split.stats.batches) == [(3, 2), (3, 2), (3, 3), (3, 3), (3, 3), (3, 3)]
    _assert_same_rows(whole, split)


def test_dataset_loaded_once_and_prepared_once_per_static_configuration(monkeypatch, small_base):
    from coco_jax import data as data_lib
    from coco_jax import engine

    loads, prepares = [], []
    real_load, real_prepare = data_lib.load_dataset, engine.prepare
    monkeypatch.setattr(data_lib, "load_dataset", lambda cfg: loads.append(cfg) or real_load(cfg))
    monkeypatch.setattr(
        engine, "prepare", lambda cfg, *a, **k: prepares.append(cfg) or real_prepare(cfg, *a, **k)
    )
    grid = cj.Grid(base=small_base(), axes={"lr": [0.01 * i for i in range(1, 9)], "seed": range(4)})
    plan = plan_lib.plan_sweep(grid)
    assert (len(loads), len(prepares), len(plan.groups), len(plan.entries)) == (1, 1, 1, 32)
    loads.clear(), prepares.clear()
    three = cj.Grid(base=small_base(), axes={"preset": ["coco-ef", "gc", "gc-compressed"], "seed": range(4)})
    plan = plan_lib.plan_sweep(three)
    # prepared once per static part (3); one program for the three methods
    assert (len(loads), len(prepares), len(plan.groups), plan.data_loads) == (1, 3, 1, 1)
    sigs = {id(e.sig): e.sig for e in plan.entries}
    assert len(sigs) == 3
    assert len({id(s.prep.data) for s in sigs.values()}) == 1  # shared arrays
    loads.clear()
    assert len(plan_lib.plan_sweep(cj.Grid(base=small_base(), axes={"data_seed": [0, 1]})).groups) == 2
    assert len(loads) == 2


def test_dynamic_fields_never_split_groups(fresh_programs, small_base):
    axes = {
        "lr": [0.05, 0.1],
        "straggler_prob": [0.1, 0.4],
        "seed": [0, 7],
        "momentum": [0.5, 0.9],
        "straggler_count": [1, 2],
        "diana_alpha": [0.3, 0.6],
    }
    grid = cj.Grid(base=small_base(steps=2, eval_every=1, optimizer="momentum"), axes=axes)
    assert len(plan_lib.plan_sweep(grid).groups) == 1
    df = cj.sweep(grid, progress=False)
    assert df.stats.compilations == 1 and df.config_id.nunique() == 64
    assert set(axes) < set(DYNAMIC_FIELDS)


def test_padding_on_four_devices_equals_one_device(tmp_path, subprocess_env):
    """6 configurations on 4 host devices: padded to 8, padding dropped, same rows."""
    one = cj.sweep(sweep_helper.grid("six"), progress=False)
    table = tmp_path / "four.parquet"
    proc = subprocess.run(
        [sys.executable, str(HERE / "sweep_helper.py"), "run", "--grid", "six", "--table", str(table)],
        env=subprocess_env(4),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # width 8 (the group's 6 configurations fit in 8) on each of 4 devices: one call of 32
    assert "local_devices=4" in proc.stdout and "batches=[(32, 6)]" in proc.stdout, proc.stdout
    assert one.stats.batches == [(8, 6)]
    four = pd.read_parquet(table)
    assert len(four) == len(one) == 6 * 4
    # each device computes 8 configurations with the same program as one device does:
    # the rows are equal bit for bit (not only to float rounding)
    pd.testing.assert_frame_equal(res_lib.normalise(one), res_lib.normalise(four), check_exact=True)


# ------------------------------------------------------------------ bad input


def _no_compile(fn, match):
    with CompileCounter() as cc, pytest.raises(ConfigError, match=match):
        fn()
    assert cc.count == 0


def test_bad_grids_fail_before_compiling(tmp_path, small_base):
    base = small_base()
    err = None
    try:
        cj.Grid(base=base, axes={"learning_rate": [0.1]})
    except ConfigError as e:
        err = str(e)
    assert err is not None and "learning_rate" in err and "straggler_prob" in err and "preset" in err
    _no_compile(lambda: cj.Grid(base=base, axes={"lr": []}), "empty")
    _no_compile(lambda: cj.Grid(base=base, axes={"lr": 0.1}), "list of values")
    _no_compile(lambda: cj.Grid(base=base, axes={"lr": ["fast"]}), "lr=")
    _no_compile(lambda: cj.Grid(base=base, axes={"num_devices": [4.5]}), "num_devices")
    _no_compile(lambda: cj.Grid(base=base, axes={"preset": ["nope"]}), "preset")
    _no_compile(
        lambda: cj.Grid(base=base, zip_axes={"preset": ["coco-ef", "gd"], "compressor": ["topk", "topk"]}),
        "conflicting",
    )
    _no_compile(
        lambda: cj.Grid(base=base, axes={"lr": [0.1]}, zip_axes={"lr": [0.2], "seed": [1]}), "conflicting"
    )
    _no_compile(lambda: cj.Grid(base=base, axes={"lr": [0.1, 0.2], "seed": [1]}, mode="zip"), "lengths")
    _no_compile(lambda: cj.Grid(base=base, axes={"lr": [0.1]}, exclude=[{"lr": 0.1}]), "empty")
    _no_compile(lambda: cj.Grid(base={"lrr": 0.1}), "lrr")
    # data-dependent: k > d is found when the data is prepared, still before compiling
    _no_compile(
        lambda: cj.sweep(cj.Grid(base=base, axes={"compress_k": [100]}), progress=False), "compress_k"
    )


def test_other_grid_in_out_dir_is_refused(tmp_path, fresh_programs, small_base):
    out = tmp_path / "out"
    cj.sweep(sweep_helper.grid("six"), out=out, progress=False)
    other = cj.Grid(base=small_base(), axes={"lr": [0.3]})
    _no_compile(lambda: cj.sweep(other, out=out, progress=False), "another grid.*overwrite")
    df = cj.sweep(other, out=out, progress=False, overwrite=True)
    assert len(df) == 4 and set(df.lr) == {0.3}
    assert len(cj.load_results(out)) == 4


def test_grid_modes_exclude_and_labels(small_base):
    base = small_base()
    g = cj.Grid(
        base=base,
        axes={"preset": ["coco-ef", "gc"], "lr": [0.1, 0.2]},
        zip_axes={"seed": [0, 1], "straggler_prob": [0.1, 0.3]},
        exclude=[{"preset": "gc", "lr": 0.2}],
    )
    pts = [(m, c.lr, c.seed, c.straggler_prob, c.compressor) for m, c in g.configs()]
    assert len(pts) == 6
    assert ("gc", 0.2, 0, 0.1, "identity") not in pts and ("gc", 0.1, 1, 0.3, "identity") in pts
    assert ("coco-ef", 0.2, 1, 0.3, "topk") in pts
    z = cj.Grid(
        base="gc", axes={"lr": [0.1, 0.2], "seed": [5, 6]}, mode="zip", exclude=lambda p: p["seed"] == 6
    )
    assert [(m, c.lr, c.seed, c.decoder) for m, c in z.configs()] == [("gc", 0.1, 5, "optimal")]
    assert cj.Grid(base=base, axes={"lr": [0.1]}).configs()[0][0] == "custom"
    t = cj.Grid(base=base, axes={"hidden_sizes": [[4], [8, 4]]})  # lists become tuples
    assert [c.hidden_sizes for _, c in t.configs()] == [(4,), (8, 4)]
    json.dumps(g.describe())


# ------------------------------------------------------------------ results


def test_load_results_round_trip_and_sidecar(tmp_path, fresh_programs, small_base):
    out = tmp_path / "out"
    grid = cj.Grid(base=small_base(), axes={"preset": ["coco-ef", "gc"], "seed": [0, 1]})
    df = cj.sweep(grid, out=out, progress=False)
    loaded = cj.load_results(out)
    pd.testing.assert_frame_equal(df, loaded)
    for field in ("task", "lr", "seed", "compressor", "hidden_sizes", "straggler_probs", "compress_k"):
        assert field in loaded.columns
    assert set(HISTORY) <= set(loaded.columns)
    assert {"method", "config_id", "bits_per_message", "diverged_step"} <= set(loaded.columns)
    assert json.loads(loaded.hidden_sizes.iloc[0]) == [32]
    np.testing.assert_array_equal(loaded.bits, loaded.delivered * loaded.bits_per_message)
    assert not (out / store.PARTS).exists()
    meta = res_lib.load_metadata(out)
    assert meta["status"] == "complete" and meta["num_configs"] == 4 and meta["num_rows"] == 16
    assert meta["compilations"] == 1 and meta["wall_time_s"] > 0  # coco-ef and gc share a program
    assert meta["grid"]["axes"] == {"preset": ["coco-ef", "gc"], "seed": [0, 1]}
    for pkg in ("jax", "jaxlib", "optax", "flax", "numpy"):
        assert meta["versions"][pkg]
    assert meta["devices"]["device_kind"] and meta["devices"]["local_device_count"] == 1
    assert "seed" in meta["seed_policy"] and "git" in meta
    # run again: nothing recomputed, same table
    again = cj.sweep(grid, out=out, progress=False)
    assert again.stats.computed_configs == 0 and again.stats.compilations == 0
    pd.testing.assert_frame_equal(df, again)
    with pytest.raises(ConfigError, match="no results.parquet"):
        cj.load_results(tmp_path)


def test_resume_after_sigkill(tmp_path, monkeypatch, subprocess_env):
    """Kill a sweep after its first batch file, resume, compare to an uninterrupted one."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "sweep_helper.py"),
            "run",
            "--grid",
            "resume",
            "--out",
            str(out),
            "--budget",
            "one",
            "--slow",
            "30",
        ],
        env=subprocess_env(1),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while not store.part_files(out):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no batch file appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = store.read_parts(out)
    n_done = done.config_id.nunique()
    assert 1 <= n_done < 16 and not (out / store.TABLE).exists()
    assert res_lib.load_metadata(out)["status"] == "running"

    ran = []
    real = sw.run_batch

    def counting(group, entries, *a, **k):
        ran.extend(e.key for e in entries)
        return real(group, entries, *a, **k)

    monkeypatch.setattr(sw, "run_batch", counting)
    resumed = cj.sweep(sweep_helper.grid("resume"), out=out, progress=False)
    finished = set(zip(done.method, done.config_id))
    assert len(ran) == 16 - n_done and not finished & set(ran)  # nothing finished recomputed
    monkeypatch.setattr(sw, "run_batch", real)
    clean = cj.sweep(sweep_helper.grid("resume"), out=tmp_path / "clean", progress=False)
    assert not resumed.duplicated(["method", "config_id", "step"]).any()
    _assert_same_rows(resumed, clean)
    assert list(resumed.config_id) == list(clean.config_id)  # same order too
    meta = res_lib.load_metadata(out)
    assert (
        meta["status"] == "complete" and len(meta["invocations"]) == 1 and meta["invocations"][0]["resumed"]
    )


def test_progress_bar_counts_configuration_steps(capsys, small_base):
    grid = cj.Grid(base=small_base(), axes={"seed": [0, 1, 2]})
    cj.sweep(grid, progress=True, chunk_steps=2)
    err = capsys.readouterr().err
    assert "cfg-step/s" in err and "100%" in err and "18.0/18.0" in err


# ------------------------------------------------------------------ CLI


def test_cli_dry_run_yaml_and_module(tmp_path, capsys, fresh_programs):
    from coco_jax.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "base: {task: linreg, num_devices: 4, num_samples: 64, num_test: 16, num_features: 8, steps: 4}\n"
        "axes: {preset: [coco-ef, gc], lr: [0.05, 0.1]}\n"
        "zip: {seed: [0, 1], data_seed: [0, 0]}\n"
        "exclude: [{preset: gc, lr: 0.1}]\n"
    )
    out = tmp_path / "res"
    with CompileCounter() as cc:
        assert main(["sweep", str(spec), "--dry-run", "--out", str(out), "--memory-budget", "2GB"]) == 0
    text = capsys.readouterr().out
    assert cc.count == 0 and not out.exists()
    assert "6 configurations in 1 static groups" in text  # coco-ef and gc: one program
    assert "compilations: 1" in text and "per config" in text and "1.9 GiB per device" in text
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert "6 configurations" in capsys.readouterr().out
    assert len(cj.load_results(out)) == 6 * 5

    module = tmp_path / "exp_tiny.py"
    module.write_text(
        "import coco_jax as cj\n"
        "def grid(quick: bool = False):\n"
        "    base = cj.ExperimentConfig(task='linreg', num_devices=2, num_samples=32, num_test=0,\n"
        "                               num_features=4, steps=2 if quick else 4)\n"
        "    return cj.Grid(base=base, axes={'seed': [0, 1]})\n"
    )
    monkey_cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["sweep", str(module), "--quick", "--no-progress"]) == 0
    finally:
        os.chdir(monkey_cwd)
    df = cj.load_results(tmp_path / "results" / "exp_tiny-quick")
    assert set(df.steps) == {2} and len(df) == 2 * 3
    parts = tmp_path / "exp_parts.py"
    parts.write_text(
        "import coco_jax as cj\n"
        "NAME = 'two'\n"
        "def grid(quick: bool = False):\n"
        "    base = cj.ExperimentConfig(task='linreg', num_devices=2, num_samples=32, num_test=0,\n"
        "                               num_features=4, steps=2)\n"
        "    return {'a': cj.Grid(base=base, axes={'seed': [0]}), 'b': cj.Grid(base=base, axes={'lr': [0.2]})}\n"
    )
    assert main(["sweep", str(parts), "--out", str(tmp_path / "two"), "--no-progress"]) == 0
    assert set(cj.load_results(tmp_path / "two" / "b").lr) == {0.2}
    assert len(cj.load_results(tmp_path / "two" / "a")) == 3
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"axes": {"lr": [0.1]}, "zipp": {}}))
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert "zipp" in capsys.readouterr().err


def test_parse_bytes():
    assert plan_lib.parse_bytes("2GB") == 2 * 10**9
    assert plan_lib.parse_bytes("512MiB") == 512 * 2**20
    assert plan_lib.parse_bytes(1000) == 1000 and plan_lib.parse_bytes("1.5k") == 1500
    for bad in ("lots", "-1", "0", "2XB", True):
        with pytest.raises(ConfigError):
            plan_lib.parse_bytes(bad)


# ------------------------------------------------------------------ traced choices


def test_cheap_choices_share_one_program_and_equal_run(fresh_programs):
    """Configurations differing only in code (deterministic), decoder (fixed/received)
    and straggler model (stateless) share one program; each row equals cj.run."""
    base = sweep_helper.small_base(task="logreg", partitioning="sorted", steps=6)
    grid = cj.Grid(
        base=base,
        axes={"preset": ["coco-ef", "ef-uncoded"], "seed": [0, 1]},
        zip_axes={"straggler": ["bernoulli", "fixed_count", "none"], "straggler_count": [1, 2, 1]},
    )
    plan = plan_lib.plan_sweep(grid)
    assert len(plan.groups) == 1 and len(plan.entries) == 12
    choices = dict(plan.groups[0].static.choices)
    assert choices["code"] == (("cyclic", 1), ("uncoded", 0))
    assert choices["decoder"] == ("fixed", "received")
    assert choices["straggler"] == (("bernoulli", False), ("fixed_count", False), ("none", False))
    assert plan.groups[0].static.uniform == ("variant", "horizon")  # fixed/received stay traced
    df = cj.sweep(grid, progress=False)
    assert df.stats.compilations == 1
    _assert_grid_equals_runs(df, grid)


def _covering(entries, fields):
    """The first configurations, in grid order, that together take every value of every
    one of `fields` (each adds a value not yet taken): a handful instead of the product."""
    taken, out = set(), []
    for method, cfg in entries:
        values = {(f, getattr(cfg, f)) for f in fields} | {("method", method)}
        if not values <= taken:
            taken |= values
            out.append((method, cfg))
    return out


def _assert_grid_equals_runs(df, grid, fields=None):
    """Every configuration's rows (with `fields`: a set covering every value of those
    fields and every method, `_covering`) equal a lone cj.run of it: another float32
    program of the same configuration (`conftest.run_tolerances`); exact integer columns."""
    entries = grid.configs() if fields is None else _covering(grid.configs(), fields)
    for method, cfg in entries:
        rows = _rows(df, cfg)
        res = cj.run(cfg)
        assert set(rows.method) == {method}
        assert int(rows.bits_per_message.iloc[0]) == res.bits_per_message
        _assert_rows_equal_run(rows, cfg, res)


def test_one_program_per_shape_equals_run(fresh_programs):
    """Compressors, feedback rules, k, decoders (the optimal one too, batch-uniform),
    stragglers (latency wait mode too) and horizons of one shape share one program;
    every row equals cj.run. Top-k with error feedback is checked on a smooth problem
    where no selection sits on a tie (reassociation cannot flip it)."""
    base = sweep_helper.small_base(num_features=12, num_samples=96, steps=5, eval_every=2)
    grid = cj.Grid(
        base=base,
        axes={"preset": ["coco-ef", "gc", "gc-unbiased", "coco-ef21"], "compress_ratio": [0.25, 0.5]},
        zip_axes=[
            {"steps": [5, 3], "eval_every": [2, 1]},
            {"straggler": ["bernoulli", "latency", "latency"], "wait_for": [None, None, 3]},
        ],
    )
    plan = plan_lib.plan_sweep(grid)
    assert len(plan.groups) == 1
    st = plan.groups[0].static
    choices = dict(st.choices)
    assert choices["k"] == (3, 6)  # traced: one program for both k
    assert {dict(fields)["compressor"] for fields, _ in choices["variant"]} == {
        "topk",
        "identity",
        "randk_unbiased",
    }
    assert set(choices["decoder"]) == {"fixed", "optimal"} and "decoder" in st.uniform
    assert set(choices["straggler"]) == {("bernoulli", False), ("latency", False), ("latency", True)}
    assert set(choices["horizon"]) == {(5, 2), (3, 1)}
    # batches never mix batch-uniform values
    for b in plan.batches:
        assert len({e.sig.uniform for e in b.entries}) == 1
    df = cj.sweep(grid, progress=False)
    assert df.stats.compilations == 1
    assert df.config_id.nunique() == len(grid.configs())  # every configuration ran in the one program
    # each preset, k, horizon and straggler option against cj.run (a lone run compiles its own
    # program: the whole product, 48 configurations, took 96 s of the suite's budget)
    _assert_grid_equals_runs(df, grid, fields=("compress_ratio", "steps", "straggler", "wait_for"))


def test_other_shapes_or_state_keep_their_program():
    """A random code, a stateful straggler model (markov), device momentum, another
    task or another dimension keep their own programs; cheap and batch-uniform choices
    do not split a group."""
    base = sweep_helper.small_base()
    cases = [
        ({"decoder": ["fixed", "optimal"]}, 1),
        ({"compressor": ["topk", "randk", "scaled_sign"]}, 1),
        ({"error_feedback": ["ef", "none", "ef21"]}, 1),
        ({"compress_ratio": [0.25, 0.5]}, 1),
        ({"steps": [4, 6], "eval_every": [1, 2]}, 1),
        ({"decoder": ["fixed", "received"], "straggler": ["bernoulli", "fixed_count"]}, 1),
        ({"allocation": ["cyclic", "bernoulli"], "decoder": ["optimal"]}, 2),
        ({"straggler": ["bernoulli", "markov"]}, 2),
        ({"device_momentum": [0.0, 0.5]}, 2),
        ({"task": ["linreg", "logreg"]}, 2),
        ({"num_features": [8, 9]}, 2),
    ]
    for axes, groups in cases:
        assert len(plan_lib.plan_sweep(cj.Grid(base=base, axes=axes)).groups) == groups, axes


def test_factory_reading_a_choice_field_pins_it():
    """A user code whose factory reads `qsgd_levels` (a compressor's field): configurations
    that differ in it keep separate programs, so the code always sees its own value."""
    from coco_jax import coding

    seen = []

    @cj.register_code("levels_cyclic")
    def levels_cyclic(num_devices: int, num_partitions: int, redundancy: int, qsgd_levels: int):
        seen.append(qsgd_levels)
        return np.asarray(coding.make_allocation("cyclic", num_devices, num_partitions, redundancy).matrix)

    base = sweep_helper.small_base(allocation="levels_cyclic", compressor="qsgd")
    plan = plan_lib.plan_sweep(
        cj.Grid(base=base, axes={"qsgd_levels": [2, 4], "compressor": ["qsgd", "topk"]})
    )
    assert len(plan.groups) == 2
    assert sorted(dict(g.static.fields)["qsgd_levels"] for g in plan.groups) == [2, 4]
    assert set(seen) == {2, 4}
