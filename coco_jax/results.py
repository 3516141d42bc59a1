"""Tidy result tables: one row per (configuration, evaluated step), and the conversion
between a row and its configuration.

Columns: every `ExperimentConfig` field (tuple-valued fields as JSON strings), `method`
(preset name or "custom"), `config_id` (a stable hash of the full configuration),
`bits_per_message`, `diverged_step` (-1 if the run stayed finite) and every history
key of `engine.RunResult` (step, loss, grad_norm_sq, ..., delivered, bits = delivered ×
bits_per_message). Registered components appear by name (`compressor`, `allocation`,
...), so a table loads and plots without the plugin that defined them. How tables sit
on disk is `coco_jax.store`.

Example:
    >>> import coco_jax as cj
    >>> df = cj.load_results("results/methods")           # doctest: +SKIP
    >>> df.groupby(["method", "straggler_prob", "step"]).loss.mean()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import subprocess
from typing import Any

import jax
import numpy as np
import pandas as pd
import pyarrow as pa

from coco_jax.config import FIELDS, ExperimentConfig
from coco_jax.errors import ConfigError
from coco_jax.fileio import jsonable, read_json
from coco_jax.store import (
    SIDECAR,
    TABLE,
    PartsVanished,
    read_error,
    read_parts,
    read_table,
    unreadable_message,
)

SEED_POLICY = (
    "each configuration's randomness derives only from its own fields: jax.random.key(seed) split by "
    "fold_in with fixed constants per purpose (code, init, stragglers, steps) and fold_in(step) per step; "
    "data from data_seed. Never from the configuration's position in the grid, its batch, its device "
    "or its process."
)

# History keys in column order (those a task lacks are absent or NaN).
HISTORY_KEYS = (
    "step",
    "loss",
    "grad_norm_sq",
    "accuracy",
    "test_loss",
    "test_accuracy",
    "bits",
    "time",
    "delivered",
    "stragglers",
    "grad_error_sq",
    "ef_error_norm",
    "contraction",
    "diverged",
)


def config_id(cfg: ExperimentConfig) -> str:
    """A stable hash of every field of `cfg` (same in every process and Python run): the
    first 16 hex digits of the SHA-256 of its fields as compact JSON with sorted keys.
    Computed once per configuration object (kept on it)."""
    cached = cfg.__dict__.get("_config_id")
    if cached is not None:
        return cached
    text = "{" + ",".join(f'"{name}":{json_text(name, getattr(cfg, name))}' for name in _SORTED_FIELDS) + "}"
    out = id_of_text(text)
    object.__setattr__(cfg, "_config_id", out)  # not a field: equality, hashing and replace ignore it
    return out


def id_of_text(text: str) -> str:
    """The configuration id of a configuration's JSON text (`config_id`): the first 16
    hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_SORTED_FIELDS = tuple(sorted(FIELDS))


def id_template(cfg: ExperimentConfig, varied) -> tuple:
    """The JSON text of `cfg`'s fields for `config_id_from`: fixed text for the fields
    not in `varied`, and the names of the varied ones at their places."""
    parts, names = [], []
    text = "{"
    for i, name in enumerate(_SORTED_FIELDS):
        text += ("," if i else "") + f'"{name}":'
        if name in varied:
            parts.append(text)
            names.append(name)
            text = ""
        else:
            text += json_text(name, getattr(cfg, name))
    parts.append(text + "}")
    return tuple(parts), tuple(names)


def config_id_from(template: tuple, cfg: ExperimentConfig) -> str:
    """`config_id(cfg)` for a configuration that agrees with the one `template`
    (`id_template`) was made from on every field but the varied ones (a grid's)."""
    parts, names = template
    pieces = [parts[0]]
    for name, part in zip(names, parts[1:]):
        pieces.append(json_text(name, getattr(cfg, name)))
        pieces.append(part)
    out = id_of_text("".join(pieces))
    object.__setattr__(cfg, "_config_id", out)
    return out


def id_template_fixing(template: tuple, cfg: ExperimentConfig, names) -> tuple:
    """`template` (`id_template`) with its varied fields not in `names` fixed at `cfg`'s
    values: the id template of the configurations that agree with `cfg` on every field
    but `names`."""
    parts, varied = template
    fixed, kept = [], []
    text = parts[0]
    for name, part in zip(varied, parts[1:]):
        if name in names:
            fixed.append(text)
            kept.append(name)
            text = part
        else:
            text += json_text(name, getattr(cfg, name)) + part
    fixed.append(text)
    return tuple(fixed), tuple(kept)


