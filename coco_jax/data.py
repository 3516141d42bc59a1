"""Datasets as the engine sees them: the `Dataset` record, loading a named dataset
through its registry (`cj.register_dataset`; the built-ins are in
`coco_jax.datasets`), and validating user arrays (`from_arrays`). Pure numpy; no
network, ever. Partitioning is `coco_jax.partition`.

Every dataset is a `Dataset` of numpy arrays:

- features: float32 ``[n, d]`` for the tasks linreg / logreg / softmax / mlp, images
  float32 ``[n, H, W, C]`` for task ``cnn``;
- labels: float32 ``[n]`` for linreg, int32 in {0, 1} for logreg, int32 in ``0..C-1``
  for softmax / mlp / cnn;
- ``num_classes``: 0 for regression, 2 for logreg, C otherwise;
- ``source``: where the rows came from (``generated``, ``scikit-learn``, the directory of
  the files, the packaged file, ``user arrays``);
- ``label``: the honest display name, equal to ``name`` except ``"mnist (5k subset)"`` for
  the packaged MNIST subset. `dataset_label(cfg)` gives the same string from a
  configuration (and the environment) without loading anything: use it in figure titles
  and reports.

Features of the named datasets are float32. `from_arrays` keeps float64 user features
(and linreg targets) as float64, so float64 runs on user data lose no precision; any
other numeric input becomes float32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from coco_jax.config import LINEAR_TASKS
from coco_jax.errors import ConfigError, fail
from coco_jax.registry import DATASET_FIELDS, DATASETS, MODELS

__all__ = [
    "Dataset",
    "check_dataset",
    "dataset_fields",
    "dataset_key",
    "dataset_label",
    "describe_arrays",
    "from_arrays",
    "load_dataset",
    "wants_images",
]


def wants_images(task: str) -> bool:
    """Whether `task` is a registered model that takes images [n, H, W, C] (e.g. cnn)."""
    return task not in LINEAR_TASKS and task in MODELS and bool(MODELS.entry(task).option("images"))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one dataset (numpy; see the module docstring)."""

    name: str
    x_train: np.ndarray  # [n, d] or [n, H, W, C]
    y_train: np.ndarray  # [n]
    x_test: np.ndarray  # [n_test, ...] (possibly 0 rows)
    y_test: np.ndarray  # [n_test]
    num_classes: int  # 0 for regression, 2 for logreg, C otherwise
    source: str = ""  # where the rows came from (a directory, a packaged file, "scikit-learn", ...)
    label: str = ""  # honest display name, e.g. "mnist (5k subset)"; empty -> name

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def load_dataset(cfg) -> Dataset:
    """The named dataset of an `ExperimentConfig` (``cfg.dataset``, a registered
    dataset), shaped for ``cfg.task``; checked like user arrays (`from_arrays`).

    Example:
        >>> from coco_jax.config import ExperimentConfig
        >>> ds = load_dataset(ExperimentConfig(task="logreg", num_samples=100, num_test=10))
        >>> ds.x_train.shape, ds.y_train.dtype, ds.num_classes
        ((100, 32), dtype('int32'), 2)
    """
    entry = DATASETS.entry(cfg.dataset)
    args = DATASETS.arguments(cfg.dataset, _provided(cfg.task), dataset_fields(cfg))
    return _checked(DATASETS.call(entry, args), entry, cfg.task)


def _provided(task: str) -> dict:
    return {"task": task, "images": wants_images(task)}


def dataset_fields(cfg) -> dict:
    """The config fields a dataset factory may read (`registry.DATASET_FIELDS`)."""
    return {f: getattr(cfg, f) for f in DATASET_FIELDS}


def dataset_key(cfg) -> tuple:
    """What the loaded dataset of `cfg` depends on: its registration and the arguments
    its factory receives (equal keys load equal data)."""
    entry = DATASETS.entry(cfg.dataset)
    args = DATASETS.arguments(cfg.dataset, _provided(cfg.task), dataset_fields(cfg))
    return (cfg.dataset, entry.serial, cfg.task, tuple(sorted(args.items())))


def _checked(ds, entry, task: str) -> Dataset:
    """A dataset factory's result, checked like user arrays: a `Dataset` whose train and
    test arrays suit ``task`` and whose ``num_classes`` covers its labels."""
    if not isinstance(ds, Dataset):
        raise ConfigError(
            f"dataset {entry.name!r}: the factory returned {type(ds).__name__}, must return "
            "cj.Dataset(name, x_train, y_train, x_test, y_test, num_classes)"
        )
    where = f"dataset {entry.name!r}:"
    _check_pair(ds.x_train, ds.y_train, task, f"{where} training data:")
    _check_pair(ds.x_test, ds.y_test, task, f"{where} test data:")
    if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
        raise ConfigError(
            f"{where} test rows have shape {list(ds.x_test.shape[1:])}, training rows {list(ds.x_train.shape[1:])}"
        )
    if task != "linreg":
        top = max([int(np.max(y)) for y in (ds.y_train, ds.y_test) if np.size(y)] or [0])
        if top >= max(ds.num_classes, 2):
            raise ConfigError(f"{where} labels run up to {top} but num_classes={ds.num_classes}")
    return ds


def dataset_label(cfg) -> str:
    """The honest display name of ``cfg.dataset`` for figure titles and reports: the
    registration's ``label(cfg)`` (e.g. ``"mnist (5k subset)"`` when dataset ``mnist``
    resolves to the packaged subset), else the dataset name itself. Decided from the
    configuration and the environment alone, without reading files; a loaded `Dataset`
    carries the same string as ``Dataset.label``."""
    label = DATASETS.entry(cfg.dataset).option("label") if cfg.dataset in DATASETS else None
    return str(cfg.dataset) if label is None else str(label(cfg))


