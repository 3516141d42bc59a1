"""A compiled program's identity: the data is an input of the program, so configurations
that differ only in fields that change the data's values (`config.DATA_VALUE_FIELDS`:
data_seed, partitioning, ...) share one compiled program, with their own data, unless a
component factory asks for such a field by name. Two threads that need the same program
compile it once."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import engine
from coco_jax.compressors import topk
from coco_jax.config import DATA_VALUE_FIELDS

sw = importlib.import_module("coco_jax.sweep")

BASE = {
    "task": "softmax",
    "num_devices": 6,
    "num_features": 7,
    "num_samples": 96,
    "num_classes": 3,
    "steps": 12,
    "eval_every": 4,
    "compressor": "topk",
    "compress_ratio": 0.3,
}


@pytest.fixture(autouse=True)
def _fresh():
    sw.clear_programs()
    yield
    sw.clear_programs()


def _curves(df: pd.DataFrame) -> dict:
    cols = ["loss", "grad_norm_sq", "accuracy", "bits", "ef_error_norm"]
    keys = ["partitioning", "data_seed", "seed", "step"]
    return {tuple(r[k] for k in keys): tuple(r[c] for c in cols) for _, r in df.iterrows()}


def test_data_value_fields_share_one_program_with_their_own_data():
    """partitioning x data_seed: four groups (their data differ), one compilation; each
    configuration's rows equal its rows swept alone (it read its own data, not the first
    group's), and the data draws do give different curves."""
    base = cj.ExperimentConfig(**BASE)
    rng = np.random.default_rng()
    seeds = [int(s) for s in rng.choice(1000, size=2, replace=False)]
    grid = cj.Grid(base=base, axes={"partitioning": ["iid", "sorted"], "data_seed": seeds})
    together = cj.sweep(grid, progress=False)
    assert together.stats.groups == 4 and together.stats.compilations == 1
    got = _curves(together)
    for part in ("iid", "sorted"):
        for ds in seeds:
            sw.clear_programs()
            alone = cj.sweep(
                cj.Grid(base=base.replace(partitioning=part, data_seed=ds), axes={"seed": [0]}),
                progress=False,
            )
            want = _curves(alone)
            assert want and all(got[k] == v for k, v in want.items()), (part, ds)
    finals = {k[:2]: v for k, v in got.items() if k[3] == BASE["steps"]}
    assert len(set(finals.values())) == 4  # four data draws/splits, four different runs


def test_a_factory_that_asks_for_a_data_field_keeps_it_in_its_program(restored_registries):
    """A compressor whose factory takes `data_seed` gets it, so its programs differ by
    data_seed; the built-in components do not ask, so their program drops every
    data-value field, and reading one inside the program says why it is not there."""
    seen = []

    def seeded_topk(dim: int, k: int, data_seed: int):
        seen.append(data_seed)
        return topk(dim, k)

    with restored_registries():
        cj.register_compressor("seeded_topk", seeded_topk)
        base = cj.ExperimentConfig(**{**BASE, "compressor": "seeded_topk"})
        res = cj.sweep(cj.Grid(base=base, axes={"data_seed": [3, 4]}), progress=False)
        assert res.stats.compilations == 2 and {3, 4} <= set(seen)
        fields = dict(engine.program_fields(base))
        assert "data_seed" in fields and "partitioning" not in fields
    plain = dict(engine.program_fields(cj.ExperimentConfig(**BASE)))
    assert not set(DATA_VALUE_FIELDS) & set(plain)
    static = engine.prepare(cj.ExperimentConfig(**BASE)).static
    with pytest.raises(AttributeError, match="data_seed.*changes only the data's values"):
        _ = static.cfg.data_seed


def test_one_program_is_compiled_once_by_concurrent_threads():
    """The sweep compiles ahead in two threads: two groups of one program (two data
    draws) compile it once, and both get the same executable."""
    import concurrent.futures

    from coco_jax import plan as plan_lib
    from coco_jax.program import local_devices

    base = cj.ExperimentConfig(**BASE)
    plan = plan_lib.plan_sweep(cj.Grid(base=base, axes={"data_seed": [0, 1]}))
    assert len(plan.groups) == 2
    devices = local_devices()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda g: sw.cached_program(g, devices), plan.groups))
    assert sorted(fresh for _, fresh in results) == [False, True]
    assert results[0][0].chunk is results[1][0].chunk
