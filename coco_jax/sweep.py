"""Sweeps: whole grids of configurations as a handful of compiled programs.

A `Grid` describes configurations (product and zip of axes, exclusions, method
presets). `sweep(grid, out=DIR)` groups them by their static part (`engine.prepare(cfg)
.static`: task, shapes, kinds of code/compressor/feedback, steps, ...), and runs every
group as ONE compiled program: the group's dynamic fields (`config.HParams`: lr,
straggler_prob, seed, ...) are stacked on a leading configuration axis and
`jax.vmap`-ed, the data is shared, and the configuration axis is sharded over all
local devices (`jax.shard_map` on a 1-D mesh with axis "config"). Long runs advance in
chunks of steps so a progress bar moves without a per-step host round trip. Finished
batches are written atomically to `DIR/parts/`, so a killed sweep resumes where it
stopped; the final tidy table is `DIR/results.parquet` with the JSON sidecar
`DIR/results.json` (see `coco_jax.results`).

Several hosts: with `jax.distributed` initialised (see `cli_sweep` and
`init_distributed`) the batches are split over the processes, each runs its share on
its local devices, and the tables are gathered on process 0 with
`jax.experimental.multihost_utils.process_allgather` (serialised Parquet bytes): that
needs no shared filesystem (each process may write parts to its own disk); only
process 0 writes the final table.

Example:
    >>> import coco_jax as cj
    >>> grid = cj.Grid(
    ...     base=cj.ExperimentConfig(task="linreg", num_devices=8, steps=50),
    ...     axes={"preset": ["coco-ef", "gc"], "lr": [0.05, 0.1], "seed": range(3)},
    ... )
    >>> df = cj.sweep(grid, out="results/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import pathlib
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from coco_jax import results as res_lib
from coco_jax.config import (
    DATASET_FIELDS,
    DYNAMIC_FIELDS,
    FIELD_NAMES,
    ConfigError,
    ExperimentConfig,
    HParams,
    Static,
    float_dtype,
    hparams_of,
    static_config,
)
from coco_jax.presets import PRESETS

__all__ = [
    "Grid",
    "SweepPlan",
    "benchmark_sweep",
    "cli_sweep",
    "estimate_config_bytes",
    "init_distributed",
    "load_grid",
    "load_grids",
    "parse_bytes",
    "plan_sweep",
    "sweep",
    "trace_count",
    "use_cpu_devices",
]

MESH_AXIS = "config"
DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes per device where the device reports no limit
DEVICE_MEMORY_FRACTION = 0.6  # share of a device's free memory a sweep plans to use
DEFAULT_CHUNKS = 16  # progress updates per batch when chunk_steps is not given

_TUPLE_FIELDS = {f.name for f in dataclasses.fields(ExperimentConfig) if "tuple" in str(f.type)}


# ============================================================================ Grid


def _plain(value: Any, field: str | None = None) -> Any:
    """numpy scalars -> Python; lists -> tuples for tuple-valued fields."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list) and field in _TUPLE_FIELDS:
        return tuple(_plain(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _valid_names() -> str:
    return "preset, " + ", ".join(FIELD_NAMES)


def _check_axis_name(name: Any, where: str) -> None:
    if name != "preset" and name not in FIELD_NAMES:
        raise ConfigError(f"unknown {where} {name!r}: valid names are {_valid_names()}")


def _axis_values(name: str, values: Any, where: str) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(
            f"{where} {name!r} must be a non-empty list of values, got {type(values).__name__} {values!r}"
        )
    vals = [_plain(v, name) for v in values]
    if not vals:
        raise ConfigError(f"{where} {name!r} is empty: give at least one value")
    if name == "preset":
        for v in vals:
            if v not in PRESETS:
                raise ConfigError(f"preset={v!r} is invalid: must be one of {', '.join(PRESETS)}")
    return vals


def _base_of(base: Any) -> tuple[str | None, ExperimentConfig]:
    """(method label, config) of a grid's base: None, a preset name, a config or a dict."""
    if base is None:
        return None, ExperimentConfig()
    if isinstance(base, str):
        if base not in PRESETS:
            raise ConfigError(
                f"base={base!r} is invalid: must be an ExperimentConfig or one of {', '.join(PRESETS)}"
            )
        return base, ExperimentConfig(**PRESETS[base].fields)
    if isinstance(base, ExperimentConfig):
        return None, base
    if isinstance(base, Mapping):
        fields = {k: _plain(v, k) for k, v in base.items()}
        method = fields.pop("preset", None)
        for k in fields:
            _check_axis_name(k, "base field")
        if method is not None and method not in PRESETS:
            raise ConfigError(f"preset={method!r} is invalid: must be one of {', '.join(PRESETS)}")
        merged = {**(PRESETS[method].fields if method else {}), **fields}
        return method, ExperimentConfig(**merged)
    raise ConfigError(
        f"base={type(base).__name__} is invalid: must be an ExperimentConfig, a preset name or a dict of fields"
    )


class Grid:
    """A grid of configurations.

    Each point sets some fields on top of `base`: the product of `axes` (or their zip,
    with mode="zip"), times each block of `zip_axes` (parallel lists of equal length).
    The axis "preset" picks a method preset; its fields override the base, and the
    other axes override both. Every other axis name must be an ExperimentConfig field.

    Args:
        base: an ExperimentConfig, a preset name, or a dict of fields (may hold "preset").
        axes: name -> list of values.
        mode: "product" (default) or "zip" for `axes`.
        zip_axes: a dict (or list of dicts) of parallel lists, each dict one zipped axis
            block crossed with `axes`.
        exclude: a callable taking a point (a dict of every resolved field plus
            "preset", the method label) and returning True to drop it, or a list of
            dicts: a point is dropped when it matches every item of one dict.
        name: a label (used for default output directories).

    Every configuration is built (and so validated) here: unknown names (the message
    lists the valid ones), empty axes, wrong value types and a static field given
    conflicting values in a zip raise ConfigError before anything is compiled.

    Example:
        >>> g = Grid(base="coco-ef", axes={"lr": [0.1, 0.2], "seed": range(2)})
        >>> len(g), g.configs()[0][0]
        (4, 'coco-ef')
    """

    def __init__(
        self,
        base: Any = None,
        axes: Mapping[str, Iterable] | None = None,
        *,
        mode: str = "product",
        zip_axes: Mapping[str, Iterable] | Sequence[Mapping[str, Iterable]] | None = None,
        exclude: Callable[[dict], bool] | Sequence[Mapping[str, Any]] | None = None,
        name: str | None = None,
    ):
        if mode not in ("product", "zip"):
            raise ConfigError(f"mode={mode!r} is invalid: must be 'product' or 'zip'")
        self.name = name
        self.mode = mode
        self._base_input = base
        self.base_method, self.base = _base_of(base)
        axes = dict(axes or {})
        if not isinstance(axes, dict):
            raise ConfigError("axes must be a dict of name -> list of values")
        for k in axes:
            _check_axis_name(k, "axis")
        self.axes = {k: _axis_values(k, v, "axis") for k, v in axes.items()}
        if zip_axes is None:
            blocks = []
        elif isinstance(zip_axes, Mapping):
            blocks = [dict(zip_axes)]
        else:
            blocks = [dict(b) for b in zip_axes]
        if mode == "zip" and self.axes:
            blocks = [dict(self.axes), *blocks]
            self.axes = {}
        self.zip_blocks = []
        seen: dict[str, str] = {k: "axes" for k in self.axes}
        for i, block in enumerate(blocks):
            if not block:
                raise ConfigError(f"zip block {i} is empty: give at least one axis")
            vals = {}
            for k, v in block.items():
                _check_axis_name(k, "zip axis")
                if k in seen:
                    raise ConfigError(
                        f"field {k!r} is given in both {seen[k]} and zip block {i}: conflicting values; "
                        "give each field in one place"
                    )
                seen[k] = f"zip block {i}"
                vals[k] = _axis_values(k, v, "zip axis")
            lengths = {k: len(v) for k, v in vals.items()}
            if len(set(lengths.values())) > 1:
                raise ConfigError(f"zip block {i} has lists of different lengths: {lengths}")
            self._check_zip_presets(i, vals)
            self.zip_blocks.append(vals)
        self.exclude = exclude
        if exclude is not None and not callable(exclude):
            if isinstance(exclude, Mapping):
                exclude = [exclude]
            self.exclude = [dict(e) for e in exclude]
            for e in self.exclude:
                for k in e:
                    _check_axis_name(k, "exclude key")
        self._configs = self._build()

    @staticmethod
    def _check_zip_presets(i: int, block: dict[str, list]) -> None:
        """In a zip, a preset and another zipped field must not disagree at a position."""
        if "preset" not in block:
            return
        for pos, name in enumerate(block["preset"]):
            for field, value in PRESETS[name].fields.items():
                if field in block and block[field][pos] != value:
                    raise ConfigError(
                        f"zip block {i}, position {pos}: preset {name!r} sets {field}={value!r} but the zip "
                        f"gives {field}={block[field][pos]!r} (conflicting values of a static field)"
                    )

    def _points(self) -> Iterable[dict]:
        names = list(self.axes)
        blocks = [[dict(zip(b, vals)) for vals in zip(*b.values())] for b in self.zip_blocks]
        for combo in itertools.product(*(self.axes[n] for n in names)):
            point = dict(zip(names, combo))
            for parts in itertools.product(*blocks):
                p = dict(point)
                for part in parts:
                    p.update(part)
                yield p

    def _excluded(self, view: dict) -> bool:
        if self.exclude is None:
            return False
        if callable(self.exclude):
            return bool(self.exclude(view))
        for pattern in self.exclude:
            if all(view.get(k) == _plain(v, k) for k, v in pattern.items()):
                return True
        return False

    def _build(self) -> list[tuple[str, ExperimentConfig]]:
        out: list[tuple[str, ExperimentConfig]] = []
        seen = set()
        base_fields = self.base.to_dict()
        duplicates = 0
        for point in self._points():
            method = point.get("preset", self.base_method)
            fields = dict(base_fields)
            if "preset" in point:
                fields.update(PRESETS[point["preset"]].fields)
            fields.update({k: v for k, v in point.items() if k != "preset"})
            label = method or "custom"
            if self._excluded({**fields, "preset": label}):
                continue
            try:
                cfg = ExperimentConfig(**fields)
            except ConfigError as err:
                raise ConfigError(f"grid point {point}: {err}") from None
            key = (label, res_lib.config_id(cfg))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            out.append((label, cfg))
        if duplicates:
            warnings.warn(f"grid: {duplicates} duplicate configuration(s) dropped", stacklevel=3)
        if not out:
            raise ConfigError("the grid is empty (every point was excluded)")
        return out

    def configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(method label, ExperimentConfig) of every point, in grid order."""
        return list(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __iter__(self):
        return iter(self.configs())

    def describe(self) -> dict:
        """A JSON-safe description (stored in the results sidecar)."""
        if callable(self.exclude):
            exc: Any = f"callable {getattr(self.exclude, '__qualname__', repr(self.exclude))}"
        else:
            exc = self.exclude
        base: Any = self._base_input if isinstance(self._base_input, (str, Mapping)) else self.base.to_dict()
        return res_lib.jsonable(
            {
                "name": self.name,
                "base": base,
                "axes": self.axes,
                "mode": self.mode,
                "zip": self.zip_blocks,
                "exclude": exc,
                "num_configs": len(self),
            }
        )

    def __repr__(self) -> str:
        return f"Grid({len(self)} configurations, axes={list(self.axes)}, zip={[list(b) for b in self.zip_blocks]})"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> Grid:
        """A grid from a YAML/JSON-style dict: {"base": {...} | preset name, "preset": name,
        "axes": {...}, "zip": {...} | [{...}], "exclude": [{...}], "mode": "product"|"zip"}."""
        allowed = {"base", "preset", "axes", "zip", "exclude", "mode", "name"}
        unknown = set(spec) - allowed
        if unknown:
            raise ConfigError(f"grid file: unknown keys {sorted(unknown)}: valid keys are {sorted(allowed)}")
        base = spec.get("base")
        if spec.get("preset") is not None:
            if isinstance(base, str):
                raise ConfigError("grid file: give 'preset' or a preset name in 'base', not both")
            base = {**(base or {}), "preset": spec["preset"]}
        exclude = spec.get("exclude")
        if exclude is not None and not isinstance(exclude, (list, Mapping)):
            raise ConfigError("grid file: 'exclude' must be a list of dicts")
        return cls(
            base=base,
            axes=spec.get("axes") or {},
            mode=spec.get("mode", "product"),
            zip_axes=spec.get("zip"),
            exclude=exclude,
            name=spec.get("name", name),
        )


# ======================================================================= planning


@dataclasses.dataclass
class _Entry:
    index: int  # position in the grid
    method: str
    cfg: ExperimentConfig
    config_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.config_id)


@dataclasses.dataclass
class _Group:
    static: Static
    prepared: Any  # engine.Prepared of the group's first configuration
    entries: list[_Entry]
    config_bytes: int  # estimated device bytes of one configuration
    data_bytes: int  # bytes of the shared (replicated) data

    def label(self) -> str:
        c = self.static.cfg
        parts = [
            f"{c.task}/{c.dataset}",
            f"M={c.num_devices} K={c.num_partitions_resolved} s={c.redundancy} {c.allocation}",
            f"d={self.static.dim}",
            f"{c.compressor}(k={self.static.compress_k}) {c.error_feedback} {c.decoder}",
            f"{c.straggler} {c.optimizer}",
            f"steps={c.steps}/{c.eval_every}",
        ]
        if c.batch_size is not None:
            parts.append(f"batch={c.batch_size}")
        return ", ".join(parts)


@dataclasses.dataclass
class _Batch:
    group: int
    entries: list[_Entry]
    size: int  # padded size (a multiple of the local device count)


def _tree_nbytes(tree) -> int:
    return int(
        sum(
            np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
            for x in jax.tree_util.tree_leaves(tree)
        )
    )


def estimate_config_bytes(static: Static, data) -> int:
    """Estimated device bytes of ONE configuration of a group inside a vmapped program
    (the data is shared and not counted): parameters and optimiser state, the M×d
    feedback memory (and device momentum), the M×d coded gradients and compression
    temporaries, per-partition gradients, B, the model's activations over the data,
    and the carry held twice (input and output of a chunk), with a 1.5× margin."""
    cfg = static.cfg
    item = 8 if float_dtype(cfg) == jnp.float64 else 4
    d, m, k = static.dim, cfg.num_devices, cfg.num_partitions_resolved
    opt = {"sgd": 0, "momentum": 1, "adam": 2}.get(cfg.optimizer, 2)
    fb = {"none": 0, "ef": 1, "ef21": 1, "diana": 1}.get(cfg.error_feedback, 2) + (
        1 if cfg.device_momentum > 0 else 0
    )
    carry = d * (1 + opt) + m * d * fb + m * k + 4 * m + 16
    work = 4 * m * d  # coded gradients, v = g + e, C(v), estimates
    n_k = int(data.xp.shape[1])
    rows = k * n_k + int(data.x_test.shape[0])
    if cfg.batch_size is None:
        work += k * d
        grad_rows = k * n_k
    else:
        held = k if cfg.allocation == "bernoulli" else max(1, math.ceil((cfg.redundancy + 1) * k / m))
        work += m * held * d
        grad_rows = m * held * cfg.batch_size
    classes = max(static.num_classes, 1)
    if cfg.task in ("linreg", "logreg"):
        width = 2
    elif cfg.task == "softmax":
        width = 2 * classes
    elif cfg.task == "mlp":
        width = 2 * (sum(cfg.hidden_sizes) + classes)
    else:
        pixels = int(np.prod(static.feature_shape[:2])) if len(static.feature_shape) >= 2 else 1
        width = 2 * (pixels * sum(cfg.cnn_channels) + classes)
    act = (rows + grad_rows) * width
    return int(1.5 * item * (2 * carry + work + act))


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


def _prepare_groups(
    entries: list[_Entry], data=None, test_data=None, straggler_trace=None
) -> tuple[list[_Group], int]:
    """Group entries by their static part. A named dataset is loaded once per set of
    data fields, prepared (partitioned, checked) once per static configuration, and the
    prepared arrays are shared between groups that read the same partitioned data.
    Returns (groups, number of dataset loads)."""
    from coco_jax import data as data_lib
    from coco_jax.engine import prepare

    by_static_cfg: dict[ExperimentConfig, Any] = {}
    datasets: dict[tuple, Any] = {}
    shared_data: dict[tuple, Any] = {}
    groups: dict[Static, _Group] = {}
    loads = 0 if data is None else 1  # user arrays: given once
    for e in entries:
        scfg = static_config(e.cfg)
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
            prep = prepare(e.cfg, data, trace, test_data, dataset=dataset)
            dkey = (_data_key(e.cfg), prep.data.trace is not None)
            if dkey in shared_data and prep.data.trace is None:
                prep = dataclasses.replace(prep, data=shared_data[dkey])
            else:
                shared_data[dkey] = prep.data
            by_static_cfg[scfg] = prep
        g = groups.get(prep.static)
        if g is None:
            g = _Group(
                prep.static,
                prep,
                [],
                estimate_config_bytes(prep.static, prep.data),
                _tree_nbytes(prep.data),
            )
            groups[prep.static] = g
        g.entries.append(e)
    return list(groups.values()), loads


def _batch_size(n: int, config_bytes: int, data_bytes: int, budget: int, n_dev: int, split: int = 1) -> int:
    """Padded batch size for `n` configurations: fits the per-device budget, is a
    multiple of the local device count, and gives at least `split` batches where the
    group is large enough (to share one group among processes)."""
    per_dev = max(1, (budget - data_bytes) // max(config_bytes, 1))
    nb = max(math.ceil(n / (per_dev * n_dev)), min(split, math.ceil(n / n_dev)))
    return math.ceil(math.ceil(n / nb) / n_dev) * n_dev


def _chunk_intervals(cfg: ExperimentConfig, chunk_steps: int | None) -> int:
    """Evaluation intervals per chunk (a chunk is a multiple of eval_every steps)."""
    e = cfg.eval_every
    n_int = cfg.steps // e + (1 if cfg.steps % e else 0)
    if chunk_steps is None:
        c = math.ceil(n_int / DEFAULT_CHUNKS)
    else:
        c = max(1, int(chunk_steps) // e)
    return max(1, min(c, n_int))


@dataclasses.dataclass
class SweepPlan:
    """What a sweep will do (see `plan_sweep`); `describe()` is the --dry-run text."""

    entries: list[_Entry]
    groups: list[_Group]
    batches: list[_Batch]  # batches of the pending configurations (all processes)
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

    def describe(self) -> str:
        lines = [
            (
                f"{len(self.entries)} configurations in {len(self.groups)} static groups "
                f"(data loaded {self.data_loads} time(s)); {self.local_devices} local device(s) x "
                f"{self.processes} process(es); memory budget {_fmt_bytes(self.budget)} per device"
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
            lines.append(
                f"group {gi}: {len(g.entries)} configs ({pending} pending), methods {', '.join(methods)}\n"
                f"    {g.label()}\n"
                f"    {len(bs)} batch(es) of {size} (padded); est. {_fmt_bytes(g.config_bytes)} per config, "
                f"{_fmt_bytes(g.data_bytes)} shared data, {_fmt_bytes(per_device)} per device"
            )
        lines.append(f"compilations: {self.compilations} (one per static group with pending work)")
        return "\n".join(lines)

    @property
    def pending(self) -> int:
        return sum(len(b.entries) for b in self.batches)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _grid_hash(entries: list[_Entry], data, test_data, straggler_trace) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(list(e.key) for e in entries)).encode())  # the set, not the order
    for arr in (
        (data or ()) + tuple(test_data or ()) + ((straggler_trace,) if straggler_trace is not None else ())
    ):
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _entries_of(grid: Grid) -> list[_Entry]:
    if not isinstance(grid, Grid):
        raise ConfigError(f"grid={type(grid).__name__} is invalid: must be a coco_jax.Grid")
    return [_Entry(i, m, c, res_lib.config_id(c)) for i, (m, c) in enumerate(grid.configs())]


def _make_plan(entries, groups, loads, done, budget, n_dev, n_proc, grid_hash) -> SweepPlan:
    batches: list[_Batch] = []
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
            batches.append(_Batch(gi, pending[i : i + b], b))
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
    entries = _entries_of(grid)
    groups, loads = _prepare_groups(entries, data, test_data, straggler_trace)
    ghash = _grid_hash(entries, data, test_data, straggler_trace)
    done: set = set()
    if out is not None:
        meta = res_lib.read_json(pathlib.Path(out) / res_lib.SIDECAR)
        if meta is not None and meta.get("grid_hash") == ghash:
            if (pathlib.Path(out) / res_lib.TABLE).exists():
                done = {e.key for e in entries}
            else:
                parts = res_lib.read_parts(out)
                if parts is not None:
                    done = set(zip(parts["method"], parts["config_id"]))
    return _make_plan(
        entries,
        groups,
        loads,
        done,
        device_memory_budget(memory_budget),
        len(jax.local_devices()),
        jax.process_count(),
        ghash,
    )


# ======================================================================= programs

_TRACES = [0]


def trace_count() -> int:
    """How many sweep programs have been traced (= compiled) in this process so far."""
    return _TRACES[0]


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_raw(tree):
    """Typed PRNG keys -> their uint32 data (so a carry can be built on the host)."""
    return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_raw(raw, template):
    return jax.tree_util.tree_map(
        lambda r, t: jax.random.wrap_key_data(r) if _is_key(t) else r, raw, template
    )


def _zeros(template):
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template)


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # jax < 0.6

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


@dataclasses.dataclass
class _Program:
    fn: Callable  # jitted (hp [B], data, raw carry [B], i0) -> (raw carry, rec0 [B], recs [B, c])
    mesh: Any
    shapes: Callable  # data -> per-config templates: carry, rec0, recs, raw (carry with key data)
    sharding: Any  # NamedSharding of the configuration axis
    replicated: Any  # NamedSharding of shared values
    intervals: int  # evaluation intervals per chunk (c)
    n_intervals: int  # evaluation intervals of the whole run


@functools.lru_cache(maxsize=32)
def _program(static: Static, c: int, devices: tuple, data_sig: tuple) -> _Program:
    """The one compiled program of a static group: a chunk of `c` evaluation intervals
    of a vmapped batch of runs (the first call also initialises them), sharded over
    `devices` on the mesh axis "config"."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from coco_jax.step import make_runner

    del data_sig  # part of the cache key only
    runner = make_runner(static)
    cfg = static.cfg
    e = cfg.eval_every
    n_full, r = cfg.steps // e, cfg.steps % e
    n_int = n_full + (1 if r else 0)
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    hp1 = hparams_of(cfg)
    templates: dict[str, Any] = {}

    def shapes(data):
        """Per-config shapes of the carry and records (traced lazily, needs the data)."""
        if not templates:
            carry_t, rec0_t = jax.eval_shape(runner.init, hp1, data)
            recs_t = jax.eval_shape(
                lambda c, hp, d: runner.advance(c, hp, d, jnp.ones((1,), jnp.int32), e)[1], carry_t, hp1, data
            )
            templates.update(carry=carry_t, rec0=rec0_t, recs=recs_t, raw=jax.eval_shape(_to_raw, carry_t))
        return templates

    def one(hp: HParams, data, raw, i0):
        t = shapes(data)
        carry = _from_raw(raw, t["carry"])
        carry, rec0 = jax.lax.cond(
            i0 == 0, lambda _: runner.init(hp, data), lambda cr: (cr, _zeros(t["rec0"])), carry
        )

        def full(cr, i):
            return runner.advance(cr, hp, data, ((i + 1) * e)[None].astype(jnp.int32), e)

        def tail(cr, i):
            return runner.advance(cr, hp, data, jnp.full((1,), cfg.steps, jnp.int32), r)

        def skip(cr, i):
            return cr, _zeros(t["recs"])

        def body(cr, j):
            i = i0 + j  # interval index; not batched, so the switch stays a real branch
            if r:
                idx = jnp.where(i < n_full, 0, jnp.where(i < n_int, 1, 2))
                cr, recs = jax.lax.switch(idx, (full, tail, skip), cr, i)
            else:
                cr, recs = jax.lax.cond(i < n_full, full, skip, cr, i)
            return cr, jax.tree_util.tree_map(lambda a: a[0], recs)

        carry, recs = jax.lax.scan(body, carry, jnp.arange(c, dtype=jnp.int32))
        return _to_raw(carry), rec0, recs

    batched = jax.vmap(one, in_axes=(0, None, 0, None))
    sharded = _shard_map(
        batched, mesh, in_specs=(P(MESH_AXIS), P(), P(MESH_AXIS), P()), out_specs=P(MESH_AXIS)
    )

    def program(hp, data, raw, i0):
        _TRACES[0] += 1
        return sharded(hp, data, raw, i0)

    donate = (2,) if devices[0].platform != "cpu" else ()
    fn = jax.jit(program, donate_argnums=donate)
    return _Program(fn, mesh, shapes, NamedSharding(mesh, P(MESH_AXIS)), NamedSharding(mesh, P()), c, n_int)


def _data_signature(data) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(data))


_PLACED: dict = {}


def _placed_data(data, prog: _Program):
    """The group's data replicated on the program's devices (cached per data object)."""
    key = (id(data), tuple(prog.mesh.devices.flat))
    hit = _PLACED.get(key)
    if hit is not None and hit[0] is data:
        return hit[1]
    placed = jax.device_put(data, prog.replicated)
    _PLACED.clear()  # keep at most one group's data on the devices
    _PLACED[key] = (data, placed)
    return placed


def _run_batch(
    group: _Group, entries: list[_Entry], size: int, prog: _Program, on_chunk=None
) -> pd.DataFrame:
    """Run one padded batch of a group's configurations; the table rows of its real
    configurations (padding repeats the last configuration and is dropped)."""
    import pandas as pd

    from coco_jax.engine import history_to_numpy

    n = len(entries)
    cfg0 = group.static.cfg
    hps = [hparams_of(e.cfg) for e in entries]
    hps += [hps[-1]] * (size - n)
    hp = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *hps)
    data = _placed_data(group.prepared.data, prog)
    t = prog.shapes(group.prepared.data)
    raw = jax.tree_util.tree_map(lambda s: np.zeros((size, *s.shape), s.dtype), t["raw"])
    hp = jax.device_put(hp, prog.sharding)
    raw = jax.device_put(raw, prog.sharding)
    c, n_int = prog.intervals, prog.n_intervals
    calls = math.ceil(n_int / c)
    e = cfg0.eval_every
    rec0 = None
    chunks: list[dict] = []
    pending = None

    def collect(item):
        nonlocal rec0
        k, r0, recs = item
        recs = jax.device_get(recs)
        if k == 0:
            rec0 = jax.device_get(r0)
        chunks.append(recs)
        if on_chunk is not None:
            first, last = k * c, min((k + 1) * c, n_int)  # intervals done in this chunk
            steps = min(last * e, cfg0.steps) - min(first * e, cfg0.steps)
            on_chunk(n * steps)

    for k in range(calls):
        i0 = jax.device_put(np.int32(k * c), prog.replicated)
        raw, r0, recs = prog.fn(hp, data, raw, i0)
        if pending is not None:
            collect(pending)  # fetch chunk k-1 while chunk k runs
        pending = (k, r0, recs)
    collect(pending)
    diverged = np.asarray(jax.device_get(raw.state.diverged_step))
    recs = {key: np.concatenate([ch[key] for ch in chunks], axis=1)[:, :n_int] for key in chunks[0]}
    frames = []
    for b, entry in enumerate(entries):
        hist = {key: np.concatenate([np.asarray(rec0[key][b])[None], recs[key][b]]) for key in recs}
        hist["diverged_step"] = diverged[b]
        history, div = history_to_numpy(hist, group.prepared.bits_per_message)
        frames.append(res_lib.rows_of(entry.method, entry.cfg, history, group.prepared.bits_per_message, div))
    return pd.concat(frames, ignore_index=True)


