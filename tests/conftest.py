"""Shared test fixtures: small data sets and configurations, the environment of a
subprocess that runs this checkout, and registries that every test leaves as it
found them.

Plain functions (`small_base`, `linreg_data`, `subprocess_env`) are also importable
from scripts that run outside pytest (tests/sweep_helper.py); tests use the fixtures
of the same names.

The persistent compilation cache (coco_jax/cache.py) goes to a fresh directory per
test session, so the suite never reads or fills the user's cache and starts cold,
while the subprocesses a test starts (which inherit the environment) reuse what the
session compiled.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import tempfile

os.environ.setdefault("COCO_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="coco-jax-test-xla-"))

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ data and configs


def linreg_data(n: int = 48, d: int = 6, seed: int = 0, noise: float = 0.1):
    """Gaussian rows X [n, d] and y = X w + noise·ε (float32), seeded."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = x @ rng.normal(size=d)
    if noise:
        y = y + noise * rng.normal(size=n)
    return x, y.astype(np.float32)


def small_base(**over):
    """A tiny linreg configuration (M = 4, d = 8, 6 steps): a few ms per run on a CPU."""
    import coco_jax as cj

    fields = {
        "task": "linreg",
        "num_devices": 4,
        "num_samples": 64,
        "num_test": 16,
        "num_features": 8,
        "steps": 6,
        "eval_every": 2,
    }
    fields.update(over)
    return cj.ExperimentConfig(**fields)


def subprocess_env(devices: int = 1) -> dict:
    """Environment of a Python subprocess that imports this checkout's coco_jax on CPU
    with `devices` host devices (and no jax.distributed variables inherited)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return env


@pytest.fixture(name="linreg_data", scope="session")
def _linreg_data_fixture():
    """`linreg_data(n=48, d=6, seed=0, noise=0.1)` -> (X, y)."""
    return linreg_data


@pytest.fixture(name="small_base", scope="session")
def _small_base_fixture():
    """`small_base(**overrides)` -> a tiny linreg ExperimentConfig."""
    return small_base


@pytest.fixture(name="subprocess_env", scope="session")
def _subprocess_env_fixture():
    """`subprocess_env(devices=1)` -> the environment of a subprocess running this checkout."""
    return subprocess_env


# ------------------------------------------------------------------ float tolerances
#
# Every float tolerance in the suite follows from the dtype and the operation, so that
# the suite holds on any CPU (SIMD width, FMA, XLA:CPU threads and fusion change the
# order of float additions, never these bounds). The model (Higham, "Accuracy and
# Stability of Numerical Algorithms", 2nd ed., 2002): with u = eps/2 the unit
# roundoff, one rounding gives fl(x op y) = (x op y)(1 + d), |d| <= u; a sum or dot
# product of n terms, added in ANY order, with or without fused multiply-adds, has
#     |fl(sum_i x_i y_i) - sum_i x_i y_i| <= gamma_n sum_i |x_i y_i|,
#     gamma_n = n u / (1 - n u)                                  (Higham (3.4), Lemma 3.1)
# and products of (1 + d_i) compose: (1 + gamma_a)(1 + gamma_b) <= 1 + gamma_(a+b).
# Adding an exact zero is exact, so n counts the nonzero terms. A float64 reference
# computed from the float32 inputs carries its own (float64) gamma_n, added in.


def unit_roundoff(dtype=np.float32) -> float:
    """u = eps/2 of ``dtype`` (2^-24 for float32, 2^-53 for float64)."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def gamma(n, dtype=np.float32):
    """Higham's gamma_n = n u / (1 - n u) (elementwise for an array ``n``)."""
    nu = np.asarray(n, np.float64) * unit_roundoff(dtype)
    assert np.all(nu < 1), "gamma_n needs n u < 1"
    return nu / (1.0 - nu)


