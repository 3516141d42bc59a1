"""Grids of configurations: the product and zip of axes, exclusions, method presets,
and grid files (YAML/JSON) that declare them (experiment modules: `coco_jax.experiment`).

Example:
    >>> g = Grid(base="coco-ef", axes={"lr": [0.1, 0.2], "seed": range(2)})
    >>> len(g), g.configs()[0][0]
    (4, 'coco-ef')
"""

from __future__ import annotations

import itertools
import json
import pathlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from coco_jax.config import DYNAMIC_FIELDS, FIELD_NAMES, STATIC_FIELDS, ExperimentConfig, _typed, build
from coco_jax.errors import ConfigError
from coco_jax.fileio import jsonable
from coco_jax.presets import preset_fields
from coco_jax.registry import PRESETS
from coco_jax.results import TUPLE_FIELDS, config_id, config_id_from, id_template

__all__ = ["Grid", "load_grid_file"]


# ============================================================================ Grid


def _plain(value: Any, field: str | None = None) -> Any:
    """numpy scalars -> Python; lists -> tuples for tuple-valued fields."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list) and field in TUPLE_FIELDS:
        return tuple(_plain(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _valid_names() -> str:
    return "preset, " + ", ".join(FIELD_NAMES)


def _check_axis_name(name: Any, where: str) -> None:
    if name != "preset" and name not in FIELD_NAMES:
        raise ConfigError(f"unknown {where} {name!r}: valid names are {_valid_names()}")


def _axis_values(name: str, values: Any, where: str) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(
            f"{where} {name!r} must be a non-empty list of values, got {type(values).__name__} {values!r}"
        )
    vals = [_plain(v, name) for v in values]
    if not vals:
        raise ConfigError(f"{where} {name!r} is empty: give at least one value")
    if name == "preset":
        for v in vals:
            PRESETS.entry(v)
    return vals


def _base_of(base: Any) -> tuple[str | None, ExperimentConfig]:
    """(method label, config) of a grid's base: None, a preset name, a config or a dict."""
    if base is None:
        return None, ExperimentConfig()
    if isinstance(base, str):
        return base, ExperimentConfig(**preset_fields(base))
    if isinstance(base, ExperimentConfig):
        return None, base
    if isinstance(base, Mapping):
        fields = {k: _plain(v, k) for k, v in base.items()}
        method = fields.pop("preset", None)
        for k in fields:
            _check_axis_name(k, "base field")
        merged = {**(preset_fields(method) if method is not None else {}), **fields}
        return method, ExperimentConfig(**merged)
    raise ConfigError(
        f"base={type(base).__name__} is invalid: must be an ExperimentConfig, a preset name or a dict of fields"
    )


