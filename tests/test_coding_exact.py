"""Exact recovery of the gradient codes from every set of <= s stragglers, through the
jitted `optimal` decoder the engine uses, on fresh random gradients.

What is checked (the derivation is in coco_jax/cyclic_mds.py's module docstring), per
straggler set, with w the computed float32 weights, r = B^T w - 1/K their residual
against the float32 B, rho_w = ||r||_1, and three gradient families (iid N(0, 1)
partitions, a common direction plus noise as from iid data, and the adversarial
g_k = sign(r_k) v for which the residual is the whole error):

1. the guaranteed rounding bound, componentwise and independent of the CPU:
   |g_hat - (B^T w)^T g| <= gamma_(M+L) (|w|^T |B|) |g| (L = nonzeros per row of B),
   plus the float64 reference's own gamma; it fails on a dropped or doubled term;
2. the calibrated estimate `decode_error_bound` = eps (7 kappa + 8 sqrt(M)), on rho_w
   (the worst case over gradients of the residual part) and on the error
   ||g_hat - grad F|| / max_k ||grad f_k|| of every family; kappa is
   `cyclic_mds_condition` for cyclic_mds and the worst set's float64 kappa for the 0/1
   codes;
3. MDS_TOLERANCE wherever `check_cyclic_mds` accepts the configuration.
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
from conftest import assert_within, gamma, min_norm_tolerance

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
DIM = 16  # gradient dimension


def _rng(tag: int) -> np.random.Generator:
    return np.random.default_rng([SEED, tag])


@jax.jit
def _weights(Bs, masks):
    """Per row: the optimal decoder's weights w [M] in B's dtype, as in the engine."""
    return jax.vmap(lambda B, st: decode_weights("optimal", B, st, jnp.zeros(B.shape[0], B.dtype), 1.0))(
        Bs, masks
    )


@jax.jit
def _estimates(Bs, w, grads):
    """Per row: g_hat = w @ (B @ g) in B's dtype, as in the engine's step (coded
    gradients B g, then the decoder-weighted sum); grads [N, K, d]."""
    return jax.vmap(lambda B, wi, g: wi @ (B @ g))(Bs, w, grads)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out


def _run(Bs: np.ndarray, masks: np.ndarray, pad: int = 512):
    """Decode every row (batch padded to a multiple of ``pad`` rows: few compiles), then
    estimate the gradient for each family. Returns float64 w [N, M] and
    {family: (grads [N, K, d] float32, g_hat [N, d] float64)}."""
    n, m_dev = masks.shape
    size = -(-n // pad) * pad
    w32 = np.asarray(_weights(jnp.asarray(_pad(Bs, size)), jnp.asarray(_pad(masks, size))))[:n]
    w = w32.astype(np.float64)
    r = np.einsum("nm,nmk->nk", w, Bs.astype(np.float64)) - 1.0 / Bs.shape[2]  # [N, K]
    rng = _rng(1000 + m_dev)
    v = rng.standard_normal(DIM)
    families = {
        "iid": np.broadcast_to(rng.standard_normal((m_dev, DIM)), (n, m_dev, DIM)),
        "common": v + 0.1 * rng.standard_normal((n, m_dev, DIM)),
        "adversarial": np.where(r < 0, -1.0, 1.0)[:, :, None] * v,  # the residual part at its worst
    }
    out = {}
    for name, g in families.items():
        g32 = np.ascontiguousarray(g, np.float32)
        ghat = _estimates(
            jnp.asarray(_pad(Bs, size)), jnp.asarray(_pad(w32, size)), jnp.asarray(_pad(g32, size))
        )
        out[name] = (g32, np.asarray(ghat, np.float64)[:n])
    return w, out


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


def _check_sets(
    name: str, B32: np.ndarray, masks: np.ndarray, w, families, kappa: float, tag: str, accepted: bool = True
):
    """Every set decodes: stragglers get 0; the guaranteed rounding bound, the
    calibrated estimate and (where accepted) MDS_TOLERANCE hold (module docstring)."""
    m_dev, k_parts = B32.shape
    B = B32.astype(np.float64)  # the float32 code the engine multiplies by, exactly
    nnz = int((B != 0).sum(axis=1).max())  # L: nonzero terms of each coded gradient
    assert np.all(w[masks] == 0.0), tag
    coef = w @ B  # [N, K] = B^T w, exact up to float64 rounding
    rho = np.abs(coef - 1.0 / k_parts).sum(axis=1)  # [N]
    estimate = decode_error_bound(kappa, m_dev, "float32")  # relative to max_k ||grad f_k||
    worst = int(np.argmax(rho))
    assert rho.max() <= estimate, (
        tag,
        name,
        "rho",
        np.nonzero(masks[worst])[0],
        rho.max() / EPS32,
        kappa,
        SEED,
    )
    amp = np.abs(w) @ np.abs(B)  # [N, K]: |w|^T |B|
    # 1.: encode (L terms) and decode (M terms) in float32, gamma_(M+L) in all; the
    # float64 reference (B^T w)^T g: its own gamma over M L + K products, counted as 2 M L
    tol_factor = gamma(m_dev + nnz) + gamma(2 * m_dev * nnz + k_parts, np.float64)
    for family, (g32, ghat) in families.items():
        g = g32.astype(np.float64)  # [N, K, d]
        given_w = np.einsum("nk,nkd->nd", coef, g)  # what exact arithmetic gives with these w
        tol = tol_factor * np.einsum("nk,nkd->nd", amp, np.abs(g))
        excess = np.abs(ghat - given_w) - tol
        assert excess.max() <= 0, (tag, name, family, "rounding bound", float(excess.max()), SEED)
        scale = np.linalg.norm(g, axis=2).max(axis=1)  # [N] max_k ||grad f_k||
        err = np.linalg.norm(ghat - g.mean(axis=1), axis=1) / scale  # [N]
        worst = int(np.argmax(err))
        assert err.max() <= estimate, (
            tag,
            name,
            family,
            np.nonzero(masks[worst])[0],
            err.max() / EPS32,
            estimate / EPS32,
            SEED,
        )
        if accepted:
            assert err.max() <= MDS_TOLERANCE["float32"], (tag, family, err.max())


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
    and the 0/1 cyclic code when (s+1) | M; s = 1 .. min(4, M-1). cyclic_mds is
    accepted in float32 for s <= 3 and, at s = 4, for M <= 17 (`check_cyclic_mds`);
    the refused M = 18..20, s = 4 are decoded too (the estimate holds there as well)."""
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
            meta.append((name, s, B32, B64, len(masks)))
    w, families = _run(np.concatenate(rows_B), np.concatenate(rows_mask))
    start = 0
    for (name, s, B32, B64, n), masks in zip(meta, rows_mask):
        sl = slice(start, start + n)
        start += n
        accepted = True
        if name == "cyclic_mds":
            kappa = cyclic_mds_condition(m_dev, s)
            accepted = cyclic_mds.cyclic_mds_ok(m_dev, s, "float32")
            assert accepted == (s <= 3 or m_dev <= 17), (m_dev, s)
        else:
            kappa = float(_kappa_per_set(B64, masks).max())
        fams = {f: (g[sl], gh[sl]) for f, (g, gh) in families.items()}
        _check_sets(name, B32, masks, w[sl], fams, kappa, f"{name} M={m_dev} s={s}", accepted=accepted)


