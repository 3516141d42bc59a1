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

__all__ = ["ConfigError", "ExperimentConfig", "HParams", "PRESETS", "RunResult", "preset", "run"]
__version__ = "0.1.0"
