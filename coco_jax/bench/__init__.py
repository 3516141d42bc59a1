"""`coco-jax bench`: the engine against the NumPy loops researchers write today, and
against the machine's own limits, measured in one run.

    coco-jax bench --quick --json bench.json     # about a minute on a 2-core CPU
    coco-jax bench                               # the full grid (~6 minutes there)

Sections (every figure also goes to the JSON file with the machine description):

1. Step throughput (steps/s, device-steps/s) of the jitted engine, the vectorised NumPy
   reference and the per-device NumPy loop (`coco_jax.reference`) for linreg and logreg,
   full batch, cyclic code s=2, top-k 1% with error feedback, the fixed decoder with
   p=0.2 and one fixed Bernoulli(0.2) straggler trace (straggler="trace"), so all three
   do the same arithmetic on the same arrays. Ratios are engine speed / NumPy speed.
2. Cost of redundancy: engine (and loop) step time for s = 0..5 relative to s = 0.
3. Sweep throughput: configuration-steps/s of one vmapped program over grids of 1, 16,
   64, 256 configurations against the same configurations run one by one with
   `cj.run`; the number of compilations of each. Two grids: a medium one (M=16,
   d=1,000) and ExperimentConfig's default size (M=8, d=32).
4. Compile time, reported beside every run time (never inside it), and its own section:
   the seconds to lower and compile one single run and one sweep group (init + chunk
   programs), cold and read back from the persistent cache, in a subprocess with a
   fresh cache directory (`compile_time`).
5. Roofline: the engine's model FLOP/s against a large float32 jnp matmul, and the
   bytes of X it reads once per step against jax-measured read and copy bandwidth
   (calibrated at the start and at the end of the run; the better figure counts).
6. Peak memory of the largest case.

Timing method. Engine: two programs of the same case with N0 and N steps
(eval_every = steps, so only the step-0 and final evaluations run), both compiled
before timing; repetitions alternate between them and the step time is
(median T(N) - median T(N0)) / (N - N0): evaluation, initialisation and dispatch cancel.
Spread: min and max over repetitions of the per-repetition difference. NumPy: one
warm-up step, then repetitions of a block of steps (>= ~50 ms each), median per step,
measured with the default BLAS thread count and with one thread; the faster counts
(a loaded shared machine can stall multi-threaded BLAS on small products). Within a
throughput case the engine's and NumPy's repetitions alternate, so a slow spell of a
shared machine hits both sides of a ratio; the redundancy levels alternate likewise.
NumPy runs in a subprocess so the BLAS environment can be set for it alone: by default the
variables OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed there so OpenBLAS uses the
kernel it detects for this CPU (the JSON records which, via threadpoolctl);
`--numpy-env inherit` keeps them. `block_until_ready` precedes every clock read.

Modules: `plan` (sizes, setting), `cases` (data, code, decoder, configuration: the same
on both sides), `engine_side` and `numpy_side` (the two sides of a throughput case),
`throughput`, `sweeps`, `compile_time`, `roofline`, `targets` (the sections), `suite`
(`run_suite`), `report` (one formatter per section), `command` (`coco-jax bench`).
`python -m coco_jax.bench --numpy-worker` is the NumPy subprocess, `--compile-worker`
the compile-time one.
"""

from __future__ import annotations

from coco_jax.bench.cases import (
    code_matrix,
    compress_k,
    decode_weights,
    engine_config,
    make_case_data,
    make_trace,
    model_flops,
    rows_per_partition,
)
from coco_jax.bench.command import cli_bench, plan_from_args
from coco_jax.bench.machine import blas_info, machine_info
from coco_jax.bench.plan import MAX_X_BYTES, PLANS, ROWS, SCHEMA, Plan, make_plan
from coco_jax.bench.report import format_report
from coco_jax.bench.suite import run_suite
from coco_jax.bench.targets import TARGETS, evaluate_targets
from coco_jax.cache import CompileCounter

__all__ = [
    "MAX_X_BYTES",
    "PLANS",
    "ROWS",
    "SCHEMA",
    "TARGETS",
    "CompileCounter",
    "Plan",
    "blas_info",
    "cli_bench",
    "code_matrix",
    "compress_k",
    "decode_weights",
    "engine_config",
    "evaluate_targets",
    "format_report",
    "machine_info",
    "make_case_data",
    "make_plan",
    "make_trace",
    "model_flops",
    "plan_from_args",
    "rows_per_partition",
    "run_suite",
]
