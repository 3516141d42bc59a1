"""The engine's side of a throughput case: compiled short and long programs per
redundancy, timed in repetitions the caller interleaves with NumPy's."""

from __future__ import annotations

import dataclasses
import gc
import resource
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.bench.cases import engine_config, make_case_data, make_trace
from coco_jax.bench.plan import Plan
from coco_jax.bench.util import block_ready, now, time_call
from coco_jax.config import hparams_of, static_fields
from coco_jax.engine import component_serials, prepare
from coco_jax.step import make_run


def _compile(static, hp, data):
    """(compiled run, compile seconds: trace + lower + XLA compile)."""
    t0 = now()
    compiled = jax.jit(make_run(static)).lower(hp, data).compile()
    return compiled, now() - t0


def _memory_analysis(compiled) -> dict | None:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if ma is None:
        return None
    keys = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {k: int(getattr(ma, k)) for k in keys if hasattr(ma, k)}


class EngineCase:
    """The engine's programs for one data case and several redundancies s (the data,
    hence the device arrays, do not depend on s): for each s a short (N0 steps) and a
    long (N steps) program, compiled before any timing."""

    N0 = 2

    def __init__(self, task: str, m: int, d: int, n_k: int, s_values: Sequence[int], plan: Plan):
        self.task, self.m, self.d, self.n_k, self.plan = task, m, d, n_k, plan
        n0 = self.N0
        x, y = make_case_data(task, m, d, n_k)
        y_engine = y if task == "linreg" else y.astype(np.int32)
        cfg0 = engine_config(task, m, s_values[0], n0)
        prep = prepare(cfg0, data=(x, y_engine), straggler_trace=make_trace(n0, m))
        del x, y, y_engine
        self.data0 = prep.data
        self.hp = jax.device_put(hparams_of(cfg0))
        self.x_bytes = int(prep.data.xp.size * prep.data.xp.dtype.itemsize)
        self.programs = {}
        for s in s_values:
            cfg_s = engine_config(task, m, s, n0)  # same shapes as cfg0: only the code differs
            static0 = dataclasses.replace(
                prep.static, fields=static_fields(cfg_s), components=component_serials(cfg_s)
            )
            run0, compile0 = _compile(static0, self.hp, self.data0)
            block_ready(run0(self.hp, self.data0))
            t_first = min(time_call(run0, self.hp, self.data0) for _ in range(2))
            est = max(t_first / n0, 1e-7)  # an over-estimate: includes init and two evaluations
            n = n0 + int(np.clip(round(plan.engine_target_s / est), 8, plan.engine_max_steps))
            static_n = dataclasses.replace(
                static0, fields=static_fields(cfg_s.replace(steps=n, eval_every=n))
            )
            data_n = self.data0._replace(trace=jnp.asarray(make_trace(n, m)))
            run_n, compile_n = _compile(static_n, self.hp, data_n)
            block_ready(run_n(self.hp, data_n))
            self.programs[s] = {
                "run0": run0,
                "run_n": run_n,
                "data_n": data_n,
                "n": n,
                "compile0": compile0,
                "compile_n": compile_n,
                "t_short": [],
                "t_long": [],
            }

    def time_round(self, s: int) -> None:
        """One repetition: the short then the long program of redundancy s."""
        p = self.programs[s]
        p["t_short"].append(time_call(p["run0"], self.hp, self.data0))
        p["t_long"].append(time_call(p["run_n"], self.hp, p["data_n"]))

    def result(self, s: int, memory: bool = False) -> dict:
        p = self.programs[s]
        n0, n = self.N0, p["n"]
        per_rep = [(b - a) / (n - n0) for a, b in zip(p["t_short"], p["t_long"])]
        step = (float(np.median(p["t_long"])) - float(np.median(p["t_short"]))) / (n - n0)
        out = {}
        if step <= 0:  # timing noise larger than the work: fall back to an upper bound
            step = float(np.median(p["t_long"])) / n
            out["note"] = "noise: step time taken as T(N)/N (an upper bound)"
        out.update(
            step_s=step,
            step_s_min=float(min(per_rep)),
            step_s_max=float(max(per_rep)),
            steps_per_s=1.0 / step,
            device_steps_per_s=self.m / step,
            compile_s=p["compile_n"],
            compile_s_short=p["compile0"],
            n_steps=[n0, n],
            run_s_long=float(np.median(p["t_long"])),
            reps=len(per_rep),
            x_bytes=self.x_bytes,
        )
        if memory:
            out["memory_analysis"] = _memory_analysis(p["run_n"])
            out["device_memory_stats"] = _device_memory_stats()
            out["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return out

    def close(self) -> None:
        self.programs.clear()
        self.data0 = None
        gc.collect()


def _device_memory_stats() -> dict | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    return {k: int(v) for k, v in stats.items() if k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}
