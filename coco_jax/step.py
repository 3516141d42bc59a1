"""The COCO-EF iteration, one jit-compiled step, and the scanned run built from it.

One iteration t, in order (all M devices are one batch axis):

    device_messages   each device's coded gradient g_m = Σ_k B[m,k] ∇f_k(θ) (every
                      partition's gradient computed once, then gathered by the code),
                      then its feedback rule and compressor: message c_m, new memory
    server_update     the straggler mask decides what arrived; the feedback rule's
                      server side forms ĝ (plainly Σ_m w_m [m delivered] c_m with the
                      decoder's weights w), then the optax update of θ
    step_metrics      diagnostics of that update (only on evaluated steps)

`reference.loop_step` is the same iteration as a plain NumPy loop over devices; the
tests check the two agree. A run is `init_run` (θ0, the code B, the per-run constants
and the step-0 evaluation), then `advance` (a `lax.scan` over steps; evaluation and
metrics run under one `lax.cond` on evaluated steps, so each compiled program holds one
copy of the step), then `history`. Every random draw derives from hp.seed, so
`jax.vmap(run, (0, None))` runs a batch of configurations (a sweep group) as one
program; `advance` takes its first step as an argument so a sweep can scan a long run
in fixed-size chunks (steps past the end are no-ops) with one compiled program.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from coco_jax import coding, compressors, decoders, feedback, schedules, stragglers, tasks
from coco_jax.config import HParams, Static, float_dtype
from coco_jax.feedback import Server

# Keys derived from a run's seed; fold_in constants, never positions in a grid.
_KEY_CODE, _KEY_INIT, _KEY_STRAGGLER, _KEY_STEPS = 0, 1, 2, 3


class RunData(NamedTuple):
    """Arrays a run reads; shared (not vmapped) across the configurations of a sweep."""

    xp: jax.Array  # [K, n_k, ...] partitioned training rows
    yp: jax.Array  # [K, n_k]
    x_test: jax.Array  # [n_test, ...] (n_test may be 0)
    y_test: jax.Array  # [n_test]
    trace: jax.Array | None  # [steps, M] bool, True = straggles; None unless straggler="trace"


class Variant(NamedTuple):
    """One option of a group's batch-uniform compressor/feedback choice: the compressor
    and the feedback rule around it. `k` is the static k it was built with, or None when
    the group traces k (`Compressor.compress_k`): then `rule_for_k(k)` rebuilds the
    rule around the compressor bound to a traced k, inside the program."""

    compressor: compressors.Compressor
    feedback: feedback.Feedback
    k: int | None
    rule_for_k: Any = None


class Components(NamedTuple):
    """The static parts of a run, built once per static group (`components`). The code,
    decoder, straggler model, k and compressor/feedback variant are tuples of the
    group's options (one each unless the group merges that choice, `config.CHOICES`); a
    configuration's `HParams` index them. `compressor` and `feedback` are the first
    variant's."""

    static: Static
    task: tasks.Task
    compressor: compressors.Compressor
    feedback: feedback.Feedback
    codes: tuple[coding.Allocation, ...]
    decoders: tuple[decoders.Decoder, ...]
    straggler_models: tuple[stragglers.StragglerModel, ...]
    variants: tuple[Variant, ...] = ()
    k_options: tuple[int, ...] = ()
    union: Any = None  # StateUnion of the variants' device states (None: one variant)


class RunState(NamedTuple):
    params: jax.Array  # [d]
    opt_state: Any
    fb_state: Any  # per-device feedback memory, leaves [M, d]
    straggler_state: Any
    delivered: jax.Array  # cumulative number of delivered messages (int32)
    time: jax.Array  # cumulative simulated seconds
    diverged_step: jax.Array  # first step with non-finite θ, -1 if none


class RunConstants(NamedTuple):
    """Per-run values fixed for the whole run (they depend on B and hp, not on t)."""

    load: jax.Array  # [M] partitions each device holds
    rates: jax.Array  # [M] nominal straggling probabilities (the fixed decoder's p_m)
    full_weights: jax.Array  # [M] decoding weights with no stragglers (w̄)


class Carry(NamedTuple):
    """What one run carries from step to step."""

    state: RunState
    b: jax.Array  # [M, K] encoding matrix of this run
    step_key: jax.Array  # typed key; step t uses fold_in(step_key, t)
    consts: RunConstants
    records: dict  # history buffers [P] over the evaluated steps (eval_schedule)


