"""`run(cfg)`: load and partition the data, check everything that depends on it, then
run the compiled program of the configuration's static group and return its history.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax import data as data_lib
from coco_jax import interrupt
from coco_jax.config import (
    DATA_VALUE_FIELDS,
    ConfigError,
    ExperimentConfig,
    Static,
    eval_schedule,
    float_dtype,
    hparams_of,
    resolve_k,
    static_fields,
)
from coco_jax.partition import partition, truncate_to_multiple
from coco_jax.registry import CODES, COMPRESSORS, DATASETS, DECODERS, FEEDBACKS, MODELS, STRAGGLER_MODELS
from coco_jax.step import Components, RunData, compiled_run, components, history
from coco_jax.tasks import task_of


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run returns.

    Attributes:
        config: the configuration that ran.
        history: dict of numpy arrays over evaluation steps (0, e, 2e, ..., steps):
            step, loss (F(θ) on the whole training set), grad_norm_sq (‖∇F(θ)‖²),
            accuracy (classification), test_loss/test_accuracy (when a test set exists),
            bits (cumulative upload bits), time (cumulative simulated seconds),
            stragglers (stragglers in the step that produced θ), grad_error_sq
            (‖ĝ − ∇F‖² of that step), ef_error_norm (mean feedback memory norm),
            contraction (mean ‖C(v) − v‖²/‖v‖² over delivered messages), delivered
            (cumulative messages), diverged (θ non-finite by then).
            Entries of the step-0 row that describe an update are 0 or NaN.
        params: final parameters (the task's pytree; a [d] array for linreg/logreg).
        diverged_step: first step at which θ became non-finite, or None.
        bits_per_message: upload bits of one delivered message.
    """

    config: ExperimentConfig
    history: dict[str, np.ndarray]
    params: Any
    diverged_step: int | None
    bits_per_message: int

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    def final(self) -> dict[str, float]:
        """The last evaluated value of every history entry."""
        return {k: v[-1].item() for k, v in self.history.items()}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A configuration with its data loaded, checked and laid out for the engine."""

    cfg: ExperimentConfig  # the configuration that runs (see `with_trace`)
    static: Static
    data: RunData
    comps: Components  # the task, compressor, feedback rule, code and straggler model

    @property
    def bits_per_message(self) -> int:
        return int(self.comps.compressor.bits)

    @property
    def unravel(self) -> Any:
        """θ [d] -> the task's parameter pytree."""
        return self.comps.task.unravel


def with_trace(cfg: ExperimentConfig, straggler_trace) -> ExperimentConfig:
    """The configuration that runs: a given straggler trace is the straggler pattern,
    whatever model `cfg.straggler` names (the fixed decoder still uses straggler_prob)."""
    if straggler_trace is None or cfg.straggler == "trace":
        return cfg
    return cfg.replace(straggler="trace", wait_for=None)


def _check_trace(cfg: ExperimentConfig, trace) -> jax.Array | None:
    if cfg.straggler != "trace":
        return None
    if trace is None:
        raise ConfigError("straggler='trace' needs straggler_trace: a (steps, num_devices) bool array")
    t = np.asarray(trace)
    if t.dtype != np.bool_:
        raise ConfigError(f"straggler_trace has dtype {t.dtype}: must be bool (True = straggles)")
    if t.shape != (cfg.steps, cfg.num_devices):
        raise ConfigError(
            f"straggler_trace has shape {t.shape}: must be (steps, num_devices) = ({cfg.steps}, {cfg.num_devices})"
        )
    return jnp.asarray(t)


def prepare(
    cfg: ExperimentConfig, data=None, straggler_trace=None, test_data=None, *, dataset=None
) -> Prepared:
    """Load/partition data and run every data-dependent check; nothing is compiled.
    `dataset`: the already loaded `data.load_dataset(cfg)` (a sweep loads it once)."""
    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"cfg={type(cfg).__name__} is invalid: must be an ExperimentConfig")
    cfg = with_trace(cfg, straggler_trace)
    trace = _check_trace(cfg, straggler_trace)
    k_parts = cfg.num_partitions_resolved
    if data is None:
        if test_data is not None:
            raise ConfigError("test_data is only used together with data=(X, y)")
        loaded = dataset if dataset is not None else data_lib.load_dataset(cfg)
        ds = truncate_to_multiple(loaded, k_parts)
    else:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ConfigError(f"data={type(data).__name__} is invalid: must be a pair (X, y)")
        ds = data_lib.from_arrays(data[0], data[1], cfg.task, test=test_data)
    xp, yp = partition(ds.x_train, ds.y_train, k_parts, cfg.partitioning, cfg.data_seed, cfg.dirichlet_alpha)
    n_k = xp.shape[1]
    if cfg.batch_size is not None and cfg.batch_size > n_k:
        raise ConfigError(f"batch_size={cfg.batch_size} is invalid: must be <= rows per partition ({n_k})")
    dtype = float_dtype(cfg)
    num_classes = ds.num_classes
    if cfg.task == "logreg" and num_classes not in (0, 2):
        raise ConfigError(f"data has {num_classes} classes: task='logreg' needs labels in {{0, 1}}")
    if data is not None and cfg.task != "linreg" and cfg.task != "logreg" and num_classes != cfg.num_classes:
        # user labels set the class count: the config must say the same (it is what the results record)
        raise ConfigError(
            f"num_classes={cfg.num_classes} is invalid: the labels of data=(X, y) (and test_data) run "
            f"0..{num_classes - 1}, so task={cfg.task!r} has {num_classes} classes; set num_classes={num_classes}"
        )
    fields = program_fields(cfg)
    feature_shape = tuple(int(s) for s in xp.shape[2:])
    task = task_of(fields, feature_shape, int(num_classes), dtype)
    static = Static(
        fields=fields,
        feature_shape=feature_shape,
        num_classes=int(num_classes),
        dim=task.dim,
        compress_k=resolve_k(task.dim, cfg.compress_k, cfg.compress_ratio),
        device_momentum=cfg.device_momentum > 0,
        wait_mode=cfg.wait_for is not None,
        components=component_serials(cfg),
        steps=cfg.steps,
        points=len(eval_schedule(cfg)),
    )
    comps = components(static)
    if comps.feedback.check is not None:
        comps.feedback.check(cfg)
    y_dtype = dtype if cfg.task == "linreg" else jnp.int32
    run_data = RunData(
        xp=jnp.asarray(xp, dtype),
        yp=jnp.asarray(yp, y_dtype),
        x_test=jnp.asarray(ds.x_test, dtype),
        y_test=jnp.asarray(ds.y_test, y_dtype),
        trace=trace,
    )
    return Prepared(cfg, static, run_data, comps)


