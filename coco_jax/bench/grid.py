"""Sections 8 and 9: a large grid on the device, and the host's share of small ones.

8. grid: one group of thousands of configurations at the paper's linear-regression
   setting (M = 100 devices, d = 200, 40 rows per device; COCO-EF: cyclic s = 1,
   top-k 10% with error feedback, fixed decoder, Bernoulli stragglers; lr x p x seed
   axes), run by the sweep's own program (`program.run_batch`) at a few widths W:
   configuration-steps per second (run only, median of repetitions after a warm-up),
   against a cost model from XLA's cost analysis of the compiled step for W
   configurations (FLOPs and bytes accessed per configuration-step) and this machine's
   measured matmul rate and read bandwidth (section 5): the model's bound is
   max(FLOPs / rate, bytes / bandwidth) per configuration-step; measured / bound is the
   share of it the engine reaches. XLA's analysis counts a loop body once (the top-k
   bisection's 31 passes count as one), so the model is a lower bound on the work.
9. scale: the host's share of small configurations: a warm `cj.sweep` of 2,048 tiny
   configurations (M = 8, d = 10, 20 steps) in ms per configuration; a larger tiny grid
   planned, run and written to Parquet; `plan_sweep` plus the --dry-run estimates of an
   even larger grid, in seconds (a benchmark figure, not a test: the tests count calls).
"""

from __future__ import annotations

import gc
import tempfile

import jax
import numpy as np

from coco_jax import plan as plan_lib
from coco_jax import program
from coco_jax.bench.plan import Plan
from coco_jax.bench.util import median_spread, now
from coco_jax.config import ExperimentConfig
from coco_jax.grid import Grid
from coco_jax.step import components, iterate
from coco_jax.sweep import cached_program, clear_programs
from coco_jax.sweep import sweep as run_sweep

PAPER_LINREG = {
    "task": "linreg",
    "dataset": "synthetic",
    "num_devices": 100,
    "num_features": 200,
    "num_samples": 4000,
    "num_test": 1000,
    "noise": 0.5,
    "redundancy": 1,
    "allocation": "cyclic",
    "compressor": "topk",
    "compress_ratio": 0.1,
    "error_feedback": "ef",
    "decoder": "fixed",
    "straggler": "bernoulli",
}


def grid_of(configs: int, steps: int, **overrides) -> Grid:
    """`configs` configurations of the paper's linreg setting (rounded up to a cube of
    lr x p x seed axes)."""
    base = ExperimentConfig(**{**PAPER_LINREG, "steps": steps, "eval_every": steps, **overrides})
    return _lr_p_seed_grid(base, configs, int(np.ceil(configs ** (1 / 3))), (0.005, 0.1), 0.5)


def _lr_p_seed_grid(base: ExperimentConfig, configs: int, side: int, lrs: tuple, p_max: float) -> Grid:
    """At least `configs` configurations of `base`: `side` log-spaced lr in `lrs` x `side`
    straggling probabilities in [0, p_max] x as many seeds as it takes."""
    return Grid(
        base=base,
        axes={
            "lr": list(np.round(np.geomspace(*lrs, side), 6)),
            "straggler_prob": list(np.round(np.linspace(0.0, p_max, side), 4)),
            "seed": list(range(int(np.ceil(configs / side**2)))),
        },
    )


def step_cost(group, width: int) -> dict:
    """XLA's cost analysis of one step (`step.iterate`) compiled for `width`
    configurations (vmapped), per configuration."""
    comps = components(group.static)
    data = group.prepared.data
    entries = group.entries[:1] * width
    hp = program.hparams_columns(group, entries, width)
    carry = jax.eval_shape(
        jax.vmap(
            lambda h: program.init_run(comps, h, data), in_axes=(program.hp_layout(group.static, 0, None),)
        ),
        hp,
    )

    def one(c, h):
        state, _ = iterate(comps, c, np.int32(1), h, data)
        return state

    fn = jax.jit(jax.vmap(one, in_axes=(0, program.hp_layout(group.static, 0, None))))
    compiled = fn.lower(carry, hp).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    flops = float(analysis.get("flops", 0.0))
    nbytes = float(analysis.get("bytes accessed", 0.0))
    return {"width": width, "flops": flops / width, "bytes": nbytes / width}