# ------------------------------------------------------------------ config checks


@DATASETS.add_config_check
def check_dataset(cfg) -> None:
    """Refuse a task the dataset cannot serve: a binary dataset for a multi-class task
    (or regression), a multi-class one for logreg or linreg, flat rows for an image
    model."""
    entry = DATASETS.entry(cfg.dataset)
    classes = entry.option("classes")
    if classes == 2 and cfg.task in ("linreg", "softmax"):
        fail("task", cfg.task, f"dataset={cfg.dataset!r} is binary: use task 'logreg' or a model (mlp, ...)")
    if classes is not None and classes > 2 and cfg.task in ("linreg", "logreg"):
        fail(
            "task",
            cfg.task,
            f"dataset={cfg.dataset!r} has {classes} classes: use 'softmax' or a model (mlp, cnn, ...)",
        )
    if wants_images(cfg.task) and not entry.option("images"):
        names = [n for n in DATASETS.names() if DATASETS.entry(n).option("images")]
        fail("dataset", cfg.dataset, f"task={cfg.task!r} needs an image dataset: {', '.join(names)}")


# ------------------------------------------------------------------- user arrays


def describe_arrays(x, y) -> str:
    """A short description of a pair of arrays for error messages: ``(x: float32[n, d], y: ...)``."""

    def one(a):
        a = np.asarray(a) if not hasattr(a, "shape") else a
        return f"{getattr(a, 'dtype', type(a).__name__)}{list(getattr(a, 'shape', ()))}"

    return f"(x: {one(x)}, y: {one(y)})"


def _check_pair(x, y, task: str, which: str):
    desc = describe_arrays(x, y)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"data={desc} is invalid: {which} {why}")

    try:
        x = np.asarray(x)
        y = np.asarray(y)
    except Exception as exc:
        raise bad(f"cannot be converted to numpy arrays ({exc})") from exc
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise bad(f"x must be a real numeric array, found dtype {x.dtype}")
    if wants_images(task):
        if x.ndim != 4:
            raise bad(f"x must be images [n, H, W, C] for task {task!r}, found {x.ndim} dims")
    elif x.ndim != 2:
        raise bad(f"x must be a matrix [n, d] for task {task!r} (flatten images), found {x.ndim} dims")
    if y.ndim != 1:
        raise bad(f"y must be a vector [n], found shape {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise bad(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if any(s == 0 for s in x.shape[1:]):
        raise bad(f"x has an empty feature dimension {list(x.shape)}")
    x_dtype = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(x_dtype)
    if not np.all(np.isfinite(x)):
        raise bad("x contains NaN or infinite values")
    if y.dtype != bool and not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise bad(f"y must be numeric, found dtype {y.dtype}")
    if task == "linreg":
        y = y.astype(np.float64 if y.dtype == np.float64 else np.float32)
        if not np.all(np.isfinite(y)):
            raise bad("y contains NaN or infinite values")
        return x, y
    yf = y.astype(np.float64)
    if not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf)):
        raise bad(f"y must hold integer class labels for task {task!r}")
    if task == "logreg":
        if not np.all((yf == 0) | (yf == 1)):
            raise bad(
                f"y must hold labels in {{0, 1}} for task 'logreg', found {np.unique(yf).astype(np.int64)[:10]}"
            )
    elif np.any(yf < 0):
        raise bad(f"y must hold class labels 0..C-1 for task {task!r}, found {yf.min():g}")
    return x, yf.astype(np.int32)


def from_arrays(x, y, task: str, test=None) -> Dataset:
    """Wrap user arrays as a `Dataset` after validating them for ``task``.

    Args:
        x: features ``[n, d]`` (``[n, H, W, C]`` for task ``cnn``); float64 stays float64,
            other numeric dtypes become float32.
        y: targets ``[n]``: real for linreg, {0, 1} for logreg, 0..C-1 otherwise.
        task: one of linreg, logreg, softmax, mlp, cnn.
        test: optional ``(x_test, y_test)`` of the same layout.

    Returns:
        The dataset; ``num_classes`` is 0 (linreg), 2 (logreg) or max label + 1 over
        train and test, at least 2.

    Raises:
        ConfigError: for field ``data`` (or ``task``) saying what is wrong.
    """
    if task not in LINEAR_TASKS and task not in MODELS:
        raise ConfigError(MODELS.unknown_message(task))
    x, y = _check_pair(x, y, task, "training data:")
    if x.shape[0] == 0:
        raise ConfigError(f"data={describe_arrays(x, y)} is invalid: training data has no rows")
    if test is None:
        x_te, y_te = np.zeros((0, *x.shape[1:]), x.dtype), np.zeros((0,), y.dtype)
    else:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise ConfigError(
                f"data test={type(test).__name__} is invalid: test must be a pair (x_test, y_test) or None"
            )
        x_te, y_te = _check_pair(test[0], test[1], task, "test data:")
        if x_te.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"data={describe_arrays(x_te, y_te)} is invalid: test data: x_test rows have shape "
                f"{list(x_te.shape[1:])}, training rows {list(x.shape[1:])}"
            )
        x_te = x_te.astype(x.dtype)
        y_te = y_te.astype(y.dtype)
    if task == "linreg":
        classes = 0
    elif task == "logreg":
        classes = 2
    else:
        top = max(int(y.max()), int(y_te.max()) if y_te.size else 0)
        classes = max(2, top + 1)
    return Dataset("user", x, y, x_te, y_te, classes, source="user arrays")
