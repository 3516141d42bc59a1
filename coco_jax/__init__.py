"""coco_jax: simulate distributed learning with stragglers, gradient coding and
compressed gradients with error feedback (COCO-EF) as one jit-compiled JAX program.

    >>> import coco_jax as cj
    >>> res = cj.run(cj.preset("coco-ef", steps=50))
    >>> res.history["loss"][-1] < res.history["loss"][0]
    True

New methods plug in by name (`register_compressor`, `register_code`,
`register_decoder`, `register_feedback`, `register_straggler_model`, `register_model`,
`register_dataset`, `register_preset`);
see the README, "Add your own compressor / code / feedback rule".
"""

from coco_jax.cache import setup_compilation_cache

setup_compilation_cache()  # before anything compiles: the library and the CLI share it

# Every module that registers built-in components, so their names exist from here on.
from coco_jax import (  # noqa: F401
    coding,
    compressors,
    cyclic_mds,
    datasets,
    decoders,
    feedback,
    presets,
    stragglers,
    tasks,
)
from coco_jax.compressors import Compressor
from coco_jax.config import ExperimentConfig, HParams
from coco_jax.data import Dataset
from coco_jax.decoders import Decoder
from coco_jax.engine import RunResult, run
from coco_jax.errors import ConfigError
from coco_jax.feedback import Feedback, Server
from coco_jax.presets import PRESETS, preset, register_preset
from coco_jax.registry import (
    register_code,
    register_compressor,
    register_dataset,
    register_decoder,
    register_feedback,
    register_model,
    register_straggler_model,
)
from coco_jax.results import load_results
from coco_jax.stragglers import StragglerModel
from coco_jax.sweep import Grid, SweepResult, sweep
from coco_jax.tuning import Criterion, LogGrid, load_tuning, tune  # registers the named criteria

__all__ = [
    "PRESETS",
    "Compressor",
    "ConfigError",
    "Criterion",
    "Dataset",
    "Decoder",
    "ExperimentConfig",
    "Feedback",
    "Grid",
    "HParams",
    "LogGrid",
    "RunResult",
    "Server",
    "StragglerModel",
    "SweepResult",
    "load_results",
    "load_tuning",
    "preset",
    "register_code",
    "register_compressor",
    "register_dataset",
    "register_decoder",
    "register_feedback",
    "register_model",
    "register_preset",
    "register_straggler_model",
    "run",
    "sweep",
    "tune",
]
__version__ = "0.1.0"
