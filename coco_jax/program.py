"""The compiled programs of a sweep group, and running a batch of configurations.

A static group compiles two programs, ahead of time (`jit(...).lower(...).compile()`,
timed):

- init: `step.init_run` vmapped over a batch of configurations (θ0, B, per-run
  constants, the step-0 evaluation) — small, no step inside;
- chunk: `step.advance` of `chunk_steps` steps vmapped over the batch — the one copy
  of the step. A run of T steps is ceil(T / chunk_steps) calls of the same program
  (steps past T are no-ops), so a progress bar moves without compiling anything else.

The batch's dynamic fields (`HParams`, leading configuration axis) and carry are
sharded over the local devices on the mesh axis "config" (`jax.shard_map`); the data
is replicated. `plan_estimates` lowers a plan's groups (no compilation) for the
--dry-run estimates of `coco_jax.costs`.
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
from coco_jax.config import hparams_in_group
from coco_jax.engine import history_to_numpy
from coco_jax.plan import Entry, Group, SweepPlan
from coco_jax.results import rows_of
from coco_jax.step import advance, init_run

MESH_AXIS = "config"
DEFAULT_CHUNKS = 16  # progress updates per batch when chunk_steps is not given

__all__ = ["MESH_AXIS", "Program", "chunk_steps_of", "compile_program", "plan_estimates", "run_batch"]


@dataclasses.dataclass
class Program:
    """The compiled init and chunk programs of one static group at one batch size."""

    init: Any  # jax.stages.Compiled: (hp [B], data) -> carry [B]
    chunk: Any  # jax.stages.Compiled: (carry [B], hp [B], data, t0) -> (carry [B], t0 + chunk_steps)
    chunk_steps: int
    calls: int  # chunk calls per run
    batch_size: int
    sharding: Any  # NamedSharding of the configuration axis
    replicated: Any  # NamedSharding of shared values
    compile_s: float  # seconds to lower and compile both programs
    timings: dict = dataclasses.field(default_factory=dict)  # lower/compile seconds of each program
    cost: Any = None  # costs.ProgramCost: fingerprint, size and FLOPs (run times are recorded against it)


def chunk_steps_of(steps: int, chunk_steps: int | None) -> int:
    """Steps per chunk call: `chunk_steps` (at most the run), else about 1/16 of the run."""
    if chunk_steps is None:
        return max(1, math.ceil(steps / DEFAULT_CHUNKS))
    return max(1, min(int(chunk_steps), steps))


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.6

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _abstract(tree, sharding):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@dataclasses.dataclass
class Lowered:
    """A group's init and chunk programs lowered for one batch size (not compiled)."""

    init: Any  # jax.stages.Lowered
    chunk: Any  # jax.stages.Lowered
    chunk_steps: int
    calls: int
    batch_size: int
    sharding: Any
    replicated: Any
    timings: dict

    @property
    def cost(self) -> costs.ProgramCost:
        return costs.program_cost(self.init, self.chunk)


def lower_program(comps, data, hp_template, batch_size: int, devices: tuple, chunk_steps: int) -> Lowered:
    """Lower (trace, no XLA compilation) a group's init and chunk programs for batches
    of `batch_size` configurations on `devices` (`hp_template`: one configuration's
    HParams)."""
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding, replicated = NamedSharding(mesh, P(MESH_AXIS)), NamedSharding(mesh, P())
    hp_spec = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((batch_size, *np.shape(x)), np.asarray(x).dtype, sharding=sharding),
        hp_template,
    )
    data_spec = _abstract(data, replicated)

    def init_batch(hp, data):
        return jax.vmap(lambda h: init_run(comps, h, data))(hp)

    def chunk_batch(carry, hp, data, t0):
        carry = jax.vmap(lambda c, h: advance(comps, c, h, data, t0, chunk_steps))(carry, hp)
        return carry, t0 + chunk_steps

    timings: dict = {}
    init = jax.jit(_shard_map(init_batch, mesh, (P(MESH_AXIS), P()), P(MESH_AXIS)))
    t0 = time.perf_counter()
    init_lowered = init.lower(hp_spec, data_spec)
    timings["init_lower_s"] = time.perf_counter() - t0
    carry_spec = _abstract(jax.eval_shape(init, hp_spec, data_spec), sharding)
    donate = (0,) if devices[0].platform != "cpu" else ()
    chunk = jax.jit(
        _shard_map(chunk_batch, mesh, (P(MESH_AXIS), P(MESH_AXIS), P(), P()), (P(MESH_AXIS), P())),
        donate_argnums=donate,
    )
    t0_spec = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    t0 = time.perf_counter()
    chunk_lowered = chunk.lower(carry_spec, hp_spec, data_spec, t0_spec)
    timings["chunk_lower_s"] = time.perf_counter() - t0
    calls = math.ceil(comps.static.cfg.steps / chunk_steps)
    return Lowered(init_lowered, chunk_lowered, chunk_steps, calls, batch_size, sharding, replicated, timings)


