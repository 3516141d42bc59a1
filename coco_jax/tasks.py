"""Learning tasks: a model, its per-row mean loss and its accuracy, over a flat
parameter vector so the engine can treat every device's gradient as a [d] array.

linreg, logreg and softmax are linear with no intercept and start at θ = 0 (the
contract); mlp and cnn are flax (linen) networks initialised from the run's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from coco_jax.config import ExperimentConfig


class Task(NamedTuple):
    """A model over flat parameters θ [d].

    Attributes:
        name: task name.
        dim: d, the number of parameters.
        init: key -> θ0 [d].
        loss: (θ [d], x [n, ...], y [n]) -> mean loss over the n rows.
        accuracy: (θ, x, y) -> fraction of rows classified correctly, or None (linreg).
        segments: parameter count of each layer in θ's order (per-layer compressor groups).
        unravel: θ [d] -> the model's parameter pytree.
    """

    name: str
    dim: int
    init: Callable[[jax.Array], jax.Array]
    loss: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    accuracy: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None
    segments: tuple[int, ...]
    unravel: Callable[[jax.Array], object]


def _classification(logits_fn, binary: bool):
    """Loss and accuracy for logits_fn(θ, x) -> [n] (binary) or [n, C]."""

    def loss(theta, x, y):
        z = logits_fn(theta, x)
        if binary:
            # mean log-loss with labels in {0, 1}: softplus(z) - y z
            return jnp.mean(jax.nn.softplus(z) - y.astype(z.dtype) * z)
        log_p = jax.nn.log_softmax(z, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None].astype(jnp.int32), axis=-1))

    def accuracy(theta, x, y):
        z = logits_fn(theta, x)
        pred = (z > 0).astype(jnp.int32) if binary else jnp.argmax(z, axis=-1)
        return jnp.mean((pred == y.astype(jnp.int32)).astype(z.dtype))

    return loss, accuracy


class MLP(nn.Module):
    widths: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    channels: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x):  # x [n, H, W, C]
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x))
            if min(x.shape[1], x.shape[2]) >= 4:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


def make_task(cfg: ExperimentConfig, x_shape: tuple[int, ...], num_classes: int, dtype) -> Task:
    """The task of `cfg` for rows of shape x_shape[1:] (x_shape = one example batch's shape)."""
    feature_shape = tuple(x_shape[1:])
    if cfg.task in ("linreg", "logreg", "softmax"):
        if len(feature_shape) != 1:
            raise ValueError(f"task={cfg.task!r} needs 2-D data [n, d]; got rows of shape {feature_shape}")
        d_in = feature_shape[0]
        if cfg.task == "linreg":

            def loss(theta, x, y):
                r = x @ theta - y
                return 0.5 * jnp.mean(r * r)

            return Task("linreg", d_in, lambda key: jnp.zeros(d_in, dtype), loss, None, (d_in,), lambda t: t)
        if cfg.task == "logreg":
            loss, acc = _classification(lambda theta, x: x @ theta, binary=True)
            return Task("logreg", d_in, lambda key: jnp.zeros(d_in, dtype), loss, acc, (d_in,), lambda t: t)
        c = num_classes
        shape = (d_in, c)
        loss, acc = _classification(lambda theta, x: x @ theta.reshape(shape), binary=False)
        return Task(
            "softmax",
            d_in * c,
            lambda key: jnp.zeros(d_in * c, dtype),
            loss,
            acc,
            (d_in * c,),
            lambda t: t.reshape(shape),
        )

    if cfg.task == "mlp":
        out = 1 if num_classes == 2 else num_classes
        module = MLP(cfg.hidden_sizes, out)
    else:
        module = CNN(cfg.cnn_channels, num_classes)
    template = module.init(jax.random.key(0), jnp.zeros((1, *feature_shape), dtype))
    flat, unravel = ravel_pytree(template)
    segments = tuple(int(leaf.size) for leaf in jax.tree_util.tree_leaves(template))
    binary = num_classes == 2

    def logits(theta, x):
        z = module.apply(unravel(theta), x)
        return z[:, 0] if binary else z

    loss, acc = _classification(logits, binary=binary)

    def init(key):
        params = module.init(key, jnp.zeros((1, *feature_shape), dtype))
        return ravel_pytree(params)[0].astype(dtype)

    return Task(cfg.task, int(flat.size), init, loss, acc, segments, unravel)
