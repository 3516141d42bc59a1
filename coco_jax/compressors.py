"""Gradient compressors, each written for ONE device's vector ``v`` of shape ``[d]``.

A compressor is a static, hashable bundle (`Compressor`) of a pure function
``compress(key, v) -> c`` and its constants: the number of upload bits of one
delivered message, whether it is biased, and its compression constant:

- biased compressors state a contraction ``||C(v) - v||^2 <= (1 - delta) ||v||^2``
  (worst case over ``v``; "in expectation" where the compressor is random);
- unbiased compressors (``E C(v) = v``) state ``E ||C(v) - v||^2 <= omega ||v||^2``.

``compress`` takes a typed PRNG key (``jax.random.key``) and works under ``jax.jit``
and ``jax.vmap`` (the engine vmaps it over the M devices), keeps the dtype of ``v``
(float32 or float64) and maps the zero vector to zeros without NaN. Deterministic
compressors ignore the key.

Example:
    >>> import jax, jax.numpy as jnp
    >>> comp = make_compressor("topk", dim=4, k=2)
    >>> comp.compress(jax.random.key(0), jnp.array([0.1, -3.0, 2.0, 0.5]))
    Array([ 0., -3.,  2.,  0.], dtype=float32)
    >>> comp.bits, comp.biased, comp.delta
    (68, True, 0.5)

Bit counts assume 32-bit floats for every transmitted real number (also in float64
runs) and fixed-length codes: an index costs ``ceil(log2 d)`` bits.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.errors import ConfigError, fail
from coco_jax.registry import COMPRESSORS, Entry, register_compressor

FLOAT_BITS = 32  # bits of one transmitted real number (norm, scale or value)


class Compressor(NamedTuple):
    """One compressor with its constants (what a compressor factory returns).

    Attributes:
        compress: ``(key, v[d]) -> c[d]`` for ONE device, same dtype as ``v``;
            jit/vmap safe (the engine vmaps it over the devices).
        bits: upload bits of one delivered message (python int).
        name: registry name (filled in from the registration when None).
        biased: whether ``E C(v) != v`` for some ``v``.
        delta: contraction constant of a biased compressor, worst case over ``v``
            (in expectation for random ones); None where there is no guarantee.
            The identity also carries ``delta = 1``.
        omega: variance constant of an unbiased compressor; None for biased ones.
        compress_k: optional ``(key, v[d], k) -> c[d]``: the same compressor with the
            kept count ``k`` a traced int32 scalar, equal to ``compress`` of the
            compressor built with that k. A sweep group whose configurations differ
            only in k then runs one compiled program (`coco_jax.config.CHOICES`).
        bits_of_k: with ``compress_k``: upload bits as a function of k (a Python int or
            a traced integer).
    """

    compress: Callable[[jax.Array, jax.Array], jax.Array]
    bits: int
    name: str | None = None
    biased: bool = True
    delta: float | None = None
    omega: float | None = None
    compress_k: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None
    bits_of_k: Callable[[Any], Any] | None = None


def _index_bits(d: int) -> int:
    """ceil(log2 d) for d >= 1 (0 for d = 1), exact for powers of two."""
    return (d - 1).bit_length()


def _level_bits(s: int) -> int:
    """ceil(log2(s + 1)): bits of a QSGD level in {0, ..., s}."""
    return int(s).bit_length()


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (no NaN in value or gradient)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def empirical_contraction(v: jax.Array, c: jax.Array) -> jax.Array:
    """``||c - v||^2 / ||v||^2`` over the last axis; 0 where ``v = c = 0``, inf where
    only ``v = 0``.

    For a biased compressor this is at most ``1 - delta``; for an unbiased one its
    expectation is at most ``omega``.
    """
    err = jnp.sum(jnp.square(c - v), axis=-1)
    nv = jnp.sum(jnp.square(v), axis=-1)
    return jnp.where(nv > 0, err / jnp.where(nv > 0, nv, 1), jnp.where(err > 0, jnp.inf, 0.0))


# ----------------------------------------------------------------------------- helpers


def _topk_indices(v: jax.Array, k: int) -> jax.Array:
    """Indices of the k largest |v_i| ([k], ties in lax.top_k order).

    For k >= 32 and d >= 16 k the entries below a cheap lower bound of the k-th
    largest |v_i| are set to -1 first, which leaves lax.top_k (a heap select on CPU)
    far fewer heap insertions; the result is identical: each of the G >= k groups of
    g = d // k consecutive entries has its maximum >= the bound, so >= k entries stay
    and every entry below the bound ranks below them; kept entries keep their values
    and indices (NaN is never below the bound, a NaN bound removes nothing).
    """
    a = jnp.abs(v)
    d = a.shape[-1]
    if k >= 32 and d >= 16 * k:
        g = d // k
        lower = jnp.min(jnp.max(a[: (d // g) * g].reshape(d // g, g), axis=1))
        a = jnp.where(a < lower, jnp.asarray(-1, a.dtype), a)
    _, idx = jax.lax.top_k(a, k)
    return idx


def _noise(key: jax.Array, d: int) -> jax.Array:
    """iid uniform non-negative int32 noise [d] (31 random bits per coordinate; ties
    have probability ~ d^2 / 2^32 and go to the lower index)."""
    return jax.lax.shift_right_logical(jax.random.bits(key, (d,), jnp.uint32), jnp.uint32(1)).astype(
        jnp.int32
    )


def _random_indices(key: jax.Array, d: int, k: int) -> jax.Array:
    """k indices drawn uniformly without replacement: top-k of iid uniform noise."""
    _, idx = jax.lax.top_k(_noise(key, d), k)
    return idx


def _random_mask(key: jax.Array, d: int, k) -> jax.Array:
    """Boolean mask [d] of exactly the entries `_random_indices` draws, for a traced k."""
    return _mask_of_largest(_noise(key, d), k)


def _scatter(v: jax.Array, idx: jax.Array, vals: jax.Array) -> jax.Array:
    return jnp.zeros_like(v).at[idx].set(vals, unique_indices=True)


def _qsgd_quantise(key: jax.Array, v: jax.Array, s: int) -> jax.Array:
    """QSGD with s levels: ||v|| sign(v_i) xi_i / s, xi_i the unbiased stochastic
    rounding of s |v_i| / ||v|| to a neighbouring integer in {0, ..., s}."""
    norm = jnp.linalg.norm(v)
    r = jnp.clip(_safe_div(s * jnp.abs(v), norm), 0, s)
    low = jnp.floor(r)
    u = jax.random.uniform(key, v.shape, dtype=v.dtype)
    xi = low + (u < r - low).astype(v.dtype)
    return (norm / s) * jnp.sign(v) * xi


# ----------------------------------------------------------------------------- factories


@register_compressor("identity")
def identity(dim: int) -> Compressor:
    """identity: ``c = v``. Unbiased, omega = 0 (also delta = 1). bits = 32 d."""

    def compress(key, v):
        del key
        return v

    return Compressor(compress, FLOAT_BITS * dim, "identity", biased=False, delta=1.0, omega=0.0)


def _topk_mask(v: jax.Array, k: int) -> jax.Array:
    """Boolean mask [d] of exactly the entries `lax.top_k(|v|, k)` selects, found by
    bisection on the threshold instead of a partial sort.

    |v_i| >= 0 orders as its int32 bit pattern, so 31 halvings of [0, 2^31) find the
    largest pattern T with #{i: bits_i >= T} >= k; the mask keeps every entry above T
    and, of the entries equal to T, the lowest-index ones up to k in all (lax.top_k's
    tie rule). Each halving is one compare-and-count pass, which beats XLA:CPU's
    single-threaded partial sort once k/d is a few percent (measured: equal near
    k/d = 2%, 1.9-2.2x faster at 5% for d = 1e3..1e5; docs/performance.md).
    """
    bits = jax.lax.bitcast_convert_type(jnp.abs(v).astype(jnp.float32), jnp.int32)  # [d]
    return _mask_of_largest(bits, k)


def _count_at_least(bits: jax.Array, t) -> jax.Array:
    """#{i: bits_i >= t} (int32) of a [d] array. Below 2^24 entries it is a float32
    product with a ones vector, exact there (0/1 terms, integer partial sums < 2^24)
    and about 1.4x faster than a boolean sum on XLA:CPU, whose row reductions are not
    vectorised (docs/performance.md)."""
    d = bits.shape[-1]
    if d < 2**24:
        hits = (bits >= t).astype(jnp.float32)
        ones = jnp.ones((d,), jnp.float32)
        return jnp.dot(hits, ones, precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
    return jnp.sum(bits >= t, dtype=jnp.int32)


def _mask_of_largest(bits: jax.Array, k) -> jax.Array:
    """Boolean mask [d] of the k largest of the non-negative int32 `bits`, ties to the
    lowest indices (`lax.top_k`'s rule); `k` may be traced (see `_topk_mask`)."""

    def halve(_, bracket):
        lo, hi = bracket  # invariant: count(bits >= lo) >= k > count(bits >= hi)
        mid = lo + (hi - lo) // 2
        enough = _count_at_least(bits, mid) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, halve, (jnp.int32(0), jnp.int32(2**31 - 1)))
    above = bits > lo
    tied = bits == lo
    return above | (tied & (jnp.arange(bits.shape[-1]) < _tie_cut(tied, k - _count_at_least(bits, lo + 1))))


