"""The compiled programs of a sweep group, and running a batch of configurations.

A group compiles two programs, ahead of time (`jit(...).lower(...).compile()`, timed),
for a fixed number of configurations per device, the group's width W
(`plan.group_width`: from its shapes and the platform, see `plan.config_width`):

- init: `step.init_run` vmapped over W configurations (θ0, B, per-run constants, the
  step-0 evaluation) — small, no step inside;
- chunk: `step.advance` vmapped over W configurations, for a number of steps given at
  run time (a loop whose trip count is an argument) — the one copy of the step.

A batch of any size runs as consecutive calls on W configurations per device (the last
call padded by repeating the batch's last configuration): the same two programs serve
every batch of the group, and a configuration is computed by the same arithmetic
whatever batch, memory budget or device count it runs with. The batch's batch-uniform
choices (`config.CHOICES`: the compressor/feedback variant, the horizon, ...) are
passed unbatched, so `lax.switch` runs only the chosen option.

The configurations of a call (`HParams` with a leading configuration axis) and their
carry are sharded over the local devices on the mesh axis "config" (`jax.shard_map`);
the data is replicated. `plan_estimates` lowers a plan's groups (no compilation) for
the --dry-run estimates of `coco_jax.costs`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from coco_jax import costs, interrupt
from coco_jax.config import CHOICE_HPARAMS, DYNAMIC_FIELDS, HPARAM_NAMES, HParams, float_dtype, hparams_column
from coco_jax.plan import Entry, Group, SweepPlan, step_flops
from coco_jax.results import batch_table
from coco_jax.step import advance, init_run

MESH_AXIS = "config"
CALL_SECONDS = 0.25  # target wall time of one chunk call (progress updates, Ctrl-C checks)

__all__ = [
    "MESH_AXIS",
    "Program",
    "compile_program",
    "hparams_columns",
    "plan_estimates",
    "run_batch",
]


@dataclasses.dataclass
class Program:
    """The compiled init and chunk programs of one group at one width."""

    init: Any  # jax.stages.Compiled: (hp [W·n_dev], data) -> carry [W·n_dev]
    chunk: Any  # jax.stages.Compiled: (carry, hp, data, t0, n) -> (carry, t0 + n)
    width: int  # configurations per device and call
    call_size: int  # configurations per call (width x local devices)
    sharding: Any  # NamedSharding of the configuration axis
    replicated: Any  # NamedSharding of shared values
    compile_s: float  # seconds to lower and compile both programs
    timings: dict = dataclasses.field(default_factory=dict)  # lower/compile seconds of each program
    cost: Any = None  # costs.ProgramCost: fingerprint, size and work (run times are recorded against it)
    steps_per_call: int = 0  # adapted while running (see `run_batch`)


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.6

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def hp_layout(static, value_batched, value_uniform) -> HParams:
    """An HParams-shaped tree: `value_batched` for the fields vmapped over the
    configurations, `value_uniform` for the batch-uniform ones."""
    uniform = set(static.uniform_hparams())
    return HParams(**{n: value_uniform if n in uniform else value_batched for n in HPARAM_NAMES})


@dataclasses.dataclass
class Lowered:
    """A group's init and chunk programs lowered for one width (not compiled)."""

    init: Any  # jax.stages.Lowered
    chunk: Any  # jax.stages.Lowered
    width: int
    call_size: int
    sharding: Any
    replicated: Any
    timings: dict


def group_cost(group: Group, devices: tuple | None = None) -> costs.ProgramCost:
    """The cost record of a group's program at its width (nothing is traced)."""
    n_dev = len(devices or local_devices())
    prep = group.prepared
    return costs.program_cost(prep.static, group.width, group.width * n_dev, prep.data, step_flops(prep))


