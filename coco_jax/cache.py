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
(HLO), the compile options, the backend and the jax/jaxlib versions. In our own
directory the entries go through `HealingCache`: each is written atomically (JAX's
file cache writes in place, so a killed writer would leave a truncated entry), and an
entry that cannot be read back (empty, truncated, corrupt) is removed and replaced by
the fresh compile, once, instead of a JAX warning and a recompile on every run. A
directory that cannot be used (a path through a regular file, no permission, a
read-only file system) is reported once, in one line naming it and
``COCO_JAX_CACHE_DIR``; a read-only one is still read.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import threading
import uuid

import jax
import jax.monitoring

try:  # JAX's file cache: `HealingCache` wraps it (internal API; without it JAX's own is used)
    from jax._src import compilation_cache as _jax_cache
except ImportError:  # pragma: no cover - a JAX without it
    _jax_cache = None

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
    except OSError as err:  # run without the cache rather than fail, and say so once
        _state.update(dir=None, source="unusable")
        _say(
            f"the compilation cache directory {path} cannot be used ({_reason(err)}): programs are "
            f"compiled again in every process; set {ENV} to a writable directory (or {ENV}=off)"
        )
        return None
    writable = _probe_write(path)
    if writable is not None:
        _say(
            f"the compilation cache directory {path} cannot be written ({writable}): programs in it are "
            f"read, new ones are not kept; set {ENV} to a writable directory (or {ENV}=off)"
        )
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    _install_healing(path, writable=writable is None)
    _state.update(dir=str(path), source="coco_jax")
    return _state["dir"]


def _say(text: str) -> None:
    print(f"coco-jax: {text}", file=sys.stderr, flush=True)


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _probe_write(path: pathlib.Path) -> str | None:
    """None when a file can be created in `path`; else why not."""
    probe = path / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
    except OSError as err:
        return _reason(err)
    with contextlib.suppress(OSError):
        probe.unlink()
    return None


# ------------------------------------------------------------- healing entries

_SUFFIX = "-cache"  # JAX's file cache: DIR/<key>-cache


class HealingCache:
    """JAX's file cache for one directory (`base`, its `LRUCache`), with entries that
    heal: `get` returns None for an entry that cannot be decompressed (empty,
    truncated, corrupt) and removes it, so JAX compiles the program and `put` stores
    the fresh one; `put` writes atomically (a temporary file renamed over the entry)
    and replaces an existing entry (one that JAX could not load). A directory that
    cannot be written is read only (`writable=False`), without a warning per program.
    """

    def __init__(self, base, path: pathlib.Path, writable: bool = True):
        self._base = base
        self.path = pathlib.Path(path)
        self.writable = writable
        self.healed = 0  # entries removed because they could not be read
        self._lock = threading.Lock()
        self._said = False
        # JAX's LRUCache without eviction: a plain directory of files, written here directly
        self._direct = type(base).__name__ == "LRUCache" and not getattr(base, "eviction_enabled", True)

    @property
    def _path(self):  # read by jax's reset_cache
        return getattr(self._base, "_path", self.path)

    def _entry(self, key: str) -> pathlib.Path:
        return self.path / f"{key}{_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        value = self._base.get(key)
        if value is None or _intact(value):
            return value
        self._discard(key, "empty" if not value else "truncated or corrupt")
        return None

    def put(self, key: str, value: bytes) -> None:
        if not self.writable:
            return
        try:
            if not self._direct:
                if self._entry(key).exists():
                    self._discard(key, "could not be loaded")
                self._base.put(key, value)
                return
            target = self._entry(key)
            tmp = self.path / f".tmp-{uuid.uuid4().hex}-{target.name}"
            try:
                tmp.write_bytes(value)
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        except OSError as err:  # became unwritable (full disk, permissions): keep reading, stop writing
            self.writable = False
            _say(
                f"the compilation cache directory {self.path} cannot be written ({_reason(err)}): new "
                f"programs are not kept; set {ENV} to a writable directory (or {ENV}=off)"
            )

    def clear(self) -> None:
        clear = getattr(self._base, "clear", None)
        if clear is not None:
            clear()

    def _discard(self, key: str, why: str) -> None:
        with contextlib.suppress(OSError):
            self._entry(key).unlink()
        with self._lock:
            self.healed += 1
            first, self._said = not self._said, True
        if first:
            fate = "replaced" if self.writable else "left there (the directory cannot be written)"
            _say(
                f"the compilation cache in {self.path} held an unreadable entry ({why}): it is compiled "
                f"again and {fate}"
            )


def _intact(value: bytes) -> bool:
    """Whether a cache entry decompresses to JAX's layout (4 bytes of compile time and a
    serialised executable)."""
    try:
        return len(_jax_cache.decompress_executable(value)) > 4
    except Exception:  # noqa: BLE001 - zlib/zstd errors: the entry is unreadable
        return False


def _install_healing(path: pathlib.Path, writable: bool) -> bool:
    """Put a `HealingCache` in front of JAX's file cache for `path` (before anything
    compiles). False (JAX's own cache is used) when this JAX lacks the internals."""
    cc = _jax_cache
    try:
        with cc._cache_initialized_mutex:
            current = cc._cache
            if isinstance(current, HealingCache):
                return True
            if current is None:
                if cc._cache_initialized:  # initialised without a directory: nothing to wrap
                    return False
                current, _ = cc.get_file_cache(str(path))
                cc._cache_initialized = True
            cc._cache = HealingCache(current, path, writable)
        return True
    except (AttributeError, TypeError, ValueError, OSError):  # pragma: no cover - another JAX layout
        return False


def healing_cache() -> HealingCache | None:
    """The `HealingCache` JAX reads and writes now, or None."""
    current = getattr(_jax_cache, "_cache", None)
    return current if isinstance(current, HealingCache) else None


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
