"""One number per configuration: within one experiment run, a configuration that
several parts share (same config_id, whatever the method label) is computed once and
its rows are copied into every part (coco_jax/experiment/run.py `sweep_parts`,
coco_jax/tuning.py `RowCache`, `sweep_reusing`)."""

from __future__ import annotations

import json
import types

import pandas as pd

import coco_jax as cj
from coco_jax import tuning
from coco_jax.experiment import sweep_parts
from coco_jax.results import config_id

_ID_COLUMNS = ("method", "part")


FIELDS = {"task": "linreg", "num_devices": 4, "num_samples": 64, "num_test": 16, "num_features": 8,
          "steps": 6, "eval_every": 2}  # fmt: skip


def _parts():
    """Part a: coco-ef at p = 0.1, 0.2; part b: the same method as a configuration
    (label "custom") at p = 0.2, 0.3: p = 0.2 is shared (2 seeds)."""
    a = cj.Grid(
        base={"preset": "coco-ef", **FIELDS}, axes={"straggler_prob": [0.1, 0.2]}, seeds=[0, 1], name="a"
    )
    b = cj.Grid(
        base=cj.preset("coco-ef", **FIELDS), axes={"straggler_prob": [0.2, 0.3]}, seeds=[0, 1], name="b"
    )
    return [("a", a), ("b", b)]


def _strip(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df.drop(columns=[c for c in _ID_COLUMNS if c in df])
        .sort_values(["config_id", "step"])
        .reset_index(drop=True)
    )


def test_shared_configurations_are_computed_once_with_identical_rows(tmp_path):
    exp = types.SimpleNamespace(name="shared")
    parts = _parts()
    shared = {config_id(c) for _, c in parts[0][1].configs()} & {
        config_id(c) for _, c in parts[1][1].configs()
    }
    assert len(shared) == 2  # p = 0.2, seeds 0 and 1
    df, info = sweep_parts(exp, False, tmp_path / "out", progress=False, grids=parts)
    assert info["a"]["computed"] == 4 and info["a"]["reused"] == 0
    assert info["b"]["computed"] == 2 and info["b"]["reused"] == 2  # the shared pair is not run again
    a, b = df[df.part == "a"], df[df.part == "b"]
    assert set(a.method) == {"coco-ef"} and set(b.method) == {"custom"}  # labels differ, computation is one
    pd.testing.assert_frame_equal(_strip(a[a.config_id.isin(shared)]), _strip(b[b.config_id.isin(shared)]))
    # on disk: each part's table is whole (plot and load_results read it as any sweep's)
    on_disk = cj.load_results(tmp_path / "out" / "b")
    assert set(on_disk.config_id) == set(b.config_id) and len(on_disk) == len(b)
    assert json.loads((tmp_path / "out" / "b" / "results.json").read_text())["status"] == "complete"
    # run again: everything is loaded, nothing computed or copied
    again, info2 = sweep_parts(exp, False, tmp_path / "out", progress=False, grids=parts)
    assert info2["a"]["computed"] == 0 and info2["b"]["computed"] == 0
    pd.testing.assert_frame_equal(_strip(again), _strip(df))
    # a separate sweep of part b alone computes the shared runs itself, in another batch:
    # equal up to float32 reassociation (a few ulps per step, amplified by top-k over
    # 6 steps): rtol 1e-5 ≈ 80 eps
    alone = cj.sweep(parts[1][1], progress=False)
    pd.testing.assert_frame_equal(
        _strip(alone[alone.config_id.isin(shared)]), _strip(b[b.config_id.isin(shared)]), rtol=1e-5
    )


def test_reuse_without_a_directory_and_inside_tuning(small_base):
    """`sweep_reusing(out=None)` orders copied and computed rows as the grid does; a
    tuned grid whose tuning runs a cache already holds computes only its reported runs."""
    base = small_base(steps=4)
    known = tuning.RowCache()
    first = cj.sweep(cj.Grid(base=base, axes={"lr": [0.05, 0.1]}, zip_axes={"seed": [7], "data_seed": [7]}),
                     progress=False)  # fmt: skip
    known.add(first)
    grid = cj.Grid(base=base, axes={"lr": [0.1, 0.2, 0.05]}, zip_axes={"seed": [7], "data_seed": [7]})
    df, copied = tuning.sweep_reusing(grid, known=known, progress=False)
    assert copied == 2 and df.stats.computed_configs == 1
    assert [round(v, 3) for v in df.drop_duplicates("config_id").lr] == [0.1, 0.2, 0.05]
    # copied rows are the first sweep's; computed in another batch they agree to float32
    # reassociation (rtol 1e-5 ≈ 80 eps over 4 steps)
    pd.testing.assert_frame_equal(_strip(df), _strip(cj.sweep(grid, progress=False)), rtol=1e-5)
    copied_rows = df[df.lr.isin([0.05, 0.1])]
    pd.testing.assert_frame_equal(_strip(copied_rows), _strip(first), check_exact=True)
    tuned = cj.Grid(base=base, seeds=[0], tune={"lr": [0.05, 0.1]}, tuning_seeds=[7])
    res = cj.tune(tuned, known=known, progress=False)
    assert res.reused == 2 and res.stage_stats["tuning"][0].computed_configs == 0
    assert res.stats.computed_configs == 1  # the reported run only
