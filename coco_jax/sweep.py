"""Sweeps: whole grids of configurations as a handful of compiled programs.

`sweep(grid, out=DIR)` groups the grid's configurations by their static part
(`coco_jax.plan`: task, shapes, kinds of code/compressor/feedback, steps, ...) and runs
every group as one compiled program (`coco_jax.program`): the group's dynamic fields
(`config.HParams`: lr, straggler_prob, seed, ...) are stacked on a leading
configuration axis and vmapped, the data is shared, and the configuration axis is
sharded over all local devices. Programs of the next groups compile in a background
thread while the current group runs. Finished batches are written atomically to
`DIR/parts/`, so a killed sweep resumes where it stopped; the final tidy table is
`DIR/results.parquet` with the JSON sidecar `DIR/results.json` (`coco_jax.store`).

Several hosts: with `jax.distributed` initialised (`coco_jax.distributed`) the batches
are split over the processes, each runs its share on its local devices, and the tables
are gathered on process 0 (serialised Parquet bytes through
`multihost_utils.process_allgather`): no shared filesystem is needed; only process 0
writes the final table.

Example:
    >>> import coco_jax as cj
    >>> grid = cj.Grid(
    ...     base=cj.ExperimentConfig(task="linreg", num_devices=8, steps=50),
    ...     axes={"preset": ["coco-ef", "gc"], "lr": [0.05, 0.1], "seed": range(3)},
    ... )
    >>> df = cj.sweep(grid, out="results/demo")  # doctest: +SKIP
    >>> df.stats.compilations  # doctest: +SKIP
    2
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import threading
import time
from typing import ClassVar

import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from coco_jax import costs, interrupt, store
from coco_jax import results as res_lib
from coco_jax.config import DYNAMIC_FIELDS
from coco_jax.distributed import Comm
from coco_jax.errors import ConfigError
from coco_jax.grid import Grid
from coco_jax.plan import (
    Entry,
    Group,
    SweepPlan,
    device_memory_budget,
    entries_of,
    forget_widths,
    format_bytes,
    grid_hash,
    make_plan,
    prepare_groups,
    remember_widths,
)
from coco_jax.program import Program, compile_program, group_cost, hparams_columns, plan_estimates, run_batch

__all__ = ["Grid", "SweepResult", "SweepStats", "sweep"]


@dataclasses.dataclass
class SweepStats:
    """What one `sweep` call did (also recorded in the sidecar's `invocations`)."""

    num_configs: int = 0
    groups: int = 0
    compilations: int = 0  # static groups compiled in this process (init + chunk program each)
    compile_s: float = 0.0  # seconds spent lowering and compiling (in the background thread)
    run_s: float = 0.0  # seconds spent running the compiled programs
    wall_time_s: float = 0.0
    computed_configs: int = 0
    resumed: bool = False
    data_loads: int = 0
    local_devices: int = 0
    batches: list = dataclasses.field(default_factory=list)  # (padded size, configurations)


class SweepResult(pd.DataFrame):
    """The tidy results table of a sweep (a `pandas.DataFrame`), with `.stats`
    (`SweepStats`) saying what the call compiled, computed and how long it took."""

    _metadata: ClassVar[list[str]] = ["stats"]

    @property
    def _constructor(self):
        return pd.DataFrame  # derived tables are plain DataFrames


def _result(df: pd.DataFrame, stats: SweepStats) -> SweepResult:
    out = SweepResult(df)
    out.stats = stats
    return out


# ------------------------------------------------------------------ compiling


class _Compiler:
    """Compiles the programs a process needs in a background thread, in the order they
    will run, so compilation overlaps execution; `get` waits for one."""

    def __init__(self, groups: list[Group], plan: SweepPlan, mine: list[int], devices):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="coco-compile")
        self._futures: dict[int, concurrent.futures.Future] = {}
        self.compile_s = 0.0
        self.compiled = 0  # programs actually compiled (not found in this process's cache)
        self._lock = threading.Lock()
        for i in mine:
            gi = plan.batches[i].group
            if gi not in self._futures:
                self._futures[gi] = self._pool.submit(self._compile, groups[gi], devices)

    def _compile(self, group: Group, devices) -> Program:
        prog, fresh = cached_program(group, devices)
        with self._lock:
            self.compile_s += prog.compile_s
            self.compiled += int(fresh)
        return prog

    def get(self, group_index: int) -> Program:
        return interrupt.wait(self._futures[group_index])  # a signal while it compiles stops

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_PROGRAMS: dict[tuple, Program] = {}
_COMPILING: dict[tuple, concurrent.futures.Future] = {}  # programs a thread is compiling now
_PROGRAMS_LOCK = threading.Lock()


