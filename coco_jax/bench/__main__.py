"""`python -m coco_jax.bench --numpy-worker`: the NumPy subprocess of `coco-jax bench`."""

from __future__ import annotations

import sys

from coco_jax.bench.numpy_side import numpy_worker_main

if __name__ == "__main__":
    if sys.argv[1:] == ["--numpy-worker"]:
        sys.exit(numpy_worker_main())
    print(
        "usage: coco-jax bench [--quick] [--json FILE]  (this module's entry point is the worker)",
        file=sys.stderr,
    )
    sys.exit(2)
