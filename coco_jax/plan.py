"""Planning a sweep: configurations grouped by their static part (one compiled
program per group), the memory one configuration needs, and batches that fit the
device memory — all before anything compiles (`plan_sweep` is the --dry-run view).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import pathlib
import re
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax import costs, engine, fileio, store
from coco_jax import data as data_lib
from coco_jax import feedback as feedback_lib
from coco_jax.config import (
    CHOICE_FIELDS,
    CHOICES,
    DATASET_FIELDS,
    ExperimentConfig,
    Static,
    choice_value,
    float_dtype,
    hparams_of,
    num_points,
    static_fields,
)
from coco_jax.errors import ConfigError
from coco_jax.grid import Grid, gc_paused
from coco_jax.registry import CODES, COMPRESSORS, DECODERS, FEEDBACKS, MODELS, STRAGGLER_MODELS
from coco_jax.results import config_id
from coco_jax.step import bits_table, components, init_run

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
class Signature:
    """What the configurations with one static part share (computed once per static
    part, never per configuration): the prepared run, the key of the program it joins
    and its option of each choice; once grouped, its option indices in the group, the
    batch-uniform values its batches share, its bits per message and its points."""

    prep: Any  # engine.Prepared of the first configuration with this static part
    key: tuple  # merge key: equal keys share one compiled program
    options: dict  # kind -> option value (`config.choice_value`)
    capable: bool  # its compressor and rule can take a traced k
    group: int = -1
    hparams: dict = dataclasses.field(default_factory=dict)  # choice indices and horizon values
    uniform: tuple = ()  # the values of the group's batch-uniform HParams
    bits: int = 0  # upload bits of one message
    points: int = 0  # evaluated steps of a run


@dataclasses.dataclass(slots=True)
class Entry:
    index: int  # position in the grid
    method: str
    cfg: ExperimentConfig
    config_id: str
    sig: Signature | None = None  # set by `prepare_groups`
    static_key: Any = None  # equal for configurations of one grid with equal static fields (or None)

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
    steps: int = 0  # the longest run of the group
    width: int = 1  # configurations one program call computes per device (`config_width`)

    def program_key(self) -> tuple:
        """What identifies the group's compiled program (equal keys: one program, also
        across the parts of an experiment)."""
        static, shapes = self.code_key()
        return (static, self.width, shapes)

    def code_key(self) -> tuple:
        """`program_key` less the width: the programs of this group at any width."""
        shapes = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(self.prepared.data))
        return (self.static, shapes)

    def label(self) -> str:
        st = self.static
        c = st.cfg
        codes = "|".join(f"s={s} {a}" for a, s in st.options("code"))
        variants = "|".join(_variant_label(fields, k) for fields, k in st.options("variant"))
        ks = st.options("k")
        stragglers = "|".join(
            name + (" (wait for n)" if wait else "") for name, wait in st.options("straggler")
        )
        horizons = sorted({h for h in (e.sig.options["horizon"] for e in self.entries if e.sig)} or set())
        parts = [
            f"{c.task}/{c.dataset}",
            f"M={c.num_devices} K={c.num_partitions_resolved} {codes}",
            f"d={st.dim}",
            variants + (f", k={'|'.join(map(str, ks))}" if len(ks) > 1 else ""),
            f"{'|'.join(st.options('decoder'))}, {stragglers}, {c.optimizer}",
            "steps=" + ("|".join(f"{t}/{e}" for t, e in horizons) if horizons else str(self.steps)),
        ]
        if c.batch_size is not None:
            parts.append(f"batch={c.batch_size}")
        return ", ".join(parts)


def _variant_label(fields: tuple, k: int | None) -> str:
    f = dict(fields)
    name = f["compressor"] + ("" if k is None or not _takes_k(f["compressor"]) else f"(k={k})")
    if f["compressor"] in ("qsgd", "topk_qsgd"):
        name += f"[{f['qsgd_levels']}]"
    rule = f["error_feedback"] + (f"[{f['straggler_error']}]" if f["straggler_error"] != "keep" else "")
    return f"{name}+{rule}"


@dataclasses.dataclass
class Batch:
    group: int
    entries: list[Entry]
    size: int  # padded size (a multiple of the group's width times the local device count)


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
    """Group entries into programs: the configurations whose static parts differ only in
    choices (`config.CHOICES`) share one compiled program. Everything is computed once
    per static part (a `Signature`: the prepared run, its merge key, its options), so
    the work per configuration is a dictionary lookup, or none for the next of a grid's
    configurations with the same static key (`Grid.static_keys`). A named dataset is
    loaded once per set of data fields and the prepared arrays are shared between groups
    that read the same partitioned data. Returns (groups, number of dataset loads); every entry's
    `sig` is set."""
    sigs: dict[tuple, Signature] = {}
    datasets: dict[tuple, Any] = {}
    shared_data: dict[tuple, Any] = {}
    members: dict[tuple, list] = {}  # merge key -> entries
    loads = 0 if data is None else 1  # user arrays: given once
    last: tuple = (None, None)  # (static key, flags) of the previous entry
    same: tuple = ()  # (signature, its feedback check, its group's entries) of the previous entry
    for e in entries:
        cfg = e.cfg
        flags = (cfg.device_momentum > 0, cfg.wait_for is not None)
        if e.static_key is not None and e.static_key is last[0] and flags == last[1]:
            e.sig = same[0]  # a grid's run of configurations of one static part: no key built
            if same[1] is not None:
                same[1](cfg)  # a dynamic field the rule may refuse or warn about
            same[2].append(e)
            continue
        part = e.static_key if e.static_key is not None else static_fields(cfg)
        skey = (part, *flags)
        sig = sigs.get(skey)
        if sig is None:
            trace = straggler_trace if e.cfg.straggler == "trace" else None
            dataset = None
            if data is None:  # a named dataset: load it once per data-relevant fields
                lkey = _dataset_key(e.cfg)
                if lkey not in datasets:
                    datasets[lkey] = data_lib.load_dataset(e.cfg)
                    loads += 1
                dataset = datasets[lkey]
            prep = engine.prepare(e.cfg, data, trace, test_data, dataset=dataset)
            # one sweep has one straggler trace, so its shape fixes its content
            trace_shape = None if prep.data.trace is None else tuple(prep.data.trace.shape)
            dkey = (_data_key(e.cfg), trace_shape)
            if dkey in shared_data:
                prep = dataclasses.replace(prep, data=shared_data[dkey])
            else:
                shared_data[dkey] = prep.data
            sig = sigs[skey] = _signature(prep)
        elif sig.prep.comps.feedback.check is not None:
            sig.prep.comps.feedback.check(e.cfg)  # a dynamic field the rule may refuse or warn about
        e.sig = sig
        group = members.setdefault(sig.key, [])
        group.append(e)
        last, same = (e.static_key, flags), (sig, sig.prep.comps.feedback.check, group)
    groups = []
    for items in members.values():
        group_sigs = list(dict.fromkeys(id(e.sig) for e in items))
        by_id = {id(e.sig): e.sig for e in items}
        prep, steps = _merged([by_id[i] for i in group_sigs], len(groups))
        groups.append(
            Group(
                prep.static,
                prep,
                items,
                estimate_config_bytes(prep),
                _tree_nbytes(prep.data),
                steps,
            )
        )
    return groups, loads


@functools.lru_cache(maxsize=256)
def _parameters(factory) -> frozenset:
    return frozenset(inspect.signature(factory).parameters)


# the choice fields that belong to each registry's own choice kind
_OWN = {
    CODES: CHOICES["code"],
    DECODERS: CHOICES["decoder"],
    STRAGGLER_MODELS: CHOICES["straggler"],
    COMPRESSORS: CHOICES["variant"] + CHOICES["k"],
    FEEDBACKS: CHOICES["variant"] + CHOICES["k"],
    MODELS: (),
}


def _pinned(cfg) -> frozenset:
    """Choice fields that a factory of another kind reads (a user code that asks for
    `qsgd_levels`, a model that asks for `steps`, ...): those stay in the program key,
    so the configurations of one program agree on them."""
    used = [
        (COMPRESSORS, cfg.compressor),
        (FEEDBACKS, cfg.error_feedback),
        (CODES, cfg.allocation),
        (DECODERS, cfg.decoder),
        (STRAGGLER_MODELS, cfg.straggler),
    ]
    if cfg.task in MODELS:
        used.append((MODELS, cfg.task))
    pinned = set()
    for reg, name in used:
        params = _parameters(reg.entry(name).factory) | {k for k, _ in reg.entry(name).bound}
        pinned |= (params & set(CHOICE_FIELDS)) - set(_OWN[reg])
    return frozenset(pinned)


def _signature(prep) -> Signature:
    """The merge key and options of a prepared configuration (see `Signature`)."""
    static, cfg = prep.static, prep.cfg
    pinned = _pinned(cfg)
    code = prep.comps.codes[0]
    model = prep.comps.straggler_models[0]
    state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.tree_util.tree_map(jnp.asarray, hparams_of(cfg)))
    )
    merged = set(CHOICE_FIELDS) - pinned
    if code.random:  # a random code keeps its own program (its encode is a dense product)
        merged -= set(CHOICES["code"])
    rule_entry = FEEDBACKS.entry(cfg.error_feedback)
    capable = (
        prep.comps.compressor.compress_k is not None
        and rule_entry.builtin
        and cfg.error_feedback in feedback_lib.K_AGNOSTIC
        and not static.device_momentum
    )
    key = (
        tuple((n, v) for n, v in static.fields if n not in merged),
        static.feature_shape,
        static.num_classes,
        static.dim,
        static.device_momentum,
        tuple(
            c
            for c in static.components
            if c[0] not in ("code", "decoder", "straggler model", "compressor", "feedback")
        ),
        ("random", cfg.allocation) if code.random else "deterministic",
        jax.tree_util.tree_structure(state),
        tuple((x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(state)),
        id(prep.data),
    )
    options = {kind: choice_value(cfg, kind, static.dim) for kind in CHOICES}
    if not _takes_k(cfg.compressor):  # its programs do not depend on k
        options["variant"] = (options["variant"][0], 1)
    return Signature(prep, key, options, capable)


def _takes_k(compressor: str) -> bool:
    entry = COMPRESSORS.entry(compressor)
    return "k" in _parameters(entry.factory) and "k" not in dict(entry.bound)


def _points_bucket(points: int) -> int:
    """History buffer length for `points` evaluated steps: the next power of two (so
    groups whose runs record a similar number of points share a program)."""
    return 1 << max(0, int(points - 1).bit_length())


def _merged(sigs: list[Signature], group: int) -> tuple[Any, int]:
    """The prepared program of the signatures that share a merge key: the first one's,
    with every choice merged (`Static.choices`; its fields dropped from the static part),
    and each signature's option indices, batch-uniform values, bits and points. Returns
    (prepared, the group's longest run)."""
    first = sigs[0].prep
    pinned = _pinned(first.cfg)
    ks = sorted({s.options["k"] for s in sigs if s.capable})
    dynamic_k = len(ks) > 1
    options: dict[str, list] = {kind: [] for kind in CHOICES}
    for s in sigs:
        for kind in CHOICES:
            value = s.options[kind]
            if kind == "variant":
                value = (value[0], None if dynamic_k and s.capable else value[1])
            if kind == "k":
                continue
            if value not in options[kind]:
                options[kind].append(value)
    options["k"] = ks if dynamic_k else [first.static.compress_k]
    kinds = [k for k in CHOICES if not (set(CHOICES[k]) & pinned)]
    if first.comps.codes[0].random:
        kinds = [k for k in kinds if k != "code"]
    drop = {f for k in kinds for f in CHOICES[k]}
    decoders = options["decoder"]
    uniform = ["variant", "horizon"]
    if len(decoders) > 1 and not all(DECODERS.entry(d).option("traceable") for d in decoders):
        uniform.insert(0, "decoder")
    max_points = max(num_points(*s.options["horizon"]) for s in sigs)
    steps = max(s.options["horizon"][0] for s in sigs)
    serials = tuple(dict.fromkeys(c for s in sigs for c in s.prep.static.components))
    static = dataclasses.replace(
        first.static,
        fields=tuple((n, v) for n, v in first.static.fields if n not in drop),
        components=serials,
        choices=tuple((k, tuple(options[k])) for k in kinds),
        uniform=tuple(k for k in uniform if k in kinds),
        steps=0,
        points=_points_bucket(max_points),
    )
    prep = dataclasses.replace(first, static=static, comps=components(static))
    table = bits_table(prep.comps)
    unif = static.uniform_hparams()
    for s in sigs:
        hp = {}
        for kind in kinds:
            if kind == "horizon":
                continue
            value = s.options[kind]
            if kind == "variant":
                value = (value[0], None if dynamic_k and s.capable else value[1])
            if kind == "k":
                hp["k_choice"] = ks.index(value) if dynamic_k and value in ks else 0
            else:
                hp[f"{kind}_choice"] = options[kind].index(value)
        hp["steps"], hp["eval_every"] = s.options["horizon"]
        s.group = group
        s.hparams = hp
        s.uniform = tuple(hp.get(name, 0) for name in unif)
        s.bits = int(table[hp.get("variant_choice", 0), hp.get("k_choice", 0)])
        s.points = num_points(*s.options["horizon"])
    return prep, steps


# The width W of a group (configurations one program call computes per device, vmapped)
# comes from the group's shapes and the platform, narrowed to hold its largest set of
# configurations that share the batch-uniform choices, or is a width this process
# already planned for the same program (`group_width`); never from a batch, the device
# count or the memory budget (unless the budget admits fewer than W configurations). A
# configuration is then computed by the same arithmetic whatever batch it is in (XLA
# compiles reductions and matrix products differently for other batch shapes). W from
# the shapes is the largest power of two whose work per step stays under the
# platform's target (so the per-step overhead of a call is amortised over enough work),
# at most WIDTH_MAX and WIDTH_BYTES of device memory. Measured: docs/performance.md,
# "One width per program".
WIDTH_TARGET_FLOPS = {"cpu": 2e7}  # per program step; other platforms: WIDTH_TARGET_DEFAULT
WIDTH_TARGET_DEFAULT = 1e12
WIDTH_MAX = {"cpu": 512}
WIDTH_MAX_DEFAULT = 8192
WIDTH_BYTES = {"cpu": 256 * 1024**2}
WIDTH_BYTES_DEFAULT = 8 * 1024**3
PART_CONFIGS = 8192  # most configurations per batch (one results part; the unit of resume)


def step_flops(prep) -> float:
    """A rough model of one configuration-step's arithmetic: the gradient over the rows it
    reads (4 FLOPs per row and parameter: forward and backward; 12 for an MLP or CNN)
    and the devices' compression and feedback (about 20 FLOPs per device and parameter)."""
    static, data = prep.static, prep.data
    cfg = static.cfg
    d, m, k = static.dim, cfg.num_devices, cfg.num_partitions_resolved
    n_k = int(data.xp.shape[1])
    if cfg.batch_size is None:
        rows = k * n_k
    elif cfg.shared_minibatch:
        rows = k * cfg.batch_size
    else:
        rows = m * max(code.max_load for code in prep.comps.codes) * cfg.batch_size
    per_row = 4 if cfg.task in ("linreg", "logreg", "softmax") else 12
    return float(per_row * rows * d + 20 * m * d)


def config_width(prep, config_bytes: int, largest: int | None = None, platform: str | None = None) -> int:
    """W of a group (see WIDTH_TARGET_FLOPS): a power of two from its shapes and the
    platform; with `largest`, the size of the group's largest batch of configurations
    that share its batch-uniform choices, at most the power of two that holds it (a
    small group is not padded to a wide call)."""
    platform = platform or jax.default_backend()
    target = WIDTH_TARGET_FLOPS.get(platform, WIDTH_TARGET_DEFAULT)
    cap = WIDTH_MAX.get(platform, WIDTH_MAX_DEFAULT)
    by_bytes = WIDTH_BYTES.get(platform, WIDTH_BYTES_DEFAULT) // max(config_bytes, 1)
    w = max(1, min(int(target // max(step_flops(prep), 1.0)), cap, by_bytes))
    w = 1 << (w.bit_length() - 1)
    if largest is not None:
        w = min(w, 1 << max(0, int(largest) - 1).bit_length())
    return w


# Widths planned in this process, per program key less the width (`Group.code_key`):
# a group whose own width (`config_width`) differs from one already planned for its
# program reuses that width when the model says padding its batches to it costs less
# run time than compiling another program (DEFAULT_COMPILE_S) -- so the stages of a
# tuned grid (many candidates, then a few extensions and the reported seeds) share one
# program. Every process of a sweep plans the same groups in the same order, so they
# agree; a repeated command chooses the same widths.
_PLANNED_WIDTHS: dict[tuple, set[int]] = {}
_PLANNED_LOCK = threading.Lock()


def remember_widths(plan: SweepPlan) -> None:
    """Record the widths of `plan`'s groups (see `_PLANNED_WIDTHS`), also of groups
    finished before (a resumed command then plans what follows as the first run did)."""
    with _PLANNED_LOCK:
        for g in plan.groups:
            _PLANNED_WIDTHS.setdefault(g.code_key(), set()).add(g.width)


def forget_widths() -> None:
    """Forget the widths planned in this process (with `sweep.clear_programs`)."""
    with _PLANNED_LOCK:
        _PLANNED_WIDTHS.clear()


def _model_seconds(classes: list[tuple[int, int]], width: int, flops: float, platform: str) -> float:
    """Model run seconds of a group's sets of configurations ((size, steps) each) at
    `width`: calls x steps x (per-call-step overhead + width x FLOPs / rate)."""
    overhead, rate = costs.default_model(platform)
    return sum(math.ceil(n / width) * steps * (overhead + width * flops / rate) for n, steps in classes)


def group_width(g: Group, largest: int, classes: list[tuple[int, int]], platform: str | None = None) -> int:
    """The width of group `g`: `config_width`, or a width already planned for its program
    in this process when the model run seconds it adds are below a compile's."""
    platform = platform or jax.default_backend()
    own = config_width(g.prepared, g.config_bytes, largest, platform)
    with _PLANNED_LOCK:
        known = sorted(_PLANNED_WIDTHS.get(g.code_key(), ()))
    if not known or own in known:
        return own
    flops = step_flops(g.prepared)
    compile_s = costs.DEFAULT_COMPILE_S
    best = min(known, key=lambda w: (_model_seconds(classes, w, flops, platform), w))
    if (
        _model_seconds(classes, best, flops, platform)
        < _model_seconds(classes, own, flops, platform) + compile_s
    ):
        return best
    return own


def _batch_size(n: int, per_dev: int, width: int, n_dev: int, split: int = 1) -> int:
    """Padded batch size for `n` configurations: at most `per_dev` per device (the
    memory budget's share) and PART_CONFIGS in all, a multiple of the width times the
    local device count, and at least `split` batches where the group is large enough
    (to share one group among processes)."""
    unit = width * n_dev
    cap = max(unit, min(per_dev * n_dev, PART_CONFIGS))
    nb = max(math.ceil(n / cap), min(split, math.ceil(n / unit)))
    return math.ceil(math.ceil(n / nb) / unit) * unit


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
            sizes = sorted({b.size for b in bs})
            per_device = g.data_bytes + g.config_bytes * g.width
            text = (
                f"group {gi}: {len(g.entries)} configs ({pending} pending), methods {', '.join(methods)}\n"
                f"    {g.label()}\n"
                f"    {len(bs)} batch(es) of {'/'.join(map(str, sizes)) or 0} (padded), "
                f"{g.width} configuration(s) per device and call; est. {format_bytes(g.config_bytes)} per "
                f"config, {format_bytes(g.data_bytes)} shared data, {format_bytes(per_device)} per device"
            )
            if estimates and gi in estimates:
                est = estimates[gi]
                how = "cached" if est["cached"] else "compile"
                basis = "measured here" if est["measured"] else "a guess: not run here yet"
                text += f"\n    est. {how} {est['compile_s']:.1f} s, run {est['run_s']:.1f} s ({basis})"
            lines.append(text)
        lines.append(
            f"compilations: {self.compilations} (one per group with pending work: its step program and "
            "its small init program)"
        )
        if estimates:
            compile_s = sum(e["compile_s"] for e in estimates.values())
            run_s = sum(e["run_s"] for e in estimates.values())
            measured = sum(1 for e in estimates.values() if e["measured"])
            if measured == len(estimates):
                basis = "every group's program measured here"
            elif all(e["calibrated"] for e in estimates.values()):
                basis = f"{len(estimates) - measured} group(s) guessed from the programs measured here"
            else:
                basis = "a guess from default rates: this machine has few measured programs yet"
            lines.append(f"estimated: compile {compile_s:.0f} s, run {run_s:.0f} s ({basis})")
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
    h.update(_keys_json(entries).encode())  # the set, not the order
    for arr in (
        (data or ()) + tuple(test_data or ()) + ((straggler_trace,) if straggler_trace is not None else ())
    ):
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _keys_json(entries: list[Entry]) -> str:
    """`json.dumps(sorted([e.method, e.config_id] for e in entries))`: where no id needs a
    JSON escape, written per method with its ids sorted as strings (sorting 10^6 pairs
    as lists took 3.6 s of a dry run, this 0.7 s)."""
    ids: dict = {}
    for e in entries:
        ids.setdefault(e.method, []).append(e.config_id)
    plain = all(isinstance(m, str) for m in ids) and all(isinstance(i, str) for v in ids.values() for i in v)
    if plain:
        text = "".join(i for v in ids.values() for i in v)
        plain = text.isascii() and text.isprintable() and '"' not in text and "\\" not in text
    if not plain:
        return json.dumps(sorted([e.method, e.config_id] for e in entries))
    parts = []
    for method in sorted(ids):
        head = f'[{json.dumps(method)}, "'
        parts.append(head + ('"], ' + head).join(sorted(ids[method])) + '"]')
    return "[" + ", ".join(parts) + "]"


def entries_of(grid: Grid) -> list[Entry]:
    if not isinstance(grid, Grid):
        raise ConfigError(f"grid={type(grid).__name__} is invalid: must be a coco_jax.Grid")
    keys = grid.static_keys()
    with gc_paused():
        return [
            Entry(i, m, c, config_id(c), None, k) for i, ((m, c), k) in enumerate(zip(grid.configs(), keys))
        ]


def make_plan(entries, groups, loads, done, budget, n_dev, n_proc, grid_hash, width=None) -> SweepPlan:
    """Batches of the pending configurations (a batch holds one value of each of its
    group's batch-uniform choices) and their assignment to processes; sets each group's
    width (`config_width`, or `width` when given, lowered where the budget admits fewer
    configurations per device)."""
    batches: list[Batch] = []
    busy = sum(1 for g in groups if any(e.key not in done for e in g.entries))
    # with several processes, whole groups go to processes (one compilation each);
    # groups are split across processes only when there are fewer groups than processes
    split = n_proc if busy < n_proc else 1
    for gi, g in enumerate(groups):
        per_dev = max(1, (budget - g.data_bytes) // max(g.config_bytes, 1))
        classes: dict[tuple, list[int]] = {}
        for e in g.entries:
            c = classes.setdefault(e.sig.uniform, [0, 0])
            c[0] += 1
            c[1] = max(c[1], e.sig.options["horizon"][0])
        largest = max(n for n, _ in classes.values())
        chosen = width or group_width(g, largest, [tuple(c) for c in classes.values()])
        g.width = max(1, min(chosen, per_dev))
        pending: dict[tuple, list] = {}
        for e in g.entries:
            if e.key not in done:
                pending.setdefault(e.sig.uniform, []).append(e)
        for same in pending.values():
            b = _batch_size(len(same), per_dev, g.width, n_dev, split)
            for i in range(0, len(same), b):
                part = same[i : i + b]
                batches.append(Batch(gi, part, math.ceil(len(part) / (g.width * n_dev)) * g.width * n_dev))
    # longest-processing-time assignment of batches to processes (deterministic)
    load = [0.0] * n_proc
    assignment = [0] * len(batches)
    cost = [
        b.size * b.entries[0].sig.options["horizon"][0] * (groups[b.group].config_bytes + 1) for b in batches
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
    width: int | None = None,
) -> SweepPlan:
    """Group, size and batch a grid without compiling anything (the --dry-run view).
    With `out`, configurations already finished there (same grid) count as done;
    `width` overrides every group's width (`config_width`)."""
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
        width,
    )
