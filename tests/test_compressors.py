"""Tests of coco_jax.compressors: interface, bit counts, statistics and JAX transforms.

Statistical checks are Monte-Carlo over many keys with tolerances of several standard
errors (never exact random draws); each comes with a negative control that must fail.
"""

from __future__ import annotations

import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_within, contraction_tolerance, gamma, unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coco_jax import config
from coco_jax.compressors import (
    Compressor,
    empirical_contraction,
    make_compressor,
)
from coco_jax.config import ConfigError
from coco_jax.registry import COMPRESSORS

COMPRESSOR_NAMES = COMPRESSORS.builtin_names()

D = 37
K = 7
N_MC = 20_000  # Monte-Carlo samples (keys)
Z = 5.0  # standard errors allowed per coordinate
SEED_CONTRACTION = int(np.random.SeedSequence().entropy % (2**31))  # fresh tiny entries each run

# One entry per compressor, plus the other group layouts of grouped_sign.
CASES = {name: (name, {"k": K}) for name in COMPRESSOR_NAMES}
CASES["grouped_sign/group_size"] = ("grouped_sign", {"group_size": 5})
CASES["grouped_sign/segments"] = ("grouped_sign", {"segments": (10, 20, 7)})
CASES["qsgd/s=1"] = ("qsgd", {"qsgd_levels": 1})
CASE_IDS = sorted(CASES)

UNBIASED = ("identity", "randk_unbiased", "qsgd", "onebit", "natural")
BIASED = tuple(n for n in COMPRESSOR_NAMES if n not in UNBIASED)
DETERMINISTIC = ("identity", "topk", "sign", "scaled_sign", "grouped_sign")


# Tolerances (conftest: Higham's model). Every compressor here computes an output
# entry with at most D + 6 roundings (a norm, sum or max over the d inputs, then a few
# scalar operations) of quantities no larger than the entry itself, |v_i| or ||v||:
# OUT_OPS bounds them. Two evaluations of one compressor (jit / eager, vmap / loop)
# are each within gamma_OUT_OPS of exact, so within twice that of each other, unless a
# discrete choice (top-k order, a stochastic-rounding threshold) falls within that
# distance: probability about D gamma_OUT_OPS per call, ~1e-4 here.
OUT_OPS = D + 6
# The documented constants (delta, omega) are at most 4 float64 operations of the same
# formula as the definition.
REL64 = gamma(4, np.float64)


def _pair_tol(a, b, v):
    """Per entry: twice the rounding bound of one evaluation (above), on the larger of
    the two outputs and the input."""
    mag = np.maximum(np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64)))
    return 2 * gamma(OUT_OPS) * (mag + np.abs(np.asarray(v, np.float64)))


def build(case: str, dim: int = D) -> Compressor:
    name, kwargs = CASES[case]
    return make_compressor(name, dim, **kwargs)


