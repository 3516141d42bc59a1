"""Results on disk: atomic files and the state of a sweep directory.

A sweep directory holds:

    results.parquet   the final table (written once, by process 0, atomically)
    results.json      the sidecar: grid, grid hash, versions, devices, seed policy,
                      git commit, compile and run seconds, status ("running"/"complete")
    parts/*.parquet   rows of finished batches (resume); removed once the table exists

Every file is written to a temporary name in its directory and renamed over the
target (`os.replace`), so a reader never sees half a file and a killed writer leaves
the previous version (or nothing) behind. The table schema is in `coco_jax.results`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TABLE = "results.parquet"
SIDECAR = "results.json"
PARTS = "parts"


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of `value` (tuples -> lists, numpy scalars -> Python)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as JSON at `path`, atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> dict | None:
    path = pathlib.Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


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


def read_parts(out: str | os.PathLike) -> pd.DataFrame | None:
    """All finished part rows (duplicates of a configuration dropped), or None."""
    import pandas as pd

    from coco_jax.results import dedupe

    frames = [pd.read_parquet(p, engine="pyarrow") for p in part_files(out)]
    if not frames:
        return None
    return dedupe(pd.concat(frames, ignore_index=True))


# ------------------------------------------------------------ sweep directory


def directory_status(out: pathlib.Path, grid_hash: str) -> str:
    """'new', 'resume', 'complete' or 'conflict' for this process's view of `out`."""
    meta = read_json(out / SIDECAR)
    if meta is None:
        return "conflict" if part_files(out) or (out / TABLE).exists() else "new"
    if meta.get("grid_hash") != grid_hash:
        return "conflict"
    if (out / TABLE).exists() and meta.get("status") == "complete":
        return "complete"
    return "resume"


def clear(out: pathlib.Path) -> None:
    """Remove a sweep's table, sidecar and parts from `out` (asked for by --overwrite)."""
    for name in (TABLE, SIDECAR):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    shutil.rmtree(out / PARTS, ignore_errors=True)


def remove_parts(out: pathlib.Path) -> None:
    """Remove the parts once the final table holds their rows."""
    shutil.rmtree(out / PARTS, ignore_errors=True)