def test_kappa_is_exact_max_over_sets():
    """cyclic_mds_condition equals the max over every set of the float64 min-norm kappa."""
    for m_dev, s in [(7, 2), (8, 4), (11, 3), (12, 4), (16, 4), (20, 3)]:
        masks = _masks(m_dev, [d for j in range(s + 1) for d in itertools.combinations(range(m_dev), j)])
        B = cyclic_mds_matrix(m_dev, s)
        kappas = _kappa_per_set(B, masks)
        info = cyclic_mds_analysis(m_dev, s)
        # Two float64 solves of the same minimum-norm problem (pinv; the null-space
        # method): each w within p eps64 cond ||w||_2 (cond <= 1 / sigma_floor, p = 8
        # sqrt(M) as calibrated in coco_jax.cyclic_mds), which moves kappa by at most
        # sqrt(M) (max_m ||B_m||_1 / min_m ||B_m||_1) times that, relatively
        rows = np.abs(B).sum(axis=1)
        eps64 = float(np.finfo(np.float64).eps)
        rtol = 2 * 8 * m_dev * (rows.max() / rows.min()) * eps64 / info.sigma_floor
        assert info.exhaustive and info.residual <= m_dev * decode_error_bound(info.kappa, m_dev, "float64")
        np.testing.assert_allclose(kappas.max(), info.kappa, rtol=rtol)
        # exactly s stragglers is the worst case here; bursts are the worst sets
        exact_s = masks.sum(1) == s
        assert kappas[exact_s].max() >= kappas.max() * (1 - rtol)
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
        # B = (s+1) a C / v with v = C^T a (s+1 terms): a column sum is s+1 up to the
        # roundings of v, of each entry and of the sum, gamma_(2s+4) sum_m |B_mk| (float64)
        assert_within(B.sum(axis=0), s + 1, gamma(2 * s + 4, np.float64) * np.abs(B).sum(axis=0), "columns")
        np.testing.assert_array_equal(B, cyclic_mds_matrix(m_dev, s))
        if s < 6 or s > m_dev - 4:
            # rank M - s: a backward-stable float64 SVD leaves the s zero singular values
            # at a small multiple of eps64 sigma_1 (measured <= 5.5 eps64 here), the
            # genuine ones are >= 3.4e-5 sigma_1 (M = 64, s = 5): 1e-9 separates them
            sv = np.linalg.svd(B, compute_uv=False)
            assert sv[m_dev - s - 1] > 1e-9 * sv[0] and (s == 0 or sv[m_dev - s] < 1e-9 * sv[0])
            for start in range(m_dev):
                alive = np.ones(m_dev, bool)
                alive[(start + np.arange(s)) % m_dev] = False
                w = np.linalg.lstsq(B[alive].T, np.ones(m_dev), rcond=None)[0]
                # a decodable set: the float64 residual (target 1 = K / K) within K times
                # the calibrated estimate of its weights' kappa (coco_jax.cyclic_mds);
                # a set that cannot decode leaves a residual of order 1
                kappa = float(np.abs(w) @ np.abs(B[alive]).sum(axis=1)) / m_dev
                tol = m_dev * decode_error_bound(kappa, m_dev, "float64")
                assert np.abs(B[alive].T @ w - 1.0).max() <= tol, (m_dev, s, start)
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


