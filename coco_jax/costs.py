"""What a sweep will cost, before it runs: compile and run seconds per group.

Every compiled sweep program is recorded (a line of JSON in `timings.jsonl` beside the
persistent compilation cache): its fingerprint (a hash of the lowered programs), its
size (lines of StableHLO), its FLOPs (XLA's cost analysis of the lowered chunk
program), the seconds it took to compile and, once it ran, the seconds per
configuration-step. `estimate` lowers a group's programs (cheap: no XLA compilation)
and predicts:

- compile seconds: ~0 when the same program is in the cache (its fingerprint was
  recorded in this cache directory), else size x the median seconds per line measured
  on this machine (a default until a few programs were measured);
- run seconds: configuration-steps x FLOPs per configuration-step / the median rate
  measured on this machine (a default rate until calibrated).

Estimates are rough (a factor of two either way); `--dry-run` prints them per group.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
DEFAULT_S_PER_LINE = 2.5e-3  # compile seconds per StableHLO line (measured on the 2-core CPU)
DEFAULT_FLOPS_PER_S = 1e9  # run rate before calibration
CACHED_S = 0.05  # reading a program back from the persistent cache
_lock = threading.Lock()
_memory: list[dict] = []  # records of this process (also when the cache is off)


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """A lowered group's size and work: `fingerprint`, `lines` of StableHLO (init and
    chunk), `flops` of one chunk-program step for the whole batch."""

    fingerprint: str
    lines: int
    flops: float


def program_cost(init_lowered, chunk_lowered) -> ProgramCost:
    """Size and work of a group's lowered init and chunk programs."""
    text = init_lowered.as_text() + chunk_lowered.as_text()
    meta = f"{jax.__version__}|{jax.default_backend()}"
    fingerprint = hashlib.sha256((meta + text).encode()).hexdigest()[:24]
    flops = 0.0
    with contextlib.suppress(Exception):  # not every backend implements cost analysis
        analysis = chunk_lowered.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        flops = float(analysis.get("flops", 0.0))
    return ProgramCost(fingerprint, text.count("\n"), flops)


def _path() -> pathlib.Path | None:
    d = cache_dir()
    return pathlib.Path(d) / TIMINGS if d else None


def _records() -> list[dict]:
    out = list(_memory)
    path = _path()
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def record(cost: ProgramCost, **measured) -> None:
    """Append a measurement of a program (compile_s=..., or run_s=... with
    config_steps=...) to this machine's timings."""
    entry = {
        "fingerprint": cost.fingerprint,
        "lines": cost.lines,
        "flops": cost.flops,
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


def estimate(cost: ProgramCost, config_steps: int, batch: int) -> dict:
    """{"compile_s", "run_s", "cached", "calibrated"} of a lowered group that runs
    `config_steps` configuration-steps in batches of `batch`."""
    records = _records()
    compiled = [r for r in records if "compile_s" in r and r.get("lines")]
    ran = [r for r in records if "run_s" in r and r.get("flops") and r.get("config_steps")]
    cached = cache_dir() is not None and any(r["fingerprint"] == cost.fingerprint for r in compiled)
    per_line = (
        float(np.median([r["compile_s"] / r["lines"] for r in compiled])) if len(compiled) >= 3 else None
    )
    rates = [
        r["flops"] / max(r.get("batch", 1), 1) * r["config_steps"] / r["run_s"] for r in ran if r["run_s"] > 0
    ]
    rate = float(np.median(rates)) if len(rates) >= 3 else None
    flops_per_config_step = cost.flops / max(batch, 1)
    return {
        "compile_s": CACHED_S if cached else cost.lines * (per_line or DEFAULT_S_PER_LINE),
        "run_s": config_steps * flops_per_config_step / (rate or DEFAULT_FLOPS_PER_S),
        "cached": cached,
        "calibrated": per_line is not None and rate is not None,
    }
