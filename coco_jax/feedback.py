"""Error-feedback rules: what one device sends given its coded gradient, what it keeps,
and how the server turns the delivered messages into its gradient estimate.

A rule is a small bundle of pure functions (optax style), written for ONE device; the
engine vmaps the device side over the M devices:

    state = init(dim, dtype)                          # one device's memory
    message, compressor_input, state = send(key, g, state, hp)   # a device that delivers
    state = hold(g, state, hp)                        # a straggler (default: unchanged)
    g_hat = aggregate(server)                         # the server's estimate (see `Server`)
    norm = memory(state, g)                           # ‖what is left to send‖ (diagnostic)

The server side belongs to the rule: plain rules sum the delivered messages with the
decoder's weights; rules that keep server copies of device states (EF21, DIANA) say
how those copies enter the estimate. The server's copy of a device's shift equals the
device's own (both sides apply the same update to the same message), so the simulation
stores it once, in the device state, and `aggregate` reads it from `Server.before` /
`Server.after`.

Built-in rules (registered like a user's, `cj.register_feedback`):
    none  c = C(g); ĝ = Σ_m w_m [m delivered] c_m.
    ef    classic error feedback (Stich et al. 2018; Karimireddy et al. 2019; COCO-EF):
          v = g + e, c = C(v), e <- v - c; ĝ as for none. A straggler's memory follows
          `straggler_error`: keep (untouched), reset (zeroed) or accumulate (e <- e + g,
          its late gradient is sent later). With accumulate every coded gradient is
          delivered eventually, so the server weights what arrives with the no-straggler
          weights w̄ (ĝ = Σ_m w̄_m [m delivered] c_m; long-run mean ∇F): dividing by the
          delivery probability as the fixed decoder does would count the late gradients
          twice (long-run mean ∇F / (1 − p)).
    ef21  Richtárik et al. 2021, with stragglers: c = C(g - h), h <- h + c. The server
          holds every device's h and aggregates all of them with the no-straggler
          weights w̄: ĝ = Σ_m w̄_m h_m (a straggler's h stays as last received).
    diana Mishchenko et al. 2019 with partial participation: c = Q(g - h) with an
          unbiased Q, h <- h + α c on both sides. The server uses every device's shift
          (a straggler's h_m is known to it) and the delivered corrections weighted by
          the decoder: ĝ = Σ_m w̄_m h_m + Σ_m w_m [m delivered] c_m. When the decoder is
          unbiased (E[w_m [m delivered]] = w̄_m), E ĝ = Σ_m w̄_m g_m = ∇F. α defaults to
          1/(ω+1), ω the compressor's variance constant (DIANA's bound).

Device momentum (`with_device_momentum`, β = hp.device_momentum, EF-SGDM style):
u <- β u + g before the rule, only on steps the device delivers; the rule sees u.

Device states are NamedTuples, as optax's transform states are (`NoMemory`,
`ErrorMemory`, `Shift`, `MomentumMemory`); a registered rule may use any pytree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from coco_jax.compressors import Compressor, make_compressor
from coco_jax.config import STRAGGLER_ERRORS, resolve_k, static_fields
from coco_jax.errors import ConfigError, fail
from coco_jax.registry import FEEDBACKS, Entry, register_feedback

State = Any  # one device's memory: a pytree of [d] arrays


class NoMemory(NamedTuple):
    """The state of a rule that keeps nothing (none)."""


class ErrorMemory(NamedTuple):
    """Error feedback's memory: what compression left out so far."""

    e: jax.Array  # [d]


class Shift(NamedTuple):
    """EF21's and DIANA's shift h, mirrored by the server."""

    h: jax.Array  # [d]


class MomentumMemory(NamedTuple):
    """Device momentum around another rule: the rule's own state and the momentum u."""

    rule: Any  # the inner rule's state
    u: jax.Array  # [d]


class Server(NamedTuple):
    """What the server aggregates at one step (all devices, leading axis M).

    weights: [M] the decoder's weights for this step's delivered set (0 for stragglers).
    full_weights: [M] the weights with no stragglers (w̄: Σ_m w̄_m B[m, k] = 1/K).
    delivered: [M] bool, the straggler mask (True = the message arrived).
    messages: [M, d] what each device's `send` returned (a straggler's is not sent).
    before: the device states before the step (leaves [M, d]).
    after: the device states after the step.
    """

    weights: jax.Array
    full_weights: jax.Array
    delivered: jax.Array
    messages: jax.Array
    before: State
    after: State


def keep(g: jax.Array, state: State, hp) -> State:
    """A straggler keeps its memory as it was."""
    del g, hp
    return state


def sum_delivered(server: Server) -> jax.Array:
    """ĝ = Σ_m w_m [m delivered] message_m: the decoder-weighted sum of what arrived."""
    w = jnp.where(server.delivered, server.weights, jnp.zeros_like(server.weights))
    return w @ server.messages


