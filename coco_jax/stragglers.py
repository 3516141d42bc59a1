"""Straggler models: which devices fail to deliver at each step, and how long a step takes.

A model is a pair of pure functions over a (possibly empty) state pytree, written for
one configuration; the engine vmaps them over a sweep's `HParams`:

    state = model.init(key, hp)
    straggles, step_time, state = model.sample(key, state, hp, load, trace_row)

with ``straggles`` [M] bool (True = the device straggles), ``step_time`` a float32
scalar (simulated wall-clock of the step) and ``load`` [M] the number of partitions
each device holds (row sums of B). ``model.marginal_rate(hp)`` is the nominal
per-device straggling probability [M] that the ``fixed`` decoder divides by.

Models (all but ``latency`` take one time unit of compute per step, plus the upload
time u of a message when ``upload_bandwidth`` is set: step_time = 1 + u):

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
- ``latency``: shifted exponential compute times (standard in coded computing) plus a
  load-independent delay: time_m = load_m * (latency_shift + Exp(latency_rate)) +
  Exp(1/latency_fixed), Exp(r) of mean 1/r (the delay is 0 when latency_fixed = 0).
  The first part grows with the partitions a device holds (the cost of redundancy),
  the second does not (interference, network: what redundancy protects against). A
  message arrives at arrival_m = time_m + u, u = bits per message / upload_bandwidth.
  Deadline mode: devices with arrival_m > ``deadline`` straggle; the step takes the
  deadline if anyone straggles, else the last arrival. Rate P(arrival_m > deadline)
  = P(Y > y) with y = deadline - u - load_m shift and Y = Exp(rate/load_m) +
  Exp(1/latency_fixed): exp(-l1 y) (1 + l1 y phi((l2 - l1) y)), l1 = rate/load_m,
  l2 = 1/latency_fixed, phi(x) = (1 - e^-x)/x (exp(-l1 y) when latency_fixed = 0; 1
  when y <= 0; 0 for a device with load 0). Wait mode (``wait_mode=True``): the
  server waits for the ``wait_for`` = n first arrivals; the M - n last straggle (ties
  broken by index: the higher index is later) and the step takes the n-th arrival;
  nominal rate (M - n) / M for every device under equal loads, and under unequal
  loads a seeded Monte-Carlo estimate of each device's rate (`wait_mode_rates`), so
  the fixed decoder stays unbiased.
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

from coco_jax.errors import ConfigError, fail
from coco_jax.registry import STRAGGLER_MODELS, Entry, register_straggler_model


class StragglerModel(NamedTuple):
    """A straggler model (see the module docstring); what a straggler factory returns.

    Attributes:
        init: (key, hp) -> state pytree (``()`` for stateless models).
        sample: (key, state, hp, load [M] or None, trace_row [M] bool or None)
            -> (straggles [M] bool, step_time float32 scalar, new_state).
        marginal_rate: (hp, load=None) -> [M] nominal straggling probability per
            device (what the ``fixed`` decoder divides by).
        name: registry name (filled in from the registration when None).
        upload_aware: False (default): the engine adds the upload time u of a message
            to ``step_time``. True: the model times uploads itself and takes u as a
            last argument of ``sample(..., upload_time)`` and
            ``marginal_rate(hp, load, upload_time)`` (a deadline then acts on arrival
            times).
    """

    init: Callable[[jax.Array, Any], Any]
    sample: Callable[
        [jax.Array, Any, Any, jax.Array | None, jax.Array | None], tuple[jax.Array, jax.Array, Any]
    ]
    marginal_rate: Callable[..., jax.Array]
    name: str | None = None
    upload_aware: bool = False


def sample_with_upload(model: StragglerModel, key, state, hp, load, trace_row, upload_time):
    """`model.sample` with uploads of ``upload_time`` seconds: passed to an
    upload-aware model, else added to its step time."""
    if model.upload_aware:
        return model.sample(key, state, hp, load, trace_row, upload_time)
    straggles, step_time, state = model.sample(key, state, hp, load, trace_row)
    return straggles, step_time + jnp.asarray(upload_time).astype(step_time.dtype), state


def rate_with_upload(model: StragglerModel, hp, load, upload_time) -> jax.Array:
    """`model.marginal_rate` with uploads of ``upload_time`` seconds (see `sample_with_upload`)."""
    if model.upload_aware:
        return model.marginal_rate(hp, load, upload_time)
    return model.marginal_rate(hp, load)


def _float_dtype(x) -> Any:
    dt = jnp.asarray(x).dtype
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.float32


WAIT_RATE_SAMPLES = 8192  # Monte-Carlo draws of the wait-for-n rates under unequal loads
_WAIT_RATE_SEED = 20260301  # fixed: the rates are a property of the model, not of a run


def wait_mode_rates(hp, load: jax.Array) -> jax.Array:
    """P(device m is among the M − n slowest) [M] when the server waits for the n =
    ``wait_for`` fastest of M devices. Equal loads: exactly (M − n)/M by symmetry.
    Unequal loads (a device holding more partitions is slower, e.g. a bernoulli code):
    a seeded Monte-Carlo estimate over `WAIT_RATE_SAMPLES` draws of the compute times
    (standard error below 0.006), computed once per run inside the program."""
    load = jnp.asarray(load)
    m_dev = load.shape[0]
    dtype = _float_dtype(hp.latency_shift)
    n = jnp.clip(hp.wait_for, 1, m_dev)

    def exact(_):
        return jnp.full((m_dev,), (m_dev - n) / m_dev, dtype)

    def estimate(_):
        keys = jax.random.split(jax.random.key(_WAIT_RATE_SEED), WAIT_RATE_SAMPLES)
        times = jax.vmap(lambda k: latency_times(k, hp, load))(keys)  # [S, M]
        slow = jax.vmap(_ranks)(times) >= n  # [S, M]
        return jnp.mean(slow.astype(dtype), axis=0)

    return jax.lax.cond(jnp.all(load == load[0]), exact, estimate, None)


def _ranks(x: jax.Array) -> jax.Array:
    """Rank of each entry in ascending order (0 = smallest; ties: lower index first)."""
    return jnp.argsort(jnp.argsort(x, stable=True), stable=True)


def latency_times(key: jax.Array, hp, load: jax.Array) -> jax.Array:
    """Per-device compute times [M] of the ``latency`` model for this step's key.

    time_m = load_m * (latency_shift + E_m / latency_rate) + latency_fixed * F_m, with
    E_m ~ Exp(1) drawn from ``key`` and F_m ~ Exp(1) from ``fold_in(key, 1)``, exactly
    as `StragglerModel.sample` draws them (so tests can re-derive them); a device with
    load 0 has time 0.
    """
    load = jnp.asarray(load)
    dtype = _float_dtype(hp.latency_shift)
    expo = jax.random.exponential(key, load.shape, dtype) / hp.latency_rate  # [M]
    delay = jax.random.exponential(jax.random.fold_in(key, 1), load.shape, dtype)  # [M]
    delay = jnp.where(load > 0, hp.latency_fixed * delay, 0.0)  # a device holding nothing has nothing to do
    return load.astype(dtype) * (hp.latency_shift + expo) + delay


def _one_minus_exp_over(x: jax.Array) -> jax.Array:
    """(1 - e^-x) / x, stable at x = 0 (value 1) and for either sign of x."""
    small = jnp.abs(x) < 1e-4
    safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - 0.5 * x, -jnp.expm1(-safe) / safe)


def latency_rate_closed_form(hp, load: jax.Array, upload_time=0.0) -> jax.Array:
    """P(arrival_m > deadline) [M] for the deadline mode of ``latency`` (see the module
    docstring): the tail of a shifted sum of two exponentials."""
    load = jnp.asarray(load)
    dtype = _float_dtype(hp.latency_shift)
    load = load.astype(dtype)
    positive = load > 0
    y = hp.deadline - jnp.asarray(upload_time, dtype) - load * hp.latency_shift  # [M]
    l1 = hp.latency_rate / jnp.where(positive, load, 1.0)  # rate of the load-scaled tail
    c = jnp.asarray(hp.latency_fixed, dtype)
    l2 = 1.0 / jnp.where(c > 0, c, 1.0)
    yp = jnp.maximum(y, 0.0)
    with_delay = jnp.exp(-l1 * yp) * (1.0 + l1 * yp * _one_minus_exp_over((l2 - l1) * yp))
    tail = jnp.where(c > 0, with_delay, jnp.exp(-l1 * yp))
    tail = jnp.where(y > 0, jnp.minimum(tail, 1.0), 1.0)
    return jnp.where(positive, tail, 0.0).astype(dtype)


_ONE = 1.0  # every model but latency takes one time unit per step


def _stateless_init(key, hp):
    del key, hp
    return ()


def _full(hp, value, m_dev: int) -> jax.Array:
    dtype = _float_dtype(hp.straggler_prob)
    return jnp.broadcast_to(jnp.asarray(value, dtype), (m_dev,))


@register_straggler_model("none", exchangeable=True)
def no_stragglers(num_devices: int) -> StragglerModel:
    """Nobody straggles; rate 0."""

    def sample(key, state, hp, load=None, trace_row=None):
        return jnp.zeros((num_devices,), bool), jnp.float32(_ONE), state

    return StragglerModel(_stateless_init, sample, lambda hp, load=None: _full(hp, 0.0, num_devices))


@register_straggler_model("bernoulli", exchangeable=True)
def bernoulli(num_devices: int) -> StragglerModel:
    """Each device independently with probability ``straggler_prob``."""

    def sample(key, state, hp, load=None, trace_row=None):
        u = jax.random.uniform(key, (num_devices,), _float_dtype(hp.straggler_prob))
        return u < hp.straggler_prob, jnp.float32(_ONE), state

    return StragglerModel(
        _stateless_init, sample, lambda hp, load=None: _full(hp, hp.straggler_prob, num_devices)
    )


@register_straggler_model("fixed_count", exchangeable=True)
def fixed_count(num_devices: int) -> StragglerModel:
    """Exactly ``straggler_count`` devices, uniformly at random; rate count / M."""

    def sample(key, state, hp, load=None, trace_row=None):
        u = jax.random.uniform(key, (num_devices,))
        return _ranks(u) < hp.straggler_count, jnp.float32(_ONE), state

    def rate(hp, load=None):
        return _full(hp, hp.straggler_count / num_devices, num_devices)

    return StragglerModel(_stateless_init, sample, rate)


@register_straggler_model("heterogeneous", exchangeable=False)
def heterogeneous(num_devices: int) -> StragglerModel:
    """Device m independently with probability ``straggler_probs[m]``."""

    def sample(key, state, hp, load=None, trace_row=None):
        probs = jnp.broadcast_to(hp.straggler_probs, (num_devices,))
        u = jax.random.uniform(key, (num_devices,), _float_dtype(probs))
        return u < probs, jnp.float32(_ONE), state

    def rate(hp, load=None):
        return jnp.broadcast_to(hp.straggler_probs, (num_devices,))

    return StragglerModel(_stateless_init, sample, rate)


@register_straggler_model("markov", exchangeable=True)
def markov(num_devices: int) -> StragglerModel:
    """Gilbert-Elliott chains started from the stationary law (see the module docstring)."""

    def stationary(hp):
        return hp.markov_p_gb / (hp.markov_p_gb + hp.markov_p_bg)

    def init(key, hp):
        u = jax.random.uniform(key, (num_devices,), _float_dtype(hp.markov_p_gb))
        return u < stationary(hp)  # [M] bool, True = bad

    def sample(key, state, hp, load=None, trace_row=None):
        u = jax.random.uniform(key, (num_devices,), _float_dtype(hp.markov_p_gb))
        bad = jnp.where(state, u >= hp.markov_p_bg, u < hp.markov_p_gb)  # [M]
        return bad, jnp.float32(_ONE), bad

    return StragglerModel(init, sample, lambda hp, load=None: _full(hp, stationary(hp), num_devices))


@register_straggler_model("trace")
def trace(num_devices: int) -> StragglerModel:
    """The given trace row (True = straggles); nominal rate ``straggler_prob``."""

    def sample(key, state, hp, load=None, trace_row=None):
        if trace_row is None:
            fail("straggler_trace", None, "straggler='trace' needs a (steps, M) bool trace")
        row = jnp.asarray(trace_row).astype(bool)
        return jnp.broadcast_to(row, (num_devices,)), jnp.float32(_ONE), state

    return StragglerModel(
        _stateless_init, sample, lambda hp, load=None: _full(hp, hp.straggler_prob, num_devices)
    )


@register_straggler_model("latency", exchangeable="loads")
def latency(
    num_devices: int, loads: tuple[float, ...] | None = None, wait_mode: bool = False
) -> StragglerModel:
    """Shifted-exponential compute times with a deadline, or waiting for the
    ``wait_for`` fastest devices (`wait_mode`); see the module docstring."""
    m_dev = num_devices

    def resolve_load(load):
        if load is not None:
            return jnp.asarray(load)
        if loads is not None:
            return jnp.asarray(loads, jnp.float32)
        return jnp.ones((m_dev,), jnp.float32)

    def arrivals(key, hp, load, upload_time):
        times = latency_times(key, hp, resolve_load(load))  # [M]
        return times + jnp.asarray(upload_time, times.dtype)

    if wait_mode:

        def sample(key, state, hp, load=None, trace_row=None, upload_time=0.0):
            arrival = arrivals(key, hp, load, upload_time)  # [M]
            n = jnp.clip(hp.wait_for, 1, m_dev)
            straggles = _ranks(arrival) >= n
            step_time = jnp.sort(arrival)[n - 1]
            return straggles, step_time.astype(jnp.float32), state

        def rate(hp, load=None, upload_time=0.0):
            del upload_time  # every message takes the same upload time: the order is the compute order
            return wait_mode_rates(hp, resolve_load(load))

    else:

        def sample(key, state, hp, load=None, trace_row=None, upload_time=0.0):
            arrival = arrivals(key, hp, load, upload_time)  # [M]
            straggles = arrival > hp.deadline
            step_time = jnp.where(jnp.any(straggles), hp.deadline, jnp.max(arrival))
            return straggles, step_time.astype(jnp.float32), state

        def rate(hp, load=None, upload_time=0.0):
            return latency_rate_closed_form(hp, resolve_load(load), upload_time)

    return StragglerModel(_stateless_init, sample, rate, upload_aware=True)


def _check_model(model, entry: Entry, args: dict) -> StragglerModel:
    if not isinstance(model, StragglerModel):
        raise ConfigError(
            f"straggler model {entry.name!r}: the factory returned {type(model).__name__}, must return "
            "cj.StragglerModel(init=..., sample=..., marginal_rate=...)"
        )
    for part in ("init", "sample", "marginal_rate"):
        if not callable(getattr(model, part)):
            raise ConfigError(f"straggler model {entry.name!r}: {part} is not callable")
    return model._replace(name=model.name or entry.name)


STRAGGLER_MODELS.check = _check_model


def make_straggler_model(
    name: str,
    num_devices: int,
    *,
    wait_mode: bool = False,
    loads: np.ndarray | None = None,
    fields: dict | None = None,
) -> StragglerModel:
    """Build the registered straggler model ``name`` for M = ``num_devices`` devices.

    Args:
        name: a registered straggler model (`coco_jax.registry.STRAGGLER_MODELS`).
        num_devices: M.
        wait_mode: ``latency`` only: wait for the ``hp.wait_for`` fastest devices
            instead of a deadline (a code path, so static).
        loads: static [M] partitions per device (``latency`` uses them in
            ``marginal_rate`` and in ``sample`` when it gets ``load=None``). For a
            random code (bernoulli B) pass the sampled row sums instead.
        fields: static config fields the factory may ask for by name.

    Raises:
        ConfigError: unknown name (field ``straggler``), bad ``loads`` shape.
    """
    STRAGGLER_MODELS.entry(name)
    m_dev = int(num_devices)
    if m_dev < 1:
        fail("num_devices", num_devices, "must be >= 1")
    if wait_mode and name != "latency":
        fail("wait_for", "set", "is only used with straggler='latency'")
    static_loads = None
    if loads is not None:
        arr = np.asarray(loads, np.float64)
        if arr.shape != (m_dev,):
            fail("loads", arr.shape, f"must have shape ({m_dev},)")
        static_loads = tuple(float(x) for x in arr)
    provided = {"num_devices": m_dev, "loads": static_loads, "wait_mode": bool(wait_mode)}
    return STRAGGLER_MODELS.build(name, provided, fields or {})
