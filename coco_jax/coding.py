"""Gradient codes (allocations, the encoding matrix B) and decoders.

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
- ``cyclic_mds``: Tandon et al. 2017's cyclic MDS code; K = M only. Same support as
  ``cyclic`` with real coefficients such that (1, ..., 1) lies in the row span of
  the rows of ANY M - s devices (see `cyclic_mds_matrix`; numerically well
  conditioned for moderate M, float32 decoding degrades for M in the many tens). Rows are scaled so that every column sums to s+1
  (like ``cyclic``), so ``fixed``/``received`` decoders are exact without stragglers.

Decoders (w_m = 0 for every straggler; r = ``Allocation.replication``):

- ``fixed``: w_m = 1 / (K (1 - p_m) r) with p_m the nominal straggling rate of
  device m. Unbiased: E[B^T w] = (1/K) * 1 (for ``bernoulli`` also over B).
- ``received``: w_m = M / (|S| K r) for m in the set S of non-stragglers (0 if S empty).
- ``optimal``: minimum-norm least-squares w over S with B_S^T w ~= (1/K) * 1
  (``jnp.linalg.pinv``); exact whenever the code can decode.

Example:
    >>> alloc = make_allocation("cyclic", 4, 4, 1)
    >>> B = alloc.sample(jax.random.key(0))  # [4, 4]
    >>> w = decode_weights("optimal", B, jnp.array([False, True, False, False]),
    ...                    jnp.zeros(4), alloc.replication)
    >>> bool(jnp.allclose(B.T @ w, 0.25, atol=1e-5))
    True
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.errors import ConfigError, fail
from coco_jax.registry import CODES, register_code

DECODER_NAMES: tuple[str, ...] = ("fixed", "received", "optimal")

_MDS_SEED = 20170601  # fixed seed of the random matrix H of the cyclic MDS construction
_MDS_TRIES = 6  # seeds tried; the best conditioned is kept
_MDS_SUBSETS = 256  # survivor sets checked per seed (all of them when there are fewer)

_fail = fail


class Allocation(NamedTuple):
    """A gradient code: how partitions are spread over devices.

    Attributes:
        name: the registered code name.
        num_devices: M.
        num_partitions: K.
        redundancy: s.
        sample: (typed key, dtype=float32) -> B [M, K]. Deterministic codes ignore the
            key. Works under jit and vmap (an unbatched output is broadcast by vmap).
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