class DeviceOutput(NamedTuple):
    """What the devices produce at one step (leading axis M)."""

    coded: jax.Array  # [M, d] coded gradients g_m
    messages: jax.Array  # [M, d] what each device sends if it delivers
    compressor_inputs: jax.Array  # [M, d] the vectors handed to the compressor
    fb_state: Any  # new device memories (stragglers' per the rule's hold)
    true_grad: jax.Array | None  # ∇F(θ) in full-batch mode (the mean of the partition gradients)


METRIC_KEYS = ("stragglers", "grad_error_sq", "ef_error_norm", "contraction")


# ------------------------------------------------------------------ components


def static_loads(alloc: coding.Allocation) -> np.ndarray:
    """Partitions per device [M] known before tracing (a random code: its expectation)."""
    if alloc.matrix is not None:
        return (alloc.matrix != 0).sum(axis=1).astype(np.float64)
    return np.full(alloc.num_devices, (alloc.replication or 1.0) * alloc.num_partitions / alloc.num_devices)


@functools.lru_cache(maxsize=128)
def components(static: Static) -> Components:
    """Build the static parts of a run from its static description (cached)."""
    cfg = static.cfg
    dtype = float_dtype(cfg)
    fields = cfg.to_dict()
    task = tasks.task_of(static.fields, static.feature_shape, static.num_classes, dtype)
    k_options = tuple(static.options("k"))
    variants = tuple(
        _variant(static, {**fields, **dict(option)}, k, k_options, task, dtype)
        for option, k in static.options("variant")
    )
    k_parts = cfg.num_partitions_resolved
    codes = tuple(
        coding.make_allocation(
            name, cfg.num_devices, k_parts, s, {**fields, "allocation": name, "redundancy": s}
        )
        for name, s in static.options("code")
    )
    models = tuple(
        stragglers.make_straggler_model(
            name,
            cfg.num_devices,
            wait_mode=wait,
            loads=static_loads(codes[0]),
            fields={**fields, "straggler": name},
        )
        for name, wait in static.options("straggler")
    )
    decoder_options = tuple(
        decoders.make_decoder(name, cfg.num_devices, k_parts, dtype, {**fields, "decoder": name})
        for name in static.options("decoder")
    )
    union = StateUnion.of([v.feedback for v in variants], task.dim, dtype) if len(variants) > 1 else None
    first = variants[0]
    return Components(
        static,
        task,
        first.compressor,
        first.feedback,
        codes,
        decoder_options,
        models,
        variants,
        k_options,
        union,
    )


def _variant(static: Static, fields: dict, k: int | None, k_options, task, dtype) -> Variant:
    """One compressor/feedback option built from its fields (k None: traced k)."""
    comp = compressors.make_compressor(
        fields["compressor"],
        task.dim,
        k=k_options[0] if k is None else k,
        segments=task.segments,
        dtype=dtype,
        fields=fields,
    )
    rule = feedback.make_feedback(fields["error_feedback"], comp, dim=task.dim, fields=fields)
    if static.device_momentum:
        rule = feedback.with_device_momentum(rule)
    if k is not None:
        return Variant(comp, rule, k)

    def rule_for_k(kk):
        bound = comp._replace(compress=lambda key, v: comp.compress_k(key, v, kk))
        inner = feedback.rebuild(fields["error_feedback"], bound, dim=task.dim, fields=fields)
        return feedback.with_device_momentum(inner) if static.device_momentum else inner

    return Variant(comp, rule, None, rule_for_k)