def _data_signature(data) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(data))


def cached_program(group: Group, devices) -> tuple[Program, bool]:
    """The compiled programs of a group and whether they were compiled now (they are
    kept for the process: a repeated sweep of the same group, or another sweep with a
    group of the same program, compiles nothing). A program another thread is compiling
    is waited for, not compiled twice."""
    prep = group.prepared
    key = (prep.static, group.width, devices, _data_signature(prep.data))
    with _PROGRAMS_LOCK:
        hit = _PROGRAMS.get(key)
        pending = None if hit is not None else _COMPILING.get(key)
        if hit is None and pending is None:
            mine = _COMPILING[key] = concurrent.futures.Future()
    if hit is not None:
        return dataclasses.replace(hit, compile_s=0.0), False
    if pending is not None:
        return dataclasses.replace(pending.result(), compile_s=0.0), False
    try:
        template = hparams_columns(group, group.entries[:1], 1, unbatch=True)
        cost = group_cost(group, devices)
        prog = compile_program(prep.comps, prep.data, template, group.width, devices, cost)
    except BaseException as err:
        with _PROGRAMS_LOCK:
            del _COMPILING[key]
        mine.set_exception(err)
        raise
    with _PROGRAMS_LOCK:
        _PROGRAMS[key] = prog
        del _COMPILING[key]
    mine.set_result(prog)
    return prog, True


def clear_programs() -> None:
    """Forget every compiled sweep program of this process (tests, benchmarks)."""
    with _PROGRAMS_LOCK:
        _PROGRAMS.clear()
    forget_widths()


# ------------------------------------------------------------------ the sweep


def _order(df: pd.DataFrame, entries: list[Entry]) -> pd.DataFrame:
    """Rows in grid order, then by step (vectorised: one index lookup per row)."""
    ordered = sorted(entries, key=lambda e: e.index)
    ids = pd.Index([e.config_id for e in ordered])
    if ids.is_unique:  # the usual grid: no configuration under two method labels
        rank = ids.get_indexer(df["config_id"].to_numpy())
    else:
        keys = pd.Index([f"{e.method}\x00{e.config_id}" for e in ordered])
        rank = keys.get_indexer((df["method"].astype(str) + "\x00" + df["config_id"].astype(str)).to_numpy())
    order = np.lexsort((df["step"].to_numpy(), rank))
    if (np.diff(order) == 1).all():
        return df.reset_index(drop=True)
    return df.take(order).reset_index(drop=True)


def _part_name(entries: list[Entry]) -> str:
    h = hashlib.sha256(json.dumps(sorted(list(e.key) for e in entries)).encode()).hexdigest()[:16]
    return f"batch-{h}-p{jax.process_index()}"


def _progress_bar(total: int, enabled: bool):
    if not enabled or total <= 0:
        return None
    return tqdm(total=total, unit="cfg-step", unit_scale=True, dynamic_ncols=True, smoothing=0.1)


def _sidecar(grid, ghash, groups, status, invocation, previous=(), rows=None, extra=None) -> dict:
    invocations = list(previous) + ([invocation] if invocation else [])
    return (extra or {}) | {
        "status": status,
        "grid_hash": ghash,
        "grid": grid.describe(),
        "num_configs": len(grid),
        "num_rows": rows,
        "groups": [
            {
                "label": g.label(),
                "num_configs": len(g.entries),
                "methods": sorted({e.method for e in g.entries}),
            }
            for g in groups
        ],
        "compilations": invocation["compilations"] if invocation else None,
        "compile_s": invocation["compile_s"] if invocation else None,
        "run_s": invocation["run_s"] if invocation else None,
        "wall_time_s": invocation["wall_time_s"] if invocation else None,
        "total_wall_time_s": round(sum(i["wall_time_s"] for i in invocations), 3) if invocations else None,
        "invocations": invocations,
        "seed_policy": res_lib.SEED_POLICY,
        "dynamic_fields": list(DYNAMIC_FIELDS),
        "versions": res_lib.package_versions(),
        "python": sys.version.split()[0],
        "devices": res_lib.device_description(),
        "git": res_lib.git_commit(),
        "command": store.invoked_as,
        "files": {"table": store.TABLE, "parts": store.PARTS + "/"},
    }


