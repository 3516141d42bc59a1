"""Registries of named components: the public extension API.

A component (compressor, code, feedback rule, straggler model, model, preset) is a
factory registered under a name; once registered, the name is a valid value of its
config field everywhere (`cj.run`, `cj.Grid`/`cj.sweep`, presets, the CLI). Built-ins
are registered exactly the same way, in the modules that define them.

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

import dataclasses
import importlib
import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from coco_jax.errors import ConfigError

__all__ = [
    "CODES",
    "COMPRESSORS",
    "FEEDBACKS",
    "MODELS",
    "PRESETS",
    "STRAGGLER_MODELS",
    "Registry",
    "register_code",
    "register_compressor",
    "register_feedback",
    "register_model",
    "register_preset",
    "register_straggler_model",
]

# Modules whose import registers the built-in components.
_BUILTIN_MODULES = (
    "coco_jax.compressors",
    "coco_jax.coding",
    "coco_jax.cyclic_mds",
    "coco_jax.feedback",
    "coco_jax.stragglers",
    "coco_jax.tasks",
    "coco_jax.presets",
)
_serials = itertools.count(1)
_builtins_loaded = False


def ensure_builtins() -> None:
    """Import the modules that register the built-in components (once)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


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
            arguments bound to the factory (e.g. a code's `replication`).
        check: `check(component, entry, args)` validates a built component; it raises
            `ConfigError` naming the component.
    """

    def __init__(
        self,
        kind: str,
        field: str,
        provided: tuple[str, ...],
        *,
        options: tuple[str, ...] = (),
        check: Callable[[Any, Entry, dict], Any] | None = None,
    ):
        self.kind = kind
        self.field = field
        self.provided = provided
        self.options = options
        self.check = check
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
        ensure_builtins()
        return tuple(self._entries)

    def builtin_names(self) -> tuple[str, ...]:
        """The names registered by coco_jax itself (tests parametrise over these)."""
        ensure_builtins()
        return tuple(n for n, e in self._entries.items() if e.builtin)

    def __contains__(self, name: object) -> bool:
        ensure_builtins()
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The entry of `name`; an unknown name raises ConfigError listing the names."""
        ensure_builtins()
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

    # -------------------------------------------------------------------- build
    def arguments(self, name: str, provided: Mapping[str, Any], fields: Mapping[str, Any]) -> dict:
        """The keyword arguments `name`'s factory receives (checked, hashable)."""
        from coco_jax.config import DYNAMIC_FIELDS

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
            elif pname in DYNAMIC_FIELDS:
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {pname!r} is a dynamic config field; "
                    "it changes without recompiling, so read it at run time from the HParams the "
                    "component receives, not in the factory"
                )
            elif pname in fields:
                args[pname] = fields[pname]
            elif param.default is param.empty:
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {pname!r} is unknown: the engine provides "
                    f"{', '.join(self.provided)} and the static config fields (e.g. redundancy, qsgd_levels)"
                )
        for key, value in args.items():
            if not _hashable(value):
                raise ConfigError(
                    f"{self.kind} {name!r}: factory argument {key}={value!r} is not hashable "
                    f"({type(value).__name__}); use a tuple, a number or a string"
                )
        return args

    def call(self, entry: Entry, kwargs: Mapping[str, Any]) -> Any:
        """`entry.factory(**kwargs)`; a user factory's error becomes a ConfigError that
        names the component (a built-in's passes through: it names its field)."""
        try:
            return entry.factory(**kwargs)
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
    import importlib.util
    import pathlib
    import sys
    import traceback

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
    import pathlib

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


def _qualname(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


# The registries. Their checks are installed by the modules that define each
# component type (compressors.py, coding.py, ...), next to the type they check.
COMPRESSORS = Registry("compressor", "compressor", ("dim", "k", "segments", "dtype"))
CODES = Registry(
    "code", "allocation", ("num_devices", "num_partitions", "redundancy", "key"), options=("replication",)
)
FEEDBACKS = Registry("feedback", "error_feedback", ("compressor", "dim"))
STRAGGLER_MODELS = Registry(
    "straggler model", "straggler", ("num_devices", "loads", "wait_mode"), options=("exchangeable",)
)
MODELS = Registry("model", "task", ("num_classes", "feature_shape"), options=("images",))
PRESETS = Registry("preset", "preset", (), options=("summary", "reference"))


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


def register_preset(
    name: str, *, overwrite: bool = False, summary: str = "", reference: str = "", **fields
) -> None:
    """Register a method preset: config fields applied by `cj.preset(name, **overrides)`,
    the `preset` axis of a Grid and `--preset` on the command line."""
    from coco_jax.config import FIELD_NAMES

    for key in fields:
        if key not in FIELD_NAMES:
            raise ConfigError(
                f"preset {name!r}: {key!r} is not an ExperimentConfig field (fields: {', '.join(FIELD_NAMES)})"
            )
    frozen = tuple(fields.items())

    def preset_fields() -> dict:
        return dict(frozen)

    PRESETS.register(
        name, preset_fields, overwrite=overwrite, builtin=False, summary=summary, reference=reference
    )
