"""Sections 5 and 6: the machine's matmul rate and bandwidth, the engine against them,
and peak memory."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np

from coco_jax.bench.cases import model_flops
from coco_jax.bench.plan import Plan
from coco_jax.bench.throughput import case_size
from coco_jax.bench.util import block_ready, median_spread, now, time_call


def bench_roofline(plan: Plan, log) -> dict:
    """Measured float32 matmul rate and read / copy bandwidth (jax, this process)."""
    reps = max(3, plan.reps)
    n = plan.matmul_n
    log(f"  matmul {n}x{n} ...")
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    block_ready(mm(a, b))
    t_mm = [time_call(mm, a, b) for _ in range(reps)]
    del a, b
    count = plan.bandwidth_bytes // 4
    cols = 4096
    rows_ = count // cols
    count = rows_ * cols
    log(f"  bandwidth ({count * 4 / 2**20:.0f} MiB) ...")
    x = jnp.full((rows_, cols), 1.5, jnp.float32)
    ones = jnp.ones((cols,), jnp.float32)
    # reading X once: the best of three jax read kernels (XLA:CPU reductions differ)
    kernels = {
        "sum of row sums": (lambda v: jnp.sum(jnp.sum(v, axis=1)), (x,)),
        "max": (jnp.max, (x,)),
        "matrix-vector product": (lambda v, w: v @ w, (x, ones)),
    }
    read = {}
    for name, (fn, args) in kernels.items():
        compiled = jax.jit(fn).lower(*args).compile()
        block_ready(compiled(*args))
        read[name] = median_spread([time_call(compiled, *args) for _ in range(reps)])
    best = min(read, key=lambda k: read[k]["median"])
    cp = jax.jit(lambda v: v * 1.0000001, donate_argnums=0)
    x = block_ready(cp(x))
    t_cp = []
    for _ in range(reps):
        t0 = now()
        x = block_ready(cp(x))
        t_cp.append(now() - t0)
    del x
    gc.collect()
    return {
        "matmul_n": n,
        "matmul_s": median_spread(t_mm),
        "matmul_flops_per_s": 2.0 * n**3 / float(np.median(t_mm)),
        "bandwidth_bytes": int(count * 4),
        "read_s": read,
        "read_kernel": best,
        "read_bytes_per_s": count * 4 / read[best]["median"],
        "copy_s": median_spread(t_cp),
        "copy_bytes_per_s": 2.0 * count * 4 / float(np.median(t_cp)),
        "method": "matmul: jnp.matmul of two n x n float32 (2 n^3 FLOP); read: bytes / median time of the "
        "fastest of three read kernels (sum, max, matrix-vector); copy: in-place (donated) v * c, "
        "read + write bytes counted",
    }


def combine_calibrations(cals: list[dict]) -> dict:
    """The machine's rates: the best of the calibrations made at the start and at the
    end of the run (a shared machine's load varies; the best is what it can do, which
    makes the engine's fractions conservative). Every calibration is kept."""
    out = dict(cals[0])
    for key in ("matmul_flops_per_s", "read_bytes_per_s", "copy_bytes_per_s"):
        out[key] = max(c[key] for c in cals)
    out["calibrations"] = cals
    return out


def roofline_cases(throughput: list[dict], machine: dict) -> list[dict]:
    """Achieved FLOP/s and X bytes/s of the largest-d cases against the machine rates."""
    if not throughput:
        return []
    d_max = max(r["d"] for r in throughput)
    out = []
    for r in throughput:
        if r["d"] != d_max:
            continue
        e = r["engine"]
        flops = model_flops(r["task"], r["M"], r["d"], r["n_k"], r["s"])
        x_bytes = r["M"] * r["n_k"] * r["d"] * 4
        out.append(
            {
                "id": r["id"],
                "task": r["task"],
                "M": r["M"],
                "d": r["d"],
                "n_k": r["n_k"],
                "model_flops_per_step": flops,
                "flops_per_s": flops / e["step_s"],
                "flops_fraction": flops / e["step_s"] / machine["matmul_flops_per_s"],
                "x_bytes_per_step": x_bytes,
                "x_bytes_per_s": x_bytes / e["step_s"],
                "read_fraction": x_bytes / e["step_s"] / machine["read_bytes_per_s"],
                "copy_fraction": x_bytes / e["step_s"] / machine["copy_bytes_per_s"],
            }
        )
    return out


def roofline_section(result: dict) -> dict:
    """Section 5: the measured machine rates and the largest-d cases against them."""
    return {
        "matmul_flops_per_s": result["machine"]["matmul_flops_per_s"],
        "read_bytes_per_s": result["machine"]["read_bytes_per_s"],
        "copy_bytes_per_s": result["machine"]["copy_bytes_per_s"],
        "flops_model": model_flops.__doc__.split("\n\n")[0] if model_flops.__doc__ else "",
        "cases": roofline_cases(result["throughput"], result["machine"]),
    }


def memory_section(result: dict) -> dict:
    """Section 6: peak memory of the largest throughput case."""
    big = max(result["throughput"], key=case_size)
    e = big["engine"]
    stats = e.get("device_memory_stats")
    out = {
        "case": big["id"],
        "x_bytes": e["x_bytes"],
        "xla_memory_analysis": e.get("memory_analysis"),
        "device_peak_bytes": (stats or {}).get("peak_bytes_in_use"),
        "process_peak_rss_bytes": e.get("process_peak_rss_bytes"),
        "source": "device memory_stats()['peak_bytes_in_use']"
        if stats and "peak_bytes_in_use" in stats
        else "no device memory_stats() on this backend: process peak RSS (resource.getrusage ru_maxrss), "
        "read right after timing the largest case: a high-water mark of the benchmark process so far "
        "(Python, jax, earlier cases); the XLA memory analysis of the case's program is exact",
    }
    nm = result.get("numpy_blas") or {}
    if nm.get("peak_rss_bytes"):
        out["numpy_process_peak_rss_bytes"] = nm["peak_rss_bytes"]
    return out