def rand_v(seed: int, dim: int = D, dtype=np.float32) -> np.ndarray:
    """A fresh random vector with no zeros and spread magnitudes."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim) * rng.choice([0.1, 1.0, 10.0], dim)
    v[v == 0] = 1.0
    return v.astype(dtype)


def keys(seed: int, n: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


@functools.cache
def _batched(comp: Compressor):
    return jax.jit(jax.vmap(comp.compress, in_axes=(0, None)))


def mc_samples(comp: Compressor, v: np.ndarray, n: int = N_MC, seed: int = 0) -> np.ndarray:
    """[n, d] float64 numpy array of compressions of v under n independent keys."""
    out = _batched(comp)(keys(seed, n), jnp.asarray(v))
    return np.asarray(out, np.float64)


def unbiased_mc(samples: np.ndarray, v: np.ndarray, omega: float) -> tuple[bool, bool]:
    """(per-coordinate check, aggregate chi-square check) that E[samples] = v.

    Per coordinate: |mean - v_i| <= Z standard errors. The standard error uses the
    sample variance plus a floor ``omega ||v||^2 / n`` from the variance bound (one
    event of the whole allowed variance in n draws), so that a coordinate whose rare
    outcome did not occur among the n draws (e.g. a QSGD level with probability
    ~1/n) is not mistaken for a bias; the floor is O(1/n) and barely weakens the test.
    Aggregate: the sum of squared z-scores is ~ chi2_d; reject above d + 6 sqrt(2 d),
    so a small bias spread over many coordinates is caught as well.
    """
    n, d = samples.shape
    v = np.asarray(v, np.float64)
    mean = samples.mean(0)
    floor = omega * float(np.sum(v**2)) / n
    se = np.sqrt((samples.var(0, ddof=1) + floor) / n)
    # rounding can bias every sample alike: each entry within gamma_OUT_OPS of its
    # exact value (at most the largest sample), and a float32 uniform draw resolves a
    # rounding probability to eps, i.e. eps times the gap between outcomes (<= 2 max)
    atol = gamma(OUT_OPS + 2) * (np.abs(v) + 2 * np.abs(samples).max(0))
    excess = np.maximum(np.abs(mean - v) - atol, 0.0)
    coord_ok = bool(np.all(excess <= Z * se))
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(excess > 0, (excess / se) ** 2, 0.0)
    agg_ok = bool(np.sum(z2) <= d + 6 * math.sqrt(2 * d))
    return coord_ok, agg_ok


def sq_err(samples: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sum((samples - np.asarray(v, np.float64)) ** 2, axis=1)


def mc_mean_bounds(x: np.ndarray) -> tuple[float, float]:
    """Mean of x minus / plus Z standard errors."""
    m = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    return m - Z * se, m + Z * se


# ----------------------------------------------------------------------------- registry


def test_names_match_config():
    assert set(COMPRESSOR_NAMES) == set(config.allowed_values("compressor"))
    assert set(UNBIASED) | set(BIASED) == set(COMPRESSOR_NAMES)


@pytest.mark.parametrize("case", CASE_IDS)
def test_constants_are_consistent(case):
    comp = build(case)
    assert isinstance(comp, Compressor)
    assert comp.name == CASES[case][0]
    assert type(comp.bits) is int and comp.bits > 0
    assert isinstance(comp.biased, bool)
    assert comp.biased == (comp.name in BIASED)
    if comp.biased:
        assert comp.omega is None
    else:
        assert isinstance(comp.omega, float) and comp.omega >= 0
    if comp.delta is not None:
        assert 0 < comp.delta <= 1
    assert comp.compress.__doc__  # the semantics live in the docstrings


def test_constants_values():
    d, k, s = 100, 10, 4

    def mk(n, **kw):
        return make_compressor(n, d, k=k, qsgd_levels=s, **kw)

    assert mk("identity").omega == 0.0
    assert mk("topk").delta == pytest.approx(k / d, rel=REL64)
    assert mk("randk").delta == pytest.approx(k / d, rel=REL64)
    assert mk("randk_unbiased").omega == pytest.approx(d / k - 1, rel=REL64)
    assert mk("sign").delta is None
    assert mk("scaled_sign").delta == pytest.approx(1 / d, rel=REL64)
    assert mk("grouped_sign").delta == pytest.approx(1 / d, rel=REL64)
    assert mk("grouped_sign", group_size=30).delta == pytest.approx(1 / 30, rel=REL64)
    assert mk("grouped_sign", segments=(60, 40)).delta == pytest.approx(1 / 60, rel=REL64)
    assert mk("qsgd").omega == pytest.approx(min(d / s**2, math.sqrt(d) / s), rel=REL64)
    assert mk("onebit").omega == pytest.approx(d - 1, rel=REL64)
    assert mk("natural").omega == pytest.approx(1 / 8, rel=REL64)
    omega_k = min(k / s**2, math.sqrt(k) / s)
    assert mk("topk_qsgd").delta == pytest.approx((1 - omega_k) * k / d, rel=REL64)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "top_k", "dim": 10}, "compressor"),
        ({"name": "", "dim": 10}, "compressor"),
        ({"name": "topk", "dim": 10, "k": 0}, "compress_k"),
        ({"name": "topk", "dim": 10, "k": 11}, "compress_k"),
        ({"name": "randk", "dim": 10, "k": -1}, "compress_k"),
        ({"name": "topk_qsgd", "dim": 10, "k": 2.5}, "compress_k"),
        ({"name": "sign", "dim": 10, "k": 11}, "compress_k"),
        ({"name": "topk", "dim": 0}, "dim"),
        ({"name": "qsgd", "dim": 10, "qsgd_levels": 0}, "qsgd_levels"),
        ({"name": "grouped_sign", "dim": 10, "group_size": 0}, "group_size"),
        ({"name": "grouped_sign", "dim": 10, "segments": (3, 3)}, "segments"),
        ({"name": "grouped_sign", "dim": 10, "segments": (0, 10)}, "segments"),
        ({"name": "grouped_sign", "dim": 10, "segments": ()}, "segments"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, field):
    name = kwargs.pop("name")
    dim = kwargs.pop("dim")
    with pytest.raises(ConfigError, match=field) as info:
        make_compressor(name, dim, **kwargs)
    assert isinstance(info.value, ValueError)
    assert "invalid" in str(info.value)


def test_unknown_name_lists_allowed():
    with pytest.raises(ConfigError) as info:
        make_compressor("nope", 5)
    msg = str(info.value)
    assert "'nope'" in msg and all(n in msg for n in COMPRESSOR_NAMES)


def test_wrong_shape_is_a_clear_error():
    comp = make_compressor("topk", 8, k=2)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        comp.compress(jax.random.key(0), jnp.ones(9))
    with pytest.raises(ValueError, match="vmap"):
        comp.compress(jax.random.key(0), jnp.ones((3, 8)))


# ----------------------------------------------------------------------------- bits


def _ceil_log2(x: int) -> int:
    return math.ceil(math.log2(x)) if x > 1 else 0


@pytest.mark.parametrize("d", [1, 2, 17, 64, 100, 1025])
@pytest.mark.parametrize("s", [1, 3, 4, 7])
def test_bits_formulas(d, s):
    ks = sorted({1, max(1, d // 3), d})
    lg, ls = _ceil_log2(d), _ceil_log2(s + 1)
    for k in ks:
        mk = functools.partial(make_compressor, dim=d, k=k, qsgd_levels=s)
        assert mk("identity").bits == 32 * d
        assert mk("topk").bits == k * (32 + lg)
        assert mk("randk").bits == k * (32 + lg)
        assert mk("randk_unbiased").bits == k * (32 + lg)
        assert mk("sign").bits == d
        assert mk("scaled_sign").bits == d + 32
        assert mk("grouped_sign").bits == d + 32
        assert mk("grouped_sign", group_size=5).bits == d + 32 * math.ceil(d / 5)
        assert mk("grouped_sign", segments=(d,)).bits == d + 32
        assert mk("qsgd").bits == 32 + d * (1 + ls)
        assert mk("topk_qsgd").bits == 32 + k * (lg + 1 + ls)
        assert mk("onebit").bits == d + 32
        assert mk("natural").bits == 9 * d


def test_bits_examples():
    assert make_compressor("topk", 1024, k=10).bits == 10 * (32 + 10)
    assert make_compressor("topk", 1025, k=10).bits == 10 * (32 + 11)
    assert make_compressor("qsgd", 100, qsgd_levels=4).bits == 32 + 100 * 4
    assert make_compressor("grouped_sign", 10, segments=(2, 3, 5)).bits == 10 + 96


# ----------------------------------------------------------------------------- JAX


@pytest.mark.parametrize("case", CASE_IDS)
def test_zero_vector_maps_to_zeros(case):
    comp = build(case)
    z = jnp.zeros((3, D), jnp.float32)
    c = jax.jit(jax.vmap(comp.compress))(keys(3, 3), z)
    assert c.dtype == jnp.float32 and c.shape == (3, D)
    assert np.all(np.asarray(c) == 0)


@pytest.mark.parametrize("case", CASE_IDS)
def test_jit_equals_eager_and_shape_dtype(case):
    comp = build(case)
    v = jnp.asarray(rand_v(1))
    key = jax.random.key(11)
    eager = comp.compress(key, v)
    jitted = jax.jit(comp.compress)(key, v)
    chex.assert_shape(jitted, (D,))
    assert eager.dtype == jitted.dtype == jnp.float32
    assert_within(jitted, eager, _pair_tol(jitted, eager, v), "jit vs eager")
    assert np.all(np.isfinite(np.asarray(jitted)))


@pytest.mark.parametrize("case", CASE_IDS)
def test_vmap_over_devices_equals_loop(case):
    comp = build(case)
    m = 5
    vs = jnp.asarray(np.stack([rand_v(20 + i) for i in range(m)]))  # [M, d]
    ks = keys(7, m)
    batched = jax.jit(jax.vmap(comp.compress))(ks, vs)
    chex.assert_shape(batched, (m, D))
    single = jax.jit(comp.compress)
    looped = jnp.stack([single(ks[i], vs[i]) for i in range(m)])
    assert_within(batched, looped, _pair_tol(batched, looped, vs), "vmap vs loop")


@pytest.mark.parametrize("case", CASE_IDS)
def test_float64_preserved(case):
    with jax.enable_x64(True):
        comp = build(case)
        v = jnp.asarray(rand_v(2, dtype=np.float64))
        assert v.dtype == jnp.float64
        c = jax.jit(comp.compress)(jax.random.key(0), v)
        assert c.dtype == jnp.float64
        assert np.all(np.isfinite(np.asarray(c)))
        z = jax.jit(comp.compress)(jax.random.key(0), jnp.zeros(D, jnp.float64))
        assert z.dtype == jnp.float64 and np.all(np.asarray(z) == 0)
        if comp.name in DETERMINISTIC:
            c32 = comp.compress(jax.random.key(0), v.astype(jnp.float32))
            # v rounded to float32 (u), then each computes its output in its own dtype:
            # within gamma_OUT_OPS (float32) plus gamma_OUT_OPS (float64) of exact
            tol = (gamma(OUT_OPS + 1) + gamma(OUT_OPS, np.float64)) * np.abs(np.asarray(c, np.float64))
            assert_within(c, c32, tol, "float64 vs float32")


@pytest.mark.parametrize("case", ["topk", "randk", "qsgd", "grouped_sign/segments", "natural"])
def test_no_retrace_for_new_values(case):
    comp = build(case)
    fn = jax.jit(chex.assert_max_traces(comp.compress, n=1))
    for i in range(3):
        fn(jax.random.key(i), jnp.asarray(rand_v(i)))


def test_equal_arguments_give_the_same_static_compressor():
    a = make_compressor("grouped_sign", 10, segments=[4, 6])
    b = make_compressor("grouped_sign", 10, segments=(4, 6))
    assert a is b and hash(a) == hash(b)
    assert make_compressor("topk", 10, k=2) is not make_compressor("topk", 10, k=3)

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def apply(comp, key, v):
        return comp.compress(key, v)

    for _ in range(2):
        apply(make_compressor("topk", D, k=K), jax.random.key(0), jnp.asarray(rand_v(0)))


# ----------------------------------------------------------------------------- topk


def _check_topk(v: np.ndarray, c: np.ndarray, k: int) -> None:
    kept = c != 0
    assert kept.sum() == k
    np.testing.assert_array_equal(c[kept], v[kept])
    assert np.abs(v[kept]).min() >= np.abs(v[~kept]).max(initial=0)


@pytest.mark.parametrize("k", [1, 5, 16, D])
def test_topk_keeps_exactly_k_largest(k):
    comp = make_compressor("topk", D, k=k)
    fn = jax.jit(comp.compress)
    for seed in range(5):
        v = rand_v(100 + seed)
        _check_topk(v, np.asarray(fn(jax.random.key(0), jnp.asarray(v))), k)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_topk_with_ties_keeps_exactly_k(k):
    rng = np.random.default_rng(5)
    comp = make_compressor("topk", 23, k=k)
    fn = jax.jit(comp.compress)
    for _ in range(5):
        v = rng.choice(np.array([-2.0, -1.0, 1.0, 2.0], np.float32), 23)
        _check_topk(v, np.asarray(fn(jax.random.key(0), jnp.asarray(v))), k)
    # all magnitudes equal: lax.top_k order keeps the lowest indices
    v = np.where(rng.random(23) < 0.5, -3.0, 3.0).astype(np.float32)
    c = np.asarray(fn(jax.random.key(0), jnp.asarray(v)))
    np.testing.assert_array_equal(np.nonzero(c)[0], np.arange(k))


_TOPK_FN = jax.jit(make_compressor("topk", 23, k=6).compress)
_nonzero = st.floats(-1e6, 1e6, allow_subnormal=False, width=32).filter(lambda x: abs(x) > 1e-30)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        23,
        elements=st.one_of(st.sampled_from([-2.0, -1.0, 1.0, 2.0]), _nonzero),
    )
)
def test_topk_property(v):
    _check_topk(v, np.asarray(_TOPK_FN(jax.random.key(0), jnp.asarray(v))), 6)


# ----------------------------------------------------------------------------- randk


@pytest.mark.parametrize("name", ["randk", "randk_unbiased"])
def test_randk_support_and_values(name):
    d, k = 40, 10
    comp = make_compressor(name, d, k=k)
    v = rand_v(3, d)
    samples = mc_samples(comp, v, n=4000)
    kept = samples != 0
    assert np.all(kept.sum(1) == k)
    scale = d / k if name == "randk_unbiased" else 1.0
    # one float32 product (d/k) v_i: u (randk keeps v_i exactly)
    expected = (np.broadcast_to(v, samples.shape) * scale)[kept]
    assert_within(samples[kept], expected, unit_roundoff() * np.abs(expected), "kept values")
    # each coordinate kept with probability k/d (binomial, Z standard errors)
    freq = kept.mean(0)
    p = k / d
    assert np.all(np.abs(freq - p) <= Z * math.sqrt(p * (1 - p) / len(samples)))
    # different keys give different supports
    assert len({tuple(np.nonzero(r)[0]) for r in kept[:50]}) > 40


# ----------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_by_monte_carlo(name):
    d = 40
    comp = make_compressor(name, d, k=10)
    for seed in (0, 1):
        v = rand_v(200 + seed, d)
        coord_ok, agg_ok = unbiased_mc(mc_samples(comp, v, seed=seed), v, comp.omega)
        assert coord_ok and agg_ok


@pytest.mark.parametrize("name", ["randk", "topk_qsgd", "topk", "scaled_sign"])
def test_biased_compressors_fail_the_unbiasedness_check(name):
    d = 40
    comp = make_compressor(name, d, k=10)
    v = rand_v(200, d)
    # the same check as above, with the variance floor of randk_unbiased (omega = 3)
    coord_ok, agg_ok = unbiased_mc(mc_samples(comp, v), v, d / 10 - 1)
    assert not coord_ok and not agg_ok


def test_unbiasedness_check_catches_a_small_bias():
    """randk scaled by 0.9 d/k (a 10% bias) fails; scaled by d/k it passes."""
    d, k = 40, 10
    base = make_compressor("randk", d, k=k)
    v = rand_v(200, d)
    samples = mc_samples(base, v)
    omega = d / k - 1
    assert unbiased_mc(samples * (d / k), v, omega) == (True, True)
    assert unbiased_mc(samples * (0.9 * d / k), v, omega)[1] is False


# ----------------------------------------------------------------------------- variance


@pytest.mark.parametrize("name", [n for n in UNBIASED if n != "identity"])
def test_omega_bound_holds_empirically(name):
    d = 40
    comp = make_compressor(name, d, k=10)
    for seed, v in enumerate(
        [rand_v(300, d), np.random.default_rng(1).standard_normal(d).astype(np.float32)]
    ):
        err = sq_err(mc_samples(comp, v, seed=seed), v)
        lo, _ = mc_mean_bounds(err)
        assert lo <= comp.omega * float(np.sum(np.asarray(v, np.float64) ** 2))


def test_onebit_variance_is_exact():
    d = 30
    comp = make_compressor("onebit", d)
    v = rand_v(4, d).astype(np.float64)
    samples = mc_samples(comp, v)
    b = np.abs(v).max()
    np.testing.assert_array_equal(np.abs(samples), b)  # +-max|v|: a maximum and a sign, exact
    lo, hi = mc_mean_bounds(sq_err(samples, v))
    expected = d * b**2 - np.sum(v**2)
    assert lo <= expected <= hi
    assert expected <= comp.omega * np.sum(v**2)


def test_qsgd_variance_and_levels():
    d, s = 30, 4
    comp = make_compressor("qsgd", d, qsgd_levels=s)
    v = rand_v(5, d).astype(np.float64)
    samples = mc_samples(comp, v)
    norm = np.linalg.norm(v)
    r = s * np.abs(v) / norm
    levels = np.abs(samples) * s / norm
    # float32 samples ||v||_32 xi / s against the float64 norm: the norm's D squares and
    # root (gamma_(D+1)), xi / s and the product (gamma_2); xi <= s
    assert np.allclose(levels, np.round(levels), rtol=0, atol=s * gamma(D + 4))
    lvl = np.round(levels)
    assert np.all((lvl == np.floor(r)) | (lvl == np.ceil(r)))
    assert np.all((samples == 0) | (np.sign(samples) == np.sign(v)))
    frac = r - np.floor(r)
    expected = np.sum((norm / s) ** 2 * frac * (1 - frac))
    lo, hi = mc_mean_bounds(sq_err(samples, v))
    assert lo <= expected <= hi


def test_natural_outputs_and_worst_case_variance():
    d = 30
    comp = make_compressor("natural", d)
    rng = np.random.default_rng(6)
    e = rng.integers(-6, 6, d)
    v = (np.where(rng.random(d) < 0.5, -1, 1) * (4 / 3) * 2.0**e).astype(np.float32)
    samples = mc_samples(comp, v)
    low = 2.0**e
    a = np.abs(samples)
    assert np.all((a == low) | (a == 2 * low))  # powers of two: exact in float32 and float64
    assert np.all(np.sign(samples) == np.sign(v))
    ratio = sq_err(samples, v) / np.sum(np.asarray(v, np.float64) ** 2)
    lo, hi = mc_mean_bounds(ratio)
    assert lo <= comp.omega <= hi  # the bound 1/8 is attained at |v_i| = (4/3) 2^e
    # powers of two are kept exactly, zero stays zero
    w = jnp.asarray([0.0, 1.0, -0.25, 8.0, 0.0], jnp.float32)
    out = make_compressor("natural", 5).compress(jax.random.key(1), w)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(w))


@pytest.mark.parametrize("name", ["randk_unbiased", "randk"])
def test_randk_error_is_exact_in_expectation(name):
    d, k = 40, 10
    comp = make_compressor(name, d, k=k)
    v = rand_v(7, d)
    nv = float(np.sum(np.asarray(v, np.float64) ** 2))
    lo, hi = mc_mean_bounds(sq_err(mc_samples(comp, v), v))
    expected = (d / k - 1) * nv if name == "randk_unbiased" else (1 - k / d) * nv
    assert lo <= expected <= hi


# ----------------------------------------------------------------------------- contraction


def _test_vectors(dim: int, n: int = 30) -> np.ndarray:
    rng = np.random.default_rng(8)
    rows = [
        rng.standard_normal(dim),
        rng.standard_cauchy(dim),
        np.ones(dim),
        np.eye(dim)[dim // 2],
        rng.standard_normal(dim) * (rng.random(dim) < 0.2),
    ]
    rows += [rng.standard_normal(dim) * rng.exponential(size=dim) ** 3 for _ in range(n - len(rows))]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize(
    "case", ["topk", "scaled_sign", "grouped_sign", "grouped_sign/group_size", "grouped_sign/segments"]
)
def test_deterministic_contraction_holds(case):
    comp = build(case)
    vs = _test_vectors(D)
    cs = jax.jit(jax.vmap(comp.compress))(keys(0, len(vs)), jnp.asarray(vs))
    ratio = np.asarray(empirical_contraction(jnp.asarray(vs), cs))
    assert np.all(ratio <= (1 - comp.delta) + contraction_tolerance(vs, np.asarray(cs)))


def _contraction(comp, v) -> tuple[float, float]:
    """(empirical_contraction of comp on v in float32, its rounding bound)."""
    c = comp.compress(jax.random.key(0), jnp.asarray(v))
    return float(empirical_contraction(v, c)), float(contraction_tolerance(v, np.asarray(c))[0])


def test_contraction_worst_cases_are_attained():
    d = 20
    v = np.where(np.arange(d) % 2, -1.5, 1.5).astype(np.float32)  # all magnitudes equal
    for k in (1, 5, 20):
        r, tol = _contraction(make_compressor("topk", d, k=k), v)
        assert r == pytest.approx(1 - make_compressor("topk", d, k=k).delta, rel=0, abs=tol)
    # sign-based: one dominant entry and tiny nonzero others approach 1 - delta (the
    # tiny entries, ~1.5e-4 against 2, leave a gap of about 1e-4: 1e-3 bounds it)
    rng = np.random.default_rng(SEED_CONTRACTION)
    tiny = (1e-4 * np.where(rng.random(d) < 0.5, -1, 1) * (1 + rng.random(d))).astype(np.float32)
    x = tiny.copy()
    x[3] = -2.0
    comp = make_compressor("scaled_sign", d)
    r, tol = _contraction(comp, x)
    assert 1 - comp.delta - 1e-3 <= r <= 1 - comp.delta + tol
    # exactly one-hot is better: sign(0) = 0 leaves the zero entries exact
    r, tol = _contraction(comp, np.eye(d, dtype=np.float32)[3] * -2.0)
    assert r == pytest.approx((1 - 1 / d) ** 2, rel=0, abs=tol)
    comp = make_compressor("grouped_sign", d, segments=(4, 12, 4))
    x = tiny.copy()
    x[6] = 1.0  # dominant entry in the largest group
    r, tol = _contraction(comp, x)
    assert 1 - comp.delta - 1e-3 <= r <= 1 - comp.delta + tol


def test_scaled_sign_input_dependent_delta():
    comp = make_compressor("scaled_sign", D)
    for seed in range(4):
        v = rand_v(seed).astype(np.float64)
        c = np.asarray(comp.compress(jax.random.key(0), jnp.asarray(v, jnp.float32)), np.float64)
        # v rounded to float32 (u), a sum of D magnitudes (gamma_(D-1)), a quotient (u)
        np.testing.assert_allclose(c, np.abs(v).sum() / D * np.sign(v), rtol=gamma(D + 1), atol=0)
        delta_v = np.abs(v).sum() ** 2 / (D * np.sum(v**2))
        assert delta_v >= comp.delta
        tol = float(contraction_tolerance(v, c)[0]) + gamma(D + 1) * (1 - delta_v)  # c off by gamma_(D+1)
        assert float(empirical_contraction(v, c)) == pytest.approx(1 - delta_v, rel=0, abs=tol)


@pytest.mark.parametrize("name", ["randk", "topk_qsgd"])
def test_random_biased_contraction_in_expectation(name):
    d = 40
    for k in (1, 10):
        comp = make_compressor(name, d, k=k)
        for seed in (0, 1):
            v = rand_v(400 + seed, d)
            err = sq_err(mc_samples(comp, v, n=5000, seed=seed), v)
            lo, _ = mc_mean_bounds(err)
            assert lo <= (1 - comp.delta) * float(np.sum(np.asarray(v, np.float64) ** 2))


def test_topk_qsgd_support_is_topk():
    d, k = 40, 10
    comp = make_compressor("topk_qsgd", d, k=k, qsgd_levels=4)
    v = rand_v(9, d)
    top = np.argsort(-np.abs(v))[:k]
    samples = mc_samples(comp, v, n=2000)
    outside = np.ones(d, bool)
    outside[top] = False
    assert np.all(samples[:, outside] == 0)
    # unbiased on the kept coordinates (QSGD of the kept vector)
    coord_ok, agg_ok = unbiased_mc(samples[:, top], v[top], min(k / 16, math.sqrt(k) / 4))
    assert coord_ok and agg_ok


def test_sign_has_no_contraction_guarantee():
    comp = make_compressor("sign", D)
    v = rand_v(10) * 1e-3
    c = comp.compress(jax.random.key(0), jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(c), np.sign(v))
    assert float(empirical_contraction(v, c)) > 1.0
    w = jnp.asarray([0.0, -2.0, 3.0] + [0.0] * (D - 3), jnp.float32)
    assert np.asarray(comp.compress(jax.random.key(0), w))[0] == 0  # sign(0) = 0


# ----------------------------------------------------------------------------- grouped_sign


def test_grouped_sign_groups():
    d = 23
    v = rand_v(11, d)
    c = np.asarray(
        make_compressor("grouped_sign", d, group_size=5).compress(jax.random.key(0), jnp.asarray(v))
    )
    for start in range(0, d, 5):  # last group has 3 entries
        g = slice(start, start + 5)
        # a mean of at most 5 magnitudes: gamma_(5+1)
        np.testing.assert_allclose(c[g], np.abs(v[g]).mean() * np.sign(v[g]), rtol=gamma(7), atol=0)
    segs = (4, 1, 10, 8)
    c = np.asarray(
        make_compressor("grouped_sign", d, segments=segs).compress(jax.random.key(0), jnp.asarray(v))
    )
    bounds = np.cumsum((0,) + segs)
    for a, b in itertools.pairwise(bounds):
        np.testing.assert_allclose(
            c[a:b], np.abs(v[a:b]).mean() * np.sign(v[a:b]), rtol=gamma(b - a + 2), atol=0
        )
    # no layout: one group = scaled_sign; group_size takes precedence over segments
    one = make_compressor("grouped_sign", d).compress(jax.random.key(0), jnp.asarray(v))
    ss = make_compressor("scaled_sign", d).compress(jax.random.key(0), jnp.asarray(v))
    # the same mean of d magnitudes in two orders: twice gamma_(d+1)
    np.testing.assert_allclose(np.asarray(one), np.asarray(ss), rtol=2 * gamma(d + 2), atol=0)
    both = make_compressor("grouped_sign", d, group_size=5, segments=segs)
    assert both.bits == d + 32 * 5
    # group_size >= d is one group
    big = make_compressor("grouped_sign", d, group_size=100)
    assert big.bits == d + 32
    np.testing.assert_allclose(
        np.asarray(big.compress(jax.random.key(0), jnp.asarray(v))),
        np.asarray(ss),
        rtol=2 * gamma(d + 2),
        atol=0,
    )


# ----------------------------------------------------------------------------- helper


def test_empirical_contraction_is_safe():
    z = jnp.zeros(5)
    assert float(empirical_contraction(z, z)) == 0.0
    assert float(empirical_contraction(z, jnp.ones(5))) == np.inf
    v = jnp.asarray([3.0, 4.0])
    # 0 + 16 and 9 + 16 are exact, 16 / 25 is one rounding
    assert float(empirical_contraction(v, jnp.asarray([3.0, 0.0]))) == pytest.approx(16 / 25, rel=gamma(1))
    batch = empirical_contraction(jnp.stack([v, 2 * v]), jnp.zeros((2, 2)))
    chex.assert_trees_all_equal(batch, jnp.ones(2))  # ||0 - v||^2 / ||v||^2 = x / x = 1 exactly


def test_topk_bisection_mask_selects_lax_top_k_entries():
    """The bisection path (k/d >= 2%) keeps exactly lax.top_k's entries: random
    values, heavy ties, zeros, ±inf, a NaN, and under vmap."""
    from coco_jax.compressors import _topk_mask

    rng = np.random.default_rng()
    checked = 0
    for d, k in ((20, 1), (20, 20), (100, 5), (100, 37), (1000, 100), (4000, 1000)):
        for kind in ("normal", "ties", "zeros", "inf", "nan"):
            if kind == "ties":
                v = rng.integers(-3, 4, size=d).astype(np.float32)
            elif kind == "zeros":
                v = np.where(rng.random(d) < 0.7, 0.0, rng.normal(size=d)).astype(np.float32)
            else:
                v = rng.normal(size=d).astype(np.float32)
                if kind == "inf":
                    v[rng.integers(0, d, 3)] = [np.inf, -np.inf, np.inf]
                if kind == "nan":
                    v[rng.integers(0, d)] = np.nan
            _, idx = jax.lax.top_k(jnp.abs(jnp.asarray(v)), k)
            want = np.zeros(d, bool)
            want[np.asarray(idx)] = True
            got = np.asarray(jax.jit(_topk_mask, static_argnums=1)(jnp.asarray(v), k))
            np.testing.assert_array_equal(got, want, err_msg=f"d={d} k={k} {kind}")
            assert got.sum() == k
            checked += 1
    assert checked == 30
    # the compressor takes this path for k/d >= 2% and agrees with the index path
    comp = make_compressor("topk", 200, k=40)
    batch = jnp.asarray(rng.normal(size=(8, 200)).astype(np.float32))
    out = jax.vmap(lambda x: comp.compress(jax.random.key(0), x))(batch)
    _, idx = jax.lax.top_k(jnp.abs(batch), 40)
    expected = jnp.zeros_like(batch).at[jnp.arange(8)[:, None], idx].set(jnp.take_along_axis(batch, idx, 1))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_topk_mask_vmapped_rows_with_and_without_surplus_ties():
    """Under vmap (rows and a traced k per row), rows whose threshold has surplus ties
    and rows without any share one batched tie bisection; each row still keeps exactly
    lax.top_k's entries (the tie loop must not disturb rows that finished at once)."""
    from coco_jax.compressors import _count_at_least, _mask_of_largest

    rng = np.random.default_rng()
    d = 257
    rows = []
    for i in range(12):
        if i % 3 == 0:
            rows.append(rng.integers(0, 5, size=d))  # heavy ties at every threshold
        elif i % 3 == 1:
            rows.append(rng.permutation(d) * 7 + 1)  # distinct: no tie anywhere
        else:
            rows.append(np.where(rng.random(d) < 0.6, 0, rng.integers(1, 2**31 - 1, size=d)))
    bits = jnp.asarray(np.stack(rows).astype(np.int32))
    ks = jnp.asarray(rng.integers(1, d + 1, size=len(rows)).astype(np.int32))
    got = np.asarray(jax.jit(jax.vmap(_mask_of_largest))(bits, ks))
    for row, k, mask in zip(np.asarray(bits), np.asarray(ks), got):
        _, idx = jax.lax.top_k(jnp.asarray(row), int(k))
        want = np.zeros(d, bool)
        want[np.asarray(idx)] = True
        np.testing.assert_array_equal(mask, want, err_msg=f"k={k}")
    t = np.median(np.asarray(bits), axis=1).astype(np.int32)
    counts = jax.vmap(_count_at_least)(bits, jnp.asarray(t))
    np.testing.assert_array_equal(np.asarray(counts), (np.asarray(bits) >= t[:, None]).sum(1))


