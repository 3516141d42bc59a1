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
4. Compile time, reported beside every run time (never inside it).
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from coco_jax.cache import CompileCounter

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
    numpy_env: str = "clean"
    sections: tuple[str, ...] = ("throughput", "redundancy", "sweep", "roofline")


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


# ============================================================ cases shared by both sides


def rows_per_partition(m: int, d: int, rows: int = ROWS, max_x_bytes: int = MAX_X_BYTES) -> int:
    """`rows` rows per partition, halved while X = [M * n_k, d] float32 exceeds the cap."""
    n_k = rows
    while n_k > 1 and m * n_k * d * 4 > max_x_bytes:
        n_k //= 2
    return n_k


def compress_k(d: int) -> int:
    """k of top-k 1% (the engine's rule, `config.resolve_k`)."""
    from coco_jax.config import resolve_k

    return resolve_k(d, None, COMPRESS_RATIO)


def make_case_data(task: str, m: int, d: int, n_k: int, seed: int = DATA_SEED):
    """Synthetic rows X [M n_k, d] (float32, rows of norm ~1) and labels y: linreg
    y = X θ* + 0.1 noise (float32); logreg y in {0, 1} (float32; the engine is given
    int32). Identical arrays in every process for the same arguments."""
    rng = np.random.default_rng(seed)
    n = m * n_k
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(1.0 / math.sqrt(d))
    theta = rng.standard_normal(d, dtype=np.float32)
    z = x @ theta + np.float32(0.1) * rng.standard_normal(n, dtype=np.float32)
    y = z if task == "linreg" else (z > 0).astype(np.float32)
    return x, y.astype(np.float32)


def make_trace(steps: int, m: int, p: float = STRAGGLER_PROB, seed: int = DATA_SEED) -> np.ndarray:
    """A fixed Bernoulli(p) straggler trace [steps, M] (True = straggles); the first
    rows do not depend on `steps`."""
    return np.random.default_rng(seed + 1).random((steps, m)) < p


def code_matrix(m: int, s: int) -> np.ndarray:
    """B [M, M] float32 of the benchmark's code: the engine's cyclic code (uncoded for
    s = 0), device m holds partitions m, ..., m+s (mod M)."""
    from coco_jax.coding import make_allocation

    return make_allocation("cyclic" if s > 0 else "uncoded", m, m, s).matrix.astype(np.float32)


def decode_weights(m: int, s: int, p: float = STRAGGLER_PROB) -> np.ndarray:
    """The engine's fixed decoder with nobody straggling, w_m = 1/(K (1-p) (s+1)) (the
    step zeroes the stragglers' weights)."""
    from coco_jax.coding import decode_weights as engine_weights

    return np.asarray(engine_weights("fixed", code_matrix(m, s), np.zeros(m, bool), np.full(m, p), s + 1.0))


def model_flops(task: str, m: int, d: int, n_k: int, s: int) -> float:
    """FLOPs of one step counted for the roofline: the partition gradients (X θ and
    Xᵀ r: 2 multiply-adds per element of X, 4 N d), the encode ((s+1) M d
    multiply-adds) and the error-feedback / decode arithmetic (about 4 M d); top-k
    comparisons and the sigmoid of logreg are not counted."""
    n = m * n_k
    return 4.0 * n * d + 2.0 * (s + 1) * m * d + 4.0 * m * d


# ============================================================ machine description


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def blas_info() -> list[dict] | None:
    """threadpoolctl's description of the BLAS numpy loaded (None without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [
        {
            k: v
            for k, v in lib.items()
            if k in ("internal_api", "version", "architecture", "num_threads", "prefix")
        }
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def machine_info() -> dict:
    """CPU/accelerator model, device count and library versions of this process."""
    import jax
    import jaxlib

    devices = jax.devices()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "env": {
            k: os.environ[k]
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XLA_FLAGS")
            if k in os.environ
        },
        "numpy_blas_in_engine_process": blas_info(),
    }


# ============================================================ small timing helpers


def _now() -> float:
    return time.perf_counter()


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _summary(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def engine_config(task: str, m: int, s: int, steps: int, straggler: str = "trace", **changes):
    """The benchmark's COCO-EF configuration (eval_every = steps)."""
    from coco_jax.config import ExperimentConfig

    fields = {
        "task": task,
        "num_devices": m,
        "redundancy": s,
        "allocation": "cyclic" if s > 0 else "uncoded",
        "decoder": "fixed",
        "straggler": straggler,
        "straggler_prob": STRAGGLER_PROB,
        "compressor": "topk",
        "compress_ratio": COMPRESS_RATIO,
        "error_feedback": "ef",
        "optimizer": "sgd",
        "lr": LR,
        "steps": steps,
        "eval_every": steps,
    }
    fields.update(changes)
    return ExperimentConfig(**fields)


