"""The benchmark issue's targets, checked against a run's figures."""

from __future__ import annotations

TARGETS = (
    ("engine_vs_loop_M64_d1000", ">=", 20.0, "engine / NumPy loop at M=64, d=1,000"),
    ("engine_vs_loop_M64_d10000", ">=", 5.0, "engine / NumPy loop at M=64, d=10,000"),
    ("engine_vs_vectorized_M64_d10000", ">=", 1.5, "engine / vectorised NumPy at M=64, d=10,000"),
    ("linreg_read_bandwidth_fraction", ">=", 0.5, "large linreg (most rows): X bytes/s / read bandwidth"),
    ("redundancy_s3_over_s0", "<=", 1.3, "engine step time s=3 / s=0"),
    ("sweep64_speedup", ">=", 10.0, "64-configuration vmapped sweep / one by one"),
    # issue 17
    ("warm_tiny_ms_per_config", "<=", 0.3, "warm sweep of 2,048 tiny configurations: ms per configuration"),
    ("tiny_100k_written_s", "<=", 60.0, "100,000 tiny configurations planned, run, written: seconds"),
    ("dry_run_1e6_s", "<=", 20.0, "--dry-run of 10^6 tiny configurations: seconds"),
    ("grid_of_bound", ">=", 0.5, "paper-linreg grid: share of the cost model's bound (best width)"),
)


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets with the figures of this run (None where not measured)."""
    measured: dict[str, dict[str, float | None]] = {name: {} for name, *_ in TARGETS}
    for r in result.get("throughput", []):
        if r["M"] == 64 and r["d"] == 1000:
            measured["engine_vs_loop_M64_d1000"][r["task"]] = r["x_loop"]
        if r["M"] == 64 and r["d"] == 10000:
            measured["engine_vs_loop_M64_d10000"][r["task"]] = r["x_loop"]
            measured["engine_vs_vectorized_M64_d10000"][r["task"]] = r["x_vectorized"]
    lin = [c for c in result.get("roofline", {}).get("cases", []) if c["task"] == "linreg"]
    if lin:
        # the large-d linreg case with the most rows per partition: where reading X should dominate
        big = max(lin, key=lambda c: (c["n_k"], c["x_bytes_per_step"]))
        measured["linreg_read_bandwidth_fraction"][big["id"]] = big["read_fraction"]
    red = result.get("redundancy", {}).get("levels", [])
    by_s = {r["s"]: r for r in red}
    if 3 in by_s and 0 in by_s:
        measured["redundancy_s3_over_s0"]["engine"] = by_s[3]["engine_rel"]
    for sw in result.get("sweep", []):
        for r in sw["sizes"]:
            if r["configs"] == 64:
                measured["sweep64_speedup"][f"M{sw['M']}-d{sw['d']}"] = r["speedup"]
    scale = result.get("scale") or {}
    if scale.get("warm", {}).get("configs") == 2048:
        measured["warm_tiny_ms_per_config"]["ms"] = scale["warm"]["ms_per_config"]
    if scale.get("written", {}).get("configs", 0) >= 100_000:
        measured["tiny_100k_written_s"]["s"] = scale["written"]["total_s"]
    if scale.get("dry_run", {}).get("configs", 0) >= 1_000_000:
        measured["dry_run_1e6_s"]["s"] = scale["dry_run"]["total_s"]
    shares = [r["of_bound"] for r in (result.get("grid") or {}).get("rows", []) if r["of_bound"] is not None]
    if shares and (result.get("grid") or {}).get("rows", [{}])[0].get("configs", 0) >= 4096:
        measured["grid_of_bound"]["best"] = max(shares)
    out = []
    for name, op, bound, text in TARGETS:
        vals = {k: v for k, v in measured[name].items() if v is not None}
        met = None
        if vals:
            met = all((v >= bound) if op == ">=" else (v <= bound) for v in vals.values())
        out.append(
            {"name": name, "description": text, "target": f"{op} {bound:g}", "measured": vals, "met": met}
        )
    return out
