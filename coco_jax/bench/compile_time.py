"""Section 4: the seconds to compile one single run and one sweep group, cold and from
the persistent compilation cache.

`bench_compile` runs `compile_worker_main` in a subprocess whose persistent cache
(`COCO_JAX_CACHE_DIR`, read when coco_jax is imported) is a fresh, empty temporary
directory, so "cold" is cold whatever the user's cache holds. There, after a trivial
warm-up program, each program is lowered (`jax.jit(f).lower(...)`) and compiled
(`.compile()`), the two timed separately: the single run is `step.make_run(static)`
of the benchmark's COCO-EF configuration, the sweep group `program.compile_program`'s
init and chunk programs for a batch of configurations of it. Cold is the first
compilation (one measurement: only the first is cold); cached repeats both after
`jax.clear_caches()`, so each program is traced and lowered again and its executable
read back from the persistent cache, as in a new process (median of `compile_reps`).
`CompileCounter` counts the programs obtained and those read back each time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from coco_jax.bench.cases import engine_config, make_case_data, make_trace, rows_per_partition
from coco_jax.bench.plan import REDUNDANCY, Plan
from coco_jax.bench.util import json_default, median_spread, now
from coco_jax.cache import CompileCounter, cache_dir
from coco_jax.config import hparams_of
from coco_jax.engine import prepare
from coco_jax.program import compile_program, local_devices, lower_program
from coco_jax.step import make_run

# Variables that would point the subprocess's JAX at another cache or turn it off.
_JAX_CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE_")
METHOD = (
    "subprocess with a fresh, empty persistent cache (COCO_JAX_CACHE_DIR); lower = trace + lower "
    "(jax.jit(f).lower), compile = .compile(); cold: the first compilation after a trivial warm-up "
    "program (one measurement); cached: jax.clear_caches(), then lower and compile again, the "
    "executable read back from the persistent cache (median of the repetitions)"
)


def bench_compile(plan: Plan, log) -> dict:
    """Section 4: run the compile measurements in a subprocess with a fresh cache."""
    task, m, d, steps = plan.compile_case
    spec = {
        "task": task,
        "M": m,
        "d": d,
        "n_k": rows_per_partition(m, d, plan.rows, plan.max_x_bytes),
        "steps": steps,
        "batch": plan.compile_batch,
        "reps": plan.compile_reps,
    }
    log(f"  {task} M={m} d={d}: single run and a sweep group of {spec['batch']}, fresh cache ...")
    with tempfile.TemporaryDirectory(prefix="coco-jax-bench-xla-") as cache:
        spec["cache_dir"] = cache
        t0 = now()
        proc = subprocess.run(
            [sys.executable, "-m", "coco_jax.bench", "--compile-worker"],
            input=json.dumps(spec),
            capture_output=True,
            check=False,
            text=True,
            env=fresh_cache_env(cache),
        )
        process_s = now() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"the compile benchmark subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(process_s=process_s, method=METHOD, cache="fresh temporary directory, removed afterwards")
    return {k: v for k, v in spec.items() if k != "cache_dir"} | out


def fresh_cache_env(cache: str) -> dict:
    """The subprocess's environment: its persistent cache is `cache` alone, and it does
    not reserve an accelerator's memory (this process may hold most of it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_JAX_CACHE_VARS)}
    env["COCO_JAX_CACHE_DIR"] = cache
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


# ------------------------------------------------------------ in the subprocess


