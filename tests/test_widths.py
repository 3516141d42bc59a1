"""The width of a sweep group (configurations per device and program call): from its
shapes and the platform (`plan.config_width`), narrowed to hold a small group's largest
set, and reusing a width already planned for the same program in this process when
padding to it costs less than a compile (`plan.group_width`): the stages of a tuned
grid share one program."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import costs
from coco_jax import plan as plan_lib

sw = importlib.import_module("coco_jax.sweep")

TINY = {"task": "linreg", "num_devices": 8, "num_features": 10, "num_samples": 80, "eval_every": 5}


def _grid(lrs, seeds, steps=20, **fields) -> cj.Grid:
    base = cj.ExperimentConfig(**{**TINY, "steps": steps, **fields})
    return cj.Grid(base=base, axes={"lr": [float(x) for x in lrs], "seed": list(seeds)})


@pytest.fixture(autouse=True)
def _fresh():
    sw.clear_programs()  # also forgets the planned widths
    yield
    sw.clear_programs()


def test_own_width_is_a_power_of_two_from_shapes_and_the_largest_set():
    rng = np.random.default_rng()
    n = int(rng.integers(3, 40))
    p = plan_lib.plan_sweep(_grid(np.geomspace(0.01, 0.2, n), [0]))
    g = p.groups[0]
    shape_only = plan_lib.config_width(g.prepared, g.config_bytes)
    assert shape_only == 512  # tiny: the CPU cap
    assert g.width == plan_lib.config_width(g.prepared, g.config_bytes, n) == 1 << (n - 1).bit_length()
    assert plan_lib.config_width(g.prepared, g.config_bytes, 10**6) == shape_only


def test_a_later_smaller_grid_reuses_the_planned_width_and_program():
    """A small grid after a large one of the same program runs at the large one's width
    (its own would be narrower): nothing compiles, and its rows equal the large grid's
    rows of the same configurations exactly (same program, same width)."""
    rng = np.random.default_rng()
    lrs = np.round(np.geomspace(0.01, 0.2, 12), 6)
    big = cj.sweep(_grid(lrs, range(3)), progress=False)
    pick = sorted(rng.choice(12, size=2, replace=False))
    small_grid = _grid(lrs[pick], [1])
    own = plan_lib.config_width(plan_lib.plan_sweep(small_grid).groups[0].prepared, 1, 2)
    planned = plan_lib.plan_sweep(small_grid).groups[0].width
    assert own == 2 and planned == 64  # 36 configurations: 64 wide; 2 alone: 2 wide
    small = cj.sweep(small_grid, progress=False)
    assert small.stats.compilations == 0 and big.stats.compilations == 1
    cols = ["config_id", "step", "loss", "grad_norm_sq"]
    got = small[cols].sort_values(["config_id", "step"]).reset_index(drop=True)
    want = big[big.config_id.isin(set(small.config_id))][cols]
    pd.testing.assert_frame_equal(got, want.sort_values(["config_id", "step"]).reset_index(drop=True))
    sw.clear_programs()
    assert plan_lib.plan_sweep(small_grid).groups[0].width == 2  # a fresh process: its own width


def test_a_planned_width_is_not_taken_when_padding_costs_more_than_a_compile():
    """The model's padding seconds against `costs.DEFAULT_COMPILE_S`: at many steps,
    padding one configuration to a wide call costs more than compiling a narrow one."""
    steps = 200_000  # planned only, never run
    big = plan_lib.plan_sweep(_grid(np.geomspace(0.01, 0.2, 40), [0], steps=steps))
    plan_lib.remember_widths(big)
    g = big.groups[0]
    one = plan_lib.plan_sweep(_grid([0.05], [0], steps=steps))
    flops = plan_lib.step_flops(g.prepared)
    padding = plan_lib._model_seconds([(1, steps)], 64, flops, "cpu") - plan_lib._model_seconds(
        [(1, steps)], 1, flops, "cpu"
    )
    assert g.width == 64 and padding > costs.DEFAULT_COMPILE_S and one.groups[0].width == 1
    few = plan_lib.plan_sweep(_grid([0.05], [0], steps=20))  # another program (steps): no planned width
    assert few.groups[0].width == 1


def test_a_finished_grid_read_back_plans_its_widths(tmp_path):
    """A rerun that finds a grid finished (a resumed experiment) remembers its widths, so
    what follows plans as in the first run."""
    lrs = np.round(np.geomspace(0.01, 0.2, 12), 6)
    cj.sweep(_grid(lrs, range(3)), out=tmp_path / "big", progress=False)
    sw.clear_programs()
    again = cj.sweep(_grid(lrs, range(3)), out=tmp_path / "big", progress=False)
    assert again.stats.resumed and again.stats.computed_configs == 0
    assert plan_lib.plan_sweep(_grid(lrs[:2], [1])).groups[0].width == 64


def test_an_explicit_width_overrides_the_planned_ones():
    plan_lib.remember_widths(plan_lib.plan_sweep(_grid(np.geomspace(0.01, 0.2, 40), [0])))
    p = plan_lib.plan_sweep(_grid([0.05, 0.1], [0]), width=8)
    assert p.groups[0].width == 8
