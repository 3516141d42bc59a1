"""coco_jax: simulate distributed learning with stragglers, gradient coding and
compressed gradients with error feedback (COCO-EF) as one jit-compiled JAX program.

    >>> import coco_jax as cj
    >>> res = cj.run(cj.preset("coco-ef", steps=50))
    >>> res.history["loss"][-1] < res.history["loss"][0]
    True
"""

from coco_jax.config import ConfigError, ExperimentConfig, HParams
from coco_jax.engine import RunResult, run
from coco_jax.presets import PRESETS, preset
from coco_jax.results import load_results
from coco_jax.sweep import Grid, sweep

__all__ = [
    "PRESETS",
    "ConfigError",
    "ExperimentConfig",
    "Grid",
    "HParams",
    "RunResult",
    "load_results",
    "preset",
    "run",
    "sweep",
]
__version__ = "0.1.0"