class Grid:
    """A grid of configurations.

    Each point sets some fields on top of `base`: the product of `axes` (or their zip,
    with mode="zip"), times each block of `zip_axes` (parallel lists of equal length).
    The axis "preset" picks a method preset; its fields override the base, and the
    other axes override both. Every other axis name must be an ExperimentConfig field.

    Args:
        base: an ExperimentConfig, a preset name, or a dict of fields (may hold "preset").
        axes: name -> list of values.
        mode: "product" (default) or "zip" for `axes`.
        zip_axes: a dict (or list of dicts) of parallel lists, each dict one zipped axis
            block crossed with `axes`.
        exclude: a callable taking a point (a dict of every resolved field plus
            "preset", the method label) and returning True to drop it, or a list of
            dicts: a point is dropped when it matches every item of one dict.
        name: a label (used for default output directories).

    Every configuration is built (and so validated) here: unknown names (the message
    lists the valid ones), empty axes, wrong value types and a static field given
    conflicting values in a zip raise ConfigError before anything is compiled.

    Example:
        >>> g = Grid(base="coco-ef", axes={"lr": [0.1, 0.2], "seed": range(2)})
        >>> len(g), g.configs()[0][0]
        (4, 'coco-ef')
    """

    def __init__(
        self,
        base: Any = None,
        axes: Mapping[str, Iterable] | None = None,
        *,
        mode: str = "product",
        zip_axes: Mapping[str, Iterable] | Sequence[Mapping[str, Iterable]] | None = None,
        exclude: Callable[[dict], bool] | Sequence[Mapping[str, Any]] | None = None,
        name: str | None = None,
    ):
        if mode not in ("product", "zip"):
            raise ConfigError(f"mode={mode!r} is invalid: must be 'product' or 'zip'")
        self.name = name
        self.mode = mode
        self._base_input = base
        self.base_method, self.base = _base_of(base)
        axes = dict(axes or {})
        if not isinstance(axes, dict):
            raise ConfigError("axes must be a dict of name -> list of values")
        for k in axes:
            _check_axis_name(k, "axis")
        self.axes = {k: _axis_values(k, v, "axis") for k, v in axes.items()}
        if zip_axes is None:
            blocks = []
        elif isinstance(zip_axes, Mapping):
            blocks = [dict(zip_axes)]
        else:
            blocks = [dict(b) for b in zip_axes]
        if mode == "zip" and self.axes:
            blocks = [dict(self.axes), *blocks]
            self.axes = {}
        self.zip_blocks = []
        seen: dict[str, str] = {k: "axes" for k in self.axes}
        for i, block in enumerate(blocks):
            if not block:
                raise ConfigError(f"zip block {i} is empty: give at least one axis")
            vals = {}
            for k, v in block.items():
                _check_axis_name(k, "zip axis")
                if k in seen:
                    raise ConfigError(
                        f"field {k!r} is given in both {seen[k]} and zip block {i}: conflicting values; "
                        "give each field in one place"
                    )
                seen[k] = f"zip block {i}"
                vals[k] = _axis_values(k, v, "zip axis")
            lengths = {k: len(v) for k, v in vals.items()}
            if len(set(lengths.values())) > 1:
                raise ConfigError(f"zip block {i} has lists of different lengths: {lengths}")
            self._check_zip_presets(i, vals)
            self.zip_blocks.append(vals)
        self.exclude = exclude
        if exclude is not None and not callable(exclude):
            if isinstance(exclude, Mapping):
                exclude = [exclude]
            self.exclude = [dict(e) for e in exclude]
            for e in self.exclude:
                for k in e:
                    _check_axis_name(k, "exclude key")
        self._configs = self._build()

    @staticmethod
    def _check_zip_presets(i: int, block: dict[str, list]) -> None:
        """In a zip, a preset and another zipped field must not disagree at a position."""
        if "preset" not in block:
            return
        for pos, name in enumerate(block["preset"]):
            for field, value in preset_fields(name).items():
                if field in block and block[field][pos] != value:
                    raise ConfigError(
                        f"zip block {i}, position {pos}: preset {name!r} sets {field}={value!r} but the zip "
                        f"gives {field}={block[field][pos]!r} (conflicting values of a static field)"
                    )

    def _points(self) -> Iterable[dict]:
        names = list(self.axes)
        blocks = [[dict(zip(b, vals)) for vals in zip(*b.values())] for b in self.zip_blocks]
        for combo in itertools.product(*(self.axes[n] for n in names)):
            point = dict(zip(names, combo))
            for parts in itertools.product(*blocks):
                p = dict(point)
                for part in parts:
                    p.update(part)
                yield p

    def _excluded(self, view: dict) -> bool:
        if self.exclude is None:
            return False
        if callable(self.exclude):
            return bool(self.exclude(view))
        for pattern in self.exclude:
            if all(view.get(k) == _plain(v, k) for k, v in pattern.items()):
                return True
        return False

    def _build(self) -> list[tuple[str, ExperimentConfig]]:
        out: list[tuple[str, ExperimentConfig]] = []
        keys: list[tuple] = []
        seen = set()
        base_fields = self.base.to_dict()
        duplicates = 0
        memo: dict = {}  # validation verdicts of this grid (`config.validate`)
        presets: dict = {}
        templates: dict = {}
        kinds: dict = {}
        for point in self._points():
            method = point.get("preset", self.base_method)
            fields = dict(base_fields)
            if "preset" in point:
                name = point["preset"]
                if name not in presets:
                    presets[name] = preset_fields(name)
                fields.update(presets[name])
            names = tuple(point)
            if names not in kinds:  # which axes set static and which dynamic fields (per key set)
                varied = tuple(k for k in names if k != "preset")
                kinds[names] = (
                    varied,
                    tuple(k for k in varied if k in STATIC_FIELDS),
                    frozenset(k for k in varied if k in DYNAMIC_FIELDS),
                )
            varied, static_names, dynamic = kinds[names]
            fields.update({k: point[k] for k in varied})
            label = method or "custom"
            if self._excluded({**fields, "preset": label}):
                continue
            # what decides the static fields (and the dynamic ones the axes do not set)
            skey = (point.get("preset"), tuple((k, _typed(point[k])) for k in static_names))
            try:
                hash(skey)
            except TypeError:
                skey = None  # an unhashable value: the checks say what is wrong with it
            try:
                if skey is None:
                    cfg = ExperimentConfig(**fields)
                else:
                    cfg = build(fields, memo=memo, static_key=(skey, dynamic), varied=dynamic)
            except ConfigError as err:
                raise ConfigError(f"grid point {point}: {err}") from None
            if skey is not None:
                template = templates.get((skey, dynamic))
                if template is None:
                    template = templates[(skey, dynamic)] = id_template(cfg, dynamic)
                config_id_from(template, cfg)
            key = (label, config_id(cfg))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            out.append((label, cfg))
            keys.append((skey, dynamic) if skey is not None else None)
        if duplicates:
            warnings.warn(f"grid: {duplicates} duplicate configuration(s) dropped", stacklevel=3)
        if not out:
            raise ConfigError("the grid is empty (every point was excluded)")
        self._keys = keys
        return out

    def static_keys(self) -> list:
        """Per configuration (grid order): a key equal for configurations whose static
        fields this grid sets alike (the preset and the static axes' values), or None."""
        return list(self._keys)

    def configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(method label, ExperimentConfig) of every point, in grid order."""
        return list(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __iter__(self):
        return iter(self.configs())

    def describe(self) -> dict:
        """A JSON-safe description (stored in the results sidecar)."""
        if callable(self.exclude):
            exc: Any = f"callable {getattr(self.exclude, '__qualname__', repr(self.exclude))}"
        else:
            exc = self.exclude
        base: Any = self._base_input if isinstance(self._base_input, (str, Mapping)) else self.base.to_dict()
        return jsonable(
            {
                "name": self.name,
                "base": base,
                "axes": self.axes,
                "mode": self.mode,
                "zip": self.zip_blocks,
                "exclude": exc,
                "num_configs": len(self),
            }
        )

    def __repr__(self) -> str:
        return f"Grid({len(self)} configurations, axes={list(self.axes)}, zip={[list(b) for b in self.zip_blocks]})"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> Grid:
        """A grid from a YAML/JSON-style dict: {"base": {...} | preset name, "preset": name,
        "axes": {...}, "zip": {...} | [{...}], "exclude": [{...}], "mode": "product"|"zip"}."""
        allowed = {"base", "preset", "axes", "zip", "exclude", "mode", "name"}
        unknown = set(spec) - allowed
        if unknown:
            raise ConfigError(f"grid file: unknown keys {sorted(unknown)}: valid keys are {sorted(allowed)}")
        for key, kinds, what in (
            ("axes", (Mapping,), "a mapping of field -> list of values, e.g. {lr: [0.1, 0.2]}"),
            ("zip", (Mapping, list), "a mapping of field -> list of values, or a list of such mappings"),
            ("base", (Mapping, str), "a mapping of fields, or a preset name"),
            ("exclude", (Mapping, list), "a list of mappings of field -> value"),
        ):
            value = spec.get(key)
            if value is not None and not isinstance(value, kinds):
                raise ConfigError(
                    f"grid file: {key!r} must be {what}, got {type(value).__name__} {_short(value)}"
                )
        for key in ("zip", "exclude"):
            value = spec.get(key)
            if isinstance(value, list) and not all(isinstance(v, Mapping) for v in value):
                raise ConfigError(f"grid file: every item of {key!r} must be a mapping, got {_short(value)}")
        base = spec.get("base")
        if spec.get("preset") is not None:
            if isinstance(base, str):
                raise ConfigError("grid file: give 'preset' or a preset name in 'base', not both")
            base = {**(base or {}), "preset": spec["preset"]}
        exclude = spec.get("exclude")
        return cls(
            base=base,
            axes=spec.get("axes") or {},
            mode=spec.get("mode", "product"),
            zip_axes=spec.get("zip"),
            exclude=exclude,
            name=spec.get("name", name),
        )


# ===================================================================== grid files


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_grid_file(path: pathlib.Path, quick: bool = False) -> Grid:
    """A grid from a YAML/JSON file: {"base": {...} | preset name, "preset": name,
    "axes": {...}, "zip": {...} | [...], "exclude": [{...}], "mode": ..., "name": ...,
    "quick": {overrides used with quick=True}}."""
    text = path.read_text()
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error
        raise ConfigError(f"{str(path)!r} is not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping with 'axes' (and 'base', 'zip', 'exclude')")
    if quick and isinstance(spec.get("quick"), dict):
        spec = {**spec, **spec["quick"]}
    spec.pop("quick", None)
    if not spec.get("axes") and not spec.get("zip"):
        raise ConfigError(
            f"{str(path)!r} has no axes: it would run its base configuration alone; give the fields to vary "
            "under 'axes:' (or 'zip:'), or 'axes: {seed: [0]}' to run the base configuration on purpose"
        )
    try:
        return Grid.from_dict(spec, name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {str(err).removeprefix('grid file: ')}") from None
