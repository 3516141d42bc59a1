"""Sections 1 and 2: step throughput against the NumPy references, and the cost of
redundancy."""

from __future__ import annotations

from coco_jax.bench.cases import compress_k, rows_per_partition
from coco_jax.bench.engine_side import EngineCase
from coco_jax.bench.numpy_side import NumpyWorker
from coco_jax.bench.plan import LR, REDUNDANCY, Plan


def _ratio(engine: dict | None, ref: dict | None) -> float | None:
    if not engine or not ref or "step_s" not in ref or "step_s" not in engine:
        return None
    return ref["step_s"] / engine["step_s"]


def case_size(row: dict) -> tuple[int, int]:
    """Order of case size: bytes of X, then the [M, d] state."""
    return (row["M"] * row["n_k"] * row["d"], row["M"] * row["d"])


def throughput_cases(plan: Plan) -> list[dict]:
    """The throughput grid of `plan`: tasks x d x M, cyclic s=2, top-k 1%."""
    rows = []
    for task in plan.tasks:
        for d in plan.dims:
            for m in plan.devices:
                rows.append(
                    {
                        "id": f"{task}-M{m}-d{d}",
                        "task": task,
                        "M": m,
                        "d": d,
                        "n_k": rows_per_partition(m, d, plan.rows, plan.max_x_bytes),
                        "s": REDUNDANCY,
                        "k": compress_k(d),
                        "lr": LR,
                    }
                )
    return rows


def bench_throughput(plan: Plan, worker: NumpyWorker, log) -> list[dict]:
    """Section 1: engine, then the two NumPy references, case by case."""
    rows = throughput_cases(plan)
    biggest = max(rows, key=case_size)
    for row in rows:
        log(f"  {row['id']} (n_k={row['n_k']}, k={row['k']}): compiling, numpy warm-up ...")
        case = EngineCase(row["task"], row["M"], row["d"], row["n_k"], [row["s"]], plan)
        worker.setup(
            {k: row[k] for k in ("id", "task", "M", "d", "n_k", "s", "k", "lr")}
            | {"variants": ["vectorized", "loop"]}
        )
        log(f"  {row['id']}: timing (engine and NumPy repetitions alternate) ...")
        for _ in range(plan.reps):
            case.time_round(row["s"])
            worker.rep()
        row["engine"] = case.result(row["s"], memory=row is biggest)
        case.close()
        ref = worker.finish()
        row["numpy_vectorized"] = ref["vectorized"]
        row["numpy_loop"] = ref["loop"]
        row["x_vectorized"] = _ratio(row["engine"], ref["vectorized"])
        row["x_loop"] = _ratio(row["engine"], ref["loop"])
    return rows


def bench_redundancy(plan: Plan, worker: NumpyWorker, log) -> dict:
    """Section 2: s = 0..5 on one case; the engine's repetitions alternate over s so a
    slow spell of a shared machine does not land on one level only."""
    task, m, d = plan.redundancy_case
    n_k = rows_per_partition(m, d, plan.rows, plan.max_x_bytes)
    levels = [s for s in plan.redundancy_levels if s < m]
    log(f"  engine: compiling s={levels} ...")
    case = EngineCase(task, m, d, n_k, levels, plan)
    log("  engine: timing (repetitions alternate over s) ...")
    for _ in range(plan.reps):
        for s in levels:
            case.time_round(s)
    rows = [{"s": s, "engine": case.result(s)} for s in levels]
    case.close()
    for row in rows:
        log(f"  numpy loop s={row['s']} ...")
        ref = worker.case(
            {
                "id": f"s{row['s']}",
                "task": task,
                "M": m,
                "d": d,
                "n_k": n_k,
                "s": row["s"],
                "k": compress_k(d),
            }
            | {"lr": LR, "variants": ["loop"]}
        )
        row["loop"] = ref["loop"]
    base_e = rows[0]["engine"]["step_s"]
    base_l = rows[0]["loop"].get("step_s")
    for row in rows:
        row["engine_rel"] = row["engine"]["step_s"] / base_e
        row["loop_rel"] = row["loop"]["step_s"] / base_l if base_l and "step_s" in row["loop"] else None
    return {"task": task, "M": m, "d": d, "n_k": n_k, "k": compress_k(d), "levels": rows}