@pytest.mark.parametrize("m_dev,s_values,count", [(50, (1, 2), 80), (100, (1, 2), 112)])
def test_large_m_sampled_float32(m_dev, s_values, count):
    """Seeded samples (all bursts + random) of survivor sets where float32 is accepted."""
    for s in s_values:
        check_cyclic_mds(m_dev, s, "float32")
        alloc = make_allocation("cyclic_mds", m_dev, m_dev, s)
        B32 = np.asarray(alloc.sample(jax.random.key(0)))
        masks = _masks(m_dev, _sample_sets(m_dev, s, count, 7 * m_dev + s))
        w, families = _run(np.broadcast_to(B32, (len(masks), m_dev, m_dev)), masks, pad=count)
        _check_sets("cyclic_mds", B32, masks, w, families, cyclic_mds_condition(m_dev, s), f"M={m_dev} s={s}")


# (M, s): accepted in float32?, accepted in float64? (documented in check_cyclic_mds)
DOCUMENTED = {
    (50, 1): (True, True),
    (50, 2): (True, True),
    (50, 3): (False, True),
    (50, 4): (False, True),
    (50, 5): (False, False),
    (100, 1): (True, True),
    (100, 2): (True, True),
    (100, 3): (False, True),
    (100, 4): (False, False),
    (20, 3): (True, True),
    (20, 4): (False, True),
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
    # M - s odd: the BCH code B = C, w = 1 / (2M) on the survivors, kappa = 1 exactly; a
    # float64 solve (relative error <= p eps64 / sigma_floor, p = 8 sqrt(M)) and a sum
    # of M terms (gamma_M) away
    info = cyclic_mds_analysis(160, 1)
    eps64 = float(np.finfo(np.float64).eps)
    rel = gamma(160, np.float64) + 8 * math.sqrt(160) * eps64 / info.sigma_floor
    assert cyclic_mds_condition(101, 1) < 2.4 and info.kappa == pytest.approx(1.0, rel=rel)
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
        rho = np.abs(w @ np.asarray(B) - 1.0 / m_dev).sum(1)  # the residual part at its worst
        errs[f"{m_dev},{s}"] = [float(err.max()), float(rho.max()), bool(np.all(w[masks] == 0)),
                                cyclic_mds.cyclic_mds_condition(m_dev, s),
                                cyclic_mds.decode_error_bound(cyclic_mds.cyclic_mds_condition(m_dev, s), m_dev, "float64")]
    out["errs"] = errs
    print("RESULT" + json.dumps(out))
    """
)


def test_float64_path_in_x64_subprocess():
    """With jax x64: B is float64 and exact, and float64 decoding meets the estimate
    `decode_error_bound` (and 1e-10), on the error and on the residual rho_w (its
    worst case over gradients), on sampled sets (every burst) of configurations
    float32 refuses."""
    cases = [
        (50, 4, [list(map(int, d)) for d in _sample_sets(50, 4, 64, 1)]),
        (100, 3, [list(map(int, d)) for d in _sample_sets(100, 3, 112, 3)]),
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
    for key, (err, rho, zero, kappa, bound) in out["errs"].items():
        assert zero, key
        assert max(err, rho) <= bound <= MDS_TOLERANCE["float64"], (key, err, rho, kappa, SEED)


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
    rel = gamma(3, np.float64)  # the same three float64 operations (a square root, two products)
    assert lstsq_rcond(jnp.float32, 100, 100) == pytest.approx(4 * EPS32 * 10, rel=rel)
    assert lstsq_rcond(jnp.float32, 20, 40) == pytest.approx(4 * EPS32 * math.sqrt(40), rel=rel)
    # below pinv's default cutoff (10 eps max(M, K)), above float32 noise (~eps)
    assert lstsq_rcond(jnp.float32, 20, 20) < 10 * EPS32 * 20


def test_optimal_is_min_norm_least_squares():
    """Fewer than s stragglers (several exact solutions) and more than s (none): the
    weights are numpy's float64 minimum-norm least-squares solution.

    Tolerance: `conftest.min_norm_tolerance` (perturbation theory of minimum-norm least
    squares with the calibrated backward-error constant of coco_jax.cyclic_mds)."""
    m_dev, s = 12, 3
    B32 = np.asarray(make_allocation("cyclic_mds", m_dev, m_dev, s).sample(jax.random.key(0)))
    B64 = cyclic_mds_matrix(m_dev, s)
    rng = _rng(5)
    sets = [tuple(rng.choice(m_dev, j, replace=False)) for j in (0, 1, 2, 5, 7) for _ in range(4)]
    masks = _masks(m_dev, sets)
    w, _ = _run(np.broadcast_to(B32, (len(masks), m_dev, m_dev)), masks)
    for mask, w_row in zip(masks, w):
        ref, tol = min_norm_tolerance(B64[~mask].T, np.full(m_dev, 1.0 / m_dev))
        assert np.linalg.norm(w_row[~mask] - ref) <= tol, (np.nonzero(mask)[0], SEED)
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
            ok = np.abs(np.einsum("nkm,nm->nk", A, w) - 1.0).max(axis=1) <= _decodable_tol(B, w)
            assert ok.all() == (m_dev % (s + 1) == 0), (m_dev, s)
            if m_dev % (s + 1) == 0:
                F = coding._frc_support(m_dev, s)
                A = np.swapaxes(F[None] * (~masks)[:, :, None], 1, 2)
                w = np.linalg.pinv(A, rcond=1e-10) @ np.ones(m_dev)
                assert np.all(np.abs(np.einsum("nkm,nm->nk", A, w) - 1.0).max(axis=1) <= _decodable_tol(F, w))


def _decodable_tol(B: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row of w [N, M] (float64 weights for the target 1): K times the calibrated
    estimate `decode_error_bound` of its kappa. A set that decodes stays below it; one
    that cannot leaves a residual of order 1 (0/1 cyclic codes, M <= 12: at least 1/M^2)."""
    m_dev, k_parts = B.shape
    kappa = np.abs(w) @ np.abs(B).sum(axis=1) / k_parts  # [N]
    return np.array([k_parts * decode_error_bound(k, m_dev, "float64") for k in kappa])


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
