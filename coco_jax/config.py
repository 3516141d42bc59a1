"""Experiment configuration: one frozen dataclass, its validation, and the split of
its fields into the static part (picks the compiled program) and the dynamic part
(`HParams`, a pytree of arrays that can be vmapped without recompiling).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("linreg", "logreg", "softmax", "mlp", "cnn")
DATASETS = ("synthetic", "digits", "breast_cancer", "mnist", "fashion_mnist", "cifar10")
ALLOCATIONS = ("uncoded", "cyclic", "frc", "bernoulli", "cyclic_mds")
DECODERS = ("fixed", "received", "optimal")
STRAGGLERS = (
    "none",
    "bernoulli",
    "fixed_count",
    "heterogeneous",
    "markov",
    "latency",
    "trace",
)
COMPRESSORS = (
    "identity",
    "topk",
    "randk",
    "randk_unbiased",
    "sign",
    "scaled_sign",
    "grouped_sign",
    "qsgd",
    "topk_qsgd",
    "onebit",
    "natural",
)
ERROR_FEEDBACKS = ("none", "ef", "ef21", "diana")
STRAGGLER_ERRORS = ("keep", "reset", "accumulate")
OPTIMIZERS = ("sgd", "momentum", "adam")
PARTITIONINGS = ("contiguous", "iid", "sorted", "dirichlet")
DTYPES = ("float32", "float64")

# Fields that never change a shape or a code path: they become `HParams` leaves and
# may differ between the configurations of one compiled sweep group.
DYNAMIC_FIELDS = (
    "lr",
    "momentum",
    "straggler_prob",
    "straggler_probs",
    "straggler_count",
    "markov_p_gb",
    "markov_p_bg",
    "latency_shift",
    "latency_rate",
    "deadline",
    "wait_for",
    "device_momentum",
    "diana_alpha",
    "seed",
)


# Fields `data.load_dataset` reads: configurations equal on these share a dataset.
DATASET_FIELDS = (
    "task",
    "dataset",
    "num_samples",
    "num_test",
    "num_features",
    "num_classes",
    "noise",
    "data_seed",
    "test_fraction",
    "data_dir",
)


class ConfigError(ValueError):
    """An invalid configuration value; the message names field, value and what is allowed."""


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One simulated distributed-learning run. See DESIGN.md, "Semantics contract".

    Example:
        >>> cfg = ExperimentConfig(task="logreg", num_devices=10, redundancy=2)
        >>> cfg.num_partitions_resolved
        10
    """

    # task and data
    task: str = "linreg"
    dataset: str = "synthetic"
    num_samples: int = 1024  # synthetic training rows
    num_test: int = 256  # synthetic test rows
    num_features: int = 32  # synthetic dimension
    num_classes: int = 3  # synthetic softmax / mlp classes
    noise: float = 0.1  # synthetic label noise (linreg: std; classification: flip rate)
    data_seed: int = 0  # seed of the synthetic data and of the train/test split
    test_fraction: float = 0.2  # held-out share of the real datasets
    data_dir: str | None = None  # directory of mnist / fashion_mnist / cifar10 files
    partitioning: str = "contiguous"
    dirichlet_alpha: float = 0.5
    hidden_sizes: tuple[int, ...] = (32,)  # mlp widths
    cnn_channels: tuple[int, ...] = (8, 16)  # cnn conv widths
    batch_size: int | None = None  # None: full-batch partition gradients
    shared_minibatch: bool = False

    # devices and code
    num_devices: int = 8
    num_partitions: int | None = None  # K; None means K = M
    redundancy: int = 1
    allocation: str = "cyclic"
    decoder: str = "fixed"

    # stragglers
    straggler: str = "bernoulli"
    straggler_prob: float = 0.2
    straggler_probs: tuple[float, ...] | None = None  # heterogeneous, length M
    straggler_count: int = 1  # fixed_count
    markov_p_gb: float = 0.1  # markov: P(good -> bad)
    markov_p_bg: float = 0.4  # markov: P(bad -> good)
    latency_shift: float = 1.0  # latency: per-partition time = shift + Exp(rate)
    latency_rate: float = 1.0
    deadline: float = 4.0  # latency: devices slower than this straggle
    wait_for: int | None = None  # latency: wait for the n fastest devices instead

    # compression and feedback
    compressor: str = "topk"
    compress_k: int | None = None
    compress_ratio: float = 0.1
    qsgd_levels: int = 4
    group_size: int | None = None  # grouped_sign: None = one group per layer
    error_feedback: str = "ef"
    straggler_error: str = "keep"
    device_momentum: float = 0.0  # 0 = off; else momentum beta before compression
    diana_alpha: float = 0.5  # DIANA shift step size

    # server optimiser and run
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # for optimizer="momentum"
    steps: int = 200
    eval_every: int = 1
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        validate(self)

    @property
    def num_partitions_resolved(self) -> int:
        return self.num_devices if self.num_partitions is None else self.num_partitions

    def replace(self, **changes) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def _choice(cfg, field: str, options: tuple[str, ...]) -> None:
    value = getattr(cfg, field)
    if value not in options:
        _fail(field, value, f"must be one of {', '.join(options)}")