class StateUnion(NamedTuple):
    """One pytree that holds any of several feedback rules' device states: a slot per
    leaf shape and dtype, as many as the rule that needs the most (EF's error and
    EF21's shift share one [d] slot). Slots a rule does not use keep their values."""

    slots: tuple[tuple[tuple[int, ...], Any], ...]  # (shape, dtype) of each slot
    leaves: tuple[tuple[int, ...], ...]  # per rule: the slot of each of its state's leaves
    treedefs: tuple[Any, ...]  # per rule: its state's tree structure

    @classmethod
    def of(cls, rules, dim: int, dtype) -> StateUnion:
        slots: list = []
        leaves, treedefs = [], []
        for rule in rules:
            state = jax.eval_shape(lambda rule=rule: rule.init(dim, dtype))
            flat, treedef = jax.tree_util.tree_flatten(state)
            used: dict = {}
            mine = []
            for leaf in flat:
                kind = (tuple(leaf.shape), jnp.dtype(leaf.dtype))
                n = used.get(kind, 0)
                matches = [i for i, s in enumerate(slots) if s == kind]
                if n < len(matches):
                    mine.append(matches[n])
                else:
                    slots.append(kind)
                    mine.append(len(slots) - 1)
                used[kind] = n + 1
            leaves.append(tuple(mine))
            treedefs.append(treedef)
        return cls(tuple(slots), tuple(leaves), tuple(treedefs))

    def empty(self, lead: tuple[int, ...] = ()) -> tuple:
        return tuple(jnp.zeros(lead + shape, dtype) for shape, dtype in self.slots)

    def unpack(self, i: int, slots: tuple) -> Any:
        return jax.tree_util.tree_unflatten(self.treedefs[i], [slots[j] for j in self.leaves[i]])

    def pack(self, i: int, state: Any, slots: tuple) -> tuple:
        out = list(slots)
        for j, leaf in zip(self.leaves[i], jax.tree_util.tree_leaves(state)):
            out[j] = leaf.astype(slots[j].dtype)
        return tuple(out)


def _pick(options: tuple, index, make, uniform: bool = False):
    """`make(option)` of the option `index` selects. One option: just that one. Several,
    traced (a batched index): every option is evaluated and the selected result kept,
    which is what a batched `lax.switch` does under vmap anyway (the options are cheap).
    Several, batch-uniform (`uniform`: the index is the same for the whole batch and
    unbatched): `lax.switch` runs only the selected option."""
    if len(options) == 1:
        return make(options[0])
    if uniform:
        return jax.lax.switch(index, [functools.partial(make, o) for o in options])
    outs = [make(o) for o in options]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[index], *outs)


def _k(comps: Components, hp: HParams):
    """The configuration's k: a Python int unless the group traces k."""
    if len(comps.k_options) == 1:
        return comps.k_options[0]
    return jnp.asarray(comps.k_options, jnp.int32)[hp.k_choice]


def _rule(comps: Components, variant: Variant, hp: HParams) -> feedback.Feedback:
    """A variant's feedback rule (around the compressor bound to the traced k, if any)."""
    return variant.feedback if variant.k is not None else variant.rule_for_k(_k(comps, hp))


def bits_table(comps: Components) -> np.ndarray:
    """Upload bits of one message [variants, k options] (int64)."""
    rows = []
    for v in comps.variants:
        if v.k is not None:
            rows.append([v.compressor.bits] * len(comps.k_options))
        else:
            rows.append([int(v.compressor.bits_of_k(k)) for k in comps.k_options])
    return np.asarray(rows, np.int64)


def message_bits(comps: Components, hp: HParams):
    """Upload bits of one delivered message of this configuration (traced when the
    group merges variants or k)."""
    table = bits_table(comps)
    if table.size == 1:
        return int(table[0, 0])
    v = hp.variant_choice if table.shape[0] > 1 else 0
    k = hp.k_choice if table.shape[1] > 1 else 0
    return jnp.asarray(table.astype(np.float64))[v, k]


def _with_variant(comps: Components, hp: HParams, fb_states: tuple, fn):
    """`fn(rule, *states)` of the configuration's variant, with `fb_states` (device
    states in the group's union layout, leaves [M, ...]) unpacked for its rule; every
    state `fn` returns is packed back (a batch-uniform `lax.switch` over variants). One
    variant: `fn(rule, *states)` directly."""
    if comps.union is None:
        return fn(_rule(comps, comps.variants[0], hp), *fb_states)
    union = comps.union

    def branch(i):
        def run():
            states = [union.unpack(i, s) for s in fb_states]
            out, new_states = fn(_rule(comps, comps.variants[i], hp), *states)
            return out, tuple(union.pack(i, n, fb_states[0]) for n in new_states)

        return run

    return jax.lax.switch(hp.variant_choice, [branch(i) for i in range(len(comps.variants))])