# ================================================================= processes


class _Comm:
    """Collectives between the processes of a `jax.distributed` run (no-ops alone)."""

    def __init__(self):
        self.index = jax.process_index()
        self.count = jax.process_count()

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        if self.count == 1:
            return [data]
        from jax.experimental import multihost_utils as mh

        lens = np.asarray(mh.process_allgather(np.asarray([len(data)], np.int32))).reshape(-1)
        buf = np.zeros(max(int(lens.max()), 1), np.uint8)
        buf[: len(data)] = np.frombuffer(data, np.uint8)
        everything = np.asarray(mh.process_allgather(buf)).reshape(self.count, -1)
        return [everything[p, : int(lens[p])].tobytes() for p in range(self.count)]

    def allgather_json(self, obj) -> list:
        return [
            json.loads(b.decode()) for b in self.allgather_bytes(json.dumps(res_lib.jsonable(obj)).encode())
        ]

    def barrier(self, name: str) -> None:
        if self.count > 1:
            from jax.experimental import multihost_utils as mh

            mh.sync_global_devices(name)


def init_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout_s: int = 120,
) -> bool:
    """Initialise `jax.distributed` when asked (arguments, or the environment variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `auto` lets JAX detect
    SLURM / Open MPI / TPU clusters). Call before any other JAX work. CPU collectives
    use gloo. Returns whether it initialised."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not (auto or coordinator_address or num_processes):
        return False
    if num_processes == 1 and not auto:
        return False
    # gloo CPU collectives (the option may be renamed or gone in another jax version)
    with contextlib.suppress(Exception):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )
    return True


# ======================================================================= sweep


def _check_directory(out: pathlib.Path, grid_hash: str, overwrite: bool) -> str:
    """'new', 'resume', 'complete' or 'conflict' for this process's view of `out`."""
    meta = res_lib.read_json(out / res_lib.SIDECAR)
    if meta is None:
        return "conflict" if res_lib.part_files(out) or (out / res_lib.TABLE).exists() else "new"
    if meta.get("grid_hash") != grid_hash:
        return "conflict"
    if (out / res_lib.TABLE).exists() and meta.get("status") == "complete":
        return "complete"
    return "resume"