def _int(cfg, field: str, low: int | None = None, high: int | None = None, *, what=None):
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(field, value, "must be an integer")
    if low is not None and value < low:
        _fail(field, value, what or f"must be >= {low}")
    if high is not None and value > high:
        _fail(field, value, what or f"must be <= {high}")


def _real(cfg, field: str, *, low=None, high=None, low_open=False, high_open=False):
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        _fail(field, value, "must be a real number")
    if not math.isfinite(value):
        _fail(field, value, "must be finite")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        _fail(field, value, f"must lie in {lb}{low}, {high}{hb}")


def validate(cfg: ExperimentConfig) -> None:
    """Check every field on its own and against the others; data-dependent checks
    (k <= d, rows divisible by K, trace shape) happen in `engine.run` before compiling."""
    for field, options in (
        ("task", TASKS),
        ("dataset", DATASETS),
        ("allocation", ALLOCATIONS),
        ("decoder", DECODERS),
        ("straggler", STRAGGLERS),
        ("compressor", COMPRESSORS),
        ("error_feedback", ERROR_FEEDBACKS),
        ("straggler_error", STRAGGLER_ERRORS),
        ("optimizer", OPTIMIZERS),
        ("partitioning", PARTITIONINGS),
        ("dtype", DTYPES),
    ):
        _choice(cfg, field, options)
    _int(cfg, "num_devices", 1)
    m = cfg.num_devices
    if cfg.num_partitions is not None:
        _int(cfg, "num_partitions", 1)
    k_parts = cfg.num_partitions_resolved
    _int(
        cfg,
        "redundancy",
        0,
        m - 1,
        what=f"must satisfy 0 <= redundancy < num_devices={m}",
    )
    s = cfg.redundancy
    if cfg.allocation == "uncoded" and s != 0:
        _fail("redundancy", s, "allocation='uncoded' needs redundancy=0")
    if cfg.allocation == "uncoded" and k_parts % m != 0:
        _fail("num_partitions", k_parts, f"allocation='uncoded' needs a multiple of num_devices={m}")
    if cfg.allocation == "frc" and m % (s + 1) != 0:
        _fail(
            "redundancy",
            s,
            f"allocation='frc' needs (redundancy+1) to divide num_devices={m}",
        )
    if cfg.allocation in ("cyclic", "frc", "cyclic_mds") and k_parts % m != 0:
        _fail(
            "num_partitions",
            k_parts,
            f"allocation={cfg.allocation!r} needs a multiple of num_devices={m}",
        )
    if cfg.allocation == "bernoulli" and s + 1 > k_parts:
        _fail("redundancy", s, f"allocation='bernoulli' needs redundancy+1 <= num_partitions={k_parts}")
    if cfg.allocation == "cyclic_mds" and k_parts != m:
        _fail("num_partitions", k_parts, f"allocation='cyclic_mds' needs num_partitions = num_devices = {m}")
    if cfg.decoder == "fixed" and cfg.allocation == "cyclic_mds":
        _fail("decoder", cfg.decoder, "allocation='cyclic_mds' needs decoder 'optimal' or 'received'")

    _real(cfg, "straggler_prob", low=0.0, high=1.0, high_open=True)
    if cfg.straggler == "heterogeneous":
        probs = cfg.straggler_probs
        if probs is None or len(probs) != m:
            _fail(
                "straggler_probs",
                probs,
                f"straggler='heterogeneous' needs a sequence of num_devices={m} probabilities",
            )
    if cfg.straggler_probs is not None:
        if not isinstance(cfg.straggler_probs, tuple):
            _fail("straggler_probs", cfg.straggler_probs, "must be a tuple of floats")
        for p in cfg.straggler_probs:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                _fail("straggler_probs", cfg.straggler_probs, "every entry must lie in [0, 1)")
        if len(cfg.straggler_probs) != m:
            _fail("straggler_probs", cfg.straggler_probs, f"must have length num_devices={m}")
    _int(cfg, "straggler_count", 0, m - 1, what=f"must satisfy 0 <= straggler_count < num_devices={m}")
    _real(cfg, "markov_p_gb", low=0.0, high=1.0)
    _real(cfg, "markov_p_bg", low=0.0, high=1.0, low_open=True)
    _real(cfg, "latency_shift", low=0.0)
    _real(cfg, "latency_rate", low=0.0, low_open=True)
    _real(cfg, "deadline", low=0.0, low_open=True)
    if cfg.wait_for is not None:
        _int(cfg, "wait_for", 1, m, what=f"must satisfy 1 <= wait_for <= num_devices={m}")
        if cfg.straggler != "latency":
            _fail("wait_for", cfg.wait_for, "is only used with straggler='latency'; set it to None")

    if cfg.compress_k is not None:
        _int(cfg, "compress_k", 1)
    _real(cfg, "compress_ratio", low=0.0, high=1.0, low_open=True)
    _int(cfg, "qsgd_levels", 1)
    if cfg.group_size is not None:
        _int(cfg, "group_size", 1)
    _real(cfg, "device_momentum", low=0.0, high=1.0, high_open=True)
    _real(cfg, "diana_alpha", low=0.0, high=1.0, low_open=True)
    if cfg.error_feedback == "diana" and cfg.compressor not in (
        "randk_unbiased",
        "qsgd",
        "identity",
        "onebit",
        "natural",
    ):
        _fail(
            "compressor",
            cfg.compressor,
            "error_feedback='diana' needs an unbiased compressor: randk_unbiased, qsgd, onebit, natural or identity",
        )

    _real(cfg, "lr", low=0.0)
    _real(cfg, "momentum", low=0.0, high=1.0, high_open=True)
    _int(cfg, "steps", 1)
    _int(cfg, "eval_every", 1)
    _int(cfg, "seed", 0)
    _int(cfg, "data_seed", 0)

    _int(cfg, "num_samples", 1)
    _int(cfg, "num_test", 0)
    _int(cfg, "num_features", 1)
    _int(cfg, "num_classes", 2)
    _real(cfg, "noise", low=0.0)
    _real(cfg, "test_fraction", low=0.0, high=1.0, high_open=True)
    _real(cfg, "dirichlet_alpha", low=0.0, low_open=True)
    for field in ("hidden_sizes", "cnn_channels"):
        widths = getattr(cfg, field)
        if not isinstance(widths, tuple) or not all(
            isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1 for w in widths
        ):
            _fail(field, widths, "must be a tuple of positive integers")
    if cfg.batch_size is not None:
        _int(cfg, "batch_size", 1)
    if not isinstance(cfg.shared_minibatch, bool):
        _fail("shared_minibatch", cfg.shared_minibatch, "must be True or False")
    if cfg.task == "linreg" and cfg.partitioning in ("sorted", "dirichlet"):
        _fail("partitioning", cfg.partitioning, "label-based partitioning needs a classification task")
    if cfg.dataset == "breast_cancer" and cfg.task not in ("logreg", "mlp"):
        _fail("task", cfg.task, "dataset='breast_cancer' is binary: use task 'logreg' or 'mlp'")
    if cfg.dataset == "digits" and cfg.task in ("linreg", "logreg"):
        _fail("task", cfg.task, "dataset='digits' has 10 classes: use task 'softmax', 'mlp' or 'cnn'")
    if cfg.dataset in ("mnist", "fashion_mnist", "cifar10") and cfg.task in ("linreg", "logreg"):
        _fail("task", cfg.task, f"dataset={cfg.dataset!r} has 10 classes: use 'softmax', 'mlp' or 'cnn'")
    if cfg.task == "cnn" and cfg.dataset in ("synthetic", "breast_cancer"):
        _fail(
            "dataset",
            cfg.dataset,
            "task='cnn' needs an image dataset: digits, mnist, fashion_mnist or cifar10",
        )


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything that changes a shape or a code path: one compiled program per value.

    Built by `engine.static_of` from a config and its data; hashable.
    """

    cfg: ExperimentConfig  # with every dynamic field reset (see `static_config`)
    feature_shape: tuple[int, ...]  # shape of one data row
    num_classes: int  # 0 for regression
    dim: int  # d, the flat parameter count
    compress_k: int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HParams:
    """The dynamic fields of one configuration as arrays (a vmappable pytree)."""

    lr: jax.Array
    momentum: jax.Array
    straggler_prob: jax.Array
    straggler_probs: jax.Array  # [M]
    straggler_count: jax.Array
    markov_p_gb: jax.Array
    markov_p_bg: jax.Array
    latency_shift: jax.Array
    latency_rate: jax.Array
    deadline: jax.Array
    wait_for: jax.Array
    device_momentum: jax.Array
    diana_alpha: jax.Array
    seed: jax.Array


def float_dtype(cfg: ExperimentConfig):
    """The run's float dtype: float64 only where jax x64 is enabled."""
    if cfg.dtype == "float64" and jax.config.jax_enable_x64:
        return jnp.float64
    return jnp.float32


