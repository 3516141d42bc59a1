"""The persistent compilation cache (coco_jax/cache.py): a second process reuses the
programs the first one compiled; it can be switched off; a JAX cache directory the
user configured is respected. Real subprocesses, each a fresh JAX."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

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


def _probe(env_changes: dict) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COCO_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")
    }
    env.update(
        env_changes, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