def make_optimizer(name: str, hp: HParams, lr: jax.Array | None = None) -> optax.GradientTransformation:
    """The server optimiser with step size `lr` (default hp.lr); hp values may be
    tracers (no recompilation per value). The state's structure does not depend on
    the step size, so the optimiser is rebuilt each step with that step's eta_t."""
    lr = hp.lr if lr is None else lr
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=hp.momentum)
    return optax.adam(lr)


# ------------------------------------------------------------------- the step


def _held_partitions(comps: Components, b: jax.Array, hp: HParams) -> tuple[jax.Array, jax.Array]:
    """Indices [M, L] and coefficients [M, L] of the partitions each device holds: a
    deterministic code's support is known before tracing (L = the largest row load of
    the group's codes; a shorter row is padded with coefficient 0); a random code may
    hold anything (L = K)."""
    if comps.codes[0].matrix is None:
        idx = jnp.broadcast_to(jnp.arange(b.shape[1]), b.shape)
        return idx, b
    supports = [code.matrix != 0 for code in comps.codes]
    width = max(int(nz.sum(axis=1).max()) for nz in supports)
    table = np.stack([np.argsort(~nz, axis=1, kind="stable")[:, :width] for nz in supports])  # [C, M, L]
    idx = jnp.asarray(table[0]) if len(supports) == 1 else jnp.asarray(table)[hp.code_choice]
    return idx, jnp.take_along_axis(b, idx, axis=1)


def all_rows(data: RunData) -> tuple[jax.Array, jax.Array]:
    """The whole training set (x [n, ...], y [n]) from its partitions."""
    return data.xp.reshape((-1, *data.xp.shape[2:])), data.yp.reshape(-1)


def encode(comps: Components, b: jax.Array, grads: jax.Array, hp: HParams) -> jax.Array:
    """B @ grads [M, d]. A deterministic code gathers and sums the <= s+1 partitions
    each device holds: O((s+1) M d) instead of the dense O(M K d); same sum, only the
    order of float additions differs. Random codes keep the dense product."""
    if comps.codes[0].matrix is None:
        return b @ grads
    idx, coef = _held_partitions(comps, b, hp)  # [M, L] indices known before tracing, coefficients
    out = coef[:, 0, None] * grads[idx[:, 0]]
    for j in range(1, idx.shape[1]):
        out = out + coef[:, j, None] * grads[idx[:, j]]
    return out


def coded_gradients(comps: Components, theta, key, b, data: RunData, hp: HParams):
    """Coded gradients [M, d] and, in full-batch mode, ∇F(θ) (else None)."""
    cfg = comps.static.cfg
    grad_fn = jax.grad(comps.task.loss)
    if cfg.batch_size is None:
        grads = jax.vmap(grad_fn, (None, 0, 0))(theta, data.xp, data.yp)  # [K, d]
        return encode(comps, b, grads, hp), jnp.mean(grads, axis=0)
    n_k = data.xp.shape[1]

    def batch(key, k):
        rows = jax.random.choice(key, n_k, (cfg.batch_size,), replace=False)
        return data.xp[k, rows], data.yp[k, rows]

    if cfg.shared_minibatch:  # one minibatch per partition, shared by all of its holders

        def partition_grad(k):
            return grad_fn(theta, *batch(jax.random.fold_in(key, k), k))

        grads = jax.vmap(partition_grad)(jnp.arange(data.xp.shape[0]))  # [K, d]
        return encode(comps, b, grads, hp), None
    # faithful: each device samples its own minibatch of every partition it holds
    idx, coef = _held_partitions(comps, b, hp)  # [M, L]
    width = idx.shape[1]

    def device_partition_grad(m, j):
        return grad_fn(theta, *batch(jax.random.fold_in(key, m * width + j), idx[m, j]))

    mm, jj = jnp.meshgrid(jnp.arange(cfg.num_devices), jnp.arange(width), indexing="ij")
    grads = jax.vmap(jax.vmap(device_partition_grad))(mm, jj)  # [M, L, d]
    return jnp.einsum("ml,mld->md", coef, grads), None


