"""Results on disk: atomic files and the state of a sweep directory.

A sweep directory holds:

    results.parquet   the final table (written once, by process 0, atomically)
    results.json      the sidecar: grid, grid hash, versions, devices, seed policy,
                      git commit, compile and run seconds, status ("running"/"complete")
    parts/*.parquet   rows of finished batches (resume); removed once the table exists
    .lock             the advisory lock of the run that uses the directory (`lock`)
    quarantine/       unreadable files moved aside by a rerun (`quarantine`)

Every file is written to a temporary name in its directory and renamed over the
target (`os.replace`), so a reader never sees half a file and a killed writer leaves
the previous version (or nothing) behind. One run at a time uses a directory: `lock`
holds an OS advisory lock (`fcntl.flock`) on DIR/.lock, which the OS releases when the
holder dies, so a killed run never blocks the next one. The table schema is in
`coco_jax.results`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from coco_jax.errors import ConfigError
from coco_jax.fileio import atomic_write_bytes, read_json

if TYPE_CHECKING:
    import pandas as pd

TABLE = "results.parquet"
SIDECAR = "results.json"
PARTS = "parts"
LOCK = ".lock"
QUARANTINE = "quarantine"

# The command line that started this process when it is `coco-jax` (set by the CLI;
# None from Python): recorded in sidecars and named in repair messages.
invoked_as: str | None = None


# ------------------------------------------------------------------- atomic files


def table_bytes(df: pd.DataFrame) -> bytes:
    """A table as Parquet bytes."""
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def table_from_bytes(data: bytes) -> pd.DataFrame:
    import io

    import pandas as pd

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


def _acquire(lock_path: pathlib.Path, fcntl, name: str) -> int:
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
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    lock_path = path / LOCK
    fd = _acquire(lock_path, fcntl, f"{what}={str(out)!r}")
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
    import pandas as pd

    return pd.read_parquet(path, engine="pyarrow")


def remove_stale_temporaries(out: pathlib.Path) -> None:
    """Remove the temporary files of writers that were killed (only while holding the lock)."""
    for d in (out, out / PARTS):
        if d.is_dir():
            for tmp in d.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


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


def read_parts_checked(out: str | os.PathLike) -> tuple[pd.DataFrame | None, list[tuple[pathlib.Path, str]]]:
    """(all readable part rows with duplicates dropped, or None; [(unreadable part,
    reason)]). A part is unreadable when Parquet cannot read it (truncated, corrupt) or
    it lacks the key columns."""
    import pandas as pd

    from coco_jax.results import dedupe

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


# ------------------------------------------------------------ sweep directory


def directory_status(out: pathlib.Path, grid_hash: str) -> str:
    """'new', 'resume', 'complete', 'conflict' (another grid's results) or 'orphan'
    (results without their sidecar) for this process's view of `out`."""
    try:
        meta = read_json(out / SIDECAR)
    except ValueError:
        meta = {"grid_hash": None, "unreadable": True}
    if meta is None:
        return "orphan" if part_files(out) or (out / TABLE).exists() else "new"
    if meta.get("unreadable"):
        return "orphan"
    if meta.get("grid_hash") != grid_hash:
        return "conflict"
    if (out / TABLE).exists() and meta.get("status") == "complete":
        return "complete"
    return "resume"


def refusal(out: pathlib.Path, status: str, grid_hash: str, what: str = "out") -> str:
    """Why `out` (in state 'conflict' or 'orphan') is refused, with the way out."""
    if status == "orphan":
        side = out / SIDECAR
        state = "is unreadable" if side.exists() else "is missing"
        return (
            f"{what}={str(out)!r} holds results but {side} {state}, so they cannot be matched to a grid "
            "(was it deleted?): restore it, or pass overwrite=True (--overwrite) to recompute them"
        )
    meta = read_json(out / SIDECAR) or {}
    return (
        f"{what}={str(out)!r} holds results of another grid (grid hash {meta.get('grid_hash', 'unknown')}, "
        f"this grid {grid_hash}): choose another directory or pass overwrite=True (--overwrite) to replace them"
    )


def clear(out: pathlib.Path) -> None:
    """Remove a sweep's table, sidecar and parts from `out` (asked for by --overwrite)."""
    for name in (TABLE, SIDECAR):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    shutil.rmtree(out / PARTS, ignore_errors=True)


def remove_parts(out: pathlib.Path) -> None:
    """Remove the parts once the final table holds their rows."""
    shutil.rmtree(out / PARTS, ignore_errors=True)
