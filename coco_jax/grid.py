"""Grids of configurations: the product and zip of axes, exclusions, method presets,
seeds (with their data), tuned fields, and grid files (YAML/JSON) that declare them
(experiment modules: `coco_jax.experiment`; running a tuned grid: `coco_jax.tuning`).

Example:
    >>> g = Grid(base="coco-ef", axes={"lr": [0.1, 0.2], "seed": range(2)})
    >>> len(g), g.configs()[0][0]
    (4, 'coco-ef')
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import json
import math
import numbers
import operator
import pathlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from coco_jax.config import (
    DYNAMIC_FIELDS,
    FIELD_NAMES,
    STATIC_FIELDS,
    ExperimentConfig,
    _typed,
    build,
    dynamic_values_valid,
)
from coco_jax.errors import ConfigError
from coco_jax.fileio import jsonable
from coco_jax.presets import preset_fields
from coco_jax.reference import smoothness
from coco_jax.registry import PRESETS
from coco_jax.results import (
    TUPLE_FIELDS,
    config_id,
    config_id_from,
    id_of_text,
    id_template,
    id_template_fixing,
    json_text,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "Criterion",
    "Grid",
    "LogGrid",
    "Tuning",
    "load_grid_file",
    "log_grid",
]


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


# ===================================================================== tuning spec


@dataclasses.dataclass(frozen=True)
class Criterion:
    """How tuning scores a candidate value (lower is better).

    `per_run(rows) -> float` scores one run: the rows of one configuration (one
    candidate, one tuning seed) sorted by step, with a column `gap` = F(θ) − F* when
    F* is known (convex tasks; `tables.with_gap`). A candidate's score is the mean over
    the tuning seeds; a run that diverged (`tables.diverged_runs`, the one rule of
    figures, tables and text) or scores NaN counts as +inf, so a candidate with a
    diverged seed is never chosen over a finite one (`coco_jax.tuning`).
    """

    name: str
    definition: str
    per_run: Callable[[Any], float] = dataclasses.field(compare=False)


# Named criteria (grid files name them): the built-ins are registered by
# `coco_jax.tuning`, which the package imports; `tuning.register_criterion` adds more.
CRITERIA: dict[str, Criterion] = {}
DEFAULT_CRITERION = "tail_log_gap"


def _significant(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits (stable configuration ids: a centre
    computed by an eigensolver may differ in its last bits between machines)."""
    return float(f"{x:.{digits - 1}e}")


