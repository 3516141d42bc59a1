"""Planning a sweep: configurations grouped by their static part (one compiled
program per group), the memory one configuration needs, and batches that fit the
device memory — all before anything compiles (`plan_sweep` is the --dry-run view).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax import data as data_lib
from coco_jax import engine, fileio, store
from coco_jax.config import (
    CHOICE_FIELDS,
    CHOICES,
    DATASET_FIELDS,
    ExperimentConfig,
    Static,
    choice_value,
    float_dtype,
    hparams_of,
    static_fields,
)
from coco_jax.errors import ConfigError
from coco_jax.grid import Grid
from coco_jax.registry import COMPRESSORS, DECODERS, FEEDBACKS, MODELS
from coco_jax.results import config_id
from coco_jax.step import components, init_run

__all__ = [
    "Batch",
    "Entry",
    "Group",
    "SweepPlan",
    "device_memory_budget",
    "entries_of",
    "estimate_config_bytes",
    "format_bytes",
    "grid_hash",
    "parse_bytes",
    "plan_sweep",
]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes per device where the device reports no limit
DEVICE_MEMORY_FRACTION = 0.6  # share of a device's free memory a sweep plans to use


@dataclasses.dataclass
class Entry:
    index: int  # position in the grid
    method: str
    cfg: ExperimentConfig
    config_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.config_id)


@dataclasses.dataclass
class Group:
    static: Static
    prepared: Any  # engine.Prepared of the group (its first configuration, merged Static)
    entries: list[Entry]
    config_bytes: int  # estimated device bytes of one configuration
    data_bytes: int  # bytes of the shared (replicated) data

    def label(self) -> str:
        st = self.static
        c = st.cfg
        codes = "|".join(f"s={s} {a}" for a, s in st.options("code"))
        parts = [
            f"{c.task}/{c.dataset}",
            f"M={c.num_devices} K={c.num_partitions_resolved} {codes}",
            f"d={st.dim}",
            f"{c.compressor}(k={st.compress_k}) {c.error_feedback} {'|'.join(st.options('decoder'))}",
            f"{'|'.join(st.options('straggler'))}{' (wait for n)' if st.wait_mode else ''} {c.optimizer}",
            f"steps={c.steps}/{c.eval_every}",
        ]
        if c.batch_size is not None:
            parts.append(f"batch={c.batch_size}")
        return ", ".join(parts)


@dataclasses.dataclass
class Batch:
    group: int
    entries: list[Entry]
    size: int  # padded size (a multiple of the local device count)


def _tree_nbytes(tree) -> int:
    return int(
        sum(
            np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
            for x in jax.tree_util.tree_leaves(tree)
        )
    )


def estimate_config_bytes(prep) -> int:
    """Estimated device bytes of ONE configuration of a group inside a vmapped program
    (the data is shared and not counted): the run's carry (parameters, optimiser
    state, every device's feedback memory, B, history buffers; measured with
    `jax.eval_shape` of `step.init_run`) held twice (input and output of a chunk), the
    M×d coded gradients and compression temporaries, per-partition gradients and the
    model's activations over the data, with a 1.5× margin."""
    static, data = prep.static, prep.data
    cfg = static.cfg
    item = 8 if float_dtype(cfg) == jnp.float64 else 4
    d, m, k = static.dim, cfg.num_devices, cfg.num_partitions_resolved
    carry = _tree_nbytes(jax.eval_shape(lambda hp: init_run(prep.comps, hp, data), hparams_of(prep.cfg)))
    work = 4 * m * d  # coded gradients, v = g + e, C(v), messages
    n_k = int(data.xp.shape[1])
    rows = k * n_k + int(data.x_test.shape[0])
    if cfg.batch_size is None:
        work += k * d
        grad_rows = k * n_k
    else:
        held = max(code.max_load for code in prep.comps.codes)
        work += m * held * d
        grad_rows = m * held * cfg.batch_size
    classes = max(static.num_classes, 1)
    pixels = int(np.prod(static.feature_shape[:2])) if len(static.feature_shape) >= 3 else 1
    if cfg.task in ("linreg", "logreg"):
        width = 2
    elif cfg.task == "softmax":
        width = 2 * classes
    elif cfg.task == "mlp":
        width = 2 * (sum(cfg.hidden_sizes) + classes)
    elif cfg.task == "cnn":
        width = 2 * (pixels * sum(cfg.cnn_channels) + classes)
    else:  # a registered model: about one hidden unit per parameter per input feature
        width = 2 * pixels * max(d // max(int(np.prod(static.feature_shape)), 1), classes)
    act = (rows + grad_rows) * width
    return int(1.5 * (2 * carry + item * (work + act)))


def device_memory_budget(memory_budget: int | str | None = None) -> int:
    """Bytes per device a sweep may plan for: `memory_budget` if given, else a share of
    the device's free memory (memory_stats bytes_limit - bytes_in_use), else 2 GiB."""
    if memory_budget is not None:
        return parse_bytes(memory_budget)
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return max(1, int(DEVICE_MEMORY_FRACTION * free))
    return DEFAULT_MEMORY_BUDGET


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(value: float | str) -> int:
    """Bytes from an int or a string with a unit: "2GB", "512MiB", "1.5g", "1000".

    Example:
        >>> parse_bytes("2GB"), parse_bytes("1KiB")
        (2000000000, 1024)
    """
    if isinstance(value, bool):
        raise ConfigError(f"memory_budget={value!r} is invalid: must be bytes (an int or e.g. '2GB')")
    if isinstance(value, (int, np.integer, float)):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _BYTE_UNITS:
            raise ConfigError(
                f"memory_budget={value!r} is invalid: must be bytes, e.g. 2000000000, '2GB' or '512MiB'"
            )
        n = int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    if n <= 0:
        raise ConfigError(f"memory_budget={value!r} is invalid: must be positive")
    return n


def _dataset_key(cfg: ExperimentConfig) -> tuple:
    """The fields `data.load_dataset` reads."""
    return tuple(getattr(cfg, f) for f in DATASET_FIELDS)


def _data_key(cfg: ExperimentConfig) -> tuple:
    """The fields the loaded and partitioned data depends on."""
    extra = (cfg.partitioning, cfg.dirichlet_alpha, cfg.dtype, cfg.num_partitions_resolved)
    return _dataset_key(cfg) + extra


def prepare_groups(
    entries: list[Entry], data=None, test_data=None, straggler_trace=None
) -> tuple[list[Group], int]:
    """Group entries by their static part, merging the configurations that differ only
    in cheap choices (`config.CHOICES`: traced indices into the group's options). A
    named dataset is loaded once per set of data fields, prepared (partitioned, checked)
    once per static configuration, and the prepared arrays are shared between groups
    that read the same partitioned data. Returns (groups, number of dataset loads)."""
    by_static_cfg: dict[tuple, Any] = {}
    datasets: dict[tuple, Any] = {}
    shared_data: dict[tuple, Any] = {}
    members: dict[tuple, list] = {}  # merge key -> [(entry, prepared)]
    loads = 0 if data is None else 1  # user arrays: given once
    for e in entries:
        scfg = (static_fields(e.cfg), e.cfg.device_momentum > 0, e.cfg.wait_for is not None)
        prep = by_static_cfg.get(scfg)
        if prep is None:
            trace = straggler_trace if e.cfg.straggler == "trace" else None
            dataset = None
            if data is None:  # a named dataset: load it once per data-relevant fields
                lkey = _dataset_key(e.cfg)
                if lkey not in datasets:
                    datasets[lkey] = data_lib.load_dataset(e.cfg)
                    loads += 1
                dataset = datasets[lkey]
            prep = engine.prepare(e.cfg, data, trace, test_data, dataset=dataset)
            dkey = (_data_key(e.cfg), prep.data.trace is not None)
            if dkey in shared_data and prep.data.trace is None:
                prep = dataclasses.replace(prep, data=shared_data[dkey])
            else:
                shared_data[dkey] = prep.data
            by_static_cfg[scfg] = prep
        elif prep.comps.feedback.check is not None:
            prep.comps.feedback.check(e.cfg)  # a dynamic field the rule may refuse or warn about
        members.setdefault(_merge_key(prep), []).append((e, prep))
    groups = []
    for items in members.values():
        prep = _merged(items)
        groups.append(
            Group(
                prep.static, prep, [e for e, _ in items], estimate_config_bytes(prep), _tree_nbytes(prep.data)
            )
        )
    return groups, loads


def _choice_free(prep) -> bool:
    """Whether no factory but the code's and the straggler model's reads a choice
    field (then the choices can be traced without changing any other component)."""
    cfg = prep.cfg
    used = [(COMPRESSORS, cfg.compressor), (FEEDBACKS, cfg.error_feedback)]
    if cfg.task in MODELS:
        used.append((MODELS, cfg.task))
    for reg, name in used:
        params = inspect.signature(reg.entry(name).factory).parameters
        if any(f in params for f in CHOICE_FIELDS):
            return False
    return True


def _merge_key(prep) -> tuple:
    """Configurations with equal keys share one compiled program: the static part
    without the choice fields, plus what makes options incompatible (a random code, the
    optimal decoder, a straggler state of another shape, other data)."""
    static, cfg = prep.static, prep.cfg
    if not _choice_free(prep):
        return ("static", static, id(prep.data))
    code = prep.comps.codes[0]
    model = prep.comps.straggler_models[0]
    state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.tree_util.tree_map(jnp.asarray, hparams_of(cfg)))
    )
    return (
        tuple((n, v) for n, v in static.fields if n not in CHOICE_FIELDS),
        static.feature_shape,
        static.num_classes,
        static.dim,
        static.compress_k,
        static.device_momentum,
        static.wait_mode,
        tuple(c for c in static.components if c[0] not in ("code", "decoder", "straggler model")),
        ("random", cfg.allocation) if code.random else "deterministic",
        "traceable" if DECODERS.entry(cfg.decoder).option("traceable") else ("static", cfg.decoder),
        jax.tree_util.tree_structure(state),
        tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(state)),
        id(prep.data),
    )


