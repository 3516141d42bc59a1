"""Tests of coco_jax.stragglers: statistical properties of every straggler model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gamma

from coco_jax.config import ConfigError, ExperimentConfig, hparams_of
from coco_jax.registry import STRAGGLER_MODELS
from coco_jax.stragglers import (
    latency_times,
    make_straggler_model,
)

STRAGGLER_NAMES = STRAGGLER_MODELS.builtin_names()
SEED = int(np.random.SeedSequence().entropy % (2**31))  # fresh inputs each run; shown on failure
KEY = jax.random.key(SEED)


def _key(tag: int) -> jax.Array:
    return jax.random.fold_in(KEY, tag)


def _hp(**changes):
    return jax.tree.map(jnp.asarray, hparams_of(ExperimentConfig(**changes)))


def _draws(model, hp, n, key, load=None, state=()):
    """n independent steps (vmap over keys) from one state; one compile per model."""
    fn = _DRAW_FNS.get(model)
    if fn is None:
        fn = jax.jit(
            jax.vmap(lambda k, s, h, ld: model.sample(k, s, h, ld, None), in_axes=(0, None, None, None))
        )
        _DRAW_FNS[model] = fn
    straggles, times, _ = fn(jax.random.split(key, n), state, hp, load)
    return np.asarray(straggles), np.asarray(times)


_DRAW_FNS: dict = {}


def _assert_rate(empirical, nominal, n):
    nominal = np.asarray(nominal, np.float64)
    se = np.sqrt(nominal * (1 - nominal) / n)
    # se = 0 only at rates 0 and 1, where the draws are exact; the nominal rate is a
    # float32 value (u)
    assert np.all(np.abs(empirical - nominal) <= 5 * se + gamma(1) * nominal), (empirical, nominal, se)


def test_names_and_unknown():
    assert set(STRAGGLER_NAMES) == set(STRAGGLER_MODELS.names())
    with pytest.raises(ConfigError, match="straggler"):
        make_straggler_model("slow", 4)
    with pytest.raises(ConfigError, match="loads"):
        make_straggler_model("latency", 4, loads=np.ones(3))


@pytest.mark.parametrize("name", [n for n in STRAGGLER_NAMES if n != "latency"])  # latency: timed below
def test_unit_step_time_and_shapes(name):
    m_dev = 5
    hp = _hp(num_devices=m_dev, straggler="heterogeneous", straggler_probs=(0.1, 0.2, 0.3, 0.4, 0.5))
    model = make_straggler_model(name, m_dev)
    state = model.init(_key(0), hp)
    row = jnp.array([True, False, True, False, False])
    straggles, step_time, new_state = jax.jit(model.sample)(_key(1), state, hp, jnp.ones(m_dev), row)
    assert straggles.shape == (m_dev,) and straggles.dtype == jnp.bool_
    assert step_time.shape == () and step_time.dtype == jnp.float32 and float(step_time) == 1.0
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert model.marginal_rate(hp).shape == (m_dev,)


def test_none():
    model = make_straggler_model("none", 6)
    hp = _hp(num_devices=6)
    straggles, _ = _draws(model, hp, 100, _key(2))
    assert not straggles.any()
    np.testing.assert_array_equal(model.marginal_rate(hp), 0.0)


def test_bernoulli_rate():
    m_dev, p, n = 8, 0.3, 5000
    model = make_straggler_model("bernoulli", m_dev)
    hp = _hp(num_devices=m_dev, straggler_prob=p)
    straggles, _ = _draws(model, hp, n, _key(3))
    _assert_rate(straggles.mean(), p, n * m_dev)
    _assert_rate(straggles.mean(0), p, n)
    np.testing.assert_allclose(model.marginal_rate(hp), p, rtol=gamma(1), atol=0)  # p rounded to float32


def test_heterogeneous_rate_per_device():
    probs = (0.0, 0.05, 0.2, 0.4, 0.6, 0.9)
    m_dev, n = len(probs), 5000
    model = make_straggler_model("heterogeneous", m_dev)
    hp = _hp(num_devices=m_dev, straggler="heterogeneous", straggler_probs=probs)
    straggles, _ = _draws(model, hp, n, _key(4))
    _assert_rate(straggles.mean(0), np.array(probs), n)
    np.testing.assert_allclose(model.marginal_rate(hp), probs, rtol=gamma(1), atol=0)  # rounded to float32


def test_fixed_count_exact():
    m_dev, n = 7, 4000
    model = make_straggler_model("fixed_count", m_dev)
    for count in (0, 1, 3, 6):
        hp = _hp(num_devices=m_dev, straggler="fixed_count", straggler_count=count)
        straggles, _ = _draws(model, hp, n, _key(5 + count))
        np.testing.assert_array_equal(straggles.sum(1), count)
        _assert_rate(straggles.mean(0), count / m_dev, n)
        # count / M: one float32 division
        np.testing.assert_allclose(model.marginal_rate(hp), count / m_dev, rtol=gamma(1), atol=0)


def test_markov_stationary_rate_and_bursts():
    m_dev, steps, p_gb, p_bg = 4, 20000, 0.1, 0.4
    model = make_straggler_model("markov", m_dev)
    hp = _hp(num_devices=m_dev, straggler="markov", markov_p_gb=p_gb, markov_p_bg=p_bg)
    pi_bad = p_gb / (p_gb + p_bg)
    # p_gb / (p_gb + p_bg): two inputs rounded to float32, a sum and a quotient
    np.testing.assert_allclose(model.marginal_rate(hp), pi_bad, rtol=gamma(4), atol=0)

    # initial state follows the stationary law
    init = np.asarray(jax.vmap(model.init, in_axes=(0, None))(jax.random.split(_key(9), 20000), hp))
    _assert_rate(init.mean(), pi_bad, init.size)

    def run(key):
        k0, k1 = jax.random.split(key)

        def body(state, k):
            straggles, _, state = model.sample(k, state, hp, None, None)
            return state, straggles

        return jax.lax.scan(body, model.init(k0, hp), jax.random.split(k1, steps))[1]

    series = np.asarray(jax.jit(run)(_key(10)))  # [steps, M]
    lam = 1.0 - p_gb - p_bg  # lag-1 autocorrelation of the chain
    se = np.sqrt(pi_bad * (1 - pi_bad) / series.size * (1 + lam) / (1 - lam))
    assert abs(series.mean() - pi_bad) < 5 * se

    # bad bursts (uncensored runs of True) are geometric with mean 1 / p_bg
    lengths = []
    for col in series.T.astype(np.int8):
        edges = np.diff(np.concatenate([[0], col, [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        keep = (starts > 0) & (ends < len(col))
        lengths.extend((ends - starts)[keep])
    lengths = np.asarray(lengths, np.float64)
    se_len = np.sqrt((1 - p_bg) / p_bg**2 / len(lengths))
    assert abs(lengths.mean() - 1 / p_bg) < 5 * se_len


def test_latency_deadline():
    loads = np.array([0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0])
    m_dev, n = len(loads), 4000
    model = make_straggler_model("latency", m_dev, loads=loads)
    hp = _hp(num_devices=m_dev, straggler="latency", latency_shift=1.0, latency_rate=1.0, deadline=4.0)
    keys = jax.random.split(_key(11), n)
    straggles, times, _ = jax.jit(jax.vmap(lambda k: model.sample(k, (), hp, jnp.asarray(loads), None)))(keys)
    ref = np.asarray(jax.vmap(lambda k: latency_times(k, hp, jnp.asarray(loads)))(keys))  # [n, M]
    straggles, times = np.asarray(straggles), np.asarray(times)
    np.testing.assert_array_equal(straggles, ref > 4.0)
    expected_time = np.where(straggles.any(1), 4.0, ref.max(1))
    # load (shift + E / rate): 3 roundings in each of the two programs
    np.testing.assert_allclose(times, expected_time, rtol=2 * gamma(3), atol=0)
    rate = np.asarray(model.marginal_rate(hp))
    closed = np.where(
        loads > 0,
        np.where(4.0 / np.maximum(loads, 1e-9) > 1.0, np.exp(-(4.0 / np.maximum(loads, 1e-9) - 1.0)), 1.0),
        0.0,
    )
    # exp(-rate (deadline / load - shift)) in float32: the argument's 3 roundings (and
    # the float32 inputs) are gamma_5 of rate (deadline / load + shift) in absolute
    # terms, hence relative in exp, plus exp's own few ulp (gamma_3)
    arg = 1.0 * (4.0 / np.maximum(loads, 1e-9) + 1.0)
    rtol = gamma(5) * arg + gamma(3)
    assert np.all(np.abs(rate - closed) <= rtol * closed), (rate, closed)
    _assert_rate(straggles.mean(0), rate, n)
    # rate from the load argument equals rate from the static loads (the same function
    # on the same values, in two programs); load=None uses them
    assert np.all(np.abs(np.asarray(model.marginal_rate(hp, jnp.asarray(loads))) - rate) <= 2 * rtol * rate)
    same, _, _ = model.sample(keys[0], (), hp, None, None)
    np.testing.assert_array_equal(same, straggles[0])
    # times are load * (shift + Exp(rate)): mean load * (shift + 1/rate)
    hp2 = dataclasses.replace(hp, latency_shift=jnp.float32(0.5), latency_rate=jnp.float32(2.0))
    t2 = np.asarray(jax.vmap(lambda k: latency_times(k, hp2, jnp.ones(m_dev)))(keys))
    assert np.all(t2 >= 0.5)
    assert abs(t2.mean() - 1.0) < 5 * 0.5 / np.sqrt(t2.size)


def test_latency_wait_for():
    m_dev, n = 6, 500
    loads = jnp.asarray([1.0, 1.0, 2.0, 2.0, 3.0, 1.0])
    model = make_straggler_model("latency", m_dev, wait_mode=True)
    sample = jax.jit(jax.vmap(lambda k, h: model.sample(k, (), h, loads, None), in_axes=(0, None)))
    times_of = jax.jit(jax.vmap(lambda k, h: latency_times(k, h, loads), in_axes=(0, None)))
    for wait_for in (1, 3, 6):
        hp = _hp(num_devices=m_dev, straggler="latency", wait_for=wait_for)
        keys = jax.random.split(_key(12 + wait_for), n)
        straggles, times, _ = sample(keys, hp)
        straggles, times = np.asarray(straggles), np.asarray(times)
        ref = np.asarray(times_of(keys, hp))
        np.testing.assert_array_equal(straggles.sum(1), m_dev - wait_for)
        # the same times, computed in two programs: 3 roundings each
        np.testing.assert_allclose(times, np.sort(ref, 1)[:, wait_for - 1], rtol=2 * gamma(3), atol=0)
        fastest = np.where(straggles, -np.inf, ref).max(1)
        slowest = np.where(straggles, ref, np.inf).min(1)
        assert np.all(fastest <= slowest)  # the stragglers are the slowest
        np.testing.assert_allclose(
            model.marginal_rate(hp), (m_dev - wait_for) / m_dev, rtol=gamma(1), atol=0
        )  # one float32 division


def test_wait_for_ties_by_index():
    model = make_straggler_model("latency", 4, wait_mode=True)
    hp = _hp(num_devices=4, straggler="latency", wait_for=2, latency_shift=1.0)
    hp = dataclasses.replace(hp, latency_rate=jnp.float32(1e30))  # times = load * shift exactly
    straggles, step_time, _ = model.sample(_key(20), (), hp, jnp.ones(4), None)
    np.testing.assert_array_equal(straggles, [False, False, True, True])
    # E / 1e30 < u: shift + E / rate rounds to shift, times load 1: exactly 1
    assert float(step_time) == 1.0


def test_trace_returns_row():
    m_dev = 5
    model = make_straggler_model("trace", m_dev)
    hp = _hp(num_devices=m_dev, straggler_prob=0.25)
    rows = np.asarray(jax.random.bernoulli(_key(21), 0.5, (10, m_dev)))
    fn = jax.jit(jax.vmap(lambda k, r: model.sample(k, (), hp, None, r)))
    straggles, times, _ = fn(jax.random.split(_key(22), 10), jnp.asarray(rows))
    np.testing.assert_array_equal(np.asarray(straggles), rows)
    np.testing.assert_array_equal(np.asarray(times), 1.0)
    np.testing.assert_array_equal(model.marginal_rate(hp), 0.25)  # 0.25 is exact in float32
    with pytest.raises(ConfigError, match="straggler_trace"):
        model.sample(_key(23), (), hp, None, None)


def test_vmap_over_hparams():
    m_dev, n = 6, 3000
    ps = jnp.asarray([0.05, 0.5, 0.9], jnp.float32)
    model = make_straggler_model("bernoulli", m_dev)
    base = _hp(num_devices=m_dev)
    hps = dataclasses.replace(
        jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *x.shape)), base), straggler_prob=ps
    )

    def rates(hp, key):
        keys = jax.random.split(key, n)
        straggles = jax.vmap(lambda k: model.sample(k, (), hp, None, None)[0])(keys)
        return straggles.mean(0), model.marginal_rate(hp)

    empirical, nominal = jax.jit(jax.vmap(rates))(hps, jax.random.split(_key(24), 3))
    np.testing.assert_array_equal(
        nominal, np.broadcast_to(np.asarray(ps)[:, None], (3, m_dev))
    )  # ps as given
    for i in range(3):
        _assert_rate(np.asarray(empirical[i]), float(ps[i]), n)

    # markov and latency under vmap over their own hparams
    markov = make_straggler_model("markov", m_dev)
    hps_m = dataclasses.replace(hps, markov_p_gb=jnp.asarray([0.1, 0.2, 0.3]))
    states = jax.vmap(markov.init)(jax.random.split(_key(25), 3), hps_m)
    out = jax.vmap(lambda k, s, h: markov.sample(k, s, h, None, None))(
        jax.random.split(_key(26), 3), states, hps_m
    )
    assert out[0].shape == (3, m_dev)
    latency = make_straggler_model("latency", m_dev)
    hps_l = dataclasses.replace(hps, deadline=jnp.asarray([0.5, 4.0, 1e9]))
    strag, _, _ = jax.vmap(lambda k, h: latency.sample(k, (), h, jnp.ones(m_dev), None))(
        jax.random.split(_key(27), 3), hps_l
    )
    strag = np.asarray(strag)
    assert strag[0].all() and not strag[2].any()  # deadline below the shift / far away
