"""Run the sections of a plan (`run_suite`)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from coco_jax.bench.compile_time import bench_compile
from coco_jax.bench.grid import bench_grid, bench_scale
from coco_jax.bench.machine import machine_info
from coco_jax.bench.numpy_side import NumpyWorker
from coco_jax.bench.plan import COMPRESS_RATIO, LR, REDUNDANCY, SCHEMA, STRAGGLER_PROB, Plan
from coco_jax.bench.roofline import bench_roofline, combine_calibrations, memory_section, roofline_section
from coco_jax.bench.sweeps import bench_sweep
from coco_jax.bench.targets import evaluate_targets
from coco_jax.bench.throughput import bench_redundancy, bench_throughput
from coco_jax.bench.util import now


def suite_header(plan: Plan) -> dict:
    """The result's description of the run: schema, plan, setting and method."""
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "plan": dataclasses.asdict(plan),
        "setting": {
            "allocation": f"cyclic, s={REDUNDANCY} (redundancy section: s=0 uncoded, s>0 cyclic)",
            "compressor": f"topk, k = max(1, round({COMPRESS_RATIO} d)), error feedback 'ef'",
            "stragglers": f"fixed Bernoulli({STRAGGLER_PROB}) trace (straggler='trace')",
            "decoder": f"fixed: w = 1/(K (1-p) (s+1)), p={STRAGGLER_PROB}",
            "batch": "full batch, K = M partitions",
            "rows_per_partition": f"{plan.rows}, halved while X > {plan.max_x_bytes / 2**20:.0f} MiB",
            "data": "synthetic Gaussian rows scaled to norm ~1, float32",
            "lr": LR,
        },
        "method": {
            "engine": "step = (median T(N) - median T(N0)) / (N - N0), N0 = 2, eval_every = steps; "
            "compile time = trace + lower + XLA compile of the N-step program",
            "numpy": "median over repetitions of a block of steps after one warm-up step; best of the "
            "default BLAS threads and 1 thread; run in a subprocess",
            "ratios": "engine speed / NumPy speed (NumPy step time / engine step time), same run",
        },
    }


def run_suite(plan: Plan, log=print) -> dict:
    """Run the sections of `plan`; returns the JSON-ready result."""
    t_start = now()
    result: dict[str, Any] = suite_header(plan)
    log(f"coco-jax bench ({plan.mode}): machine ...")
    result["machine"] = machine_info()
    calibrations = []
    if "roofline" in plan.sections:
        log("[5] roofline calibration (1 of 2)")
        calibrations.append(bench_roofline(plan, log))
    if "throughput" in plan.sections or "redundancy" in plan.sections:
        _run_numpy_sections(plan, result, log)
    if "sweep" in plan.sections:
        log("[3] sweep throughput")
        result["sweep"] = bench_sweep(plan, log)
    if "compile" in plan.sections:
        log("[4] compile time (subprocess, fresh persistent cache)")
        result["compile"] = bench_compile(plan, log)
    if "grid" in plan.sections:
        if not calibrations:
            log("[5] roofline calibration (for the grid section's model)")
            calibrations.append(bench_roofline(plan, log))
        log("[8] a large grid on the device")
        result["grid"] = bench_grid(plan, combine_calibrations(calibrations), log)
    if "scale" in plan.sections:
        log("[9] the host's share of small configurations")
        result["scale"] = bench_scale(plan, log)
    if calibrations:
        log("[5] roofline calibration (2 of 2)")
        calibrations.append(bench_roofline(plan, log))
        result["machine"].update(combine_calibrations(calibrations))
    if "roofline" in plan.sections and "throughput" in plan.sections:
        result["roofline"] = roofline_section(result)
    if result.get("throughput"):
        result["memory"] = memory_section(result)
    result["targets"] = evaluate_targets(result)
    result["total_s"] = now() - t_start
    return result


def _run_numpy_sections(plan: Plan, result: dict, log) -> None:
    """Sections 1 and 2, which share the NumPy subprocess."""
    with NumpyWorker(plan) as worker:
        if "throughput" in plan.sections:
            log("[1] step throughput")
            result["throughput"] = bench_throughput(plan, worker, log)
        if "redundancy" in plan.sections:
            log("[2] cost of redundancy")
            result["redundancy"] = bench_redundancy(plan, worker, log)
        result["numpy_blas"] = worker.meta()