def device_messages(comps: Components, key, state: RunState, b, straggles, hp: HParams, data: RunData):
    """Every device's coded gradient, then its feedback rule and compressor (vmapped
    over devices): what it sends if it delivers, and the memory it keeps (a
    straggler's follows the rule's `hold`)."""
    k_batch, k_comp = jax.random.fold_in(key, 2), jax.random.fold_in(key, 1)
    coded, true_grad = coded_gradients(comps, state.params, k_batch, b, data, hp)  # [M, d]
    keys = jax.random.split(k_comp, comps.static.cfg.num_devices)

    def devices(rule, fb_state):
        messages, comp_in, sent = jax.vmap(rule.send, (0, 0, 0, None))(keys, coded, fb_state, hp)
        held = jax.vmap(rule.hold, (0, 0, None))(coded, fb_state, hp)
        new = jax.tree_util.tree_map(
            lambda h, s: jnp.where(straggles.reshape((-1,) + (1,) * (s.ndim - 1)), h, s), held, sent
        )
        return (messages, comp_in), (new,)

    (messages, comp_in), (fb_state,) = _with_variant(comps, hp, (state.fb_state,), devices)
    return DeviceOutput(coded, messages, comp_in, fb_state, true_grad)


def decoder_weights(comps: Components, b, straggles, rates, hp: HParams) -> jax.Array:
    """The decoder's weights w [M] for this step's straggler set (0 for stragglers)."""
    r = _pick(comps.codes, hp.code_choice, lambda code: jnp.asarray(code.replication or 1.0, b.dtype))
    return _pick(
        comps.decoders,
        hp.decoder_choice,
        lambda decoder: decoder.weights(b, straggles, rates, r),
        uniform="decoder" in comps.static.uniform,
    )