def out_status(grid: Grid, out: str | os.PathLike, overwrite: bool = False) -> str:
    """What `sweep(grid, out=out)` would find in `out` ('new', 'resume', 'complete'),
    read-only: raises the ConfigError the sweep would raise (a file in place of the
    directory, another grid's results, results without their sidecar) unless
    `overwrite`. `coco-jax run` checks every part of an experiment with it before it
    writes anything."""
    entries = entries_of(grid)
    fingerprints = store.component_fingerprints(e.cfg for e in entries)
    keys = {e.key for e in entries}
    return store.ResultsDir(out).state(grid_hash(entries, None, None, None), overwrite, keys, fingerprints)


def _complete_table(outp: pathlib.Path, comm: Comm) -> pd.DataFrame | None:
    """The final table of a complete directory (process 0; an empty table elsewhere),
    or None on every process when it is unreadable: then it is moved to quarantine/
    and the sweep recomputes it (from its parts where they remain)."""
    reason = None
    table = pd.DataFrame()
    if comm.index == 0:
        try:
            table = store.read_table(outp / store.TABLE)
        except Exception as err:  # noqa: BLE001 - any reason the table cannot be read
            reason = store.read_error(err)
            store.quarantine(outp, outp / store.TABLE, reason)
    if comm.allgather_json(reason)[0] is not None:
        return None
    return table


def check_memory_budget(memory_budget, groups: list[Group]) -> int:
    """The per-device budget in bytes; an explicit `memory_budget` smaller than one
    configuration of some group (its shared data plus one configuration) is refused."""
    budget = device_memory_budget(memory_budget)
    if memory_budget is None:
        return budget
    for g in groups:
        need = g.data_bytes + g.config_bytes
        if budget < need:
            raise ConfigError(
                f"memory_budget={memory_budget!r} is invalid: {format_bytes(budget)} per device is less than one "
                f"configuration needs ({format_bytes(need)}: {format_bytes(g.data_bytes)} shared data + "
                f"{format_bytes(g.config_bytes)} per configuration, group {g.label()}); give at least {need} bytes"
            )
    return budget


def _saved_configs(out: store.ResultsDir | None, entries: list[Entry]) -> int:
    """How many of `entries` have their rows saved in `out` (table or parts)."""
    if out is None:
        return 0
    if out.is_complete():
        return len(entries)
    done, _ = store.read_parts_checked(out.path)
    if done is None:
        return 0
    keys = set(zip(done["method"], done["config_id"]))
    return sum(e.key in keys for e in entries)


def _finished(outp, entries, comm) -> tuple[pd.DataFrame | None, dict]:
    """This process's finished part rows and, over all processes, who owns each
    finished configuration (the first process that holds it). Unreadable parts are
    moved to quarantine/ (their configurations are then run again)."""
    local_done = None
    if outp is not None:
        local_done, bad = store.read_parts_checked(outp)
        for path, reason in bad:
            store.quarantine(outp, path, reason)
    valid = {e.key for e in entries}
    local_keys = set()
    if local_done is not None:
        local_keys = {k for k in zip(local_done["method"], local_done["config_id"]) if k in valid}
    owner: dict[tuple, int] = {}
    for p, keys in enumerate(comm.allgather_json(sorted(list(k) for k in local_keys))):
        for k in keys:
            owner.setdefault(tuple(k), p)
    return local_done, owner


