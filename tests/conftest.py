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


# ------------------------------------------------------------------ registries


def _registries():
    from coco_jax import registry

    return registry.ALL


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
