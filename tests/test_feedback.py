"""Tests of coco_jax.feedback: each built-in error-feedback rule's init / send / hold /
aggregate on its own, without the engine.

Generic properties (shapes, dtypes, jit, vmap over devices) run over every built-in
rule; the rest pins each rule's semantics: error feedback conserves what it does not
send, EF21's server uses every device's shift with the no-straggler weights, DIANA's
partial-participation estimate is unbiased under an unbiased decoder (Monte Carlo, with
a negative control), and device momentum wraps a rule as documented.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_within, gamma, sum_tolerance

import coco_jax as cj
from coco_jax import config as config_lib
from coco_jax.coding import make_allocation
from coco_jax.compressors import make_compressor
from coco_jax.decoders import decode_weights
from coco_jax.feedback import (
    ErrorMemory,
    MomentumMemory,
    NoMemory,
    Server,
    Shift,
    diana_alpha_bound,
    make_feedback,
    sum_delivered,
    with_device_momentum,
)
from coco_jax.registry import FEEDBACKS

FEEDBACK_NAMES = FEEDBACKS.builtin_names()
D, M, K = 12, 5, 3  # vector dimension, devices, kept entries of top-k / rand-k
SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure
KEY = jax.random.key(SEED)


def _key(tag: int) -> jax.Array:
    return jax.random.fold_in(KEY, tag)


def _hp(**changes):
    """One configuration's HParams (numpy scalars in the config's float dtype)."""
    return config_lib.hparams_of(cj.ExperimentConfig(**changes))


def _compressor(rule: str, dtype=jnp.float32):
    """top-k for every rule but DIANA, which needs an unbiased (here random) compressor."""
    name = "randk_unbiased" if rule == "diana" else "topk"
    return make_compressor(name, D, k=K, dtype=dtype)


def _rule(name: str, dtype=jnp.float32, **fields):
    return make_feedback(name, _compressor(name, dtype), dim=D, fields=fields)


def _stack(tree, n: int):
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), tree)


def _random_state(rule, dtype, tag: int, n: int = M):
    """n device memories with random values (the rule's init structure)."""
    state = _stack(rule.init(D, dtype), n)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(_key(tag), max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, a.shape, dtype) for k, a in zip(keys, leaves)]
    )


def _row(tree, m: int):
    return jax.tree_util.tree_map(lambda a: a[m], tree)


# Tolerances (conftest: Higham's model). An entry of what `send` / `hold` return is at
# most OPS roundings away from exact arithmetic (v = g + e; g - h; the d/k scaling of
# randk_unbiased; h + alpha c, or one FMA) on terms bounded by MAG = (d/k) (|g| +
# 2 sum over the state's leaves |leaf|) (top-k and rand-k keep entries of their input;
# DIANA's alpha c <= |g - h|). Two evaluations of the same function (jit and eager,
# vmap and a loop) are each within gamma_OPS MAG of exact arithmetic, so within twice
# that of each other. Top-k selects the same entries in both unless two magnitudes
# lie within that distance (probability about d^2 gamma_OPS: ~1e-4 here).
OPS = 4
SCALE = D / K  # randk_unbiased's d/k, the largest factor a compressor applies here


def _send_tol(g, state):
    """Per-entry bound [D] on |computed - exact| for send / hold outputs (above)."""
    mag = np.abs(np.asarray(g, np.float64)) + 2 * sum(
        np.abs(np.asarray(leaf, np.float64)) for leaf in jax.tree_util.tree_leaves(state)
    )
    return 2 * gamma(OPS) * SCALE * mag


def _aggregate_tol(server):
    """Bound [D] on |computed - exact| for `aggregate`: at most 2M + 1 terms (DIANA:
    w_bar @ h + sum_m w_m c_m), each |w_m| or |w_bar_m| times a message or a state row."""
    weights = np.abs(np.asarray(server.weights, np.float64)) + np.abs(
        np.asarray(server.full_weights, np.float64)
    )
    rows = np.abs(np.asarray(server.messages, np.float64)) + sum(
        np.abs(np.asarray(leaf, np.float64))
        for tree in (server.before, server.after)
        for leaf in jax.tree_util.tree_leaves(tree)
    )  # [M, D]
    return 2 * gamma(2 * rows.shape[0] + 1) * (weights @ rows)


