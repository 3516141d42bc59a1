"""Guard: every allocation × decoder × straggler model × feedback rule the config
accepts either keeps its decoder's documented guarantee or is refused at config time.

With the identity compressor and θ frozen (lr = 0) the server's estimate ĝ is averaged
over many steps of one compiled scan (`step.iterate`), and compared with ∇F:

- fixed decoder: unbiased, mean ĝ ≈ ∇F, for every code, straggler model and rule;
- received decoder: accepted only with exchangeable straggling, where it is unbiased
  up to the chance that nobody delivers (kept negligible here);
- optimal decoder: exact on every step whose straggler set the code can decode, so the
  mean of ĝ over those steps equals ∇F.

The target is Σ_k c_k ∇f_k with c = (column sums of this run's B) / (K r): ∇F itself
for every deterministic code (all columns sum to r); for a random code (bernoulli) the
estimate is unbiased given its draw of B, and E[column sum] = r makes it unbiased over
the draws too (tests/test_coding.py). Configurations that differ only in cheap choices
share one compiled program (the same merging a sweep uses), so the whole product runs
as a few dozen programs. A negative control (the old accumulate rule that divided late
gradients by 1 − p) must be caught.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import gamma

import coco_jax as cj
from coco_jax import plan as plan_lib
from coco_jax.config import hparams_in_group
from coco_jax.cyclic_mds import decode_error_bound
from coco_jax.decoders import can_decode
from coco_jax.feedback import Feedback, sum_delivered
from coco_jax.step import init_run, iterate

M = 6
STEPS = 1000
SEEDS_RANDOM_CODE = 3  # a random code: each draw B checked against its own target (below)
P = 0.25
# latency deadline L (1 + ln 4) for a device holding L partitions: it misses it with
# probability 1/4 (so nobody delivering stays rare for the received decoder)
DEADLINE_PER_LOAD = 1 + np.log(4)
TRACE = np.random.default_rng(7).random((STEPS, M)) < P
Z = 4.5  # allowed deviation of mean ĝ from its target, in batch-means standard errors
BATCHES = 30  # batch means over the steps (straggling and feedback memory correlate steps)
P_MAX = 0.4  # the largest nominal straggling rate below (heterogeneous; latency-wait: 1/3)

ALLOCATIONS = {"uncoded": 0, "cyclic": 1, "frc": 1, "bernoulli": 1, "cyclic_mds": 2}
STRAGGLERS = {
    "none": {},
    "bernoulli": {"straggler_prob": P},
    "fixed_count": {"straggler_count": 1},
    "heterogeneous": {"straggler_probs": (0.05, 0.4, 0.1, 0.3, 0.2, 0.35)},
    "markov": {"markov_p_gb": 0.1, "markov_p_bg": 0.3},
    "latency": {},
    "latency-wait": {"wait_for": 4},
    "trace": {"straggler_prob": P},
}
FEEDBACKS = {
    "none": {"error_feedback": "none"},
    "ef": {"error_feedback": "ef"},
    "ef-accumulate": {"error_feedback": "ef", "straggler_error": "accumulate"},
    "ef21": {"error_feedback": "ef21"},
    "diana": {"error_feedback": "diana"},
}


def _config(allocation, decoder, straggler, fb, seed=0):
    strag = dict(STRAGGLERS[straggler])
    name = "latency" if straggler.startswith("latency") else straggler
    if straggler == "latency":
        strag["deadline"] = DEADLINE_PER_LOAD * max(
            ALLOCATIONS[allocation] + 1, 2 if allocation == "bernoulli" else 1
        )
    return cj.ExperimentConfig(
        task="linreg",
        num_devices=M,
        num_samples=12 * M,
        num_features=5,
        num_test=0,
        allocation=allocation,
        redundancy=ALLOCATIONS[allocation],
        decoder=decoder,
        straggler=name,
        compressor="identity",
        lr=0.0,
        steps=STEPS,
        eval_every=STEPS,
        seed=seed,
        **strag,
        **FEEDBACKS[fb],
    )


def _combinations():
    """(key, [configs]) of every accepted combination, and the refused keys."""
    accepted, refused = [], []
    for key in itertools.product(ALLOCATIONS, ("fixed", "received", "optimal"), STRAGGLERS, FEEDBACKS):
        seeds = range(SEEDS_RANDOM_CODE) if key[0] == "bernoulli" else [0]
        try:
            accepted.append((key, [_config(*key, seed=s) for s in seeds]))
        except cj.ConfigError:
            refused.append(key)
    return accepted, refused


def _mean_estimates(cfgs: list) -> dict:
    """Per configuration: mean ĝ over all steps, mean over the decodable steps, ∇F."""
    entries = [plan_lib.Entry(i, "custom", c, str(i)) for i, c in enumerate(cfgs)]
    trace = TRACE if cfgs[0].straggler == "trace" else None
    groups, _ = plan_lib.prepare_groups(entries, straggler_trace=trace)
    out = {}
    for g in groups:
        comps, data = g.prepared.comps, g.prepared.data
        hps = jax.tree_util.tree_map(
            lambda *xs: jnp.asarray(np.stack(xs)), *[hparams_in_group(g.static, e.cfg) for e in g.entries]
        )

        def one(hp, comps=comps, data=data):
            carry = init_run(comps, hp, data)

            def body(c, t):
                new, up = iterate(comps, c, t, hp, data)
                return c._replace(state=new), (up.g_hat, up.straggles)

            _, (g_hats, straggles) = jax.lax.scan(body, carry, jnp.arange(1, STEPS + 1))
            parts = jax.vmap(jax.grad(comps.task.loss), (None, 0, 0))(carry.state.params, data.xp, data.yp)
            return g_hats, straggles, parts, carry.b

        g_hats, straggles, parts, bs = jax.jit(jax.vmap(one))(hps)
        xp, yp = np.asarray(data.xp, np.float64), np.asarray(data.yp, np.float64)
        n_k = xp.shape[1]
        # |grad f_k| at θ = 0 is at most a_k = |X_k|^T |y_k| / n_k; float32 computes it
        # within gamma_(n_k+1) a_k (n_k products summed, one scaling), in the engine and
        # for the target alike
        a = np.einsum("knd,kn->kd", np.abs(xp), np.abs(yp)) / n_k  # [K, d]
        for i, e in enumerate(g.entries):
            gh = np.asarray(g_hats[i], np.float64)
            b = np.asarray(bs[i], np.float64)
            code = comps.codes[int(hps.code_choice[i])]
            k_parts = b.shape[1]
            weights = (
                b.sum(axis=0) / (k_parts * code.replication)
                if code.replication
                else np.full(k_parts, 1 / k_parts)
            )
            target = weights @ np.asarray(parts[i], np.float64)  # ∇F for a deterministic code
            st = np.asarray(straggles[i])
            on_decodable = None
            if e.cfg.decoder == "optimal":  # an independent float64 check, per step
                masks, which = np.unique(st, axis=0, return_inverse=True)  # at most 2^M straggler sets
                ok = np.array([can_decode(b, s) for s in masks])[which.reshape(-1)]
                on_decodable = gh[ok].mean(0) if ok.any() else None
                target = np.asarray(parts[i], np.float64).mean(0)  # exact decoding recovers ∇F
                if ok.any():
                    on_decodable = (
                        on_decodable,
                        _decodable_tolerance(b, st[ok], np.asarray(parts[i]), a, n_k),
                    )
            batch_means = gh[: STEPS // BATCHES * BATCHES].reshape(BATCHES, -1, gh.shape[1]).mean(1)
            se = batch_means.std(0, ddof=1) / np.sqrt(BATCHES)
            out[e.index] = (gh.mean(0), on_decodable, target, se, _rounding(b, st, code.replication, a, n_k))
    return out


def _longest_streak(straggles: np.ndarray) -> int:
    """The longest run of consecutive straggling steps of any device ([steps, M] bool)."""
    # each device's column, then a non-straggling separator: runs never cross devices
    flat = np.concatenate([np.asarray(straggles, bool).T, np.zeros((straggles.shape[1], 1), bool)], 1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat.reshape(-1).astype(np.int8), [0]])))
    lengths = edges[1::2] - edges[::2]  # each run: from its first straggling step to the next non-straggling
    return int(lengths.max(initial=0))


def _rounding(b: np.ndarray, straggles: np.ndarray, replication, a: np.ndarray, n_k: int) -> np.ndarray:
    """Bound [d] on any step's float32 rounding error in ĝ (fixed / received decoders),
    hence on the bias rounding can give the mean (conftest: Higham's model).

    With the identity compressor a device sends its coded gradient c_m = sum_k B_mk g_k
    (L nonzero terms) plus, under ef-accumulate, what it held while straggling (at most
    the longest streak S of its straggling steps, θ being frozen); ef21 and DIANA also
    sum every shift h_m (as large as c_m) with w̄. ||w||_1 <= M / (K r (1 - p_max))
    for fixed, = M / (K r) for received and w̄. Every path has at most N = M + L + S +
    n_k + 6 roundings: the gradient, the encoding, S accumulations, the decoding sum,
    the feedback's few additions; the target's float32 partition gradients add
    gamma_(n_k+1) a_k, covered by counting n_k twice."""
    m_dev, k_parts = b.shape
    r = replication or float(np.abs(b).sum(axis=0).mean())
    streak = _longest_streak(straggles)
    nnz = int((b != 0).sum(axis=1).max())
    coded = np.abs(b) @ a  # [M, d] bound on |c_m|
    w1 = m_dev / (k_parts * r) * (1 / (1 - P_MAX) + 1)
    return gamma(m_dev + nnz + streak + 2 * n_k + 6) * (1 + streak) * w1 * coded.max(axis=0)


def _decodable_tolerance(
    b: np.ndarray, straggles: np.ndarray, parts: np.ndarray, a: np.ndarray, n_k: int
) -> float:
    """Bound on ||mean over decodable steps of ĝ - ∇F|| (optimal decoder, plain rules):
    each step within the calibrated decode estimate `decode_error_bound` (kappa = the
    worst float64 kappa over this run's decodable straggler sets) times max_k ||∇f_k||,
    plus the float32 partition gradients (engine's and target's, gamma_(n_k+1) a_k
    each) amplified by kappa."""
    m_dev, k_parts = b.shape
    kappa = 1.0
    for mask in np.unique(straggles, axis=0):
        w = np.linalg.pinv(b[~mask].T, rcond=1e-10) @ np.full(k_parts, 1.0 / k_parts)
        kappa = max(kappa, float(np.abs(w) @ np.abs(b[~mask]).sum(axis=1)))
    scale = float(np.linalg.norm(np.asarray(parts, np.float64), axis=1).max())
    grads = 2 * gamma(n_k + 1) * kappa * float(np.linalg.norm(a, axis=1).max())
    return decode_error_bound(kappa, m_dev, "float32") * scale + grads


def _relative_error(estimate, grad) -> float:
    return float(np.linalg.norm(estimate - grad) / np.linalg.norm(grad))


def _unbiased(mean, target, se, rounding) -> bool:
    """mean ≈ target within Z standard errors per coordinate, plus the bound on a bias
    float rounding can give (`_rounding`)."""
    return bool(np.all(np.abs(mean - target) <= Z * se + rounding))


@pytest.fixture(scope="module")
def results():
    accepted, refused = _combinations()
    by_feedback: dict = {}
    for key, cfgs in accepted:
        by_feedback.setdefault((key[3], key[2] == "trace"), []).append((key, cfgs))
    measured = {}
    for items in by_feedback.values():
        flat = [c for _, cfgs in items for c in cfgs]
        est = _mean_estimates(flat)
        i = 0
        for key, cfgs in items:
            rows = [est[i + j] for j in range(len(cfgs))]
            i += len(cfgs)
            measured[key] = rows
    return measured, refused


def test_refused_combinations_are_the_documented_ones(results):
    _, refused = results
    for allocation, decoder, straggler, _ in refused:
        assert (
            (allocation == "cyclic_mds" and decoder == "fixed")
            or (decoder == "received" and straggler == "heterogeneous")
            or (decoder == "received" and straggler.startswith("latency") and allocation == "bernoulli")
        ), (allocation, decoder, straggler)


def test_fixed_and_received_decoders_are_unbiased(results):
    measured, _ = results
    checked = 0
    for (allocation, decoder, straggler, fb), rows in measured.items():
        if decoder == "optimal":
            continue
        for mean, _, target, se, rounding in rows:  # each draw of a random code against its own target
            assert _unbiased(mean, target, se, rounding), (
                allocation,
                decoder,
                straggler,
                fb,
                mean,
                target,
                se,
            )
            checked += 1
    assert checked > 100


def test_optimal_decoder_is_exact_on_decodable_steps(results):
    measured, _ = results
    checked = 0
    for (allocation, decoder, straggler, fb), rows in measured.items():
        if decoder != "optimal" or fb in ("ef-accumulate", "ef21", "diana"):
            continue  # those rules carry memory across steps: exactness is per step of the plain rules
        for _, on_decodable, grad, _, _ in rows:
            if on_decodable is not None:
                mean, tol = on_decodable
                assert np.linalg.norm(mean - grad) <= tol, (
                    allocation,
                    straggler,
                    fb,
                    _relative_error(mean, grad),
                )
                checked += 1
    assert checked > 20


def test_the_guard_catches_a_biased_rule():
    """Negative control: accumulate whose late gradients are divided by 1 − p again."""

    @cj.register_feedback("test_biased_accumulate", overwrite=True)
    def biased(compressor):
        def send(key, g, state, hp):
            v = g + state["e"]
            c = compressor.compress(key, v)
            return c, v, {"e": v - c}

        def hold(g, state, hp):
            return {"e": state["e"] + g}

        return Feedback(lambda d, dt: {"e": jnp.zeros(d, dt)}, send, hold, sum_delivered)

    cfg = _config("cyclic", "fixed", "bernoulli", "none").replace(error_feedback="test_biased_accumulate")
    mean, _, grad, se, rounding = _mean_estimates([cfg])[0]
    ratio = float(mean @ grad / (grad @ grad))
    # its expectation is 1 / (1 - P); the projection's standard error and rounding bias
    ratio_tol = (Z * np.linalg.norm(se * grad) + np.abs(grad) @ rounding) / (grad @ grad)
    assert not _unbiased(mean, grad, se, rounding) and abs(ratio - 1 / (1 - P)) <= ratio_tol, (
        ratio,
        ratio_tol,
    )
    fair = _mean_estimates([_config("cyclic", "fixed", "bernoulli", "ef-accumulate")])[0]
    assert _unbiased(fair[0], fair[2], fair[3], fair[4])
