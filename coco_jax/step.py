"""The one jit-compiled COCO-EF iteration and the scanned run built from it.

One iteration, in order (all M devices are one batch axis):
    partition gradients (vmap over K partitions, each computed once)
    -> encode with B                                   # [M, K] @ [K, d]
    -> feedback + compression (vmap over devices)      # error add, C, error update
    -> straggler mask -> decoding weights w            # [M]
    -> ĝ = Σ_m w_m estimate_m -> optax update of θ.

`make_run(static)` returns `run(hp, data) -> (θ_final [d], history)`, a pure function
whose every random draw derives from hp.seed, so `jax.vmap(run, (0, None))` runs a
whole batch of configurations (a sweep group) as one program.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from coco_jax import coding, compressors, feedback, stragglers, tasks
from coco_jax.config import ExperimentConfig, HParams, Static, eval_steps, float_dtype

# Keys derived from a run's seed; fold_in constants, never positions in a grid.
_KEY_CODE, _KEY_INIT, _KEY_STRAGGLER, _KEY_STEPS = 0, 1, 2, 3


class RunData(NamedTuple):
    """Arrays a run reads; shared (not vmapped) across the configurations of a sweep."""

    xp: jax.Array  # [K, n_k, ...] partitioned training rows
    yp: jax.Array  # [K, n_k]
    x_test: jax.Array  # [n_test, ...] (n_test may be 0)
    y_test: jax.Array  # [n_test]
    trace: jax.Array | None  # [steps, M] bool, True = straggles; None unless straggler="trace"


class RunState(NamedTuple):
    params: jax.Array  # [d]
    opt_state: Any
    fb_state: dict  # per-device feedback memory, leaves [M, d]
    straggler_state: Any
    delivered: jax.Array  # cumulative number of delivered messages (int32)
    time: jax.Array  # cumulative simulated seconds
    diverged_step: jax.Array  # first step with non-finite θ, -1 if none


METRIC_KEYS = ("stragglers", "grad_error_sq", "ef_error_norm", "contraction")


def make_optimizer(name: str, hp: HParams) -> optax.GradientTransformation:
    """The server optimiser; hp values may be tracers (no recompilation per value)."""
    if name == "sgd":
        return optax.sgd(hp.lr)
    if name == "momentum":
        return optax.sgd(hp.lr, momentum=hp.momentum)
    return optax.adam(hp.lr)


class Components(NamedTuple):
    task: tasks.Task
    compressor: compressors.Compressor
    feedback: feedback.Feedback
    allocation: coding.Allocation
    straggler_model: stragglers.StragglerModel
    fixed_b: np.ndarray | None  # B of a deterministic code, known before tracing


def components(static: Static) -> Components:
    """Build the static parts of a run from its static description."""
    cfg = static.cfg
    dtype = float_dtype(cfg)
    task = tasks.make_task(cfg, (1, *static.feature_shape), static.num_classes, dtype)
    comp = compressors.make_compressor(
        cfg.compressor,
        task.dim,
        k=static.compress_k,
        qsgd_levels=cfg.qsgd_levels,
        group_size=cfg.group_size,
        segments=task.segments,
    )
    fb = feedback.make_feedback(cfg.error_feedback, comp, cfg.straggler_error, cfg.device_momentum > 0)
    alloc = coding.make_allocation(
        cfg.allocation, cfg.num_devices, cfg.num_partitions_resolved, cfg.redundancy
    )
    fixed_b = None if alloc.random else np.asarray(alloc.sample(jax.random.key(0)))
    if fixed_b is not None:
        loads = (fixed_b != 0).sum(axis=1).astype(np.float64)
    else:
        loads = np.full(cfg.num_devices, alloc.replication * alloc.num_partitions / cfg.num_devices)
    model = stragglers.make_straggler_model(
        cfg.straggler, cfg.num_devices, wait_mode=cfg.wait_for is not None, loads=loads
    )
    return Components(task, comp, fb, alloc, model, fixed_b)


def _held_partitions(comps: Components, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Indices [M, L] and coefficients [M, L] of the partitions each device holds."""
    if comps.fixed_b is not None:
        nz = comps.fixed_b != 0
        width = int(nz.sum(axis=1).max())
        idx = np.argsort(~nz, axis=1, kind="stable")[:, :width]
        return jnp.asarray(idx), jnp.take_along_axis(b, jnp.asarray(idx), axis=1)
    k = b.shape[1]
    idx = jnp.broadcast_to(jnp.arange(k), b.shape)
    return idx, b