def lower_program(comps, data, hp_template, width: int, devices: tuple) -> Lowered:
    """Lower (trace, no XLA compilation) a group's init and chunk programs for calls on
    `width` configurations per device on `devices` (`hp_template`: one configuration's
    HParams)."""
    static = comps.static
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding, replicated = NamedSharding(mesh, P(MESH_AXIS)), NamedSharding(mesh, P())
    size = width * len(devices)
    uniform = set(static.uniform_hparams())
    hp_spec = HParams(
        **{
            n: jax.ShapeDtypeStruct(
                np.shape(getattr(hp_template, n))
                if n in uniform
                else (size, *np.shape(getattr(hp_template, n))),
                np.asarray(getattr(hp_template, n)).dtype,
                sharding=replicated if n in uniform else sharding,
            )
            for n in HPARAM_NAMES
        }
    )
    hp_axes = hp_layout(static, 0, None)
    hp_specs = hp_layout(static, P(MESH_AXIS), P())
    data_spec = _abstract(data, replicated)

    def init_batch(hp, data):
        return jax.vmap(lambda h: init_run(comps, h, data), in_axes=(hp_axes,))(hp)

    def chunk_batch(carry, hp, data, t0, n):
        carry = jax.vmap(lambda c, h: advance(comps, c, h, data, t0, n), in_axes=(0, hp_axes))(carry, hp)
        return carry, t0 + n

    timings: dict = {}
    init = jax.jit(_shard_map(init_batch, mesh, (hp_specs, P()), P(MESH_AXIS)))
    t0 = time.perf_counter()
    init_lowered = init.lower(hp_spec, data_spec)
    timings["init_lower_s"] = time.perf_counter() - t0
    carry_spec = _abstract(jax.eval_shape(init, hp_spec, data_spec), sharding)
    donate = (0,) if devices[0].platform != "cpu" else ()
    chunk = jax.jit(
        _shard_map(chunk_batch, mesh, (P(MESH_AXIS), hp_specs, P(), P(), P()), (P(MESH_AXIS), P())),
        donate_argnums=donate,
    )
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    t0 = time.perf_counter()
    chunk_lowered = chunk.lower(carry_spec, hp_spec, data_spec, scalar, scalar)
    timings["chunk_lower_s"] = time.perf_counter() - t0
    return Lowered(init_lowered, chunk_lowered, width, size, sharding, replicated, timings)


