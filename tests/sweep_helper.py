"""Helper for tests/test_sweep.py and tests/test_multihost.py: small grids and a
command line that runs a sweep in a fresh process (device-count flags, several
processes, kill and resume). Not a test module.

    python tests/sweep_helper.py run --grid mixed --out DIR [--budget BYTES|one] [--slow S] [--table FILE]
    python tests/sweep_helper.py run --grid mixed --out DIR --coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0
"""

from __future__ import annotations

import argparse
import sys
import time

from conftest import small_base  # the one definition; tests/ is on sys.path here and in pytest


def grid(name: str):
    """The grids the tests share (tiny: a few ms per run on a CPU)."""
    import coco_jax as cj

    if name == "mixed":  # two presets x 2 lr x 2 seeds, and a different num_devices
        return cj.Grid(
            base=small_base(),
            axes={"preset": ["coco-ef", "gc"], "lr": [0.05, 0.1], "seed": [0, 1], "num_devices": [4, 2]},
        )
    if name == "six":  # one group of 6 configurations (padding on 4 devices)
        return cj.Grid(base=small_base(), axes={"lr": [0.05, 0.1, 0.2], "seed": [0, 1]})
    if name == "resume":  # two groups, many configurations
        return cj.Grid(
            base=small_base(steps=8),
            axes={"preset": ["coco-ef", "gc"], "seed": list(range(4)), "lr": [0.05, 0.1]},
        )
    raise SystemExit(f"unknown grid {name}")


def one_config_budget(g) -> int:
    """The smallest memory budget a sweep of `g` accepts: one configuration per device
    (batches of one configuration)."""
    from coco_jax import plan

    groups, _ = plan.prepare_groups(plan.entries_of(g))
    return max(gr.data_bytes + gr.config_bytes for gr in groups)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["run"])
    p.add_argument("--grid", required=True)
    p.add_argument("--out")
    p.add_argument("--budget", help="bytes per device, or 'one': one configuration per batch")
    p.add_argument("--slow", type=float, default=0.0, help="sleep this long after each part file")
    p.add_argument("--table", help="write the returned table here (parquet)")
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    args = p.parse_args(argv)

    import importlib

    sw = importlib.import_module("coco_jax.sweep")
    if args.coordinator:
        from coco_jax.distributed import init_distributed

        init_distributed(args.coordinator, args.num_processes, args.process_id, timeout_s=60)
    if args.slow:
        store = importlib.import_module("coco_jax.store")
        write_part = store.write_part

        def slow_write_part(*a, **k):
            path = write_part(*a, **k)
            print(f"wrote {path}", flush=True)
            time.sleep(args.slow)
            return path

        store.write_part = slow_write_part
    g = grid(args.grid)
    budget = one_config_budget(g) if args.budget == "one" else args.budget
    df = sw.sweep(g, out=args.out, memory_budget=budget, progress=False)
    if args.table:
        df.to_parquet(args.table, index=False)
    import jax

    print(f"done process {jax.process_index()} rows {len(df)} info {df.stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