def _tie_cut(tied: jax.Array, need) -> jax.Array:
    """The smallest J with #{i < J: tied_i} >= need (1 <= need <= #tied), so that the
    tied entries below J are the lowest-index `need` of them. When every tied entry is
    needed (the usual case: no tie at the threshold) J = d without a pass over the data;
    otherwise a bisection over the index, which under vmap runs only while some vector
    of the batch still has surplus ties (a cumsum would cost every call a scan)."""
    d = tied.shape[-1]
    position = jnp.arange(d)
    surplus = _count_at_least(tied.astype(jnp.int32), 1) > need

    def split(bracket):  # invariant: count(tied below lo) < need <= count(tied below hi)
        lo, hi = bracket
        mid = lo + (hi - lo) // 2
        enough = _count_at_least(jnp.where(position < mid, tied, False).astype(jnp.int32), 1) >= need
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    start = (jnp.where(surplus, 0, d - 1), jnp.int32(d))
    _, cut = jax.lax.while_loop(lambda b: b[1] - b[0] > 1, split, start)
    return cut


# k/d from which the bisection mask beats lax.top_k on CPU (see _topk_mask)
_MASK_TOPK_RATIO = 0.02


@register_compressor("topk")
def topk(dim: int, k: int, dtype=None) -> Compressor:
    """topk: keep the k largest |v_i| (exactly k entries, ties broken in lax.top_k
    order: lowest index first), zero the rest. Biased, deterministic,
    delta = k/d (worst case: all |v_i| equal). bits = k (32 + ceil(log2 d))."""

    def compress(key, v):
        del key
        if k >= _MASK_TOPK_RATIO * dim and v.dtype == jnp.float32:
            return jnp.where(_topk_mask(v, k), v, jnp.zeros_like(v))
        idx = _topk_indices(v, k)
        return _scatter(v, idx, v[idx])

    def compress_k(key, v, kk):  # float32: the bisection selects exactly lax.top_k's entries
        del key
        return jnp.where(_topk_mask(v, kk), v, jnp.zeros_like(v))

    def bits_of_k(kk):
        return kk * (FLOAT_BITS + _index_bits(dim))

    dynamic = compress_k if dtype is None or jnp.dtype(dtype) == jnp.float32 else None
    return Compressor(
        compress, bits_of_k(k), "topk", delta=k / dim, compress_k=dynamic, bits_of_k=dynamic and bits_of_k
    )