def _compile(static, hp, data):
    """(compiled run, compile seconds: trace + lower + XLA compile)."""
    import jax

    from coco_jax.step import make_run

    t0 = _now()
    compiled = jax.jit(make_run(static)).lower(hp, data).compile()
    return compiled, _now() - t0


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
        import jax
        import jax.numpy as jnp

        from coco_jax.config import hparams_of, static_fields
        from coco_jax.engine import component_serials, prepare

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
            _block(run0(self.hp, self.data0))
            t_first = min(_timed(run0, self.hp, self.data0) for _ in range(2))
            est = max(t_first / n0, 1e-7)  # an over-estimate: includes init and two evaluations
            n = n0 + int(np.clip(round(plan.engine_target_s / est), 8, plan.engine_max_steps))
            static_n = dataclasses.replace(
                static0, fields=static_fields(cfg_s.replace(steps=n, eval_every=n))
            )
            data_n = self.data0._replace(trace=jnp.asarray(make_trace(n, m)))
            run_n, compile_n = _compile(static_n, self.hp, data_n)
            _block(run_n(self.hp, data_n))
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
        p["t_short"].append(_timed(p["run0"], self.hp, self.data0))
        p["t_long"].append(_timed(p["run_n"], self.hp, p["data_n"]))

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


def _timed(fn, *args) -> float:
    t0 = _now()
    _block(fn(*args))
    return _now() - t0