def sweep(
    grid: Grid,
    out: str | os.PathLike | None = None,
    *,
    memory_budget: int | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    chunk_steps: int | None = None,
    data=None,
    test_data=None,
    straggler_trace=None,
    width: int | None = None,
) -> SweepResult:
    """Run every configuration of `grid`; one compiled program per static group.

    Args:
        grid: the configurations.
        out: results directory (None: nothing written, no resume). Finished batches are
            written atomically to out/parts; the final table to out/results.parquet with
            the sidecar out/results.json. Started again with the same `out`, the sweep
            skips every finished configuration and ends with the same table.
        memory_budget: bytes per device (int or "2GB"); default a share of the
            device's free memory, or 2 GiB where the device reports none. Groups that
            do not fit are split into batches (results do not change).
        overwrite: replace results of a different grid found in `out`.
        progress: show a progress bar over configuration-steps (process 0).
        chunk_steps: steps per host round trip; default: about a quarter of a second
            of work per call (results do not change).
        width: configurations per device and program call (default: from each group's
            shapes and the platform, narrowed for a small group, or a width this process
            already planned for the same program when padding to it is cheaper than a
            compile: `plan.group_width`). A configuration's rows do not depend on its
            batch, the memory budget or the device count at a given width.
        data, test_data, straggler_trace: user arrays shared by every configuration
            (as in `cj.run`); the trace only for configurations with straggler="trace".

    Returns:
        The tidy table (a row per configuration and evaluated step; see
        `coco_jax.results`) as a `SweepResult` (a DataFrame with `.stats`). With
        several processes, process 0 returns the whole table and the others their own
        share.

    Raises:
        ConfigError: bad grid, data-dependent errors, `out` a file, `out` holding
            another grid or results without their sidecar, `out` in use by another
            run (an OS advisory lock on out/.lock), `chunk_steps` < 1, an explicit
            `memory_budget` below one configuration — all before anything is
            compiled or written.
        KeyboardInterrupt: on Ctrl-C, with a message saying how many configurations
            are saved in `out` (finished batches are kept; the same call resumes).
        OSError: `out` cannot be written (read-only, full disk); files already
            written stay whole (atomic writes).

    Unreadable files in `out` (a truncated or corrupt part or final table) are moved
    to out/quarantine/ with a message, and exactly their configurations are computed
    again.
    """
    if chunk_steps is not None and (
        isinstance(chunk_steps, bool) or not isinstance(chunk_steps, (int, np.integer)) or chunk_steps < 1
    ):
        raise ConfigError(
            f"chunk_steps={chunk_steps!r} is invalid: must be a positive integer (steps per host round trip)"
        )
    rd = store.ResultsDir(out) if out is not None else None
    with contextlib.ExitStack() as held:
        try:
            return _sweep(
                grid,
                rd,
                held,
                memory_budget,
                overwrite,
                progress,
                chunk_steps,
                data,
                test_data,
                straggler_trace,
                width,
            )
        except KeyboardInterrupt as err:
            raise interrupt.with_message(err, _interrupted(grid, rd)) from None


def _interrupted(grid: Grid, rd: store.ResultsDir | None) -> str:
    """What a Ctrl-C leaves behind, and how to resume."""
    if rd is None:
        return "interrupted: nothing was saved (the sweep has no out directory)"
    try:
        entries = entries_of(grid)
        saved = f"{_saved_configs(rd, entries)} of {len(entries)} configurations are saved in {rd.path}"
    except Exception:  # noqa: BLE001 - the message must not fail
        saved = f"finished batches are saved in {rd.path}"
    return f"interrupted: {saved}; the same sweep with the same out resumes from there"


