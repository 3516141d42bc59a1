"""Section 3: configuration-steps/s of one vmapped program against the same
configurations run one by one."""

from __future__ import annotations

import gc

import jax
import numpy as np

from coco_jax.bench.cases import engine_config, make_case_data
from coco_jax.bench.plan import REDUNDANCY, Plan
from coco_jax.bench.util import block_ready, median_spread, now, time_call
from coco_jax.cache import CompileCounter
from coco_jax.config import hparams_of
from coco_jax.engine import prepare
from coco_jax.engine import run as run_one
from coco_jax.step import compiled_run, make_run


def bench_sweep(plan: Plan, log) -> list[dict]:
    """Section 3 for every sweep case of `plan`."""
    return [bench_sweep_case(plan, case, log) for case in plan.sweep_cases]


def bench_sweep_case(plan: Plan, sweep_case: tuple[int, int, int, int], log) -> dict:
    """Configuration-steps/s: one vmapped program per grid vs `cj.run` one by one."""
    m, d, n_k, steps = sweep_case
    x, y = make_case_data("linreg", m, d, n_k)
    eval_every = max(1, steps // 10)
    rows = []
    for size in plan.sweep_sizes:
        log(f"  M={m} d={d}: sweep of {size} configurations ...")
        cfgs = [_sweep_config(m, steps, eval_every, i) for i in range(size)]
        rows.append(_sweep_size(plan, cfgs, (x, y)))
        gc.collect()
    return {
        "task": "linreg",
        "M": m,
        "d": d,
        "n_k": n_k,
        "steps": steps,
        "eval_every": eval_every,
        "varies": "lr, straggler_prob (bernoulli stragglers), seed",
        "sizes": rows,
    }


def _sweep_config(m: int, steps: int, eval_every: int, i: int):
    """Configuration i of a sweep grid (lr, straggler_prob and seed vary)."""
    return engine_config(
        "linreg",
        m,
        REDUNDANCY,
        steps,
        straggler="bernoulli",
        eval_every=eval_every,
        lr=0.05 * (1 + i % 4),
        straggler_prob=0.1 * (1 + i % 3),
        seed=i,
    )


def _sweep_size(plan: Plan, cfgs: list, data: tuple) -> dict:
    """One grid: compile its vmapped program, then time it against the same
    configurations run one by one."""
    prep = prepare(cfgs[0], data=data)
    if len(cfgs) > 1 and prepare(cfgs[1], data=data).static != prep.static:
        raise RuntimeError("the sweep's configurations must share one static group")
    hps = jax.device_put(jax.tree.map(lambda *a: np.stack(a), *[hparams_of(c) for c in cfgs]))
    run = make_run(prep.static)  # builds code and allocation (eager jax ops, not counted)
    with CompileCounter() as cc:
        t0 = now()
        vm = jax.jit(jax.vmap(run, in_axes=(0, None))).lower(hps, prep.data).compile()
        compile_s = now() - t0
        block_ready(vm(hps, prep.data))
    times, one_by_one = _time_sweep(plan, vm, (hps, prep.data), cfgs, data)
    config_steps = len(cfgs) * cfgs[0].steps
    vmapped = {
        "compile_s": compile_s,
        "compilations": cc.count,
        "run_s": median_spread(times),
        "config_steps_per_s": config_steps / float(np.median(times)),
    }
    return {
        "configs": len(cfgs),
        "vmapped": vmapped,
        "one_by_one": one_by_one,
        "speedup": vmapped["config_steps_per_s"] / one_by_one["config_steps_per_s"],
    }


def _time_sweep(plan: Plan, vm, vm_args: tuple, cfgs: list, data: tuple) -> tuple[list[float], dict]:
    """Repetitions alternate: the vmapped grid `vm(*vm_args)`, then the same grid one by
    one with `cj.run`, as a user would (compiled once, cached). Returns the vmapped
    times and the one-by-one figures."""
    compiled_run.cache_clear()
    with CompileCounter() as cc:
        t0 = now()
        run_one(cfgs[0], data=data)
        first_s = now() - t0
        times, obo_times = [], []
        for _ in range(plan.reps):
            times.append(time_call(vm, *vm_args))
            t0 = now()
            for c in cfgs:
                run_one(c, data=data)
            obo_times.append(now() - t0)
    per_run = float(np.median(obo_times)) / len(cfgs)
    return times, {
        "first_run_s": first_s,
        "compile_s": max(first_s - per_run, 0.0),
        "compilations": cc.count,
        "run_s": median_spread(obo_times),
        "config_steps_per_s": len(cfgs) * cfgs[0].steps / float(np.median(obo_times)),
    }