def sum_tolerance(terms, dtype=np.float32, axis=-1):
    """Bound on |computed - exact| for a ``dtype`` sum (or dot product) of ``terms``,
    compared with a float64 reference computed from the same ``dtype`` inputs.

    ``terms``: the exact summands (for a dot product the products x_i y_i), an array
    reduced along ``axis``. Returns (gamma_n(dtype) + gamma_n(float64)) sum_i |t_i|
    with n the number of nonzero terms (Higham (3.4); module comment above). Two
    computations of the same sum in different orders (jit vs eager, vmap vs loop,
    another CPU) differ by at most twice this.
    """
    t = np.abs(np.asarray(terms, np.float64))
    n = np.count_nonzero(t, axis=axis)
    return (gamma(n, dtype) + gamma(n, np.float64)) * t.sum(axis=axis)


def assert_within(actual, desired, tol, err_msg: str = "") -> None:
    """|actual - desired| <= tol elementwise (tol broadcasts: a derived bound per entry).

    ``tol`` must come from an error analysis (`sum_tolerance`, `gamma`, ...), stated
    beside the call."""
    a = np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    diff = np.abs(a - d)
    tol = np.broadcast_to(np.asarray(tol, np.float64), diff.shape)
    bad = ~(diff <= tol)
    if bad.any():
        i = (
            np.unravel_index(int(np.argmax(np.where(bad, diff - tol, -np.inf))), diff.shape)
            if diff.ndim
            else ()
        )
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {diff.size} entries off; worst at {i}: "
            f"actual {a[i]!r}, desired {d[i]!r}, |diff| {diff[i]:.3g} > tol {tol[i]:.3g}"
        )


def contraction_tolerance(v, c) -> np.ndarray:
    """Bound on |computed - exact| of `empirical_contraction` (float32) per row.

    Inputs rounded to float32 (u each) and c - v (u): |d(c_i - v_i)| <= gamma_2 (|c_i|
    + |v_i|); D squares summed: gamma_(D+1) on the numerator N and the denominator V;
    the quotient adds u. First order plus the square of the difference error."""
    v = np.atleast_2d(np.asarray(v, np.float64))
    c = np.atleast_2d(np.asarray(c, np.float64))
    d = v.shape[-1]
    diff = c - v
    err = gamma(2) * (np.abs(c) + np.abs(v))
    num, den = (diff**2).sum(-1), (v**2).sum(-1)
    dnum = (2 * np.abs(diff) * err + err**2).sum(-1) + gamma(d + 1) * num
    return dnum / den + gamma(d + 3) * num / den


def min_norm_tolerance(A, target, dtype=np.float32, *, factor: float = 1.0):
    """(w*, tol): the float64 minimum-norm least-squares solution of A w = target and a
    bound on ||w - w*||_2 for weights computed from A rounded to ``dtype`` by an
    SVD-based solve (the `optimal` decoder); ``factor`` = 2 bounds the distance
    between two such computations.

    First-order perturbation theory of minimum-norm least squares (Higham 2002,
    Thm 20.1; Wedin): a solve with normwise backward error p eps ||A|| moves w by at
    most p eps (2 cond + cond^2 ||res|| / (||A|| ||w*||)) ||w*||, cond = sigma_1 /
    sigma_rank, res = A w* - target. p = MDS_SQRT_M_FACTOR sqrt(M) + 1: the calibrated
    backward-error constant of the decoder (coco_jax.cyclic_mds, the sqrt(M) part of
    `decode_error_bound`) and one eps for rounding A. The rank is the number of
    singular values above 1e-10 sigma_1 (float64: zero ones sit near 1e-16 sigma_1)."""
    from coco_jax.cyclic_mds import MDS_SQRT_M_FACTOR

    A = np.asarray(A, np.float64)
    target = np.asarray(target, np.float64)
    ref = np.linalg.pinv(A, rcond=1e-10) @ target if A.size else np.zeros(A.shape[1])
    sv = np.linalg.svd(A, compute_uv=False) if A.size else np.zeros(0)
    if sv.size == 0 or sv[0] == 0:
        return ref, 0.0  # nobody delivers: both sides are exact zeros
    rank = int((sv > 1e-10 * sv[0]).sum())
    cond = sv[0] / sv[rank - 1]
    res = np.linalg.norm(A @ ref - target)
    norm = np.linalg.norm(ref)
    p = MDS_SQRT_M_FACTOR * np.sqrt(max(A.shape)) + 1.0
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if norm == 0:
        return ref, factor * p * eps * cond * res / sv[0]
    return ref, factor * p * eps * (2 * cond + cond**2 * res / (sv[0] * norm)) * norm


