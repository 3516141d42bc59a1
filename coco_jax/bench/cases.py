"""The benchmark cases, identical on the engine and the NumPy side: data, straggler trace,
code, decoder weights, configuration and the FLOP model of a step."""

from __future__ import annotations

import math

import numpy as np

from coco_jax.bench.plan import COMPRESS_RATIO, DATA_SEED, LR, MAX_X_BYTES, ROWS, STRAGGLER_PROB
from coco_jax.coding import make_allocation
from coco_jax.config import ExperimentConfig, resolve_k
from coco_jax.decoders import decode_weights as engine_weights


def rows_per_partition(m: int, d: int, rows: int = ROWS, max_x_bytes: int = MAX_X_BYTES) -> int:
    """`rows` rows per partition, halved while X = [M * n_k, d] float32 exceeds the cap."""
    n_k = rows
    while n_k > 1 and m * n_k * d * 4 > max_x_bytes:
        n_k //= 2
    return n_k


def compress_k(d: int) -> int:
    """k of top-k 1% (the engine's rule, `config.resolve_k`)."""
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
    return make_allocation("cyclic" if s > 0 else "uncoded", m, m, s).matrix.astype(np.float32)


def decode_weights(m: int, s: int, p: float = STRAGGLER_PROB) -> np.ndarray:
    """The engine's fixed decoder with nobody straggling, w_m = 1/(K (1-p) (s+1)) (the
    step zeroes the stragglers' weights)."""
    return np.asarray(engine_weights("fixed", code_matrix(m, s), np.zeros(m, bool), np.full(m, p), s + 1.0))


def model_flops(task: str, m: int, d: int, n_k: int, s: int) -> float:
    """FLOPs of one step counted for the roofline: the partition gradients (X θ and
    Xᵀ r: 2 multiply-adds per element of X, 4 N d), the encode ((s+1) M d
    multiply-adds) and the error-feedback / decode arithmetic (about 4 M d); top-k
    comparisons and the sigmoid of logreg are not counted."""
    n = m * n_k
    return 4.0 * n * d + 2.0 * (s + 1) * m * d + 4.0 * m * d


def engine_config(task: str, m: int, s: int, steps: int, straggler: str = "trace", **changes):
    """The benchmark's COCO-EF configuration (eval_every = steps)."""
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
