"""Error-feedback rules: what one device sends given its coded gradient, and what the
server reconstructs from it. Written for one device; the engine vmaps over devices.

Every rule is a pair of pure functions (optax style):
    init(dim, dtype) -> state                       # per-device memory
    apply(key, g, state, straggles, hp) -> (estimate, compressed_input, message, state)

`estimate` [d] is the server's reconstruction of this device's coded gradient, which
it weights with the decoding weight w_m; `compressed_input` is the vector handed to
the compressor and `message` what it returned (for contraction diagnostics); a
straggler's outputs are computed (fixed shapes) but its weight is zero and its
state follows `straggler_error`.

Rules:
    none  c = C(g); estimate = c.
    ef    classic error feedback (Stich et al. 2018; Karimireddy et al. 2019; COCO-EF):
          v = g + e, c = C(v), e <- v - c; estimate = c.
    ef21  Richtárik et al. 2021, with stragglers: c = C(g - h), h <- h + c; the server
          holds a copy of every h_m and aggregates all of them, so a straggler's copy
          stays as last received (estimate = h after the update).
    diana Mishchenko et al. 2019, unbiased compression of gradient differences:
          q = Q(g - h), estimate = h + q, h <- h + α q (both sides).

What a straggler does with its memory (`straggler_error`, for ef): keep (default,
untouched), reset (zeroed), accumulate (e <- e + g: its late gradient is sent later).
For ef21 and diana a straggler's shift h stays as it was (nothing was exchanged).

Device momentum (β = hp.device_momentum > 0, EF-SGDM style): u <- β u + g before the
rule, only on steps the device delivers; the rule then sees u instead of g.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from coco_jax.compressors import Compressor
from coco_jax.config import HParams


class Feedback(NamedTuple):
    name: str
    init: Callable[[int, object], dict]
    apply: Callable[..., tuple[jax.Array, jax.Array, jax.Array, dict]]


def memory_norm(name: str, state: dict, g: jax.Array) -> jax.Array:
    """‖memory‖ of one device: ef: ‖e‖; ef21/diana: ‖g − h‖ (what is left to send); none: 0."""
    if name == "ef":
        return jnp.linalg.norm(state["e"])
    if name in ("ef21", "diana"):
        return jnp.linalg.norm(g - state["h"])
    return jnp.zeros((), g.dtype)


def make_feedback(
    name: str, compressor: Compressor, straggler_error: str = "keep", device_momentum: bool = False
) -> Feedback:
    """The feedback rule `name` (none | ef | ef21 | diana) around `compressor`."""

    def init(dim: int, dtype) -> dict:
        state = {}
        if name == "ef":
            state["e"] = jnp.zeros(dim, dtype)
        if name in ("ef21", "diana"):
            state["h"] = jnp.zeros(dim, dtype)
        if device_momentum:
            state["u"] = jnp.zeros(dim, dtype)
        return state

    def apply(key, g, state, straggles, hp: HParams):
        new = dict(state)
        if device_momentum:
            u = hp.device_momentum * state["u"] + g
            new["u"] = jnp.where(straggles, state["u"], u)
            g = u
        if name == "none":
            c = compressor.compress(key, g)
            return c, g, c, new
        if name == "ef":
            e = state["e"]
            v = g + e
            c = compressor.compress(key, v)
            if straggler_error == "keep":
                e_straggler = e
            elif straggler_error == "reset":
                e_straggler = jnp.zeros_like(e)
            else:  # accumulate
                e_straggler = e + g
            new["e"] = jnp.where(straggles, e_straggler, v - c)
            return c, v, c, new
        h = state["h"]
        delta = g - h
        c = compressor.compress(key, delta)
        if name == "ef21":
            h_new = h + c
            new["h"] = jnp.where(straggles, h, h_new)
            return new["h"], delta, c, new
        # diana
        new["h"] = jnp.where(straggles, h, h + hp.diana_alpha * c)
        return h + c, delta, c, new

    return Feedback(name, init, apply)