# ------------------------------------------------------------- traced k (compress_k)


@pytest.mark.parametrize("name", ["topk", "randk", "randk_unbiased"])
def test_traced_k_equals_the_compressor_built_with_that_k(name):
    """`compress_k(key, v, k)` with k traced equals `compress` of the compressor built
    with that k, bit for bit (same kept entries, same values and scale), jitted and
    vmapped over devices and over k, on fresh inputs with ties and zeros. d = 257 so that
    both of the static compressor's paths are compared: its index path (lax.top_k, for
    k < 2% of d) and its mask path."""
    d = 257
    dynamic = make_compressor(name, d, k=3).compress_k
    assert dynamic is not None
    traced = jax.jit(jax.vmap(dynamic, in_axes=(0, 0, 0)))
    rng = np.random.default_rng()
    for _ in range(4):
        ks = rng.integers(1, d + 1, size=6)
        ks[:2] = rng.integers(1, 6, size=2)  # below 2% of d: the index path
        vs = rng.choice(np.array([0.0, -1.5, 1.5, 2.0], np.float32), (6, d))
        vs[::2] = rng.normal(size=(3, d)).astype(np.float32)
        keys = jax.random.split(jax.random.key(int(rng.integers(1 << 30))), 6)
        got = np.asarray(traced(keys, jnp.asarray(vs), jnp.asarray(ks, jnp.int32)))
        for i, k in enumerate(ks):
            want = make_compressor(name, d, k=int(k)).compress(keys[i], jnp.asarray(vs[i]))
            np.testing.assert_array_equal(got[i], np.asarray(want), err_msg=f"{name} k={k}")
    bits = make_compressor(name, d, k=5)
    assert bits.bits == bits.bits_of_k(5) and int(bits.bits_of_k(jnp.int32(5))) == bits.bits


def test_traced_k_only_where_it_is_exact():
    """float64 top-k has no traced-k form (its bisection works on float32 bit patterns);
    compressors that ignore k have none either."""
    from coco_jax.compressors import topk

    assert topk(10, 2, dtype=jnp.float64).compress_k is None
    assert make_compressor("identity", 10).compress_k is None
    assert make_compressor("topk", 10, k=2).compress_k is not None