def bench_grid(plan: Plan, machine: dict, log) -> dict:
    """Section 8 (see the module docstring)."""
    grid = grid_of(plan.grid_configs, plan.grid_steps)
    rows = []
    rate = machine.get("matmul_flops_per_s")
    bandwidth = machine.get("read_bytes_per_s")
    for width in plan.grid_widths:
        log(f"  grid of {len(grid)} at width {width} ...")
        clear_programs()
        p = plan_lib.plan_sweep(grid, width=width)
        (group,) = p.groups
        t0 = now()
        prog, _ = cached_program(group, tuple(jax.local_devices()))
        compile_s = now() - t0
        entries = group.entries
        program.run_batch(group, entries[: prog.call_size], prog)  # warm-up (and steps per call)
        times = []
        for _ in range(plan.grid_reps):
            t0 = now()
            program.run_batch(group, entries, prog)
            times.append(now() - t0)
        cost = step_cost(group, width)
        config_steps = len(entries) * plan.grid_steps
        per = float(np.median(times)) / config_steps
        bound = None
        if rate and bandwidth:
            bound = max(cost["flops"] / rate, cost["bytes"] / bandwidth)
        rows.append(
            {
                "width": width,
                "configs": len(entries),
                "steps": plan.grid_steps,
                "compile_s": compile_s,
                "run_s": median_spread(times),
                "config_steps_per_s": 1.0 / per,
                "model": cost,
                "model_bound_s_per_config_step": bound,
                "of_bound": (bound / per) if bound else None,
            }
        )
        gc.collect()
    default = plan_lib.config_width(p.groups[0].prepared, p.groups[0].config_bytes)
    return {
        "setting": "paper linreg: M=100, d=200, 40 rows per device, coco-ef (cyclic s=1, top-k 10% + EF, "
        "fixed decoder, Bernoulli stragglers); lr x p x seed",
        "default_width": default,
        "matmul_flops_per_s": rate,
        "read_bytes_per_s": bandwidth,
        "rows": rows,
        "h200": h200_prediction(rows),
    }


# Assumptions of the H200 prediction (no accelerator was lent to measure it).
H200_BANDWIDTH = 4.8e12  # HBM3e bytes/s
H200_FP32 = 67e12  # FP32 FLOP/s (non-tensor-core)
H200_WIDTH = 8192


def h200_prediction(rows: list[dict]) -> dict | None:
    """The cost model's bound on one H200 at width 8,192: bytes per configuration-step
    fitted as a + b / W over the measured widths (shared data read once per call, the
    rest per configuration), FLOPs per configuration-step as measured (independent of W)."""
    pts = [(r["width"], r["model"]["bytes"], r["model"]["flops"]) for r in rows]
    if len(pts) < 2:
        return None
    w = np.asarray([p[0] for p in pts], np.float64)
    b = np.asarray([p[1] for p in pts], np.float64)
    (a, slope), *_ = np.linalg.lstsq(np.stack([np.ones_like(w), 1 / w], axis=1), b, rcond=None)
    nbytes = max(float(a), 0.0) + max(float(slope), 0.0) / H200_WIDTH
    flops = float(np.median([p[2] for p in pts]))
    bound = max(nbytes / H200_BANDWIDTH, flops / H200_FP32)
    return {
        "width": H200_WIDTH,
        "bytes_per_config_step": nbytes,
        "flops_per_config_step": flops,
        "bound_config_steps_per_s": 1.0 / bound,
        "assumptions": f"HBM {H200_BANDWIDTH / 1e12:.1f} TB/s, FP32 {H200_FP32 / 1e12:.0f} TFLOP/s, width "
        f"{H200_WIDTH}; bytes per configuration-step a + b/W fitted to the CPU program's cost analysis",
    }


# ------------------------------------------------------------------ section 9


def tiny_grid(configs: int, steps: int = 20) -> Grid:
    """`configs` tiny configurations (M = 8, d = 10): lr x p x seed."""
    base = ExperimentConfig(task="linreg", num_devices=8, num_features=10, steps=steps, eval_every=1)
    return _lr_p_seed_grid(base, configs, 16, (0.01, 0.2), 0.6)


def bench_scale(plan: Plan, log) -> dict:
    """Section 9 (see the module docstring)."""
    out: dict = {}
    grid = tiny_grid(plan.scale_warm)
    log(f"  warm sweep of {len(grid)} tiny configurations ...")
    run_sweep(grid, progress=False)  # compile
    times, stats = [], None
    for _ in range(max(3, plan.reps // 2)):
        t0 = now()
        df = run_sweep(grid, progress=False)
        times.append(now() - t0)
        stats = df.stats
    out["warm"] = {
        "configs": len(grid),
        "wall_s": median_spread(times),
        "ms_per_config": 1e3 * float(np.median(times)) / len(grid),
        "run_s": stats.run_s,
    }
    log(f"  {plan.scale_written:,} tiny configurations planned, run and written ...")
    t0 = now()
    big = tiny_grid(plan.scale_written)
    grid_s = now() - t0
    with tempfile.TemporaryDirectory(prefix="coco-jax-bench-") as tmp:
        t1 = now()
        df = run_sweep(big, out=f"{tmp}/out", progress=False)
        wall = now() - t1
    out["written"] = {
        "configs": len(big),
        "rows": len(df),
        "grid_s": grid_s,
        "sweep_wall_s": wall,
        "total_s": grid_s + wall,
        "compile_s": df.stats.compile_s,
        "run_s": df.stats.run_s,
        "host_s": grid_s + wall - df.stats.run_s,
    }
    del df, big
    gc.collect()
    log(f"  dry run of {plan.scale_dry:,} tiny configurations ...")
    t0 = now()
    huge = tiny_grid(plan.scale_dry)
    grid_s = now() - t0
    t1 = now()
    p = plan_lib.plan_sweep(huge)
    text = p.describe(program.plan_estimates(p))
    plan_s = now() - t1
    out["dry_run"] = {
        "configs": len(huge),
        "grid_s": grid_s,
        "plan_s": plan_s,
        "total_s": grid_s + plan_s,
        "us_per_config": 1e6 * (grid_s + plan_s) / len(huge),
        "lines": text.count("\n") + 1,
    }
    return out
