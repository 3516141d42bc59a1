"""Shared test fixtures: small data sets and configurations, the environment of a
subprocess that runs this checkout, and registries that every test leaves as it
found them.

Plain functions (`small_base`, `linreg_data`, `subprocess_env`) are also importable
from scripts that run outside pytest (tests/sweep_helper.py); tests use the fixtures
of the same names.

The persistent compilation cache (coco_jax/cache.py) goes to a fresh directory per
test session, so the suite never reads or fills the user's cache and starts cold,
while the subprocesses a test starts (which inherit the environment) reuse what the
session compiled.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

os.environ.setdefault("COCO_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="coco-jax-test-xla-"))

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ data and configs


def linreg_data(n: int = 48, d: int = 6, seed: int = 0, noise: float = 0.1):
    """Gaussian rows X [n, d] and y = X w + noise·ε (float32), seeded."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = x @ rng.normal(size=d)
    if noise:
        y = y + noise * rng.normal(size=n)
    return x, y.astype(np.float32)


def small_base(**over):
    """A tiny linreg configuration (M = 4, d = 8, 6 steps): a few ms per run on a CPU."""
    import coco_jax as cj

    fields = {
        "task": "linreg",
        "num_devices": 4,
        "num_samples": 64,
        "num_test": 16,
        "num_features": 8,
        "steps": 6,
        "eval_every": 2,
    }
    fields.update(over)
    return cj.ExperimentConfig(**fields)


def subprocess_env(devices: int = 1) -> dict:
    """Environment of a Python subprocess that imports this checkout's coco_jax on CPU
    with `devices` host devices (and no jax.distributed variables inherited)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


@pytest.fixture(name="linreg_data", scope="session")
def _linreg_data_fixture():
    """`linreg_data(n=48, d=6, seed=0, noise=0.1)` -> (X, y)."""
    return linreg_data


@pytest.fixture(name="small_base", scope="session")
def _small_base_fixture():
    """`small_base(**overrides)` -> a tiny linreg ExperimentConfig."""
    return small_base


@pytest.fixture(name="subprocess_env", scope="session")
def _subprocess_env_fixture():
    """`subprocess_env(devices=1)` -> the environment of a subprocess running this checkout."""
    return subprocess_env


# ------------------------------------------------------------------ float tolerances
#
# Every float tolerance in the suite follows from the dtype and the operation, so that
# the suite holds on any CPU (SIMD width, FMA, XLA:CPU threads and fusion change the
# order of float additions, never these bounds). The model (Higham, "Accuracy and
# Stability of Numerical Algorithms", 2nd ed., 2002): with u = eps/2 the unit
# roundoff, one rounding gives fl(x op y) = (x op y)(1 + d), |d| <= u; a sum or dot
# product of n terms, added in ANY order, with or without fused multiply-adds, has
#     |fl(sum_i x_i y_i) - sum_i x_i y_i| <= gamma_n sum_i |x_i y_i|,
#     gamma_n = n u / (1 - n u)                                  (Higham (3.4), Lemma 3.1)
# and products of (1 + d_i) compose: (1 + gamma_a)(1 + gamma_b) <= 1 + gamma_(a+b).
# Adding an exact zero is exact, so n counts the nonzero terms. A float64 reference
# computed from the float32 inputs carries its own (float64) gamma_n, added in.


def unit_roundoff(dtype=np.float32) -> float:
    """u = eps/2 of ``dtype`` (2^-24 for float32, 2^-53 for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def gamma(n, dtype=np.float32):
    """Higham's gamma_n = n u / (1 - n u) (elementwise for an array ``n``)."""
    nu = np.asarray(n, np.float64) * unit_roundoff(dtype)
    assert np.all(nu < 1), "gamma_n needs n u < 1"
    return nu / (1.0 - nu)


def sum_tolerance(terms, dtype=np.float32, axis=-1):
    """Bound on |computed - exact| for a ``dtype`` sum (or dot product) of ``terms``,
    compared with a float64 reference computed from the same ``dtype`` inputs.

    ``terms``: the exact summands (for a dot product the products x_i y_i), an array
    reduced along ``axis``. Returns (gamma_n(dtype) + gamma_n(float64)) sum_i |t_i|
    with n the number of nonzero terms (Higham (3.4); module comment above). Two
    computations of the same sum in different orders (jit vs eager, vmap vs loop,
    another CPU) differ by at most twice this.
    """
    t = np.abs(np.asarray(terms, np.float64))
    n = np.count_nonzero(t, axis=axis)
    return (gamma(n, dtype) + gamma(n, np.float64)) * t.sum(axis=axis)


def assert_within(actual, desired, tol, err_msg: str = "") -> None:
    """|actual - desired| <= tol elementwise (tol broadcasts: a derived bound per entry).

    ``tol`` must come from an error analysis (`sum_tolerance`, `gamma`, ...), stated
    beside the call."""
    a = np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    diff = np.abs(a - d)
    tol = np.broadcast_to(np.asarray(tol, np.float64), diff.shape)
    bad = ~(diff <= tol)
    if bad.any():
        i = (
            np.unravel_index(int(np.argmax(np.where(bad, diff - tol, -np.inf))), diff.shape)
            if diff.ndim
            else ()
        )
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {diff.size} entries off; worst at {i}: "
            f"actual {a[i]!r}, desired {d[i]!r}, |diff| {diff[i]:.3g} > tol {tol[i]:.3g}"
        )


