"""Decoders: the server's weights for the coded gradients that arrived.

A decoder turns the set of devices that delivered into weights w [M] (zero for every
straggler) and the server forms

    g_hat = sum_m w_m g_m = sum_k (B^T w)_k grad f_k,

an estimate of (1/K) sum_k grad f_k (B [M, K] is the code, `coco_jax.coding`). Exact
recovery means B^T w = (1/K) * 1. A decoder is registered like every component
(`cj.register_decoder`); its ``weights(B, straggles, rates, replication)`` is written
for one step and is jit/vmap-safe.

Built-in decoders (w_m = 0 for every straggler; r = ``Allocation.replication``, the
common column sum of B):

- ``fixed``: w_m = 1 / (K (1 - p_m) r) with p_m the nominal straggling rate of device
  m. Unbiased: E[B^T w] = (1/K) * 1 (for ``bernoulli`` also over B), for every code
  with a common column sum and every straggler model.
- ``received``: w_m = M / (|S| K r) for m in the set S of non-stragglers (0 if S
  empty): an average of what arrives. Unbiased up to the chance that nobody delivers
  when every device straggles with the same law; refused with straggler models whose
  rates differ (it would over-weight the reliable devices' partitions).
- ``optimal``: minimum-norm least-squares w over S with B_S^T w ~= (1/K) * 1, by a
  truncated SVD in B's dtype with the relative cutoff `lstsq_rcond` = 4 eps
  sqrt(max(M, K)) (not pinv's default); exact whenever the code can decode, to the
  dtype's precision (`coco_jax.cyclic_mds` for the real-valued code's bound), biased on
  the straggler sets it cannot decode. An O(M K^2) solve per step, so it is never a
  traced choice (`traceable=False`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from coco_jax.coding import make_allocation
    >>> alloc = make_allocation("cyclic", 4, 4, 1)
    >>> B = alloc.sample(jax.random.key(0))  # [4, 4]
    >>> w = decode_weights("optimal", B, jnp.array([False, True, False, False]),
    ...                    jnp.zeros(4), alloc.replication)
    >>> bool(jnp.allclose(B.T @ w, 0.25, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.coding import allocation_of
from coco_jax.config import float_dtype_of
from coco_jax.errors import ConfigError, fail
from coco_jax.registry import DECODERS, STRAGGLER_MODELS, Entry, register_decoder

__all__ = [
    "Decoder",
    "can_decode",
    "decode_weights",
    "lstsq_rcond",
    "make_decoder",
    "optimal_weights",
    "register_decoder",
    "svd_cutoff",
]


class Decoder(NamedTuple):
    """A decoder; what a decoder factory returns.

    Attributes:
        weights: ``(B [M, K], straggles [M] bool, rates [M], replication) -> w [M]``
            in B's dtype, zero for every straggler. ``rates`` are the devices' nominal
            straggling probabilities, ``replication`` the code's common column sum r
            (1.0 when it has none). jit/vmap-safe.
        name: registry name (filled in from the registration when None).
    """

    weights: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
    name: str | None = None


# ------------------------------------------------------------------ the cutoff


def svd_cutoff(eps: float, num_devices: int, num_partitions: int) -> float:
    """4 eps sqrt(max(M, K)): the relative singular-value cutoff for machine epsilon `eps`."""
    return 4.0 * eps * math.sqrt(max(int(num_devices), int(num_partitions)))


def lstsq_rcond(dtype, num_devices: int, num_partitions: int) -> float:
    """The `optimal` decoder's relative singular-value cutoff: 4 eps sqrt(max(M, K)).

    A singular value of the survivors' matrix below ``rcond * sigma_max`` is treated as
    zero. Rounding B to ``dtype`` and the SVD itself leave the exactly-zero singular
    values of a rank-deficient survivor matrix (fewer than s stragglers of an MDS code)
    at about eps * sigma_max (measured at most 0.7 eps for M <= 100 in float32), so the
    cutoff sits about 10 times above that noise; every genuine singular value of the
    built-in codes lies above it wherever `check_cyclic_mds` accepts the configuration
    (its ``sigma_floor`` condition). jnp.linalg.pinv's default (10 eps max(M, K)) cut
    genuine singular values of cyclic MDS codes at M = 20 in float32.
    """
    return svd_cutoff(float(jnp.finfo(float_dtype_of(dtype)).eps), num_devices, num_partitions)


# ------------------------------------------------------------------ built-ins


def _alive(straggles: jax.Array) -> jax.Array:
    return jnp.logical_not(jnp.asarray(straggles, bool))  # [M]


@register_decoder("fixed")
def fixed() -> Decoder:
    """w_m = 1 / (K (1 - p_m) r) for every non-straggler (a rate of 1 gives weight 0)."""

    def weights(B, straggles, rates, replication):
        dtype = B.dtype
        k_parts = B.shape[1]
        keep = 1.0 - jnp.asarray(rates, dtype)  # [M]
        keep = jnp.where(keep > 0, keep, 1.0)
        w = 1.0 / (k_parts * keep * jnp.asarray(replication, dtype))
        return jnp.where(_alive(straggles) & (jnp.asarray(rates) < 1), w, 0.0).astype(dtype)

    return Decoder(weights)


@register_decoder("received", exchangeable=True)
def received() -> Decoder:
    """w_m = M / (|S| K r) for every non-straggler: the average of what arrives."""

    def weights(B, straggles, rates, replication):
        del rates
        dtype = B.dtype
        m_dev, k_parts = B.shape
        alive = _alive(straggles)
        n_alive = jnp.maximum(jnp.sum(alive), 1).astype(dtype)
        w = m_dev / (n_alive * k_parts * jnp.asarray(replication, dtype))
        return jnp.where(alive, w, 0.0).astype(dtype)

    return Decoder(weights)


def optimal_weights(B: jax.Array, straggles: jax.Array, cutoff: float | None = None) -> jax.Array:
    """The minimum-norm least-squares w [M] of B_S^T w = (1/K) 1 over the non-stragglers
    S: a truncated SVD of the masked [K, M] matrix (fixed shapes), singular values <=
    ``cutoff * sigma_max`` dropped (default `lstsq_rcond` of B's dtype and shape)."""
    dtype = B.dtype
    m_dev, k_parts = B.shape
    cutoff = lstsq_rcond(dtype, m_dev, k_parts) if cutoff is None else cutoff
    alive = _alive(straggles)
    A = (B * alive.astype(dtype)[:, None]).T  # [K, M]
    target = jnp.full((k_parts,), 1.0 / k_parts, dtype)  # [K]
    u, sv, vt = jnp.linalg.svd(A, full_matrices=False)  # [K, r], [r], [r, M]
    keep = sv > jnp.asarray(cutoff, dtype) * sv[0]  # sv[0] = sigma_max; all False if A = 0
    inv = jnp.where(keep, 1.0 / jnp.where(keep, sv, 1.0), 0.0)  # [r]
    w = vt.T @ (inv * (u.T @ target))  # [M]
    return jnp.where(alive, w, 0.0).astype(dtype)


@register_decoder("optimal", replication=False, traceable=False)
def optimal() -> Decoder:
    """The minimum-norm least-squares weights over the non-stragglers (`optimal_weights`)."""

    def weights(B, straggles, rates, replication):
        del rates, replication
        return optimal_weights(B, straggles)

    return Decoder(weights)


# ------------------------------------------------------------------- building


def _check_decoder(decoder, entry: Entry, args: dict) -> Decoder:
    """A decoder factory's result, checked: a `Decoder` whose weights map B [M, K] and
    a straggler mask [M] to w [M] (traced with `jax.eval_shape`)."""
    if not isinstance(decoder, Decoder):
        raise ConfigError(
            f"decoder {entry.name!r}: the factory returned {type(decoder).__name__}, must return "
            "cj.Decoder(weights=...)"
        )
    if not callable(decoder.weights):
        raise ConfigError(f"decoder {entry.name!r}: weights={decoder.weights!r} is not callable")
    m_dev, k_parts = args.get("num_devices"), args.get("num_partitions")
    if m_dev is not None and k_parts is not None:
        dtype = args.get("dtype") or jnp.float32
        spec = (
            jax.ShapeDtypeStruct((m_dev, k_parts), dtype),
            jax.ShapeDtypeStruct((m_dev,), bool),
            jax.ShapeDtypeStruct((m_dev,), dtype),
            jax.ShapeDtypeStruct((), dtype),
        )
        try:
            out = jax.eval_shape(decoder.weights, *spec)
        except Exception as err:
            raise ConfigError(
                f"decoder {entry.name!r}: weights(B [{m_dev}, {k_parts}], straggles [{m_dev}], rates, "
                f"replication) fails: {type(err).__name__}: {err}"
            ) from err
        if getattr(out, "shape", None) != (m_dev,):
            raise ConfigError(
                f"decoder {entry.name!r}: weights returned shape {getattr(out, 'shape', type(out).__name__)}, "
                f"must return w of shape ({m_dev},)"
            )
    return decoder._replace(name=decoder.name or entry.name)


DECODERS.check = _check_decoder


def make_decoder(
    name: str, num_devices: int, num_partitions: int, dtype=jnp.float32, fields: dict | None = None
) -> Decoder:
    """The registered decoder `name` for M devices, K partitions and `dtype` (cached:
    equal arguments give the same object); `fields` are static config fields its
    factory may ask for."""
    provided = {
        "num_devices": int(num_devices),
        "num_partitions": int(num_partitions),
        "dtype": jnp.dtype(dtype).type,
    }
    return DECODERS.build(name, provided, fields or {})


def decode_weights(
    decoder: str,
    B: jax.Array,
    straggles: jax.Array,
    straggle_rates: jax.Array,
    replication,
    *,
    rcond=None,
) -> jax.Array:
    """Decoding weights w [M] of the registered decoder `decoder`; zero for every
    straggler. jit/vmap friendly.

    Args:
        decoder: a registered decoder name (static).
        B: [M, K] encoding matrix (its dtype is the working dtype).
        straggles: [M] bool, True = the device did not deliver.
        straggle_rates: [M] nominal straggling probabilities (used by ``fixed``;
            a rate of 1 gives weight 0 instead of inf).
        replication: ``Allocation.replication`` (python float or array).
        rcond: ``optimal`` only: relative cutoff of the least-squares solve (singular
            values <= rcond * sigma_max are dropped); default `lstsq_rcond` of B's
            dtype and shape.

    Returns:
        w [M] in B's dtype; the estimate of (1/K) sum_k g_k is sum_m w_m (B g)_m.
    """
    B = jnp.asarray(B)
    B = B.astype(B.dtype if jnp.issubdtype(B.dtype, jnp.floating) else jnp.float32)
    if rcond is not None:
        if decoder != "optimal":
            fail("rcond", rcond, f"is only used by decoder 'optimal', not {decoder!r}")
        return optimal_weights(B, straggles, rcond)
    dec = make_decoder(decoder, B.shape[0], B.shape[1], B.dtype)
    return dec.weights(B, jnp.asarray(straggles, bool), jnp.asarray(straggle_rates), replication)


def can_decode(B, straggles, *, tol: float = 1e-5) -> bool:
    """Whether (1/K) * 1 lies exactly in the span of the non-stragglers' rows (numpy).

    Args:
        B: [M, K] encoding matrix.
        straggles: [M] bool, True = straggles.
        tol: tolerance on the max-abs residual of the float64 least-squares fit of the
            all-ones vector (loose enough for float32 copies of cyclic_mds codes).
    """
    B = np.asarray(B, np.float64)
    alive = ~np.asarray(straggles, bool)
    k_parts = B.shape[1]
    target = np.ones(k_parts)
    if not alive.any():
        return False
    Bs = B[alive]  # [|S|, K]
    w, *_ = np.linalg.lstsq(Bs.T, target, rcond=None)
    return bool(np.abs(Bs.T @ w - target).max() <= tol)


# -------------------------------------------------------------- config checks


@DECODERS.add_config_check
def check_decoder(cfg) -> None:
    """Refuse decoders the code or the straggler model cannot serve: a decoder that uses
    the common column sum r needs a code that has one, and an average of what arrives
    (``exchangeable``) is unbiased only when every device straggles with the same law."""
    entry = DECODERS.entry(cfg.decoder)
    alloc = allocation_of(cfg)
    if entry.option("replication") and alloc.replication is None:
        if alloc.random:
            why = (
                f"allocation={cfg.allocation!r} is a random code registered without its expected column "
                "sum: register it with cj.register_code(name, factory, replication=lambda M, K, s: ...)"
            )
        else:
            why = (
                f"allocation={cfg.allocation!r} has columns of B with different sums, so no common "
                "replication r exists"
            )
        fail("decoder", cfg.decoder, f"{why} for the {cfg.decoder} weights; or use decoder='optimal'")
    if not entry.option("exchangeable"):
        return
    same_law = STRAGGLER_MODELS.entry(cfg.straggler).option("exchangeable")
    loads = None if alloc.matrix is None else (alloc.matrix != 0).sum(axis=1)
    equal_loads = loads is not None and bool(np.all(loads == loads[0]))
    if same_law is False or (same_law == "loads" and not equal_loads):
        why = "devices straggle at different rates" if same_law is False else "devices hold unequal loads"
        fail(
            "decoder",
            cfg.decoder,
            f"with straggler={cfg.straggler!r} and allocation={cfg.allocation!r} {why}, so averaging what "
            "arrives over-weights the reliable devices' partitions (a biased gradient); use decoder='fixed' "
            "(unbiased: it divides by each device's own rate) or 'optimal'",
        )