def _assert_trees_within(actual, desired, tol, msg: str = ""):
    for a, d in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired), strict=True):
        assert_within(a, d, tol, f"{msg} (SEED={SEED})")


# ---------------------------------------------------------------------- generic


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", FEEDBACK_NAMES)
def test_shapes_and_dtypes(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        rule = _rule(name, dtype)
        hp = _hp(dtype="float64" if dtype == jnp.float64 else "float32")
        assert rule.name == name
        one = rule.init(D, dtype)
        for leaf in jax.tree_util.tree_leaves(one):
            assert leaf.shape == (D,) and leaf.dtype == dtype
        state = _random_state(rule, dtype, 1)
        g = jax.random.normal(_key(2), (M, D), dtype)
        msg, comp_in, sent = rule.send(_key(3), g[0], _row(state, 0), hp)
        chex.assert_shape([msg, comp_in], (D,))
        assert msg.dtype == dtype and comp_in.dtype == dtype
        chex.assert_trees_all_equal_shapes_and_dtypes(sent, one)
        chex.assert_trees_all_equal_shapes_and_dtypes(rule.hold(g[0], _row(state, 0), hp), one)
        memory = rule.memory(_row(state, 0), g[0])
        assert jnp.shape(memory) == () and jnp.issubdtype(jnp.asarray(memory).dtype, jnp.floating)
        w = jnp.full((M,), 0.1, dtype)
        server = Server(w, w, jnp.ones(M, bool), g, state, state)
        g_hat = rule.aggregate(server)
        chex.assert_shape(g_hat, (D,))
        assert g_hat.dtype == dtype


@pytest.mark.parametrize("name", FEEDBACK_NAMES)
def test_jit_equals_no_jit(name):
    """Same results jitted and eager, within twice the rounding bound of one
    evaluation (`_send_tol`, `_aggregate_tol`)."""
    rule = _rule(name)
    hp = _hp()
    state = _random_state(rule, jnp.float32, 4)
    g = jax.random.normal(_key(5), (M, D))
    one = _row(state, 1)
    tol = _send_tol(g[1], one)
    _assert_trees_within(
        jax.jit(rule.send)(_key(6), g[1], one, hp), rule.send(_key(6), g[1], one, hp), tol, "send"
    )
    _assert_trees_within(jax.jit(rule.hold)(g[1], one, hp), rule.hold(g[1], one, hp), tol, "hold")
    delivered = jnp.array([True, False, True, True, False])
    w = jnp.where(delivered, 0.3, 0.0)
    server = Server(w, jnp.full((M,), 0.2), delivered, g, state, _random_state(rule, jnp.float32, 7))
    assert_within(
        jax.jit(rule.aggregate)(server), rule.aggregate(server), _aggregate_tol(server), "aggregate"
    )


@pytest.mark.parametrize("name", FEEDBACK_NAMES)
def test_vmap_over_devices_equals_loop(name):
    """vmap over devices equals a loop, within twice one evaluation's rounding bound."""
    rule = _rule(name)
    hp = _hp()
    state = _random_state(rule, jnp.float32, 8)
    g = jax.random.normal(_key(9), (M, D))
    keys = jax.random.split(_key(10), M)
    msgs, comp_in, sent = jax.vmap(rule.send, (0, 0, 0, None))(keys, g, state, hp)
    held = jax.vmap(rule.hold, (0, 0, None))(g, state, hp)
    for m in range(M):
        one = rule.send(keys[m], g[m], _row(state, m), hp)
        tol = _send_tol(g[m], _row(state, m))
        _assert_trees_within(one, (msgs[m], comp_in[m], _row(sent, m)), tol, f"send device {m}")
        _assert_trees_within(rule.hold(g[m], _row(state, m), hp), _row(held, m), tol, f"hold device {m}")


def test_make_feedback_passes_static_fields_and_checks_them():
    comp = make_compressor("topk", D, k=K)
    reset = make_feedback("ef", comp, fields={"straggler_error": "reset"})
    state = ErrorMemory(jnp.ones(D))
    np.testing.assert_array_equal(reset.hold(jnp.ones(D), state, _hp()).e, 0.0)
    with pytest.raises(cj.ConfigError, match="straggler_error"):
        make_feedback("ef", comp, fields={"straggler_error": "forget"})
    with pytest.raises(cj.ConfigError, match="error_feedback"):
        make_feedback("ef3", comp)


# ---------------------------------------------------------------------- none


def test_none_sends_the_compressed_gradient_and_sums_what_arrives():
    rule = _rule("none")
    comp = _compressor("none")
    g = jax.random.normal(_key(11), (M, D))
    msg, comp_in, state = rule.send(_key(12), g[0], NoMemory(), _hp())
    np.testing.assert_array_equal(msg, comp.compress(_key(12), g[0]))
    np.testing.assert_array_equal(comp_in, g[0])
    assert state == NoMemory() and rule.init(D, jnp.float32) == NoMemory()
    assert float(rule.memory({}, g[0])) == 0.0
    delivered = jnp.array([True, False, True, False, True])
    weights = jnp.arange(1.0, M + 1)  # a straggler's weight is ignored: it delivered nothing
    server = Server(weights, jnp.zeros(M), delivered, g, {}, {})
    terms = np.stack([float(weights[m]) * np.asarray(g[m], np.float64) for m in (0, 2, 4)])  # exact products
    expected = terms.sum(axis=0)
    # a float32 dot product over the 3 delivered devices (the others' products are exact
    # zeros) against a float64 reference: gamma_3 sum |w_m g_m| (conftest.sum_tolerance);
    # rtol 1e-6 failed on cancelling sums (-0.09256595 vs -0.09256577)
    tol = sum_tolerance(terms, axis=0)
    assert_within(rule.aggregate(server), expected, tol, f"aggregate (SEED={SEED})")
    assert_within(sum_delivered(server), expected, tol, f"sum_delivered (SEED={SEED})")


# ---------------------------------------------------------------------- ef


def test_error_feedback_send_keeps_what_it_did_not_send():
    rule = _rule("ef")
    comp = _compressor("ef")
    g, e = jax.random.normal(_key(13), (2, D))
    msg, comp_in, state = rule.send(_key(14), g, ErrorMemory(e), _hp())
    # v = g + e is one rounding, e' = v - c one more: each side within gamma_2 (|g| + |e|)
    # of exact, whatever the evaluation order; top-k keeps entries of v unchanged
    tol = 2 * gamma(2) * (np.abs(np.asarray(g)) + np.abs(np.asarray(e)))
    assert_within(comp_in, g + e, tol, "comp_in")
    assert_within(msg, comp.compress(_key(14), g + e), tol, "message")
    assert_within(state.e, g + e - msg, tol, "error")
    assert np.count_nonzero(np.asarray(msg)) == K
    # ||e||: D squares and D - 1 additions (gamma_(D)), a square root (halves a relative
    # error, adds u): within gamma_(D+1) in float32, plus numpy's float64 reference
    norm = np.linalg.norm(np.asarray(state.e, np.float64))
    assert_within(rule.memory(state, g), norm, (gamma(D + 1) + gamma(D + 1, np.float64)) * norm, "memory")


def test_error_feedback_conserves_mass():
    """Per device: Σ sent messages + final error = Σ coded inputs of delivered steps
    (keep); = Σ of all coded inputs (accumulate); reset zeroes the error.

    Tolerance: each step's v = e + g is one float32 rounding (|dv| <= u |v|); top-k
    keeps entries of v and e' = v - c is exact (0 or v), so sent + e drifts from the
    exact sum by at most u sum_t |v_t|. The test's own float32 sums of T messages and T
    inputs add gamma_T of their absolute sums, and sent + e one more rounding."""
    d, steps = 40, 30
    comp = make_compressor("topk", d, k=3)
    hp = config_lib.hparams_of(cj.ExperimentConfig())
    rng = np.random.default_rng(SEED)
    gs = rng.normal(size=(steps, d)).astype(np.float32)
    straggles = rng.random(steps) < 0.3
    for mode in ("keep", "accumulate", "reset"):
        fb = make_feedback("ef", comp, fields={"straggler_error": mode})
        state = fb.init(d, jnp.float32)
        sent = np.zeros(d, np.float32)
        drift = np.zeros(d)  # sum_t |v_t| + |c_t| + |g_t|: what the roundings act on
        for t in range(steps):
            before = np.asarray(state.e)
            g = jnp.asarray(gs[t])
            if straggles[t]:
                state = fb.hold(g, state, hp)
                after = np.asarray(state.e)
                expected = {"keep": before, "reset": np.zeros(d), "accumulate": before + gs[t]}[mode]
                # keep and reset are exact; accumulate is one rounding of before + g
                assert_within(after, expected, gamma(1) * np.abs(expected), f"{mode} hold, step {t}")
                drift += np.abs(after.astype(np.float64)) + np.abs(gs[t])
            else:
                msg, _, state = fb.send(jax.random.key(t), g, state, hp)
                sent += np.asarray(msg)
                assert np.count_nonzero(np.asarray(msg)) == 3
                drift += np.abs(before.astype(np.float64) + gs[t]) + np.abs(np.asarray(msg)) + np.abs(gs[t])
        total = gs.sum(0) if mode == "accumulate" else gs[~straggles].sum(0)
        if mode != "reset":
            assert_within(
                sent + np.asarray(state.e), total, gamma(steps + 2) * drift, f"{mode}: mass (SEED={SEED})"
            )


# ---------------------------------------------------------------------- ef21


def test_ef21_send_moves_the_shift_by_the_message():
    rule = _rule("ef21")
    comp = _compressor("ef21")
    g, h = jax.random.normal(_key(15), (2, D))
    msg, comp_in, state = rule.send(_key(16), g, Shift(h), _hp())
    # g - h and h + c are one rounding each: both sides within gamma_2 (|g| + 2|h|) of exact
    tol = 2 * gamma(2) * (np.abs(np.asarray(g)) + 2 * np.abs(np.asarray(h)))
    assert_within(comp_in, g - h, tol, "comp_in")
    assert_within(msg, comp.compress(_key(16), g - h), tol, "message")
    assert_within(state.h, h + msg, tol, "shift")
    assert rule.hold(g, Shift(h), _hp()).h is h  # a straggler's shift stays as last received
    # ||g - h'||: the same D differences, then D squares summed and a square root
    norm = np.linalg.norm(np.asarray(g - state.h, np.float64))
    assert_within(rule.memory(state, g), norm, (gamma(D + 1) + gamma(D + 1, np.float64)) * norm, "memory")


def test_ef21_aggregate_uses_every_shift_with_the_no_straggler_weights():
    """ĝ = Σ_m w̄_m h_m over ALL devices (stragglers' shifts as last received), whatever
    this step's decoder weights, delivered set and messages; with the shifts at the
    coded gradients it is exactly the mean partition gradient, stragglers or not."""
    m_dev, s = 6, 1
    alloc = make_allocation("cyclic", m_dev, m_dev, s)
    B = alloc.sample(jax.random.key(0))  # [M, K]
    nobody = jnp.zeros(m_dev, bool)
    w_bar = decode_weights("fixed", B, nobody, jnp.zeros(m_dev), alloc.replication)
    # w_bar = fl(1 / (K r)) (products of small integers are exact): one rounding; B^T w_bar
    # adds s+1 of them: within gamma_(s+2) of 1/K
    assert_within(B.T @ w_bar, 1.0 / m_dev, gamma(s + 2) / m_dev, "B^T w_bar")
    rule = _rule("ef21")
    partition_grads = jax.random.normal(_key(17), (m_dev, D))
    h_after = Shift(B @ partition_grads)  # every device's shift equals its coded gradient
    G = np.asarray(partition_grads, np.float64)
    Bd = np.asarray(B, np.float64)
    wd = np.asarray(w_bar, np.float64)
    # g_hat = w_bar @ (B @ G): nested sums, s+1 then M terms (gamma_(M+s+1) on
    # sum_mk |w_m B_mk G_k|), w_bar off 1/(K r) by u, the float32 mean of K rows gamma_K
    nested = np.einsum("m,mk,kd->d", np.abs(wd), np.abs(Bd), np.abs(G))
    tol_mean = (gamma(m_dev + s + 1) + gamma(s + 2)) * nested + gamma(m_dev) * np.abs(G).mean(axis=0)
    rng = np.random.default_rng(SEED)
    for _ in range(5):
        straggles = jnp.asarray(rng.random(m_dev) < 0.5)
        weights = decode_weights("fixed", B, straggles, jnp.full(m_dev, 0.5), alloc.replication)
        messages = jax.random.normal(_key(int(rng.integers(1 << 30))), (m_dev, D))
        before = Shift(jnp.zeros((m_dev, D)))
        server = Server(weights, w_bar, ~straggles, messages, before, h_after)
        g_hat = rule.aggregate(server)
        # the same M-term dot product, evaluated twice: 2 gamma_M sum |w_bar_m h_m|
        h = np.asarray(h_after.h, np.float64)
        assert_within(g_hat, w_bar @ h_after.h, 2 * sum_tolerance(wd[:, None] * h, axis=0), "w_bar @ h")
        assert_within(g_hat, partition_grads.mean(axis=0), tol_mean, f"mean gradient (SEED={SEED})")


# ---------------------------------------------------------------------- diana


def test_diana_send_alpha_and_refusal_of_biased_compressors():
    comp = make_compressor("qsgd", D, qsgd_levels=2)
    rule = make_feedback("diana", comp, dim=D)
    g, h = jax.random.normal(_key(18), (2, D))
    default = diana_alpha_bound(comp)
    assert math.isclose(default, 1.0 / (1.0 + comp.omega), rel_tol=gamma(2, np.float64))  # same 2 ops
    msg, comp_in, state = rule.send(_key(19), g, Shift(h), _hp())
    # g - h: one rounding; QSGD of it: a few roundings per entry (norm, level, scale),
    # identical on the same input; h + alpha c: alpha rounded to float32, a product and
    # a sum (or one FMA): 3 roundings. Both sides within gamma_3 (|h| + |alpha c|) etc.
    tol = 2 * gamma(2) * (np.abs(np.asarray(g)) + np.abs(np.asarray(h)))
    assert_within(comp_in, g - h, tol, "comp_in")
    assert_within(msg, comp.compress(_key(19), g - h), 0.0, "message (same input and key)")
    shift_tol = 2 * gamma(3) * (np.abs(np.asarray(h)) + np.abs(np.asarray(msg)))  # alpha <= 1
    assert_within(state.h, h + default * msg, shift_tol, "shift")
    _, _, state = rule.send(_key(19), g, Shift(h), _hp(diana_alpha=0.25))
    assert_within(state.h, h + 0.25 * msg, shift_tol, "shift, alpha = 0.25")
    with pytest.raises(cj.ConfigError, match="unbiased"):
        make_feedback("diana", make_compressor("topk", D, k=K))


def _diana_estimates(rule, B, g, h, p, n, *, correct_weights: bool):
    """n draws of DIANA's ĝ: Bernoulli(p) stragglers, the fixed decoder's weights
    1/(K(1-p)r) (or, as a negative control, 1/(K r) without the 1/(1-p) correction)."""
    m_dev = B.shape[0]
    r = float(jnp.sum(B[:, 0]))
    w_bar = decode_weights("fixed", B, jnp.zeros(m_dev, bool), jnp.zeros(m_dev), r)
    rates = jnp.full(m_dev, p if correct_weights else 0.0)
    hp = _hp()

    def one(key):
        k_mask, k_comp = jax.random.split(key)
        straggles = jax.random.uniform(k_mask, (m_dev,)) < p
        before = Shift(h)
        msgs, _, sent = jax.vmap(rule.send, (0, 0, 0, None))(jax.random.split(k_comp, m_dev), g, before, hp)
        held = jax.vmap(rule.hold, (0, 0, None))(g, before, hp)
        after = jax.tree_util.tree_map(lambda a, b: jnp.where(straggles[:, None], a, b), held, sent)
        weights = decode_weights("fixed", B, straggles, rates, r)
        return rule.aggregate(Server(weights, w_bar, ~straggles, msgs, before, after))

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(_key(20), n)), np.float64), w_bar


