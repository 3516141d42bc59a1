"""Measure what merging choices into one program costs and saves (docs/performance.md,
"One program per shape"): configurations that differ only in choices run as ONE
compiled program instead of one program per choice value. A choice enters the program
either traced (a per-configuration index: under vmap every option runs for every
configuration and the chosen result is kept) or batch-uniform (one index per batch,
unbatched: `lax.switch` runs only the chosen option, and batches are formed per value).

    python scripts/traced_choices.py            # the paper's linreg shape (M = 100, d = 200)
    python scripts/traced_choices.py --quick    # M = 16, d = 100

Prints, per choice: compile seconds (cold, persistent cache off) and run seconds
(median of 3 after a warm-up) of the merged program with the choice batch-uniform,
the merged program with the choice traced, and one program per value.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ.setdefault("COCO_JAX_CACHE_DIR", "off")  # cold compiles

import jax
import numpy as np

import coco_jax as cj
from coco_jax import plan as plan_lib
from coco_jax import program
from coco_jax.step import components

REPS = 3


def _programs(grid: cj.Grid, traced: tuple[str, ...] = ()) -> tuple[float, float, int]:
    """(compile seconds, run seconds, programs) of a grid's groups; `traced`: merged kinds
    made per-configuration (batched) instead of batch-uniform."""
    plan = plan_lib.plan_sweep(grid)
    devices = tuple(jax.local_devices())
    compile_s = run_s = 0.0
    for gi, g in enumerate(plan.groups):
        if traced:
            static = dataclasses.replace(
                g.static, uniform=tuple(k for k in g.static.uniform if k not in traced)
            )
            prep = dataclasses.replace(g.prepared, static=static, comps=components(static))
            g = dataclasses.replace(g, static=static, prepared=prep)
        batches = [b.entries for b in plan.batches if b.group == gi]
        if traced:  # the traced kinds no longer split batches
            batches = [[e for b in batches for e in b]]
        template = program.hparams_columns(g, g.entries[:1], 1, unbatch=True)
        prog = program.compile_program(g.prepared.comps, g.prepared.data, template, g.width, devices)
        compile_s += prog.compile_s
        for entries in batches:
            program.run_batch(g, entries, prog)  # warm-up
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            for entries in batches:
                program.run_batch(g, entries, prog)
            times.append(time.perf_counter() - t0)
        run_s += float(np.median(times))
    return compile_s, run_s, len(plan.groups)


def _separate(base, axis: str, values: list, other: dict) -> tuple[float, float, int]:
    parts = [_programs(cj.Grid(base=base, axes={axis: [v], **other})) for v in values]
    return tuple(sum(p[i] for p in parts) for i in range(3))


def main() -> None:
    quick = "--quick" in sys.argv
    m, d = (16, 100) if quick else (100, 200)
    base = cj.ExperimentConfig(
        task="linreg", num_devices=m, num_features=d, num_samples=40 * m, noise=0.5, steps=100, eval_every=10
    )
    seeds = {"seed": [0, 1, 2, 3]}
    methods = ["coco-ef", "gc", "gc-unbiased", "onebit-gc", "coco-ef21"]
    cases = [
        ("variant (5 methods)", "preset", methods, ("variant", "decoder")),
        ("k (5 levels, top-k + EF)", "compress_ratio", [0.01, 0.02, 0.05, 0.1, 0.3], ()),
    ]
    print(f"M={m} d={d}, 100 steps, 4 seeds per value; seconds (compile cold, run median of {REPS})")
    print(f"{'choice':<26} {'how':<34} {'programs':>8} {'compile s':>10} {'run s':>8}")
    for label, axis, values, kinds in cases:
        grid = cj.Grid(base=base, axes={axis: values, **seeds})
        rows = [("one program, batch-uniform" if kinds else "one program, traced", _programs(grid))]
        if kinds:
            rows.append(("one program, traced (all run)", _programs(grid, traced=kinds)))
        rows.append(("one program per value", _separate(base, axis, values, seeds)))
        for how, (c, r, n) in rows:
            print(f"{label:<26} {how:<34} {n:>8} {c:>10.2f} {r:>8.3f}")


if __name__ == "__main__":
    main()
