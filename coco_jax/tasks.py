"""Learning tasks: a model, its per-row mean loss and its accuracy, over a flat
parameter vector so the engine can treat every device's gradient as a [d] array.

linreg, logreg and softmax are linear with no intercept and start at θ = 0 (the
contract); mlp and cnn are flax (linen) networks initialised from the run's seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from coco_jax.config import LINEAR_TASKS, StaticFields
from coco_jax.errors import ConfigError
from coco_jax.registry import MODELS, Entry, register_model


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
    """Fully connected ReLU network."""

    widths: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """3x3 ReLU convolutions (2x2 average pooling while the image is >= 4 wide), then a
    dense layer."""

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


@register_model("mlp")
def mlp(num_classes: int, hidden_sizes: tuple[int, ...] = (32,)) -> nn.Module:
    """MLP with `hidden_sizes` ReLU layers (flat rows)."""
    return MLP(hidden_sizes, num_classes)


@register_model("cnn", images=True)
def cnn(num_classes: int, cnn_channels: tuple[int, ...] = (8, 16)) -> nn.Module:
    """CNN with `cnn_channels` 3x3 conv layers (images [n, H, W, C])."""
    return CNN(cnn_channels, num_classes)


def _check_model(module, entry: Entry, args: dict) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"model {entry.name!r}: the factory returned {type(module).__name__}, must return a flax linen Module"
        )
    return module


MODELS.check = _check_model


def _linear_task(name: str, d_in: int, num_classes: int, dtype) -> Task:
    """linreg / logreg / softmax over θ [d] (no intercept, θ0 = 0)."""

    def zeros(key):
        return jnp.zeros(dim, dtype)

    if name == "linreg":
        dim = d_in

        def loss(theta, x, y):
            r = x @ theta - y
            return 0.5 * jnp.mean(r * r)

        return Task("linreg", dim, zeros, loss, None, (dim,), lambda t: t)
    if name == "logreg":
        dim = d_in
        loss, acc = _classification(lambda theta, x: x @ theta, binary=True)
        return Task("logreg", dim, zeros, loss, acc, (dim,), lambda t: t)
    shape = (d_in, num_classes)
    dim = d_in * num_classes
    loss, acc = _classification(lambda theta, x: x @ theta.reshape(shape), binary=False)
    return Task("softmax", dim, zeros, loss, acc, (dim,), lambda t: t.reshape(shape))


def make_task(cfg, x_shape: tuple[int, ...], num_classes: int, dtype) -> Task:
    """The task of `cfg` (a linear task or a registered model) for rows of shape
    x_shape[1:] (x_shape = one example batch's shape)."""
    feature_shape = tuple(x_shape[1:])
    if cfg.task in LINEAR_TASKS:
        if len(feature_shape) != 1:
            raise ConfigError(f"task={cfg.task!r} needs 2-D data [n, d]; got rows of shape {feature_shape}")
        return _linear_task(cfg.task, feature_shape[0], num_classes, dtype)
    out = 1 if num_classes == 2 else num_classes
    fields = cfg.to_dict()
    module = MODELS.build(cfg.task, {"num_classes": out, "feature_shape": feature_shape}, fields)
    x0 = jnp.zeros((1, *feature_shape), dtype)
    try:
        template = module.init(jax.random.key(0), x0)
        logits_shape = jax.eval_shape(module.apply, template, x0).shape
    except Exception as err:
        raise ConfigError(
            f"model {cfg.task!r}: init/apply failed on a batch of shape {x0.shape}: {type(err).__name__}: {err}"
        ) from err
    if logits_shape != (1, out):
        raise ConfigError(
            f"model {cfg.task!r}: returned logits of shape {logits_shape} for a batch of 1, must be (1, {out})"
        )
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


def task_of(fields: tuple, feature_shape: tuple[int, ...], num_classes: int, dtype) -> Task:
    """`make_task` of a configuration's static fields (`config.static_fields`), cached:
    one task per static configuration, data shape and model registration (a model
    re-registered with overwrite=True is rebuilt)."""
    task = dict(fields)["task"]
    serial = MODELS.entry(task).serial if task in MODELS else 0
    return _task_of(fields, feature_shape, num_classes, dtype, serial)


@functools.lru_cache(maxsize=128)
def _task_of(fields: tuple, feature_shape: tuple[int, ...], num_classes: int, dtype, serial: int) -> Task:
    del serial  # part of the cache key only
    return make_task(StaticFields(dict(fields)), (1, *feature_shape), num_classes, dtype)