def server_update(comps: Components, state: RunState, b, straggles, out: DeviceOutput, consts, hp, t):
    """The server's estimate ĝ from what was delivered (the feedback rule's aggregate
    over the straggler mask and the decoder's weights), then the optax update with
    the scheduled step size eta_t (iteration t, 1-based). Returns (params, opt_state, ĝ)."""
    weights = decoder_weights(comps, b, straggles, consts.rates, hp)

    def aggregate(rule, before, after):
        server = Server(
            weights=weights,
            full_weights=consts.full_weights,
            delivered=jnp.logical_not(straggles),
            messages=out.messages,
            before=before,
            after=after,
        )
        return rule.aggregate(server), ()

    g_hat, _ = _with_variant(comps, hp, (state.fb_state, out.fb_state), aggregate)  # [d]
    opt = make_optimizer(comps.static.cfg.optimizer, hp, schedules.learning_rate(hp, t - 1))
    updates, opt_state = opt.update(g_hat, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, g_hat


def step_metrics(
    comps: Components, theta_before, straggles, out: DeviceOutput, g_hat, data: RunData, hp: HParams
) -> dict:
    """Diagnostics of one update: stragglers, ‖ĝ − ∇F(θ)‖², the mean feedback memory
    and the mean contraction ‖C(v) − v‖²/‖v‖² of the delivered messages."""
    true_grad = out.true_grad
    if true_grad is None:
        true_grad = jax.grad(comps.task.loss)(theta_before, *all_rows(data))
    err = g_hat - true_grad
    sent = jnp.logical_not(straggles)
    resid = jnp.sum((out.messages - out.compressor_inputs) ** 2, axis=1)
    size = jnp.sum(out.compressor_inputs**2, axis=1)
    ratio = jnp.where(size > 0, resid / jnp.where(size > 0, size, 1), 0)
    n_sent = jnp.sum(sent)
    memory, _ = _with_variant(
        comps, hp, (out.fb_state,), lambda rule, fb: (jax.vmap(rule.memory)(fb, out.coded), ())
    )
    return {
        "stragglers": jnp.sum(straggles).astype(jnp.int32),
        "grad_error_sq": jnp.sum(err * err),
        "ef_error_norm": jnp.mean(memory).astype(err.dtype),
        "contraction": jnp.where(
            n_sent > 0, jnp.sum(jnp.where(sent, ratio, 0)) / jnp.maximum(n_sent, 1), jnp.nan
        ).astype(err.dtype),
    }


def evaluate(comps: Components, theta, data: RunData) -> dict:
    """F(θ) and ‖∇F(θ)‖² on the whole training set, accuracy and the test split's."""
    task = comps.task
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


def _record(comps: Components, state: RunState, metrics: dict, t, data: RunData) -> dict:
    row = evaluate(comps, state.params, data)
    row.update(metrics)
    row["step"] = jnp.asarray(t, jnp.int32)
    row["delivered"] = state.delivered
    row["time"] = state.time
    row["diverged"] = state.diverged_step >= 0
    return row


def _eval_index(hp: HParams, t):
    """Index of step t in the run's `eval_schedule` (valid where t is evaluated): the
    last point ceil(T/e) for t = T, else t / e."""
    last = (hp.steps + hp.eval_every - 1) // hp.eval_every
    return jnp.where(t == hp.steps, last, t // hp.eval_every)


def upload_time(comps: Components, hp: HParams) -> jax.Array:
    """Seconds one delivered message takes to upload: bits / upload_bandwidth (0 with
    unlimited bandwidth)."""
    dtype = hp.upload_bandwidth.dtype
    return (jnp.asarray(message_bits(comps, hp), dtype) / hp.upload_bandwidth).astype(dtype)


class Update(NamedTuple):
    """What one iteration produced besides the new state (for metrics and tests)."""

    straggles: jax.Array  # [M] bool, True = did not deliver
    devices: DeviceOutput
    g_hat: jax.Array  # [d] the server's gradient estimate


def iterate(comps: Components, carry: Carry, t, hp: HParams, data: RunData) -> tuple[RunState, Update]:
    """Iteration t (1-based) of COCO-EF: who straggles, what the devices send, the
    server's estimate and update. Returns the new state and what the iteration produced."""
    state = carry.state
    k_t = jax.random.fold_in(carry.step_key, t)
    trace_row = None if data.trace is None else data.trace[t - 1]
    k_strag = jax.random.fold_in(k_t, 0)
    upload = upload_time(comps, hp)
    straggles, dt, s_state = _pick(
        comps.straggler_models,
        hp.straggler_choice,
        lambda model: stragglers.sample_with_upload(
            model, k_strag, state.straggler_state, hp, carry.consts.load, trace_row, upload
        ),
    )
    out = device_messages(comps, k_t, state, carry.b, straggles, hp, data)
    params, opt_state, g_hat = server_update(comps, state, carry.b, straggles, out, carry.consts, hp, t)
    finite = jnp.all(jnp.isfinite(params))
    new = RunState(
        params=params,
        opt_state=opt_state,
        fb_state=out.fb_state,
        straggler_state=s_state,
        delivered=state.delivered + jnp.sum(jnp.logical_not(straggles)).astype(jnp.int32),
        time=state.time + dt.astype(state.time.dtype),
        diverged_step=jnp.where(
            (state.diverged_step < 0) & ~finite, jnp.asarray(t, jnp.int32), state.diverged_step
        ),
    )
    return new, Update(straggles, out, g_hat)


def step(comps: Components, carry: Carry, t, hp: HParams, data: RunData) -> Carry:
    """`iterate`, then on evaluated steps (t % eval_every == 0 or the last) the
    metrics and evaluation written into the history buffers (under one `lax.cond`)."""
    new, update = iterate(comps, carry, t, hp, data)

    def write(records):
        metrics = step_metrics(
            comps, carry.state.params, update.straggles, update.devices, update.g_hat, data, hp
        )
        row = _record(comps, new, metrics, t, data)
        i = _eval_index(hp, t)
        return {k: records[k].at[i].set(row[k].astype(records[k].dtype)) for k in records}

    # a run's horizon is one value per batch (`config.CHOICES`, "horizon"): this stays a
    # real lax.cond under vmap, so evaluation runs only on evaluated steps
    is_eval = (t % hp.eval_every == 0) | (t == hp.steps)
    records = jax.lax.cond(is_eval, write, lambda r: r, carry.records)
    return carry._replace(state=new, records=records)


# -------------------------------------------------------------------- the run


def init_run(comps: Components, hp: HParams, data: RunData) -> Carry:
    """The run's starting carry: θ0, B, the per-run constants, the feedback and
    straggler states, and the history buffers with the step-0 evaluation."""
    cfg = comps.static.cfg
    dtype = float_dtype(cfg)
    key = jax.random.key(hp.seed)
    k_code, k_strag = jax.random.fold_in(key, _KEY_CODE), jax.random.fold_in(key, _KEY_STRAGGLER)
    b = _pick(comps.codes, hp.code_choice, lambda code: code.sample(k_code, dtype))  # [M, K]
    theta0 = comps.task.init(jax.random.fold_in(key, _KEY_INIT)).astype(dtype)
    m_dev = cfg.num_devices

    def fb_init(rule, *_):
        one = rule.init(comps.task.dim, dtype)
        return None, (jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (m_dev, *a.shape)), one),)

    empty = comps.union.empty((m_dev,)) if comps.union is not None else ()
    _, (fb_state,) = _with_variant(comps, hp, (empty,), fb_init)
    state = RunState(
        params=theta0,
        opt_state=make_optimizer(cfg.optimizer, hp).init(theta0),
        fb_state=fb_state,
        straggler_state=_pick(
            comps.straggler_models, hp.straggler_choice, lambda model: model.init(k_strag, hp)
        ),
        delivered=jnp.zeros((), jnp.int32),
        time=jnp.zeros((), dtype),
        diverged_step=jnp.full((), -1, jnp.int32),
    )
    load = jnp.sum(b != 0, axis=1).astype(dtype)  # [M]
    upload = upload_time(comps, hp)
    rates = _pick(
        comps.straggler_models,
        hp.straggler_choice,
        lambda model: stragglers.rate_with_upload(model, hp, load, upload),
    )  # [M]
    nobody = jnp.zeros((m_dev,), bool)
    consts = RunConstants(load, rates, decoder_weights(comps, b, nobody, jnp.zeros_like(rates), hp))
    zero_metrics = {
        "stragglers": jnp.zeros((), jnp.int32),
        "grad_error_sq": jnp.full((), jnp.nan, dtype),
        "ef_error_norm": jnp.zeros((), dtype),
        "contraction": jnp.full((), jnp.nan, dtype),
    }
    row0 = _record(comps, state, zero_metrics, 0, data)
    points = comps.static.points
    records = {k: jnp.zeros((points,), v.dtype).at[0].set(v) for k, v in row0.items()}
    return Carry(state, b, jax.random.fold_in(key, _KEY_STEPS), consts, records)