def _randk(dim: int, k: int, *, unbiased: bool) -> Compressor:
    """randk: keep k coordinates drawn uniformly without replacement.

    Unscaled (``randk``): biased, ``E||C(v) - v||^2 = (1 - k/d) ||v||^2`` so
    delta = k/d in expectation. Scaled by d/k (``randk_unbiased``): unbiased,
    omega = d/k - 1. bits = k (32 + ceil(log2 d)) in both cases (values + indices).
    """

    def scale(v, kk):  # d/k rounded once in v's dtype, for a static or a traced k
        return jnp.asarray(dim, v.dtype) / jnp.asarray(kk, v.dtype)

    def compress(key, v):
        if k >= _MASK_TOPK_RATIO * dim:  # the same entries, without XLA:CPU's partial sort
            return compress_k(key, v, k)
        idx = _random_indices(key, dim, k)
        vals = v[idx] * scale(v, k) if unbiased else v[idx]
        return _scatter(v, idx, vals)

    def compress_k(key, v, kk):
        mask = _random_mask(key, dim, kk)
        return jnp.where(mask, v * scale(v, kk) if unbiased else v, jnp.zeros_like(v))

    def bits_of_k(kk):
        return kk * (FLOAT_BITS + _index_bits(dim))

    dynamic = {"compress_k": compress_k, "bits_of_k": bits_of_k}
    if unbiased:
        return Compressor(
            compress, bits_of_k(k), "randk_unbiased", biased=False, omega=dim / k - 1.0, **dynamic
        )
    return Compressor(compress, bits_of_k(k), "randk", delta=k / dim, **dynamic)


