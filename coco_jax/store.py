"""Results on disk: atomic files and the state of a sweep directory.

A sweep directory holds:

    results.parquet   the final table (written once, by process 0, atomically)
    results.json      the sidecar: grid, grid hash, versions, devices, seed policy,
                      git commit, compile and run seconds, status ("running"/"complete")
    parts/*.parquet   rows of finished batches (resume); removed once the table exists
    .lock             the advisory lock of the run that uses the directory (`lock`)
    quarantine/       unreadable files moved aside by a rerun (`quarantine`)
    experiment.json   what an experiment ran into it (`coco-jax run`; `coco_jax.experiment`)

Every file is written to a temporary name in its directory and renamed over the
target (`os.replace`), so a reader never sees half a file and a killed writer leaves
the previous version (or nothing) behind. One run at a time uses a directory: `lock`
holds an OS advisory lock (`fcntl.flock`) on DIR/.lock, which the OS releases when the
holder dies, so a killed run never blocks the next one. `ResultsDir` holds the rules
of one directory (its lock, its sidecar, its experiment.json, when it is refused); the
table schema is in `coco_jax.results`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pandas as pd

from coco_jax.errors import ConfigError
from coco_jax.fileio import atomic_write_bytes, read_json, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock is taken
    fcntl = None

if TYPE_CHECKING:
    from coco_jax.distributed import Comm

TABLE = "results.parquet"
SIDECAR = "results.json"
PARTS = "parts"
LOCK = ".lock"
QUARANTINE = "quarantine"
EXPERIMENT = "experiment.json"

# The command line that started this process when it is `coco-jax` (set by the CLI;
# None from Python): recorded in sidecars and named in repair messages.
invoked_as: str | None = None


# ------------------------------------------------------------------- atomic files


def table_bytes(df: pd.DataFrame) -> bytes:
    """A table as Parquet bytes."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def table_from_bytes(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def write_table(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write `df` as Parquet at `path`, atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, table_bytes(df))


# ------------------------------------------------------------------ directories


def check_directory(out: str | os.PathLike, what: str = "out") -> pathlib.Path:
    """`out` as a path that can be a results directory (it exists as one, or not yet);
    a file there is a ConfigError."""
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{what}={str(out)!r} is invalid: it is a file, not a directory; give a directory path"
        )
    return path


def ensure_writable(out: str | os.PathLike, what: str = "out") -> pathlib.Path:
    """Create `out` (and its parents) and write and remove a probe file in it, so that a
    read-only or missing location fails now (OSError), before anything is computed."""
    path = check_directory(out, what)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / f".probe-{os.getpid()}", b"")
    with contextlib.suppress(FileNotFoundError):
        (path / f".probe-{os.getpid()}").unlink()
    return path


# --------------------------------------------------------------------------- lock

_HELD: dict[str, list] = {}  # resolved directory -> [fd, depth]: locks this process holds
_HELD_GUARD = threading.Lock()


