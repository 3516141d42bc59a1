"""Exact recovery of the gradient codes from every set of <= s stragglers, through the
jitted `optimal` decoder the engine uses, on fresh random gradients.

The documented guarantee (coco_jax.cyclic_mds): the relative gradient error
||g_hat - grad F|| / max_k ||grad f_k|| is at most `decode_error_bound` =
eps (2 kappa + sqrt(M)), kappa = max over sets of sum_m |w_m| ||B_m||_1
(`cyclic_mds_condition` for cyclic_mds), and at most MDS_TOLERANCE wherever
`check_cyclic_mds` accepts the configuration. For random partition gradients the
error relative to ||mean_k g_k|| is about sqrt(K) times larger; the tests assert
||g_hat - mean||^2 / ||mean||^2 <= (bound * max_k ||g_k|| / ||mean||)^2.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coco_jax import coding, cyclic_mds
from coco_jax.coding import make_allocation
from coco_jax.config import ConfigError
from coco_jax.cyclic_mds import (
    MDS_TOLERANCE,
    check_cyclic_mds,
    cyclic_mds_analysis,
    cyclic_mds_condition,
    cyclic_mds_matrix,
    decode_error_bound,
)
from coco_jax.decoders import decode_weights, lstsq_rcond

SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh gradients each run
EPS32 = float(np.finfo(np.float32).eps)
COEF_FACTOR = 32.0  # K ||B_S^T w - 1/K||_inf <= COEF_FACTOR eps kappa (measured <= 12.5)
DIM = 16  # gradient dimension


def _rng(tag: int) -> np.random.Generator:
    return np.random.default_rng([SEED, tag])


@jax.jit
def _decode_and_estimate(Bs, masks, grads):
    """Per row: optimal weights w [M] and g_hat = sum_m w_m (B g)_m [d], all in float32,
    as in the engine's step (coded gradients B g, then w @ coded)."""

    def one(B, straggles):
        w = decode_weights("optimal", B, straggles, jnp.zeros(B.shape[0], B.dtype), 1.0)
        coded = B @ grads  # [M, d]
        return w, w @ coded

    return jax.vmap(one)(Bs, masks)