def test_diana_partial_participation_aggregate_is_unbiased():
    """Monte Carlo over straggler masks and compressor keys: mean ĝ ≈ Σ_m w̄_m g_m (the
    full gradient when g_m are the coded gradients), within 5 standard errors per
    coordinate; the same check catches the bias of uncorrected weights."""
    m_dev, s, p, n = 6, 1, 0.3, 20_000
    B = make_allocation("cyclic", m_dev, m_dev, s).sample(jax.random.key(0))
    rule = make_feedback("diana", make_compressor("qsgd", D, qsgd_levels=2), dim=D)
    g = B @ jax.random.normal(_key(21), (m_dev, D))  # coded gradients
    h = 3.0 * jax.random.normal(_key(22), (m_dev, D))  # shifts far from them
    est, w_bar = _diana_estimates(rule, B, g, h, p, n, correct_weights=True)
    target = np.asarray(w_bar @ g, np.float64)
    se = est.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(se > 0)  # really random
    # Float32 rounding can bias every draw the same way; its bound [D] (conftest model):
    # w_bar @ h and sum_m w_m c_m (2M + 1 terms; |c_m| <= ||g_m - h_m|| for QSGD, w_m at
    # most 1 / (K (1 - p) r)), QSGD's levels and probabilities computed from ||v|| (d + 4
    # roundings, relative to |v_i|), and the float32 target w_bar @ g (M terms)
    gd, hd, wd = (np.asarray(a, np.float64) for a in (g, h, w_bar))
    w_max = 1.0 / (m_dev * (1 - p) * (s + 1))
    v = gd - hd
    rounding = (
        gamma(2 * m_dev + 1) * (np.abs(wd) @ np.abs(hd) + w_max * np.linalg.norm(v, axis=1).sum())
        + gamma(D + 4) * w_max * np.abs(v).sum(axis=0)
        + gamma(m_dev) * (np.abs(wd) @ np.abs(gd))
    )
    np.testing.assert_array_less(np.abs(est.mean(axis=0) - target), 5 * se + rounding)
    # negative control: weights without 1/(1-p) scale the corrections by (1-p): biased
    biased, _ = _diana_estimates(rule, B, g, h, p, n, correct_weights=False)
    se_b = biased.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.any(np.abs(biased.mean(axis=0) - target) > 5 * se_b + rounding)