def hparams_of(cfg: ExperimentConfig) -> HParams:
    """The dynamic fields of `cfg` as numpy scalars/arrays (stackable for a sweep)."""
    dt = np.float64 if float_dtype(cfg) == jnp.float64 else np.float32
    m = cfg.num_devices
    probs = cfg.straggler_probs if cfg.straggler_probs is not None else (cfg.straggler_prob,) * m
    return HParams(
        lr=np.asarray(cfg.lr, dt),
        momentum=np.asarray(cfg.momentum, dt),
        straggler_prob=np.asarray(cfg.straggler_prob, dt),
        straggler_probs=np.asarray(probs, dt),
        straggler_count=np.asarray(cfg.straggler_count, np.int32),
        markov_p_gb=np.asarray(cfg.markov_p_gb, dt),
        markov_p_bg=np.asarray(cfg.markov_p_bg, dt),
        latency_shift=np.asarray(cfg.latency_shift, dt),
        latency_rate=np.asarray(cfg.latency_rate, dt),
        deadline=np.asarray(cfg.deadline, dt),
        wait_for=np.asarray(cfg.wait_for if cfg.wait_for is not None else m, np.int32),
        device_momentum=np.asarray(cfg.device_momentum, dt),
        diana_alpha=np.asarray(cfg.diana_alpha, dt),
        seed=np.asarray(cfg.seed, np.uint32),
    )