def no_memory(state: State, g: jax.Array) -> jax.Array:
    del state
    return jnp.zeros((), g.dtype)


class Feedback(NamedTuple):
    """An error-feedback rule (see the module docstring); what a feedback factory returns.

    Attributes:
        init: (dim, dtype) -> one device's memory (a pytree; `NoMemory()` for none).
        send: (key, g [d], state, hp) -> (message [d], compressor input [d], state):
            a device that delivers at this step.
        hold: (g, state, hp) -> state: a device that straggles (default: unchanged).
        aggregate: `Server` -> ĝ [d] (default: the decoder-weighted sum of delivered
            messages).
        memory: (state, g) -> ‖what is left to send‖, a scalar diagnostic (default 0).
        name: registry name (filled in from the registration when None).
        check: (config) -> None, called with each configuration (dynamic fields
            included) before anything compiles, to warn about or refuse values the rule
            cannot serve (default: no check).
    """

    init: Callable[[int, Any], State]
    send: Callable[[jax.Array, jax.Array, State, Any], tuple[jax.Array, jax.Array, State]]
    hold: Callable[[jax.Array, State, Any], State] = keep
    aggregate: Callable[[Server], jax.Array] = sum_delivered
    memory: Callable[[State, jax.Array], jax.Array] = no_memory
    name: str | None = None
    check: Callable[[Any], None] | None = None


# --------------------------------------------------------------------- built-ins


@register_feedback("none")
def no_feedback(compressor: Compressor) -> Feedback:
    """No feedback: c = C(g)."""

    def send(key, g, state, hp):
        c = compressor.compress(key, g)
        return c, g, state

    return Feedback(lambda dim, dtype: NoMemory(), send)


@register_feedback("ef")
def error_feedback(compressor: Compressor, straggler_error: str = "keep") -> Feedback:
    """Classic error feedback: v = g + e, c = C(v), e <- v - c."""
    if straggler_error not in STRAGGLER_ERRORS:
        fail("straggler_error", straggler_error, f"must be one of {', '.join(STRAGGLER_ERRORS)}")

    def init(dim, dtype):
        return ErrorMemory(jnp.zeros(dim, dtype))

    def send(key, g, state, hp):
        v = g + state.e
        c = compressor.compress(key, v)
        return c, v, ErrorMemory(v - c)

    def hold(g, state, hp):
        if straggler_error == "reset":
            return ErrorMemory(jnp.zeros_like(state.e))
        if straggler_error == "accumulate":
            return ErrorMemory(state.e + g)
        return state

    def memory(state, g):
        return jnp.linalg.norm(state.e)

    def sum_delivered_unscaled(server: Server):
        return sum_delivered(server._replace(weights=server.full_weights))

    aggregate = sum_delivered_unscaled if straggler_error == "accumulate" else sum_delivered
    return Feedback(init, send, hold, aggregate, memory)


def _shift_init(dim, dtype):
    return Shift(jnp.zeros(dim, dtype))


def _shift_memory(state, g):
    return jnp.linalg.norm(g - state.h)


@register_feedback("ef21")
def ef21(compressor: Compressor) -> Feedback:
    """EF21: c = C(g - h), h <- h + c; the server aggregates every device's h."""

    def send(key, g, state, hp):
        delta = g - state.h
        c = compressor.compress(key, delta)
        return c, delta, Shift(state.h + c)

    def aggregate(server: Server):
        return server.full_weights @ server.after.h

    return Feedback(_shift_init, send, keep, aggregate, _shift_memory)


@register_feedback("diana")
def diana(compressor: Compressor) -> Feedback:
    """DIANA with partial participation: c = Q(g - h), h <- h + α c; the server adds
    every device's shift to the decoder-weighted delivered corrections."""
    if compressor.biased:
        raise ConfigError(
            f"compressor={compressor.name!r} is invalid: error_feedback='diana' needs an unbiased "
            "compressor (E C(v) = v), e.g. randk_unbiased, qsgd, onebit, natural or identity"
        )
    default_alpha = 1.0 / (1.0 + (compressor.omega or 0.0))

    def send(key, g, state, hp):
        delta = g - state.h
        c = compressor.compress(key, delta)
        alpha = jnp.where(jnp.isnan(hp.diana_alpha), default_alpha, hp.diana_alpha).astype(g.dtype)
        return c, delta, Shift(state.h + alpha * c)

    def aggregate(server: Server):
        return server.full_weights @ server.before.h + sum_delivered(server)

    def check(cfg):
        if cfg.diana_alpha is not None and cfg.diana_alpha > default_alpha * (1 + 1e-9):
            warnings.warn(
                f"diana_alpha={cfg.diana_alpha} exceeds DIANA's bound 1/(omega+1) = {default_alpha:.4g} of "
                f"compressor {compressor.name!r} (omega = {compressor.omega:.4g}); the shifts may not converge. "
                "Leave diana_alpha=None for the bound.",
                stacklevel=2,
            )

    return Feedback(_shift_init, send, keep, aggregate, _shift_memory, check=check)