# Two float32 executions of one configuration (cj.run, a vmapped sweep batch, jit and
# eager, a plugin equal to a built-in, another batching or process) run the same
# algorithm with other summation orders. `run_tolerances` bounds how far apart their
# histories can be, to first order in u, assuming both take the same discrete
# decisions (straggler draws are identical; a top-k selection or a stochastic rounding
# flips only if two values lie within the bound below, probability ~ d x that gap).
_PROJECTIONS = ("identity", "topk", "randk")  # C(v) and v - C(v): complementary projections
_FIELDS_EXACT = (
    "step",
    "bits",
    "delivered",
    "stragglers",
    "time",
    "diverged",
    "diverged_step",
    "accuracy",
    "test_accuracy",
)


def _abs_partition_grads(task: str, xp: np.ndarray, yp: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """[K, d] bound on |grad f_k(theta)| componentwise: linreg |X_k|^T (|X_k| |theta| +
    |y_k|) / n_k; logreg |X_k|^T 1 / n_k (|sigma(z) - y| <= 1)."""
    ax = np.abs(xp)
    if task == "linreg":
        return np.einsum("knd,kn->kd", ax, ax @ np.abs(theta) + np.abs(yp)) / xp.shape[1]
    return ax.sum(axis=1) / xp.shape[1]


@functools.lru_cache(maxsize=64)
def _recording_program(static, steps: int):
    """The jitted scan that `run_tolerances` records a configuration's magnitudes with:
    from the initial carry, per step (params, straggles, compressor inputs, messages, max
    memory per device, g_hat) of `step.iterate`. One program per `Static` and step count,
    like `step.compiled_run` (Static names each component with its registration serial),
    so configurations that differ only in dynamic values or data never recompile it."""
    import jax
    import jax.numpy as jnp

    from coco_jax.step import components, iterate

    comps = components(static)

    def record(carry, hp, rdata):
        def body(c, t):
            new, up = iterate(comps, c, t, hp, rdata)
            mem = jax.tree_util.tree_leaves(up.devices.fb_state)
            mem = (
                jnp.stack([jnp.abs(m).max(axis=1) for m in mem]).max(axis=0)
                if mem
                else jnp.zeros(up.g_hat.shape[:0])
            )
            out = (
                c.state.params,
                up.straggles,
                up.devices.compressor_inputs,
                up.devices.messages,
                mem,
                up.g_hat,
            )
            return c._replace(state=new), out

        return jax.lax.scan(body, carry, jnp.arange(1, steps + 1))[1]

    return jax.jit(record)


def run_tolerances(cfg, data=None, straggler_trace=None, reference: str = "float32") -> dict:
    """Per history field (and "params"), a bound on |a - b| between two float32 runs of
    ``cfg`` (module comment above): arrays over the evaluated steps, 0 for exact fields.
    ``reference="exact"``: instead, between one float32 run and exact arithmetic (the
    float64 references, e.g. `reference.gradient_descent` for identity / no stragglers):
    one program's rounding, plus the optimal decoder's residual (the calibrated estimate
    `decode_error_bound` of coco_jax.cyclic_mds); "own_grad_error_sq" then bounds the
    run's own ||g_hat - grad F||^2 (0 in exact arithmetic on decodable steps).

    Derivation (u = eps/2, gamma_n as above; linreg and logreg, plain SGD):
    * One step of either program is within delta_t of exact arithmetic on the same state:
      every entry of the coded gradients, compressor inputs, messages and memories takes
      at most N = (d + n_k + 8) + L + M + 10 roundings (a partition gradient incl. exp/log
      to a few ulp, the L-term encoding, the M-term decoding, feedback, compressor
      scaling and update), each of a quantity bounded by the run's magnitudes (recorded
      here by running the same step, `step.iterate`, on this machine).
    * A state difference (T in theta, 2-norm; E in the memories, max over devices)
      propagates through the step linearised at the same decisions: the coded gradient
      moves by a T, a = max_m ||sum_k |B_mk| H_k||_2 (H_k = X_k^T X_k / n_k, /4 for
      logreg), v = g + e by a T + E; messages by c (a T + E) (c: the compressor's
      Lipschitz constant: 1 for projections and sign scalings, sqrt(d) for qsgd/onebit,
      d/k for rand-k unbiased); memories as c (a T + E) (projections: a T + E; EF21 /
      DIANA shifts: E + c (a T + E)); theta by lr W c (a T + E), W = ||w||_1 of the step's
      decoder weights (plus ||w_bar||_1 when the rule sums every shift).
    * The optimal decoder's weights come from the same LAPACK SVD in both programs; the
      products that form them add `min_norm_tolerance` (factor 2) to w.
    * So (T, E)_(t+1) <= A_t (T, E)_t + 2 delta_t, from (0, 0).
    Fields: loss and test loss move by ||grad F|| T + L_F T^2 / 2 plus twice their own
    rounding gamma_(n+d+8) sum |terms|; ||grad F||^2 by 2 ||grad F|| L_F T + (L_F T)^2
    plus rounding; ||g_hat - grad F||^2, the mean memory norm and the mean contraction
    ||C(v) - v||^2 / ||v||^2 (<= 2 (1 + sqrt r) ||dv|| / ||v|| per device) likewise;
    counts, bits, time and accuracies are exact (the same decisions).
    """
    import jax.numpy as jnp

    from coco_jax import config as config_lib
    from coco_jax import decoders
    from coco_jax.cyclic_mds import decode_error_bound
    from coco_jax.engine import prepare
    from coco_jax.step import init_run

    assert cfg.task in ("linreg", "logreg") and cfg.optimizer == "sgd", "linear tasks, plain SGD"
    assert cfg.batch_size is None and cfg.device_momentum == 0, "full batch, no device momentum"
    assert getattr(cfg, "lr_schedule", "constant") == "constant", "constant step size"
    lr = float(cfg.lr)
    prep = prepare(cfg, data=data, straggler_trace=straggler_trace)
    comps, rdata = prep.comps, prep.data
    hp = config_lib.hparams_of(cfg if straggler_trace is None else cfg.replace(straggler="trace"))
    carry = init_run(comps, hp, rdata)
    recorded = _recording_program(prep.static, cfg.steps)(carry, hp, rdata)
    thetas, straggles, inputs, messages, mem, g_hats = recorded
    f64 = lambda a: np.asarray(a, np.float64)
    thetas, inputs, messages, g_hats = map(f64, (thetas, inputs, messages, g_hats))
    straggles = np.asarray(straggles)
    mem = f64(mem) if np.size(mem) else np.zeros((cfg.steps, cfg.num_devices))
    b = f64(carry.b)
    xp, yp = f64(rdata.xp), f64(rdata.yp)
    _, n_k, d = xp.shape
    m_dev = b.shape[0]
    x_all, y_all = xp.reshape(-1, d), yp.reshape(-1)
    n = len(y_all)
    logistic = cfg.task == "logreg"
    hess = np.einsum("knd,kne->kde", xp, xp) / n_k / (4.0 if logistic else 1.0)  # [K, d, d]
    a_lip = max(np.linalg.norm(np.einsum("k,kde->de", np.abs(b[m]), hess), 2) for m in range(m_dev))
    h_full = x_all.T @ x_all / n / (4.0 if logistic else 1.0)
    l_f = float(np.linalg.norm(h_full, 2))
    name = cfg.compressor
    k = int(cfg.compress_k or max(1, round(cfg.compress_ratio * d)))
    c_lip = {"randk_unbiased": d / k, "qsgd": np.sqrt(d), "onebit": np.sqrt(d), "topk_qsgd": np.sqrt(k)}.get(
        name, 1.0
    )
    fb = cfg.error_feedback
    shifts = fb in ("ef21", "diana")
    nnz = int((b != 0).sum(axis=1).max())
    big_n = d + n_k + 8 + nnz + m_dev + 10
    g_n = gamma(big_n)
    u = unit_roundoff()
    code = comps.codes[0]
    r = code.replication or 1.0
    rates = np.asarray(carry.consts.rates)
    full = f64(carry.consts.full_weights)
    sqd = np.sqrt(d)

    exact = reference == "exact"
    sides = 1 if exact else 2
    T = E = 0.0
    hist = {"T": [0.0], "E": [0.0], "dv": [0.0], "dg": [0.0], "r": [0.0], "vmin": [np.inf], "own": [0.0]}
    for t in range(cfg.steps):
        w = f64(
            decoders.decode_weights(
                cfg.decoder, jnp.asarray(carry.b), jnp.asarray(straggles[t]), jnp.asarray(rates), r
            )
        )
        W = np.abs(w).sum() + (np.abs(full).sum() if shifts else 0.0)
        a_k = _abs_partition_grads(cfg.task, xp, yp, np.abs(thetas[t]))
        coded_mag = (np.abs(b) @ a_k).max()  # entries of any coded gradient
        mag = (coded_mag + mem[t].max() + np.abs(inputs[t]).max()) * max(c_lip, 1.0)
        delta_e = sides * g_n * mag * sqd  # each program within gamma_N of exact
        delta_g = sides * g_n * W * mag * sqd
        if cfg.decoder == "optimal":
            alive = ~straggles[t]
            msg_norm = np.linalg.norm(messages[t][alive], axis=1).max() if alive.any() else 0.0
            if exact:  # the decoder's residual: the calibrated estimate, times max_k |grad f_k|
                w_star, _ = min_norm_tolerance(b[alive].T, np.full(b.shape[1], 1.0 / b.shape[1]))
                kappa = float(np.abs(w_star) @ np.abs(b[alive]).sum(axis=1)) if alive.any() else 0.0
                delta_g += decode_error_bound(kappa, m_dev, "float32") * np.linalg.norm(a_k, axis=1).max()
            else:  # two evaluations of the weights
                _, dw = min_norm_tolerance(b[alive].T, np.full(b.shape[1], 1.0 / b.shape[1]), factor=2.0)
                delta_g += dw * np.sqrt(m_dev) * msg_norm
        theta_next = thetas[t + 1] if t + 1 < cfg.steps else thetas[t] - lr * g_hats[t]
        delta_t = lr * delta_g + 2 * sides * u * (np.linalg.norm(theta_next) + lr * np.linalg.norm(g_hats[t]))
        dv = a_lip * T + E
        if fb == "none":
            E_new = 0.0
        elif shifts:
            E_new = E + c_lip * dv if name in _PROJECTIONS else (1 + c_lip) * E + c_lip * a_lip * T
        else:
            E_new = dv if name in _PROJECTIONS else (1 + c_lip) * dv
        dg = W * (c_lip * dv + (E_new if shifts else 0.0)) + delta_g
        T = T + lr * (dg - delta_g) + delta_t
        E = E_new + delta_e
        alive = ~straggles[t]
        vn = np.linalg.norm(inputs[t], axis=1)
        ratio = np.linalg.norm(messages[t] - inputs[t], axis=1) ** 2 / np.where(vn > 0, vn, 1) ** 2
        for key, value in (("T", T), ("E", E), ("dv", dv + delta_e), ("dg", dg)):
            hist[key].append(value)
        hist["r"].append(ratio[alive].max() if alive.any() else 0.0)
        # the run's own g_hat - grad F (identity, decodable): delta_g plus the float32 mean
        hist["own"].append(delta_g / sides + gamma(b.shape[1]) * np.linalg.norm(a_k.mean(0)))
        hist["vmin"].append(vn[alive].min() if alive.any() else np.inf)
    hist = {key: np.asarray(value) for key, value in hist.items()}

    # evaluated steps (0, eval_every, ..., steps); a step-t row holds the metrics of
    # iteration t (what produced theta_t) and the evaluation of theta_t
    evals = np.asarray(sorted(set(range(0, cfg.steps + 1, cfg.eval_every)) | {cfg.steps}))
    h = {key: value[evals] for key, value in hist.items()}
    all_thetas = np.concatenate([thetas, (thetas[-1] - lr * g_hats[-1])[None]])[evals]

    def loss_terms(x, y, th):  # sum |terms| / n of the loss
        if logistic:
            return (np.abs(x) @ np.abs(th) + np.log(2) + 1.0).mean()
        return 0.5 * ((np.abs(x) @ np.abs(th) + np.abs(y)) ** 2).mean()

    def grad(x, y, th):
        z = x @ th
        return x.T @ ((1 / (1 + np.exp(-z)) if logistic else z) - y) / len(y)

    rnd = gamma(n + d + 8)
    out = {field: np.zeros(len(evals)) for field in _FIELDS_EXACT}
    out["params"] = float(h["T"][-1])
    out["theta_steps"], out["memory_steps"] = hist["T"], hist["E"]  # after 0, 1, ..., steps iterations
    T_e = h["T"]
    gn = np.array([np.linalg.norm(grad(x_all, y_all, th)) for th in all_thetas])
    lt = np.array([loss_terms(x_all, y_all, th) for th in all_thetas])
    out["loss"] = gn * T_e + l_f * T_e**2 / 2 + 2 * rnd * lt
    if rdata.x_test.shape[0]:
        xt, yt = f64(rdata.x_test), f64(rdata.y_test)
        gnt = np.array([np.linalg.norm(grad(xt, yt, th)) for th in all_thetas])
        ltt = np.array([loss_terms(xt, yt, th) for th in all_thetas])
        l_t = np.linalg.norm(xt.T @ xt / len(yt) / (4.0 if logistic else 1.0), 2)
        out["test_loss"] = gnt * T_e + l_t * T_e**2 / 2 + 2 * rnd * ltt
    abs_grad = np.array(
        [np.linalg.norm(_abs_partition_grads(cfg.task, xp, yp, np.abs(th)).mean(0)) for th in all_thetas]
    )
    dgrad = l_f * T_e + 2 * rnd * abs_grad
    out["grad_norm_sq"] = 2 * gn * dgrad + dgrad**2
    # iteration t: g_hat_t - grad F(theta_(t-1)): g_hat moves by dg, grad F by L_F T_(t-1)
    before = np.maximum(evals - 1, 0)
    err = np.linalg.norm(g_hats - np.array([grad(x_all, y_all, th) for th in thetas]), axis=1)[before]
    dx = h["dg"] + l_f * hist["T"][before] + 2 * rnd * abs_grad
    out["grad_error_sq"] = np.where(evals > 0, 2 * err * dx + dx**2, 0.0)
    out["own_grad_error_sq"] = h["own"] ** 2
    mem_norm = mem.max() * sqd
    out["ef_error_norm"] = h["E"] + (a_lip * T_e if shifts else 0.0) + 2 * gamma(d + m_dev + 2) * mem_norm
    # a device's ||C(v) - v||^2 / ||v||^2 = r moves by <= 2 ((1 + c) sqrt(r) + r) ||dv|| / ||v||,
    # and is rounded within gamma_(2d+M+4) r (two sums of d squares, a mean over <= M)
    r_max = h["r"]
    out["contraction"] = np.where(
        evals > 0,
        2 * ((1 + c_lip) * np.sqrt(r_max) + r_max) * h["dv"] / h["vmin"]
        + 2 * gamma(2 * d + m_dev + 4) * r_max,
        0.0,
    )
    return out


def assert_same_history(a: dict, b: dict, tol: dict, msg: str = "") -> None:
    """Every field of two histories within `run_tolerances` (exact fields equal)."""
    assert set(a) == set(b), (set(a) ^ set(b), msg)
    for key, value in a.items():
        x, y = np.asarray(value, np.float64), np.asarray(b[key], np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        bound = 0.0 if key in _FIELDS_EXACT else tol[key]
        assert_within(np.where(both_nan, 0, x), np.where(both_nan, 0, y), bound, f"{msg} {key}")


def assert_same_tables(a, b, msg: str = "") -> None:
    """Two result tables of the same configurations, row for row (per method, config
    and step): history columns within `run_tolerances` of each row's configuration
    (`results.config_from_row`), every other column equal."""
    from coco_jax import results as res_lib

    key = ["method", "config_id", "step"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    assert list(a.columns) == list(b.columns), msg
    assert len(a) == len(b), msg
    for cid, idx in a.groupby("config_id").groups.items():
        rows_a, rows_b = a.loc[idx], b.loc[idx]
        tol = run_tolerances(res_lib.config_from_row(rows_a.iloc[0]))
        for col in a.columns:
            x, y = rows_a[col].to_numpy(), rows_b[col].to_numpy()
            if col in tol and col != "params" and np.issubdtype(x.dtype, np.floating):
                x, y = x.astype(np.float64), y.astype(np.float64)
                both_nan = np.isnan(x) & np.isnan(y)
                bound = 0.0 if col in _FIELDS_EXACT else tol[col]
                assert_within(np.where(both_nan, 0, x), np.where(both_nan, 0, y), bound, f"{msg} {cid} {col}")
            else:
                assert list(x) == list(y) or (
                    np.issubdtype(x.dtype, np.floating) and np.array_equal(x, y, equal_nan=True)
                ), (msg, cid, col)


# ------------------------------------------------------------------ registries


def _registries():
    from coco_jax import registry

    return registry.ALL


@contextlib.contextmanager
def restored_registries():
    """Inside: register freely. On leaving: every registry holds exactly the names it
    held on entering, and plugin files and experiment modules imported inside are
    forgotten (a later import runs, and registers, again)."""
    from coco_jax import experiment, registry

    saved = [(reg, dict(reg._entries)) for reg in _registries()]
    plugins = dict(registry._PLUGINS)
    loaded = dict(experiment._LOADED)
    try:
        yield
    finally:
        for reg, entries in saved:
            reg._entries.clear()
            reg._entries.update(entries)
        registry._PLUGINS.clear()
        registry._PLUGINS.update(plugins)
        experiment._LOADED.clear()
        experiment._LOADED.update(loaded)


@pytest.fixture(autouse=True)
def _registrations_do_not_leak():
    """The registries are process-global: whatever a test registers (directly, through
    a --plugins file or an experiment module that registers at import) is removed when
    it ends. Names a module-scoped fixture registers (inside its own
    `restored_registries`) stay for that module: it is set up before this snapshot."""
    with restored_registries():
        yield


@pytest.fixture(name="restored_registries", scope="session")
def _restored_registries_fixture():
    """The `restored_registries` context manager, for module-scoped fixtures."""
    return restored_registries
