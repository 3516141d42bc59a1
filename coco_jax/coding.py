"""Gradient codes: allocations and the encoding matrix B.

An allocation says which device holds which data partition: B is [M, K] with
B[m, k] the coefficient of partition k's gradient in device m's coded gradient
g_m = sum_k B[m, k] grad f_k. A decoder turns the set of devices that delivered
into weights w [M] (zero for every straggler) and the server forms

    g_hat = sum_m w_m g_m = sum_k (B^T w)_k grad f_k,

an estimate of (1/K) sum_k grad f_k. Exact recovery means B^T w = (1/K) * 1.

Codes (K = c * M for the deterministic ones; partitions are then grouped into M
consecutive blocks of c, block j = partitions j*c .. j*c+c-1, and the K = M code is
applied to blocks):

- ``uncoded``: device m holds block m (B = I when K = M); needs redundancy 0.
- ``cyclic``: device m holds blocks m, m+1, ..., m+s (mod M).
- ``frc``: fractional repetition (Tandon et al. 2017); (s+1) | M, devices in groups of
  s+1 consecutive devices, group g's devices all hold blocks g(s+1) .. g(s+1)+s.
- ``bernoulli``: stochastic gradient coding (Bitar, Wootters, El Rouayheb 2020);
  B[m, k] ~ Bernoulli((s+1)/K) independently, drawn from a key (once per run).
- ``cyclic_mds``: a cyclic MDS gradient code (Tandon et al. 2017; real BCH /
  negacyclic form, `coco_jax.cyclic_mds`); K = M only. Same support as ``cyclic``
  with real coefficients such that (1, ..., 1) lies in the span of the rows of ANY
  M - s devices. Rows are scaled so that every column sums to s+1 (like ``cyclic``),
  so ``fixed``/``received`` decoders are exact without stragglers.

Exact recovery from every set of <= s stragglers (``optimal`` decoder), verified by
enumerating every straggler set (tests: all M <= 20, s <= 4; `cyclic_mds_analysis`):

- ``cyclic`` (0/1): exactly when (s+1) | M (then one of the s+1 residue classes of
  devices mod s+1 has no straggler and tiles the partitions); when (s+1) does not
  divide M some set of s stragglers cannot be decoded (tests: every M <= 12; checked
  offline for every M <= 14 and for M <= 20 with s <= 4).
- ``frc``: always (defined only for (s+1) | M; every group keeps a device).
- ``cyclic_mds``: always in exact arithmetic; its floating-point error bound and the
  configurations it refuses are in `coco_jax.cyclic_mds`.
- ``uncoded``/``bernoulli``: no guarantee (s = 0; random support).

``Allocation.sample(key, dtype)`` gives B in the run's dtype, by default the widest
float jax holds (a float64 B is the exact code, never a float32-rounded copy; a
float32 B is rounded once from it). Decoders are in `coco_jax.decoders`.

Example:
    >>> alloc = make_allocation("cyclic", 4, 4, 1)
    >>> B = alloc.sample(jax.random.key(0))  # [4, 4]
    >>> B.sum(axis=0).tolist()  # every partition on s + 1 = 2 devices
    [2.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.config import float_dtype_of, static_fields
from coco_jax.errors import ConfigError, fail
from coco_jax.registry import CODES, register_code

DECODER_NAMES: tuple[str, ...] = ("fixed", "received", "optimal")


class Allocation(NamedTuple):
    """A gradient code: how partitions are spread over devices.

    Attributes:
        name: the registered code name.
        num_devices: M.
        num_partitions: K.
        redundancy: s.
        sample: ``sample(key, dtype=None)``: typed key -> B [M, K] in ``dtype``, by
            default the widest float jax holds (float64 where jax x64 is enabled, else
            float32), so that ``sample(key).astype(run_dtype)`` is correct too.
            Deterministic codes ignore the key and round their exact float64 matrix
            once to ``dtype`` (a float64 B is never a float32-rounded copy). Works under
            jit and vmap (an unbatched output is broadcast by vmap).
        random: True for a code whose factory takes `key` (B depends on the run).
        replication: r, the number of devices holding each partition (the common
            column sum of B; for a random code its expectation), used by the fixed and
            received decoders; None when the columns differ (only `optimal` decodes).
        max_load: the most partitions any device can hold (static; K for random codes).
        matrix: float64 B [M, K] of a deterministic code (None for random codes).
    """

    name: str
    num_devices: int
    num_partitions: int
    redundancy: int
    sample: Callable[..., jax.Array]
    random: bool
    replication: float | None
    max_load: int
    matrix: np.ndarray | None = None


# ---------------------------------------------------------------------------------
# deterministic codes in numpy


def _blocks(base: np.ndarray, num_partitions: int) -> np.ndarray:
    """Expand an [M, M] code on blocks to [M, K] on partitions (K = c * M)."""
    c = num_partitions // base.shape[0]
    return np.kron(base, np.ones((1, c), base.dtype))


def _cyclic_support(m_dev: int, s: int) -> np.ndarray:
    """[M, M] 0/1: device m holds m, ..., m+s (mod M)."""
    B = np.zeros((m_dev, m_dev), np.float64)
    for m in range(m_dev):
        for j in range(s + 1):
            B[m, (m + j) % m_dev] = 1.0
    return B


def _frc_support(m_dev: int, s: int) -> np.ndarray:
    """[M, M] 0/1: group g = m // (s+1) holds g(s+1) .. g(s+1)+s."""
    B = np.zeros((m_dev, m_dev), np.float64)
    for m in range(m_dev):
        g = m // (s + 1)
        B[m, g * (s + 1) : (g + 1) * (s + 1)] = 1.0
    return B