def _holder_text(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode(errors="replace")
        info = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    text = f"process {info.get('pid', '?')}"
    if info.get("host") and info.get("host") != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("command"):
        text += f" ({info['command']})"
    if info.get("started"):
        text += f", started {info['started']}"
    return text


def _acquire(lock_path: pathlib.Path, name: str) -> int:
    """An open descriptor holding the exclusive flock of `lock_path` (the file that is at
    that path now); a ConfigError naming the holder if another process has it."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise ConfigError(
                f"{name} is in use by {holder}: two runs must not write one directory; "
                "wait for it to finish (or stop it), or choose another directory"
            ) from None
        try:  # the file may have been removed by a holder releasing it meanwhile: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def lock(out: str | os.PathLike, what: str = "out") -> Iterator[pathlib.Path]:
    """Hold the directory `out` for one run: an exclusive OS advisory lock
    (`fcntl.flock`) on out/.lock, which records the holder's pid and command and is
    removed on release. A second run is refused at once with a ConfigError naming the
    holder; the lock of a killed process is released by the OS and never blocks.
    Re-entrant within a process (an experiment locks its directory, then each of its
    sweeps). Creates `out`. Where `fcntl` is missing (Windows) no lock is taken."""
    path = check_directory(out, what)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    lock_path = path / LOCK
    fd = _acquire(lock_path, f"{what}={str(out)!r}")
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": invoked_as or " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                lock_path.unlink()  # before unlocking: a waiting opener then sees another inode
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------- quarantine


def quarantine(out: str | os.PathLike, path: str | os.PathLike, reason: str = "") -> pathlib.Path | None:
    """Move the unreadable file `path` (inside `out`) to out/quarantine/ under a
    timestamped name and say so on stderr; returns the new path (None if the file had
    already gone, e.g. moved by another process)."""
    out, path = pathlib.Path(out), pathlib.Path(path)
    qdir = out / QUARANTINE
    qdir.mkdir(parents=True, exist_ok=True)
    try:
        rel = path.relative_to(out).as_posix().replace("/", "__")
    except ValueError:
        rel = path.name
    target = qdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{rel}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    why = f" ({reason})" if reason else ""
    print(f"coco-jax: {path} is unreadable{why}: moved it to {target}; its rows will be recomputed",
          file=sys.stderr, flush=True)  # fmt: skip
    return target


def read_error(err: BaseException) -> str:
    """A one-line reason why a file could not be read."""
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return (first[:160] + "...") if len(first) > 160 else first


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A Parquet table; OSError/ValueError (pyarrow's errors derive from them) when
    the file is truncated or corrupt."""
    return pd.read_parquet(path, engine="pyarrow")


# -------------------------------------------------------------------------- parts


def write_part(out: str | os.PathLike, name: str, df: pd.DataFrame) -> pathlib.Path:
    """Rows of one finished batch as `out/parts/<name>.parquet` (atomic)."""
    path = pathlib.Path(out) / PARTS / f"{name}.parquet"
    write_table(path, df)
    return path


def part_files(out: str | os.PathLike) -> list[pathlib.Path]:
    """Finished part files (temporary files of an interrupted write are ignored)."""
    d = pathlib.Path(out) / PARTS
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".tmp-"))