def _merged(items: list) -> Any:
    """The prepared group of configurations that share a merge key: the first one's,
    with every choice whose options differ traced (`Static.choices`)."""
    first = items[0][1]
    if len(items) == 1 or first.static.choices or not _choice_free(first):
        return first
    traced, drop = [], set()
    for kind, names in CHOICES.items():
        options = tuple(dict.fromkeys(choice_value(e.cfg, kind) for e, _ in items))
        if len(options) > 1:
            traced.append((kind, options))
            drop.update(names)
    if not traced:
        return first
    serials = tuple(dict.fromkeys(c for _, p in items for c in p.static.components))
    static = dataclasses.replace(
        first.static,
        fields=tuple((n, v) for n, v in first.static.fields if n not in drop),
        components=serials,
        choices=tuple(traced),
    )
    return dataclasses.replace(first, static=static, comps=components(static))


def _batch_size(n: int, config_bytes: int, data_bytes: int, budget: int, n_dev: int, split: int = 1) -> int:
    """Padded batch size for `n` configurations: fits the per-device budget, is a
    multiple of the local device count, and gives at least `split` batches where the
    group is large enough (to share one group among processes)."""
    per_dev = max(1, (budget - data_bytes) // max(config_bytes, 1))
    nb = max(math.ceil(n / (per_dev * n_dev)), min(split, math.ceil(n / n_dev)))
    return math.ceil(math.ceil(n / nb) / n_dev) * n_dev


@dataclasses.dataclass
class SweepPlan:
    """What a sweep will do (see `plan_sweep`); `describe()` is the --dry-run text."""

    entries: list[Entry]
    groups: list[Group]
    batches: list[Batch]  # batches of the pending configurations (all processes)
    assignment: list[int]  # process of each batch
    done: set  # keys finished before this run
    budget: int  # bytes per device
    local_devices: int
    processes: int
    data_loads: int
    grid_hash: str

    @property
    def compilations(self) -> int:
        """Programs to compile (per process: one per group with pending work there)."""
        return len({self.batches[i].group for i, p in enumerate(self.assignment) if p == jax.process_index()})

    def describe(self, estimates: dict[int, dict] | None = None) -> str:
        """The --dry-run text; with `estimates` (`program.plan_estimates`) the predicted
        compile and run seconds of each group and in total."""
        lines = [
            (
                f"{len(self.entries)} configurations in {len(self.groups)} static groups "
                f"(data loaded {self.data_loads} time(s)); {self.local_devices} local device(s) x "
                f"{self.processes} process(es); memory budget {format_bytes(self.budget)} per device"
            ),
        ]
        if self.done:
            lines.append(f"resume: {len(self.done)} configurations already finished, {self.pending} to run")
        for gi, g in enumerate(self.groups):
            bs = [b for b in self.batches if b.group == gi]
            pending = sum(len(b.entries) for b in bs)
            methods = sorted({e.method for e in g.entries})
            size = bs[0].size if bs else 0
            per_device = g.data_bytes + g.config_bytes * size // max(self.local_devices, 1)
            text = (
                f"group {gi}: {len(g.entries)} configs ({pending} pending), methods {', '.join(methods)}\n"
                f"    {g.label()}\n"
                f"    {len(bs)} batch(es) of {size} (padded); est. {format_bytes(g.config_bytes)} per config, "
                f"{format_bytes(g.data_bytes)} shared data, {format_bytes(per_device)} per device"
            )
            if estimates and gi in estimates:
                est = estimates[gi]
                how = "cached" if est["cached"] else "compile"
                text += f"\n    est. {how} {est['compile_s']:.1f} s, run {est['run_s']:.1f} s"
            lines.append(text)
        lines.append(
            f"compilations: {self.compilations} (one per static group with pending work: its step "
            "program and its small init program)"
        )
        if estimates:
            compile_s = sum(e["compile_s"] for e in estimates.values())
            run_s = sum(e["run_s"] for e in estimates.values())
            calibrated = all(e["calibrated"] for e in estimates.values())
            lines.append(
                f"estimated: compile {compile_s:.0f} s, run {run_s:.0f} s"
                + (
                    ""
                    if calibrated
                    else " (uncalibrated defaults: this machine has few measured programs yet)"
                )
            )
        return "\n".join(lines)

    @property
    def pending(self) -> int:
        return sum(len(b.entries) for b in self.batches)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def grid_hash(entries: list[Entry], data, test_data, straggler_trace) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(list(e.key) for e in entries)).encode())  # the set, not the order
    for arr in (
        (data or ()) + tuple(test_data or ()) + ((straggler_trace,) if straggler_trace is not None else ())
    ):
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def entries_of(grid: Grid) -> list[Entry]:
    if not isinstance(grid, Grid):
        raise ConfigError(f"grid={type(grid).__name__} is invalid: must be a coco_jax.Grid")
    return [Entry(i, m, c, config_id(c)) for i, (m, c) in enumerate(grid.configs())]