_JSON_TEXT: dict = {}  # (field, type, value) -> JSON text of strings and tuples


def json_text(name: str, value: Any) -> str:
    """`json.dumps(jsonable(value), separators=(",", ":"))` of one field's value (what
    `json.dumps` writes for it inside the whole configuration), without the call for
    the common scalar types."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    key = (name, kind, value, tuple(map(type, value)) if kind is tuple else None)
    try:
        return _JSON_TEXT[key]
    except (KeyError, TypeError):
        text = json.dumps(jsonable(value), separators=(",", ":"))
        if len(_JSON_TEXT) < 100_000 and kind in (str, tuple):
            _JSON_TEXT[key] = text
        return text


def config_columns(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every config field as a table cell; tuple-valued fields as JSON strings."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = json.dumps(jsonable(v)) if isinstance(v, tuple) else jsonable(v)
    return out


# Config fields whose values are tuples (JSON text in a table cell, lists in a grid file).
TUPLE_FIELDS = tuple(n for n, f in FIELDS.items() if "tuple" in str(f.type))
_INT_FIELDS = tuple(n for n, f in FIELDS.items() if str(f.type).startswith("int"))


def config_values_from_row(row) -> dict[str, Any]:
    """The config fields of one table row as Python values (tuple fields are stored as
    JSON text, NaN cells of optional fields are None)."""
    values = {}
    for name in FIELDS:
        if name not in row:
            continue
        v = row[name]
        if name in TUPLE_FIELDS and isinstance(v, str):
            v = json.loads(v)
            v = None if v is None else tuple(v)
        elif isinstance(v, float) and math.isnan(v):
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and v.is_integer() and name in _INT_FIELDS:
            v = int(v)
        values[name] = v
    return values


def config_from_row(row) -> ExperimentConfig:
    """The `ExperimentConfig` of one table row (validated: its registered components
    must be registered in this process)."""
    return ExperimentConfig(**config_values_from_row(row))


def rows_of(
    method: str,
    cfg: ExperimentConfig,
    history: dict[str, np.ndarray],
    bits_per_message: int,
    diverged_step: int | None,
) -> pd.DataFrame:
    """The table rows of one finished run (history as from `engine.history_to_numpy`)."""
    n = len(history["step"])
    cols: dict[str, Any] = {"method": [method] * n, "config_id": [config_id(cfg)] * n}
    for k, v in config_columns(cfg).items():
        cols[k] = [v] * n
    cols["bits_per_message"] = np.full(n, bits_per_message, np.int64)
    cols["diverged_step"] = np.full(n, -1 if diverged_step is None else diverged_step, np.int64)
    keys = [k for k in HISTORY_KEYS if k in history] + sorted(k for k in history if k not in HISTORY_KEYS)
    for k in keys:
        cols[k] = np.asarray(history[k])
    return pd.DataFrame(cols)


def batch_table(
    methods: list[str],
    cfgs: list[ExperimentConfig],
    history: dict[str, np.ndarray],
    bits_per_message: np.ndarray,
    diverged_step: np.ndarray,
) -> pd.DataFrame:
    """The table rows of a batch of finished runs, built column-wise: `history` holds
    [B, P] arrays (every run of the batch records the same P evaluated steps, without
    `bits`), `bits_per_message` and `diverged_step` [B] (-1: stayed finite). Equal, with
    its dtypes and column order, to `pd.concat` of `rows_of` of every run (the
    per-configuration reference the tests keep)."""
    b, p = len(cfgs), int(next(iter(history.values())).shape[1])
    cols: dict[str, Any] = {
        "method": _column(methods, p),
        "config_id": _column([config_id(c) for c in cfgs], p),
    }
    for name in FIELDS:
        values = [getattr(c, name) for c in cfgs]
        if name in TUPLE_FIELDS:
            values = [_tuple_text(v) if isinstance(v, tuple) else v for v in values]
        cols[name] = _column(values, p)
    bits = np.asarray(bits_per_message, np.int64)
    cols["bits_per_message"] = np.repeat(bits, p)
    cols["diverged_step"] = np.repeat(np.asarray(diverged_step, np.int64), p)
    hist = {k: np.asarray(v).reshape(b * p) for k, v in history.items()}
    hist["bits"] = hist["delivered"].astype(np.float64) * np.repeat(bits.astype(np.float64), p)
    keys = [k for k in HISTORY_KEYS if k in hist] + sorted(k for k in hist if k not in HISTORY_KEYS)
    for k in keys:
        cols[k] = hist[k]
    return pd.DataFrame(cols, copy=False)


_TUPLE_TEXT: dict = {}


def _tuple_text(value: tuple) -> str:
    """`json.dumps(jsonable(value))` of a tuple field's value (kept: few distinct values)."""
    key = (value, tuple(map(type, value)))
    text = _TUPLE_TEXT.get(key)
    if text is None:
        text = json.dumps(jsonable(value))
        if len(_TUPLE_TEXT) < 10_000:
            _TUPLE_TEXT[key] = text
    return text


