"""Step-size schedules: eta_t = lr * f(t), t the 0-based iteration, t0 = lr_decay_steps.

    constant       f = 1
    inverse_time   f = 1 / (1 + t/t0)              (t0 -> inf: constant)
    inverse_sqrt   f = 1 / sqrt(1 + t/t0)
    cosine         f = (1 + cos(pi min(t, t0) / t0)) / 2   (0 from t0 on)
    step           f = 0.1 ** floor(t / t0)

The kind is a traced index (`config.LR_SCHEDULES`) and t0 a traced value, so a grid
over schedules and horizons is one compiled program: every formula is a few scalar
operations, and all of them are evaluated and the chosen one kept.

Example:
    >>> import jax.numpy as jnp
    >>> float(factor(jnp.int32(1), jnp.float32(10.0), jnp.float32(10.0)))  # inverse_time
    0.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from coco_jax.config import LR_SCHEDULES

__all__ = ["factor", "learning_rate"]


def factor(kind: jax.Array, t: jax.Array, t0: jax.Array) -> jax.Array:
    """f(t) of schedule number `kind` (an index into `config.LR_SCHEDULES`) at the
    0-based iteration `t` with horizon `t0` (> 0); in t0's dtype."""
    dtype = jnp.asarray(t0).dtype
    t = jnp.asarray(t, dtype)
    ratio = t / t0
    values = {
        "constant": jnp.ones_like(ratio),
        "inverse_time": 1.0 / (1.0 + ratio),
        "inverse_sqrt": jax.lax.rsqrt(1.0 + ratio),
        "cosine": 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(ratio, 1.0))),
        "step": jnp.asarray(0.1, dtype) ** jnp.floor(ratio),
    }
    return jnp.stack([values[name] for name in LR_SCHEDULES])[kind].astype(dtype)


def learning_rate(hp, t: jax.Array) -> jax.Array:
    """eta_t = hp.lr * f(t) for the configuration's schedule (t 0-based)."""
    return hp.lr * factor(hp.lr_schedule, t, hp.lr_decay_steps)
