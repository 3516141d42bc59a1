"""Several processes and hosts: `jax.distributed` initialisation and the few
collectives a sweep needs (gather tables and small JSON records on process 0, barriers),
plus splitting a host CPU into several JAX devices.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils as mh

from coco_jax.errors import ConfigError
from coco_jax.fileio import jsonable

__all__ = ["Comm", "init_distributed", "use_cpu_devices"]


class Comm:
    """Collectives between the processes of a `jax.distributed` run (no-ops alone)."""

    def __init__(self):
        self.index = jax.process_index()
        self.count = jax.process_count()

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        if self.count == 1:
            return [data]
        lens = np.asarray(mh.process_allgather(np.asarray([len(data)], np.int32))).reshape(-1)
        buf = np.zeros(max(int(lens.max()), 1), np.uint8)
        buf[: len(data)] = np.frombuffer(data, np.uint8)
        everything = np.asarray(mh.process_allgather(buf)).reshape(self.count, -1)
        return [everything[p, : int(lens[p])].tobytes() for p in range(self.count)]

    def allgather_json(self, obj) -> list:
        return [json.loads(b.decode()) for b in self.allgather_bytes(json.dumps(jsonable(obj)).encode())]

    def barrier(self, name: str) -> None:
        if self.count > 1:
            mh.sync_global_devices(name)


def init_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout_s: int = 120,
) -> bool:
    """Initialise `jax.distributed` when asked (arguments, or the environment variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `auto` lets JAX detect
    SLURM / Open MPI / TPU clusters). Call before any other JAX work. CPU collectives
    use gloo. Returns whether it initialised."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not (auto or coordinator_address or num_processes):
        return False
    if num_processes == 1 and not auto:
        return False
    # gloo CPU collectives (the option may be renamed or gone in another jax version)
    with contextlib.suppress(Exception):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )
    return True


def use_cpu_devices(n: int | None = None) -> int | None:
    """Split the host CPU into `n` JAX devices so the configuration axis of a sweep runs
    in parallel on CPU cores; only before JAX has started a backend, and not where
    XLA_FLAGS already forces a device count. `None` leaves JAX's default (one CPU
    device): several CPU devices on an oversubscribed 2-core machine were seen to stall
    a sweep, so splitting is opt-in. A GPU or TPU run is unaffected. Returns the count
    set, or None."""
    if n is None or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if n < 1:
        raise ConfigError(f"cpu_devices={n} is invalid: must be >= 1")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except (RuntimeError, AttributeError, ValueError):  # backend already started / older jax
        return None
    return n
