"""Partitioning rows into the K data partitions of a run (pure numpy).

`partition` always gives K equal shards of n // K rows and refuses an n that K does
not divide; named datasets are first cut with `truncate_to_multiple`, user data never
is. The schemes (`config.PARTITIONINGS`) are described on `partition`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from coco_jax.config import PARTITIONINGS
from coco_jax.data import Dataset, describe_arrays
from coco_jax.errors import ConfigError, fail

__all__ = ["partition", "truncate_to_multiple"]


def truncate_to_multiple(ds: Dataset, k: int) -> Dataset:
    """Drop the last ``n % k`` training rows so ``k`` equal partitions exist (named
    datasets only; user data is never truncated). The test set is unchanged."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("num_partitions", k, "must be an integer >= 1")
    n = ds.x_train.shape[0]
    keep = n - n % k
    if keep == 0:
        raise ConfigError(
            f"data={ds.name!r} is invalid: {n} training rows cannot fill num_partitions={k} partitions"
        )
    if keep == n:
        return ds
    return dataclasses.replace(ds, x_train=ds.x_train[:keep], y_train=ds.y_train[:keep])


def _dirichlet_indices(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices [K, n/K] of a Dirichlet label-skew partition (see `partition`)."""
    n = labels.shape[0]
    n_k = n // k
    classes, inverse = np.unique(labels, return_inverse=True)
    c = classes.shape[0]
    props = rng.dirichlet(np.full(c, float(alpha)), size=k)  # [K, C]
    pools = [rng.permutation(np.flatnonzero(inverse == j)) for j in range(c)]
    taken = np.zeros(c, np.int64)  # rows already drawn from each class pool
    sizes = np.array([p.shape[0] for p in pools], np.int64)
    out = np.empty((k, n_k), np.int64)
    for part in range(k):
        counts = np.zeros(c, np.int64)
        need = n_k
        while need > 0:
            left = sizes - taken - counts  # rows still available per class
            q = np.where(left > 0, props[part], 0.0)
            total = q.sum()
            if not np.isfinite(total) or total <= 0:
                # q_k puts no mass on any class that still has rows: draw in proportion
                # to the rows left (only reachable for extreme alpha).
                q, total = left.astype(np.float64), float(left.sum())
            draw = rng.multinomial(need, q / total)
            accepted = np.minimum(draw, left)  # draws beyond a pool's size are redrawn
            counts += accepted
            need -= int(accepted.sum())
        rows = np.concatenate([pools[j][taken[j] : taken[j] + counts[j]] for j in range(c)])
        taken += counts
        out[part] = rng.permutation(rows)
    return out


def _check_partition_input(x, y, num_partitions, scheme: str, alpha: float):
    """(K, x, y) as arrays once the arguments of `partition` are valid."""
    if scheme not in PARTITIONINGS:
        fail("partitioning", scheme, f"must be one of {', '.join(PARTITIONINGS)}")
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        fail("num_partitions", num_partitions, "must be an integer >= 1")
    k = int(num_partitions)
    if k < 1:
        fail("num_partitions", k, "must be an integer >= 1")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"data={describe_arrays(x, y)} is invalid: partition needs x [n, ...] and y [n] with the same n"
        )
    n = x.shape[0]
    if n % k != 0 or n == 0:
        raise ConfigError(
            f"data={describe_arrays(x, y)} is invalid: n={n} training rows are not divisible into "
            f"K={k} equal partitions; named datasets are truncated to a multiple of K with "
            f"truncate_to_multiple, user data is not (pass n divisible by K)"
        )
    if scheme in ("sorted", "dirichlet") and not (y.dtype == bool or np.issubdtype(y.dtype, np.integer)):
        raise ConfigError(
            f"data={describe_arrays(x, y)} is invalid: partitioning={scheme!r} needs integer class "
            f"labels, found {y.dtype} targets (regression?)"
        )
    if scheme == "dirichlet" and (isinstance(alpha, bool) or not np.isfinite(alpha) or alpha <= 0):
        fail("dirichlet_alpha", alpha, "must be a finite number > 0")
    return k, x, y


def partition(
    x: np.ndarray,
    y: np.ndarray,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into K equal partitions: ``x [n, ...] -> [K, n/K, ...]``, ``y -> [K, n/K]``.

    Schemes:
        contiguous: K contiguous shards in row order (``np.split``); the contract for user data.
        iid: rows shuffled with ``seed``, then contiguous.
        sorted: stable sort by label, then contiguous (maximal label skew).
        dirichlet: partition k draws label proportions q_k ~ Dirichlet(alpha * 1_C) and is
            filled with n/K rows whose labels are drawn i.i.d. from q_k out of per-class
            pools (each shuffled with ``seed``) without replacement; when a class pool is
            exhausted, q_k is renormalised over the classes that still have rows (if q_k
            has no mass left at all, rows are drawn in proportion to what is left).
            Partitions are filled in order 0..K-1, so the last one takes what remains;
            every row is used exactly once; rows within a partition are shuffled.
            Small alpha -> few classes per partition; large alpha -> close to iid.

    Every scheme is deterministic for ``seed``; sorted and dirichlet need integer class
    labels. n must be divisible by K.

    Raises:
        ConfigError: bad scheme (field ``partitioning``), bad K, n not divisible by K or
        regression targets for a label-based scheme (field ``data``).
    """
    k, x, y = _check_partition_input(x, y, num_partitions, scheme, alpha)
    n = x.shape[0]
    n_k = n // k
    if scheme == "contiguous":
        idx = np.arange(n).reshape(k, n_k)
    elif scheme == "iid":
        idx = np.random.default_rng(seed).permutation(n).reshape(k, n_k)
    elif scheme == "sorted":
        idx = np.argsort(y, kind="stable").reshape(k, n_k)
    else:
        idx = _dirichlet_indices(y, k, alpha, np.random.default_rng(seed))
    return x[idx], y[idx]