class Carry(NamedTuple):
    """What one run carries from step to step."""

    state: RunState
    b: jax.Array  # [M, K] encoding matrix of this run
    step_key: jax.Array  # typed key; step t uses fold_in(step_key, t)


class Runner(NamedTuple):
    """The pure functions of one static group (see `make_runner`)."""

    init: Any  # (hp, data) -> (carry, record at step 0)
    advance: Any  # (carry, hp, data, ends [n], length) -> (carry, records [n])
    finish: Any  # (carry, [records...]) -> (θ_final, history)
    run: Any  # (hp, data) -> (θ_final, history): init + advance + finish


def make_run(static: Static):
    """`run(hp, data) -> (θ_final [d], history)`: one whole simulated training run."""
    return make_runner(static).run


def make_runner(static: Static) -> Runner:
    """The run of a static group split into init / advance / finish, so that a sweep can
    scan a long run in chunks of steps (progress without per-step host round trips).

    history is a dict of arrays over evaluation points (steps 0, e, 2e, ..., steps):
    step, loss, grad_norm_sq, [accuracy], [test_loss, test_accuracy], stragglers,
    grad_error_sq, ef_error_norm, contraction, delivered, time, diverged.
    """
    cfg: ExperimentConfig = static.cfg
    comps = components(static)
    task, fb, alloc, model = comps.task, comps.feedback, comps.allocation, comps.straggler_model
    m_dev = cfg.num_devices
    dtype = float_dtype(cfg)
    points = eval_steps(cfg.steps, cfg.eval_every)
    grad_fn = jax.grad(task.loss)

    def all_rows(data: RunData):
        """The whole training set (x [n, ...], y [n]) from its partitions."""
        return data.xp.reshape((-1, *data.xp.shape[2:])), data.yp.reshape(-1)

    def evaluate(theta, data: RunData) -> dict:
        x, y = all_rows(data)
        loss, grad = jax.value_and_grad(task.loss)(theta, x, y)
        out = {"loss": loss, "grad_norm_sq": jnp.sum(grad * grad)}
        if task.accuracy is not None:
            out["accuracy"] = task.accuracy(theta, x, y)
        if data.x_test.shape[0] > 0:
            out["test_loss"] = task.loss(theta, data.x_test, data.y_test)
            if task.accuracy is not None:
                out["test_accuracy"] = task.accuracy(theta, data.x_test, data.y_test)
        return out

    def encode(b, grads):
        """B @ grads [M, d]. For a deterministic code (B known before tracing) a
        gather-and-sum over the <= s+1 partitions each device holds: O((s+1) M d)
        instead of the dense O(M K d); same sum, only the order of float additions
        differs. Random codes keep the dense product."""
        if comps.fixed_b is None:
            return b @ grads
        idx, coef = _held_partitions(comps, b)  # [M, L] static indices, traced coefficients
        out = coef[:, 0, None] * grads[idx[:, 0]]
        for j in range(1, idx.shape[1]):
            out = out + coef[:, j, None] * grads[idx[:, j]]
        return out

    def coded_gradients(theta, key, b, data: RunData):
        """Coded gradients [M, d] and, in full-batch mode, ∇F(θ) (else None)."""
        if cfg.batch_size is None:
            grads = jax.vmap(grad_fn, (None, 0, 0))(theta, data.xp, data.yp)  # [K, d]
            return encode(b, grads), jnp.mean(grads, axis=0)
        n_k = data.xp.shape[1]

        def batch(key, k):
            rows = jax.random.choice(key, n_k, (cfg.batch_size,), replace=False)
            return data.xp[k, rows], data.yp[k, rows]

        if cfg.shared_minibatch:
            # one minibatch per partition, shared by all of its holders
            def partition_grad(k):
                x, y = batch(jax.random.fold_in(key, k), k)
                return grad_fn(theta, x, y)

            grads = jax.vmap(partition_grad)(jnp.arange(data.xp.shape[0]))  # [K, d]
            return encode(b, grads), None
        # faithful: each device samples its own minibatch of every partition it holds
        idx, coef = _held_partitions(comps, b)  # [M, L]
        width = idx.shape[1]

        def device_partition_grad(m, j):
            x, y = batch(jax.random.fold_in(key, m * width + j), idx[m, j])
            return grad_fn(theta, x, y)

        mm, jj = jnp.meshgrid(jnp.arange(m_dev), jnp.arange(width), indexing="ij")
        grads = jax.vmap(jax.vmap(device_partition_grad))(mm, jj)  # [M, L, d]
        return jnp.einsum("ml,mld->md", coef, grads), None

    def init(hp: HParams, data: RunData) -> tuple[Carry, dict]:
        """The run's starting carry and its step-0 record."""
        key = jax.random.key(hp.seed)
        b = alloc.sample(jax.random.fold_in(key, _KEY_CODE)).astype(dtype)  # [M, K]
        opt = make_optimizer(cfg.optimizer, hp)
        theta0 = task.init(jax.random.fold_in(key, _KEY_INIT)).astype(dtype)
        one_fb = fb.init(task.dim, dtype)
        state = RunState(
            params=theta0,
            opt_state=opt.init(theta0),
            fb_state=jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (m_dev, *a.shape)), one_fb),
            straggler_state=model.init(jax.random.fold_in(key, _KEY_STRAGGLER), hp),
            delivered=jnp.zeros((), jnp.int32),
            time=jnp.zeros((), dtype),
            diverged_step=jnp.full((), -1, jnp.int32),
        )
        zero_metrics = {
            "stragglers": jnp.zeros((), jnp.int32),
            "grad_error_sq": jnp.full((), jnp.nan, dtype),
            "ef_error_norm": jnp.zeros((), dtype),
            "contraction": jnp.full((), jnp.nan, dtype),
        }
        carry = Carry(state, b, jax.random.fold_in(key, _KEY_STEPS))
        return carry, _record(state, zero_metrics, 0, data)

    def _record(state: RunState, metrics: dict, t, data: RunData) -> dict:
        out = evaluate(state.params, data)
        out.update(metrics)
        out["step"] = jnp.asarray(t, jnp.int32)
        out["delivered"] = state.delivered
        out["time"] = state.time
        out["diverged"] = state.diverged_step >= 0
        return out

    def step(carry: Carry, t, hp: HParams, data: RunData, load, rates, with_metrics: bool):
        """Iteration t; `load` [M] (partitions held) and `rates` [M] (nominal straggling
        probabilities) are fixed for the whole run."""
        state, b = carry.state, carry.b
        opt = make_optimizer(cfg.optimizer, hp)
        k_t = jax.random.fold_in(carry.step_key, t)
        k_strag, k_comp, k_batch = (jax.random.fold_in(k_t, i) for i in range(3))
        trace_row = None if data.trace is None else data.trace[t - 1]
        straggles, dt, s_state = model.sample(k_strag, state.straggler_state, hp, load, trace_row)
        coded, true_grad = coded_gradients(state.params, k_batch, b, data)  # [M, d]
        estimate, comp_in, message, fb_state = jax.vmap(fb.apply, (0, 0, 0, 0, None))(
            jax.random.split(k_comp, m_dev), coded, state.fb_state, straggles, hp
        )
        if fb.name == "ef21":
            # the server aggregates its copy of every device's state, stale or not
            w = coding.decode_weights(
                cfg.decoder, b, jnp.zeros_like(straggles), jnp.zeros_like(rates), alloc.replication
            )
        else:
            w = coding.decode_weights(cfg.decoder, b, straggles, rates, alloc.replication)  # [M]
        g_hat = w @ estimate  # [d]
        updates, opt_state = opt.update(g_hat, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.all(jnp.isfinite(params))
        new = RunState(
            params=params,
            opt_state=opt_state,
            fb_state=fb_state,
            straggler_state=s_state,
            delivered=state.delivered + jnp.sum(~straggles).astype(jnp.int32),
            time=state.time + dt.astype(dtype),
            diverged_step=jnp.where(
                (state.diverged_step < 0) & ~finite, jnp.asarray(t, jnp.int32), state.diverged_step
            ),
        )
        carry = carry._replace(state=new)
        if not with_metrics:
            return carry, None
        if true_grad is None:
            true_grad = grad_fn(state.params, *all_rows(data))
        err = g_hat - true_grad
        sent = ~straggles
        resid = jnp.sum((message - comp_in) ** 2, axis=1)
        size = jnp.sum(comp_in**2, axis=1)
        ratio = jnp.where(size > 0, resid / jnp.where(size > 0, size, 1), 0)
        n_sent = jnp.sum(sent)
        mem = jax.vmap(functools.partial(feedback.memory_norm, fb.name))(fb_state, coded)
        metrics = {
            "stragglers": jnp.sum(straggles).astype(jnp.int32),
            "grad_error_sq": jnp.sum(err * err),
            "ef_error_norm": jnp.mean(mem),
            "contraction": jnp.where(
                n_sent > 0, jnp.sum(jnp.where(sent, ratio, 0)) / jnp.maximum(n_sent, 1), jnp.nan
            ),
        }
        return carry, metrics

    def advance(carry: Carry, hp: HParams, data: RunData, ends: jax.Array, length: int):
        """Run chunks of `length` steps ending at each of `ends` [n] (metrics on the
        last step of a chunk, then an evaluation). Returns (carry, records [n])."""

        load = jnp.sum(carry.b != 0, axis=1).astype(dtype)  # [M]
        rates = model.marginal_rate(hp, load)  # [M]

        def chunk(carry, t_end):
            ts = t_end - length + 1 + jnp.arange(length - 1)
            carry, _ = jax.lax.scan(lambda c, t: step(c, t, hp, data, load, rates, False), carry, ts)
            carry, metrics = step(carry, t_end, hp, data, load, rates, True)
            return carry, _record(carry.state, metrics, t_end, data)

        return jax.lax.scan(chunk, carry, ends)

    def finish(carry: Carry, records: list[dict]):
        """(θ_final, history) from the final carry and the records in step order."""
        history = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *records)
        history["diverged_step"] = carry.state.diverged_step
        return carry.state.params, history

    def run(hp: HParams, data: RunData):
        carry, rec0 = init(hp, data)
        records = [jax.tree_util.tree_map(lambda a: a[None], rec0)]
        e = cfg.eval_every
        n_full = cfg.steps // e
        if n_full:
            carry, recs = advance(carry, hp, data, e * (1 + jnp.arange(n_full)), e)
            records.append(recs)
        if cfg.steps % e:
            carry, recs = advance(carry, hp, data, jnp.asarray([cfg.steps]), cfg.steps % e)
            records.append(recs)
        params, history = finish(carry, records)
        assert history["step"].shape == (len(points),)
        return params, history

    return Runner(init, advance, finish, run)


@functools.lru_cache(maxsize=64)
def compiled_run(static: Static):
    """The jitted single-run program of a static group (cached: dynamic values and
    data of equal shapes never recompile)."""
    return jax.jit(make_run(static))
