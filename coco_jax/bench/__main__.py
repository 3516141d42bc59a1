"""The subprocesses of `coco-jax bench`: `python -m coco_jax.bench --numpy-worker` times
the NumPy references, `--compile-worker` measures compile times with a fresh cache."""

from __future__ import annotations

import sys

from coco_jax.bench.compile_time import compile_worker_main
from coco_jax.bench.numpy_side import numpy_worker_main

if __name__ == "__main__":
    if sys.argv[1:] == ["--numpy-worker"]:
        sys.exit(numpy_worker_main())
    if sys.argv[1:] == ["--compile-worker"]:
        sys.exit(compile_worker_main())
    print(
        "usage: coco-jax bench [--quick] [--json FILE]  (this module's entry points are the workers)",
        file=sys.stderr,
    )
    sys.exit(2)