def min_norm_tolerance(A, target, dtype=np.float32, *, factor: float = 1.0):
    """(w*, tol): the float64 minimum-norm least-squares solution of A w = target and a
    bound on ||w - w*||_2 for weights computed from A rounded to ``dtype`` by an
    SVD-based solve (the `optimal` decoder); ``factor`` = 2 bounds the distance
    between two such computations.

    First-order perturbation theory of minimum-norm least squares (Higham 2002,
    Thm 20.1; Wedin): a solve with normwise backward error p eps ||A|| moves w by at
    most p eps (2 cond + cond^2 ||res|| / (||A|| ||w*||)) ||w*||, cond = sigma_1 /
    sigma_rank, res = A w* - target. p = MDS_SQRT_M_FACTOR sqrt(M) + 1: the calibrated
    backward-error constant of the decoder (coco_jax.cyclic_mds, the sqrt(M) part of
    `decode_error_bound`) and one eps for rounding A. The rank is the number of
    singular values above 1e-10 sigma_1 (float64: zero ones sit near 1e-16 sigma_1)."""
    from coco_jax.cyclic_mds import MDS_SQRT_M_FACTOR

    A = np.asarray(A, np.float64)
    target = np.asarray(target, np.float64)
    ref = np.linalg.pinv(A, rcond=1e-10) @ target if A.size else np.zeros(A.shape[1])
    sv = np.linalg.svd(A, compute_uv=False) if A.size else np.zeros(0)
    if sv.size == 0 or sv[0] == 0:
        return ref, 0.0  # nobody delivers: both sides are exact zeros
    rank = int((sv > 1e-10 * sv[0]).sum())
    cond = sv[0] / sv[rank - 1]
    res = np.linalg.norm(A @ ref - target)
    norm = np.linalg.norm(ref)
    p = MDS_SQRT_M_FACTOR * np.sqrt(max(A.shape)) + 1.0
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if norm == 0:
        return ref, factor * p * eps * cond * res / sv[0]
    return ref, factor * p * eps * (2 * cond + cond**2 * res / (sv[0] * norm)) * norm


# ------------------------------------------------------------------ registries


def _registries():
    from coco_jax import registry

    registry.ensure_builtins()
    return (
        registry.COMPRESSORS,
        registry.CODES,
        registry.FEEDBACKS,
        registry.STRAGGLER_MODELS,
        registry.MODELS,
        registry.PRESETS,
    )


@contextlib.contextmanager
def restored_registries():
    """Inside: register freely. On leaving: every registry holds exactly the names it
    held on entering, and plugin files and experiment modules imported inside are
    forgotten (a later import runs, and registers, again)."""
    from coco_jax import experiment, registry

    saved = [(reg, dict(reg._entries)) for reg in _registries()]
    plugins = dict(registry._PLUGINS)
    loaded = dict(experiment._LOADED)
    try:
        yield
    finally:
        for reg, entries in saved:
            reg._entries.clear()
            reg._entries.update(entries)
        registry._PLUGINS.clear()
        registry._PLUGINS.update(plugins)
        experiment._LOADED.clear()
        experiment._LOADED.update(loaded)


@pytest.fixture(autouse=True)
def _registrations_do_not_leak():
    """The registries are process-global: whatever a test registers (directly, through
    a --plugins file or an experiment module that registers at import) is removed when
    it ends. Names a module-scoped fixture registers (inside its own
    `restored_registries`) stay for that module: it is set up before this snapshot."""
    with restored_registries():
        yield


@pytest.fixture(name="restored_registries", scope="session")
def _restored_registries_fixture():
    """The `restored_registries` context manager, for module-scoped fixtures."""
    return restored_registries