def _sweep(
    grid, rd, held, memory_budget, overwrite, progress, chunk_steps, data, test_data, straggler_trace, width
) -> SweepResult:
    t_start = time.time()
    comm = Comm()
    entries = entries_of(grid)
    interrupt.check()
    groups, loads = prepare_groups(entries, data, test_data, straggler_trace)
    interrupt.check()
    ghash = grid_hash(entries, data, test_data, straggler_trace)
    budget = check_memory_budget(memory_budget, groups)
    stats = SweepStats(num_configs=len(entries), groups=len(groups), data_loads=loads)
    status = "new"
    outp = rd.path if rd is not None else None
    if rd is not None:
        rd.hold(comm, held)
        fingerprints = store.component_fingerprints(e.cfg for e in entries)
        status = rd.open(comm, ghash, overwrite, {e.key for e in entries}, fingerprints)
        extra = {"fingerprints": fingerprints, "invocation": store.recorded_invocation(outp)}
        if status == "complete":
            table = _complete_table(outp, comm)
            if table is not None:
                stats.resumed = True
                # the widths a run of this grid planned, so what follows plans as it would
                done = {e.key for e in entries}
                n_dev = len(jax.local_devices())
                remember_widths(
                    make_plan(entries, groups, loads, done, budget, n_dev, comm.count, ghash, width)
                )
                return _result(table, stats)
            status = "resume"
        rd.mark_running(
            comm, lambda previous: _sidecar(grid, ghash, groups, "running", None, previous, None, extra)
        )

    local_done, owner = _finished(outp, entries, comm)
    n_dev = len(jax.local_devices())
    plan = make_plan(entries, groups, loads, set(owner), budget, n_dev, comm.count, ghash, width)
    remember_widths(plan)
    warning = costs.too_long(plan_estimates(plan)) if comm.index == 0 else None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    mine = [i for i, p in enumerate(plan.assignment) if p == comm.index]
    frames = _run_batches(plan, groups, mine, outp, chunk_steps, progress and comm.index == 0, stats)
    if local_done is not None:
        owned = {k for k, p in owner.items() if p == comm.index}
        keep = [k in owned for k in zip(local_done["method"], local_done["config_id"])]
        frames.insert(0, local_done[keep])
    mine_df = pd.concat(frames, ignore_index=True) if frames else None
    stats.resumed, stats.local_devices = status == "resume", n_dev
    gathered, invocation = _gather(mine_df, comm, stats, t_start)
    if comm.index != 0:
        comm.barrier("coco_jax_sweep_done")
        table = res_lib.normalise(_order(mine_df, entries)) if mine_df is not None else pd.DataFrame()
        return _result(table, stats)
    table = _order(store.dedupe(pd.concat(gathered, ignore_index=True)), entries)
    pairs = table[["method", "config_id"]].drop_duplicates()
    got = set(zip(pairs["method"], pairs["config_id"]))
    missing = [e.key for e in entries if e.key not in got]
    if missing:  # pragma: no cover - would be a bug
        raise RuntimeError(
            f"sweep: {len(missing)} configurations missing from the gathered table: {missing[:3]}"
        )
    if rd is not None:
        rd.complete(
            table, _sidecar(grid, ghash, groups, "complete", invocation, rd.invocations(), len(table), extra)
        )
        comm.barrier("coco_jax_sweep_done")
        return _result(res_lib.load_results(outp), stats)
    comm.barrier("coco_jax_sweep_done")
    return _result(res_lib.normalise(table), stats)


def _gather(mine_df, comm: Comm, stats: SweepStats, t_start: float) -> tuple[list, dict]:
    """Every process's table (on process 0; each process sends what it owns) and the
    record of this invocation for the sidecar."""
    per_process = comm.allgather_json(
        {"compilations": stats.compilations, "computed": stats.computed_configs,
         "compile_s": stats.compile_s, "run_s": stats.run_s}
    )  # fmt: skip
    if comm.count == 1:
        gathered = [mine_df] if mine_df is not None else []
    else:
        payload = store.table_bytes(mine_df) if mine_df is not None and len(mine_df) else b""
        gathered = [store.table_from_bytes(b) for b in comm.allgather_bytes(payload) if b]
    stats.wall_time_s = time.time() - t_start
    invocation = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "wall_time_s": round(stats.wall_time_s, 3),
        "compile_s": round(sum(p["compile_s"] for p in per_process), 3),
        "run_s": round(sum(p["run_s"] for p in per_process), 3),
        "compilations": sum(p["compilations"] for p in per_process),
        "compilations_per_process": [p["compilations"] for p in per_process],
        "computed_configs": sum(p["computed"] for p in per_process),
        "resumed": stats.resumed,
    }
    return gathered, invocation


def _run_batches(plan: SweepPlan, groups, mine, outp, chunk_steps, show_progress: bool, stats: SweepStats):
    """Run this process's batches in plan order (programs compile ahead in a thread);
    each finished batch is written to `outp/parts` before the next starts."""
    devices = tuple(jax.local_devices())
    total = sum(
        len(plan.batches[i].entries) * plan.batches[i].entries[0].sig.options["horizon"][0] for i in mine
    )
    bar = _progress_bar(total, show_progress)
    compiler = _Compiler(groups, plan, mine, devices)
    frames: list[pd.DataFrame] = []
    try:
        for i in mine:
            interrupt.check()
            batch = plan.batches[i]
            prog = compiler.get(batch.group)
            if bar is not None:
                bar.set_description(f"group {batch.group + 1}/{len(groups)}")
            t0 = time.perf_counter()
            df = run_batch(
                groups[batch.group], batch.entries, prog, bar.update if bar is not None else None, chunk_steps
            )
            stats.run_s += time.perf_counter() - t0
            if outp is not None:
                store.write_part(outp, _part_name(batch.entries), df)
            frames.append(df)
            stats.computed_configs += len(batch.entries)
            stats.batches.append((batch.size, len(batch.entries)))
    finally:
        compiler.close()
        if bar is not None:
            bar.close()
    stats.compilations = compiler.compiled
    stats.compile_s = compiler.compile_s
    return frames
