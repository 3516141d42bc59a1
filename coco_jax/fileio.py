"""Files written atomically, and JSON that round-trips numpy values.

Every file the package writes goes to a temporary name in its directory and is renamed
over the target (`os.replace`), so a reader never sees half a file and a killed or
failing writer (full disk, Ctrl-C) leaves the previous version, or nothing, behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "jsonable", "read_json", "write_json"]


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of `value` (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.filename or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # name the file (a full disk, ...)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
