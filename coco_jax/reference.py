"""Plain NumPy references of the COCO-EF iteration, written the way papers' code is:

* `loop_step`: a Python loop over devices (and over each device's partitions).
* `vectorized_step`: the same arithmetic batched over devices, no Python loop.

They cover full-batch linreg/logreg, top-k or identity compression, error feedback on
or off, and any encoding matrix and decoding weights. Tests check them against the
engine (straggler='trace' makes the runs deterministic), and the benchmarks time them.

Also the constants of a configuration's objective computed from its data in float64:
`optimum` (F*) and `smoothness` (L̂, a smoothness constant of F, for step sizes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib

import numpy as np
from scipy import optimize, special

from coco_jax import data as data_lib
from coco_jax.cache import cache_dir
from coco_jax.config import DATASET_FIELDS, LINEAR_TASKS, ExperimentConfig
from coco_jax.errors import ConfigError
from coco_jax.fileio import write_json
from coco_jax.partition import truncate_to_multiple

CONVEX_TASKS = LINEAR_TASKS  # linear models with a convex loss: F* is well defined
# The fields F* depends on: the dataset and the rows kept (truncated to a multiple of K).
DATA_FIELDS_OF_OPTIMUM = (*DATASET_FIELDS, "num_devices", "num_partitions")


def partition_gradient(task: str, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇f_k(θ) of one partition: linreg (1/2n)‖Xθ − y‖², logreg mean log-loss."""
    z = x @ theta
    if task == "linreg":
        return x.T @ (z - y) / x.shape[0]
    return x.T @ (1.0 / (1.0 + np.exp(-z)) - y) / x.shape[0]


