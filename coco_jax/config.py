"""Experiment configuration: one frozen dataclass, its validation, and the split of
its fields into the static part (`Static`: picks the compiled program) and the dynamic
part (`HParams`: a pytree of arrays that can be vmapped without recompiling).

Each field declares itself: its documentation, its group (for `coco-jax run --help`),
whether it is dynamic, and its allowed values (a fixed tuple, or the registry whose
registered names it takes, see `coco_jax.registry`). `DYNAMIC_FIELDS`, `HParams` and
`hparams_of` are generated from those declarations.

Validation (`validate`) checks every field on its own and against the others, then
runs the config-time checks that each kind of component installed in its registry
(`registry.CONFIG_REGISTRIES`): this module imports no component.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax import registry
from coco_jax.errors import ConfigError, fail

LINEAR_TASKS = ("linreg", "logreg", "softmax")
STRAGGLER_ERRORS = ("keep", "reset", "accumulate")
OPTIMIZERS = ("sgd", "momentum", "adam")
# eta_t = lr * f(t), t the 0-based iteration, t0 = lr_decay_steps (`coco_jax.schedules`)
LR_SCHEDULES = ("constant", "inverse_time", "inverse_sqrt", "cosine", "step")
PARTITIONINGS = ("contiguous", "iid", "sorted", "dirichlet")
DTYPES = ("float32", "float64")

# Groups of fields, in the order `coco-jax run --help` shows them.
GROUPS = (
    "task and data",
    "devices and code",
    "stragglers",
    "compression and feedback",
    "optimisation and run",
)


def _field(
    default: Any,
    doc: str,
    group: str,
    *,
    dynamic: bool = False,
    choices: tuple[str, ...] | None = None,
    registry_of: registry.Registry | None = None,
    to_hp: Callable[[Any, Any], np.ndarray] | None = None,
):
    """A config field with its declaration in `metadata` (see the module docstring).

    `to_hp(cfg, float dtype)` converts a dynamic field to its HParams array when the
    default conversion (floats to the run's float dtype, ints to int32) does not fit.
    """
    meta = {"doc": doc, "group": group, "dynamic": dynamic, "choices": choices, "registry": registry_of}
    if to_hp is not None:
        meta["to_hp"] = to_hp
    return dataclasses.field(default=default, metadata=meta)


def _straggler_probs_hp(cfg, dt) -> np.ndarray:
    probs = cfg.straggler_probs
    return np.asarray(probs if probs is not None else (cfg.straggler_prob,) * cfg.num_devices, dt)


def _wait_for_hp(cfg, dt) -> np.ndarray:
    return np.asarray(cfg.num_devices if cfg.wait_for is None else cfg.wait_for, np.int32)


def _seed_hp(cfg, dt) -> np.ndarray:
    return np.asarray(cfg.seed, np.uint32)


def _lr_schedule_hp(cfg, dt) -> np.ndarray:
    # the schedule is a traced index: its formulas are a few scalar operations, so every
    # schedule shares one compiled program
    return np.asarray(LR_SCHEDULES.index(cfg.lr_schedule), np.int32)


def _lr_decay_steps_hp(cfg, dt) -> np.ndarray:
    return np.asarray(cfg.steps if cfg.lr_decay_steps is None else cfg.lr_decay_steps, dt)


def _upload_bandwidth_hp(cfg, dt) -> np.ndarray:
    return np.asarray(np.inf if cfg.upload_bandwidth is None else cfg.upload_bandwidth, dt)


def _diana_alpha_hp(cfg, dt) -> np.ndarray:
    # None: the compressor's bound 1/(ω+1), resolved by `engine.prepare` (needs d)
    return np.asarray(np.nan if cfg.diana_alpha is None else cfg.diana_alpha, dt)


_DATA, _CODE, _STRAG, _COMP, _OPT = GROUPS


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One simulated distributed-learning run. See ../shared/DESIGN.md ("Semantics
    contract") and the README; `coco-jax run --help` lists every field with its
    documentation, default and allowed values.

    Example:
        >>> cfg = ExperimentConfig(task="logreg", num_devices=10, redundancy=2)
        >>> cfg.num_partitions_resolved
        10
    """

    # task and data
    task: str = _field(
        "linreg", "linear task (linreg, logreg, softmax) or a registered model (mlp, cnn, ...)", _DATA,
        registry_of=registry.MODELS,
    )  # fmt: skip
    dataset: str = _field(
        "synthetic", "named dataset (no download; files from data_dir)", _DATA, registry_of=registry.DATASETS
    )
    num_samples: int = _field(1024, "synthetic: training rows", _DATA)
    num_test: int = _field(256, "synthetic: test rows", _DATA)
    num_features: int = _field(32, "synthetic: dimension of one row", _DATA)
    num_classes: int = _field(3, "synthetic softmax/mlp: number of classes", _DATA)
    noise: float = _field(0.1, "synthetic: label noise (linreg: std; classification: flip rate)", _DATA)
    data_seed: int = _field(0, "seed of the synthetic data and of the train/test split", _DATA)
    test_fraction: float = _field(0.2, "held-out share of the bundled real datasets", _DATA)
    data_dir: str | None = _field(None, "directory of mnist / fashion_mnist / cifar10 files", _DATA)
    partitioning: str = _field(
        "contiguous", "how rows are split into partitions (sorted/dirichlet: by label)", _DATA,
        choices=PARTITIONINGS,
    )  # fmt: skip
    dirichlet_alpha: float = _field(0.5, "dirichlet partitioning: concentration (small = skewed)", _DATA)
    hidden_sizes: tuple[int, ...] = _field((32,), "mlp: hidden layer widths (comma list)", _DATA)
    cnn_channels: tuple[int, ...] = _field((8, 16), "cnn: conv layer widths (comma list)", _DATA)
    batch_size: int | None = _field(None, "rows per partition gradient; none = full batch", _DATA)
    shared_minibatch: bool = _field(False, "one minibatch per partition shared by its holders", _DATA)

    # devices and code
    num_devices: int = _field(8, "M, the simulated devices", _CODE)
    num_partitions: int | None = _field(None, "K, the data partitions; none = M", _CODE)
    redundancy: int = _field(1, "s: each partition is held by s+1 devices", _CODE)
    allocation: str = _field("cyclic", "gradient code: which device holds which partition", _CODE,
                             registry_of=registry.CODES)  # fmt: skip
    decoder: str = _field(
        "fixed", "decoding weights of the delivered messages", _CODE, registry_of=registry.DECODERS
    )

    # stragglers
    straggler: str = _field("bernoulli", "straggler model", _STRAG, registry_of=registry.STRAGGLER_MODELS)
    straggler_prob: float = _field(0.2, "p: straggling probability (bernoulli; nominal rate of trace)", _STRAG,
                                   dynamic=True)  # fmt: skip
    straggler_probs: tuple[float, ...] | None = _field(
        None, "heterogeneous: per-device probabilities (comma list of M)", _STRAG, dynamic=True,
        to_hp=_straggler_probs_hp,
    )  # fmt: skip
    straggler_count: int = _field(1, "fixed_count: devices that straggle each step", _STRAG, dynamic=True)
    markov_p_gb: float = _field(0.1, "markov: P(good -> bad)", _STRAG, dynamic=True)
    markov_p_bg: float = _field(0.4, "markov: P(bad -> good)", _STRAG, dynamic=True)
    latency_shift: float = _field(
        1.0, "latency: per-partition time = shift + Exp(rate)", _STRAG, dynamic=True
    )
    latency_rate: float = _field(1.0, "latency: rate of the exponential part", _STRAG, dynamic=True)
    latency_fixed: float = _field(
        0.0, "latency: mean of a load-independent Exp delay added to every device's time", _STRAG,
        dynamic=True,
    )  # fmt: skip
    deadline: float = _field(4.0, "latency: devices slower than this straggle", _STRAG, dynamic=True)
    wait_for: int | None = _field(None, "latency: wait for the n fastest devices instead of a deadline",
                                  _STRAG, dynamic=True, to_hp=_wait_for_hp)  # fmt: skip
    upload_bandwidth: float | None = _field(
        None, "bits per simulated second a device uploads; a message arrives bits/bandwidth after its "
        "compute time (none = instantaneous)", _STRAG, dynamic=True, to_hp=_upload_bandwidth_hp,
    )  # fmt: skip

    # compression and feedback
    compressor: str = _field("topk", "gradient compressor", _COMP, registry_of=registry.COMPRESSORS)
    compress_k: int | None = _field(None, "k, kept entries (topk, randk, ...); none = ratio * d", _COMP)
    compress_ratio: float = _field(0.1, "k = max(1, round(ratio * d)) when compress_k is none", _COMP)
    qsgd_levels: int = _field(4, "qsgd / topk_qsgd: quantisation levels", _COMP)
    group_size: int | None = _field(None, "grouped_sign: group size; none = one group per layer", _COMP)
    error_feedback: str = _field("ef", "error-feedback rule", _COMP, registry_of=registry.FEEDBACKS)
    straggler_error: str = _field("keep", "ef: what a straggler does with its error memory", _COMP,
                                  choices=STRAGGLER_ERRORS)  # fmt: skip
    device_momentum: float = _field(0.0, "momentum beta before compression; 0 = off", _COMP, dynamic=True)
    diana_alpha: float | None = _field(
        None, "DIANA shift step size; none = 1/(omega+1) of the compressor", _COMP, dynamic=True,
        to_hp=_diana_alpha_hp,
    )  # fmt: skip

    # server optimiser and run
    optimizer: str = _field("sgd", "server optimiser", _OPT, choices=OPTIMIZERS)
    lr: float = _field(0.1, "server learning rate (0 freezes the parameters)", _OPT, dynamic=True)
    lr_schedule: str = _field(
        "constant", "step size eta_t = lr * f(t/t0): constant, inverse_time 1/(1+t/t0), inverse_sqrt, "
        "cosine (to 0 at t0), step (x0.1 every t0)", _OPT, dynamic=True, choices=LR_SCHEDULES,
        to_hp=_lr_schedule_hp,
    )  # fmt: skip
    lr_decay_steps: float | None = _field(
        None, "t0, the schedule's horizon in iterations (none = steps)", _OPT, dynamic=True,
        to_hp=_lr_decay_steps_hp,
    )  # fmt: skip
    momentum: float = _field(0.9, "momentum of optimizer=momentum", _OPT, dynamic=True)
    steps: int = _field(200, "iterations", _OPT)
    eval_every: int = _field(1, "evaluate every this many steps (and at the last)", _OPT)
    seed: int = _field(0, "seed of everything random in the run (code, stragglers, compression)", _OPT,
                       dynamic=True, to_hp=_seed_hp)  # fmt: skip
    dtype: str = _field("float32", "float dtype (float64 needs jax x64 enabled)", _OPT, choices=DTYPES)

    def __post_init__(self):
        validate(self)

    @property
    def num_partitions_resolved(self) -> int:
        return self.num_devices if self.num_partitions is None else self.num_partitions

    def replace(self, **changes) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
FIELD_NAMES = tuple(FIELDS)
DYNAMIC_FIELDS = tuple(n for n, f in FIELDS.items() if f.metadata["dynamic"])
STATIC_FIELDS = tuple(n for n in FIELD_NAMES if n not in DYNAMIC_FIELDS)
_DYNAMIC_SET = frozenset(DYNAMIC_FIELDS)
registry.declare_fields(STATIC_FIELDS, DYNAMIC_FIELDS)

# Fields a named dataset depends on (its factory's arguments and the task that shapes
# it): configurations equal on these share a dataset.
DATASET_FIELDS = ("task", *registry.DATASET_FIELDS)

# Fields that change only the values of the data a run reads (an input of its compiled
# program), never a shape or a code path: configurations that differ only in them share
# one program, unless one of their component factories asks for such a field by name
# (`engine.program_fields`).
DATA_VALUE_FIELDS = ("data_seed", "partitioning", "dirichlet_alpha", "noise", "test_fraction", "data_dir")


def allowed_values(name: str) -> tuple[str, ...] | None:
    """The values a choice field accepts (registered names for registry fields)."""
    meta = FIELDS[name].metadata
    if meta["registry"] is not None:
        names = meta["registry"].names()
        return (*LINEAR_TASKS, *names) if name == "task" else names
    return meta["choices"]


# ------------------------------------------------------------------- validation


def _choice(cfg, field: str) -> None:
    value = getattr(cfg, field)
    options = allowed_values(field)
    if value in options:
        return
    reg = FIELDS[field].metadata["registry"]
    if reg is not None and not (field == "task" and value in LINEAR_TASKS):
        msg = reg.unknown_message(value)
        if field == "task":
            msg = msg.replace("must be one of ", f"must be one of {', '.join(LINEAR_TASKS)}, ", 1)
        raise ConfigError(msg)
    fail(field, value, f"must be one of {', '.join(options)}")


def _int(cfg, field: str, low: int | None = None, high: int | None = None, *, what=None):
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(field, value, "must be an integer")
    if low is not None and value < low:
        fail(field, value, what or f"must be >= {low}")
    if high is not None and value > high:
        fail(field, value, what or f"must be <= {high}")


def _real(cfg, field: str, *, low=None, high=None, low_open=False, high_open=False):
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        fail(field, value, "must be a real number")
    if not math.isfinite(value):
        fail(field, value, "must be finite")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        fail(field, value, f"must lie in {lb}{low}, {high}{hb}")


def _positive_tuple(cfg, field: str) -> None:
    widths = getattr(cfg, field)
    if not isinstance(widths, tuple) or not all(
        isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        fail(field, widths, "must be a tuple of positive integers")


def _validate_devices(cfg) -> None:
    _int(cfg, "num_devices", 1)
    m = cfg.num_devices
    if cfg.num_partitions is not None:
        _int(cfg, "num_partitions", 1)
    _int(cfg, "redundancy", 0, m - 1, what=f"must satisfy 0 <= redundancy < num_devices={m}")


def _check_straggler_probs(cfg) -> None:
    m = cfg.num_devices
    probs = cfg.straggler_probs
    if cfg.straggler == "heterogeneous" and (probs is None or len(probs) != m):
        fail(
            "straggler_probs",
            probs,
            f"straggler='heterogeneous' needs a sequence of num_devices={m} probabilities",
        )
    if probs is not None:
        if not isinstance(probs, tuple):
            fail("straggler_probs", probs, "must be a tuple of floats")
        for p in probs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                fail("straggler_probs", probs, "every entry must lie in [0, 1)")
        if len(probs) != m:
            fail("straggler_probs", probs, f"must have length num_devices={m}")


def _check_wait_for(cfg) -> None:
    if cfg.wait_for is not None:
        m = cfg.num_devices
        _int(cfg, "wait_for", 1, m, what=f"must satisfy 1 <= wait_for <= num_devices={m}")
        if cfg.straggler != "latency":
            fail("wait_for", cfg.wait_for, "is only used with straggler='latency'; set it to None")


def _optional(check):
    def run(cfg, name):
        if getattr(cfg, name) is not None:
            check(cfg, name)

    return run


# The checks of the dynamic fields, in the order they run: (field, fields of the
# configuration it is checked against, check(cfg, field)). Each depends on nothing else,
# so its verdict is kept per value and context (`_check_dynamic`).
_DYNAMIC_CHECKS = (
    ("lr_schedule", (), _choice),
    ("straggler_prob", (), lambda c, n: _real(c, n, low=0.0, high=1.0, high_open=True)),
    ("straggler_probs", ("num_devices", "straggler"), lambda c, n: _check_straggler_probs(c)),
    (
        "straggler_count",
        ("num_devices",),
        lambda c, n: _int(
            c,
            n,
            0,
            c.num_devices - 1,
            what=f"must satisfy 0 <= straggler_count < num_devices={c.num_devices}",
        ),
    ),
    ("markov_p_gb", (), lambda c, n: _real(c, n, low=0.0, high=1.0)),
    ("markov_p_bg", (), lambda c, n: _real(c, n, low=0.0, high=1.0, low_open=True)),
    ("latency_shift", (), lambda c, n: _real(c, n, low=0.0)),
    ("latency_rate", (), lambda c, n: _real(c, n, low=0.0, low_open=True)),
    ("deadline", (), lambda c, n: _real(c, n, low=0.0, low_open=True)),
    ("latency_fixed", (), lambda c, n: _real(c, n, low=0.0)),
    ("upload_bandwidth", (), _optional(lambda c, n: _real(c, n, low=0.0, low_open=True))),
    ("wait_for", ("num_devices", "straggler"), lambda c, n: _check_wait_for(c)),
    ("device_momentum", (), lambda c, n: _real(c, n, low=0.0, high=1.0, high_open=True)),
    ("diana_alpha", (), _optional(lambda c, n: _real(c, n, low=0.0, high=1.0, low_open=True))),
    ("lr", (), lambda c, n: _real(c, n, low=0.0)),
    ("lr_decay_steps", (), _optional(lambda c, n: _real(c, n, low=0.0, low_open=True))),
    ("momentum", (), lambda c, n: _real(c, n, low=0.0, high=1.0, high_open=True)),
    ("seed", (), lambda c, n: _int(c, n, 0)),
)


def _validate_static_fields(cfg) -> None:
    """Every check that reads only static fields (the registries' excepted)."""
    for name in STATIC_FIELDS:
        meta = FIELDS[name].metadata
        if meta["choices"] is not None or meta["registry"] is not None:
            _choice(cfg, name)
    _validate_devices(cfg)
    if cfg.compress_k is not None:
        _int(cfg, "compress_k", 1)
    _real(cfg, "compress_ratio", low=0.0, high=1.0, low_open=True)
    _int(cfg, "qsgd_levels", 1)
    if cfg.group_size is not None:
        _int(cfg, "group_size", 1)
    _int(cfg, "steps", 1)
    _int(cfg, "eval_every", 1)
    _int(cfg, "data_seed", 0)
    _validate_data(cfg)


def _validate_data(cfg) -> None:
    """The data fields on their own (the dataset's own constraints are its registry's
    config checks, `coco_jax.data`)."""
    _int(cfg, "num_samples", 1)
    _int(cfg, "num_test", 0)
    _int(cfg, "num_features", 1)
    _int(cfg, "num_classes", 2)
    _real(cfg, "noise", low=0.0)
    _real(cfg, "test_fraction", low=0.0, high=1.0, high_open=True)
    _real(cfg, "dirichlet_alpha", low=0.0, low_open=True)
    _positive_tuple(cfg, "hidden_sizes")
    _positive_tuple(cfg, "cnn_channels")
    if cfg.batch_size is not None:
        _int(cfg, "batch_size", 1)
    if not isinstance(cfg.shared_minibatch, bool):
        fail("shared_minibatch", cfg.shared_minibatch, "must be True or False")
    if cfg.task == "linreg" and cfg.partitioning in ("sorted", "dirichlet"):
        fail("partitioning", cfg.partitioning, "label-based partitioning needs a classification task")


def validate(cfg: ExperimentConfig, *, memo: dict | None = None, static_key=None, varied=None) -> None:
    """Check every field on its own and against the others, then run every registry's
    config-time checks (`registry.CONFIG_REGISTRIES`: the code is built, the decoder
    and the feedback rule checked against it and the compressor, the dataset against
    the task, ...). Data-dependent checks (k <= d, rows divisible by K, trace shape)
    happen in `engine.prepare`, before anything compiles.

    A grid validates many configurations that share their static fields, so verdicts
    are kept (in `memo`, by default the process's): the static checks and each
    registry's checks per value of the static fields and the registrations, each
    dynamic field's check per value and context. A registry check that reads a dynamic
    field (a registration's own ``validate=`` may) is noticed and then runs for every
    configuration. `Grid` passes its own `static_key` (what decides the static fields
    and the dynamic fields it does not vary: the preset and the static axes' values)
    and `varied`, the dynamic fields its axes set."""
    memo = _VERDICTS if memo is None else memo
    if static_key is None:
        static_key = _static_key(cfg)
        varied = _DYNAMIC_SET
    if static_key is None:  # an unhashable value: the checks say what is wrong with it
        _validate_static_fields(cfg)
        for name, _, check in _DYNAMIC_CHECKS:
            check(cfg, name)
        for reg in registry.CONFIG_REGISTRIES:
            reg.check_config(cfg)
        return
    fixed, checked = _check_plan(varied)
    _remembered(memo, ("static", static_key), lambda: _static_checks(cfg, fixed))
    for name, ctx, check in checked:
        _check_dynamic(cfg, memo, name, ctx, check)
    dynamic = _READS_DYNAMIC.copy()
    _remembered(memo, ("registries", static_key, len(dynamic)), lambda: _registry_checks(cfg, dynamic))
    for reg in registry.CONFIG_REGISTRIES:
        if reg in dynamic:
            reg.check_config(cfg)


def _check_dynamic(cfg, memo: dict, name: str, ctx: tuple, check) -> None:
    """One dynamic field's check (`_DYNAMIC_CHECKS`), its verdict kept per value and context."""
    value = getattr(cfg, name)
    try:
        vkey = (name, _typed(value), tuple(getattr(cfg, c) for c in ctx)) if ctx else (name, _typed(value))
        hit = memo.get(vkey, _MISSING)
    except TypeError:
        check(cfg, name)
        return
    if hit is None:
        return
    if hit is not _MISSING:
        raise ConfigError(hit)
    _remembered(memo, vkey, lambda: check(cfg, name))


def dynamic_values_valid(cfg: ExperimentConfig, values: dict[str, list], *, memo: dict, varied) -> bool:
    """Whether every configuration equal to `cfg` but for the dynamic fields of `values`,
    each at any of its listed values, passes `validate(..., memo=memo, varied=varied)`
    with `cfg`'s static key, given that `cfg` passed it: each value's check runs once
    (kept in `memo`), none per configuration. False where that is not known: a value
    fails its check, a field of `values` is not in `varied`, a check reads a field
    `varied` holds, or a registry's check reads dynamic fields (`validate` then runs it
    for every configuration). A registry check that passed on `cfg`'s static view read
    no dynamic field, so its verdict holds for every such configuration."""
    if not varied.issuperset(values) or any(reg in _READS_DYNAMIC for reg in registry.CONFIG_REGISTRIES):
        return False
    probe = ExperimentConfig.__new__(ExperimentConfig)
    probe.__dict__.update(cfg.__dict__)
    for name, ctx, check in _check_plan(varied)[1]:
        if name not in values:
            continue
        if varied.intersection(ctx):
            return False
        for value in values[name]:
            probe.__dict__[name] = value
            try:
                _check_dynamic(probe, memo, name, ctx, check)
            except ConfigError:
                return False
        probe.__dict__[name] = getattr(cfg, name)
    return True


_MISSING = object()
_CHECK_PLANS: dict = {}


def _check_plan(varied) -> tuple[tuple, tuple]:
    """(dynamic checks run with the static ones, dynamic checks run per value) for the
    dynamic fields `varied`."""
    plan = _CHECK_PLANS.get(varied)
    if plan is None:
        fixed = tuple(c for c in _DYNAMIC_CHECKS if c[0] not in varied)
        checked = tuple(c for c in _DYNAMIC_CHECKS if c[0] in varied)
        plan = _CHECK_PLANS[varied] = (fixed, checked)
    return plan


def _static_checks(cfg, fixed) -> None:
    _validate_static_fields(cfg)
    for name, _, check in fixed:
        check(cfg, name)


def _registry_checks(cfg, dynamic: set) -> None:
    """The checks of every registry not known to read dynamic fields, on the static view
    of `cfg` (`_check_registry`); not remembered when one of them turns out to."""
    forget = None
    for reg in registry.CONFIG_REGISTRIES:
        if reg in dynamic:
            continue
        try:
            _check_registry(reg, cfg)
        except _Unremembered as skip:
            if skip.error is not None:
                raise
            forget = skip
    if forget is not None:
        raise forget


def build(fields: dict, *, memo: dict, static_key, varied) -> ExperimentConfig:
    """`ExperimentConfig(**fields)` for a grid: `fields` holds every field; validated
    with the grid's verdicts (`validate`'s `memo`, `static_key`, `varied`)."""
    cfg = ExperimentConfig.__new__(ExperimentConfig)
    cfg.__dict__.update(fields)
    validate(cfg, memo=memo, static_key=static_key, varied=varied)
    return cfg


_VERDICTS: dict = {}  # key -> None (valid) or the ConfigError message
_VERDICTS_MAX = 100_000
_READS_DYNAMIC: set = set()  # registries one of whose checks reads a dynamic field


class _NeedsDynamic(BaseException):
    """A registry check read a dynamic field through `_StaticView` (not an Exception, so
    a registration's error wrapping does not catch it)."""


class _StaticView:
    """A configuration whose dynamic fields (and whole-configuration methods) cannot be
    read: a registry check that passes on it depends on the static fields only."""

    __slots__ = ("_cfg",)

    def __init__(self, cfg):
        object.__setattr__(self, "_cfg", cfg)

    def __getattr__(self, name: str):
        if name in _DYNAMIC_SET or name in ("replace", "to_dict", "__dict__"):
            raise _NeedsDynamic(name)
        return getattr(object.__getattribute__(self, "_cfg"), name)


def _check_registry(reg, cfg) -> None:
    """`reg.check_config` on the static view of `cfg`; when it reads a dynamic field (or
    fails only on the view) the registry is marked to run on every configuration."""
    try:
        reg.check_config(_StaticView(cfg))
        return
    except _NeedsDynamic:
        pass
    except ConfigError as err:
        try:
            reg.check_config(cfg)
        except ConfigError as real:
            if str(real) == str(err):
                raise
            _READS_DYNAMIC.add(reg)
            raise _Unremembered(real) from None
        _READS_DYNAMIC.add(reg)
        raise _Unremembered(None) from None
    _READS_DYNAMIC.add(reg)
    try:
        reg.check_config(cfg)
    except ConfigError as real:
        raise _Unremembered(real) from None
    raise _Unremembered(None)


class _Unremembered(Exception):
    """A verdict that must not be kept (it depends on dynamic fields): its error or None."""

    def __init__(self, error):
        super().__init__()
        self.error = error


def _remembered(memo: dict, key, check) -> None:
    """Run `check()` once per `key`; later calls repeat its verdict (its ConfigError)."""
    if key in memo:
        message = memo[key]
        if message is not None:
            raise ConfigError(message)
        return
    try:
        check()
    except ConfigError as err:
        if len(memo) < _VERDICTS_MAX:
            memo[key] = str(err)
        raise
    except _Unremembered as skip:
        if skip.error is not None:
            raise skip.error from None
        return
    if len(memo) < _VERDICTS_MAX:
        memo[key] = None


def _typed(value):
    """`value` with its type (1, 1.0 and True are equal keys but not equal fields)."""
    if isinstance(value, tuple):
        return (tuple, value, tuple(map(type, value)))
    return (type(value), value)


def _static_key(cfg) -> tuple | None:
    """The static fields with their types and the registrations they name, or None
    when a value is unhashable."""
    try:
        fields = tuple(_typed(getattr(cfg, n)) for n in STATIC_FIELDS)
        regs = []
        for name in FIELD_NAMES:
            reg = FIELDS[name].metadata["registry"]
            if reg is not None:
                value = getattr(cfg, name)
                regs.append(reg.entry(value).serial if value in reg else None)
        checks = tuple(len(reg.config_checks) for reg in registry.CONFIG_REGISTRIES)
        key = (fields, tuple(regs), checks)
        hash(key)
    except TypeError:
        return None
    return key


# ---------------------------------------------------------- static / dynamic


# Choice kinds. A choice is static for one configuration (it picks a code path), but the
# configurations of a sweep group that differ only in choices share one compiled program
# that holds every option of the group and picks one per configuration. How a kind enters
# the program decides what it costs (measured: docs/performance.md, "One program per
# shape"):
#   traced    a per-configuration index, vmapped with the batch. Under vmap a batched
#             index evaluates every option for every configuration and keeps the chosen
#             result, so only options that are all cheap are traced:
#     code      deterministic codes (allocation, redundancy): B is a constant
#               [options, M, K]; the encode gathers the largest row load of the options
#               (a few M·d multiply-adds). Random codes (bernoulli) stay static (the
#               dense B @ grads for every configuration).
#     decoder   fixed and received weights: O(M) arithmetic (when the group also holds a
#               decoder that is not `traceable`, e.g. the optimal least-squares decoder,
#               the whole kind is batch-uniform instead).
#     straggler stateless models (with their latency wait mode): O(M) random numbers and
#               a sort of M arrival times. A model with state (markov) stays static.
#     k         the kept entries of top-k / rand-k: one k per configuration, selected by
#               a threshold bisection (31 compare-and-count passes over [d]) instead of
#               a partial sort of static length; bits come from the traced k.
#   uniform   one value for a whole batch, passed unbatched: `lax.switch` runs only the
#             chosen option while the program holds all of them, and a group's batches
#             are formed per value. For choices whose options are expensive or differ
#             in state:
#     variant   the compressor and the feedback rule (with the static fields their
#               factories read: straggler_error, qsgd_levels, group_size, ...): their
#               device memories share one union state; every option would cost a
#               compression per device and configuration if it were traced.
#     horizon   steps and eval_every: a group compiles for its longest run and its most
#               evaluated steps; a batch stops after its own steps, and evaluation stays
#               under a `lax.cond` that runs only on evaluated steps (a traced horizon
#               would evaluate on every step).
# Everything else that picks a code path (task, model, data, shapes, optimizer, dtype,
# device momentum, random codes, stateful straggler models) stays static: one program each.
CHOICES = {
    "code": ("allocation", "redundancy"),
    "decoder": ("decoder",),
    "straggler": ("straggler",),
    "k": ("compress_k", "compress_ratio"),
    "variant": ("compressor", "error_feedback", "straggler_error", "qsgd_levels", "group_size"),
    "horizon": ("steps", "eval_every"),
}
CHOICE_FIELDS = tuple(f for fields in CHOICES.values() for f in fields)
# Kinds that are always batch-uniform when a group merges them; decoder and straggler
# are batch-uniform in a group whose options are not all cheap (`Static.uniform`).
UNIFORM_KINDS = ("variant", "horizon")
# Per-configuration indices into its group's options (0 outside a merged group).
CHOICE_HPARAMS = tuple(f"{kind}_choice" for kind in CHOICES if kind != "horizon")
# The horizon enters the program as values, not as an index.
HORIZON_HPARAMS = ("steps", "eval_every")

HParams = dataclasses.make_dataclass(
    "HParams",
    [(name, jax.Array) for name in (*DYNAMIC_FIELDS, *HORIZON_HPARAMS, *CHOICE_HPARAMS)],
    frozen=True,
)
HParams.__module__ = __name__
HParams = jax.tree_util.register_dataclass(HParams)
HParams.__doc__ = (
    "The dynamic fields of one configuration as arrays: a vmappable pytree whose values "
    "never change the compiled program. Generated from the fields marked dynamic ("
    + ", ".join(DYNAMIC_FIELDS)
    + "), the run's horizon (steps, eval_every) and the indices of its choices among its "
    "group's options (" + ", ".join(CHOICE_HPARAMS) + ")."
)
HPARAM_NAMES = tuple(f.name for f in dataclasses.fields(HParams))


def uniform_hparams(uniform_kinds) -> tuple[str, ...]:
    """The `HParams` fields that are one value per batch in a group whose batch-uniform
    choice kinds are `uniform_kinds` (the horizon always is)."""
    names = list(HORIZON_HPARAMS)
    names += [f"{kind}_choice" for kind in uniform_kinds if kind != "horizon"]
    return tuple(names)


def _or(values: list, default) -> list:
    return [default if v is None else v for v in values]


# Column-wise forms of the `to_hp` conversions (`hparams_column`): a batch's values at once.
_HP_COLUMNS = {
    "straggler_probs": lambda cfgs, dt: np.stack([_straggler_probs_hp(c, dt) for c in cfgs]),
    "wait_for": lambda cfgs, dt: np.asarray(
        [c.num_devices if c.wait_for is None else c.wait_for for c in cfgs], np.int32
    ),
    "seed": lambda cfgs, dt: np.asarray([c.seed for c in cfgs], np.uint32),
    "lr_schedule": lambda cfgs, dt: np.asarray([_SCHEDULE_INDEX[c.lr_schedule] for c in cfgs], np.int32),
    "lr_decay_steps": lambda cfgs, dt: np.asarray(
        [c.steps if c.lr_decay_steps is None else c.lr_decay_steps for c in cfgs], dt
    ),
    "upload_bandwidth": lambda cfgs, dt: np.asarray(_or([c.upload_bandwidth for c in cfgs], np.inf), dt),
    "diana_alpha": lambda cfgs, dt: np.asarray(_or([c.diana_alpha for c in cfgs], np.nan), dt),
}
_SCHEDULE_INDEX = {name: i for i, name in enumerate(LR_SCHEDULES)}


def hparams_column(name: str, cfgs: list, dt) -> np.ndarray:
    """The `HParams` field `name` of the dynamic field of that name for `cfgs` stacked
    (what `np.stack([hparams_of(c).<name> for c in cfgs])` gives), computed column-wise."""
    conv = _HP_COLUMNS.get(name)
    if conv is not None:
        return conv(cfgs, dt)
    values = [getattr(c, name) for c in cfgs]
    return np.asarray(values, np.int32 if FIELDS[name].type == "int" else dt)


def float_dtype_of(dtype=None) -> np.dtype:
    """A float dtype as jax holds it: float64 only where jax x64 is enabled, else
    float32; a non-float dtype gives float32 and None the widest float."""
    dt = jnp.dtype(jnp.float64 if dtype is None else dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        dt = jnp.dtype(jnp.float32)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(dt))


def float_dtype(cfg) -> Any:
    """The run's float dtype (the scalar type, e.g. jnp.float32): float64 only where
    jax x64 is enabled."""
    return jnp.float64 if float_dtype_of(cfg.dtype) == jnp.float64 else jnp.float32


def hparams_of(cfg: ExperimentConfig) -> HParams:
    """The dynamic fields of `cfg` as numpy scalars/arrays (stackable for a sweep):
    floats in the run's float dtype, ints as int32, or the field's own `to_hp`."""
    dt = np.float64 if float_dtype(cfg) == jnp.float64 else np.float32
    values = {name: np.asarray(0, np.int32) for name in CHOICE_HPARAMS}
    values["steps"] = np.asarray(cfg.steps, np.int32)
    values["eval_every"] = np.asarray(cfg.eval_every, np.int32)
    for name in DYNAMIC_FIELDS:
        meta = FIELDS[name].metadata
        if "to_hp" in meta:
            values[name] = meta["to_hp"](cfg, dt)
        else:
            value = getattr(cfg, name)
            values[name] = np.asarray(value, np.int32 if FIELDS[name].type == "int" else dt)
    return HParams(**values)


class StaticFields:
    """Read-only view of a configuration's static fields (`Static.cfg`). Reading a
    dynamic field, or a choice field that this group merges, raises: its value differs
    between the configurations that share a compiled program, so code inside the
    program must read it from `HParams` (or the group's options)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]):
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        if name in DYNAMIC_FIELDS:
            raise AttributeError(f"{name!r} is a dynamic field: read it from HParams inside the program")
        if name in CHOICE_FIELDS:
            raise AttributeError(f"{name!r} is a choice this group merges: use the group's options")
        if name in DATA_VALUE_FIELDS:
            raise AttributeError(
                f"{name!r} changes only the data's values, an input of the program, so it is not part of "
                "the program; a component factory that needs it must take it as a named argument"
            )
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("StaticFields is read-only")

    @property
    def num_partitions_resolved(self) -> int:
        k = self._values["num_partitions"]
        return self._values["num_devices"] if k is None else k

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything that changes a shape or a code path: one compiled program per value.
    Built by `engine.prepare` from a configuration and its data (one configuration), or
    by `coco_jax.plan` for a group that merges choices; hashable.

    The on/off switch of device momentum is an explicit flag (its value is dynamic).
    `components` names each registered component with its registration serial, so
    re-registering a name never reuses a program compiled for the old factory.
    `steps` and `points` are the longest run and the most evaluated steps of the
    group (a configuration's own are its `HParams.steps` / `eval_every`).
    """

    # the static config fields, less merged choice fields and the DATA_VALUE_FIELDS no
    # component asks for (`engine.program_fields`)
    fields: tuple[tuple[str, Any], ...]
    feature_shape: tuple[int, ...]  # shape of one data row
    num_classes: int  # 0 for regression
    dim: int  # d, the flat parameter count
    compress_k: int  # k of the group's first configuration
    device_momentum: bool
    wait_mode: bool  # the first configuration's latency wait mode
    components: tuple[tuple[str, str, int], ...] = ()
    # merged choices of a sweep group: (kind, options) for each of `CHOICES` whose
    # options differ (see `options` for what an option is)
    choices: tuple[tuple[str, tuple], ...] = ()
    uniform: tuple[str, ...] = ()  # the merged kinds that are batch-uniform (lax.switch)
    steps: int = 0  # the longest run of the group
    points: int = 0  # the most evaluated steps of a run of the group

    @property
    def cfg(self) -> StaticFields:
        return StaticFields(dict(self.fields))

    def options(self, kind: str) -> tuple:
        """The group's options of choice `kind` (one option unless it is merged): code
        (allocation, redundancy); decoder a name; straggler (name, wait mode); k an int;
        variant (((field, value), ...) of `CHOICES["variant"]`, k) with k None when the
        group's k is traced; horizon (steps, eval_every)."""
        merged = dict(self.choices)
        if kind in merged:
            return merged[kind]
        f = dict(self.fields)
        if kind == "code":
            return ((f["allocation"], f["redundancy"]),)
        if kind == "decoder":
            return (f["decoder"],)
        if kind == "straggler":
            return ((f["straggler"], self.wait_mode),)
        if kind == "k":
            return (self.compress_k,)
        if kind == "variant":
            return ((tuple((n, f[n]) for n in CHOICES["variant"]), self.compress_k),)
        if kind == "horizon":
            return ((f["steps"], f["eval_every"]),)
        raise KeyError(kind)

    def uniform_hparams(self) -> tuple[str, ...]:
        """The `HParams` fields one batch of this group shares (unbatched in its program)."""
        return uniform_hparams(self.uniform)


def choice_value(cfg, kind: str, dim: int | None = None) -> Any:
    """The option a configuration takes for choice `kind` (see `Static.options`); k
    and variant need the flat parameter count `dim`."""
    if kind == "code":
        return (cfg.allocation, cfg.redundancy)
    if kind == "decoder":
        return cfg.decoder
    if kind == "straggler":
        return (cfg.straggler, cfg.wait_for is not None)
    if kind == "k":
        return resolve_k(dim, cfg.compress_k, cfg.compress_ratio)
    if kind == "variant":
        fields = tuple((n, getattr(cfg, n)) for n in CHOICES["variant"])
        return (fields, resolve_k(dim, cfg.compress_k, cfg.compress_ratio))
    if kind == "horizon":
        return (cfg.steps, cfg.eval_every)
    raise KeyError(kind)


def option_index(static: Static, kind: str, value) -> int:
    """Index of `value` (from `choice_value`) among `static`'s options of `kind` (a
    variant whose k the group traces, or whose compressor takes no k, matches the option
    with its fields)."""
    options = static.options(kind)
    if kind == "variant" and value not in options:
        # its k is traced, or its compressor takes no k: the one option with its fields
        same = [o for o in options if o[0] == value[0]]
        if len(same) == 1:
            return options.index(same[0])
    if kind == "k" and value not in options:
        return 0  # a variant that keeps a static k ignores the traced one
    return options.index(value)


def hparams_in_group(static: Static, cfg: ExperimentConfig) -> HParams:
    """`hparams_of(cfg)` with the indices of `cfg`'s options among its group's."""
    hp = hparams_of(cfg)
    indices = {
        f"{kind}_choice": np.asarray(
            option_index(static, kind, choice_value(cfg, kind, static.dim)), np.int32
        )
        for kind, _ in static.choices
        if kind != "horizon"
    }
    return dataclasses.replace(hp, **indices)


def static_fields(cfg: ExperimentConfig) -> tuple[tuple[str, Any], ...]:
    """The static fields of `cfg` (the group key part that comes from the config)."""
    return tuple((name, getattr(cfg, name)) for name in STATIC_FIELDS)


def resolve_k(dim: int, compress_k: int | None, compress_ratio: float) -> int:
    """k = compress_k if given, else max(1, round(ratio * d))."""
    if compress_k is not None:
        if compress_k > dim:
            fail("compress_k", compress_k, f"must satisfy 1 <= compress_k <= d={dim}")
        return int(compress_k)
    return int(min(dim, max(1, round(compress_ratio * dim))))


def eval_schedule(cfg) -> np.ndarray:
    """The evaluated steps of a run: 0, e, 2e, ..., and `steps` itself (int64)."""
    return schedule_of(cfg.steps, cfg.eval_every)


def schedule_of(steps: int, eval_every: int) -> np.ndarray:
    """The evaluated steps 0, e, 2e, ..., and `steps` itself (int64)."""
    points = np.arange(0, steps + 1, eval_every, dtype=np.int64)
    if points[-1] != steps:
        points = np.append(points, np.int64(steps))
    return points


def num_points(steps: int, eval_every: int) -> int:
    """How many evaluated steps a run of `steps` with `eval_every` records: ceil(T/e) + 1."""
    return -(-steps // eval_every) + 1
