"""Measure what tracing a cheap choice costs and saves (docs/performance.md, "Traced
choices"): configurations that differ only in the code (cyclic s=1 / uncoded), the
decoder (fixed / received) and the straggler model (bernoulli / none) run as ONE
vmapped program instead of one per combination. Under vmap every option is evaluated
for every configuration, so the merged program runs somewhat longer per step; it
compiles once instead of several times.

    python scripts/traced_choices.py            # M = 16 (quick scale) and M = 100 (paper scale)

Prints, per scale: compile seconds (cold, persistent cache off) and run seconds
(median of 5 after a warm-up) of the merged program and of the separate programs.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("COCO_JAX_CACHE_DIR", "off")  # cold compiles

import jax
import numpy as np

import coco_jax as cj
from coco_jax import plan as plan_lib
from coco_jax import program
from coco_jax.config import hparams_in_group

PRESETS = ("coco-ef", "ef-uncoded")  # cyclic s=1 + fixed vs uncoded + received
REPS = 5


def measure(grid: cj.Grid) -> tuple[float, float, int]:
    """(compile seconds, run seconds, programs) of a grid's groups."""
    groups, _ = plan_lib.prepare_groups(plan_lib.entries_of(grid))
    compile_s = run_s = 0.0
    for g in groups:
        prep = g.prepared
        hp = hparams_in_group(g.static, g.entries[0].cfg)
        steps = prep.static.cfg.steps
        prog = program.compile_program(
            prep.comps, prep.data, hp, len(g.entries), tuple(jax.local_devices()), steps
        )
        compile_s += prog.compile_s
        program.run_batch(g, g.entries, prog)  # warm-up
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            program.run_batch(g, g.entries, prog)
            times.append(time.perf_counter() - t0)
        run_s += float(np.median(times))
    return compile_s, run_s, len(groups)


def main() -> None:
    print(
        f"{'M':>4} {'d':>5} {'programs':>10} {'compile s':>10} {'run s':>8}   (4 seeds x 2 presets x 2 straggler models)"
    )
    for m, d in ((16, 100), (100, 500)):
        base = cj.ExperimentConfig(
            task="logreg", num_devices=m, num_features=d, num_samples=40 * m, steps=200, eval_every=10
        )
        axes = {"seed": list(range(4)), "straggler": ["bernoulli", "none"]}
        merged = measure(cj.Grid(base=base, axes={"preset": list(PRESETS), **axes}))
        parts = [
            measure(cj.Grid(base=base, axes={"preset": [p], "seed": axes["seed"], "straggler": [s]}))
            for p in PRESETS
            for s in axes["straggler"]
        ]
        separate = tuple(sum(x[i] for x in parts) for i in range(3))
        for label, (c, r, n) in (("merged", merged), ("separate", separate)):
            print(f"{m:>4} {d:>5} {n:>4} {label:<8} {c:>7.2f} {r:>8.3f}")


if __name__ == "__main__":
    main()