# ---------------------------------------------------------------------- device momentum


def _recording_rule() -> cj.Feedback:
    """A rule that records what it was given: `seen` on delivering steps, `held` on
    straggling steps; it sends 2·g and aggregates the `seen` values with w̄."""

    def init(dim, dtype):
        return {"seen": jnp.zeros(dim, dtype), "held": jnp.zeros(dim, dtype)}

    def send(key, g, state, hp):
        return 2.0 * g, g, {"seen": g, "held": state["held"]}

    def hold(g, state, hp):
        return {"seen": state["seen"], "held": g}

    def aggregate(server):
        return server.full_weights @ server.after["seen"]

    def memory(state, g):
        return jnp.sum(state["seen"])

    return cj.Feedback(init, send, hold, aggregate, memory, name="recording")


def test_device_momentum_semantics():
    """u <- β u + g only on delivering steps, the rule sees u; a straggler keeps u and its
    rule's hold sees the would-be β u + g; aggregate, memory and name pass through.

    Exact comparisons: β = 0.5 is a power of two, so β u is exact and β u + g is one
    correctly rounded addition (with or without FMA) in the rule and in numpy alike;
    2 u is exact; memory and aggregate pass the same arrays to the same functions."""
    beta = 0.5
    hp = _hp(device_momentum=beta)
    inner = _recording_rule()
    rule = with_device_momentum(inner)
    assert rule.name == "recording"
    state = rule.init(D, jnp.float32)
    assert isinstance(state, MomentumMemory)
    np.testing.assert_array_equal(state.u, 0.0)
    rng = np.random.default_rng(SEED)
    u = np.zeros(D, np.float32)
    for t, delivers in enumerate([True, True, False, True, False, False, True]):
        g = rng.normal(size=D).astype(np.float32)
        if delivers:
            msg, comp_in, state = rule.send(_key(30 + t), jnp.asarray(g), state, hp)
            u = beta * u + g
            np.testing.assert_array_equal(msg, 2 * u)
            np.testing.assert_array_equal(comp_in, u)
            np.testing.assert_array_equal(state.rule["seen"], u)
        else:
            state = rule.hold(jnp.asarray(g), state, hp)
            np.testing.assert_array_equal(state.rule["held"], beta * u + g)
        np.testing.assert_array_equal(state.u, u)
        np.testing.assert_array_equal(rule.memory(state, jnp.asarray(g)), inner.memory(state.rule, g))
    states = _stack(state, M)
    w_bar = jnp.linspace(0.1, 0.5, M)
    server = Server(w_bar, w_bar, jnp.ones(M, bool), jnp.zeros((M, D)), states, states)
    inner_server = server._replace(before=states.rule, after=states.rule)
    np.testing.assert_array_equal(rule.aggregate(server), inner.aggregate(inner_server))


