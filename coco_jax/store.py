"""Results on disk: atomic files and the state of a sweep directory.

A sweep directory holds:

    results.parquet   the final table (written once, by process 0, atomically)
    results.json      the sidecar: grid, grid hash, versions, devices, seed policy,
                      git commit, compile and run seconds, status ("running"/"complete"),
                      the components' fingerprints, the command that wrote it
    parts/*.parquet   rows of finished batches (resume); removed once the table exists
    .lock             the advisory lock of the run that uses the directory (`lock`)
    quarantine/       unreadable files moved aside by a rerun (`quarantine`)
    experiment.json   what an experiment ran into it (`coco-jax run`; `coco_jax.experiment`)

Every file is written to a temporary name in its directory and renamed over the
target (`os.replace`), so a reader never sees half a file and a killed writer leaves
the previous version (or nothing) behind. One run at a time uses a directory: `lock`
holds an OS advisory lock (`fcntl.flock`) on DIR/.lock, which the OS releases when the
holder dies, so a killed run never blocks the next one. `ResultsDir` holds the rules
of one directory (its lock, its sidecar, its experiment.json, when it is refused, how
damaged metadata is recovered); `repair_command` rebuilds the command that repairs a
directory for the directory as it is named now. The table schema is in
`coco_jax.results`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pandas as pd

from coco_jax import engine
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
# None from Python): recorded in sidecars and in the lock (who holds a directory).
invoked_as: str | None = None
# The same command as the CLI saw it: {"argv": [...], "cwd": ..., "out": the results
# directory it was given, resolved}. Sidecars and experiment.json record it with their
# own directory, so that a repair hint can be rebuilt for the directory being read
# (`repair_command`), wherever it has been moved since.
invocation: dict | None = None

_GRID_SUFFIXES = (".py", ".yaml", ".yml", ".json")


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


def quarantine(
    out: str | os.PathLike,
    path: str | os.PathLike,
    reason: str = "",
    fate: str = "its rows will be recomputed",
) -> pathlib.Path | None:
    """Move the unreadable file `path` (inside `out`) to out/quarantine/ under a
    timestamped name and say so on stderr, with what happens next (`fate`); returns the
    new path (None if the file had already gone, e.g. moved by another process)."""
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
    print(f"coco-jax: {path} is unreadable{why}: moved it to {target}; {fate}", file=sys.stderr, flush=True)
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


class PartsVanished(Exception):
    """Part files disappeared while they were read: the sweep finished meanwhile (it
    writes the table, then removes the parts)."""


def read_parts_checked(out: str | os.PathLike) -> tuple[pd.DataFrame | None, list[tuple[pathlib.Path, str]]]:
    """(all readable part rows with duplicates dropped, or None; [(unreadable part,
    reason)]). A part is unreadable when Parquet cannot read it (truncated, corrupt) or
    it lacks the key columns. `PartsVanished` when a listed part is gone before it is
    read (only a finishing sweep removes parts; its table is then there)."""
    frames, bad = [], []
    for p in part_files(out):
        try:
            df = read_table(p)
        except Exception as err:  # noqa: BLE001 - any reason a part cannot be read
            if not p.exists():
                raise PartsVanished(str(p)) from None
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
    """'<file> is unreadable (<reason>): <how to repair>' for a sweep directory `out`
    (the command is rebuilt for `out` as named here: `repair_command`)."""
    return (
        f"{path} is unreadable ({reason}): run {repair_how(out)} again; it moves the file to "
        f"{out / QUARANTINE}/ and recomputes the configurations it held"
    )


# ------------------------------------------------------------------ repair hints


def record_out(out: str | os.PathLike) -> None:
    """Note the results directory the running `coco-jax` command was given (its --out,
    or the default), for `repair_command`."""
    if invocation is not None:
        invocation["out"] = str(pathlib.Path(out).resolve())


def recorded_invocation(directory: pathlib.Path) -> dict | None:
    """What this process's `invocation` is, recorded for `directory` (its absolute path
    as "dir"); None outside the CLI."""
    if invocation is None:
        return None
    return {**invocation, "dir": str(pathlib.Path(directory).resolve())}


def _invocation_in(directory: pathlib.Path) -> tuple[dict, pathlib.Path] | None:
    """The recorded invocation that wrote `directory` (its sidecar, its experiment.json,
    else a part's sidecar) and the directory whose file held it."""
    candidates = [(directory / SIDECAR, directory), (directory / EXPERIMENT, directory)]
    with contextlib.suppress(OSError):
        candidates += [(d / SIDECAR, d) for d in sorted(directory.iterdir()) if d.is_dir()]
    for path, where in candidates:
        try:
            meta = read_json(path)
        except (OSError, ValueError):
            continue
        inv = (meta or {}).get("invocation") if isinstance(meta, dict) else None
        if isinstance(inv, dict) and inv.get("argv"):
            return inv, where
    return None


def _path_argument(arg: str, cwd: pathlib.Path) -> str:
    """A grid file, module or plug-in named relative to the directory the command ran in,
    as a path that works from here: as written when that names the same file here, else
    relative to here, else absolute; unchanged when it is not found."""
    path = pathlib.Path(arg)
    if arg.startswith("-") or path.is_absolute() or path.suffix not in _GRID_SUFFIXES:
        return arg
    recorded = cwd / path
    if not recorded.is_file():
        return arg
    with contextlib.suppress(OSError):
        if path.is_file() and path.read_bytes() == recorded.read_bytes():
            return arg
    rel = os.path.relpath(recorded)
    return rel if not rel.startswith("..") else str(recorded)


def repair_command(directory: str | os.PathLike) -> str | None:
    """The `coco-jax` command that wrote `directory`, rebuilt for the directory as named
    here: its --out is this directory (or the experiment directory it belongs to), its
    grid file, module and plug-ins are found from the directory it ran in, and
    --overwrite is dropped. None when the directory records no command (written from
    Python, or by an older version)."""
    directory = pathlib.Path(directory)
    found = _invocation_in(directory)
    if found is None:
        return None
    inv, where = found
    root = where
    if inv.get("out") and inv.get("dir"):
        rel = pathlib.PurePath(os.path.relpath(inv["dir"], inv["out"]))
        if rel.parts and ".." not in rel.parts and rel != pathlib.PurePath("."):
            for _ in rel.parts:
                root = root.parent
    cwd = pathlib.Path(inv.get("cwd") or ".")
    argv, new, given = list(inv["argv"]), [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--overwrite":
            pass
        elif arg == "--out" and i + 1 < len(argv):
            new += ["--out", str(root)]
            given, i = True, i + 1
        elif arg.startswith("--out="):
            new.append(f"--out={root}")
            given = True
        else:
            new.append(_path_argument(arg, cwd))
        i += 1
    if not given:
        new += ["--out", str(root)]
    return "coco-jax " + shlex.join(new)


def repair_how(directory: pathlib.Path) -> str:
    """`repair_command` in backquotes, else 'the same sweep with out=<directory>'."""
    command = repair_command(directory)
    return f"`{command}`" if command else f"the same sweep with out={str(directory)!r}"


# ------------------------------------------------------------ a results directory

_REFUSED = ("conflict", "orphan", "changed")


def component_fingerprints(configs) -> dict[str, str]:
    """ "<kind> <name>" -> fingerprint (`Registry.fingerprint`: its factory's source, and
    a plug-in's file) of every registered component the configurations use; each
    distinct combination of components is fingerprinted once."""
    seen, out = set(), {}
    for cfg in configs:
        combo = (cfg.compressor, cfg.allocation, cfg.decoder, cfg.error_feedback, cfg.straggler, cfg.dataset,
                 cfg.task)  # fmt: skip
        if combo not in seen:
            seen.add(combo)
            out.update(engine.component_fingerprints(cfg))
    return dict(sorted(out.items()))


def _component_words(key: str) -> str:
    kind, _, name = key.rpartition(" ")
    return f"{kind} {name!r}"


class ResultsDir:
    """One results directory and its rules: the lock, the sweep's sidecar
    (results.json), the experiment record (experiment.json), and when the directory is
    refused (another grid's or another experiment's results, results without their
    sidecar, results computed by another version of a component). `coco_jax.sweep` and
    `coco_jax.experiment` both go through it.

    Damaged metadata heals instead of blocking: an unreadable sidecar is moved to
    quarantine/ and the sweep resumes from the saved rows that belong to its grid
    (configuration ids are content hashes; `recover`), and an unreadable
    experiment.json is moved to quarantine/ and written again by the next run
    (`heal_experiment`).

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

    @property
    def name(self) -> str:
        return f"{self.what}={str(self.path)!r}"

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
        meta = read_json(self.path / SIDECAR)
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
        return meta

    def sidecar_error(self) -> str | None:
        """Why the sidecar cannot be read (None when it can, or is absent)."""
        try:
            self.sidecar()
        except (OSError, ValueError) as err:
            return read_error(err)
        return None

    def invocations(self) -> list:
        """The sweep invocations the sidecar records ([] without one)."""
        return (self.sidecar() or {}).get("invocations", [])

    def has_results(self) -> bool:
        """Whether a final table or a finished part is there."""
        return (self.path / TABLE).exists() or bool(part_files(self.path))

    def is_complete(self) -> bool:
        """Whether the final table is there and the sidecar says the sweep completed."""
        return (self.path / TABLE).exists() and (self.sidecar() or {}).get("status") == "complete"

    def saved_keys(self) -> set[tuple]:
        """(method, config_id) of every configuration with readable rows here (the table
        and the parts; unreadable files are skipped)."""
        keys: set[tuple] = set()
        files = [self.path / TABLE] if (self.path / TABLE).exists() else []
        for p in files + part_files(self.path):
            with contextlib.suppress(Exception):
                df = pd.read_parquet(p, columns=["method", "config_id"], engine="pyarrow")
                keys.update(zip(df["method"], df["config_id"]))
        return keys

    def changed_components(self, fingerprints: dict | None) -> list[tuple[str, str, str]]:
        """[(component, recorded fingerprint, current fingerprint)] of the components whose
        fingerprint differs from the one the sidecar recorded (none recorded: [])."""
        if not fingerprints:
            return []
        with contextlib.suppress(OSError, ValueError):
            recorded = (self.sidecar() or {}).get("fingerprints") or {}
            return [
                (k, recorded[k], v) for k, v in fingerprints.items() if k in recorded and recorded[k] != v
            ]
        return []

    def status(self, grid_hash: str, keys: set | None = None, fingerprints: dict | None = None) -> str:
        """This process's view of the directory for the grid `grid_hash`: 'new',
        'resume', 'complete', 'conflict' (another grid's results), 'changed' (results of
        this grid computed by another version of a component: `fingerprints` differ),
        'recover' (an unreadable sidecar, and every saved configuration is one of `keys`,
        the grid's (method, config_id)) or 'orphan' (results without a readable sidecar
        that cannot be recovered)."""
        try:
            meta = self.sidecar()
        except (OSError, ValueError):
            if keys is not None and self.saved_keys() <= set(keys):
                return "recover"
            return "orphan"
        if meta is None:
            return "orphan" if self.has_results() else "new"
        if meta.get("grid_hash") != grid_hash:
            return "conflict"
        if self.changed_components(fingerprints):
            return "changed"
        if (self.path / TABLE).exists() and meta.get("status") == "complete":
            return "complete"
        return "resume"

    def refusal(
        self, status: str, grid_hash: str, fingerprints: dict | None = None, keys: set | None = None
    ) -> str:
        """Why the directory (in state 'conflict', 'orphan' or 'changed') is refused,
        with the way out."""
        name = self.name
        side = self.path / SIDECAR
        if status == "orphan":
            error = self.sidecar_error()
            if error is not None:
                whose = (
                    f"{len(self.saved_keys() - set(keys))} of the configurations saved there are not in this grid"
                    if keys is not None
                    else "the sweep of their grid recovers them"
                )
                return (
                    f"{name} holds results but {side} is unreadable ({error}), and {whose}: choose another "
                    "directory, or pass overwrite=True (--overwrite) to replace them"
                )
            return (
                f"{name} holds results but {side} is missing, so they cannot be matched to a grid "
                "(was it deleted?): restore it, or pass overwrite=True (--overwrite) to recompute them"
            )
        if status == "changed":
            changed = self.changed_components(fingerprints)
            what = ", ".join(f"{_component_words(k)} (was {old}, now {new})" for k, old, new in changed)
            return (
                f"{name} holds results computed by another version of {what}: its factory or its plug-in "
                "file changed since, and resuming would mix the two versions in one table; pass "
                "overwrite=True (--overwrite) to recompute them, restore that version, or choose another "
                "directory"
            )
        meta = self.sidecar() or {}
        return (
            f"{name} holds results of another grid (grid hash {meta.get('grid_hash', 'unknown')}, "
            f"this grid {grid_hash}): choose another directory or pass overwrite=True (--overwrite) to "
            "replace them"
        )

    def state(
        self,
        grid_hash: str,
        overwrite: bool = False,
        keys: set | None = None,
        fingerprints: dict | None = None,
    ) -> str:
        """What a sweep of the grid `grid_hash` would find ('new', 'resume', 'complete'),
        read-only; the ConfigError it would raise unless `overwrite`. An unreadable
        sidecar whose results all belong to the grid (`keys`) reads as 'resume' (the
        sweep recovers it)."""
        status = self.status(grid_hash, keys, fingerprints)
        if status in _REFUSED:
            if not overwrite:
                raise ConfigError(self.refusal(status, grid_hash, fingerprints, keys))
            return "new"
        return "resume" if status == "recover" else status

    def open(
        self,
        comm: Comm,
        grid_hash: str,
        overwrite: bool,
        keys: set | None = None,
        fingerprints: dict | None = None,
    ) -> str:
        """The state agreed by every process: 'new', 'resume' or 'complete' (after
        clearing another grid's results when `overwrite`, and recovering an unreadable
        sidecar); refuses another grid, results whose sidecar is missing, or results of
        another version of a component, otherwise. Hold the lock first."""
        if comm.index == 0:
            self.remove_stale_temporaries()

        def views() -> list[str]:
            return comm.allgather_json(self.status(grid_hash, keys, fingerprints))

        seen = views()
        refused = [v for v in seen if v in _REFUSED]
        if refused and not overwrite:
            raise ConfigError(self.refusal(refused[0], grid_hash, fingerprints, keys))
        for states, act, tag in (
            (("recover",), lambda: self.recover(grid_hash), "recover"),
            (_REFUSED, self.clear, "clear"),
        ):
            if not any(v in states for v in seen):
                continue
            if comm.index == 0 and seen[0] in states:
                act()
            comm.barrier(f"coco_jax_sweep_{tag}0")
            if comm.index != 0 and self.status(grid_hash, keys, fingerprints) in states:
                act()  # a process-local directory (no shared filesystem)
            comm.barrier(f"coco_jax_sweep_{tag}")
            seen = views()
        return seen[0]

    def recover(self, grid_hash: str) -> None:
        """Heal an unreadable sidecar whose results belong to the grid `grid_hash` (see
        `status`): move it to quarantine/, turn a readable final table into a part (the
        sweep writes the table again when it completes) and write a provisional sidecar,
        so the sweep resumes from every saved row. Hold the lock."""
        error = self.sidecar_error()
        if error is None:
            return
        quarantine(
            self.path, self.path / SIDECAR, error, "it is rebuilt, and the saved rows of this grid are kept"
        )
        table = self.path / TABLE
        if table.exists():
            try:
                read_table(table)
            except Exception as err:  # noqa: BLE001 - any reason the table cannot be read
                quarantine(self.path, table, read_error(err))
            else:
                (self.path / PARTS).mkdir(parents=True, exist_ok=True)
                os.replace(table, self.path / PARTS / f"batch-recovered-{uuid.uuid4().hex[:16]}.parquet")
        write_json(self.path / SIDECAR, {"status": "running", "grid_hash": grid_hash, "invocations": []})

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

    def experiment_error(self) -> str | None:
        """Why experiment.json cannot be read (None when it can, or is absent)."""
        p = self.path / EXPERIMENT
        if not p.is_file():
            return None
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            return read_error(err)
        return None if isinstance(meta, dict) else f"expected a JSON object, found {type(meta).__name__}"

    def experiment(self) -> dict | None:
        """The experiment record, None when absent; a ConfigError naming the repair when
        unreadable."""
        error = self.experiment_error()
        if error is not None:
            command = repair_command(self.path)
            how = f"`{command}`" if command else f"the experiment with --out {str(self.path)!r}"
            raise ConfigError(
                f"{self.path / EXPERIMENT} is unreadable ({error}): run {how} again; it moves the file to "
                f"{self.path / QUARANTINE}/ and writes it again, keeping the finished sweeps"
            )
        p = self.path / EXPERIMENT
        return json.loads(p.read_text()) if p.is_file() else None

    def heal_experiment(self) -> pathlib.Path | None:
        """Move an unreadable experiment.json to quarantine/ (the run writes it again);
        the quarantined path, or None when there was nothing to heal. Hold the lock."""
        error = self.experiment_error()
        if error is None:
            return None
        return quarantine(self.path, self.path / EXPERIMENT, error, "it is written again by this run")

    def write_experiment(self, meta: dict) -> None:
        """Write the experiment record (atomically)."""
        write_json(self.path / EXPERIMENT, meta)

    def check_experiment(self, name: str, quick: bool, overrides: dict, overwrite: bool = False) -> None:
        """Refuse the directory when it holds another experiment (or variant, or
        overrides). An unreadable record refuses nothing: the parts' sidecars still
        refuse another grid, and the run rebuilds the record (`heal_experiment`)."""
        if overwrite or self.experiment_error() is not None:
            return
        meta = self.experiment()
        if meta is None:
            return
        theirs = meta.get("overrides") or {}
        if meta.get("experiment") != name or bool(meta.get("quick")) != quick or theirs != overrides:
            raise ConfigError(
                f"{self.name} holds results of experiment "
                f"{_describe_run(meta.get('experiment'), meta.get('quick'), theirs)}, not "
                f"{_describe_run(name, quick, overrides)}: choose another --out or pass --overwrite"
            )


def _describe_run(name, quick, overrides) -> str:
    text = f"{name!r} ({'quick' if quick else 'full'}"
    if overrides:
        text += ", overrides " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return text + ")"