def program_fields(cfg: ExperimentConfig) -> tuple[tuple[str, Any], ...]:
    """The static fields that identify `cfg`'s compiled program: `static_fields(cfg)`
    less the `DATA_VALUE_FIELDS` that none of its component factories (compressor,
    feedback, code, decoder, straggler model, registered model) takes by name. The data
    is an input of the program, so runs on other draws or splits of the same shapes
    (data_seed, partitioning, ...) reuse one compiled program."""
    asked = set().union(*(reg.asks_for(name) for reg, name in _registered_components(cfg)))
    drop = set(DATA_VALUE_FIELDS) - asked
    return tuple((n, v) for n, v in static_fields(cfg) if n not in drop)


def _registered_components(cfg: ExperimentConfig) -> list[tuple[Any, str]]:
    """(registry, name) of each registered component inside `cfg`'s program: compressor,
    code, decoder, feedback rule, straggler model and, for a registered model, the task."""
    pairs = [
        (COMPRESSORS, cfg.compressor),
        (CODES, cfg.allocation),
        (DECODERS, cfg.decoder),
        (FEEDBACKS, cfg.error_feedback),
        (STRAGGLER_MODELS, cfg.straggler),
    ]
    if cfg.task in MODELS:
        pairs.append((MODELS, cfg.task))
    return pairs


def component_serials(cfg: ExperimentConfig) -> tuple[tuple[str, str, int], ...]:
    """(kind, name, registration serial) of each registered component `cfg` uses."""
    return tuple((reg.kind, name, reg.entry(name).serial) for reg, name in _registered_components(cfg))


def component_fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """ "<kind> <name>" -> `Registry.fingerprint` of each registered component `cfg` uses
    (its dataset included): what a results directory records to refuse a resume after a
    component changed."""
    pairs = [*_registered_components(cfg), (DATASETS, cfg.dataset)]
    return {f"{reg.kind} {name}": reg.fingerprint(name) for reg, name in pairs}


def history_to_numpy(history: dict, bits_per_message: int) -> tuple[dict[str, np.ndarray], int | None]:
    """Host-side history: numpy arrays, cumulative bits (exact, float64) and the
    divergence step (None if the run stayed finite)."""
    hist = {k: np.asarray(v) for k, v in history.items()}
    div = int(hist.pop("diverged_step"))
    hist["bits"] = hist["delivered"].astype(np.float64) * float(bits_per_message)
    return hist, (div if div >= 0 else None)


CHUNK_SECONDS = 0.25  # target wall time of one chunk: how soon a run notices Ctrl-C


def run_in_chunks(prep: Prepared) -> tuple[jax.Array, dict]:
    """(θ_final, history) of a prepared run, advanced in chunks whose length adapts so
    each takes about `CHUNK_SECONDS`; between chunks a pending Ctrl-C or SIGTERM stops
    the run (`interrupt.check`). Chunking never changes the result: every chunk runs
    the same compiled step."""
    progs = compiled_run(prep.static)
    hp = hparams_of(prep.cfg)
    steps = prep.cfg.steps
    carry = progs.init(hp, prep.data)
    t, n, timed = 0, 1, False  # start small: the chunk grows at most 4x per call to CHUNK_SECONDS
    while t < steps:
        n = min(n, steps - t)
        start = time.perf_counter()
        carry = jax.block_until_ready(progs.advance(carry, hp, prep.data, np.int32(t), np.int32(n)))
        elapsed = time.perf_counter() - start
        interrupt.check()
        t += n
        if timed:  # the first call compiles: its time says nothing about a step
            n = int(min(4 * n, max(1, n * CHUNK_SECONDS / max(elapsed, 1e-6))))
        timed = True
    return history(carry)


def run(cfg: ExperimentConfig, data=None, straggler_trace=None, test_data=None) -> RunResult:
    """Simulate one training run of `cfg`.

    Args:
        cfg: the configuration.
        data: optional user arrays (X [n, d], y [n]); K contiguous equal row shards.
        straggler_trace: (steps, M) bool array, True = straggles; when given it is the
            straggler pattern (the run's config gets straggler='trace').
        test_data: optional (X_test, y_test) evaluated beside user data.

    Example:
        >>> res = run(ExperimentConfig(task="linreg", steps=20))
        >>> res.history["loss"].shape
        (21,)
    """
    prep = prepare(cfg, data, straggler_trace, test_data)
    params, records = run_in_chunks(prep)
    hist, div = history_to_numpy(records, prep.bits_per_message)
    params = jax.tree_util.tree_map(np.asarray, prep.unravel(params))
    return RunResult(prep.cfg, hist, params, div, prep.bits_per_message)