def diana_alpha_bound(compressor: Compressor) -> float:
    """DIANA's largest safe shift step 1/(ω+1) for an unbiased compressor."""
    return 1.0 / (1.0 + (compressor.omega or 0.0))


# ----------------------------------------------------------------- composition


def with_device_momentum(rule: Feedback) -> Feedback:
    """`rule` behind EF-SGDM style device momentum: u <- β u + g (β = hp.device_momentum)
    on delivering steps; the rule sees u instead of g (a straggler's u is unchanged, and
    its rule's `hold` sees the would-be u)."""

    def init(dim, dtype):
        return MomentumMemory(rule.init(dim, dtype), jnp.zeros(dim, dtype))

    def momentum(g, state, hp):
        return hp.device_momentum.astype(g.dtype) * state.u + g

    def send(key, g, state, hp):
        u = momentum(g, state, hp)
        message, comp_in, inner = rule.send(key, u, state.rule, hp)
        return message, comp_in, MomentumMemory(inner, u)

    def hold(g, state, hp):
        return MomentumMemory(rule.hold(momentum(g, state, hp), state.rule, hp), state.u)

    def aggregate(server: Server):
        return rule.aggregate(server._replace(before=server.before.rule, after=server.after.rule))

    def memory(state, g):
        return rule.memory(state.rule, g)

    return Feedback(init, send, hold, aggregate, memory, rule.name, rule.check)


# ---------------------------------------------------------------------- building


def _check_feedback(rule, entry: Entry, args: dict) -> Feedback:
    """A feedback factory's result, checked: a `Feedback` with callable parts."""
    if not isinstance(rule, Feedback):
        raise ConfigError(
            f"feedback {entry.name!r}: the factory returned {type(rule).__name__}, must return "
            "cj.Feedback(init=..., send=...)"
        )
    for part in ("init", "send", "hold", "aggregate", "memory"):
        if not callable(getattr(rule, part)):
            raise ConfigError(f"feedback {entry.name!r}: {part} is not callable")
    if rule.check is not None and not callable(rule.check):
        raise ConfigError(f"feedback {entry.name!r}: check is not callable")
    return rule._replace(name=rule.name or entry.name)


FEEDBACKS.check = _check_feedback


def make_feedback(
    name: str, compressor: Compressor, *, dim: int | None = None, fields: dict | None = None
) -> Feedback:
    """The registered feedback rule `name` around `compressor` for vectors of dimension
    `dim`; `fields` are static config fields the factory may ask for (e.g.
    straggler_error)."""
    return FEEDBACKS.build(name, {"compressor": compressor, "dim": dim}, fields or {})


# Built-in rules that use nothing of their compressor but `compress`: around a
# compressor whose k is traced (`Compressor.compress_k`) they are rebuilt inside the
# program (`rebuild`). Other rules (DIANA reads the compressor's omega, which depends on
# k; a registered rule may read anything) keep a static k: one option per k.
K_AGNOSTIC = ("none", "ef", "ef21")


def rebuild(name: str, compressor: Compressor, *, dim: int, fields: dict) -> Feedback:
    """`make_feedback` without the registry's cache, for a compressor built inside a
    trace (bound to a traced k): called once per compiled program."""
    entry = FEEDBACKS.entry(name)
    args = FEEDBACKS.arguments(name, {"compressor": compressor, "dim": dim}, fields)
    return _check_feedback(FEEDBACKS.call(entry, args), entry, args)


_PROBE_DIM = 64


@FEEDBACKS.add_config_check
def check_feedback_with_compressor(cfg) -> None:
    """Build the feedback rule around the compressor at a probe dimension, so a rule's
    own requirements (DIANA: an unbiased compressor) fail at config time. The real
    dimension is known only with the data; a compressor that cannot be built at the
    probe dimension is checked then (`engine.prepare`), before anything compiles."""
    dim = max(_PROBE_DIM, cfg.compress_k or 1)
    fields = dict(static_fields(cfg))
    try:
        comp = make_compressor(
            cfg.compressor, dim, k=resolve_k(dim, cfg.compress_k, cfg.compress_ratio), fields=fields
        )
    except ConfigError:
        return
    make_feedback(cfg.error_feedback, comp, dim=dim, fields=fields)


__all__ = [
    "K_AGNOSTIC",
    "ErrorMemory",
    "Feedback",
    "MomentumMemory",
    "NoMemory",
    "Server",
    "Shift",
    "check_feedback_with_compressor",
    "diana_alpha_bound",
    "keep",
    "make_feedback",
    "no_memory",
    "rebuild",
    "register_feedback",
    "sum_delivered",
    "with_device_momentum",
]
