"""Shared test setup.

The persistent compilation cache (coco_jax/cache.py) goes to a fresh directory per
test session, so the suite never reads or fills the user's cache and starts cold,
while the subprocesses a test starts (which inherit the environment) reuse what the
session compiled.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("COCO_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="coco-jax-test-xla-"))