def _run(Bs: np.ndarray, masks: np.ndarray, grads: np.ndarray, pad: int = 512):
    """Pad the batch to a multiple of ``pad`` rows (few compiles) and decode."""
    n = len(masks)
    size = -(-n // pad) * pad
    Bp = np.zeros((size, *Bs.shape[1:]), Bs.dtype)
    Bp[:n] = Bs
    mp = np.zeros((size, masks.shape[1]), bool)
    mp[:n] = masks
    w, ghat = _decode_and_estimate(jnp.asarray(Bp), jnp.asarray(mp), jnp.asarray(grads))
    return np.asarray(w, np.float64)[:n], np.asarray(ghat, np.float64)[:n]


def _masks(m_dev: int, sets) -> np.ndarray:
    out = np.zeros((len(sets), m_dev), bool)
    for i, dead in enumerate(sets):
        out[i, list(dead)] = True
    return out


def _kappa_per_set(B64: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """sum_m |w_m| ||B_m||_1 for the float64 minimum-norm exact weights (numpy)."""
    k_parts = B64.shape[1]
    A = np.swapaxes(B64[None] * (~masks)[:, :, None], 1, 2)  # [N, K, M]
    w = np.linalg.pinv(A, rcond=1e-10) @ np.full(k_parts, 1.0 / k_parts)  # [N, M]
    return np.abs(w) @ np.abs(B64).sum(axis=1)


def _check_sets(name: str, B64: np.ndarray, masks: np.ndarray, w, ghat, grads, kappa: float, tag: str):
    """Every set decodes: stragglers get 0, coefficients and gradient within the bounds."""
    k_parts = B64.shape[1]
    assert np.all(w[masks] == 0.0), tag
    coef = k_parts * np.abs(w @ B64 - 1.0 / k_parts).max(axis=1)  # [N]
    assert coef.max() <= COEF_FACTOR * EPS32 * kappa, (tag, coef.max(), kappa)
    g64 = grads.astype(np.float64)
    mean = g64.mean(axis=0)
    scale = np.linalg.norm(g64, axis=1).max()  # max_k ||grad f_k||
    err = np.linalg.norm(ghat - mean[None], axis=1)  # [N]
    bound = decode_error_bound(kappa, B64.shape[0], "float32")  # relative to max_k ||grad f_k||
    rel_sq = (err / np.linalg.norm(mean)) ** 2  # ||g_hat - mean||^2 / ||mean||^2
    bound_sq = (bound * scale / np.linalg.norm(mean)) ** 2
    worst = int(np.argmax(rel_sq))
    assert rel_sq.max() <= bound_sq, (tag, name, np.nonzero(masks[worst])[0], rel_sq.max(), bound_sq, SEED)
    assert err.max() <= MDS_TOLERANCE["float32"] * scale, (tag, err.max() / scale)


# ------------------------------------------------------------- every set, M <= 20, s <= 4


def _codes_for(m_dev: int, s: int):
    """(name, float32 B, float64 B, kappa) for every code exact at (M, s)."""
    out = []
    for name in ("cyclic_mds", "frc", "cyclic"):
        if name != "cyclic_mds" and m_dev % (s + 1):
            continue  # frc undefined; 0/1 cyclic not exact (test_cyclic_01_exact_iff_divides)
        alloc = make_allocation(name, m_dev, m_dev, s)
        B32 = np.asarray(alloc.sample(jax.random.key(0), dtype=jnp.float32))
        B64 = cyclic_mds_matrix(m_dev, s) if name == "cyclic_mds" else B32.astype(np.float64)
        out.append((name, B32, B64))
    return out


@pytest.mark.parametrize("m_dev", range(2, 21))
def test_every_straggler_set_decodes_float32(m_dev):
    """All sets of exactly s stragglers (and spot checks of fewer) for cyclic_mds, frc
    and the 0/1 cyclic code when (s+1) | M; s = 1 .. min(4, M-1)."""
    grads = _rng(m_dev).standard_normal((m_dev, DIM)).astype(np.float32)
    rows_B, rows_mask, meta = [], [], []
    for s in range(1, min(4, m_dev - 1) + 1):
        exact = list(itertools.combinations(range(m_dev), s))
        fewer = [
            tuple(sorted(_rng(100 * m_dev + s).choice(m_dev, j, replace=False)))
            for j in range(s)
            for _ in range(8)
        ]
        masks = _masks(m_dev, exact + fewer)
        for name, B32, B64 in _codes_for(m_dev, s):
            rows_B.append(np.broadcast_to(B32, (len(masks), m_dev, m_dev)))
            rows_mask.append(masks)
            meta.append((name, s, B64, len(masks)))
    w, ghat = _run(np.concatenate(rows_B), np.concatenate(rows_mask), grads)
    start = 0
    for (name, s, B64, n), masks in zip(meta, rows_mask):
        sl = slice(start, start + n)
        start += n
        if name == "cyclic_mds":
            kappa = cyclic_mds_condition(m_dev, s)
            check_cyclic_mds(m_dev, s, "float32")  # every M <= 20, s <= 4 is accepted
        else:
            kappa = float(_kappa_per_set(B64, masks).max())
        _check_sets(name, B64, masks, w[sl], ghat[sl], grads, kappa, f"{name} M={m_dev} s={s}")


def test_kappa_is_exact_max_over_sets():
    """cyclic_mds_condition equals the max over every set of the float64 min-norm kappa."""
    for m_dev, s in [(7, 2), (8, 4), (11, 3), (12, 4), (16, 4), (20, 3)]:
        masks = _masks(m_dev, [d for j in range(s + 1) for d in itertools.combinations(range(m_dev), j)])
        kappas = _kappa_per_set(cyclic_mds_matrix(m_dev, s), masks)
        info = cyclic_mds_analysis(m_dev, s)
        assert info.exhaustive and info.residual < 1e-10
        np.testing.assert_allclose(kappas.max(), info.kappa, rtol=1e-6)
        # exactly s stragglers is the worst case here; bursts are the worst sets
        exact_s = masks.sum(1) == s
        assert kappas[exact_s].max() == pytest.approx(kappas.max(), rel=1e-9)
        burst = np.zeros(m_dev, bool)
        burst[:s] = True
        assert _kappa_per_set(cyclic_mds_matrix(m_dev, s), burst[None])[0] >= 0.5 * info.kappa


# ------------------------------------------------------------------- construction


@pytest.mark.parametrize("m_dev", [2, 3, 5, 8, 13, 20, 31, 64])
def test_cyclic_mds_structure_every_s(m_dev):
    """Support m..m+s, columns summing to s+1, no zero coefficient, deterministic,
    float64 exact (1 in the span of every M - s rows, checked on the bursts)."""
    for s in range(m_dev):
        B = cyclic_mds_matrix(m_dev, s)
        support = np.zeros((m_dev, m_dev), bool)
        for m in range(m_dev):
            support[m, (m + np.arange(s + 1)) % m_dev] = True
        assert np.all(B[~support] == 0.0) and np.all(B[support] != 0.0)
        np.testing.assert_allclose(B.sum(axis=0), s + 1, rtol=1e-9)
        np.testing.assert_array_equal(B, cyclic_mds_matrix(m_dev, s))
        if s < 6 or s > m_dev - 4:
            sv = np.linalg.svd(B, compute_uv=False)
            assert sv[m_dev - s - 1] > 1e-9 * sv[0] and (s == 0 or sv[m_dev - s] < 1e-9 * sv[0])
            for start in range(m_dev):
                alive = np.ones(m_dev, bool)
                alive[(start + np.arange(s)) % m_dev] = False
                w = np.linalg.lstsq(B[alive].T, np.ones(m_dev), rcond=None)[0]
                assert np.abs(B[alive].T @ w - 1.0).max() < 1e-7, (m_dev, s, start)
    np.testing.assert_array_equal(cyclic_mds_matrix(m_dev, m_dev - 1), np.ones((m_dev, m_dev)))
    np.testing.assert_array_equal(cyclic_mds_matrix(m_dev, 0), np.eye(m_dev))


def test_bound_regime_is_an_upper_bound():
    """The rigorous bounds (used when enumeration is too long) dominate the exact values."""
    for m_dev, s in [(9, 2), (12, 5), (20, 4), (30, 3), (40, 2), (25, 4)]:
        info = cyclic_mds_analysis(m_dev, s)
        kappa_bound, floor_bound = cyclic_mds._mds_bound(cyclic_mds._mds_code(m_dev, s), s)
        assert info.exhaustive
        assert info.kappa <= kappa_bound <= 10 * info.kappa
        assert floor_bound <= info.sigma_floor
        # the floor itself is a lower bound on every survivor matrix's smallest sv
        B = cyclic_mds_matrix(m_dev, s)
        sv1 = np.linalg.svd(B, compute_uv=False)[0]
        alive = np.ones(m_dev, bool)
        alive[:s] = False
        assert np.linalg.svd(B[alive], compute_uv=False)[-1] / sv1 >= info.sigma_floor


# ------------------------------------------------------------- M = 50 and M = 100


def _sample_sets(m_dev: int, s: int, count: int, tag: int):
    """Seeded: every burst of s consecutive devices, then random sets of size s and fewer."""
    rng = np.random.default_rng(tag)  # fixed: the same sets every run
    sets = [tuple(sorted((b + np.arange(s)) % m_dev)) for b in range(m_dev)]
    while len(sets) < count:
        j = s if len(sets) < 0.8 * count else int(rng.integers(0, s))
        sets.append(tuple(sorted(rng.choice(m_dev, j, replace=False))))
    return sets


@pytest.mark.parametrize("m_dev,s_values,count", [(50, (1, 2, 3), 80), (100, (1, 2), 112)])
def test_large_m_sampled_float32(m_dev, s_values, count):
    """Seeded samples (all bursts + random) of survivor sets where float32 is accepted."""
    grads = _rng(m_dev).standard_normal((m_dev, DIM)).astype(np.float32)
    for s in s_values:
        check_cyclic_mds(m_dev, s, "float32")
        alloc = make_allocation("cyclic_mds", m_dev, m_dev, s)
        B32 = np.asarray(alloc.sample(jax.random.key(0)))
        masks = _masks(m_dev, _sample_sets(m_dev, s, count, 7 * m_dev + s))
        w, ghat = _run(np.broadcast_to(B32, (len(masks), m_dev, m_dev)), masks, grads, pad=count)
        kappa = cyclic_mds_condition(m_dev, s)
        _check_sets(
            "cyclic_mds", cyclic_mds_matrix(m_dev, s), masks, w, ghat, grads, kappa, f"M={m_dev} s={s}"
        )


# (M, s): accepted in float32?, accepted in float64? (documented in check_cyclic_mds)
DOCUMENTED = {
    (50, 1): (True, True),
    (50, 2): (True, True),
    (50, 3): (True, True),
    (50, 4): (False, True),
    (50, 5): (False, True),
    (50, 6): (False, False),
    (100, 1): (True, True),
    (100, 2): (True, True),
    (100, 3): (False, True),
    (100, 4): (False, True),
    (100, 5): (False, False),
}


@pytest.mark.parametrize("key", sorted(DOCUMENTED))
def test_check_refuses_exactly_the_documented(key):
    m_dev, s = key
    ok32, ok64 = DOCUMENTED[key]
    for dtype_name, ok in (("float32", ok32), ("float64", ok64)):
        if ok:
            check_cyclic_mds(m_dev, s, dtype_name)
            continue
        field = "dtype" if dtype_name == "float32" and ok64 else "redundancy"
        value = dtype_name if field == "dtype" else s
        with pytest.raises(ConfigError, match=rf"^{field}={value!r} is invalid") as err:
            check_cyclic_mds(m_dev, s, dtype_name)
        msg = str(err.value)
        assert f"num_devices={m_dev}" in msg and "kappa=" in msg and "redundancy <=" in msg
        if field == "dtype":
            assert "dtype='float64' with jax x64 enabled" in msg


@pytest.mark.parametrize("s", [3, 4, 5, 6, 7, 8])
def test_float32_device_table(s):
    """The largest M of the error message's table: accepted there, refused just above,
    and every smaller M accepted."""
    top = cyclic_mds._FLOAT32_MAX_DEVICES[s]
    assert all(cyclic_mds.cyclic_mds_ok(m, s, "float32") for m in range(s + 1, top + 1))
    assert not cyclic_mds.cyclic_mds_ok(top + 1, s, "float32")
    with pytest.raises(ConfigError, match=rf"num_devices <= {top}"):
        check_cyclic_mds(top + 1, s, "float32")


def test_s1_and_s2_accepted_at_scale():
    assert cyclic_mds_condition(101, 1) < 2.4 and cyclic_mds_condition(160, 1) == pytest.approx(1.0)
    check_cyclic_mds(161, 1, "float32")
    check_cyclic_mds(150, 2, "float32")


_X64_SCRIPT = textwrap.dedent(
    """
    import itertools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from coco_jax import coding, cyclic_mds, decoders
    assert jax.config.jax_enable_x64
    out = {}
    # the float64 B is the exact matrix, not a float32-rounded copy
    alloc = coding.make_allocation("cyclic_mds", 20, 20, 4)
    B64 = np.asarray(alloc.sample(jax.random.key(0), dtype=jnp.float64))
    B32 = np.asarray(alloc.sample(jax.random.key(0), dtype=jnp.float32))
    exact = cyclic_mds.cyclic_mds_matrix(20, 4)
    out["b64_dtype"] = str(B64.dtype)
    out["b64_exact"] = bool(np.array_equal(B64, exact))
    out["b64_not_rounded"] = bool(not np.array_equal(B64, B32.astype(np.float64)))
    out["b32_rounded_once"] = bool(np.array_equal(B32, exact.astype(np.float32)))
    # the default is the widest float: sample(key).astype(run_dtype) is exact too
    out["default_exact"] = bool(np.array_equal(np.asarray(alloc.sample(jax.random.key(0))), exact))
    alloc_c = coding.make_allocation("cyclic", 6, 12, 2)
    out["cyclic64"] = str(np.asarray(alloc_c.sample(jax.random.key(0), dtype=jnp.float64)).dtype)
    out["bern64"] = str(np.asarray(coding.make_allocation("bernoulli", 6, 6, 1).sample(
        jax.random.key(1), dtype=jnp.float64)).dtype)
    # float64 decoding where float32 is refused: sampled sets, same jitted path
    cases = json.loads(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    errs = {}
    for m_dev, s, sets in cases:
        cyclic_mds.check_cyclic_mds(m_dev, s, "float64")
        B = coding.make_allocation("cyclic_mds", m_dev, m_dev, s).sample(jax.random.key(0), dtype=jnp.float64)
        masks = np.zeros((len(sets), m_dev), bool)
        for i, dead in enumerate(sets):
            masks[i, dead] = True
        g = rng.standard_normal((m_dev, 8))
        f = jax.jit(jax.vmap(lambda st: decoders.decode_weights("optimal", B, st, jnp.zeros(m_dev), 1.0)))
        w = np.asarray(f(jnp.asarray(masks)))
        ghat = w @ (np.asarray(B) @ g)
        err = np.linalg.norm(ghat - g.mean(0), axis=1) / np.linalg.norm(g, axis=1).max()
        coef = m_dev * np.abs(w @ cyclic_mds.cyclic_mds_matrix(m_dev, s) - 1.0 / m_dev).max(1)
        errs[f"{m_dev},{s}"] = [float(err.max()), float(coef.max()), bool(np.all(w[masks] == 0)),
                                cyclic_mds.cyclic_mds_condition(m_dev, s),
                                cyclic_mds.decode_error_bound(cyclic_mds.cyclic_mds_condition(m_dev, s), m_dev, "float64")]
    out["errs"] = errs
    print("RESULT" + json.dumps(out))
    """
)


def test_float64_path_in_x64_subprocess():
    """With jax x64: B is float64 and exact, and float64 decoding meets
    eps (2 kappa + sqrt(M)) (and 1e-10) on sampled sets (every burst) of the
    configurations float32 refuses."""
    cases = [
        (50, 4, [list(map(int, d)) for d in _sample_sets(50, 4, 64, 1)]),
        (100, 4, [list(map(int, d)) for d in _sample_sets(100, 4, 112, 3)]),
    ]
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _X64_SCRIPT, json.dumps(cases), str(SEED)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["b64_dtype"] == "float64" and out["b64_exact"] and out["b64_not_rounded"]
    assert out["b32_rounded_once"] and out["default_exact"]
    assert out["cyclic64"] == "float64" and out["bern64"] == "float64"
    eps64 = float(np.finfo(np.float64).eps)
    for key, (err, coef, zero, kappa, bound) in out["errs"].items():
        assert zero, key
        assert err <= bound <= MDS_TOLERANCE["float64"], (key, err, kappa)
        assert coef <= COEF_FACTOR * eps64 * kappa, (key, coef, kappa)


# ------------------------------------------------------------------ dtype of B


def test_float32_sample_is_rounded_from_float64():
    for name, m_dev, s in [("cyclic_mds", 12, 4), ("cyclic_mds", 9, 3), ("cyclic", 6, 2), ("frc", 6, 1)]:
        alloc = make_allocation(name, m_dev, m_dev, s)
        B = np.asarray(alloc.sample(jax.random.key(0)))
        assert B.dtype == np.float32
        assert np.array_equal(B, np.asarray(alloc.sample(jax.random.key(3), dtype=jnp.float32)))
        if name == "cyclic_mds":
            assert np.array_equal(B, cyclic_mds_matrix(m_dev, s).astype(np.float32))
    # without x64 a float64 request (and the default) gives float32, silently
    if not jax.config.jax_enable_x64:
        alloc = make_allocation("cyclic_mds", 8, 8, 2)
        assert alloc.sample(jax.random.key(0), dtype=jnp.float64).dtype == jnp.float32
        assert alloc.sample(jax.random.key(0)).dtype == jnp.float32


# ------------------------------------------------------------------ decoder details


def test_lstsq_rcond_rule():
    assert lstsq_rcond(jnp.float32, 100, 100) == pytest.approx(4 * EPS32 * 10)
    assert lstsq_rcond(jnp.float32, 20, 40) == pytest.approx(4 * EPS32 * math.sqrt(40))
    # below pinv's default cutoff (10 eps max(M, K)), above float32 noise (~eps)
    assert lstsq_rcond(jnp.float32, 20, 20) < 10 * EPS32 * 20


def test_optimal_is_min_norm_least_squares():
    """Fewer than s stragglers (several exact solutions) and more than s (none): the
    weights are numpy's float64 minimum-norm least-squares solution."""
    m_dev, s = 12, 3
    B32 = np.asarray(make_allocation("cyclic_mds", m_dev, m_dev, s).sample(jax.random.key(0)))
    B64 = cyclic_mds_matrix(m_dev, s)
    rng = _rng(5)
    sets = [tuple(rng.choice(m_dev, j, replace=False)) for j in (0, 1, 2, 5, 7) for _ in range(4)]
    masks = _masks(m_dev, sets)
    w, _ = _run(np.broadcast_to(B32, (len(masks), m_dev, m_dev)), masks, np.ones((m_dev, 2), np.float32))
    for mask, w_row in zip(masks, w):
        ref = np.linalg.pinv(B64[~mask].T) @ np.full(m_dev, 1.0 / m_dev)
        np.testing.assert_allclose(w_row[~mask], ref, atol=1e-5 * np.abs(ref).max() + 1e-7)
        assert np.all(w_row[mask] == 0)


def test_custom_rcond_keyword():
    B = jnp.asarray(cyclic_mds_matrix(8, 2), jnp.float32)
    st = jnp.array([True, False, False, True, False, False, False, False])
    w_default = decode_weights("optimal", B, st, jnp.zeros(8), 3.0)
    w_same = decode_weights("optimal", B, st, jnp.zeros(8), 3.0, rcond=lstsq_rcond(jnp.float32, 8, 8))
    np.testing.assert_array_equal(np.asarray(w_default), np.asarray(w_same))
    # a cutoff above every singular value drops everything
    np.testing.assert_array_equal(
        np.asarray(decode_weights("optimal", B, st, jnp.zeros(8), 3.0, rcond=2.0)), 0.0
    )


# ------------------------------------------------------------------ README claims


def test_cyclic_01_exact_iff_divides():
    """The 0/1 cyclic code decodes every set of <= s stragglers exactly iff (s+1) | M,
    and frc always does (float64 rank test, every set, M <= 12)."""
    for m_dev in range(2, 13):
        for s in range(1, m_dev):
            B = coding._cyclic_support(m_dev, s)
            masks = _masks(m_dev, list(itertools.combinations(range(m_dev), s)))
            A = np.swapaxes(B[None] * (~masks)[:, :, None], 1, 2)  # [N, K, M]
            w = np.linalg.pinv(A, rcond=1e-10) @ np.ones(m_dev)
            ok = np.abs(np.einsum("nkm,nm->nk", A, w) - 1.0).max(axis=1) < 1e-8
            assert ok.all() == (m_dev % (s + 1) == 0), (m_dev, s)
            if m_dev % (s + 1) == 0:
                F = coding._frc_support(m_dev, s)
                A = np.swapaxes(F[None] * (~masks)[:, :, None], 1, 2)
                w = np.linalg.pinv(A, rcond=1e-10) @ np.ones(m_dev)
                assert np.abs(np.einsum("nkm,nm->nk", A, w) - 1.0).max() < 1e-8


def test_config_refuses_what_float32_cannot_decode_before_compiling():
    """The refusal reaches the user as a config error, before anything runs; without
    stragglers (only the full set is decoded) the same code is accepted."""
    import coco_jax as cj
    from coco_jax.cache import CompileCounter

    with CompileCounter() as cc, pytest.raises(cj.ConfigError, match="dtype='float32'.*redundancy <= 2"):
        cj.preset("gc", allocation="cyclic_mds", num_devices=100, redundancy=3)
    assert cc.count == 0
    accepted = cj.preset("gc", allocation="cyclic_mds", num_devices=100, redundancy=3, straggler="none")
    assert (accepted.redundancy, accepted.straggler) == (3, "none")
    assert cj.preset("gc", allocation="cyclic_mds", num_devices=100, redundancy=2).redundancy == 2