def make_plan(entries, groups, loads, done, budget, n_dev, n_proc, grid_hash) -> SweepPlan:
    batches: list[Batch] = []
    busy = sum(1 for g in groups if any(e.key not in done for e in g.entries))
    # with several processes, whole groups go to processes (one compilation each);
    # groups are split across processes only when there are fewer groups than processes
    split = n_proc if busy < n_proc else 1
    for gi, g in enumerate(groups):
        pending = [e for e in g.entries if e.key not in done]
        if not pending:
            continue
        b = _batch_size(len(pending), g.config_bytes, g.data_bytes, budget, n_dev, split)
        for i in range(0, len(pending), b):
            batches.append(Batch(gi, pending[i : i + b], b))
    # longest-processing-time assignment of batches to processes (deterministic)
    load = [0.0] * n_proc
    assignment = [0] * len(batches)
    cost = [
        len(b.entries) * groups[b.group].static.cfg.steps * (groups[b.group].config_bytes + 1)
        for b in batches
    ]
    for i in sorted(range(len(batches)), key=lambda i: (-cost[i], i)):
        p = min(range(n_proc), key=lambda q: (load[q], q))
        assignment[i] = p
        load[p] += cost[i]
    return SweepPlan(entries, groups, batches, assignment, set(done), budget, n_dev, n_proc, loads, grid_hash)


def plan_sweep(
    grid: Grid,
    *,
    memory_budget: int | str | None = None,
    out: str | os.PathLike | None = None,
    data=None,
    test_data=None,
    straggler_trace=None,
) -> SweepPlan:
    """Group, size and batch a grid without compiling anything (the --dry-run view).
    With `out`, configurations already finished there (same grid) count as done."""
    entries = entries_of(grid)
    groups, loads = prepare_groups(entries, data, test_data, straggler_trace)
    ghash = grid_hash(entries, data, test_data, straggler_trace)
    done: set = set()
    if out is not None:
        meta = fileio.read_json(pathlib.Path(out) / store.SIDECAR)
        if meta is not None and meta.get("grid_hash") == ghash:
            if (pathlib.Path(out) / store.TABLE).exists():
                done = {e.key for e in entries}
            else:
                parts = store.read_parts(out)
                if parts is not None:
                    done = set(zip(parts["method"], parts["config_id"]))
    return make_plan(
        entries,
        groups,
        loads,
        done,
        device_memory_budget(memory_budget),
        len(jax.local_devices()),
        jax.process_count(),
        ghash,
    )