def log_grid(center: float, below: int = 6, above: int = 2, factor: float = 2.0) -> list[float]:
    """Candidates center·factor^j for j = −below, …, above (below + above + 1 values,
    ascending), each rounded to 4 significant digits.

    Example:
        >>> log_grid(1.0, below=2, above=1)
        [0.25, 0.5, 1.0, 2.0]
    """
    for name, v in (("below", below), ("above", above)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ConfigError(f"log grid {name}={v!r} is invalid: must be an integer >= 0")
    if not (isinstance(factor, numbers.Real) and math.isfinite(factor) and factor > 1):
        raise ConfigError(f"log grid factor={factor!r} is invalid: must be a number > 1")
    if not (isinstance(center, numbers.Real) and math.isfinite(center) and center > 0):
        raise ConfigError(f"log grid center={center!r} is invalid: must be a positive number or '1/L'")
    return [_significant(float(center) * float(factor) ** j) for j in range(-int(below), int(above) + 1)]


@dataclasses.dataclass(frozen=True)
class LogGrid:
    """Tuning candidates on a log grid: center·factor^j, j = −below … above. The centre
    "1/L" is 1/L̂ of the grid's base configuration (`reference.smoothness`, from its
    data in float64; linear tasks only), the step of gradient descent: the default
    9 candidates run from 1/(64 L̂) to 4/L̂ (steps above 2/L̂ diverge on linreg, so the
    top of the grid is meant to fail)."""

    center: float | str = "1/L"
    below: int = 6
    above: int = 2
    factor: float = 2.0

    def values(self, base: ExperimentConfig) -> list[float]:
        """The candidates for a grid whose base configuration is `base`."""
        center = self.center
        if isinstance(center, str):
            if center.replace(" ", "") not in ("1/L", "1/L_hat", "inverse_smoothness"):
                raise ConfigError(
                    f"log grid center={center!r} is invalid: must be a positive number or '1/L'"
                )
            center = 1.0 / smoothness(base)
        return log_grid(center, self.below, self.above, self.factor)

    def describe(self) -> dict:
        return {"log_grid": dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What a grid tunes (`Grid(..., tune=..., tuning_seeds=..., criterion=...)`).

    Attributes:
        fields: (field, candidate values ascending as declared) per tuned field.
        seeds: the tuning seeds (disjoint from the seeds the grid reports).
        criterion: how a candidate is scored (`Criterion`).
        extend_edges: rounds of extension: a choice on the edge of its candidates
            adds one geometric step beyond that edge and the cell is tuned again,
            at most this many times (0: only flag the edge).
        seed_fields: the fields the tuning seeds replace: ("seed",), or ("seed",
            "data_seed") when the grid draws its data with its seeds (`seeds=`).
        declared: the candidates as declared (a `LogGrid` as its description).
    """

    fields: tuple[tuple[str, tuple], ...]
    seeds: tuple[int, ...]
    criterion: Criterion
    extend_edges: int
    seed_fields: tuple[str, ...]
    declared: tuple[tuple[str, Any], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    def candidates(self) -> dict[str, tuple]:
        return dict(self.fields)

    def describe(self) -> dict:
        return jsonable(
            {
                "fields": {n: list(v) for n, v in self.fields},
                "declared": dict(self.declared),
                "tuning_seeds": list(self.seeds),
                "seed_fields": list(self.seed_fields),
                "criterion": {"name": self.criterion.name, "definition": self.criterion.definition},
                "extend_edges": self.extend_edges,
            }
        )


def _criterion_of(criterion: Any) -> Criterion:
    if criterion is None:
        criterion = DEFAULT_CRITERION
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ConfigError(
                f"criterion={criterion!r} is unknown: the named criteria are {', '.join(sorted(CRITERIA))} "
                "(or pass a coco_jax.Criterion / a function of one run's rows)"
            )
        return CRITERIA[criterion]
    if callable(criterion):
        name = getattr(criterion, "__name__", "custom")
        return Criterion(name, (criterion.__doc__ or name).strip(), criterion)
    raise ConfigError(
        f"criterion={criterion!r} is invalid: give a name ({', '.join(sorted(CRITERIA))}), a "
        "coco_jax.Criterion or a function rows -> float"
    )


def _candidates(name: str, values: Any, base: ExperimentConfig) -> tuple[tuple, Any]:
    """(the candidate values of a tuned field, how they were declared)."""
    if isinstance(values, Mapping) and set(values) == {"log_grid"}:
        spec = values["log_grid"]
        if not isinstance(spec, Mapping):
            raise ConfigError(f"tune {name!r}: log_grid must be a mapping of center, below, above, factor")
        unknown = set(spec) - {"center", "below", "above", "factor"}
        if unknown:
            raise ConfigError(
                f"tune {name!r}: unknown log_grid keys {sorted(unknown)}: valid keys are center, below, above, factor"
            )
        values = LogGrid(**spec)
    if isinstance(values, LogGrid):
        vals = values.values(base)
    else:
        vals = _axis_values(name, values, "tuned field")
    if len(vals) < 2:
        raise ConfigError(
            f"tuned field {name!r} has {len(vals)} candidate: give at least two values to choose from"
        )
    if len(set(map(repr, vals))) != len(vals):
        raise ConfigError(f"tuned field {name!r} lists a candidate twice: {vals}")
    return tuple(vals), values.describe() if isinstance(values, LogGrid) else list(vals)


def _seed_values(values: Any, where: str) -> list[int]:
    vals = _axis_values(where, values, "argument")
    bad = [v for v in vals if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0]
    if bad:
        raise ConfigError(f"{where}={vals!r} is invalid: seeds must be integers >= 0 (got {bad[0]!r})")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{where}={vals!r} lists a seed twice")
    return [int(v) for v in vals]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused (if it runs) for the block: making 10^6 acyclic
    objects (a grid's configurations, a plan's entries) otherwise triggers full
    collections whose cost grows with the heap, a third of a 10^6 dry run."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclasses.dataclass(slots=True)
class _Context:
    """What the points of a grid that take the same values of its fixed factors share
    (`Grid._build`)."""

    fields: dict  # the base's, the preset's and the fixed factors' fields
    label: str  # the method label
    key: tuple | None  # the static key of its configurations (None: an unhashable value)
    seen: set = dataclasses.field(default_factory=set)  # config ids of its label so far
    first: ExperimentConfig | None = None  # its first configuration (validated on its own)
    template: tuple = ()  # the id template of its static key (`results.id_template`)
    # once its points need no check each: the JSON text of its ids with None where the
    # free factors' values go, and (index in it, factor, item) of each of those
    pieces: list | None = None
    slots: tuple = ()
    provable: bool = True  # False once its free factors' values are known to need checks


def _prove(ctx: _Context, factors, free, free_values, positions, memo, dynamic) -> bool:
    """Whether `ctx`'s points need no check each (`config.dynamic_values_valid`); if so
    sets its id pieces and fills the free factors' JSON texts."""
    if ctx.key is None or not dynamic_values_valid(ctx.first, free_values, memo=memo, varied=dynamic):
        return False
    for i in free:
        for items, texts in factors[i]:
            if not texts:
                texts.extend(json_text(k, v) for k, v in items)
    parts, names = id_template_fixing(ctx.template, ctx.first, positions)
    ctx.pieces = [text for part in parts for text in (part, None)][:-1]
    ctx.slots = tuple((2 * n + 1, *positions[name]) for n, name in enumerate(names))
    return True


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
        seeds: seeds that set `seed` and `data_seed` together (one zipped axis of
            pairs (s, s), crossed with the others): each seed draws its own data too,
            so seed-to-seed spread includes the data's. To vary only the run's
            randomness, put `seed` on an axis instead.
        tune: tuned fields: field -> candidate values (a list, or a `LogGrid`, e.g.
            `LogGrid()` = 9 steps around 1/L̂). Any dynamic field (lr, momentum,
            diana_alpha, lr_decay_steps, ...) but the seed. A tuned grid is run by
            `coco_jax.tuning.tune` (`cj.tune`, `coco-jax sweep`, `coco-jax run`): for
            every cell (a configuration less its tuned fields and seed) the candidates
            are run on `tuning_seeds`, the best by `criterion` is chosen, then the
            grid's own seeds run at that choice.
        tuning_seeds: the seeds of the tuning runs; must be disjoint from the grid's
            seeds (the seeds whose results are reported).
        criterion: a named criterion (default "tail_log_gap": the mean over tuning seeds
            of log(F − F*) over the last 10% of evaluated steps, of the loss where F*
            is unknown; a diverged run counts as +inf), a `Criterion`, or a function of
            one run's rows.
        extend_edges: a choice on the edge of its candidates is always flagged; with
            extend_edges=True (or n rounds) the candidates of that cell are extended
            one geometric step beyond the edge and the cell is tuned again.

    Every configuration is built (and so validated) here: unknown names (the message
    lists the valid ones), empty axes, wrong value types, a static field given
    conflicting values in a zip, a tuned field that is static or also on an axis, and
    tuning seeds that overlap the reported seeds raise ConfigError before anything is
    compiled.

    Example:
        >>> g = Grid(base="coco-ef", axes={"lr": [0.1, 0.2], "seed": range(2)})
        >>> len(g), g.configs()[0][0]
        (4, 'coco-ef')
        >>> t = Grid(base="gd", seeds=range(3), tune={"lr": [0.1, 0.3, 1.0]}, tuning_seeds=[100, 101])
        >>> len(t), t.tuning.names, t.tuning.seed_fields
        (3, ('lr',), ('seed', 'data_seed'))
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
        seeds: Iterable[int] | None = None,
        tune: Mapping[str, Any] | None = None,
        tuning_seeds: Iterable[int] | None = None,
        criterion: str | Criterion | Callable | None = None,
        extend_edges: bool | int = 0,
    ):
        if mode not in ("product", "zip"):
            raise ConfigError(f"mode={mode!r} is invalid: must be 'product' or 'zip'")
        self.name = name
        self.mode = mode
        self._base_input = base
        self._tune_input = (tune, tuning_seeds, criterion, extend_edges)
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
        self._user_blocks = len(blocks)  # the zip blocks given (seeds= appends one)
        self.seeds = None if seeds is None else _seed_values(seeds, "seeds")
        if self.seeds is not None:
            given = set(self.axes) | {k for b in blocks for k in b}
            for k in ("seed", "data_seed"):
                if k in given:
                    raise ConfigError(
                        f"seeds= sets seed and data_seed together, but the grid also varies {k!r} (an axis or a "
                        "zip): give the seeds in one place"
                    )
            blocks.append({"seed": self.seeds, "data_seed": self.seeds})
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
        with gc_paused():
            self._configs = self._build()
        self.tuning = self._tuning(tune, tuning_seeds, criterion, extend_edges)

    # ------------------------------------------------------------------ tuning

    def varied_fields(self) -> set[str]:
        """Fields the grid sets per point: axes, zipped axes (seeds included), tuned fields."""
        out = set(self.axes) | {k for b in self.zip_blocks for k in b}
        return out | (set(self.tuning.names) if self.tuning is not None else set())

    def _tied_seeds(self) -> bool:
        """Whether the grid draws its data with its seeds (a zip of equal seed and data_seed)."""
        return any(
            "seed" in b and "data_seed" in b and list(b["seed"]) == list(b["data_seed"])
            for b in self.zip_blocks
        )

    def _tuning(self, tune, tuning_seeds, criterion, extend_edges) -> Tuning | None:
        if tune is None:
            given = [
                n for n, v in (("tuning_seeds", tuning_seeds), ("criterion", criterion)) if v is not None
            ]
            if given or extend_edges:
                what = ", ".join(given + (["extend_edges"] if extend_edges else []))
                raise ConfigError(
                    f"{what} given without tune=: declare the tuned fields, e.g. tune={{'lr': [...]}}"
                )
            return None
        if not isinstance(tune, Mapping) or not tune:
            raise ConfigError(
                f"tune={tune!r} is invalid: must be a non-empty mapping field -> candidate values, e.g. "
                "{'lr': [0.01, 0.03, 0.1]} or {'lr': LogGrid()}"
            )
        varied = set(self.axes) | {k for b in self.zip_blocks for k in b}
        tunable = [f for f in DYNAMIC_FIELDS if f != "seed"]
        fields, declared = [], []
        for name, values in tune.items():
            if name not in tunable:
                raise ConfigError(
                    f"tuned field {name!r} is invalid: tuned fields must be dynamic (one compiled program for "
                    f"every candidate): {', '.join(tunable)}"
                )
            if name in varied:
                raise ConfigError(
                    f"field {name!r} is both tuned and varied by the grid (an axis or a zip): give it in one place"
                )
            cands, how = _candidates(name, values, self.base)
            for v in cands:  # a candidate must make a valid configuration of every method
                for method in dict.fromkeys(m for m, _ in self._configs):
                    cfg = next(c for m, c in self._configs if m == method)
                    try:
                        ExperimentConfig(**{**cfg.to_dict(), name: v})
                    except ConfigError as err:
                        raise ConfigError(
                            f"tuned field {name!r}, candidate {v!r} ({method}): {err}"
                        ) from None
            fields.append((name, cands))
            declared.append((name, how))
        if tuning_seeds is None:
            raise ConfigError(
                "tune= needs tuning_seeds=: seeds for the tuning runs, disjoint from the grid's seeds"
            )
        tseeds = _seed_values(tuning_seeds, "tuning_seeds")
        tied = self._tied_seeds()
        seed_fields = ("seed", "data_seed") if tied else ("seed",)
        for f in seed_fields:
            reported = sorted({getattr(c, f) for _, c in self._configs})
            overlap = sorted(set(tseeds) & set(reported))
            if overlap:
                raise ConfigError(
                    f"tuning_seeds={tseeds} overlap the reported {f} values {reported} at {overlap}: tuning "
                    "seeds must be disjoint from the seeds whose results are reported (e.g. start them at 1000)"
                )
        if isinstance(extend_edges, bool):
            extend_edges = int(extend_edges)
        if not isinstance(extend_edges, numbers.Integral) or extend_edges < 0:
            raise ConfigError(
                f"extend_edges={extend_edges!r} is invalid: must be True/False or a number of rounds >= 0"
            )
        return Tuning(
            tuple(fields),
            tuple(tseeds),
            _criterion_of(criterion),
            int(extend_edges),
            seed_fields,
            tuple(declared),
        )

    def reported_configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(method label, configuration) of every reported point. For a tuned grid the
        tuned fields still hold the base's values here: `coco_jax.tuning.tune` sets
        them per cell after the tuning runs."""
        return list(self._configs)

    def with_base(self, base: Any) -> Grid:
        """The same grid (axes, zips, exclusions, seeds, tuning) on another base."""
        tune, tuning_seeds, criterion, extend_edges = self._tune_input
        return Grid(
            base=base,
            axes=self.axes,
            zip_axes=self.zip_blocks[: self._user_blocks] or None,
            exclude=self.exclude,
            name=self.name,
            seeds=self.seeds,
            tune=tune,
            tuning_seeds=tuning_seeds,
            criterion=criterion,
            extend_edges=extend_edges,
        )

    @classmethod
    def explicit(
        cls,
        configs: Sequence[tuple[str, ExperimentConfig]],
        *,
        name: str | None = None,
        description: str = "",
    ) -> Grid:
        """A grid of exactly these (method label, configuration) pairs, in this order
        (duplicates dropped): the stages of a tuned grid (`coco_jax.tuning`) and any
        list that no product of axes expresses. `description` says where it comes from."""
        out: list[tuple[str, ExperimentConfig]] = []
        seen = set()
        for item in configs:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], ExperimentConfig)):
                raise ConfigError(
                    f"Grid.explicit: every item must be (method label, ExperimentConfig), got {item!r}"
                )
            key = (str(item[0]), config_id(item[1]))
            if key not in seen:
                seen.add(key)
                out.append((str(item[0]), item[1]))
        if not out:
            raise ConfigError("Grid.explicit: the list of configurations is empty")
        g = cls.__new__(cls)
        g.name, g.mode, g._base_input, g.base_method, g.base = name, "explicit", None, None, out[0][1]
        g.axes, g.zip_blocks, g.exclude, g.seeds, g.tuning = {}, [], None, None, None
        g._user_blocks, g._tune_input, g._configs = 0, (None, None, None, 0), out
        g._keys = [None] * len(out)  # no template: plan keys each configuration itself
        g._description = description
        g._keys = [None] * len(out)  # no axes: no shared static key (plan groups by shape)
        return g

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

    def _factors(self) -> list[list[tuple]]:
        """The factors whose product is the grid, in grid order: each axis, then each zip
        block. A factor lists its records: (the (name, value) items one value of it
        sets, their JSON texts: a list `_build` fills when a context first needs them)."""
        factors = [[(((name, v),), []) for v in vals] for name, vals in self.axes.items()]
        factors += [[(tuple(zip(b, vals)), []) for vals in zip(*b.values())] for b in self.zip_blocks]
        return factors

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
        """Every configuration in grid order, validated, with its config id and static key.

        The points that take the same values of the factors that set the preset or a
        static field ("fixed" factors) share a `_Context`: their static key, fields and
        id template. A context's first point is built and validated on its own
        (`config.build` with the grid's verdicts). From its second on, once every value
        of the other ("free", dynamic-only) factors passes its check in the context
        (`config.dynamic_values_valid`), its points are made without a check each and
        their ids are hashes of texts joined from the context's pieces
        (`results.id_template_fixing`) and the values' JSON texts; otherwise each point is
        validated as the first was, so a bad point raises the same error, at the same
        point, as a check per configuration."""
        factors = self._factors()
        names = [k for f in factors for k, _ in f[0][0]]
        varied = [k for k in names if k != "preset"]
        static_names = tuple(k for k in varied if k in STATIC_FIELDS)
        dynamic = frozenset(k for k in varied if k in DYNAMIC_FIELDS)
        fixed = [
            i for i, f in enumerate(factors) if any(k == "preset" or k in STATIC_FIELDS for k, _ in f[0][0])
        ]
        free = [i for i in range(len(factors)) if i not in fixed]
        free_values: dict[str, list] = {}
        for i in free:
            for items, _ in factors[i]:
                for k, v in items:
                    free_values.setdefault(k, []).append(v)
        # where each free field's value and JSON text are in a point: item j of factor i
        positions = {k: (i, j) for i in free for j, (k, _) in enumerate(factors[i][0][0])}
        pick = operator.itemgetter(*fixed) if fixed else None
        base_fields = self.base.to_dict()
        memo: dict = {}  # validation verdicts of this grid (`config.validate`)
        contexts: dict = {}
        templates: dict = {}
        seen: dict[str, set] = {}  # method label -> config ids
        presets: dict = {}
        exclude = self.exclude
        new = ExperimentConfig.__new__
        out: list[tuple[str, ExperimentConfig]] = []
        keys: list[tuple | None] = []
        duplicates = 0
        for combo in itertools.product(*factors):
            if pick is None:
                where: Any = ()
            elif len(fixed) == 1:
                where = id(pick(combo))
            else:
                where = tuple(map(id, pick(combo)))
            ctx = contexts.get(where)
            if ctx is None:
                ctx = contexts[where] = self._context(
                    combo, fixed, static_names, dynamic, base_fields, presets
                )
                ctx.seen = seen.setdefault(ctx.label, set())
            if ctx.pieces is None and ctx.first is not None and ctx.provable:
                ctx.provable = _prove(ctx, factors, free, free_values, positions, memo, dynamic)
            if ctx.pieces is not None:
                cfg = new(ExperimentConfig)
                fields = cfg.__dict__
                fields.update(ctx.fields)
                for i in free:
                    fields.update(combo[i][0])
                if exclude is not None and self._excluded({**fields, "preset": ctx.label}):
                    continue
                text = ctx.pieces.copy()
                for n, i, j in ctx.slots:
                    text[n] = combo[i][1][j]
                cid = fields["_config_id"] = id_of_text("".join(text))
            else:
                fields = dict(ctx.fields)
                for i in free:
                    fields.update(combo[i][0])
                if exclude is not None and self._excluded({**fields, "preset": ctx.label}):
                    continue
                try:
                    if ctx.key is None:
                        cfg = ExperimentConfig(**fields)
                    else:
                        cfg = build(fields, memo=memo, static_key=ctx.key, varied=dynamic)
                except ConfigError as err:
                    point = dict(item for items, _ in combo for item in items)
                    raise ConfigError(f"grid point {point}: {err}") from None
                if ctx.key is None:
                    cid = config_id(cfg)
                else:
                    template = templates.get(ctx.key)
                    if template is None:
                        template = templates[ctx.key] = id_template(cfg, dynamic)
                    cid = config_id_from(template, cfg)
                    if ctx.first is None:
                        ctx.first, ctx.template = cfg, template
            if cid in ctx.seen:
                duplicates += 1
                continue
            ctx.seen.add(cid)
            out.append((ctx.label, cfg))
            keys.append(ctx.key)
        if duplicates:
            warnings.warn(f"grid: {duplicates} duplicate configuration(s) dropped", stacklevel=3)
        if not out:
            raise ConfigError("the grid is empty (every point was excluded)")
        self._keys = keys
        return out

    def _context(self, combo, fixed, static_names, dynamic, base_fields, presets) -> _Context:
        """The context of the points that take `combo`'s values of the fixed factors."""
        items = [item for i in fixed for item in combo[i][0]]
        point = dict(items)
        fields = dict(base_fields)
        if "preset" in point:
            name = point["preset"]
            if name not in presets:
                presets[name] = preset_fields(name)
            fields.update(presets[name])
        fields.update((k, v) for k, v in items if k != "preset")
        # what decides the static fields (and the dynamic ones the axes do not set)
        skey = (point.get("preset"), tuple((k, _typed(point[k])) for k in static_names))
        try:
            hash(skey)
        except TypeError:
            skey = None  # an unhashable value: the checks say what is wrong with it
        label = point.get("preset", self.base_method) or "custom"
        return _Context(fields, label, None if skey is None else (skey, dynamic))

    def static_keys(self) -> list:
        """Per configuration (grid order): a key equal for configurations whose static
        fields this grid sets alike (the preset and the static axes' values), or None."""
        return list(self._keys)

    def configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(method label, ExperimentConfig) of every point, in grid order.

        Raises:
            ConfigError: the grid has tuned fields: its configurations are known only
                after its tuning runs (run it with `cj.tune`; `reported_configs` lists
                the points with the tuned fields at the base's values)."""
        if self.tuning is not None:
            raise ConfigError(
                f"the grid tunes {', '.join(self.tuning.names)}: its configurations are chosen by its tuning runs; "
                "run it with cj.tune(grid, out=...) (coco-jax sweep and coco-jax run do), not cj.sweep"
            )
        return list(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __iter__(self):
        return iter(self.configs())

    def describe(self) -> dict:
        """A JSON-safe description (stored in the results sidecar)."""
        if self.mode == "explicit":
            return {
                "name": self.name,
                "mode": "explicit",
                "description": self._description,
                "num_configs": len(self),
            }
        if callable(self.exclude):
            exc: Any = f"callable {getattr(self.exclude, '__qualname__', repr(self.exclude))}"
        else:
            exc = self.exclude
        base: Any = self._base_input if isinstance(self._base_input, (str, Mapping)) else self.base.to_dict()
        out = {
            "name": self.name,
            "base": base,
            "axes": self.axes,
            "mode": self.mode,
            "zip": self.zip_blocks,
            "exclude": exc,
            "num_configs": len(self),
        }
        if self.seeds is not None:
            out["seeds"] = self.seeds
        if self.tuning is not None:
            out["tuning"] = self.tuning.describe()
        return jsonable(out)

    def __repr__(self) -> str:
        tuned = f", tune={list(self.tuning.names)}" if self.tuning is not None else ""
        return (
            f"Grid({len(self)} configurations, axes={list(self.axes)}, "
            f"zip={[list(b) for b in self.zip_blocks]}{tuned})"
        )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None) -> Grid:
        """A grid from a YAML/JSON-style dict: {"base": {...} | preset name, "preset": name,
        "axes": {...}, "zip": {...} | [{...}], "exclude": [{...}], "mode": "product"|"zip",
        "seeds": [...], "tune": {field: [...] | {"log_grid": {...}}}, "tuning_seeds": [...],
        "criterion": name, "extend_edges": bool | rounds} (the keywords of `Grid`)."""
        allowed = {
            "base", "preset", "axes", "zip", "exclude", "mode", "name",
            "seeds", "tune", "tuning_seeds", "criterion", "extend_edges",
        }  # fmt: skip
        unknown = set(spec) - allowed
        if unknown:
            raise ConfigError(f"grid file: unknown keys {sorted(unknown)}: valid keys are {sorted(allowed)}")
        for key, kinds, what in (
            ("axes", (Mapping,), "a mapping of field -> list of values, e.g. {lr: [0.1, 0.2]}"),
            ("zip", (Mapping, list), "a mapping of field -> list of values, or a list of such mappings"),
            ("base", (Mapping, str), "a mapping of fields, or a preset name"),
            ("exclude", (Mapping, list), "a list of mappings of field -> value"),
            ("tune", (Mapping,), "a mapping of field -> candidate values, e.g. {lr: [0.01, 0.1]}"),
            ("seeds", (list,), "a list of seeds, e.g. [0, 1, 2]"),
            ("tuning_seeds", (list,), "a list of seeds, e.g. [1000, 1001]"),
            ("criterion", (str,), f"a criterion name ({', '.join(sorted(CRITERIA))})"),
            ("extend_edges", (bool, int), "true/false or a number of rounds"),
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
            seeds=spec.get("seeds"),
            tune=spec.get("tune"),
            tuning_seeds=spec.get("tuning_seeds"),
            criterion=spec.get("criterion"),
            extend_edges=spec.get("extend_edges", 0),
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
    if not spec.get("axes") and not spec.get("zip") and not spec.get("seeds"):
        raise ConfigError(
            f"{str(path)!r} has no axes: it would run its base configuration alone; give the fields to vary "
            "under 'axes:' (or 'zip:'), or 'axes: {seed: [0]}' to run the base configuration on purpose"
        )
    try:
        return Grid.from_dict(spec, name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {str(err).removeprefix('grid file: ')}") from None
