"""The NumPy references, timed in a subprocess (`NumpyWorker`) so the BLAS environment
is its own; `numpy_worker_main` is that subprocess."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import subprocess
import sys
from typing import Any

import numpy as np

from coco_jax import reference
from coco_jax.bench.cases import code_matrix, decode_weights, make_case_data, make_trace
from coco_jax.bench.machine import blas_info
from coco_jax.bench.plan import NUMPY_TRACE_STEPS, Plan
from coco_jax.bench.util import json_default, median_spread, now


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
                    t0 = now()
                    run.step()  # warm-up
                    est = now() - t0
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
                    t0 = now()
                    for _ in range(tm["block"]):
                        tm["run"].step()
                    tm["per_step"].append((now() - t0) / tm["block"])

    def summary(self) -> dict:
        row: dict[str, Any] = {"id": self.case["id"]}
        for variant, reason in self.skipped.items():
            row[variant] = {"skipped": reason}
        for variant, modes in self.timers.items():
            timed = {mode: median_spread(tm["per_step"]) for mode, tm in modes.items()}
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
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def numpy_worker_main() -> int:
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
        sys.stdout.write(json.dumps(reply, default=json_default) + "\n")
        sys.stdout.flush()
    return 0
