"""`coco-jax bench`: plan from the command line, run, print, write JSON."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import numpy as np

from coco_jax.bench.plan import SECTIONS, Plan, make_plan
from coco_jax.bench.report import format_report
from coco_jax.bench.suite import run_suite
from coco_jax.bench.util import json_default
from coco_jax.fileio import atomic_write_bytes


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    return tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())


def plan_from_args(args) -> Plan:
    mode = "tiny" if getattr(args, "tiny", False) else "quick" if getattr(args, "quick", False) else "full"
    tasks = getattr(args, "tasks", None)
    sections = getattr(args, "sections", None)
    return make_plan(
        mode,
        tasks=tuple(t for t in tasks.split(",") if t) if tasks else None,
        devices=_int_list(getattr(args, "devices", None)),
        dims=_int_list(getattr(args, "dims", None)),
        rows=getattr(args, "rows", None),
        reps=getattr(args, "reps", None),
        numpy_env=getattr(args, "numpy_env", None),
        numpy_budget_s=getattr(args, "numpy_budget", None),
        sections=tuple(s for s in sections.split(",") if s) if sections else None,
    )


def cli_bench(args) -> int:
    """`coco-jax bench`: run the suite, print the table, optionally write JSON."""
    plan = plan_from_args(args)
    unknown = set(plan.sections) - set(SECTIONS)
    if unknown:
        print(f"coco-jax: error: unknown --sections {sorted(unknown)}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run_suite(plan, log=log)
    print(format_report(result))
    if getattr(args, "json", None):
        path = args.json
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        text = json.dumps(_finite(result), indent=2, default=json_default, allow_nan=False)
        atomic_write_bytes(pathlib.Path(path), text.encode())
        print(f"wrote {path}")
    return 0


def _finite(obj):
    """`obj` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    return obj
