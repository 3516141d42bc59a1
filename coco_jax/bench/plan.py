"""Sizes of a benchmark run (`Plan`, `make_plan`) and the COCO-EF setting every case uses."""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEMA = "coco-jax-bench/1"


# The COCO-EF setting every throughput case uses.
STRAGGLER_PROB = 0.2
COMPRESS_RATIO = 0.01
REDUNDANCY = 2
LR = 0.1
DATA_SEED = 0
NUMPY_TRACE_STEPS = 64  # the NumPy references cycle over a trace of this many steps

# Sweep cases (M, d, rows per partition, steps): a medium linreg grid like
# the sweep benchmark's, and ExperimentConfig's default sizes (M=8, d=32, 1024 rows,
# 200 steps), where a single run is dominated by per-step overhead.
SWEEP_CASES = ((16, 1_000, 64, 100), (8, 32, 128, 200))

# Rows per partition: ROWS, halved while X (float32) would exceed MAX_X_BYTES.
ROWS = 32
MAX_X_BYTES = 512 * 2**20

# The sections of a run, all on by default (`--sections`).
SECTIONS = ("throughput", "redundancy", "sweep", "compile", "roofline", "grid", "scale")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    mode: str
    tasks: tuple[str, ...]
    devices: tuple[int, ...]
    dims: tuple[int, ...]
    rows: int
    max_x_bytes: int
    reps: int
    engine_target_s: float  # wall time of the long engine run (sets N)
    engine_max_steps: int
    numpy_min_rep_s: float  # minimum wall time of one NumPy repetition (sets the block)
    numpy_budget_s: float  # NumPy variants estimated to need longer are skipped
    redundancy_case: tuple[str, int, int]  # task, M, d
    redundancy_levels: tuple[int, ...]
    sweep_sizes: tuple[int, ...]
    sweep_cases: tuple[tuple[int, int, int, int], ...]  # (M, d, rows per partition, steps) each
    matmul_n: int
    bandwidth_bytes: int
    compile_case: tuple[str, int, int, int]  # task, M, d, steps of the compile-time section
    compile_batch: int  # configurations in its sweep group
    compile_reps: int  # repetitions of the cached compilation
    grid_configs: int  # section 8: configurations of the paper-linreg group
    grid_steps: int
    grid_widths: tuple[int, ...]  # configurations per device and call
    grid_reps: int
    scale_warm: int  # section 9: tiny configurations of the warm sweep
    scale_written: int  # ... planned, run and written to Parquet
    scale_dry: int  # ... planned with estimates (--dry-run)
    numpy_env: str = "clean"
    sections: tuple[str, ...] = SECTIONS


# The sizes of each mode (`make_plan`): tiny is the test suite's, quick about a minute
# on a 2-core CPU, full the whole grid.
PLANS: dict[str, dict[str, Any]] = {
    "tiny": {
        "devices": (4,),
        "dims": (64,),
        "rows": 8,
        "reps": 2,
        "engine_target_s": 0.01,
        "engine_max_steps": 50,
        "numpy_min_rep_s": 0.002,
        "numpy_budget_s": 5.0,
        "redundancy_case": ("linreg", 6, 64),
        "redundancy_levels": (0, 1, 2, 3),
        "sweep_sizes": (1, 4),
        "sweep_cases": ((4, 64, 8, 10),),
        "matmul_n": 256,
        "bandwidth_bytes": 8 * 2**20,
        "compile_case": ("linreg", 4, 64, 10),
        "compile_batch": 4,
        "compile_reps": 2,
        "grid_configs": 16,
        "grid_steps": 3,
        "grid_widths": (2, 4),
        "grid_reps": 1,
        "scale_warm": 256,
        "scale_written": 512,
        "scale_dry": 1024,
    },
    "quick": {
        "devices": (16, 64),
        "dims": (1_000, 10_000),
        "rows": ROWS,
        "reps": 5,
        "engine_target_s": 0.25,
        "engine_max_steps": 2000,
        "numpy_min_rep_s": 0.05,
        "numpy_budget_s": 20.0,
        "redundancy_case": ("linreg", 64, 10_000),
        "redundancy_levels": (0, 1, 2, 3, 4, 5),
        "sweep_sizes": (1, 16, 64),
        "sweep_cases": SWEEP_CASES,
        "matmul_n": 2048,
        "bandwidth_bytes": 256 * 2**20,
        "compile_case": ("linreg", 16, 1_000, 200),
        "compile_batch": 16,
        "compile_reps": 5,
        "grid_configs": 4096,
        "grid_steps": 20,
        "grid_widths": (4, 16, 64),
        "grid_reps": 3,
        "scale_warm": 2048,
        "scale_written": 20_000,
        "scale_dry": 100_000,
    },
    "full": {
        "devices": (16, 64, 256),
        "dims": (1_000, 10_000, 100_000),
        "rows": ROWS,
        "reps": 7,
        "engine_target_s": 1.0,
        "engine_max_steps": 5000,
        "numpy_min_rep_s": 0.05,
        "numpy_budget_s": 60.0,
        "redundancy_case": ("linreg", 64, 10_000),
        "redundancy_levels": (0, 1, 2, 3, 4, 5),
        "sweep_sizes": (1, 16, 64, 256),
        "sweep_cases": SWEEP_CASES,
        "matmul_n": 4096,
        "bandwidth_bytes": 1024 * 2**20,
        "compile_case": ("linreg", 64, 10_000, 200),
        "compile_batch": 16,
        "compile_reps": 5,
        "grid_configs": 4096,
        "grid_steps": 100,
        "grid_widths": (1, 4, 16, 64, 256),
        "grid_reps": 3,
        "scale_warm": 2048,
        "scale_written": 100_000,
        "scale_dry": 1_000_000,
    },
}


def make_plan(mode: str = "quick", **overrides) -> Plan:
    """The sizes of `mode` (tiny | quick | full), with explicit overrides (None: the
    mode's value)."""
    if mode not in PLANS:
        raise ValueError(f"mode={mode!r} is invalid: must be tiny, quick or full")
    plan = Plan(mode=mode, tasks=("linreg", "logreg"), max_x_bytes=MAX_X_BYTES, **PLANS[mode])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(plan, **overrides)