_DEFAULTS = ExperimentConfig()


def static_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with every dynamic field set to its default, so configurations that differ
    only in dynamic fields share one compiled program. Whether device momentum is on
    and whether latency waits for the fastest devices are code paths, so they stay."""
    reset = {f: getattr(_DEFAULTS, f) for f in DYNAMIC_FIELDS}
    reset["straggler_probs"] = None
    reset["device_momentum"] = 0.5 if cfg.device_momentum > 0 else 0.0
    reset["wait_for"] = 1 if cfg.wait_for is not None else None
    if reset["straggler_count"] >= cfg.num_devices:
        reset["straggler_count"] = 0
    if cfg.straggler == "heterogeneous":
        reset["straggler_probs"] = (0.0,) * cfg.num_devices
    return dataclasses.replace(cfg, **reset)


def resolve_k(dim: int, compress_k: int | None, compress_ratio: float) -> int:
    """k = compress_k if given, else max(1, round(ratio * d))."""
    if compress_k is not None:
        if compress_k > dim:
            _fail("compress_k", compress_k, f"must satisfy 1 <= compress_k <= d={dim}")
        return int(compress_k)
    return int(min(dim, max(1, round(compress_ratio * dim))))


def eval_steps(steps: int, eval_every: int) -> np.ndarray:
    points = list(range(0, steps + 1, eval_every))
    if points[-1] != steps:
        points.append(steps)
    return np.asarray(points, np.int64)