def _survivor_sets(m_dev: int, s: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sets of M - s surviving devices: all of them when few, else a random sample."""
    if math.comb(m_dev, s) <= _MDS_SUBSETS:
        return [np.setdiff1d(np.arange(m_dev), dead) for dead in itertools.combinations(range(m_dev), s)]
    return [np.sort(rng.choice(m_dev, m_dev - s, replace=False)) for _ in range(_MDS_SUBSETS)]


def _scale_rows(B: np.ndarray, s: int) -> np.ndarray | None:
    """Scale B's rows so that 1^T B = (s+1) 1^T; None if a row would vanish."""
    m_dev = B.shape[0]
    a, *_ = np.linalg.lstsq(B.T, np.ones(m_dev), rcond=None)  # min-norm a with B^T a = 1
    if np.abs(B.T @ a - 1.0).max() > 1e-8 or np.abs(a).min() < 1e-3 * np.abs(a).max():
        return None
    return (s + 1) * a[:, None] * B


def _mds_random(m_dev: int, s: int, rng: np.random.Generator) -> np.ndarray | None:
    """Tandon et al. 2017, Alg. 2: rows on the cyclic support, orthogonal to a random H."""
    H = rng.standard_normal((s, m_dev))  # [s, M]
    H[:, -1] = -H[:, :-1].sum(axis=1)  # H @ 1 = 0, so 1 lies in null(H)
    B = np.zeros((m_dev, m_dev), np.float64)
    for m in range(m_dev):
        idx = [(m + j) % m_dev for j in range(s + 1)]
        # s equations, s+1 unknowns: the one-dimensional null space of H[:, idx]
        _, _, vt = np.linalg.svd(H[:, idx])
        x = vt[-1]
        B[m, idx] = x / x[0]
    return _scale_rows(B, s)  # rows span null(H), of dimension M - s


def _mds_bch(m_dev: int, s: int) -> np.ndarray | None:
    """Real BCH (spectral) cyclic MDS code, when M - s is odd (Raviv et al. 2018 style).

    The codewords of length M whose DFT vanishes on the s consecutive frequencies
    centred on M/2 form a real [M, M-s] MDS code (BCH bound) that contains 1; its
    generator polynomial g (degree s, real) shifted cyclically gives the rows. Much
    better conditioned than the random construction for moderate M.
    """
    if (m_dev - s) % 2 == 0:
        return None  # no conjugate-closed set of s consecutive frequencies avoids 0
    lo = (m_dev - s + 1) // 2
    roots = np.exp(2j * np.pi * (lo + np.arange(s)) / m_dev)
    g = np.real(np.poly(roots))[::-1]  # g_0 .. g_s
    B = np.zeros((m_dev, m_dev), np.float64)
    for m in range(m_dev):
        B[m, (m + np.arange(s + 1)) % m_dev] = g
    return _scale_rows(B, s)


def _mds_worst_case(B: np.ndarray, s: int, rng: np.random.Generator) -> float:
    """Largest min-norm decoding vector over survivor sets (inf if one cannot decode)."""
    m_dev = B.shape[0]
    worst = 0.0
    target = np.ones(m_dev) / m_dev
    for alive in _survivor_sets(m_dev, s, rng):
        w, *_ = np.linalg.lstsq(B[alive].T, target, rcond=None)
        if np.abs(B[alive].T @ w - target).max() > 1e-9:
            return math.inf
        worst = max(worst, float(np.linalg.norm(w)))
    return worst


@functools.lru_cache(maxsize=64)
def _cyclic_mds_cached(m_dev: int, s: int) -> np.ndarray:
    if s == 0:
        return np.eye(m_dev)
    best, best_score = None, math.inf
    candidates = [_mds_bch(m_dev, s)]
    candidates += [_mds_random(m_dev, s, np.random.default_rng(_MDS_SEED + t)) for t in range(_MDS_TRIES)]
    for B in candidates:
        if B is None:
            continue
        score = _mds_worst_case(B, s, np.random.default_rng(_MDS_SEED))
        # a bounded decoder norm and bounded coefficients: float32 stays accurate
        score = score * max(1.0, float(np.abs(B).max()))
        if score < best_score:
            best, best_score = B, score
    if best is None or not math.isfinite(best_score):
        _fail(
            "redundancy",
            s,
            f"allocation='cyclic_mds' found no well-conditioned code for num_devices={m_dev}",
        )
    best.setflags(write=False)
    return best


def cyclic_mds_matrix(num_devices: int, redundancy: int) -> np.ndarray:
    """Tandon et al. 2017's cyclic MDS gradient code as a float64 [M, M] array.

    Row m is supported on m, ..., m+s (mod M); for every set of M - s rows the all-ones
    vector lies in their span. Candidates: the real BCH code (when M - s is odd) and
    Tandon et al.'s Alg. 2 from Gaussian H [s, M] with H 1 = 0 under a few fixed seeds
    (rows of B orthogonal to H's rows, one null vector per support). Rows are scaled so
    that each column sums to s+1. The candidate with the smallest worst-case
    (min-norm decoding vector norm x max |B|) over survivor sets (all of them, or a
    fixed random sample of 256 when there are more) is kept; exact decodability is
    checked on those sets in float64. Deterministic; cached.

    Raises:
        ConfigError: (field ``redundancy``) if no candidate decodes numerically.
    """
    return _cyclic_mds_cached(int(num_devices), int(redundancy)).copy()


# ---------------------------------------------------------------------------------
# the built-in codes (registered like a user's) and building a code


@register_code("uncoded")
def uncoded(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    """Device m holds block m (B = I when K = M); needs redundancy 0."""
    if redundancy != 0:
        _fail("redundancy", redundancy, "allocation='uncoded' needs redundancy=0")
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
        _fail(
            "redundancy",
            redundancy,
            f"allocation='frc' needs (redundancy+1) to divide num_devices={num_devices}",
        )
    _check_blocks("frc", num_devices, num_partitions)
    return _blocks(_frc_support(num_devices, redundancy), num_partitions)


@register_code("cyclic_mds")
def cyclic_mds(
    num_devices: int, num_partitions: int, redundancy: int, decoder: str = "optimal"
) -> np.ndarray:
    """Tandon et al. 2017's cyclic MDS code (real coefficients, K = M)."""
    if num_partitions != num_devices:
        _fail(
            "num_partitions",
            num_partitions,
            f"allocation='cyclic_mds' needs num_partitions = num_devices = {num_devices}",
        )
    if decoder == "fixed":
        _fail("decoder", decoder, "allocation='cyclic_mds' needs decoder 'optimal' or 'received'")
    return cyclic_mds_matrix(num_devices, redundancy)


def _bernoulli_replication(num_devices: int, num_partitions: int, redundancy: int) -> float:
    return num_devices * (redundancy + 1) / num_partitions


@register_code("bernoulli", replication=_bernoulli_replication)
def bernoulli(num_devices: int, num_partitions: int, redundancy: int, key: jax.Array) -> jax.Array:
    """Stochastic gradient coding: B[m, k] ~ Bernoulli((s+1)/K), drawn once per run."""
    if redundancy + 1 > num_partitions:
        _fail(
            "redundancy",
            redundancy,
            f"allocation='bernoulli' needs redundancy+1 <= num_partitions={num_partitions}",
        )
    prob = (redundancy + 1) / num_partitions
    return jax.random.bernoulli(key, prob, (num_devices, num_partitions)).astype(jnp.float32)


def _check_blocks(name: str, m_dev: int, k_parts: int) -> None:
    if k_parts % m_dev != 0:
        _fail("num_partitions", k_parts, f"allocation={name!r} needs a multiple of num_devices={m_dev}")


def _check_int(field: str, value, low: int, high: int | None = None, what: str | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(field, value, "must be an integer")
    if value < low or (high is not None and value > high):
        _fail(field, value, what or f"must be >= {low}")


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

        def sample_random(key: jax.Array, dtype=jnp.float32) -> jax.Array:
            return jnp.asarray(entry.factory(**kwargs, key=key)).astype(dtype)  # [M, K]

        out = jax.eval_shape(sample_random, jax.random.key(0))
        if out.shape != (m_dev, k_parts):
            _fail(
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

    def sample_fixed(key: jax.Array, dtype=jnp.float32) -> jax.Array:
        del key
        return jnp.asarray(B, dtype)  # [M, K]

    return Allocation(name, m_dev, k_parts, s, sample_fixed, False, replication, max_load, B)


def _checked_matrix(name: str, entry, kwargs: dict, shape: tuple[int, int]) -> np.ndarray:
    """The factory's B as a read-only float64 [M, K] array; a clear error otherwise."""
    try:
        out = entry.factory(**kwargs)
    except ConfigError:
        raise
    except Exception as err:
        if entry.builtin:
            raise
        raise ConfigError(f"code {name!r}: the factory raised {type(err).__name__}: {err}") from err
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
    from coco_jax.config import static_fields

    return make_allocation(
        cfg.allocation, cfg.num_devices, cfg.num_partitions_resolved, cfg.redundancy, dict(static_fields(cfg))
    )


def check_code(cfg) -> None:
    """Config-time checks of the code: build it (its factory checks M, K, s) and refuse
    decoders it cannot serve: fixed and received need a common column sum r, and
    received (an average of what arrives) is unbiased only when every device straggles
    with the same law, so it is refused with a straggler model whose rates differ."""
    from coco_jax.registry import STRAGGLER_MODELS

    alloc = allocation_of(cfg)
    if cfg.decoder in ("fixed", "received") and alloc.replication is None:
        if alloc.random:
            why = (
                f"allocation={cfg.allocation!r} is a random code registered without its expected column "
                "sum: register it with cj.register_code(name, factory, replication=lambda M, K, s: ...)"
            )
        else:
            why = (
                f"allocation={cfg.allocation!r} has columns of B with different sums, so no common "
                "replication r exists"
            )
        _fail("decoder", cfg.decoder, f"{why} for the fixed/received weights; or use decoder='optimal'")
    if cfg.decoder != "received":
        return
    exchangeable = STRAGGLER_MODELS.entry(cfg.straggler).option("exchangeable")
    loads = None if alloc.matrix is None else (alloc.matrix != 0).sum(axis=1)
    equal_loads = loads is not None and bool(np.all(loads == loads[0]))
    if exchangeable is False or (exchangeable == "loads" and not equal_loads):
        why = "devices straggle at different rates" if exchangeable is False else "devices hold unequal loads"
        _fail(
            "decoder",
            "received",
            f"with straggler={cfg.straggler!r} and allocation={cfg.allocation!r} {why}, so averaging what "
            "arrives over-weights the reliable devices' partitions (a biased gradient); use decoder='fixed' "
            "(unbiased: it divides by each device's own rate) or 'optimal'",
        )


# ---------------------------------------------------------------------------------
# decoders


def decode_weights(
    decoder: str,
    B: jax.Array,
    straggles: jax.Array,
    straggle_rates: jax.Array,
    replication,
) -> jax.Array:
    """Decoding weights w [M]; zero for every straggler. jit/vmap friendly.

    Args:
        decoder: one of ``DECODER_NAMES`` (static).
        B: [M, K] encoding matrix.
        straggles: [M] bool, True = the device did not deliver.
        straggle_rates: [M] nominal straggling probabilities (used by ``fixed`` only;
            a rate of 1 gives weight 0 instead of inf).
        replication: ``Allocation.replication`` (python float or array).

    Returns:
        w [M] in B's dtype; the estimate of (1/K) sum_k g_k is sum_m w_m (B g)_m.
    """
    B = jnp.asarray(B)
    dtype = B.dtype if jnp.issubdtype(B.dtype, jnp.floating) else jnp.float32
    B = B.astype(dtype)
    m_dev, k_parts = B.shape
    alive = jnp.logical_not(jnp.asarray(straggles, bool))  # [M]
    r = jnp.asarray(replication, dtype)
    if decoder == "fixed":
        keep = 1.0 - jnp.asarray(straggle_rates, dtype)  # [M]
        keep = jnp.where(keep > 0, keep, 1.0)
        w = 1.0 / (k_parts * keep * r)
        return jnp.where(alive & (jnp.asarray(straggle_rates) < 1), w, 0.0).astype(dtype)
    if decoder == "received":
        n_alive = jnp.sum(alive)
        w = m_dev / (jnp.maximum(n_alive, 1).astype(dtype) * k_parts * r)
        return jnp.where(alive, w, 0.0).astype(dtype)
    if decoder == "optimal":
        mask = alive.astype(dtype)  # [M]
        A = (B * mask[:, None]).T  # [K, M]
        target = jnp.full((k_parts,), 1.0 / k_parts, dtype)  # [K]
        w = jnp.linalg.pinv(A) @ target  # [M]
        return jnp.where(alive, w, 0.0).astype(dtype)
    _fail("decoder", decoder, f"must be one of {', '.join(DECODER_NAMES)}")


def can_decode(B, straggles, *, tol: float = 1e-5) -> bool:
    """Whether (1/K) * 1 lies exactly in the span of the non-stragglers' rows (numpy).

    Args:
        B: [M, K] encoding matrix.
        straggles: [M] bool, True = straggles.
        tol: tolerance on the max-abs residual of the float64 least-squares fit of the
            all-ones vector (loose enough for float32 copies of cyclic_mds codes).
    """
    B = np.asarray(B, np.float64)
    alive = ~np.asarray(straggles, bool)
    k_parts = B.shape[1]
    target = np.ones(k_parts)
    if not alive.any():
        return False
    Bs = B[alive]  # [|S|, K]
    w, *_ = np.linalg.lstsq(Bs.T, target, rcond=None)
    return bool(np.abs(Bs.T @ w - target).max() <= tol)