_CELL_DTYPES: dict = {}  # Python type of a cell -> the dtype pandas gives a column of it
_COMMON_DTYPES: dict = {}  # types of a column's cells -> the dtype pd.concat gives


def _cell_dtype(kind: type, value: Any) -> Any:
    if kind not in _CELL_DTYPES:
        _CELL_DTYPES[kind] = pd.Series([value, value]).dtype
    return _CELL_DTYPES[kind]


def _column(values: list, repeat: int):
    """A column of `values` each repeated `repeat` times, with the dtype that
    `pd.concat` of one frame per value (`rows_of`) gives it."""
    kinds = {}
    for v in values:
        kinds.setdefault(type(v), v)
    key = tuple(sorted(kinds, key=lambda t: t.__qualname__))
    dtype = _COMMON_DTYPES.get(key)
    if dtype is None:
        if len(kinds) == 1:
            kind, value = next(iter(kinds.items()))
            dtype = _cell_dtype(kind, value)
        else:
            parts = [pd.Series([v, v], dtype=_cell_dtype(t, v)) for t, v in kinds.items()]
            dtype = pd.concat(parts, ignore_index=True).dtype
        _COMMON_DTYPES[key] = dtype
    if isinstance(dtype, np.dtype) and dtype != object:
        return np.repeat(np.asarray(values, dtype), repeat)
    cells = np.empty(len(values), object)
    cells[:] = values
    if dtype == object:
        return pd.Series(np.repeat(cells, repeat), dtype=object, copy=False)
    # an extension dtype (strings): built per configuration, repeated by a take
    return pd.array(cells, dtype=dtype).take(np.repeat(np.arange(len(values)), repeat))


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """The table as it reads back from Parquet (so in-memory and loaded tables compare equal)."""
    return pa.Table.from_pandas(df, preserve_index=False).to_pandas()


def load_results(directory: str | os.PathLike, *, partial: bool = False) -> pd.DataFrame:
    """The results table of a sweep directory.

    Args:
        directory: the sweep's `out` directory.
        partial: if the sweep has not finished, return the rows of its finished
            batches instead of raising.

    Raises:
        ConfigError: no table (the sweep has not finished), or an unreadable
            (truncated, corrupt) table or part: the message names the file and the
            command that repairs it (running the sweep again moves the file to
            quarantine/ and recomputes its configurations).

    Example:
        >>> df = load_results("results/methods")  # doctest: +SKIP
    """
    d = pathlib.Path(directory)
    table = d / TABLE
    # A sweep that finishes while this reads writes the table, then removes the parts:
    # parts that vanish, or a table that appears, mean "read the table", never an error.
    for _ in range(10):
        if table.exists():
            try:
                return read_table(table)
            except Exception as err:
                raise ConfigError(unreadable_message(d, table, read_error(err))) from err
        if partial:
            try:
                parts = read_parts(d)
            except PartsVanished:
                continue
            if parts is not None:
                return parts
        if not table.exists():
            break
    if not d.exists():
        raise ConfigError(f"results directory {str(d)!r} does not exist")
    raise ConfigError(
        f"{str(d)!r} holds no {TABLE} (the sweep has not finished; load_results(..., partial=True) "
        "returns the finished batches, and running the sweep again resumes it)"
    )


def load_metadata(directory: str | os.PathLike) -> dict:
    """The JSON sidecar of a sweep directory."""
    meta = read_json(pathlib.Path(directory) / SIDECAR)
    if meta is None:
        raise ConfigError(f"{str(directory)!r} holds no {SIDECAR}")
    return meta


# ------------------------------------------------------------------ environment


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in ("coco-jax", "jax", "jaxlib", "optax", "flax", "numpy", "pandas", "pyarrow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """The project's git commit (and whether the tree has changes), when available."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def device_description() -> dict[str, Any]:
    local = jax.local_devices()
    return {
        "platform": local[0].platform,
        "device_kind": local[0].device_kind,
        "local_device_count": len(local),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }
