"""Registries of named components: the public extension API.

A component (compressor, code, decoder, feedback rule, straggler model, model, dataset,
preset) is a factory registered under a name; once registered, the name is a valid
value of its config field everywhere (`cj.run`, `cj.Grid`/`cj.sweep`, presets, the
CLI). Built-ins are registered exactly the same way, in the modules that define them
(the package imports every one of them, so the built-in names exist once `coco_jax`
is imported).

This module sits at the bottom of the package: it knows no component and no config.
Whatever depends on them is installed from above, next to what it checks:

- `Registry.check` (set by the component's module) validates what a factory returns;
- `Registry.add_config_check` (installed by the component's module) adds a config-time
  check that `config.validate` runs for every configuration, and a registration's own
  ``validate=`` option checks the configurations that choose that name;
- `declare_fields` (called by `coco_jax.config`) says which config fields are static
  and which dynamic, so a factory that asks for a dynamic field gets a clear error.

    @cj.register_compressor("my_topk")
    def my_topk(dim: int, k: int) -> cj.Compressor: ...

A factory declares the keyword arguments it needs and the engine passes those by
name: the values the engine provides for its kind (see each registry's `provided`,
e.g. a compressor gets `dim`, `k`, `segments`, `dtype`) and any *static* config field
(`qsgd_levels`, `redundancy`, ...). Dynamic fields (`lr`, `straggler_prob`, ...) are
not factory arguments: they change without recompiling and reach the component at run
time through `HParams`. Keyword arguments given at registration are bound to the
factory (`register_compressor("topk5", my_topk, k=5)`). Every value a factory receives
is part of the component's identity (equal arguments give the same, cached component
and the same compiled program), so it must be hashable.

A factory runs once per static group, outside jit; what it returns is checked (type,
shapes through `jax.eval_shape`) before anything compiles, and every error names the
component.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import itertools
import pathlib
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from coco_jax.errors import ConfigError

__all__ = [
    "ALL",
    "CODES",
    "COMPRESSORS",
    "CONFIG_REGISTRIES",
    "DATASETS",
    "DECODERS",
    "FEEDBACKS",
    "MODELS",
    "PRESETS",
    "STRAGGLER_MODELS",
    "Registry",
    "declare_fields",
    "register_code",
    "register_compressor",
    "register_dataset",
    "register_decoder",
    "register_feedback",
    "register_model",
    "register_straggler_model",
]

_serials = itertools.count(1)
_fields: dict[str, tuple[str, ...]] = {"static": (), "dynamic": ()}


def declare_fields(static: tuple[str, ...], dynamic: tuple[str, ...]) -> None:
    """Record the config's static and dynamic field names (called by `coco_jax.config`)."""
    _fields["static"], _fields["dynamic"] = tuple(static), tuple(dynamic)


def field_names() -> tuple[str, ...]:
    """Every config field name (static and dynamic), as declared by `coco_jax.config`."""
    return _fields["static"] + _fields["dynamic"]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name: its factory, the arguments bound at registration, and the
    registry-specific options (`info`). `serial` changes when a name is re-registered,
    so compiled programs of the old factory are never reused for the new one."""

    name: str
    factory: Callable[..., Any]
    bound: tuple[tuple[str, Any], ...]
    info: tuple[tuple[str, Any], ...]
    serial: int
    builtin: bool

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.info).get(key, default)


class Registry:
    """Named factories of one kind of component.

    Args:
        kind: what the components are ("compressor", "code", ...), used in messages.
        field: the `ExperimentConfig` field whose values are the registered names.
        provided: argument names the engine provides to this kind's factories.
        options: registration keywords that are options of the registry, not
            arguments bound to the factory (e.g. a code's `replication`). Every
            registry also takes ``validate``: a callable `validate(cfg)` run by
            `check_config` for each configuration that chooses this name.
        check: `check(component, entry, args)` validates a built component; it raises
            `ConfigError` naming the component.
        fields: the config fields a factory may ask for by name (default: every static
            field).
    """

    def __init__(
        self,
        kind: str,
        field: str,
        provided: tuple[str, ...],
        *,
        options: tuple[str, ...] = (),
        check: Callable[[Any, Entry, dict], Any] | None = None,
        fields: tuple[str, ...] | None = None,
    ):
        self.kind = kind
        self.field = field
        self.provided = provided
        self.options = (*options, "validate")
        self.check = check
        self.fields = fields
        self.config_checks: list[Callable[[Any], None]] = []
        self._entries: dict[str, Entry] = {}
        self._built: dict[tuple, Any] = {}

    # ------------------------------------------------------------- registration
    def register(
        self,
        name: str,
        factory: Callable | None = None,
        *,
        overwrite: bool = False,
        builtin: bool | None = None,
        **kwargs,
    ):
        """Register `factory` under `name`; usable as a decorator (`@reg.register(name)`).

        Keyword arguments that are options of this registry are stored with the entry;
        all others are bound to the factory. Registering a taken name raises unless
        `overwrite=True`. `builtin` marks coco_jax's own components (default: whether
        the factory is defined in a coco_jax module).
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ConfigError(f"{self.kind} name {name!r} is invalid: must be a non-empty string")

        def add(fn: Callable) -> Callable:
            if not callable(fn):
                raise ConfigError(
                    f"{self.kind} {name!r}: the factory must be callable, got {type(fn).__name__}"
                )
            if name in self._entries and not overwrite:
                raise ConfigError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
                )
            if kwargs.get("validate") is not None and not callable(kwargs["validate"]):
                raise ConfigError(f"{self.kind} {name!r}: validate={kwargs['validate']!r} is not callable")
            info = tuple((k, v) for k, v in kwargs.items() if k in self.options)
            bound = tuple((k, v) for k, v in kwargs.items() if k not in self.options)
            params = _parameters(fn)
            for key, value in bound:
                if params is not None and key not in params:
                    raise ConfigError(
                        f"{self.kind} {name!r}: bound argument {key!r} is not a parameter of "
                        f"{_qualname(fn)}({', '.join(params)})"
                    )
                if not _hashable(value):
                    raise ConfigError(
                        f"{self.kind} {name!r}: factory argument {key}={value!r} is not hashable "
                        f"({type(value).__name__}); factory arguments identify the compiled program: "
                        "use a tuple, a number or a string"
                    )
            is_builtin = (
                builtin if builtin is not None else getattr(fn, "__module__", "").startswith("coco_jax.")
            )
            self._entries[name] = Entry(name, fn, bound, info, next(_serials), is_builtin)
            return fn

        return add if factory is None else add(factory)

    # ------------------------------------------------------------------- lookup
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def builtin_names(self) -> tuple[str, ...]:
        """The names registered by coco_jax itself (tests parametrise over these)."""
        return tuple(n for n, e in self._entries.items() if e.builtin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The entry of `name`; an unknown name raises ConfigError listing the names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        register = {"model": "register_model", "preset": "register_preset"}.get(
            self.kind, f"register_{self.kind.replace(' ', '_')}"
        )
        how = (
            f"cj.{register}({name!r}, field=value, ...)"
            if self.kind == "preset"
            else f"@cj.{register}({name!r})"
        )
        return (
            f"{self.field}={name!r} is invalid: must be one of {', '.join(self.names())} "
            f"(registered {self.kind}s); add your own with {how} in your code or "
            "in a plugin file loaded with --plugins FILE.py"
        )

    # ------------------------------------------------------------ config checks
    def add_config_check(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """Install `fn(cfg)`, run by `check_config` (usable as a decorator). The module
        that defines a kind of component installs the checks of that kind."""
        self.config_checks.append(fn)
        return fn

    def check_config(self, cfg: Any) -> None:
        """Run the installed config checks on `cfg`, then the chosen entry's own
        ``validate`` (a user's error becomes a ConfigError naming the component)."""
        for fn in self.config_checks:
            fn(cfg)
        name = getattr(cfg, self.field, None)
        if name not in self._entries:
            return
        entry = self._entries[name]
        own = entry.option("validate")
        if own is not None:
            self.call(entry, {}, functools.partial(own, cfg))

    # -------------------------------------------------------------------- build
    def arguments(self, name: str, provided: Mapping[str, Any], fields: Mapping[str, Any]) -> dict:
        """The keyword arguments `name`'s factory receives (checked, hashable)."""
        entry = self.entry(name)
        params = _parameters(entry.factory)
        bound = dict(entry.bound)
        args: dict[str, Any] = {}
        for pname, param in (params or {}).items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if pname in bound:
                args[pname] = bound[pname]
            elif pname in provided:
                args[pname] = provided[pname]
            elif pname in _fields["dynamic"]:
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {pname!r} is a dynamic config field; "
                    "it changes without recompiling, so read it at run time from the HParams the "
                    "component receives, not in the factory"
                )
            elif pname in fields and (self.fields is None or pname in self.fields):
                args[pname] = fields[pname]
            elif param.default is param.empty:
                offered = "the static config fields (e.g. redundancy, qsgd_levels)"
                if self.fields is not None:
                    offered = "the config fields " + ", ".join(self.fields)
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {pname!r} is unknown: the engine provides "
                    f"{', '.join(self.provided)} and {offered}"
                )
        for key, value in args.items():
            if not _hashable(value):
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {key}={value!r} is not hashable "
                    f"({type(value).__name__}); use a tuple, a number or a string"
                )
        return args

    def asks_for(self, name: str) -> frozenset[str]:
        """The argument names `name`'s factory takes that are not bound at registration
        (the fields and provided values it may receive; empty for a factory without an
        inspectable signature, which receives none)."""
        entry = self.entry(name)
        params = _parameters(entry.factory) or {}
        named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        return frozenset(named - set(dict(entry.bound)))

    def call(self, entry: Entry, kwargs: Mapping[str, Any], fn: Callable | None = None) -> Any:
        """`entry.factory(**kwargs)` (or `fn(**kwargs)`, another callable of the entry);
        a user's error becomes a ConfigError that names the component (a built-in's
        passes through: it names its field)."""
        try:
            return (entry.factory if fn is None else fn)(**kwargs)
        except ConfigError as err:
            if entry.builtin:
                raise
            raise ConfigError(f"{self.kind} {entry.name!r}: {err}") from None
        except Exception as err:
            if entry.builtin:
                raise
            raise ConfigError(
                f"{self.kind} {entry.name!r}: the factory raised {type(err).__name__}: {err}"
            ) from err

    def fingerprint(self, name: str) -> str:
        """A hash of what `name` computes: its factory's source (and the source of its
        callable options), the arguments bound at registration and, for a component
        defined outside coco_jax, the whole file that defines it (a plug-in). Results
        record it, so a resume with a changed component can be refused."""
        entry = self.entry(name)
        h = hashlib.sha256(f"{self.kind}|{name}|{entry.bound!r}".encode())
        parts = [entry.factory] + [v for _, v in entry.info if callable(v)]
        for part in parts:
            h.update(_source_of(part).encode())
        if not entry.builtin:
            path = _file_of(entry.factory)
            if path is not None:
                with contextlib.suppress(OSError):
                    h.update(path.read_bytes())
        return h.hexdigest()[:16]

    def build(self, name: str, provided: Mapping[str, Any], fields: Mapping[str, Any] = {}) -> Any:
        """Call `name`'s factory with the arguments it declares and check the result.
        Equal arguments return the very same (cached) component."""
        entry = self.entry(name)
        args = self.arguments(name, provided, fields)
        key = (name, entry.serial, tuple(sorted(args.items(), key=lambda kv: kv[0])))
        hit = self._built.get(key)
        if hit is not None:
            return hit
        component = self.call(entry, args)
        if self.check is not None:
            component = self.check(component, entry, args)
        self._built[key] = component
        return component


def exec_module(path, mod_name: str):
    """Import the Python file `path` as module `mod_name` (registering whatever it
    registers). A syntax or import error becomes one ConfigError line naming the file
    and the line."""
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(mod_name, None)
        raise ConfigError(f"{err.filename or path}:{err.lineno}: syntax error: {err.msg}") from err
    except ConfigError:
        sys.modules.pop(mod_name, None)
        raise
    except Exception as err:
        sys.modules.pop(mod_name, None)
        frames = [f for f in traceback.extract_tb(err.__traceback__) if pathlib.Path(f.filename) == path]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        raise ConfigError(f"{where}: importing the module failed: {type(err).__name__}: {err}") from err
    return module


_PLUGINS: dict = {}


def load_plugin(path) -> Any:
    """Import a plugin file (`--plugins FILE.py`) once per process; it registers its
    components with the `register_*` functions at import."""
    resolved = pathlib.Path(path).resolve()
    if resolved not in _PLUGINS:
        name = f"coco_jax_plugins.{resolved.stem}_{len(_PLUGINS)}"
        _PLUGINS[resolved] = exec_module(resolved, name)
    return _PLUGINS[resolved]


def _parameters(fn: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _source_of(fn: Callable) -> str:
    """The source text of `fn`, else its compiled code (a function typed at a prompt)."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return repr(fn) if code is None else repr((code.co_code, code.co_consts, code.co_names))


def _file_of(fn: Callable) -> pathlib.Path | None:
    try:
        name = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return pathlib.Path(name) if name else None


def _qualname(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


# The registries. Their checks are installed by the modules that define each
# component type (compressors.py, coding.py, ...), next to the type they check.
COMPRESSORS = Registry("compressor", "compressor", ("dim", "k", "segments", "dtype"))
CODES = Registry(
    "code", "allocation", ("num_devices", "num_partitions", "redundancy", "key"), options=("replication",)
)
DECODERS = Registry(
    "decoder",
    "decoder",
    ("num_devices", "num_partitions", "dtype"),
    options=("replication", "exchangeable", "traceable"),
)
FEEDBACKS = Registry("feedback", "error_feedback", ("compressor", "dim"))
STRAGGLER_MODELS = Registry(
    "straggler model", "straggler", ("num_devices", "loads", "wait_mode"), options=("exchangeable",)
)
MODELS = Registry("model", "task", ("num_classes", "feature_shape"), options=("images",))
# The fields a dataset factory may read: equal values load the same dataset.
DATASET_FIELDS = (
    "dataset",
    "num_samples",
    "num_test",
    "num_features",
    "num_classes",
    "noise",
    "data_seed",
    "test_fraction",
    "data_dir",
)
DATASETS = Registry(
    "dataset", "dataset", ("task", "images"), options=("images", "classes", "label"), fields=DATASET_FIELDS
)
PRESETS = Registry("preset", "preset", (), options=("summary", "reference"))
ALL = (COMPRESSORS, CODES, DECODERS, FEEDBACKS, STRAGGLER_MODELS, MODELS, DATASETS, PRESETS)
# The registries whose config-time checks `config.validate` runs, in this order (a
# check may build what an earlier one checked: a decoder's needs the code).
CONFIG_REGISTRIES = (MODELS, DATASETS, CODES, DECODERS, STRAGGLER_MODELS, COMPRESSORS, FEEDBACKS)


def register_compressor(name: str, factory: Callable | None = None, *, overwrite: bool = False, **bound):
    """Register a compressor factory returning `cj.Compressor` (see the README,
    "Add your own compressor / code / feedback rule"). Provided arguments: `dim` (d),
    `k` (kept entries: compress_k, else round(compress_ratio·d)), `segments` (parameter
    count per layer), `dtype`; and any static config field."""
    return COMPRESSORS.register(name, factory, overwrite=overwrite, **bound)


def register_code(
    name: str,
    factory: Callable | None = None,
    *,
    overwrite: bool = False,
    replication: Callable[[int, int, int], float] | None = None,
    **bound,
):
    """Register a gradient code: a factory returning B [M, K] (numpy; B[m, k] != 0 where
    device m holds partition k). Provided: `num_devices`, `num_partitions`,
    `redundancy`; a factory that declares `key` is a random code, called inside the
    compiled run with the run's key and returning a jax array. `replication(M, K, s)`
    (optional) gives a random code's expected column sum for the fixed decoder."""
    extra = {} if replication is None else {"replication": replication}
    return CODES.register(name, factory, overwrite=overwrite, **extra, **bound)


def register_decoder(
    name: str,
    factory: Callable | None = None,
    *,
    overwrite: bool = False,
    replication: bool = True,
    exchangeable: bool = False,
    traceable: bool = True,
    **bound,
):
    """Register a decoder: a factory returning `cj.Decoder(weights)` with
    ``weights(B [M, K], straggles [M] bool, rates [M], replication) -> w [M]`` (zero
    for stragglers; ĝ = Σ_m w_m (B g)_m estimates (1/K) Σ_k ∇f_k). Provided:
    `num_devices`, `num_partitions`, `dtype`; and any static config field.
    `replication=True`: the weights use the code's common column sum r (a code without
    one is refused for this decoder). `exchangeable=True`: the decoder is unbiased only
    when every device straggles with the same law (refused with straggler models whose
    rates differ). `traceable=True`: cheap enough (O(M) per step) that configurations
    differing only in this decoder share one compiled program."""
    extra = {"replication": replication, "exchangeable": exchangeable, "traceable": traceable}
    return DECODERS.register(name, factory, overwrite=overwrite, **extra, **bound)


def register_dataset(
    name: str,
    factory: Callable | None = None,
    *,
    overwrite: bool = False,
    images: bool = False,
    classes: int | None = None,
    label: Callable[[Any], str] | None = None,
    **bound,
):
    """Register a named dataset: a factory returning `cj.Dataset` (numpy train and test
    arrays; see `coco_jax.data`). Provided: `task` and `images` (whether the task's
    model takes images [n, H, W, C] instead of flat rows); and the dataset fields of
    the config (`DATASET_FIELDS`: num_samples, data_seed, test_fraction, data_dir, ...).
    Nothing may be downloaded: generate the data, read a packaged file or a file under
    ``data_dir``. `images=True`: it can deliver images (for cnn-like models);
    `classes`: its fixed number of classes (2: binary, refused for softmax/linreg;
    more: refused for logreg/linreg), None when it depends on the config;
    `label(cfg) -> str`: an honest display name when it differs from `name`."""
    extra = {"images": images, "classes": classes, "label": label}
    return DATASETS.register(name, factory, overwrite=overwrite, **extra, **bound)


def register_feedback(name: str, factory: Callable | None = None, *, overwrite: bool = False, **bound):
    """Register an error-feedback rule: a factory returning `cj.Feedback`. Provided:
    `compressor` (the run's `cj.Compressor`) and `dim`; and any static config field
    (e.g. `straggler_error`)."""
    return FEEDBACKS.register(name, factory, overwrite=overwrite, **bound)


def register_straggler_model(
    name: str,
    factory: Callable | None = None,
    *,
    overwrite: bool = False,
    exchangeable: bool | str | None = None,
    **bound,
):
    """Register a straggler model: a factory returning `cj.StragglerModel`. Provided:
    `num_devices`, `loads` (partitions per device [M], None for a random code),
    `wait_mode` (latency: wait for the fastest devices); and any static config field.
    `exchangeable`: True when every device straggles with the same law (the received
    decoder is then unbiased up to the chance that nobody delivers), False when rates
    differ (the received decoder is refused), "loads" when that holds exactly for
    equal loads, None when unknown (accepted, no guarantee)."""
    extra = {} if exchangeable is None else {"exchangeable": exchangeable}
    return STRAGGLER_MODELS.register(name, factory, overwrite=overwrite, **extra, **bound)


def register_model(
    name: str, factory: Callable | None = None, *, overwrite: bool = False, images: bool = False, **bound
):
    """Register a model for the classification tasks: a factory returning a flax linen
    Module that maps a batch [n, ...] to logits [n, num_classes] (for 2 classes it may
    return [n, 1]). Provided: `num_classes`, `feature_shape`; and any static config
    field (e.g. `hidden_sizes`). `images=True` makes the named datasets deliver images
    [n, H, W, C] instead of flat rows. The name becomes a valid `task`."""
    return MODELS.register(name, factory, overwrite=overwrite, images=images, **bound)
