"""Named methods: COCO-EF and the baselines it is compared with, as config presets
registered like a user's (`cj.register_preset`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from coco_jax.config import FIELD_NAMES, ExperimentConfig
from coco_jax.errors import ConfigError
from coco_jax.registry import PRESETS as _REGISTRY


class Preset(NamedTuple):
    fields: dict
    summary: str
    reference: str


_BUILTIN: dict[str, Preset] = {
    "coco-ef": Preset(
        {"allocation": "cyclic", "compressor": "topk", "error_feedback": "ef", "decoder": "fixed"},
        "cyclic gradient code + top-k + error feedback + fixed decoder",
        "Li, Xiao, Skoglund 2026 (arXiv 2603.16353)",
    ),
    "coco-ef21": Preset(
        {"allocation": "cyclic", "compressor": "topk", "error_feedback": "ef21", "decoder": "fixed"},
        "cyclic gradient code + top-k + EF21 (server keeps every device's last state)",
        "Richtárik, Sokolov, Fatkhullin 2021 (EF21), adapted to stragglers",
    ),
    "gc": Preset(
        {"allocation": "cyclic", "compressor": "identity", "error_feedback": "none", "decoder": "optimal"},
        "gradient coding, uncompressed, optimal (least-squares) decoding",
        "Tandon, Lei, Dimakis, Karampatziakis 2017",
    ),
    "gc-compressed": Preset(
        {"allocation": "cyclic", "compressor": "topk", "error_feedback": "none", "decoder": "fixed"},
        "gradient coding + biased top-k, no error feedback",
        "COCO-EF paper's ablation (biased compression without feedback)",
    ),
    "gc-unbiased": Preset(
        {
            "allocation": "cyclic",
            "compressor": "randk_unbiased",
            "error_feedback": "none",
            "decoder": "fixed",
        },
        "gradient coding + unbiased rand-k (scaled d/k), no error feedback",
        "Wangni et al. 2018 (unbiased sparsification) with Tandon et al. 2017",
    ),
    "gc-diana": Preset(
        {
            "allocation": "cyclic",
            "compressor": "qsgd",
            "error_feedback": "diana",
            "decoder": "fixed",
        },
        "gradient coding + DIANA (unbiased QSGD of gradient differences with shifts)",
        "Mishchenko, Gorbunov, Takáč, Richtárik 2019 (DIANA)",
    ),
    "onebit-gc": Preset(
        {"allocation": "cyclic", "compressor": "onebit", "error_feedback": "none", "decoder": "fixed"},
        "gradient coding + 1-bit stochastic (unbiased) quantisation",
        "Li, Skoglund 2024 (arXiv 2403.14716)",
    ),
    "ef-uncoded": Preset(
        {
            "allocation": "uncoded",
            "redundancy": 0,
            "compressor": "topk",
            "error_feedback": "ef",
            "decoder": "received",
        },
        "no coding: top-k + error feedback, stragglers ignored (average of received)",
        "Stich, Cordonnier, Jaggi 2018; Karimireddy et al. 2019",
    ),
    "ignore-stragglers": Preset(
        {
            "allocation": "uncoded",
            "redundancy": 0,
            "compressor": "identity",
            "error_feedback": "none",
            "decoder": "received",
        },
        "no coding, no compression: average the gradients that arrive",
        "asynchronous/ignore-stragglers SGD baseline (e.g. Chen et al. 2016)",
    ),
    "gd": Preset(
        {
            "allocation": "uncoded",
            "redundancy": 0,
            "compressor": "identity",
            "error_feedback": "none",
            "decoder": "fixed",
            "straggler": "none",
        },
        "full gradient descent: no stragglers, no compression (ideal reference)",
        "plain gradient descent",
    ),
}


def _preset_factory(fields: dict):
    """A preset's factory: returns a fresh copy of its fields."""
    frozen = tuple(fields.items())
    return lambda: dict(frozen)


for _name, _p in _BUILTIN.items():
    _REGISTRY.register(
        _name, _preset_factory(_p.fields), builtin=True, summary=_p.summary, reference=_p.reference
    )


class _Presets(Mapping):
    """Read-only view name -> `Preset` of every registered preset (built-in and user)."""

    def __getitem__(self, name: str) -> Preset:
        if name not in _REGISTRY:
            raise KeyError(name)
        entry = _REGISTRY.entry(name)
        return Preset(entry.factory(), entry.option("summary", ""), entry.option("reference", ""))

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY.names())

    def __len__(self) -> int:
        return len(_REGISTRY.names())


PRESETS: Mapping[str, Preset] = _Presets()


def register_preset(
    name: str, *, overwrite: bool = False, summary: str = "", reference: str = "", **fields
) -> None:
    """Register a method preset: config fields applied by `cj.preset(name, **overrides)`,
    the `preset` axis of a Grid and `--preset` on the command line."""
    for key in fields:
        if key not in FIELD_NAMES:
            raise ConfigError(
                f"preset {name!r}: {key!r} is not an ExperimentConfig field (fields: {', '.join(FIELD_NAMES)})"
            )
    _REGISTRY.register(
        name,
        _preset_factory(fields),
        overwrite=overwrite,
        builtin=False,
        summary=summary,
        reference=reference,
    )


def preset_fields(name: str) -> dict:
    """The config fields preset `name` sets (ConfigError listing the presets if unknown)."""
    return _REGISTRY.entry(name).factory()


def preset(name: str, **overrides) -> ExperimentConfig:
    """The ExperimentConfig of method `name` with `overrides` applied on top.

    Example:
        >>> preset("coco-ef", num_devices=20, straggler_prob=0.3).error_feedback
        'ef'
    """
    return ExperimentConfig(**{**preset_fields(name), **overrides})