def compile_program(comps, data, hp_template, batch_size: int, devices: tuple, chunk_steps: int) -> Program:
    """Lower and compile a group's init and chunk programs (see `lower_program`); the
    lowering and compile seconds of each are in `Program.timings`, and the compile is
    recorded for `coco_jax.costs` estimates."""
    t_start = time.perf_counter()
    low = lower_program(comps, data, hp_template, batch_size, devices, chunk_steps)
    timings = dict(low.timings)
    t0 = time.perf_counter()
    init_c = low.init.compile()
    timings["init_compile_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunk_c = low.chunk.compile()
    timings["chunk_compile_s"] = time.perf_counter() - t0
    cost = low.cost
    compile_s = time.perf_counter() - t_start
    costs.record(cost, compile_s=compile_s, batch=batch_size)
    return Program(
        init_c,
        chunk_c,
        low.chunk_steps,
        low.calls,
        batch_size,
        low.sharding,
        low.replicated,
        compile_s,
        timings,
        cost,
    )


def plan_estimates(plan: SweepPlan, chunk_steps: int | None = None) -> dict[int, dict]:
    """Estimated compile and run seconds of each group of `plan` with pending work
    (`coco_jax.costs`: its programs are lowered, not compiled), by group index; what
    `SweepPlan.describe` prints."""
    devices = tuple(jax.local_devices())
    out = {}
    for gi, g in enumerate(plan.groups):
        bs = [b for b in plan.batches if b.group == gi]
        if not bs:
            continue
        prep = g.prepared
        steps = chunk_steps_of(g.static.cfg.steps, chunk_steps)
        hp = hparams_in_group(g.static, g.entries[0].cfg)
        low = lower_program(prep.comps, prep.data, hp, bs[0].size, devices, steps)
        config_steps = sum(b.size for b in bs) * g.static.cfg.steps
        out[gi] = costs.estimate(low.cost, config_steps, bs[0].size)
    return out


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
) -> pd.DataFrame:
    """Run one padded batch of a group's configurations; the table rows of its real
    configurations (padding repeats the last configuration and is dropped)."""
    n, size = len(entries), prog.batch_size
    hps = [hparams_in_group(group.static, e.cfg) for e in entries]
    hps += [hps[-1]] * (size - n)
    hp = jax.device_put(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *hps), prog.sharding)
    data = _placed.get(group.prepared.data, prog.replicated)
    steps = group.static.cfg.steps
    t_run = time.perf_counter()
    carry = prog.init(hp, data)
    pending = None
    for k in range(prog.calls):
        t0 = jax.device_put(np.int32(k * prog.chunk_steps), prog.replicated)
        carry, done = prog.chunk(carry, hp, data, t0)
        if pending is not None:
            _report(pending, on_chunk, n, steps, prog.chunk_steps)  # chunk k-1 while chunk k runs
            interrupt.check()
        pending = done
    _report(pending, on_chunk, n, steps, prog.chunk_steps)
    records = jax.device_get(carry.records)
    if prog.cost is not None:
        costs.record(prog.cost, run_s=time.perf_counter() - t_run, config_steps=size * steps, batch=size)
    diverged = np.asarray(jax.device_get(carry.state.diverged_step))
    bits = group.prepared.bits_per_message
    frames = []
    for b, entry in enumerate(entries):
        hist = {key: np.asarray(values[b]) for key, values in records.items()}
        hist["diverged_step"] = diverged[b]
        history, div = history_to_numpy(hist, bits)
        frames.append(rows_of(entry.method, entry.cfg, history, bits, div))
    return pd.concat(frames, ignore_index=True)


def _report(done, on_chunk, n: int, steps: int, chunk: int) -> None:
    end = int(jax.device_get(done))  # waits for that chunk
    if on_chunk is not None:
        on_chunk(n * (min(end, steps) - min(end - chunk, steps)))


@functools.lru_cache(maxsize=1)
def local_devices() -> tuple:
    return tuple(jax.local_devices())
