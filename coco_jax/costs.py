"""What a sweep will cost, before it runs: compile and run seconds per group.

Every sweep program is recorded (a line of JSON in `timings.jsonl` beside the
persistent compilation cache): its key (a hash of the group's static part, width, call
size, data shapes, platform, jax version and the coco_jax source, computed without
tracing anything), the model FLOPs of one call-step (`plan.step_flops` times the call
size), the seconds it took to compile and, once it ran, its seconds per
configuration-step. `estimate` predicts, for a planned group:

- compile seconds: ~0 when a program of the same key was compiled in this cache
  directory (it is in the persistent cache), else the median compile seconds measured
  on this machine (a default before any), labelled a guess;
- run seconds: configuration-steps x the seconds per configuration-step measured for
  programs of the same key on this machine ("measured": within a few tens of percent,
  the time of the same program on the same machine); before any, a guess from a
  two-parameter model fitted to every measured program here, seconds per call-step =
  overhead + FLOPs / rate (a default rate and overhead before three measurements).

Guesses can be off by an order of magnitude; `--dry-run` labels them, and a sweep whose
estimate exceeds an hour says so on stderr before it starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import threading
import time

import jax
import numpy as np

from coco_jax.cache import cache_dir

TIMINGS = "timings.jsonl"
DEFAULT_COMPILE_S = 3.0  # compile seconds of a group before any was measured here
DEFAULT_FLOPS_PER_S = {"cpu": 1e10}  # run rate before calibration; other platforms 1e12
DEFAULT_OVERHEAD_S = {"cpu": 2e-4}  # seconds per call-step besides the arithmetic; others 2e-5
CACHED_S = 0.05  # reading a program back from the persistent cache
LONG_S = 3600.0  # a sweep estimated above this says so before it starts
_lock = threading.Lock()
_memory: list[dict] = []  # records of this process (also when the cache is off)


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """A planned group program: `key` (see the module docstring), `flops` of one
    call-step (model), `call_size` configurations per call."""

    key: str
    flops: float
    call_size: int

    @property
    def fingerprint(self) -> str:  # the name earlier records used
        return self.key


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """A hash of the coco_jax package's source files (a changed engine is another program)."""
    h = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def program_cost(static, width: int, call_size: int, data, flops_per_config_step: float) -> ProgramCost:
    """The cost record of a group's program (nothing is traced)."""
    shapes = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(data))
    device = jax.local_devices()[0]
    meta = (repr(static), width, call_size, shapes, jax.__version__, device.platform, device.device_kind)
    key = hashlib.sha256((repr(meta) + source_hash()).encode()).hexdigest()[:24]
    return ProgramCost(key, float(flops_per_config_step) * call_size, call_size)


def _path() -> pathlib.Path | None:
    d = cache_dir()
    return pathlib.Path(d) / TIMINGS if d else None


def _records() -> list[dict]:
    out = list(_memory)
    path = _path()
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "key" in record and record not in out:
                    out.append(record)
    return out


def record(cost: ProgramCost, **measured) -> None:
    """Append a measurement of a program (compile_s=..., or run_s=... with
    config_steps=...) to this machine's timings."""
    entry = {
        "key": cost.key,
        "flops": cost.flops,
        "call_size": cost.call_size,
        "platform": jax.default_backend(),
        "t": time.time(),
        **measured,
    }
    with _lock:
        _memory.append(entry)
        path = _path()
        if path is None:
            return
        with contextlib.suppress(OSError):  # estimates are a convenience; never fail a run for them
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)


def default_model(platform: str) -> tuple[float, float]:
    """(overhead seconds per call-step, FLOP/s) of `platform` before any calibration."""
    return DEFAULT_OVERHEAD_S.get(platform, 2e-5), DEFAULT_FLOPS_PER_S.get(platform, 1e12)


def _fit(runs: list[dict], platform: str) -> tuple[float, float, bool]:
    """(overhead seconds per call-step, FLOP/s, fitted) of t = overhead + flops / rate
    over measured runs (least squares, both non-negative; defaults with < 3 runs)."""
    overhead, rate = default_model(platform)
    points = [
        (r["flops"], r["run_s"] * r["call_size"] / r["config_steps"])
        for r in runs
        if r.get("run_s", 0) > 0 and r.get("config_steps") and r.get("call_size")
    ]
    if len(points) < 3:
        return overhead, rate, False
    f = np.asarray([p[0] for p in points])
    t = np.asarray([p[1] for p in points])
    a = np.stack([np.ones_like(f), f], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(a, t, rcond=None)
    if c1 <= 0:  # no visible FLOP dependence: all overhead
        return float(np.median(t)), rate, True
    if c0 < 0:
        c0, c1 = 0.0, float(np.median(t / np.maximum(f, 1.0)))
    return float(c0), 1.0 / float(c1), True


def estimate(cost: ProgramCost, config_steps: int) -> dict:
    """{"compile_s", "run_s", "cached", "measured", "calibrated"} of a planned group
    that runs `config_steps` configuration-steps (padding included): "measured" when a
    program of the same key has run on this machine (see the module docstring)."""
    platform = jax.default_backend()
    records = [r for r in _records() if r.get("platform", platform) == platform]
    compiled = [r for r in records if "compile_s" in r]
    cached = cache_dir() is not None and any(r["key"] == cost.key for r in compiled)
    same = [r for r in records if r["key"] == cost.key and r.get("run_s", 0) > 0 and r.get("config_steps")]
    if same:
        per = float(np.median([r["run_s"] / r["config_steps"] for r in same]))
        run_s, measured, calibrated = config_steps * per, True, True
    else:
        overhead, rate, calibrated = _fit([r for r in records if "run_s" in r], platform)
        calls = config_steps / max(cost.call_size, 1)
        run_s, measured = calls * (overhead + cost.flops / rate), False
    if cached:
        compile_s = CACHED_S
    elif compiled:
        compile_s = float(np.median([r["compile_s"] for r in compiled[-50:]]))
    else:
        compile_s = DEFAULT_COMPILE_S
    return {
        "compile_s": compile_s,
        "run_s": run_s,
        "cached": cached,
        "measured": measured,
        "calibrated": calibrated,
    }


def too_long(estimates: dict) -> str | None:
    """A one-line warning when the estimated seconds of `estimates` (by group, as from
    `program.plan_estimates`) exceed `LONG_S`, else None."""
    total = sum(e["compile_s"] + e["run_s"] for e in estimates.values())
    if total <= LONG_S:
        return None
    how = "measured" if all(e["measured"] for e in estimates.values()) else "partly guessed"
    return (
        f"coco-jax: this sweep is estimated at {format_seconds(total)} ({how}; --dry-run shows each group); "
        "it starts now"
    )


def format_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
