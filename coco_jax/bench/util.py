"""Clock, blocking, summary statistics and JSON helpers shared by the sections."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np


def now() -> float:
    return time.perf_counter()


def block_ready(x):
    return jax.block_until_ready(x)


def median_spread(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def time_call(fn, *args) -> float:
    t0 = now()
    block_ready(fn(*args))
    return now() - t0


def json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
