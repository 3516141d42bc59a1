"""Tests of coco_jax.coding: encoding matrices and decoders."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_within, gamma, min_norm_tolerance, unit_roundoff

from coco_jax.coding import make_allocation
from coco_jax.config import ConfigError, allowed_values
from coco_jax.cyclic_mds import cyclic_mds_matrix, decode_error_bound
from coco_jax.decoders import can_decode, decode_weights
from coco_jax.registry import CODES, DECODERS

ALLOCATION_NAMES = CODES.builtin_names()
DECODER_NAMES = DECODERS.builtin_names()

SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure
KEY = jax.random.key(SEED)


def _fresh_key(tag: int) -> jax.Array:
    return jax.random.fold_in(KEY, tag)


def _B(name, m, k, s, key=None):
    alloc = make_allocation(name, m, k, s)
    return alloc, np.asarray(alloc.sample(key if key is not None else jax.random.key(0)))


def _ref_support(name: str, m_dev: int, k_parts: int, s: int) -> np.ndarray:
    """Reference B from the definitions, with python sets."""
    c = k_parts // m_dev
    B = np.zeros((m_dev, k_parts))
    for m in range(m_dev):
        if name == "uncoded":
            blocks = {m}
        elif name == "cyclic":
            blocks = {(m + j) % m_dev for j in range(s + 1)}
        else:  # frc
            g = m // (s + 1)
            blocks = set(range(g * (s + 1), (g + 1) * (s + 1)))
        for b in blocks:
            B[m, b * c : (b + 1) * c] = 1
    return B


# -------------------------------------------------------------------------- allocations


def test_names_match_config():
    assert set(ALLOCATION_NAMES) >= {"uncoded", "cyclic", "frc", "bernoulli", "cyclic_mds"}
    assert set(DECODER_NAMES) == {"fixed", "received", "optimal"}
    assert allowed_values("decoder") == DECODERS.names()  # the config takes every registered decoder


def test_hand_written_small_cases():
    _, B = _B("cyclic", 4, 4, 1)
    np.testing.assert_array_equal(B, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]])
    _, B = _B("cyclic", 5, 5, 2)
    np.testing.assert_array_equal(
        B,
        [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 0, 0, 1, 1], [1, 1, 0, 0, 1]],
    )
    _, B = _B("frc", 6, 6, 1)
    np.testing.assert_array_equal(
        B,
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 1, 1],
        ],
    )
    _, B = _B("frc", 6, 6, 2)
    np.testing.assert_array_equal(B, np.kron(np.eye(2), np.ones((3, 3))))
    _, B = _B("uncoded", 4, 4, 0)
    np.testing.assert_array_equal(B, np.eye(4))
    _, B = _B("uncoded", 4, 8, 0)
    np.testing.assert_array_equal(B, np.kron(np.eye(4), np.ones((1, 2))))
    _, B = _B("cyclic", 4, 8, 1)
    np.testing.assert_array_equal(
        B,
        [
            [1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 0, 0, 1, 1],
        ],
    )


@pytest.mark.parametrize("name", ["uncoded", "cyclic", "frc"])
def test_deterministic_codes_match_definition(name):
    for m_dev in range(1, 10):
        for s in range(m_dev):
            if name == "uncoded" and s > 0:
                continue
            if name == "frc" and m_dev % (s + 1):
                continue
            for c in (1, 2, 3):
                alloc, B = _B(name, m_dev, c * m_dev, s)
                assert B.dtype == np.float32 and B.shape == (m_dev, c * m_dev)
                np.testing.assert_array_equal(B, _ref_support(name, m_dev, c * m_dev, s))
                np.testing.assert_array_equal(B.sum(0), np.full(c * m_dev, s + 1))  # replication
                np.testing.assert_array_equal(B.sum(1), np.full(m_dev, c * (s + 1)))  # load
                assert alloc.replication == s + 1
                assert alloc.max_load == c * (s + 1)
                assert not alloc.random
                assert (alloc.num_devices, alloc.num_partitions, alloc.redundancy) == (m_dev, c * m_dev, s)


def test_bernoulli_allocation():
    m_dev, k_parts, s = 6, 12, 2
    alloc = make_allocation("bernoulli", m_dev, k_parts, s)
    assert alloc.random and alloc.max_load == k_parts
    # the same float64 formula: a product and a quotient, gamma_2
    assert alloc.replication == pytest.approx(m_dev * (s + 1) / k_parts, rel=gamma(2, np.float64))
    keys = jax.random.split(_fresh_key(1), 2000)
    Bs = np.asarray(jax.jit(jax.vmap(alloc.sample))(keys))  # [N, M, K]
    assert Bs.shape == (2000, m_dev, k_parts) and Bs.dtype == np.float32
    assert set(np.unique(Bs)) <= {0.0, 1.0}
    prob = (s + 1) / k_parts
    se = np.sqrt(prob * (1 - prob) / Bs.size)
    assert abs(Bs.mean() - prob) < 5 * se
    # mean column sum = replication
    col = Bs.sum(1)  # [N, K]
    assert abs(col.mean() - alloc.replication) < 5 * col.std() / np.sqrt(col.size)
    assert not np.array_equal(Bs[0], Bs[1]) or not np.array_equal(Bs[1], Bs[2])


def test_deterministic_sample_ignores_key_and_vmaps():
    alloc = make_allocation("cyclic", 5, 5, 2)
    keys = jax.random.split(_fresh_key(2), 3)
    Bs = jax.vmap(alloc.sample)(keys)
    assert Bs.shape == (3, 5, 5)
    np.testing.assert_array_equal(Bs[0], Bs[2])
    np.testing.assert_array_equal(jax.jit(alloc.sample)(keys[0]), Bs[1])


@pytest.mark.parametrize("m_dev,s", [(4, 1), (4, 2), (5, 2), (6, 1), (6, 3), (7, 3), (7, 4), (9, 2), (12, 3)])
def test_cyclic_mds_structure(m_dev, s):
    alloc = make_allocation("cyclic_mds", m_dev, m_dev, s)
    B = np.asarray(alloc.sample(jax.random.key(0)), np.float64)
    support = _ref_support("cyclic", m_dev, m_dev, s) > 0
    assert np.all(B[~support] == 0)
    assert np.all(B[support] != 0)  # a nonzero float64 coefficient stays nonzero in float32
    # each float32 entry is the float64 one rounded once (u32); the float64 column sums
    # are s+1 within gamma_(2s+4) (tests/test_coding_exact.py), and this sum adds gamma_(s+1)
    tol = (unit_roundoff() + gamma(3 * s + 5, np.float64)) * np.abs(B).sum(0)
    assert_within(B.sum(0), s + 1, tol, "column sums")
    assert alloc.replication == s + 1 and alloc.max_load == s + 1 and not alloc.random
    exact = cyclic_mds_matrix(m_dev, s)
    np.testing.assert_array_equal(exact, cyclic_mds_matrix(m_dev, s))  # deterministic
    for dead in itertools.combinations(range(m_dev), s):
        straggles = np.zeros(m_dev, bool)
        straggles[list(dead)] = True
        assert can_decode(exact, straggles)
    # s + 1 stragglers: the survivors' rank is M - s - 1 < M, so cannot decode
    assert not can_decode(exact, np.arange(m_dev) < s + 1)


# ------------------------------------------------------------------------------ decoders


def _all_masks(m_dev: int, max_dead: int) -> np.ndarray:
    rows = []
    for size in range(max_dead + 1):
        for dead in itertools.combinations(range(m_dev), size):
            mask = np.zeros(m_dev, bool)
            mask[list(dead)] = True
            rows.append(mask)
    return np.stack(rows)


_BATCHED = {
    name: jax.jit(
        jax.vmap(
            lambda B, st, r, rep, name=name: decode_weights(name, B, st, r, rep),
            in_axes=(None, 0, None, None),
        )
    )
    for name in DECODER_NAMES
}


def _decode_batch(decoder, B, masks, rates=None, replication=1.0):
    """Weights [N, M] for a batch of straggler masks; padded to a multiple of 128 rows
    so that one compile serves every batch of a shape of B."""
    m_dev = B.shape[0]
    rates = jnp.zeros(m_dev) if rates is None else rates
    n = len(masks)
    padded = np.zeros((-(-n // 128) * 128, m_dev), bool)
    padded[:n] = masks
    w = _BATCHED[decoder](jnp.asarray(B), jnp.asarray(padded), rates, jnp.float32(replication))
    return np.asarray(w)[:n]


def _check_exact(B, masks, w):
    """Decodable sets: the residual rho = ||B^T w - 1/K||_1 of the computed float32
    weights within the calibrated estimate `decode_error_bound` (coco_jax.cyclic_mds:
    eps (7 kappa + 8 sqrt(M)), kappa = sum_m |w*_m| ||B_m||_1 of the set's float64
    minimum-norm weights w*; the estimate is scale-free, so it holds for K = c M too)."""
    m_dev, k_parts = B.shape
    B = np.asarray(B, np.float64)
    rho = np.abs(np.asarray(w, np.float64) @ B - 1.0 / k_parts).sum(axis=1)  # [N]
    for mask, r in zip(masks, rho):
        w_star = np.linalg.pinv(B[~mask].T, rcond=1e-10) @ np.full(k_parts, 1.0 / k_parts)
        kappa = float(np.abs(w_star) @ np.abs(B[~mask]).sum(axis=1))
        assert r <= decode_error_bound(kappa, m_dev, "float32"), (np.nonzero(mask)[0], r, kappa, SEED)
    assert np.all(w[masks] == 0.0)


@pytest.mark.parametrize("m_dev", [3, 4, 5, 6, 7])
def test_optimal_cyclic_all_sets(m_dev):
    """0/1 cyclic codes decode exactly from every set of <= s stragglers when (s+1) | M
    (one residue class of rows survives and tiles the partitions); otherwise exactly
    whenever the survivors can decode, and least squares (numpy pinv) in any case."""
    for s in range(m_dev):
        for c in (1, 2):
            _, B = _B("cyclic", m_dev, c * m_dev, s)
            masks = _all_masks(m_dev, s)
            w = _decode_batch("optimal", B, masks)
            assert np.all(w[masks] == 0.0)
            decodable = np.array([can_decode(B, mask) for mask in masks])
            if m_dev % (s + 1) == 0:
                assert decodable.all()
            _check_exact(B, masks[decodable], w[decodable])
            for mask, w_row in zip(masks[~decodable][:5], w[~decodable][:5]):
                w_ref, tol = min_norm_tolerance(B[~mask].T, np.full(c * m_dev, 1 / (c * m_dev)))
                assert np.linalg.norm(w_row[~mask] - w_ref) <= tol, (m_dev, s, c, np.nonzero(mask)[0])
    # a known non-decodable case: M=3, s=1, one straggler
    _, B = _B("cyclic", 3, 3, 1)
    assert not can_decode(B, np.array([True, False, False]))


@pytest.mark.parametrize("m_dev,s", [(4, 1), (6, 1), (6, 2), (6, 5), (8, 3)])
def test_optimal_exact_frc_survivor_per_group(m_dev, s):
    _, B = _B("frc", m_dev, m_dev, s)
    groups = np.arange(m_dev) // (s + 1)
    masks = np.array(list(itertools.product([False, True], repeat=m_dev)))
    ok = np.array([all((~mask[groups == g]).any() for g in range(m_dev // (s + 1))) for mask in masks])
    _check_exact(B, masks[ok], _decode_batch("optimal", B, masks[ok]))
    assert all(can_decode(B, mask) for mask in masks[ok][:50])
    assert not any(can_decode(B, mask) for mask in masks[~ok][:50])


@pytest.mark.parametrize("m_dev", [4, 5, 6, 7])
def test_optimal_exact_cyclic_mds_all_sets(m_dev):
    for s in range(1, m_dev):
        _, B = _B("cyclic_mds", m_dev, m_dev, s)
        masks = _all_masks(m_dev, s)
        _check_exact(B, masks, _decode_batch("optimal", B, masks))


def test_optimal_least_squares_when_not_decodable():
    # cyclic M=5, s=1 with two adjacent stragglers cannot decode; w is still the
    # min-norm least-squares solution over the survivors.
    _, B = _B("cyclic", 5, 5, 1)
    straggles = np.array([True, True, False, False, False])
    assert not can_decode(B, straggles)
    w = np.asarray(decode_weights("optimal", B, straggles, jnp.zeros(5), 2.0))
    w_ref, tol = min_norm_tolerance(B[~straggles].T, np.full(5, 0.2))
    assert np.linalg.norm(w[~straggles] - w_ref) <= tol
    assert np.all(w[straggles] == 0)


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_everyone_straggles_gives_zero(decoder):
    _, B = _B("cyclic", 4, 4, 1)
    w = decode_weights(decoder, B, jnp.ones(4, bool), jnp.full(4, 0.5), 2.0)
    np.testing.assert_array_equal(np.asarray(w), 0.0)


@pytest.mark.parametrize(
    "name,k_mult,s", [("cyclic", 1, 2), ("frc", 1, 1), ("cyclic_mds", 1, 2), ("uncoded", 2, 0)]
)
def test_fixed_and_received_exact_without_stragglers(name, k_mult, s):
    m_dev = 6
    alloc, B = _B(name, m_dev, k_mult * m_dev, s)
    none = jnp.zeros(m_dev, bool)
    for decoder in ("fixed", "received"):
        w = np.asarray(decode_weights(decoder, B, none, jnp.zeros(m_dev), alloc.replication))
        # w = 1 / (K (1 - 0) r) or M / (|S| K r): products of small integers (exact) and
        # one division (u); B^T w adds the column's L nonzero terms; the float32 column
        # sums are r within (u + gamma_(2s+4)) sum |B| (test_cyclic_mds_structure)
        Bd = np.asarray(B, np.float64)
        nnz = int((Bd != 0).sum(axis=0).max())
        tol = gamma(nnz + 3) * (np.abs(w.astype(np.float64)) @ np.abs(Bd))
        assert_within(w.astype(np.float64) @ Bd, 1.0 / (k_mult * m_dev), tol, f"{name} {decoder}")


def _monte_carlo_coef(alloc, p_vec, key, n):
    """Coefficients B^T w [n, K] of the fixed decoder over random stragglers (and B)."""

    def one(k):
        kb, ks = jax.random.split(k)
        B = alloc.sample(kb)
        straggles = jax.random.uniform(ks, p_vec.shape) < p_vec
        w = decode_weights("fixed", B, straggles, p_vec, alloc.replication)
        return w @ B

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, n)), np.float64)


@pytest.mark.parametrize(
    "name,m_dev,k_parts,s,hetero",
    [
        ("cyclic", 6, 6, 1, False),
        ("cyclic", 5, 10, 2, True),
        ("bernoulli", 6, 6, 1, False),
        ("bernoulli", 5, 10, 2, True),
    ],
)
def test_fixed_decoder_unbiased(name, m_dev, k_parts, s, hetero):
    alloc = make_allocation(name, m_dev, k_parts, s)
    p_vec = jnp.linspace(0.1, 0.5, m_dev) if hetero else jnp.full(m_dev, 0.3)
    n = 20000
    coef = _monte_carlo_coef(alloc, p_vec, _fresh_key(10 + m_dev + k_parts), n)  # [n, K]
    se = coef.std(0) / np.sqrt(n)
    # float32 rounding can bias every draw alike: w = 1 / (K (1 - p) r) is 4 roundings
    # and B^T w sums at most M of them (a bernoulli column), each at most w_max
    w_max = 1.0 / (k_parts * (1 - float(p_vec.max())) * alloc.replication)
    rounding = gamma(m_dev + 4) * m_dev * w_max
    assert np.all(np.abs(coef.mean(0) - 1.0 / k_parts) < 5 * se + rounding), (coef.mean(0), se)


def test_received_weights():
    m_dev, s = 7, 2
    alloc, B = _B("cyclic", m_dev, 2 * m_dev, s)
    k_parts = 2 * m_dev
    masks = np.asarray(jax.random.bernoulli(_fresh_key(3), 0.4, (500, m_dev)))
    w = _decode_batch("received", B, masks, replication=alloc.replication)
    n_alive = (~masks).sum(1)
    assert np.all(w[masks] == 0)
    has = n_alive > 0
    # each weight: M / (|S| K r), products of small integers (exact) and one division
    # (u); their float32 sum over |S| <= M terms adds gamma_M
    np.testing.assert_allclose(
        w[has].sum(1), m_dev / (k_parts * alloc.replication), rtol=gamma(m_dev + 1), atol=0
    )
    np.testing.assert_allclose(
        w[~masks],
        np.broadcast_to((m_dev / (np.maximum(n_alive, 1) * k_parts * (s + 1)))[:, None], masks.shape)[~masks],
        rtol=gamma(1),
        atol=0,
    )
    assert np.all(w[~has] == 0)


def test_fixed_weights_formula():
    m_dev, s, p = 6, 1, 0.25
    _, B = _B("cyclic", m_dev, m_dev, s)
    straggles = np.array([True, False, False, True, False, False])
    w = np.asarray(decode_weights("fixed", B, straggles, jnp.full(m_dev, p), s + 1))
    expected = np.where(straggles, 0.0, 1.0 / (m_dev * (1 - p) * (s + 1)))
    # 1 - p, two products and a division in float32: gamma_4 (here in fact exact but one)
    np.testing.assert_allclose(w, expected, rtol=gamma(4), atol=0)


@pytest.mark.parametrize("decoder", DECODER_NAMES)
@pytest.mark.parametrize("name", ALLOCATION_NAMES)
def test_stragglers_zero_weight_and_jit_matches(decoder, name):
    m_dev = 6
    alloc = make_allocation(name, m_dev, m_dev, 0 if name == "uncoded" else 1)
    key_b, key_s, key_r = jax.random.split(_fresh_key(4), 3)
    B = alloc.sample(key_b)
    masks = jax.random.bernoulli(key_s, 0.4, (64, m_dev))
    rates = jax.random.uniform(key_r, (m_dev,), maxval=0.6)
    batched = jax.jit(jax.vmap(lambda st: decode_weights(decoder, B, st, rates, alloc.replication)))(masks)
    batched = np.asarray(batched)
    assert batched.shape == (64, m_dev) and np.all(np.isfinite(batched))
    assert np.all(batched[np.asarray(masks)] == 0.0)
    k_parts = B.shape[1]
    for i in range(3):
        eager = decode_weights(decoder, B, masks[i], rates, alloc.replication)
        jitted = jax.jit(decode_weights, static_argnums=0)(decoder, B, masks[i], rates, alloc.replication)
        alive = ~np.asarray(masks[i])
        if decoder == "optimal":
            # two SVD-based solves of one problem: twice the perturbation bound of one
            _, tol = min_norm_tolerance(np.asarray(B)[alive].T, np.full(k_parts, 1.0 / k_parts), factor=2.0)
        else:  # the same closed form of at most 4 roundings, evaluated twice
            tol = 2 * gamma(4) * np.abs(np.asarray(eager, np.float64))
        assert_within(np.asarray(eager), np.asarray(jitted), tol, f"{decoder} eager vs jit")
        assert_within(np.asarray(eager), batched[i], tol, f"{decoder} eager vs vmap")


def test_decoders_vmap_over_random_codes():
    alloc = make_allocation("bernoulli", 5, 5, 2)

    def one(key):
        kb, ks = jax.random.split(key)
        B = alloc.sample(kb)
        straggles = jax.random.bernoulli(ks, 0.3, (5,))
        return B, straggles, decode_weights("optimal", B, straggles, jnp.full(5, 0.3), alloc.replication)

    Bs, masks, ws = jax.jit(jax.vmap(one))(jax.random.split(_fresh_key(5), 200))
    Bs, masks, ws = (np.asarray(x) for x in (Bs, masks, ws))
    assert np.all(ws[masks] == 0)
    for B, mask, w in zip(Bs[:40], masks[:40], ws[:40]):
        if can_decode(B, mask):
            _check_exact(B, mask[None], w[None])


# ------------------------------------------------------------------------ invalid combos


@pytest.mark.parametrize(
    "args,field",
    [
        (("frc", 5, 5, 1), "redundancy"),
        (("frc", 6, 6, 3), "redundancy"),
        (("uncoded", 4, 4, 1), "redundancy"),
        (("cyclic", 4, 7, 1), "num_partitions"),
        (("frc", 4, 6, 1), "num_partitions"),
        (("uncoded", 4, 6, 0), "num_partitions"),
        (("cyclic_mds", 4, 8, 1), "num_partitions"),
        (("bernoulli", 6, 2, 2), "redundancy"),
        (("cyclic", 4, 4, 4), "redundancy"),
        (("cyclic", 4, 4, -1), "redundancy"),
        (("cyclic", 0, 4, 0), "num_devices"),
        (("cyclic", 4, 0, 0), "num_partitions"),
        (("mds", 4, 4, 1), "allocation"),
    ],
)
def test_invalid_allocations_raise(args, field):
    with pytest.raises(ConfigError, match=field):
        make_allocation(*args)


def test_invalid_decoder_raises():
    _, B = _B("cyclic", 4, 4, 1)
    with pytest.raises(ConfigError, match="decoder"):
        decode_weights("magic", B, jnp.zeros(4, bool), jnp.zeros(4), 2.0)