def _clear(out: pathlib.Path) -> None:
    for name in (res_lib.TABLE, res_lib.SIDECAR):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
    shutil.rmtree(out / res_lib.PARTS, ignore_errors=True)


def _order(df: pd.DataFrame, entries: list[_Entry]) -> pd.DataFrame:
    rank = {e.key: e.index for e in entries}
    idx = [rank[k] for k in zip(df["method"], df["config_id"])]
    df = df.assign(_rank=idx).sort_values(["_rank", "step"], kind="stable").drop(columns="_rank")
    return df.reset_index(drop=True)


def _part_name(entries: list[_Entry]) -> str:
    h = hashlib.sha256(json.dumps(sorted(list(e.key) for e in entries)).encode()).hexdigest()[:16]
    return f"batch-{h}-p{jax.process_index()}"


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
) -> pd.DataFrame:
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
        chunk_steps: steps per host round trip (rounded down to a multiple of
            eval_every); default about 1/16 of a run.
        data, test_data, straggler_trace: user arrays shared by every configuration
            (as in `cj.run`); the trace only for configurations with straggler="trace".

    Returns:
        The tidy table (a row per configuration and evaluated step; see
        `coco_jax.results`). With several processes, process 0 returns the whole
        table and the others their own share.

    Raises:
        ConfigError: bad grid, data-dependent errors, or `out` holding another grid —
            all before anything is compiled.
    """
    import pandas as pd

    t_start = time.time()
    traces0 = trace_count()
    comm = _Comm()
    entries = _entries_of(grid)
    groups, loads = _prepare_groups(entries, data, test_data, straggler_trace)
    ghash = _grid_hash(entries, data, test_data, straggler_trace)
    outp = pathlib.Path(out) if out is not None else None

    # --- the output directory: same grid (resume), another grid (refuse), or new
    status = "new"
    if outp is not None:
        views = comm.allgather_json(_check_directory(outp, ghash, overwrite))
        if "conflict" in views and not overwrite:
            meta = res_lib.read_json(outp / res_lib.SIDECAR) or {}
            raise ConfigError(
                f"out={str(outp)!r} holds results of another grid (grid hash {meta.get('grid_hash', 'unknown')}, "
                f"this grid {ghash}): choose another directory or pass overwrite=True (--overwrite) to replace them"
            )
        if "conflict" in views:
            if comm.index == 0 and views[0] == "conflict":
                _clear(outp)
            comm.barrier("coco_jax_sweep_clear0")
            if comm.index != 0 and _check_directory(outp, ghash, overwrite) == "conflict":
                _clear(outp)  # a process-local directory (no shared filesystem)
            comm.barrier("coco_jax_sweep_clear")
            views = comm.allgather_json(_check_directory(outp, ghash, overwrite))
        status = views[0]
        if status == "complete":
            return _load_complete(outp, entries) if comm.index == 0 else pd.DataFrame()
        sidecar = _sidecar(grid, ghash, groups, "running", None, outp)
        if comm.index == 0:
            res_lib.write_json(outp / res_lib.SIDECAR, sidecar)
        comm.barrier("coco_jax_sweep_sidecar")
        if comm.index != 0 and res_lib.read_json(outp / res_lib.SIDECAR) is None:
            res_lib.write_json(outp / res_lib.SIDECAR, sidecar)

    # --- what is finished (in any process's view) and who owns it
    local_done = res_lib.read_parts(outp) if outp is not None else None
    valid = {e.key for e in entries}
    local_keys = set()
    if local_done is not None:
        local_keys = {k for k in zip(local_done["method"], local_done["config_id"]) if k in valid}
    all_done = comm.allgather_json(sorted(list(k) for k in local_keys))
    owner: dict[tuple, int] = {}
    for p, keys in enumerate(all_done):
        for k in keys:
            owner.setdefault(tuple(k), p)

    plan = _make_plan(
        entries,
        groups,
        loads,
        set(owner),
        device_memory_budget(memory_budget),
        len(jax.local_devices()),
        comm.count,
        ghash,
    )
    mine = [i for i, p in enumerate(plan.assignment) if p == comm.index]
    devices = tuple(jax.local_devices())

    total = sum(len(plan.batches[i].entries) * groups[plan.batches[i].group].static.cfg.steps for i in mine)
    bar = _progress_bar(total, progress and comm.index == 0)
    frames: list[pd.DataFrame] = []
    try:
        for i in mine:
            batch = plan.batches[i]
            g = groups[batch.group]
            c = _chunk_intervals(g.static.cfg, chunk_steps)
            prog = _program(g.static, c, devices, _data_signature(g.prepared.data))
            if bar is not None:
                bar.set_description(f"group {batch.group + 1}/{len(groups)}")
            df = _run_batch(g, batch.entries, batch.size, prog, bar.update if bar is not None else None)
            if outp is not None:
                res_lib.write_part(outp, _part_name(batch.entries), df)
            frames.append(df)
    finally:
        if bar is not None:
            bar.close()

    # --- gather: each process sends what it owns; process 0 writes the table
    if local_done is not None:
        owned = {k for k, p in owner.items() if p == comm.index}
        keep = [k in owned for k in zip(local_done["method"], local_done["config_id"])]
        frames.insert(0, local_done[keep])
    mine_df = pd.concat(frames, ignore_index=True) if frames else None
    compiled = trace_count() - traces0
    stats = comm.allgather_json(
        {"compilations": compiled, "computed": sum(len(plan.batches[i].entries) for i in mine)}
    )
    if comm.count == 1:
        gathered = [mine_df] if mine_df is not None else []
    else:
        payload = res_lib.table_bytes(mine_df) if mine_df is not None and len(mine_df) else b""
        gathered = [res_lib.table_from_bytes(b) for b in comm.allgather_bytes(payload) if b]
    wall = time.time() - t_start
    invocation = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "wall_time_s": round(wall, 3),
        "compilations": sum(s["compilations"] for s in stats),
        "compilations_per_process": [s["compilations"] for s in stats],
        "computed_configs": sum(s["computed"] for s in stats),
        "resumed": status == "resume",
    }
    sweep.last_info = {  # type: ignore[attr-defined]
        **invocation,
        "groups": len(groups),
        "num_configs": len(entries),
        "data_loads": loads,
        "local_devices": len(devices),
        "batches": [(plan.batches[i].size, len(plan.batches[i].entries)) for i in mine],
    }
    if comm.index != 0:
        comm.barrier("coco_jax_sweep_done")
        return res_lib.normalise(_order(mine_df, entries)) if mine_df is not None else pd.DataFrame()
    table = pd.concat(gathered, ignore_index=True)
    table = _order(res_lib.dedupe(table), entries)
    got = set(zip(table["method"], table["config_id"]))
    missing = [e.key for e in entries if e.key not in got]
    if missing:  # pragma: no cover - would be a bug
        raise RuntimeError(
            f"sweep: {len(missing)} configurations missing from the gathered table: {missing[:3]}"
        )
    if outp is not None:
        previous = (res_lib.read_json(outp / res_lib.SIDECAR) or {}).get("invocations", [])
        res_lib.write_table(outp / res_lib.TABLE, table)
        res_lib.write_json(
            outp / res_lib.SIDECAR,
            _sidecar(grid, ghash, groups, "complete", invocation, outp, previous, rows=len(table)),
        )
        shutil.rmtree(outp / res_lib.PARTS, ignore_errors=True)
        comm.barrier("coco_jax_sweep_done")
        return res_lib.load_results(outp)
    comm.barrier("coco_jax_sweep_done")
    return res_lib.normalise(table)


sweep.last_info = {}  # type: ignore[attr-defined]


def _load_complete(out: pathlib.Path, entries: list[_Entry]) -> pd.DataFrame:

    df = res_lib.load_results(out)
    sweep.last_info = {  # type: ignore[attr-defined]
        "wall_time_s": 0.0,
        "compilations": 0,
        "computed_configs": 0,
        "resumed": True,
        "num_configs": len(entries),
    }
    return df


def _sidecar(grid, ghash, groups, status, invocation, out, previous=(), rows=None) -> dict:
    invocations = list(previous) + ([invocation] if invocation else [])
    return {
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
        "wall_time_s": invocation["wall_time_s"] if invocation else None,
        "total_wall_time_s": round(sum(i["wall_time_s"] for i in invocations), 3) if invocations else None,
        "invocations": invocations,
        "seed_policy": res_lib.SEED_POLICY,
        "dynamic_fields": list(DYNAMIC_FIELDS),
        "versions": res_lib.package_versions(),
        "python": sys.version.split()[0],
        "devices": res_lib.device_description(),
        "git": res_lib.git_commit(),
        "files": {"table": res_lib.TABLE, "parts": res_lib.PARTS + "/"},
    }


def _progress_bar(total: int, enabled: bool):
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cfg-step", unit_scale=True, dynamic_ncols=True, smoothing=0.1)


# ========================================================================== CLI


def load_grids(target: str | os.PathLike, quick: bool = False) -> tuple[str, list[tuple[str, Grid]]]:
    """(name, [(part, grid)]) from an experiment module or a YAML/JSON grid file.

    An experiment module defines ``grid(quick: bool = False)`` returning a Grid, a list of
    named Grids or a dict name -> Grid (several parts); its name is its ``NAME`` or the
    file stem. A bare name looks for experiments/<name>.py. A grid file holds
    {"base": {...} | preset name, "preset": name, "axes": {...}, "zip": {...} | [...],
    "exclude": [{...}], "mode": ..., "quick": {overrides used with quick=True}}."""
    path = pathlib.Path(target)
    if not path.exists() and path.suffix == "" and pathlib.Path("experiments", f"{target}.py").exists():
        path = pathlib.Path("experiments", f"{target}.py")
    if not path.exists():
        raise ConfigError(
            f"{str(target)!r} does not exist: give experiments/<name>.py or a .yaml/.json grid file"
        )
    name = path.stem
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"coco_jax_experiment_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        name = str(getattr(module, "NAME", name))
        fn = getattr(module, "grid", None)
        if not callable(fn):
            raise ConfigError(f"{str(path)!r} defines no grid(quick: bool = False) -> Grid function")
        accepts_quick = "quick" in inspect.signature(fn).parameters
        if quick and not accepts_quick:
            raise ConfigError(f"{str(path)!r}: grid() takes no 'quick' argument")
        g = fn(quick=quick) if accepts_quick else fn()
        if isinstance(g, Grid):
            return name, [(name, g)]
        if isinstance(g, Mapping):
            parts = [(str(k), v) for k, v in g.items()]
        elif isinstance(g, (list, tuple)):
            parts = [(x.name or f"part{i}", x) if isinstance(x, Grid) else tuple(x) for i, x in enumerate(g)]
        else:
            raise ConfigError(f"{str(path)!r}: grid() returned {type(g).__name__}, not a Grid, list or dict")
        names = [n for n, _ in parts]
        if len(set(names)) != len(names) or not all(isinstance(x, Grid) for _, x in parts):
            raise ConfigError(f"{str(path)!r}: grid() must give Grids with unique part names, got {names}")
        return name, parts
    if path.suffix in (".yaml", ".yml", ".json"):
        text = path.read_text()
        try:
            if path.suffix == ".json":
                spec_d = json.loads(text)
            else:
                import yaml

                spec_d = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001 - any parse error
            raise ConfigError(f"{str(path)!r} is not valid {path.suffix[1:].upper()}: {err}") from None
        if not isinstance(spec_d, dict):
            raise ConfigError(f"{str(path)!r} must hold a mapping with 'axes' (and 'base', 'zip', 'exclude')")
        if quick and isinstance(spec_d.get("quick"), dict):
            spec_d = {**spec_d, **spec_d["quick"]}
        spec_d.pop("quick", None)
        return name, [(name, Grid.from_dict(spec_d, name=name))]
    raise ConfigError(
        f"{str(path)!r}: expected an experiment module (.py) or a grid file (.yaml, .yml, .json)"
    )


def load_grid(target: str | os.PathLike, quick: bool = False) -> tuple[Grid, str]:
    """(grid, name) of a single-grid experiment module or grid file (see `load_grids`)."""
    name, parts = load_grids(target, quick)
    if len(parts) != 1:
        raise ConfigError(
            f"{str(target)!r} defines {len(parts)} grids ({[n for n, _ in parts]}): use load_grids"
        )
    return parts[0][1], name


def use_cpu_devices(n: int | None = None) -> int | None:
    """Split the host CPU into `n` JAX devices so the configuration axis of a sweep runs
    in parallel on CPU cores; only before JAX has started a backend, and not where
    XLA_FLAGS already forces a device count. `None` leaves JAX's default (one CPU
    device): several CPU devices on an oversubscribed 2-core machine were seen to stall
    a sweep, so splitting is opt-in. A GPU or TPU run is unaffected. Returns the count
    set, or None."""
    if n is None or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if n < 1:
        raise ConfigError(f"cpu_devices={n} is invalid: must be >= 1")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except (RuntimeError, AttributeError, ValueError):  # backend already started / older jax
        return None
    return n


def cli_sweep(args) -> int:
    """`coco-jax sweep TARGET [--quick] [--out DIR] [--dry-run] ...`."""
    use_cpu_devices(getattr(args, "cpu_devices", None))
    init_distributed(
        getattr(args, "coordinator_address", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
        auto=getattr(args, "distributed", False),
    )
    quick = getattr(args, "quick", False)
    name, parts = load_grids(args.target, quick=quick)
    out = pathlib.Path(
        getattr(args, "out", None) or os.path.join("results", name + ("-quick" if quick else ""))
    )
    budget = getattr(args, "memory_budget", None)
    for part, grid in parts:
        # a single grid sweeps into out itself, named parts into out/<part> (as `coco-jax run`)
        d = out if len(parts) == 1 and part == name else out / part
        if getattr(args, "dry_run", False):
            plan = plan_sweep(grid, memory_budget=budget, out=d)
            print(f"grid {part!r} -> {d}")
            print(plan.describe())
            continue
        df = sweep(
            grid,
            out=d,
            memory_budget=budget,
            overwrite=getattr(args, "overwrite", False),
            progress=not getattr(args, "no_progress", False),
            chunk_steps=getattr(args, "chunk_steps", None),
        )
        if jax.process_index() == 0:
            info = sweep.last_info  # type: ignore[attr-defined]
            print(
                f"{part}: {info.get('num_configs', len(grid))} configurations, {len(df)} rows, "
                f"{info.get('compilations', 0)} compilation(s), {info.get('computed_configs', 0)} computed, "
                f"{info.get('wall_time_s', 0):.1f} s -> {d / res_lib.TABLE}"
            )
    return 0


# ==================================================================== benchmark


def benchmark_sweep(
    sizes: Sequence[int] = (1, 16, 64, 256),
    *,
    num_devices: int = 16,
    num_features: int = 1000,
    num_samples: int = 1024,
    steps: int = 100,
    one_by_one: bool = True,
    max_one_by_one: int | None = None,
    repeats: int = 3,
    verbose: bool = True,
    **overrides,
) -> list[dict]:
    """Configuration-steps per second of vmapped sweeps of linreg grids (COCO-EF: cyclic
    s=2, top-k 1% with error feedback, Bernoulli p; M=16, d=1000, n=1024; the
    configurations differ in lr, straggler_prob and seed) against running the same
    configurations one by one with `cj.run`. `overrides` change the base configuration.

    Compilation is excluded from the rates (a warm-up first) and reported separately.
    Sweep time: median of `repeats` whole sweeps (out=None: no files). One-by-one time:
    n x the median time of one `cj.run` (over at most `max_one_by_one` runs; robust to
    a noisy machine). Run it on as many CPU devices as wanted by setting
    `jax.config.update("jax_num_cpu_devices", n)` before JAX starts.

    Returns one dict per size: size, local_devices, sweep_s, sweep_cfg_steps_per_s,
    sweep_compile_s, compilations, and with `one_by_one`: one_by_one_s,
    one_by_one_cfg_steps_per_s, speedup (one-by-one time / sweep time).
    """
    from coco_jax.engine import run as run_one
    from coco_jax.presets import preset

    fields = {
        "task": "linreg",
        "num_devices": num_devices,
        "num_features": num_features,
        "num_samples": num_samples,
        "num_test": 0,
        "steps": steps,
        "eval_every": max(1, steps // 10),
        "redundancy": 2,
        "compress_ratio": 0.01,
        "straggler_prob": 0.2,
    }
    base = preset("coco-ef", **{**fields, **overrides})
    rows = []
    for n in sizes:
        grid = Grid(
            base=base,
            zip_axes={
                "lr": [base.lr * (0.05 + 0.05 * (i % 4)) for i in range(n)],
                "straggler_prob": [0.1 * (1 + i % 3) for i in range(n)],
                "seed": list(range(n)),
            },
        )
        _program.cache_clear()
        t0 = time.perf_counter()
        sweep(grid, progress=False)
        first = time.perf_counter() - t0
        compilations = sweep.last_info["compilations"]  # type: ignore[attr-defined]
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            sweep(grid, progress=False)
            times.append(time.perf_counter() - t0)
        t_sweep = float(np.median(times))
        row = {
            "size": n,
            "local_devices": len(jax.local_devices()),
            "sweep_s": t_sweep,
            "sweep_cfg_steps_per_s": n * steps / t_sweep,
            "sweep_compile_s": max(first - t_sweep, 0.0),
            "compilations": compilations,
        }
        if one_by_one:
            cfgs = [c for _, c in grid.configs()]
            m = len(cfgs) if max_one_by_one is None else max(1, min(len(cfgs), max_one_by_one))
            run_one(cfgs[0])  # warm-up: compile once
            per_run = []
            for cfg in cfgs[:m]:
                t0 = time.perf_counter()
                run_one(cfg)
                per_run.append(time.perf_counter() - t0)
            t_one = float(np.median(per_run)) * n
            row.update(
                one_by_one_s=t_one,
                one_by_one_cfg_steps_per_s=n * steps / t_one,
                speedup=t_one / t_sweep,
            )
        rows.append(row)
        if verbose:
            extra = ""
            if one_by_one:
                extra = (
                    f"  one-by-one {row['one_by_one_cfg_steps_per_s']:8.0f} cfg-steps/s"
                    f"  speedup {row['speedup']:5.1f}x"
                )
            print(
                f"size {n:4d}: sweep {row['sweep_cfg_steps_per_s']:8.0f} cfg-steps/s "
                f"(compile {row['sweep_compile_s']:.2f} s, {compilations} compilation(s), "
                f"{row['local_devices']} device(s)){extra}",
                flush=True,
            )
    return rows