def full_loss(task: str, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ theta
    if task == "linreg":
        return float(0.5 * np.mean((z - y) ** 2))
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _topk_mask(a: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries of each row of a [..., d] (ties: lowest index
    first, as lax.top_k). O(d) per row: `np.partition` finds the k-th largest value τ;
    entries > τ are kept and, only when τ is tied across the cut, the first tied ones."""
    d = a.shape[-1]
    if k >= d:
        return np.ones(a.shape, bool)
    tau = np.partition(a, d - k, axis=-1)[..., d - k : d - k + 1]  # k-th largest, [..., 1]
    mask = a >= tau
    extra = mask.sum(axis=-1, keepdims=True) - k  # > 0 only where τ is tied across the cut
    if np.any(extra > 0):
        gt = a > tau
        eq = mask & ~gt
        need = k - gt.sum(axis=-1, keepdims=True)
        mask = gt | (eq & (np.cumsum(eq, axis=-1) <= need))
    return mask


def topk(v: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest |v_i| (ties: lowest index first, as lax.top_k)."""
    return np.where(_topk_mask(np.abs(v), k), v, np.zeros((), v.dtype))


def loop_step(task, theta, errors, xp, yp, b, straggles, weights, k, lr, use_ef):
    """One iteration with a Python loop over devices. Returns (θ, errors)."""
    m_dev, k_parts = b.shape
    g_hat = np.zeros_like(theta)
    for m in range(m_dev):
        if straggles[m]:
            continue
        g = np.zeros_like(theta)
        for kk in range(k_parts):
            if b[m, kk] != 0:
                g += b[m, kk] * partition_gradient(task, theta, xp[kk], yp[kk])
        v = g + errors[m] if use_ef else g
        c = v if k is None else topk(v, k)
        if use_ef:
            errors[m] = v - c
        g_hat += weights[m] * c
    return theta - lr * g_hat, errors


def _topk_rows(v: np.ndarray, k: int) -> np.ndarray:
    """`topk` of every row of v [M, d]."""
    return topk(v, k)


def vectorized_step(task, theta, errors, xp, yp, b, straggles, weights, k, lr, use_ef):
    """The same iteration batched over partitions and devices. Returns (θ, errors)."""
    z = xp @ theta  # [K, n]  (batched BLAS matrix-vector products)
    r = z - yp if task == "linreg" else 1.0 / (1.0 + np.exp(-z)) - yp
    grads = (r[:, None, :] @ xp)[:, 0] / xp.shape[1]  # [K, d]
    coded = b @ grads  # [M, d]
    v = coded + errors if use_ef else coded
    c = v if k is None else _topk_rows(v, k)
    sent = ~straggles
    if use_ef:
        errors = np.where(sent[:, None], v - c, errors)
    g_hat = (weights * sent) @ c
    return theta - lr * g_hat, errors


def reference_run(step_fn, task, x, y, b, trace, weights, k, lr, use_ef):
    """Run `step_fn` over a straggler trace [steps, M]; weights [steps, M].

    Returns (final θ, losses at steps 0..steps on the whole training set).
    """
    k_parts = b.shape[1]
    xp = x.reshape(k_parts, -1, x.shape[1])
    yp = y.reshape(k_parts, -1)
    theta = np.zeros(x.shape[1], x.dtype)
    errors = np.zeros((b.shape[0], x.shape[1]), x.dtype)
    losses = [full_loss(task, theta, x, y)]
    for t in range(trace.shape[0]):
        theta, errors = step_fn(task, theta, errors, xp, yp, b, trace[t], weights[t], k, lr, use_ef)
        losses.append(full_loss(task, theta, x, y))
    return theta, np.asarray(losses)


def gradient_descent(x, y, lr: float, steps: int, momentum: float | None = None) -> np.ndarray:
    """Full-batch gradient descent on linreg from θ = 0 (heavy ball with `momentum`:
    u <- β u + ∇F, θ <- θ - lr u), in float64: the ideal every method is checked against."""
    theta = np.zeros(x.shape[1])
    buf = np.zeros_like(theta)
    for _ in range(steps):
        g = x.T @ (x @ theta - y) / x.shape[0]
        if momentum is not None:
            buf = momentum * buf + g
            g = buf
        theta = theta - lr * g
    return theta


@functools.lru_cache(maxsize=64)
def optimum(fields: tuple) -> float | None:
    """F* = min_θ F(θ) on a configuration's whole training set in float64 (linreg: least
    squares; logreg, softmax: L-BFGS to gradient 1e-12), from its data fields
    (`DATA_FIELDS_OF_OPTIMUM` as (name, value) pairs); None for a non-convex task.
    Cached per dataset, in this process and beside the persistent compilation cache
    (a deterministic function of the data: redrawing figures does not solve it again)."""
    if dict(fields).get("task") not in CONVEX_TASKS:
        return None
    key = json.dumps([[k, v] for k, v in fields], default=str)
    path = pathlib.Path(cache_dir()) / "optimum.json" if cache_dir() else None
    known = {}
    if path is not None and path.is_file():
        with contextlib.suppress(ValueError, OSError):
            known = json.loads(path.read_text())
    if key in known:
        return float(known[key])
    value = _solve_optimum(fields)
    if path is not None and value is not None:
        with contextlib.suppress(OSError):
            write_json(path, {**known, key: value})
    return value


def _solve_optimum(fields: tuple) -> float | None:
    values = dict(fields)
    if values.get("task") not in CONVEX_TASKS:
        return None
    cfg = ExperimentConfig(**values)
    return _minimum(cfg.task, truncate_to_multiple(data_lib.load_dataset(cfg), cfg.num_partitions_resolved))


def optimum_of_data(task: str, x, y) -> float | None:
    """F* = min_θ F(θ) in float64 on user arrays (as `cj.run(cfg, data=(x, y))`
    trains on them: every row); None for a non-convex task."""
    if task not in CONVEX_TASKS:
        return None
    return _minimum(task, data_lib.from_arrays(np.asarray(x), np.asarray(y), task))


def _minimum(task: str, ds) -> float:
    """min_θ F(θ) of a linear task on the training rows of `ds`, in float64."""
    x, y = _float64_rows(ds), ds.y_train
    n, d = x.shape
    if task == "linreg":
        theta, *_ = np.linalg.lstsq(x, y.astype(np.float64), rcond=None)
        r = x @ theta - y
        return float(0.5 * np.mean(r * r))
    if task == "logreg":
        yf = y.astype(np.float64)

        def fg(t):
            z = x @ t
            return np.mean(np.logaddexp(0.0, z) - yf * z), x.T @ (special.expit(z) - yf) / n

        t0 = np.zeros(d)
    else:
        c = ds.num_classes
        onehot = np.eye(c)[y]

        def fg(t):
            z = x @ t.reshape(d, c)
            logp = z - special.logsumexp(z, axis=1, keepdims=True)
            return -np.mean(np.sum(onehot * logp, axis=1)), (x.T @ (np.exp(logp) - onehot) / n).ravel()

        t0 = np.zeros(d * c)
    res = optimize.minimize(
        fg, t0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-12, "ftol": 0}
    )
    return float(res.fun)


def _float64_rows(ds) -> np.ndarray:
    """The training rows of a dataset as X [n, d] in float64 (images flattened)."""
    return ds.x_train.astype(np.float64).reshape(ds.x_train.shape[0], -1)


@functools.lru_cache(maxsize=64)
def _smoothness(fields: tuple) -> float:
    cfg = ExperimentConfig(**dict(fields))
    x = _float64_rows(truncate_to_multiple(data_lib.load_dataset(cfg), cfg.num_partitions_resolved))
    n, d = x.shape
    gram = x.T @ x if d <= n else x @ x.T  # same nonzero eigenvalues, the smaller matrix
    lam = float(np.linalg.eigvalsh(gram)[-1])  # λ_max(XᵀX)
    factor = {"linreg": 1.0, "logreg": 0.25, "softmax": 0.5}[cfg.task]
    return factor * lam / n


def smoothness(cfg: ExperimentConfig) -> float:
    """L̂: a smoothness constant of F (‖∇²F(θ)‖ ≤ L̂ for every θ) computed in float64
    from the configuration's training rows (X [n, d], the rows the run trains on).

    - linreg, F = (1/2n)‖Xθ − y‖²: ∇²F = XᵀX/n, so L̂ = λ_max(XᵀX)/n (exact).
    - logreg, F = mean log-loss: ∇²F = Xᵀ diag(σ(1 − σ)) X / n with σ(1 − σ) ≤ 1/4, so
      L̂ = λ_max(XᵀX)/(4n) (attained at θ = 0, where every σ = 1/2).
    - softmax with C classes, F(Θ) = mean cross-entropy of Θᵀx: ∇²F = (1/n) Σ_i
      (diag(p_i) − p_i p_iᵀ) ⊗ x_i x_iᵀ. For a unit vector v, vᵀ(diag(p) − ppᵀ)v is the
      variance of a variable taking the value v_j with probability p_j, at most
      (max_j v_j − min_j v_j)²/4 ≤ (v_a² + v_b²)/2 ≤ 1/2 (Popoviciu), so
      ∇²F ⪯ (1/2n) I ⊗ XᵀX and L̂ = λ_max(XᵀX)/(2n) (attained for C = 2 at Θ = 0;
      an upper bound, up to C/2 times the constant at Θ = 0, otherwise).

    1/L̂ is the classical step of gradient descent (the best constant step for a
    quadratic's largest curvature; steps above 2/L̂ diverge on linreg). The COCO-EF
    paper's analysis is not available here beyond its abstract (arXiv 2603.16353), so
    no step it prescribes is offered: tune around 1/L̂ instead (`coco_jax.tuning.lr_grid`).

    Raises:
        ConfigError: a task without a closed-form constant (mlp, cnn, registered models).
    """
    if cfg.task not in CONVEX_TASKS:
        raise ConfigError(
            f"task={cfg.task!r} has no computable smoothness constant: smoothness() is defined for "
            f"{', '.join(CONVEX_TASKS)}; give step-size candidates by hand for networks"
        )
    return _smoothness(tuple((f, getattr(cfg, f)) for f in DATA_FIELDS_OF_OPTIMUM))