_KEY_COLUMNS = ("method", "config_id", "step")


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Keep the first copy of each (method, config_id, step) row."""
    return df.drop_duplicates(subset=list(_KEY_COLUMNS), keep="first").reset_index(drop=True)


def read_parts_checked(out: str | os.PathLike) -> tuple[pd.DataFrame | None, list[tuple[pathlib.Path, str]]]:
    """(all readable part rows with duplicates dropped, or None; [(unreadable part,
    reason)]). A part is unreadable when Parquet cannot read it (truncated, corrupt) or
    it lacks the key columns."""
    frames, bad = [], []
    for p in part_files(out):
        try:
            df = read_table(p)
        except Exception as err:  # noqa: BLE001 - any reason a part cannot be read
            bad.append((p, read_error(err)))
            continue
        missing = [c for c in _KEY_COLUMNS if c not in df.columns]
        if missing:
            bad.append((p, f"no column {missing[0]!r}"))
            continue
        frames.append(df)
    if not frames:
        return None, bad
    return dedupe(pd.concat(frames, ignore_index=True)), bad


def read_parts(out: str | os.PathLike) -> pd.DataFrame | None:
    """All finished part rows (duplicates of a configuration dropped), or None. An
    unreadable part is a ConfigError naming it and the repair."""
    df, bad = read_parts_checked(out)
    if bad:
        path, reason = bad[0]
        raise ConfigError(unreadable_message(pathlib.Path(out), path, reason))
    return df


def unreadable_message(out: pathlib.Path, path: pathlib.Path, reason: str) -> str:
    """'<file> is unreadable (<reason>): <how to repair>' for a sweep directory `out`."""
    meta = None
    with contextlib.suppress(Exception):
        meta = read_json(out / SIDECAR)
    command = (meta or {}).get("command")
    how = f"`{command}`" if command else f"the same sweep with out={str(out)!r}"
    return (
        f"{path} is unreadable ({reason}): run {how} again; it moves the file to "
        f"{out / QUARANTINE}/ and recomputes the configurations it held"
    )


# ------------------------------------------------------------ a results directory

_REFUSED = ("conflict", "orphan")


class ResultsDir:
    """One results directory and its rules: the lock, the sweep's sidecar
    (results.json), the experiment record (experiment.json), and when the directory is
    refused (another grid's or another experiment's results, results without their
    sidecar). `coco_jax.sweep` and `coco_jax.experiment` both go through it.

    Args:
        out: the directory (it need not exist yet); a file there is a ConfigError.
        what: the argument's name in messages ("out").

    Example:
        >>> d = ResultsDir("results/methods-quick")
        >>> d.status("0123abcd")  # doctest: +SKIP
        'new'
    """

    def __init__(self, out: str | os.PathLike, what: str = "out"):
        self.path = check_directory(out, what)
        self.what = what

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    # ------------------------------------------------------------------ the lock

    def lock(self) -> contextlib.AbstractContextManager[pathlib.Path]:
        """Hold the directory for one run (`lock`); creates it."""
        return lock(self.path, self.what)

    def hold(self, comm: Comm, held: contextlib.ExitStack) -> None:
        """Take the lock into `held` on process 0; every process raises its refusal."""
        refused = None
        if comm.index == 0:
            try:
                held.enter_context(self.lock())
            except ConfigError as err:
                refused = str(err)
        refused = comm.allgather_json(refused)[0]
        if refused is not None:
            raise ConfigError(refused)

    def ensure_writable(self) -> pathlib.Path:
        """Create the directory and fail now (OSError) where it cannot be written."""
        return ensure_writable(self.path, self.what)

    # --------------------------------------------------------------- the sidecar

    def sidecar(self) -> dict | None:
        """The sweep's sidecar, None when absent; ValueError when unreadable."""
        return read_json(self.path / SIDECAR)

    def invocations(self) -> list:
        """The sweep invocations the sidecar records ([] without one)."""
        return (self.sidecar() or {}).get("invocations", [])

    def has_results(self) -> bool:
        """Whether a final table or a finished part is there."""
        return (self.path / TABLE).exists() or bool(part_files(self.path))

    def is_complete(self) -> bool:
        """Whether the final table is there and the sidecar says the sweep completed."""
        return (self.path / TABLE).exists() and (self.sidecar() or {}).get("status") == "complete"

    def status(self, grid_hash: str) -> str:
        """'new', 'resume', 'complete', 'conflict' (another grid's results) or 'orphan'
        (results without a readable sidecar) for this process's view of the directory."""
        try:
            meta = self.sidecar()
        except ValueError:
            return "orphan"
        if meta is None:
            return "orphan" if self.has_results() else "new"
        if meta.get("grid_hash") != grid_hash:
            return "conflict"
        if (self.path / TABLE).exists() and meta.get("status") == "complete":
            return "complete"
        return "resume"

    def refusal(self, status: str, grid_hash: str) -> str:
        """Why the directory (in state 'conflict' or 'orphan') is refused, with the way out."""
        name = f"{self.what}={str(self.path)!r}"
        if status == "orphan":
            side = self.path / SIDECAR
            state = "is unreadable" if side.exists() else "is missing"
            return (
                f"{name} holds results but {side} {state}, so they cannot be matched to a grid "
                "(was it deleted?): restore it, or pass overwrite=True (--overwrite) to recompute them"
            )
        meta = self.sidecar() or {}
        return (
            f"{name} holds results of another grid (grid hash {meta.get('grid_hash', 'unknown')}, "
            f"this grid {grid_hash}): choose another directory or pass overwrite=True (--overwrite) to "
            "replace them"
        )

    def state(self, grid_hash: str, overwrite: bool = False) -> str:
        """What a sweep of the grid `grid_hash` would find ('new', 'resume', 'complete'),
        read-only; the ConfigError it would raise unless `overwrite`."""
        status = self.status(grid_hash)
        if status in _REFUSED:
            if not overwrite:
                raise ConfigError(self.refusal(status, grid_hash))
            return "new"
        return status

    def open(self, comm: Comm, grid_hash: str, overwrite: bool) -> str:
        """The state agreed by every process: 'new', 'resume' or 'complete' (after
        clearing another grid's results when `overwrite`); refuses another grid, or
        results whose sidecar is missing, otherwise. Hold the lock first."""
        if comm.index == 0:
            self.remove_stale_temporaries()
        views = comm.allgather_json(self.status(grid_hash))
        refused = [v for v in views if v in _REFUSED]
        if refused and not overwrite:
            raise ConfigError(self.refusal(refused[0], grid_hash))
        if refused:
            if comm.index == 0 and views[0] in _REFUSED:
                self.clear()
            comm.barrier("coco_jax_sweep_clear0")
            if comm.index != 0 and self.status(grid_hash) in _REFUSED:
                self.clear()  # a process-local directory (no shared filesystem)
            comm.barrier("coco_jax_sweep_clear")
            views = comm.allgather_json(self.status(grid_hash))
        return views[0]

    def mark_running(self, comm: Comm, sidecar_of: Callable[[list], dict]) -> None:
        """Write the sidecar `sidecar_of(earlier invocations)` (status "running") on every
        process's view of the directory (a process-local one without a shared filesystem)."""
        sidecar = sidecar_of(self.invocations() if comm.index == 0 else [])
        if comm.index == 0:
            write_json(self.path / SIDECAR, sidecar)
        comm.barrier("coco_jax_sweep_sidecar")
        if comm.index != 0 and self.sidecar() is None:
            write_json(self.path / SIDECAR, sidecar)

    def complete(self, table: pd.DataFrame, sidecar: dict) -> None:
        """Write the final table, then the sidecar, then drop the parts the table holds."""
        write_table(self.path / TABLE, table)
        write_json(self.path / SIDECAR, sidecar)
        shutil.rmtree(self.path / PARTS, ignore_errors=True)

    def clear(self) -> None:
        """Remove a sweep's table, sidecar and parts (asked for by --overwrite)."""
        for name in (TABLE, SIDECAR):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        shutil.rmtree(self.path / PARTS, ignore_errors=True)

    def remove_stale_temporaries(self) -> None:
        """Remove the temporary files of writers that were killed (only while holding the lock)."""
        for d in (self.path, self.path / PARTS):
            if d.is_dir():
                for tmp in d.glob(".tmp-*"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    # ---------------------------------------------------------- experiment.json

    def experiment(self) -> dict | None:
        """The experiment record, None when absent; a ConfigError when unreadable."""
        p = self.path / EXPERIMENT
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError as err:
            raise ConfigError(
                f"{p} is unreadable ({err}): run the experiment again with --overwrite to rebuild it"
            ) from None

    def write_experiment(self, meta: dict) -> None:
        """Write the experiment record (atomically)."""
        write_json(self.path / EXPERIMENT, meta)

    def check_experiment(self, name: str, quick: bool, overrides: dict, overwrite: bool = False) -> None:
        """Refuse the directory when it holds another experiment (or variant, or overrides)."""
        if overwrite:
            return
        meta = self.experiment()
        if meta is None:
            return
        theirs = meta.get("overrides") or {}
        if meta.get("experiment") != name or bool(meta.get("quick")) != quick or theirs != overrides:
            raise ConfigError(
                f"{self.what}={str(self.path)!r} holds results of experiment "
                f"{_describe_run(meta.get('experiment'), meta.get('quick'), theirs)}, not "
                f"{_describe_run(name, quick, overrides)}: choose another --out or pass --overwrite"
            )


def _describe_run(name, quick, overrides) -> str:
    text = f"{name!r} ({'quick' if quick else 'full'}"
    if overrides:
        text += ", overrides " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return text + ")"