def compile_program(
    comps, data, hp_template, width: int, devices: tuple, cost: costs.ProgramCost | None = None
) -> Program:
    """Lower and compile a group's init and chunk programs (see `lower_program`); the
    lowering and compile seconds of each are in `Program.timings`, and the compile is
    recorded against `cost` (`group_cost`) for `coco_jax.costs` estimates."""
    t_start = time.perf_counter()
    low = lower_program(comps, data, hp_template, width, devices)
    timings = dict(low.timings)
    t0 = time.perf_counter()
    init_c = low.init.compile()
    timings["init_compile_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunk_c = low.chunk.compile()
    timings["chunk_compile_s"] = time.perf_counter() - t0
    compile_s = time.perf_counter() - t_start
    if cost is not None:
        costs.record(cost, compile_s=compile_s)
    return Program(
        init_c, chunk_c, low.width, low.call_size, low.sharding, low.replicated, compile_s, timings, cost
    )


def plan_estimates(plan: SweepPlan, chunk_steps: int | None = None) -> dict[int, dict]:
    """Estimated compile and run seconds of each group of `plan` with pending work
    (`coco_jax.costs`; nothing is traced), by group index; what `SweepPlan.describe`
    prints. (`chunk_steps` does not change a program and is accepted for callers.)"""
    del chunk_steps
    out = {}
    by_group: dict[int, int] = {}
    for b in plan.batches:
        by_group[b.group] = by_group.get(b.group, 0) + b.size * b.entries[0].sig.options["horizon"][0]
    for gi, config_steps in by_group.items():
        out[gi] = costs.estimate(group_cost(plan.groups[gi]), config_steps)
    return out


# ------------------------------------------------------------------ HParams


def hparams_columns(group: Group, entries: list[Entry], size: int, unbatch: bool = False) -> HParams:
    """The HParams of `entries` stacked column-wise ([size] per field, padded by
    repeating the last configuration); the group's batch-uniform fields are one scalar
    (they are equal across a batch). `unbatch`: every field one configuration's scalar
    (a template for lowering)."""
    cfgs = [e.cfg for e in entries]
    cfgs += [cfgs[-1]] * (size - len(cfgs))
    dt = np.float64 if float_dtype(cfgs[0]) == jnp.float64 else np.float32
    uniform = set(group.static.uniform_hparams())
    cols: dict[str, np.ndarray] = {name: hparams_column(name, cfgs, dt) for name in DYNAMIC_FIELDS}
    sigs = [e.sig for e in entries]
    sigs += [sigs[-1]] * (size - len(sigs))
    for name in (*CHOICE_HPARAMS, "steps", "eval_every"):
        cols[name] = np.asarray([s.hparams.get(name, 0) for s in sigs], np.int32)
    for name in cols:
        if unbatch or name in uniform:
            cols[name] = cols[name][0]
    return HParams(**cols)


# ------------------------------------------------------------------ running


class _Placed:
    """The data of the current group on the devices (one group's data at a time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._value = None

    def get(self, data, sharding):
        with self._lock:
            if self._key is None or self._key[0] is not data or self._key[1] != sharding:
                self._value = jax.device_put(data, sharding)
                self._key = (data, sharding)
            return self._value


_placed = _Placed()


def run_batch(
    group: Group,
    entries: list[Entry],
    prog: Program,
    on_chunk: Callable[[int], None] | None = None,
    chunk_steps: int | None = None,
) -> pd.DataFrame:
    """Run one batch of a group's configurations (they share the group's batch-uniform
    choices) as calls of `prog` on `prog.call_size` configurations; the table rows of
    its configurations (padding repeats the last configuration and is dropped).
    `chunk_steps` fixes the steps per call; by default the first call runs 1/16 of the
    run and later calls adapt to about `CALL_SECONDS` each."""
    n, unit = len(entries), prog.call_size
    size = math.ceil(n / unit) * unit
    hp_all = hparams_columns(group, entries, size)
    uniform = set(group.static.uniform_hparams())
    data = _placed.get(group.prepared.data, prog.replicated)
    steps = entries[0].sig.options["horizon"][0]
    points = entries[0].sig.points
    per_call = _steps_per_call(prog, steps, chunk_steps)
    t_run = time.perf_counter()
    records, diverged = [], []
    pending = None
    for start in range(0, size, unit):
        hp = HParams(
            **{
                name: getattr(hp_all, name)
                if name in uniform
                else getattr(hp_all, name)[start : start + unit]
                for name in HPARAM_NAMES
            }
        )
        hp = jax.device_put(hp, hp_layout(group.static, prog.sharding, prog.replicated))
        carry = prog.init(hp, data)
        t = 0
        while t < steps:
            k = min(per_call, steps - t)
            timed = chunk_steps is None and prog.steps_per_call == 0
            t_call = time.perf_counter()
            carry, done = prog.chunk(carry, hp, data, np.int32(t), np.int32(k))
            if timed:  # adapt the steps per call once, from the first call of this program
                jax.block_until_ready(done)
                elapsed = time.perf_counter() - t_call
                per_call = prog.steps_per_call = int(
                    min(steps, max(1, k * CALL_SECONDS / max(elapsed, 1e-6)))
                )
            real = min(unit, n - start)
            if pending is not None:
                _report(*pending, on_chunk)  # the previous call, while this one runs
                interrupt.check()
            pending = (done, real * k)
            t += k
        records.append(carry.records)
        diverged.append(carry.state.diverged_step)
    if pending is not None:
        _report(*pending, on_chunk)
    records = jax.device_get(records)
    diverged = np.concatenate([np.asarray(x) for x in jax.device_get(diverged)])[:n]
    history = {key: np.concatenate([r[key] for r in records])[:n, :points] for key in records[0]}
    if prog.cost is not None:
        costs.record(prog.cost, run_s=time.perf_counter() - t_run, config_steps=size * steps)
    bits = np.asarray([e.sig.bits for e in entries], np.int64)
    return batch_table([e.method for e in entries], [e.cfg for e in entries], history, bits, diverged)


def _steps_per_call(prog: Program, steps: int, chunk_steps: int | None) -> int:
    if chunk_steps is not None:
        return max(1, min(int(chunk_steps), steps))
    if prog.steps_per_call:
        return max(1, min(prog.steps_per_call, steps))
    return max(1, math.ceil(steps / 16))


def _report(done, config_steps: int, on_chunk) -> None:
    jax.device_get(done)  # waits for that call
    if on_chunk is not None:
        on_chunk(config_steps)


@functools.lru_cache(maxsize=1)
def local_devices() -> tuple:
    return tuple(jax.local_devices())
