"""Description of the machine and libraries a benchmark ran on."""

from __future__ import annotations

import os
import platform

import jax
import jaxlib
import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def blas_info() -> list[dict] | None:
    """threadpoolctl's description of the BLAS numpy loaded (None without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [
        {
            k: v
            for k, v in lib.items()
            if k in ("internal_api", "version", "architecture", "num_threads", "prefix")
        }
        for lib in threadpoolctl.threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def machine_info() -> dict:
    """CPU/accelerator model, device count and library versions of this process."""
    devices = jax.devices()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "env": {
            k: os.environ[k]
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XLA_FLAGS")
            if k in os.environ
        },
        "numpy_blas_in_engine_process": blas_info(),
    }