# ---------------------------------------------------------------------------------
# the built-in codes (registered like a user's) and building a code


@register_code("uncoded")
def uncoded(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    """Device m holds block m (B = I when K = M); needs redundancy 0."""
    if redundancy != 0:
        fail("redundancy", redundancy, "allocation='uncoded' needs redundancy=0")
    _check_blocks("uncoded", num_devices, num_partitions)
    return _blocks(np.eye(num_devices), num_partitions)


@register_code("cyclic")
def cyclic(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    """Device m holds blocks m, m+1, ..., m+s (mod M)."""
    _check_blocks("cyclic", num_devices, num_partitions)
    return _blocks(_cyclic_support(num_devices, redundancy), num_partitions)


@register_code("frc")
def frc(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    """Fractional repetition: groups of s+1 consecutive devices hold the same s+1 blocks."""
    if num_devices % (redundancy + 1) != 0:
        fail(
            "redundancy",
            redundancy,
            f"allocation='frc' needs (redundancy+1) to divide num_devices={num_devices}",
        )
    _check_blocks("frc", num_devices, num_partitions)
    return _blocks(_frc_support(num_devices, redundancy), num_partitions)


def _bernoulli_replication(num_devices: int, num_partitions: int, redundancy: int) -> float:
    return num_devices * (redundancy + 1) / num_partitions


@register_code("bernoulli", replication=_bernoulli_replication)
def bernoulli(num_devices: int, num_partitions: int, redundancy: int, key: jax.Array) -> jax.Array:
    """Stochastic gradient coding: B[m, k] ~ Bernoulli((s+1)/K), drawn once per run."""
    if redundancy + 1 > num_partitions:
        fail(
            "redundancy",
            redundancy,
            f"allocation='bernoulli' needs redundancy+1 <= num_partitions={num_partitions}",
        )
    prob = (redundancy + 1) / num_partitions
    return jax.random.bernoulli(key, prob, (num_devices, num_partitions)).astype(jnp.float32)


def _check_blocks(name: str, m_dev: int, k_parts: int) -> None:
    if k_parts % m_dev != 0:
        fail("num_partitions", k_parts, f"allocation={name!r} needs a multiple of num_devices={m_dev}")


def _check_int(field: str, value, low: int, high: int | None = None, what: str | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(field, value, "must be an integer")
    if value < low or (high is not None and value > high):
        fail(field, value, what or f"must be >= {low}")


def make_allocation(
    name: str, num_devices: int, num_partitions: int, redundancy: int, fields: dict | None = None
) -> Allocation:
    """Build the registered code `name` for M devices, K partitions, redundancy s.

    Args:
        name: a registered code (`coco_jax.registry.CODES`).
        num_devices: M >= 1.
        num_partitions: K >= 1.
        redundancy: s, 0 <= s < M.
        fields: static config fields the factory may ask for by name (e.g. decoder).

    Raises:
        ConfigError: naming the field (allocation, num_devices, num_partitions,
            redundancy, ...), its value and what is allowed, or the code whose
            factory returned something that is not an [M, K] matrix.
    """
    entry = CODES.entry(name)
    _check_int("num_devices", num_devices, 1)
    _check_int("num_partitions", num_partitions, 1)
    m_dev, k_parts = int(num_devices), int(num_partitions)
    _check_int("redundancy", redundancy, 0, m_dev - 1, f"must satisfy 0 <= redundancy < num_devices={m_dev}")
    s = int(redundancy)
    random = "key" in inspect.signature(entry.factory).parameters
    provided = {"num_devices": m_dev, "num_partitions": k_parts, "redundancy": s, "key": None}
    args = CODES.arguments(name, provided, fields or {})
    args.pop("key", None)
    return _allocation(name, entry.serial, m_dev, k_parts, s, random, tuple(sorted(args.items())))


@functools.lru_cache(maxsize=256)
def _allocation(
    name: str, serial: int, m_dev: int, k_parts: int, s: int, random: bool, args: tuple
) -> Allocation:
    """The code `name` (cached on its registration serial and factory arguments)."""
    del serial  # part of the cache key only
    entry = CODES.entry(name)
    kwargs = dict(args)
    if random:
        rep = entry.option("replication")

        def sample_random(key: jax.Array, dtype=None) -> jax.Array:
            return jnp.asarray(entry.factory(**kwargs, key=key)).astype(float_dtype_of(dtype))  # [M, K]

        out = jax.eval_shape(lambda: sample_random(jax.random.key(0)))  # traced: nothing runs
        if out.shape != (m_dev, k_parts):
            fail(
                "allocation",
                name,
                f"its factory returned B of shape {out.shape}, must be (M, K) = ({m_dev}, {k_parts})",
            )
        replication = None if rep is None else float(rep(m_dev, k_parts, s))
        return Allocation(name, m_dev, k_parts, s, sample_random, True, replication, k_parts, None)
    B = _checked_matrix(name, entry, kwargs, (m_dev, k_parts))
    sums = B.sum(axis=0)
    # the common column sum (float round-off of a real-valued code removed)
    replication = float(np.round(sums.mean(), 9)) if np.allclose(sums, sums[0], rtol=1e-9, atol=0) else None
    max_load = int((B != 0).sum(axis=1).max())

    rounded = {np.dtype(np.float64): B}

    def sample_fixed(key: jax.Array, dtype=None) -> jax.Array:
        del key
        dt = np.dtype(float_dtype_of(dtype))
        if dt not in rounded:  # rounded once from the float64 matrix (never via float32)
            rounded[dt] = B.astype(dt)
            rounded[dt].setflags(write=False)
        return jnp.asarray(rounded[dt])  # [M, K]

    return Allocation(name, m_dev, k_parts, s, sample_fixed, False, replication, max_load, B)


def _checked_matrix(name: str, entry, kwargs: dict, shape: tuple[int, int]) -> np.ndarray:
    """The factory's B as a read-only float64 [M, K] array; a clear error otherwise."""
    out = CODES.call(entry, kwargs)
    if isinstance(out, jax.Array):
        out = np.asarray(out)
    if not isinstance(out, np.ndarray):
        raise ConfigError(
            f"code {name!r}: the factory returned {type(out).__name__}, must return a numpy array B [M, K]"
        )
    if out.shape != shape:
        raise ConfigError(
            f"code {name!r}: the factory returned B of shape {out.shape}, must be (M, K) = {shape}"
        )
    if not (np.issubdtype(out.dtype, np.number) or out.dtype == bool):
        raise ConfigError(f"code {name!r}: B has dtype {out.dtype}, must be numeric")
    B = out.astype(np.float64)
    if not np.all(np.isfinite(B)):
        raise ConfigError(f"code {name!r}: B has non-finite entries")
    empty = np.flatnonzero(~(B != 0).any(axis=0))
    if empty.size:
        raise ConfigError(
            f"code {name!r}: partitions {empty.tolist()[:8]} are held by no device (all-zero columns of B)"
        )
    B.setflags(write=False)
    return B


def allocation_of(cfg) -> Allocation:
    """The code of a configuration (factory arguments from its static fields)."""
    return make_allocation(
        cfg.allocation, cfg.num_devices, cfg.num_partitions_resolved, cfg.redundancy, dict(static_fields(cfg))
    )


@CODES.add_config_check
def check_code(cfg) -> None:
    """Config-time check of the code: build it (its factory checks M, K and s)."""
    allocation_of(cfg)
