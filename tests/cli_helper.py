"""Helpers for tests/test_cli.py and tests/test_store.py: run the `coco-jax` command of
this checkout in real subprocesses (the worktree first on PYTHONPATH, `python -m
coco_jax.cli`), tiny grid files and experiment modules, and a plugin that slows a
sweep down so that it can be interrupted, locked against or killed. Not a test module.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

# one static group (one compilation), 4 configurations, a few ms each
TINY_BASE = (
    "{task: linreg, num_devices: 4, num_samples: 64, num_test: 16, num_features: 8, steps: 4, eval_every: 2}"
)
TINY_YAML = f"base: {TINY_BASE}\naxes: {{lr: [0.05, 0.1], seed: [0, 1]}}\n"

# a plugin (--plugins slow.py) that waits $SLOW seconds after each part file is written,
# stopping at once for a pending Ctrl-C or SIGTERM (as the sweep's own safe points do)
SLOW_PLUGIN = """
import os, time
from coco_jax import interrupt, store

_write_part = store.write_part


def write_part(*args, **kwargs):
    path = _write_part(*args, **kwargs)
    print(f"wrote {path}", flush=True)
    deadline = time.monotonic() + float(os.environ.get("SLOW", "60"))
    while time.monotonic() < deadline:
        interrupt.check()
        time.sleep(0.05)
    return path


store.write_part = write_part
"""

TINY_MODULE = '''"""A tiny experiment for the tests.

Question: does it run? Expected: yes. Command: coco-jax run {name}.py --quick
"""
import coco_jax as cj
from coco_jax import plots

NAME = "{name}"
DESCRIPTION = "tiny test experiment {name}"


def grid(quick=False):
    base = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=64, num_test=16, num_features=8,
                               steps=4, eval_every=2)
    return cj.Grid(base=base, axes={axes})


def figures(df):
    return {{"loss": plots.curves_figure(df, [("step", "loss")])}}
'''


def env(**extra) -> dict:
    e = dict(os.environ)
    e["JAX_PLATFORMS"] = "cpu"
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["COLUMNS"] = "400"  # argparse help on one line per flag
    e.update({k: str(v) for k, v in extra.items()})
    return e


# `python -m coco_jax.cli ARGS` with Python's own Ctrl-C handler installed: a child of a
# background job inherits SIGINT ignored, and Python then keeps ignoring it
_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = ['coco-jax', *sys.argv[1:]]; runpy.run_module('coco_jax.cli', run_name='__main__')"
)


def command(*args) -> list[str]:
    return [sys.executable, "-m", "coco_jax.cli", *map(str, args)]


def cli(*args, cwd, timeout=180, extra_env=None, prefix=(), **kwargs) -> subprocess.CompletedProcess:
    """Run `coco-jax ARGS` in `cwd` (behind the command `prefix`, if any) and wait."""
    return subprocess.run(
        [*prefix, *command(*args)],
        cwd=cwd,
        env=env(**(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def cli_many(calls: list[tuple], cwd, timeout=180) -> list[subprocess.CompletedProcess]:
    """Run several `coco-jax` commands at once (each a tuple of arguments) and wait
    for all: the quick refusals of one test share their start-up time."""
    procs = [
        subprocess.Popen(
            command(*args), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in calls
    ]
    done = []
    for args, p in zip(calls, procs):
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(command(*args), p.returncode, out, err))
    return done


def start(*args, cwd, extra_env=None) -> subprocess.Popen:
    """Start `coco-jax ARGS` in the background (SIGINT delivered as Ctrl-C would)."""
    return subprocess.Popen(
        [sys.executable, "-c", _WITH_SIGINT, *map(str, args)],
        cwd=cwd,
        env=env(**(extra_env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Assert the command failed with `code`, printed no traceback, and ended stderr
    with one `coco-jax: ...` line; returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("coco-jax"), lines[-1]
    return lines[-1]


def one_config_budget_of_yaml(path, plugins=()) -> int:
    """The memory budget that gives batches of one configuration for a grid file (whose
    components the `plugins` files register: they are loaded into this process)."""
    from coco_jax import grid, plan, registry

    for plugin in plugins:
        registry.load_plugin(plugin)
    g = grid.load_grid_file(pathlib.Path(path))
    groups, _ = plan.prepare_groups(plan.entries_of(g))
    return max(gr.data_bytes + gr.config_bytes for gr in groups)