@pytest.mark.parametrize("name", FEEDBACK_NAMES)
def test_device_momentum_with_beta_zero_is_the_rule(name):
    """β = 0: u = 0 u + g = g exactly (finite u; also as one FMA), so the wrapped rule
    gets the same input and key as the bare rule: equal results, exactly."""
    inner = _rule(name)
    rule = with_device_momentum(inner)
    hp = _hp()  # device_momentum = 0
    assert float(hp.device_momentum) == 0.0
    state = rule.init(D, jnp.float32)
    state = MomentumMemory(_row(_random_state(inner, jnp.float32, 40), 0), jax.random.normal(_key(41), (D,)))
    g = jax.random.normal(_key(42), (D,))
    msg, comp_in, new = rule.send(_key(43), g, state, hp)
    msg0, comp_in0, new0 = inner.send(_key(43), g, state.rule, hp)
    chex.assert_trees_all_equal((msg, comp_in, new.rule), (msg0, comp_in0, new0))
    np.testing.assert_array_equal(new.u, g)
    chex.assert_trees_all_equal(rule.hold(g, state, hp).rule, inner.hold(g, state.rule, hp))


def test_diana_warns_when_a_set_alpha_exceeds_its_bound_and_defaults_to_it():
    """DIANA needs α ≤ 1/(ω+1): a set value above it warns (before compiling), the
    default (None) takes the bound, a value within it is silent."""
    import warnings

    import coco_jax as cj
    from coco_jax.engine import prepare

    base = cj.preset("gc-diana", num_devices=4, num_samples=64, num_features=64, steps=2)
    bound = diana_alpha_bound(prepare(base).comps.compressor)
    assert base.diana_alpha is None and 0 < bound < 0.5
    with pytest.warns(UserWarning, match="exceeds DIANA's bound"):
        prepare(base.replace(diana_alpha=min(1.0, 2 * bound)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(base.replace(diana_alpha=bound / 2))
        prepare(base)


def test_state_union_holds_every_rule_state():
    """The union of none / ef / ef21 / momentum-wrapped ef states: each rule's state
    round-trips through the shared slots, and packing one rule's state leaves the slots
    it does not use as they were."""
    from coco_jax.step import StateUnion

    comp = make_compressor("topk", 5, k=2)
    rules = [make_feedback(n, comp, dim=5) for n in ("none", "ef", "ef21")]
    rules.append(with_device_momentum(make_feedback("ef", comp, dim=5)))
    union = StateUnion.of(rules, 5, jnp.float32)
    assert union.slots == (((5,), jnp.dtype(jnp.float32)), ((5,), jnp.dtype(jnp.float32)))
    rng = np.random.default_rng()
    before = tuple(jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in union.slots)
    for i, rule in enumerate(rules):
        state = jax.tree_util.tree_map(
            lambda a: jnp.asarray(rng.normal(size=(3, *a.shape)), a.dtype), rule.init(5, jnp.float32)
        )
        packed = union.pack(i, state, before)
        back = union.unpack(i, packed)
        chex.assert_trees_all_equal(back, state)
        used = set(union.leaves[i])
        for j, (a, b) in enumerate(zip(packed, before)):
            if j not in used:
                np.testing.assert_array_equal(a, b)
