"""The persistent compilation cache (coco_jax/cache.py): a second process reuses the
programs the first one compiled; it can be switched off; a JAX cache directory the
user configured is respected. Real subprocesses, each a fresh JAX."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from jax._src import compilation_cache as _jax_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import jax
import coco_jax as cj
from coco_jax.cache import CompileCounter, cache_dir
with CompileCounter() as cc:
    res = cj.run(cj.preset("coco-ef", steps=8, num_devices=4, num_samples=64, num_features=8))
    grid = cj.Grid(base=cj.preset("gc", steps=4, num_devices=4, num_samples=64, num_features=8),
                   axes={"lr": [0.1, 0.2]})
    df = cj.sweep(grid, progress=False)
print(json.dumps({"compiled": cc.compiled, "loaded": cc.loaded, "count": cc.count,
                  "dir": cache_dir(), "jax_dir": jax.config.jax_compilation_cache_dir,
                  "loss": float(res.history["loss"][-1]), "rows": len(df)}))
"""


def _probe_with_stderr(env_changes: dict, prefix: tuple = ()) -> tuple[dict, str]:
    """Run PROBE in a fresh process (behind the command `prefix`, if any): (its
    figures, its stderr)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("COCO_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")
    }
    env.update(
        env_changes, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _probe(env_changes: dict) -> dict:
    return _probe_with_stderr(env_changes)[0]


def test_second_process_reuses_the_first_ones_programs(tmp_path):
    cache = tmp_path / "xla"
    first = _probe({"COCO_JAX_CACHE_DIR": str(cache)})
    assert first["dir"] == str(cache) and first["compiled"] >= 3 and first["loaded"] == 0
    assert len(list(cache.iterdir())) >= first["compiled"]
    second = _probe({"COCO_JAX_CACHE_DIR": str(cache)})
    assert second["count"] == first["count"]
    assert second["loaded"] == first["count"] and second["compiled"] == 0  # every program read back
    assert second["loss"] == first["loss"] and second["rows"] == first["rows"]


def test_off_disables_the_cache_and_a_users_jax_directory_is_respected(tmp_path):
    off = _probe({"COCO_JAX_CACHE_DIR": "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert off["dir"] is None and off["jax_dir"] is None and off["loaded"] == 0
    assert not (tmp_path / "xdg").exists()
    mine = tmp_path / "users_jax_cache"
    user = _probe({"JAX_COMPILATION_CACHE_DIR": str(mine), "COCO_JAX_CACHE_DIR": str(tmp_path / "ours")})
    assert user["jax_dir"] == str(mine) and user["dir"] == str(mine)
    assert not (tmp_path / "ours").exists()


def test_default_is_the_user_cache_directory(tmp_path):
    out = _probe({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert out["dir"] == str(tmp_path / "xdg" / "coco_jax" / "xla")
    assert any((tmp_path / "xdg" / "coco_jax" / "xla").iterdir())


# ------------------------------------------------------------- broken entries, unusable dirs

JAX_READ_WARNING = "Error reading persistent compilation cache entry"


def test_broken_entries_are_replaced_so_the_next_run_compiles_nothing(tmp_path):
    """An empty, a truncated and a corrupt (decompressible, not loadable) entry: the
    next process compiles those three programs again and replaces them, saying so in
    one line (no JAX warning for the empty and truncated ones, whose bytes cannot even
    be decompressed); the process after it compiles nothing and computes the same."""
    cache = tmp_path / "xla"
    first = _probe({"COCO_JAX_CACHE_DIR": str(cache)})
    entries = sorted(cache.glob("*-cache"), key=lambda p: p.stat().st_size)
    assert len(entries) >= 3 and first["compiled"] == len(entries)
    entries[0].write_bytes(b"")
    entries[1].write_bytes(entries[1].read_bytes()[: entries[1].stat().st_size // 2])
    entries[2].write_bytes(_jax_cache.compress_executable(b"\0\0\0\1" + b"not an executable" * 8))

    second, err = _probe_with_stderr({"COCO_JAX_CACHE_DIR": str(cache)})
    assert second["compiled"] == 3 and second["loaded"] == first["count"] - 3, second
    said = [ln for ln in err.splitlines() if ln.startswith("coco-jax:")]
    assert len(said) == 1, err  # once per process, whichever broken entry is read first
    assert re.fullmatch(
        re.escape(f"coco-jax: the compilation cache in {cache} held an unreadable entry (")
        + r"(empty|truncated or corrupt)\): it is compiled again and replaced",
        said[0],
    ), said
    # JAX itself warns at most once: for the entry that decompresses but does not load
    jax_warnings = [ln for ln in err.splitlines() if JAX_READ_WARNING in ln]
    assert len(jax_warnings) <= 1 and not any("decompress" in ln for ln in jax_warnings), err
    assert all(p.stat().st_size > 0 for p in cache.glob("*-cache"))
    assert not list(cache.glob(".tmp-*"))  # entries are written through a temporary file

    third, err = _probe_with_stderr({"COCO_JAX_CACHE_DIR": str(cache)})
    assert third["compiled"] == 0 and third["loaded"] == first["count"], third
    assert "coco-jax:" not in err and JAX_READ_WARNING not in err, err
    assert third["loss"] == first["loss"] and third["rows"] == first["rows"]


def test_a_cache_path_through_a_file_is_reported_once_and_the_run_goes_on(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out, err = _probe_with_stderr({"COCO_JAX_CACHE_DIR": str(afile / "xla")})
    assert out["dir"] is None and out["compiled"] >= 3
    expected = (
        f"coco-jax: the compilation cache directory {afile / 'xla'} cannot be used (Not a directory): "
        "programs are compiled again in every process; set COCO_JAX_CACHE_DIR to a writable directory "
        "(or COCO_JAX_CACHE_DIR=off)"
    )
    assert [ln for ln in err.splitlines() if ln.strip()] == [expected]
    assert afile.read_text() == "x"


def _read_only_prefix(directory: pathlib.Path) -> tuple:
    """A command prefix under which `directory` cannot be written: a read-only bind mount
    in a private mount namespace (root ignores permission bits), else () after removing
    the write permission; None where neither is possible."""
    if os.geteuid() != 0:
        for p in [directory, *directory.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return ()
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    d = shlex.quote(str(directory))
    script = f'mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec "$@"'
    check = subprocess.run(
        [unshare, "-m", "sh", "-c", script, "sh", "true"], capture_output=True, check=False
    )
    if check.returncode != 0:
        return None
    return (unshare, "-m", "sh", "-c", script, "sh")


def test_a_read_only_cache_is_read_and_reported_once(tmp_path):
    """A filled cache directory that cannot be written: every program is read back,
    and one line says the directory cannot be written (no JAX warning per program)."""
    cache = tmp_path / "xla"
    first = _probe({"COCO_JAX_CACHE_DIR": str(cache)})
    prefix = _read_only_prefix(cache)
    if prefix is None:
        pytest.skip("no way to make a directory read-only here (root without mount rights)")
    out, err = _probe_with_stderr({"COCO_JAX_CACHE_DIR": str(cache)}, prefix=prefix)
    assert out["dir"] == str(cache) and out["compiled"] == 0 and out["loaded"] == first["count"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"coco-jax: the compilation cache directory {cache} cannot be written (")
    assert lines[0].endswith(
        "programs in it are read, new ones are not kept; set COCO_JAX_CACHE_DIR to a writable directory "
        "(or COCO_JAX_CACHE_DIR=off)"
    )
