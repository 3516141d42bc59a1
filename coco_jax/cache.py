"""The persistent XLA compilation cache, on by default.

Compiling a sweep group takes seconds; running it often takes less. With the cache a
program compiled once (by any process, on this machine) is read back instead of
compiled again: a rerun, a second experiment sharing groups, or another process.

Where: ``$COCO_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/coco_jax/xla``, else
``~/.cache/coco_jax/xla``. ``COCO_JAX_CACHE_DIR=off`` disables it. A JAX cache
directory the user configured already (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)`` before importing coco_jax)
is respected and left alone.

`setup_compilation_cache` runs once, when `coco_jax` is imported (so it covers the
library and the CLI, before anything compiles). JAX keys each entry on the program
(HLO), the compile options, the backend and the jax/jaxlib versions, and writes
entries atomically, so several processes (and the processes of a multi-host run,
each on its own machine's cache) can share a directory safely.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import jax
import jax.monitoring

ENV = "COCO_JAX_CACHE_DIR"
# Cache every program: the engine's small init programs compile in well under JAX's
# default threshold of 1 s, and the whole point is that a rerun compiles nothing.
MIN_COMPILE_TIME_S = 0.0

_state: dict[str, str | None] = {"dir": None, "source": None}


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/coco_jax/xla`` or ``~/.cache/coco_jax/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "coco_jax" / "xla"


def setup_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache (see the module docstring). Returns
    the directory in use, or None when disabled. Idempotent."""
    if _state["source"] is not None:
        return _state["dir"]
    configured = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    requested = os.environ.get(ENV, "").strip()
    if configured:
        _state.update(dir=str(configured), source="jax")
        return _state["dir"]
    if requested.lower() in ("off", "0", "false", "none", "disabled"):
        _state.update(dir=None, source="off")
        return None
    path = pathlib.Path(requested).expanduser() if requested else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        _state.update(dir=None, source="unwritable")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    _state.update(dir=str(path), source="coco_jax")
    return _state["dir"]


def cache_dir() -> str | None:
    """The persistent cache directory in use (None when disabled)."""
    return _state["dir"]


class CompileCounter:
    """Counts the XLA programs JAX obtains while active: `count` programs, of which
    `loaded` were read back from the persistent cache and `compiled` were compiled.
    "Nothing was compiled or loaded" reads `count == 0` with or without the cache."""

    _OBTAINED = "/jax/core/compile/backend_compile_duration"  # spans compile or cache read
    _HIT = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.count = 0
        self.loaded = 0

    @property
    def compiled(self) -> int:
        return self.count - self.loaded

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event == self._OBTAINED:
            self.count += 1

    def _on_event(self, event: str, **kwargs) -> None:
        if event == self._HIT:
            self.loaded += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_listener(self._on_event)
        return False