@register_compressor("randk")
def randk(dim: int, k: int) -> Compressor:
    return _randk(dim, k, unbiased=False)


@register_compressor("randk_unbiased")
def randk_unbiased(dim: int, k: int) -> Compressor:
    return _randk(dim, k, unbiased=True)


randk.__doc__ = randk_unbiased.__doc__ = _randk.__doc__


@register_compressor("sign")
def sign(dim: int) -> Compressor:
    """sign: ``c = sign(v)`` with sign(0) = 0. Biased and not scale-equivariant: no
    contraction guarantee (for ``||v|| << 1``, ``||sign(v) - v|| > ||v||``), so
    delta = None. bits = d (one bit per coordinate; an exact 0 is assumed rare and
    not charged)."""

    def compress(key, v):
        del key
        return jnp.sign(v)

    return Compressor(compress, dim, "sign")


def _segment_ids(dim: int, group_size: int | None, segments: tuple[int, ...] | None):
    """Static group layout: (ids [d] numpy int32, sizes [G] numpy, uniform group size or None)."""
    if group_size is not None:
        sizes = [group_size] * (dim // group_size)
        if dim % group_size:
            sizes.append(dim % group_size)
        uniform = group_size
    elif segments is not None:
        sizes = list(segments)
        uniform = None
    else:
        sizes = [dim]
        uniform = dim
    sizes = np.asarray(sizes, np.int64)
    ids = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    return ids, sizes, uniform


@register_compressor("grouped_sign")
def grouped_sign(
    dim: int,
    group_size: int | None = None,
    segments: tuple[int, ...] | None = None,
    name: str = "grouped_sign",
) -> Compressor:
    """grouped_sign: ``c_i = (mean_{j in g(i)} |v_j|) sign(v_i)``, one scale per group.

    Groups are consecutive chunks of ``group_size`` (the last may be shorter) if given,
    else the ``segments`` (sizes summing to d, e.g. one per layer), else one group
    (= scaled_sign). Biased, deterministic; per group of n_g entries, none zero,
    ``||C(v_g) - v_g||^2 = ||v_g||^2 - ||v_g||_1^2 / n_g <= (1 - 1/n_g) ||v_g||^2``
    (zero entries only lower the error), so delta = 1 / max group size (worst case,
    approached by one dominant entry in the largest group).
    bits = d + 32 * num_groups.
    """
    ids, sizes, uniform = _segment_ids(dim, group_size, segments)
    num_groups = len(sizes)
    max_size = int(sizes.max())

    if num_groups == 1:

        def compress(key, v):
            del key
            return (jnp.sum(jnp.abs(v)) / dim) * jnp.sign(v)

    elif uniform is not None:
        pad = num_groups * uniform - dim

        def compress(key, v):
            del key
            a = jnp.pad(jnp.abs(v), (0, pad)).reshape(num_groups, uniform)  # [G, n]
            scale = jnp.sum(a, axis=1) / jnp.asarray(sizes, v.dtype)  # [G]
            return jnp.repeat(scale, uniform)[:dim] * jnp.sign(v)

    else:
        ids_j = jnp.asarray(ids)

        def compress(key, v):
            del key
            sums = jax.ops.segment_sum(jnp.abs(v), ids_j, num_segments=num_groups, indices_are_sorted=True)
            scale = sums / jnp.asarray(sizes, v.dtype)  # [G]
            return scale[ids_j] * jnp.sign(v)

    return Compressor(compress, dim + FLOAT_BITS * num_groups, name, delta=1.0 / max_size)


@register_compressor("scaled_sign")
def scaled_sign(dim: int) -> Compressor:
    """scaled_sign (Karimireddy et al. 2019): ``c = (||v||_1 / d) sign(v)``, sign(0) = 0.
    Biased, deterministic; for v without zero entries
    ``||C(v) - v||^2 = (1 - ||v||_1^2 / (d ||v||_2^2)) ||v||^2``, i.e. the
    input-dependent delta(v) = ||v||_1^2 / (d ||v||_2^2) >= 1/d (with nnz nonzero
    entries delta(v) = ||v||_1^2 (2 - nnz/d) / (d ||v||_2^2), larger still).
    Reported delta = 1/d, the worst case (approached by one dominant entry).
    bits = d + 32."""
    return grouped_sign(dim, None, None, name="scaled_sign")


@register_compressor("qsgd")
def qsgd(dim: int, qsgd_levels: int = 4) -> Compressor:
    """qsgd (Alistarh et al. 2017) with s levels:
    ``c_i = ||v||_2 sign(v_i) xi_i / s``, xi_i the stochastic rounding of
    ``s |v_i| / ||v||_2`` to a neighbouring integer. Unbiased,
    omega = min(d / s^2, sqrt(d) / s). bits = 32 + d (1 + ceil(log2(s + 1))):
    the norm, then a sign bit and a fixed-length level code per coordinate (no Elias
    coding)."""
    s = qsgd_levels

    def compress(key, v):
        return _qsgd_quantise(key, v, s)

    omega = min(dim / s**2, math.sqrt(dim) / s)
    return Compressor(compress, FLOAT_BITS + dim * (1 + _level_bits(s)), "qsgd", biased=False, omega=omega)


@register_compressor("topk_qsgd")
def topk_qsgd(dim: int, k: int, qsgd_levels: int = 4) -> Compressor:
    """topk_qsgd: topk, then QSGD (s levels, norm of the kept k-vector) of the k kept
    values. Biased; with T = topk(v) and omega_k = min(k/s^2, sqrt(k)/s),
    ``E||C(v) - v||^2 = ||v||^2 - ||T||^2 + E||Q(T) - T||^2
    <= (1 - (1 - omega_k) k/d) ||v||^2``, so delta = (1 - omega_k) k/d in expectation
    when omega_k < 1, else None. bits = 32 + k (ceil(log2 d) + 1 + ceil(log2(s + 1)))
    (norm, then index, sign and level per kept entry)."""
    s = qsgd_levels

    def compress(key, v):
        idx = _topk_indices(v, k)
        return _scatter(v, idx, _qsgd_quantise(key, v[idx], s))

    omega_k = min(k / s**2, math.sqrt(k) / s)
    delta = (1.0 - omega_k) * k / dim if omega_k < 1 else None
    bits = FLOAT_BITS + k * (_index_bits(dim) + 1 + _level_bits(s))
    return Compressor(compress, bits, "topk_qsgd", delta=delta)


@register_compressor("onebit")
def onebit(dim: int) -> Compressor:
    """onebit: the 1-bit stochastic quantiser of 1-bit gradient coding (Li & Skoglund
    2024, arXiv 2403.14716). With B = ||v||_inf, ``c_i = +B`` with probability
    ``(1 + v_i/B)/2`` and ``-B`` otherwise. Unbiased;
    ``E||C(v) - v||^2 = d B^2 - ||v||^2 <= (d - 1) ||v||^2``, so omega = d - 1.
    bits = d + 32 (one bit per coordinate and B)."""

    def compress(key, v):
        b = jnp.max(jnp.abs(v))
        p_plus = 0.5 * (1 + _safe_div(v, b))
        u = jax.random.uniform(key, v.shape, dtype=v.dtype)
        return jnp.where(u < p_plus, b, -b)

    return Compressor(compress, dim + FLOAT_BITS, "onebit", biased=False, omega=dim - 1.0)


@register_compressor("natural")
def natural(dim: int) -> Compressor:
    """natural (Horvath et al. 2019): each ``v_i != 0`` is rounded stochastically to
    one of its neighbouring powers of two ``2^e <= |v_i| < 2^(e+1)`` (up with
    probability ``|v_i|/2^e - 1``), sign kept, zero stays zero. Unbiased,
    omega = 1/8 (worst at ``|v_i| = (4/3) 2^e``). bits = 9 d (sign and an 8-bit
    exponent per coordinate, as for float32, also in float64 runs).

    Subnormal inputs are mapped to 0, as XLA flushes them; values within a factor
    two of the largest finite float may round up to inf.
    """

    def compress(key, v):
        a = jnp.abs(v)
        mant, expo = jnp.frexp(a)  # a = mant 2^expo, mant in [0.5, 1)
        low = jnp.ldexp(jnp.ones_like(a), expo - 1)  # 2^e <= a
        p_up = 2 * mant - 1  # = a / 2^e - 1, in [0, 1)
        u = jax.random.uniform(key, v.shape, dtype=v.dtype)
        mag = jnp.where(u < p_up, 2 * low, low)
        normal = a >= jnp.finfo(v.dtype).smallest_normal
        return jnp.where(normal, jnp.sign(v) * mag, jnp.zeros_like(v))

    return Compressor(compress, 9 * dim, "natural", biased=False, omega=1.0 / 8.0)


# ----------------------------------------------------------------------------- building


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_compressor(comp, entry: Entry, args: dict) -> Compressor:
    """What a compressor factory returned, checked before anything compiles: a
    `Compressor` with an integer bit count whose ``compress`` maps one device's vector
    ``[dim]`` to ``[dim]`` (traced with `jax.eval_shape`). Wrapped so a wrong input
    shape fails at trace time with a clear message; its docstring is the factory's."""
    name = entry.name
    if not isinstance(comp, Compressor):
        raise ConfigError(
            f"compressor {name!r}: the factory returned {type(comp).__name__}, must return "
            "cj.Compressor(compress=..., bits=...)"
        )
    if not callable(comp.compress):
        raise ConfigError(f"compressor {name!r}: compress={comp.compress!r} is not callable")
    if not _is_int(comp.bits) or comp.bits < 0:
        raise ConfigError(f"compressor {name!r}: bits={comp.bits!r} must be a non-negative integer")
    if comp.compress_k is not None and not (callable(comp.compress_k) and callable(comp.bits_of_k)):
        raise ConfigError(
            f"compressor {name!r}: compress_k={comp.compress_k!r} needs a callable compress_k(key, v, k) "
            f"and a callable bits_of_k(k), got bits_of_k={comp.bits_of_k!r}"
        )
    dim, dtype = args.get("dim"), args.get("dtype", jnp.float32)
    comp = comp._replace(name=comp.name or name, bits=int(comp.bits), biased=bool(comp.biased))
    if dim is None:
        return comp
    if comp.compress_k is not None:
        try:
            out_k = jax.eval_shape(
                lambda v, k: comp.compress_k(jax.random.key(0), v, k),
                jax.ShapeDtypeStruct((dim,), dtype),
                jax.ShapeDtypeStruct((), jnp.int32),
            )
        except Exception as err:
            raise ConfigError(
                f"compressor {name!r}: compress_k(key, v, k) fails on v of shape ({dim},) and a traced "
                f"int32 k: {type(err).__name__}: {err}"
            ) from err
        if getattr(out_k, "shape", None) != (dim,):
            raise ConfigError(
                f"compressor {name!r}: compress_k(key, v, k) returned shape "
                f"{getattr(out_k, 'shape', type(out_k).__name__)}, must return shape ({dim},)"
            )
    v = jax.ShapeDtypeStruct((dim,), dtype)
    try:
        out = jax.eval_shape(lambda v: comp.compress(jax.random.key(0), v), v)  # the key traced too
    except Exception as err:
        raise ConfigError(
            f"compressor {name!r}: compress(key, v) fails on one device's vector v of shape ({dim},) "
            f"{jnp.dtype(dtype).name}: {type(err).__name__}: {err}"
        ) from err
    if not hasattr(out, "shape") or out.shape != (dim,):
        got = getattr(out, "shape", type(out).__name__)
        raise ConfigError(
            f"compressor {name!r}: compress(key, v) returned shape {got} for v of shape ({dim},); "
            f"it must return one device's compressed vector of shape ({dim},)"
        )
    if out.dtype != jnp.dtype(dtype):
        raise ConfigError(
            f"compressor {name!r}: compress(key, v) returned dtype {out.dtype} for v of dtype "
            f"{jnp.dtype(dtype).name}; it must return v's dtype (an integer or rounded copy would "
            "silently change the message)"
        )
    inner = comp.compress

    def compress(key: jax.Array, v: jax.Array) -> jax.Array:
        if jnp.shape(v) != (dim,):
            raise ValueError(
                f"{name}.compress expects one device's vector of shape ({dim},), got "
                f"{jnp.shape(v)}; vmap it over devices"
            )
        return inner(key, v).astype(v.dtype)

    compress.__doc__ = inspect.cleandoc(entry.factory.__doc__ or "")
    compress.__name__ = compress.__qualname__ = f"compress_{name}"
    if comp.compress_k is None:
        return comp._replace(compress=compress)
    inner_k = comp.compress_k

    def compress_k(key: jax.Array, v: jax.Array, k: jax.Array) -> jax.Array:
        return inner_k(key, v, k).astype(v.dtype)

    return comp._replace(compress=compress, compress_k=compress_k)


COMPRESSORS.check = _check_compressor


def make_compressor(
    name: str,
    dim: int,
    *,
    k: int = 1,
    segments: tuple[int, ...] | None = None,
    dtype=jnp.float32,
    fields: dict | None = None,
    **more_fields,
) -> Compressor:
    """Build the registered compressor ``name`` for vectors of dimension ``dim``.

    Args:
        name: a registered compressor (`coco_jax.registry.COMPRESSORS`).
        dim: d, the flat parameter count (>= 1).
        k: kept entries for topk, randk, randk_unbiased and topk_qsgd
            (1 <= k <= d; checked for every name).
        segments: parameter count per layer (positive, summing to d), e.g. the
            groups of grouped_sign.
        dtype: the dtype ``compress`` is checked with.
        fields, **more_fields: static config fields the factory may ask for
            (qsgd_levels, group_size, ...).

    Returns:
        The `Compressor`; equal arguments return the same (cached) object, so it is
        hashable and stable as a static argument of ``jax.jit``.

    Raises:
        ConfigError: naming the field, its value and what is allowed, or the
            compressor whose factory returned something invalid.
    """
    COMPRESSORS.entry(name)
    fields = {**(fields or {}), **more_fields}
    if not _is_int(dim) or dim < 1:
        fail("dim", dim, "must be a positive integer (the flat parameter count d)")
    dim = int(dim)
    if not _is_int(k) or not 1 <= k <= dim:
        fail("compress_k", k, f"must be an integer with 1 <= k <= d={dim}")
    levels = fields.get("qsgd_levels", 4)
    if not _is_int(levels) or levels < 1:
        fail("qsgd_levels", levels, "must be an integer >= 1")
    group_size = fields.get("group_size")
    if group_size is not None and (not _is_int(group_size) or group_size < 1):
        fail("group_size", group_size, "must be None or an integer >= 1")
    if segments is not None:
        segments = tuple(segments)
        if not segments or not all(_is_int(n) and n >= 1 for n in segments) or sum(segments) != dim:
            fail("segments", segments, f"must be a non-empty tuple of positive integers summing to d={dim}")
        segments = tuple(int(n) for n in segments)
    provided = {"dim": dim, "k": int(k), "segments": segments, "dtype": jnp.dtype(dtype).type}
    return COMPRESSORS.build(name, provided, fields)


__all__ = ["Compressor", "empirical_contraction", "make_compressor", "register_compressor"]