def compile_worker_main() -> int:
    """`python -m coco_jax.bench --compile-worker`: the spec (JSON) on stdin, the
    measurements (one JSON line) on stdout."""
    spec = json.loads(sys.stdin.read())
    if cache_dir() != spec["cache_dir"] or _cache_files(spec["cache_dir"]):
        print(f"persistent cache {cache_dir()!r} is not the fresh {spec['cache_dir']!r}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(measure_compile(spec), default=json_default) + "\n")
    return 0


def _cache_files(path: str) -> int:
    """Entries of the persistent cache (not coco_jax's timings record)."""
    return sum(1 for name in os.listdir(path) if name != "timings.jsonl")


def measure_compile(spec: dict) -> dict:
    """Cold, then `spec["reps"]` cached compilations of the single run and the group."""
    prep = _prepare(spec)
    single, group = _Single(prep), _Group(prep, spec["batch"], spec["steps"])
    t0 = now()
    jax.block_until_ready(jax.jit(lambda v: v + 1)(np.float32(1)))  # backend and compiler start-up
    warmup_s = now() - t0
    files_before = _cache_files(spec["cache_dir"])
    cold = {"single": single.measure(), "group": group.measure()}
    files = _cache_files(spec["cache_dir"]) - files_before
    cached: dict[str, list] = {"single": [], "group": []}
    for _ in range(spec["reps"]):  # alternate, so a slow spell of a shared machine hits both
        for name, prog in (("single", single), ("group", group)):
            cached[name].append(prog.measure())
    out = {"warmup_s": warmup_s, "cache_files_written": files, "chunk_steps": group.chunk_steps}
    for name, prog in (("single", single), ("group", group)):
        lines = prog.lines()
        out[name] = {
            "label": prog.label,
            "hlo_lines": sum(lines.values()),
            "hlo_lines_by_program": lines,
            "cold": cold[name],
            "cached": _cached_summary(cached[name]),
        }
        out[name]["cold_over_cached"] = cold[name]["total_s"] / out[name]["cached"]["total_s"]
    return out


def _cached_summary(runs: list[dict]) -> dict:
    """Medians of the cached repetitions, their spread, and the programs over all."""
    keys = ("lower_s", "compile_s", "total_s")
    out = {k: float(np.median([r[k] for r in runs])) for k in keys}
    out["spread"] = {k: median_spread([r[k] for r in runs]) for k in keys}
    out["programs"] = {k: sum(r["programs"][k] for r in runs) for k in ("count", "loaded", "compiled")} | {
        "reps": len(runs)
    }
    out["runs"] = runs
    return out


def _counts(cc: CompileCounter) -> dict:
    return {"count": cc.count, "loaded": cc.loaded, "compiled": cc.compiled}


def _prepare(spec: dict):
    """The benchmark's COCO-EF case (straggler trace, full batch) prepared for the engine."""
    task, m, steps = spec["task"], spec["M"], spec["steps"]
    x, y = make_case_data(task, m, spec["d"], spec["n_k"])
    y_engine = y if task == "linreg" else y.astype(np.int32)
    cfg = engine_config(task, m, REDUNDANCY, steps)
    return prepare(cfg, data=(x, y_engine), straggler_trace=make_trace(steps, m))


class _Single:
    """One run: `jax.jit(make_run(static))` lowered and compiled for its HParams and data."""

    label = "single run (make_run)"

    def __init__(self, prep):
        self.prep = prep
        self.hp = jax.device_put(hparams_of(prep.cfg))
        self.run = make_run(prep.static)  # builds the code (eager programs, before any timing)

    def measure(self) -> dict:
        jax.clear_caches()
        with CompileCounter() as cc:
            t0 = now()
            lowered = jax.jit(self.run).lower(self.hp, self.prep.data)
            t1 = now()
            lowered.compile()
            t2 = now()
        return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0, "programs": _counts(cc)}

    def lines(self) -> dict:
        """Lines of StableHLO of the program (lowered once more, untimed)."""
        return {"run": jax.jit(self.run).lower(self.hp, self.prep.data).as_text().count("\n")}


class _Group:
    """A sweep group: `program.compile_program`'s init and chunk programs for calls on
    `spec["batch"]` configurations (they depend on the static group and the width, not
    on the configurations' values nor on the steps per call, a run-time argument)."""

    def __init__(self, prep, batch: int, steps: int):
        self.prep, self.batch = prep, batch
        self.args = (prep.comps, prep.data, hparams_of(prep.cfg), batch, local_devices())
        self.chunk_steps = "any (run-time)"
        self.label = f"sweep group of {batch} (init + chunk)"

    def measure(self) -> dict:
        jax.clear_caches()
        with CompileCounter() as cc:
            prog = compile_program(*self.args)
        t = prog.timings
        lower_s, compile_s = (
            t["init_lower_s"] + t["chunk_lower_s"],
            t["init_compile_s"] + t["chunk_compile_s"],
        )
        return {
            "lower_s": lower_s,
            "compile_s": compile_s,
            "total_s": lower_s + compile_s,
            "compile_program_s": prog.compile_s,
            "timings": t,
            "programs": _counts(cc),
        }

    def lines(self) -> dict:
        """Lines of StableHLO of the init and chunk programs (lowered once more, untimed)."""
        low = lower_program(*self.args)
        return {"init": low.init.as_text().count("\n"), "chunk": low.chunk.as_text().count("\n")}
