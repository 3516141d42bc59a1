"""Straggler models: which devices fail to deliver at each step, and how long a step takes.

A model is a pair of pure functions over a (possibly empty) state pytree, written for
one configuration; the engine vmaps them over a sweep's `HParams`:

    state = model.init(key, hp)
    straggles, step_time, state = model.sample(key, state, hp, load, trace_row)

with ``straggles`` [M] bool (True = the device straggles), ``step_time`` a float32
scalar (simulated wall-clock of the step) and ``load`` [M] the number of partitions
each device holds (row sums of B). ``model.marginal_rate(hp)`` is the nominal
per-device straggling probability [M] that the ``fixed`` decoder divides by.

Models (all but ``latency`` take one time unit per step: step_time = 1.0):

- ``none``: nobody straggles; rate 0.
- ``bernoulli``: each device independently with probability ``straggler_prob``.
- ``fixed_count``: exactly ``straggler_count`` devices, uniformly at random; rate
  count / M.
- ``heterogeneous``: device m independently with probability ``straggler_probs[m]``.
- ``markov``: Gilbert-Elliott, one two-state chain per device: good -> bad with
  ``markov_p_gb``, bad -> good with ``markov_p_bg``; a device straggles while bad.
  The initial state is drawn from the stationary law, so every step has the
  stationary rate pi_bad = p_gb / (p_gb + p_bg); a bad burst lasts 1 / p_bg steps on
  average (geometric), a good spell 1 / p_gb.
- ``latency``: shifted exponential compute times (standard in coded computing):
  time_m = load_m * (latency_shift + Exp(latency_rate)), Exp of mean 1/rate.
  Deadline mode: devices with time_m > ``deadline`` straggle; the step takes the
  deadline if anyone straggles, else the slowest time. Rate
  P(time_m > deadline) = exp(-rate (deadline/load_m - shift)) if deadline/load_m >
  shift else 1 (0 for a device with load 0). Wait mode (``wait_mode=True``): the
  server waits for the ``wait_for`` = n fastest devices; the M - n slowest straggle
  (ties broken by index: the higher index is slower) and the step takes the n-th
  smallest time; nominal rate (M - n) / M for every device (exact under equal loads).
- ``trace``: straggles = the given trace row (user array, True = straggles); the
  nominal rate is the user-declared ``straggler_prob``.

Example:
    >>> from coco_jax.config import ExperimentConfig, hparams_of
    >>> hp = jax.tree.map(jnp.asarray, hparams_of(ExperimentConfig(num_devices=4)))
    >>> model = make_straggler_model("bernoulli", 4)
    >>> state = model.init(jax.random.key(0), hp)
    >>> straggles, t, state = model.sample(jax.random.key(1), state, hp, jnp.ones(4), None)
    >>> straggles.shape, float(t)
    ((4,), 1.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.config import STRAGGLERS, ConfigError, HParams

# none, bernoulli, fixed_count, heterogeneous, markov, latency, trace
STRAGGLER_NAMES: tuple[str, ...] = STRAGGLERS


def _fail(field: str, value, allowed: str):
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


class StragglerModel(NamedTuple):
    """A straggler model (see the module docstring).

    Attributes:
        name: one of ``STRAGGLER_NAMES``.
        init: (key, hp) -> state pytree (``()`` for stateless models).
        sample: (key, state, hp, load [M] or None, trace_row [M] bool or None)
            -> (straggles [M] bool, step_time float32 scalar, new_state).
        marginal_rate: (hp, load=None) -> [M] nominal straggling probability per
            device. Only ``latency`` uses ``load`` (default: the static ``loads`` given
            to `make_straggler_model`, else ones).
    """

    name: str
    init: Callable[[jax.Array, HParams], Any]
    sample: Callable[
        [jax.Array, Any, HParams, jax.Array | None, jax.Array | None], tuple[jax.Array, jax.Array, Any]
    ]
    marginal_rate: Callable[..., jax.Array]


def _float_dtype(x) -> Any:
    dt = jnp.asarray(x).dtype
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.float32


def _ranks(x: jax.Array) -> jax.Array:
    """Rank of each entry in ascending order (0 = smallest; ties: lower index first)."""
    return jnp.argsort(jnp.argsort(x, stable=True), stable=True)


def latency_times(key: jax.Array, hp: HParams, load: jax.Array) -> jax.Array:
    """Per-device compute times [M] of the ``latency`` model for this step's key.

    time_m = load_m * (latency_shift + E_m / latency_rate), E_m ~ Exp(1) drawn from
    ``key`` exactly as `StragglerModel.sample` draws them (so tests can re-derive).
    """
    load = jnp.asarray(load)
    dtype = _float_dtype(hp.latency_shift)
    expo = jax.random.exponential(key, load.shape, dtype) / hp.latency_rate  # [M]
    return load.astype(dtype) * (hp.latency_shift + expo)


def latency_rate_closed_form(hp: HParams, load: jax.Array) -> jax.Array:
    """P(time_m > deadline) [M] for the deadline mode of ``latency``."""
    load = jnp.asarray(load)
    dtype = _float_dtype(hp.latency_shift)
    load = load.astype(dtype)
    positive = load > 0
    ratio = hp.deadline / jnp.where(positive, load, 1.0)  # [M]
    excess = ratio - hp.latency_shift
    tail = jnp.where(excess > 0, jnp.exp(-hp.latency_rate * jnp.maximum(excess, 0.0)), 1.0)
    return jnp.where(positive, tail, 0.0).astype(dtype)


def make_straggler_model(
    name: str,
    num_devices: int,
    *,
    wait_mode: bool = False,
    loads: np.ndarray | None = None,
) -> StragglerModel:
    """Build a straggler model for M = ``num_devices`` devices.

    Args:
        name: one of ``STRAGGLER_NAMES``.
        num_devices: M.
        wait_mode: ``latency`` only: wait for the ``hp.wait_for`` fastest devices
            instead of a deadline (a code path, so static).
        loads: ``latency`` only: static [M] partitions per device, used by
            ``marginal_rate`` and by ``sample`` when it gets ``load=None``. For a random
            code (bernoulli B) pass the sampled row sums to ``marginal_rate`` instead.

    Raises:
        ConfigError: unknown name (field ``straggler``), bad ``loads`` shape.
    """
    if name not in STRAGGLER_NAMES:
        _fail("straggler", name, f"must be one of {', '.join(STRAGGLER_NAMES)}")
    m_dev = int(num_devices)
    if m_dev < 1:
        _fail("num_devices", num_devices, "must be >= 1")
    if wait_mode and name != "latency":
        _fail("wait_for", "set", "is only used with straggler='latency'")
    static_loads = None
    if loads is not None:
        static_loads = np.asarray(loads, np.float64)
        if static_loads.shape != (m_dev,):
            _fail("loads", static_loads.shape, f"must have shape ({m_dev},)")

    one = jnp.float32(1.0)

    def stateless_init(key, hp):
        del key, hp
        return ()

    def full(hp, value):
        dtype = _float_dtype(hp.straggler_prob)
        return jnp.broadcast_to(jnp.asarray(value, dtype), (m_dev,))

    if name == "none":

        def sample(key, state, hp, load=None, trace_row=None):
            return jnp.zeros((m_dev,), bool), one, state

        def rate(hp, load=None):
            return full(hp, 0.0)

        return StragglerModel(name, stateless_init, sample, rate)

    if name == "bernoulli":

        def sample(key, state, hp, load=None, trace_row=None):
            u = jax.random.uniform(key, (m_dev,), _float_dtype(hp.straggler_prob))
            return u < hp.straggler_prob, one, state

        def rate(hp, load=None):
            return full(hp, hp.straggler_prob)

        return StragglerModel(name, stateless_init, sample, rate)

    if name == "fixed_count":

        def sample(key, state, hp, load=None, trace_row=None):
            u = jax.random.uniform(key, (m_dev,))
            return _ranks(u) < hp.straggler_count, one, state

        def rate(hp, load=None):
            return full(hp, hp.straggler_count / m_dev)

        return StragglerModel(name, stateless_init, sample, rate)

    if name == "heterogeneous":

        def sample(key, state, hp, load=None, trace_row=None):
            probs = jnp.broadcast_to(hp.straggler_probs, (m_dev,))
            u = jax.random.uniform(key, (m_dev,), _float_dtype(probs))
            return u < probs, one, state

        def rate(hp, load=None):
            return jnp.broadcast_to(hp.straggler_probs, (m_dev,))

        return StragglerModel(name, stateless_init, sample, rate)

    if name == "markov":

        def stationary(hp):
            return hp.markov_p_gb / (hp.markov_p_gb + hp.markov_p_bg)

        def init(key, hp):
            u = jax.random.uniform(key, (m_dev,), _float_dtype(hp.markov_p_gb))
            return u < stationary(hp)  # [M] bool, True = bad

        def sample(key, state, hp, load=None, trace_row=None):
            u = jax.random.uniform(key, (m_dev,), _float_dtype(hp.markov_p_gb))
            bad = jnp.where(state, u >= hp.markov_p_bg, u < hp.markov_p_gb)  # [M]
            return bad, one, bad

        def rate(hp, load=None):
            return full(hp, stationary(hp))

        return StragglerModel(name, init, sample, rate)

    if name == "trace":

        def sample(key, state, hp, load=None, trace_row=None):
            if trace_row is None:
                _fail("straggler_trace", None, "straggler='trace' needs a (steps, M) bool trace")
            row = jnp.asarray(trace_row).astype(bool)
            return jnp.broadcast_to(row, (m_dev,)), one, state

        def rate(hp, load=None):
            return full(hp, hp.straggler_prob)

        return StragglerModel(name, stateless_init, sample, rate)

    # latency
    def resolve_load(load):
        if load is not None:
            return jnp.asarray(load)
        if static_loads is not None:
            return jnp.asarray(static_loads, jnp.float32)
        return jnp.ones((m_dev,), jnp.float32)

    if wait_mode:

        def sample(key, state, hp, load=None, trace_row=None):
            times = latency_times(key, hp, resolve_load(load))  # [M]
            n = jnp.clip(hp.wait_for, 1, m_dev)
            straggles = _ranks(times) >= n
            step_time = jnp.sort(times)[n - 1]
            return straggles, step_time.astype(jnp.float32), state

        def rate(hp, load=None):
            return full(hp, (m_dev - jnp.clip(hp.wait_for, 1, m_dev)) / m_dev)

    else:

        def sample(key, state, hp, load=None, trace_row=None):
            times = latency_times(key, hp, resolve_load(load))  # [M]
            straggles = times > hp.deadline
            step_time = jnp.where(jnp.any(straggles), hp.deadline, jnp.max(times))
            return straggles, step_time.astype(jnp.float32), state

        def rate(hp, load=None):
            return latency_rate_closed_form(hp, resolve_load(load))

    return StragglerModel(name, stateless_init, sample, rate)