def _device_memory_stats() -> dict | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    return {k: int(v) for k, v in stats.items() if k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


# ============================================================ NumPy side (subprocess)


class _ReferenceRun:
    """The state of a NumPy reference run: θ, error memories, step counter."""

    def __init__(self, fn, case: dict, arrays: dict):
        self.fn, self.case, self.arrays = fn, case, arrays
        self.theta = np.zeros(case["d"], np.float32)
        self.errors = np.zeros((case["M"], case["d"]), np.float32)
        self.t = 0

    def step(self) -> None:
        c, a = self.case, self.arrays
        straggles = a["trace"][self.t % NUMPY_TRACE_STEPS]
        self.theta, self.errors = self.fn(
            c["task"],
            self.theta,
            self.errors,
            a["xp"],
            a["yp"],
            a["b"],
            straggles,
            a["w"],
            c["k"],
            c["lr"],
            True,
        )
        self.t += 1


def _blas_limiter(mode: str):
    """BLAS thread limit of a timing mode: "default" (as loaded) or "1"."""
    if mode == "1":
        import threadpoolctl

        return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


def _blas_modes() -> list[str]:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return ["default"]
    return ["default", "1"]


class NumpyCase:
    """The NumPy references of one case, timed in repetitions the caller interleaves
    with the engine's: `setup` (data, one warm-up step per variant and BLAS mode, block
    sizes, budget check), `rep` (one block of steps of every variant and mode),
    `summary` (median per step; the faster BLAS mode counts)."""

    def __init__(self, case: dict, budget_s: float, min_rep_s: float, reps: int):
        from coco_jax import reference

        fns = {"vectorized": reference.vectorized_step, "loop": reference.loop_step}
        self.case = case
        x, y = make_case_data(case["task"], case["M"], case["d"], case["n_k"])
        arrays = {
            "xp": x.reshape(case["M"], case["n_k"], case["d"]),
            "yp": y.reshape(case["M"], case["n_k"]),
            "b": code_matrix(case["M"], case["s"]),
            "w": decode_weights(case["M"], case["s"]),
            "trace": make_trace(NUMPY_TRACE_STEPS, case["M"]),
        }
        self.timers: dict[str, dict[str, dict]] = {}
        self.skipped: dict[str, str] = {}
        for variant in case["variants"]:
            modes = {}
            for mode in _blas_modes():
                with _blas_limiter(mode):
                    run = _ReferenceRun(fns[variant], case, arrays)
                    t0 = _now()
                    run.step()  # warm-up
                    est = _now() - t0
                block = max(1, math.ceil(min_rep_s / max(est, 1e-9)))
                if est * (reps * block + 1) > budget_s:
                    if mode == "default":
                        self.skipped[variant] = (
                            f"~{est:.2g} s/step: {reps} repetitions exceed the {budget_s:g} s budget"
                        )
                        break
                    continue
                modes[mode] = {"run": run, "block": block, "per_step": []}
            if variant not in self.skipped:
                self.timers[variant] = modes

    def rep(self) -> None:
        for modes in self.timers.values():
            for mode, tm in modes.items():
                with _blas_limiter(mode):
                    t0 = _now()
                    for _ in range(tm["block"]):
                        tm["run"].step()
                    tm["per_step"].append((_now() - t0) / tm["block"])

    def summary(self) -> dict:
        row: dict[str, Any] = {"id": self.case["id"]}
        for variant, reason in self.skipped.items():
            row[variant] = {"skipped": reason}
        for variant, modes in self.timers.items():
            timed = {mode: _summary(tm["per_step"]) for mode, tm in modes.items()}
            best = min(timed, key=lambda k: timed[k]["median"])
            step = timed[best]["median"]
            row[variant] = {
                "step_s": step,
                "step_s_min": timed[best]["min"],
                "step_s_max": timed[best]["max"],
                "steps_per_s": 1.0 / step,
                "device_steps_per_s": self.case["M"] / step,
                "blas_threads": best,
                "by_blas_threads": {k: v["median"] for k, v in timed.items()},
                "block": modes[best]["block"],
                "reps": timed[best]["n"],
            }
            if not np.all(np.isfinite(modes[best]["run"].theta)):
                row[variant]["note"] = "non-finite θ"
        return row


def _worker_meta() -> dict:
    return {
        "blas": blas_info(),
        "numpy": np.__version__,
        "env": {
            k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
        },
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


class NumpyWorker:
    """A subprocess that times the NumPy references one case at a time (JSON lines),
    so the BLAS environment is its own and engine and NumPy figures of a case are
    measured minutes apart at most."""

    def __init__(self, plan: Plan):
        env = dict(os.environ)
        self.removed = []
        if plan.numpy_env == "clean":
            for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
                if env.pop(var, None) is not None:
                    self.removed.append(var)
        env["JAX_PLATFORMS"] = "cpu"
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.spec = {"reps": plan.reps, "budget_s": plan.numpy_budget_s, "min_rep_s": plan.numpy_min_rep_s}
        self.env_mode = plan.numpy_env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coco_jax.bench", "--numpy-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def _ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the NumPy benchmark subprocess ended (exit code {self.proc.wait()})")
            if line.startswith("{"):
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"NumPy benchmark subprocess: {reply['error']}")
                return reply

    def setup(self, case: dict) -> dict:
        """Load a case (data, warm-up, budget check); returns {"skipped": {...}}."""
        return self._ask({"setup": case, **self.spec})["result"]

    def rep(self) -> None:
        self._ask({"rep": True})

    def finish(self) -> dict:
        return self._ask({"finish": True})["result"]

    def case(self, case: dict) -> dict:
        """All repetitions of one case at once (no engine interleaving)."""
        self.setup(case)
        for _ in range(self.spec["reps"]):
            self.rep()
        return self.finish()

    def meta(self) -> dict:
        out = self._ask({"meta": True})["result"]
        out["env_removed"] = self.removed
        out["env_mode"] = self.env_mode
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ============================================================ sections


def _ratio(engine: dict | None, ref: dict | None) -> float | None:
    if not engine or not ref or "step_s" not in ref or "step_s" not in engine:
        return None
    return ref["step_s"] / engine["step_s"]


def _case_size(row: dict) -> tuple[int, int]:
    """Order of case size: bytes of X, then the [M, d] state."""
    return (row["M"] * row["n_k"] * row["d"], row["M"] * row["d"])


def throughput_cases(plan: Plan) -> list[dict]:
    """The throughput grid of `plan`: tasks x d x M, cyclic s=2, top-k 1%."""
    rows = []
    for task in plan.tasks:
        for d in plan.dims:
            for m in plan.devices:
                rows.append(
                    {
                        "id": f"{task}-M{m}-d{d}",
                        "task": task,
                        "M": m,
                        "d": d,
                        "n_k": rows_per_partition(m, d, plan.rows, plan.max_x_bytes),
                        "s": REDUNDANCY,
                        "k": compress_k(d),
                        "lr": LR,
                    }
                )
    return rows


def bench_throughput(plan: Plan, worker: NumpyWorker, log) -> list[dict]:
    """Section 1: engine, then the two NumPy references, case by case."""
    rows = throughput_cases(plan)
    biggest = max(rows, key=_case_size)
    for row in rows:
        log(f"  {row['id']} (n_k={row['n_k']}, k={row['k']}): compiling, numpy warm-up ...")
        case = EngineCase(row["task"], row["M"], row["d"], row["n_k"], [row["s"]], plan)
        worker.setup(
            {k: row[k] for k in ("id", "task", "M", "d", "n_k", "s", "k", "lr")}
            | {"variants": ["vectorized", "loop"]}
        )
        log(f"  {row['id']}: timing (engine and NumPy repetitions alternate) ...")
        for _ in range(plan.reps):
            case.time_round(row["s"])
            worker.rep()
        row["engine"] = case.result(row["s"], memory=row is biggest)
        case.close()
        ref = worker.finish()
        row["numpy_vectorized"] = ref["vectorized"]
        row["numpy_loop"] = ref["loop"]
        row["x_vectorized"] = _ratio(row["engine"], ref["vectorized"])
        row["x_loop"] = _ratio(row["engine"], ref["loop"])
    return rows


def bench_redundancy(plan: Plan, worker: NumpyWorker, log) -> dict:
    """Section 2: s = 0..5 on one case; the engine's repetitions alternate over s so a
    slow spell of a shared machine does not land on one level only."""
    task, m, d = plan.redundancy_case
    n_k = rows_per_partition(m, d, plan.rows, plan.max_x_bytes)
    levels = [s for s in plan.redundancy_levels if s < m]
    log(f"  engine: compiling s={levels} ...")
    case = EngineCase(task, m, d, n_k, levels, plan)
    log("  engine: timing (repetitions alternate over s) ...")
    for _ in range(plan.reps):
        for s in levels:
            case.time_round(s)
    rows = [{"s": s, "engine": case.result(s)} for s in levels]
    case.close()
    for row in rows:
        log(f"  numpy loop s={row['s']} ...")
        ref = worker.case(
            {
                "id": f"s{row['s']}",
                "task": task,
                "M": m,
                "d": d,
                "n_k": n_k,
                "s": row["s"],
                "k": compress_k(d),
            }
            | {"lr": LR, "variants": ["loop"]}
        )
        row["loop"] = ref["loop"]
    base_e = rows[0]["engine"]["step_s"]
    base_l = rows[0]["loop"].get("step_s")
    for row in rows:
        row["engine_rel"] = row["engine"]["step_s"] / base_e
        row["loop_rel"] = row["loop"]["step_s"] / base_l if base_l and "step_s" in row["loop"] else None
    return {"task": task, "M": m, "d": d, "n_k": n_k, "k": compress_k(d), "levels": rows}


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
    import jax

    from coco_jax.config import hparams_of
    from coco_jax.engine import prepare
    from coco_jax.step import make_run

    prep = prepare(cfgs[0], data=data)
    if len(cfgs) > 1 and prepare(cfgs[1], data=data).static != prep.static:
        raise RuntimeError("the sweep's configurations must share one static group")
    hps = jax.device_put(jax.tree.map(lambda *a: np.stack(a), *[hparams_of(c) for c in cfgs]))
    run = make_run(prep.static)  # builds code and allocation (eager jax ops, not counted)
    with CompileCounter() as cc:
        t0 = _now()
        vm = jax.jit(jax.vmap(run, in_axes=(0, None))).lower(hps, prep.data).compile()
        compile_s = _now() - t0
        _block(vm(hps, prep.data))
    times, one_by_one = _time_sweep(plan, vm, (hps, prep.data), cfgs, data)
    config_steps = len(cfgs) * cfgs[0].steps
    vmapped = {
        "compile_s": compile_s,
        "compilations": cc.count,
        "run_s": _summary(times),
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
    from coco_jax.engine import run as run_one
    from coco_jax.step import compiled_run

    compiled_run.cache_clear()
    with CompileCounter() as cc:
        t0 = _now()
        run_one(cfgs[0], data=data)
        first_s = _now() - t0
        times, obo_times = [], []
        for _ in range(plan.reps):
            times.append(_timed(vm, *vm_args))
            t0 = _now()
            for c in cfgs:
                run_one(c, data=data)
            obo_times.append(_now() - t0)
    per_run = float(np.median(obo_times)) / len(cfgs)
    return times, {
        "first_run_s": first_s,
        "compile_s": max(first_s - per_run, 0.0),
        "compilations": cc.count,
        "run_s": _summary(obo_times),
        "config_steps_per_s": len(cfgs) * cfgs[0].steps / float(np.median(obo_times)),
    }


def bench_roofline(plan: Plan, log) -> dict:
    """Measured float32 matmul rate and read / copy bandwidth (jax, this process)."""
    import jax
    import jax.numpy as jnp

    reps = max(3, plan.reps)
    n = plan.matmul_n
    log(f"  matmul {n}x{n} ...")
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    _block(mm(a, b))
    t_mm = [_timed(mm, a, b) for _ in range(reps)]
    del a, b
    count = plan.bandwidth_bytes // 4
    cols = 4096
    rows_ = count // cols
    count = rows_ * cols
    log(f"  bandwidth ({count * 4 / 2**20:.0f} MiB) ...")
    x = jnp.full((rows_, cols), 1.5, jnp.float32)
    ones = jnp.ones((cols,), jnp.float32)
    # reading X once: the best of three jax read kernels (XLA:CPU reductions differ)
    kernels = {
        "sum of row sums": (lambda v: jnp.sum(jnp.sum(v, axis=1)), (x,)),
        "max": (jnp.max, (x,)),
        "matrix-vector product": (lambda v, w: v @ w, (x, ones)),
    }
    read = {}
    for name, (fn, args) in kernels.items():
        compiled = jax.jit(fn).lower(*args).compile()
        _block(compiled(*args))
        read[name] = _summary([_timed(compiled, *args) for _ in range(reps)])
    best = min(read, key=lambda k: read[k]["median"])
    cp = jax.jit(lambda v: v * 1.0000001, donate_argnums=0)
    x = _block(cp(x))
    t_cp = []
    for _ in range(reps):
        t0 = _now()
        x = _block(cp(x))
        t_cp.append(_now() - t0)
    del x
    gc.collect()
    return {
        "matmul_n": n,
        "matmul_s": _summary(t_mm),
        "matmul_flops_per_s": 2.0 * n**3 / float(np.median(t_mm)),
        "bandwidth_bytes": int(count * 4),
        "read_s": read,
        "read_kernel": best,
        "read_bytes_per_s": count * 4 / read[best]["median"],
        "copy_s": _summary(t_cp),
        "copy_bytes_per_s": 2.0 * count * 4 / float(np.median(t_cp)),
        "method": "matmul: jnp.matmul of two n x n float32 (2 n^3 FLOP); read: bytes / median time of the "
        "fastest of three read kernels (sum, max, matrix-vector); copy: in-place (donated) v * c, "
        "read + write bytes counted",
    }


def _combine_calibrations(cals: list[dict]) -> dict:
    """The machine's rates: the best of the calibrations made at the start and at the
    end of the run (a shared machine's load varies; the best is what it can do, which
    makes the engine's fractions conservative). Every calibration is kept."""
    out = dict(cals[0])
    for key in ("matmul_flops_per_s", "read_bytes_per_s", "copy_bytes_per_s"):
        out[key] = max(c[key] for c in cals)
    out["calibrations"] = cals
    return out


def roofline_cases(throughput: list[dict], machine: dict) -> list[dict]:
    """Achieved FLOP/s and X bytes/s of the largest-d cases against the machine rates."""
    if not throughput:
        return []
    d_max = max(r["d"] for r in throughput)
    out = []
    for r in throughput:
        if r["d"] != d_max:
            continue
        e = r["engine"]
        flops = model_flops(r["task"], r["M"], r["d"], r["n_k"], r["s"])
        x_bytes = r["M"] * r["n_k"] * r["d"] * 4
        out.append(
            {
                "id": r["id"],
                "task": r["task"],
                "M": r["M"],
                "d": r["d"],
                "n_k": r["n_k"],
                "model_flops_per_step": flops,
                "flops_per_s": flops / e["step_s"],
                "flops_fraction": flops / e["step_s"] / machine["matmul_flops_per_s"],
                "x_bytes_per_step": x_bytes,
                "x_bytes_per_s": x_bytes / e["step_s"],
                "read_fraction": x_bytes / e["step_s"] / machine["read_bytes_per_s"],
                "copy_fraction": x_bytes / e["step_s"] / machine["copy_bytes_per_s"],
            }
        )
    return out


TARGETS = (
    ("engine_vs_loop_M64_d1000", ">=", 20.0, "engine / NumPy loop at M=64, d=1,000"),
    ("engine_vs_loop_M64_d10000", ">=", 5.0, "engine / NumPy loop at M=64, d=10,000"),
    ("engine_vs_vectorized_M64_d10000", ">=", 1.5, "engine / vectorised NumPy at M=64, d=10,000"),
    ("linreg_read_bandwidth_fraction", ">=", 0.5, "large linreg (most rows): X bytes/s / read bandwidth"),
    ("redundancy_s3_over_s0", "<=", 1.3, "engine step time s=3 / s=0"),
    ("sweep64_speedup", ">=", 10.0, "64-configuration vmapped sweep / one by one"),
)


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets with the figures of this run (None where not measured)."""
    measured: dict[str, dict[str, float | None]] = {name: {} for name, *_ in TARGETS}
    for r in result.get("throughput", []):
        if r["M"] == 64 and r["d"] == 1000:
            measured["engine_vs_loop_M64_d1000"][r["task"]] = r["x_loop"]
        if r["M"] == 64 and r["d"] == 10000:
            measured["engine_vs_loop_M64_d10000"][r["task"]] = r["x_loop"]
            measured["engine_vs_vectorized_M64_d10000"][r["task"]] = r["x_vectorized"]
    lin = [c for c in result.get("roofline", {}).get("cases", []) if c["task"] == "linreg"]
    if lin:
        # the large-d linreg case with the most rows per partition: where reading X should dominate
        big = max(lin, key=lambda c: (c["n_k"], c["x_bytes_per_step"]))
        measured["linreg_read_bandwidth_fraction"][big["id"]] = big["read_fraction"]
    red = result.get("redundancy", {}).get("levels", [])
    by_s = {r["s"]: r for r in red}
    if 3 in by_s and 0 in by_s:
        measured["redundancy_s3_over_s0"]["engine"] = by_s[3]["engine_rel"]
    for sw in result.get("sweep", []):
        for r in sw["sizes"]:
            if r["configs"] == 64:
                measured["sweep64_speedup"][f"M{sw['M']}-d{sw['d']}"] = r["speedup"]
    out = []
    for name, op, bound, text in TARGETS:
        vals = {k: v for k, v in measured[name].items() if v is not None}
        met = None
        if vals:
            met = all((v >= bound) if op == ">=" else (v <= bound) for v in vals.values())
        out.append(
            {"name": name, "description": text, "target": f"{op} {bound:g}", "measured": vals, "met": met}
        )
    return out


# ============================================================ the suite


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
    t_start = _now()
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
    if calibrations:
        log("[5] roofline calibration (2 of 2)")
        calibrations.append(bench_roofline(plan, log))
        result["machine"].update(_combine_calibrations(calibrations))
    if "roofline" in plan.sections and "throughput" in plan.sections:
        result["roofline"] = roofline_section(result)
    if result.get("throughput"):
        result["memory"] = memory_section(result)
    result["targets"] = evaluate_targets(result)
    result["total_s"] = _now() - t_start
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


def roofline_section(result: dict) -> dict:
    """Section 5: the measured machine rates and the largest-d cases against them."""
    return {
        "matmul_flops_per_s": result["machine"]["matmul_flops_per_s"],
        "read_bytes_per_s": result["machine"]["read_bytes_per_s"],
        "copy_bytes_per_s": result["machine"]["copy_bytes_per_s"],
        "flops_model": model_flops.__doc__.split("\n\n")[0] if model_flops.__doc__ else "",
        "cases": roofline_cases(result["throughput"], result["machine"]),
    }


def memory_section(result: dict) -> dict:
    """Section 6: peak memory of the largest throughput case."""
    big = max(result["throughput"], key=_case_size)
    e = big["engine"]
    stats = e.get("device_memory_stats")
    out = {
        "case": big["id"],
        "x_bytes": e["x_bytes"],
        "xla_memory_analysis": e.get("memory_analysis"),
        "device_peak_bytes": (stats or {}).get("peak_bytes_in_use"),
        "process_peak_rss_bytes": e.get("process_peak_rss_bytes"),
        "source": "device memory_stats()['peak_bytes_in_use']"
        if stats and "peak_bytes_in_use" in stats
        else "no device memory_stats() on this backend: process peak RSS (resource.getrusage ru_maxrss), "
        "read right after timing the largest case: a high-water mark of the benchmark process so far "
        "(Python, jax, earlier cases); the XLA memory analysis of the case's program is exact",
    }
    nm = result.get("numpy_blas") or {}
    if nm.get("peak_rss_bytes"):
        out["numpy_process_peak_rss_bytes"] = nm["peak_rss_bytes"]
    return out


# ============================================================ table


def _fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    align = align or "l" + "r" * (len(header) - 1)

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ref_ms(ref: dict) -> str:
    if "skipped" in ref:
        return "skipped"
    return _fmt_ms(ref["step_s"])


def format_report(result: dict) -> str:
    """The benchmark's text table: the machine header, then one block per section the
    run measured, then the total time."""
    blocks = [format_machine(result)]
    for section in SECTION_FORMATTERS:
        text = section(result)
        if text:
            blocks.append(text)
    blocks.append(f"total {result['total_s']:.0f} s")
    return "\n\n".join(blocks)


def format_machine(result: dict) -> str:
    """The header: machine, versions, NumPy's BLAS and the COCO-EF setting."""
    mc = result["machine"]
    blas = result.get("numpy_blas") or {}
    blas_lib = (blas.get("blas") or [{}])[0] if blas.get("blas") else {}
    blas_text = (
        f" (BLAS {blas_lib.get('internal_api', '?')} {blas_lib.get('architecture', '?')}"
        f", env {blas.get('env_mode', '?')})"
        if blas_lib
        else ""
    )
    st = result["setting"]
    return (
        f"coco-jax bench ({result['mode']}) - {mc['cpu_model']}, {mc['cpu_affinity']} cores, "
        f"{mc['device_count']} x {mc['device_kind']} ({mc['jax_backend']}); "
        f"jax {mc['jax']}, numpy {mc['numpy']}{blas_text}\n"
        f"setting: {st['batch']}; {st['allocation']}; {st['compressor']}; {st['stragglers']}; "
        f"{st['decoder']}; rows per partition n_k = {st['rows_per_partition']}"
    )


THROUGHPUT_HEADER = (
    "task",
    "M",
    "d",
    "n_k",
    "engine",
    "spread",
    "steps/s",
    "dev-steps/s",
    "numpy vec",
    "numpy loop",
    "x vec",
    "x loop",
    "compile s",
)


def _throughput_row(r: dict) -> list[str]:
    e = r["engine"]
    return [
        r["task"],
        str(r["M"]),
        f"{r['d']:,}",
        str(r["n_k"]),
        _fmt_ms(e["step_s"]),
        f"[{_fmt_ms(e['step_s_min'])}-{_fmt_ms(e['step_s_max'])}]",
        _fmt_rate(e["steps_per_s"]),
        _fmt_rate(e["device_steps_per_s"]),
        _ref_ms(r["numpy_vectorized"]),
        _ref_ms(r["numpy_loop"]),
        _fmt_x(r["x_vectorized"]),
        _fmt_x(r["x_loop"]),
        f"{e['compile_s']:.2f}",
    ]


def format_throughput(result: dict) -> str:
    """[1] step throughput: engine and NumPy step times per case, and what was skipped."""
    if not result.get("throughput"):
        return ""
    rows = [_throughput_row(r) for r in result["throughput"]]
    skipped = [
        f"  skipped {r['id']} {name}: {r[key]['skipped']}"
        for r in result["throughput"]
        for key, name in (("numpy_vectorized", "vec"), ("numpy_loop", "loop"))
        if "skipped" in r[key]
    ]
    title = "[1] step throughput - median step time (ms); x = engine speed / NumPy speed; compile separate"
    return "\n".join([title, _table(THROUGHPUT_HEADER, rows, "llrrrrrrrrrrr"), *skipped])


def format_redundancy(result: dict) -> str:
    """[2] cost of redundancy: step time per s, relative to s = 0."""
    red = result.get("redundancy")
    if not red:
        return ""
    rows = [
        [
            str(r["s"]),
            _fmt_ms(r["engine"]["step_s"]),
            f"{r['engine_rel']:.2f}",
            _ref_ms(r["loop"]),
            "-" if r["loop_rel"] is None else f"{r['loop_rel']:.2f}",
            f"{r['engine']['compile_s']:.2f}",
        ]
        for r in red["levels"]
    ]
    title = (
        f"[2] cost of redundancy - {red['task']} M={red['M']} d={red['d']:,} n_k={red['n_k']}: "
        "step time (ms) and relative to s=0"
    )
    return title + "\n" + _table(["s", "engine", "engine/s0", "numpy loop", "loop/s0", "compile s"], rows)


SWEEP_HEADER = (
    "configs",
    "vmapped cfg-steps/s",
    "one-by-one cfg-steps/s",
    "speedup",
    "vmap compile s",
    "compiles",
    "one-by-one compile s",
    "compiles",
)


def _format_sweep_case(sw: dict) -> str:
    rows = [
        [
            str(r["configs"]),
            _fmt_rate(r["vmapped"]["config_steps_per_s"]),
            _fmt_rate(r["one_by_one"]["config_steps_per_s"]),
            _fmt_x(r["speedup"]),
            f"{r['vmapped']['compile_s']:.2f}",
            str(r["vmapped"]["compilations"]),
            f"{r['one_by_one']['compile_s']:.2f}",
            str(r["one_by_one"]["compilations"]),
        ]
        for r in sw["sizes"]
    ]
    title = (
        f"[3] sweep throughput - {sw['task']} M={sw['M']} d={sw['d']:,} n_k={sw['n_k']}, "
        f"{sw['steps']} steps (eval every {sw['eval_every']}); configurations differ in {sw['varies']}"
    )
    return title + "\n" + _table(SWEEP_HEADER, rows)


def format_sweep(result: dict) -> str:
    """[3] sweep throughput: one table per sweep case."""
    return "\n\n".join(_format_sweep_case(sw) for sw in result.get("sweep", []))


def format_roofline(result: dict) -> str:
    """[5] roofline: the largest-d cases against the measured matmul rate and bandwidth."""
    rf = result.get("roofline")
    if not rf:
        return ""
    rows = [
        [
            c["task"],
            str(c["M"]),
            f"{c['d']:,}",
            str(c["n_k"]),
            _fmt_rate(c["flops_per_s"]),
            f"{100 * c['flops_fraction']:.1f}%",
            _fmt_rate(c["x_bytes_per_s"]),
            f"{100 * c['read_fraction']:.1f}%",
            f"{100 * c['copy_fraction']:.1f}%",
        ]
        for c in rf["cases"]
    ]
    title = (
        f"[5] roofline - measured here (best of run start/end): float32 matmul {_fmt_rate(rf['matmul_flops_per_s'])}FLOP/s, "
        f"read {_fmt_rate(rf['read_bytes_per_s'])}B/s, copy {_fmt_rate(rf['copy_bytes_per_s'])}B/s (jax)"
    )
    header = ["task", "M", "d", "n_k", "FLOP/s", "of matmul", "X B/s", "of read", "of copy"]
    return title + "\n" + _table(header, rows, "llrrrrrrr")


def format_memory(result: dict) -> str:
    """[6] peak memory of the largest case: device or process peak, XLA's analysis."""
    mem = result.get("memory")
    if not mem:
        return ""
    ma = mem.get("xla_memory_analysis") or {}
    parts = [f"[6] peak memory - largest case {mem['case']} (X {mem['x_bytes'] / 2**20:.0f} MiB):"]
    if mem.get("device_peak_bytes"):
        parts.append(f"device peak {mem['device_peak_bytes'] / 2**20:.0f} MiB;")
    if mem.get("process_peak_rss_bytes"):
        parts.append(f"process peak RSS {mem['process_peak_rss_bytes'] / 2**20:.0f} MiB;")
    if ma:
        parts.append(
            "XLA program: arguments {:.0f} MiB + temporaries {:.0f} MiB + outputs {:.2f} MiB".format(
                ma.get("argument_size_in_bytes", 0) / 2**20,
                ma.get("temp_size_in_bytes", 0) / 2**20,
                ma.get("output_size_in_bytes", 0) / 2**20,
            )
        )
    return " ".join(parts)


def format_targets(result: dict) -> str:
    """[7] the issue's targets: goal, figures of this run, met or missed."""
    if not result.get("targets"):
        return ""
    rows = []
    for t in result["targets"]:
        vals = ", ".join(f"{k} {v:.3g}" for k, v in t["measured"].items()) or "not measured in this mode"
        met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        rows.append([t["description"], t["target"], vals, met])
    return "[7] targets (issue 6)\n" + _table(["target", "goal", "measured", ""], rows, "llll")


SECTION_FORMATTERS = (
    format_throughput,
    format_redundancy,
    format_sweep,
    format_roofline,
    format_memory,
    format_targets,
)


# ============================================================ command line


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    return tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())


def plan_from_args(args) -> Plan:
    mode = "tiny" if getattr(args, "tiny", False) else "quick" if getattr(args, "quick", False) else "full"
    tasks = getattr(args, "tasks", None)
    sections = getattr(args, "sections", None)
    return make_plan(
        mode,
        tasks=tuple(t for t in tasks.split(",") if t) if tasks else None,
        devices=_int_list(getattr(args, "devices", None)),
        dims=_int_list(getattr(args, "dims", None)),
        rows=getattr(args, "rows", None),
        reps=getattr(args, "reps", None),
        numpy_env=getattr(args, "numpy_env", None),
        numpy_budget_s=getattr(args, "numpy_budget", None),
        sections=tuple(s for s in sections.split(",") if s) if sections else None,
    )


def cli_bench(args) -> int:
    """`coco-jax bench`: run the suite, print the table, optionally write JSON."""
    plan = plan_from_args(args)
    unknown = set(plan.sections) - {"throughput", "redundancy", "sweep", "roofline"}
    if unknown:
        print(f"coco-jax: error: unknown --sections {sorted(unknown)}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run_suite(plan, log=log)
    print(format_report(result))
    if getattr(args, "json", None):
        path = args.json
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(_finite(result), fh, indent=2, default=_json_default, allow_nan=False)
        print(f"wrote {path}")
    return 0


def _finite(obj):
    """`obj` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _worker_main() -> int:
    """The NumPy subprocess: one JSON request per line in, one JSON reply per line out.
    Requests: {"setup": case, "budget_s", "min_rep_s", "reps"}, {"rep": true},
    {"finish": true} (the case's summary), {"meta": true}."""
    current: NumpyCase | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            if request.get("meta"):
                result: Any = _worker_meta()
            elif "setup" in request:
                current = None
                gc.collect()
                current = NumpyCase(
                    request["setup"], request["budget_s"], request["min_rep_s"], request["reps"]
                )
                result = {"skipped": current.skipped}
            elif request.get("rep"):
                assert current is not None, "rep before setup"
                current.rep()
                result = True
            elif request.get("finish"):
                assert current is not None, "finish before setup"
                result = current.summary()
                current = None
                gc.collect()
            else:
                raise ValueError(f"unknown request {sorted(request)}")
            reply = {"result": result}
        except Exception as err:  # noqa: BLE001 - reported to the parent
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply, default=_json_default) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--numpy-worker"]:
        sys.exit(_worker_main())
    print(
        "usage: coco-jax bench [--quick] [--json FILE]  (this module's entry point is the worker)",
        file=sys.stderr,
    )
    sys.exit(2)