def advance(comps: Components, carry: Carry, hp: HParams, data: RunData, t0, length) -> Carry:
    """Steps t0+1 .. t0+length; steps past the run's end are no-ops, so a run can
    advance in chunks with one compiled program. A Python int `length` is a `lax.scan`
    of that many steps; a traced one a loop whose trip count is chosen at run time
    (one program for any chunk length). The step itself is the same either way."""
    start = jnp.asarray(t0, jnp.int32) + 1

    def body(i, c):
        t = start + i
        return jax.lax.cond(t <= hp.steps, lambda c: step(comps, c, t, hp, data), lambda c: c, c)

    return jax.lax.fori_loop(0, length, body, carry)


def history(carry: Carry) -> tuple[jax.Array, dict]:
    """(θ_final, history) of a finished run: the history buffers over the evaluated
    steps (step, loss, grad_norm_sq, [accuracy], [test_loss, test_accuracy],
    stragglers, grad_error_sq, ef_error_norm, contraction, delivered, time, diverged)
    and diverged_step."""
    hist = dict(carry.records)
    hist["diverged_step"] = carry.state.diverged_step
    return carry.state.params, hist


def make_run(static: Static):
    """`run(hp, data) -> (θ_final [d], history)`: one whole simulated training run."""
    comps = components(static)
    steps = static.steps

    def run(hp: HParams, data: RunData):
        carry = init_run(comps, hp, data)
        return history(advance(comps, carry, hp, data, 0, steps))

    return run


class RunPrograms(NamedTuple):
    """The jitted programs of a single run: `init(hp, data) -> carry` and
    `advance(carry, hp, data, t0, length) -> carry` (any number of steps)."""

    init: Any
    advance: Any


@functools.lru_cache(maxsize=64)
def compiled_run(static: Static) -> RunPrograms:
    """The jitted single-run programs of a static group (cached: dynamic values, data of
    equal shapes and chunk lengths never recompile). `engine.run` advances in chunks,
    so a long run can be interrupted between them."""
    comps = components(static)
    return RunPrograms(
        init=jax.jit(lambda hp, data: init_run(comps, hp, data)),
        advance=jax.jit(lambda carry, hp, data, t0, n: advance(comps, carry, hp, data, t0, n)),
    )
