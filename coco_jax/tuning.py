"""Tuning as a sweep feature, and reuse of finished runs: both built on `cj.sweep`.

A grid with tuned fields (`Grid(..., tune={"lr": [...]}, tuning_seeds=[...],
criterion=...)`, or the same keys in a grid file) runs in stages, each an ordinary
sweep (vmapped programs; the tuned fields are dynamic, so a cell's candidates and
tuning seeds share a program):

1. **tuning** (`out/tuning/`): every cell (a configuration less its tuned fields and
   its seed; with `seeds=` also less its data seed) runs every candidate on every
   tuning seed. The criterion scores each candidate (mean over the tuning seeds of a
   per-run score; a diverged run is +inf) and the lowest wins; ties go to the first
   candidate in the declared order.
2. **extensions** (`out/tuning/extend-<r>/`, with `extend_edges`): a choice on the edge
   of its candidates gets one more candidate a geometric step beyond that edge, and the
   cell is scored again, at most `extend_edges` rounds. Edges are flagged either way.
3. **reported** (`out/`): the grid's own seeds run at each cell's choice. The results
   table there is an ordinary results table (`cj.load_results`); beside it,
   `out/tuning.parquet` (`load_tuning`) holds one row per (cell, candidate): the
   candidate's values, its criterion value and per-seed scores, whether it was chosen,
   the cell's edge flags and extensions; the sidecar `out/results.json` gets a
   "tuning" summary (fields, candidates, tuning seeds, criterion and its definition,
   counts of cells on an edge and extended).

Every stage is a sweep into its own directory, so a killed tuning run resumes where
it stopped (finished stages are loaded, not recomputed).

Reuse: `tune(..., known=RowCache())` copies the rows of configurations the cache
already holds (keyed by `config_id`: the same configuration is the same computation,
whatever its method label) instead of computing them; `coco-jax run` shares one cache
across the parts of an experiment, so a configuration that several studies share is
computed once and every study reports the same numbers.

Example:
    >>> import coco_jax as cj
    >>> base = cj.preset("gd", task="linreg", num_devices=4, steps=40)
    >>> grid = cj.Grid(base=base, seeds=range(3), tune={"lr": cj.LogGrid()}, tuning_seeds=[100, 101])
    >>> df = cj.tune(grid, out="results/gd-tuned")  # doctest: +SKIP
    >>> cj.load_tuning("results/gd-tuned").query("chosen")[["lr", "criterion", "edge"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from coco_jax import store, tables
from coco_jax.config import ExperimentConfig
from coco_jax.distributed import Comm
from coco_jax.errors import ConfigError
from coco_jax.fileio import jsonable, read_json, write_json
from coco_jax.grid import CRITERIA, DEFAULT_CRITERION, Criterion, Grid, LogGrid, Tuning, log_grid
from coco_jax.plan import entries_of, grid_hash, plan_sweep
from coco_jax.program import plan_estimates
from coco_jax.reference import optimum_of_data, smoothness
from coco_jax.results import config_columns, config_id, load_results, normalise
from coco_jax.sweep import SweepResult, SweepStats, check_memory_budget, sweep
from coco_jax.sweep import out_status as sweep_status

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "TUNING_DIR",
    "TUNING_TABLE",
    "Criterion",
    "LogGrid",
    "RowCache",
    "TunedResult",
    "describe_plan",
    "load_tuning",
    "log_grid",
    "lr_grid",
    "out_status",
    "register_criterion",
    "sweep_reusing",
    "tune",
]

TUNING_DIR = "tuning"  # stage 1 under out/; extension round r under out/tuning/extend-<r>
TUNING_TABLE = "tuning.parquet"  # beside the reported results table
TAIL = 0.1  # the share of the evaluated steps the default criteria average over


# ======================================================================= criteria


def register_criterion(name: str, per_run: Callable[[pd.DataFrame], float], definition: str) -> Criterion:
    """Name a criterion (grid files refer to it by name): `per_run(rows) -> float` of
    one run (rows sorted by step, with `gap` = F − F* where known), lower is better;
    `definition` is the sentence recorded with the results."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"criterion name {name!r} is invalid: must be a non-empty string")
    crit = Criterion(name, definition, per_run)
    CRITERIA[name] = crit
    return crit


def _tail(rows: pd.DataFrame, column: str) -> np.ndarray:
    """`column` over the last TAIL share of a run's evaluated steps (at least one)."""
    vals = rows[column].to_numpy(np.float64)
    return vals[-max(1, round(len(vals) * TAIL)) :]


def _tail_log_gap(rows: pd.DataFrame) -> float:
    if "gap" in rows and rows["gap"].notna().all():
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.mean(np.log(_tail(rows, "gap"))))
    return float(np.mean(_tail(rows, "loss")))


register_criterion(
    "tail_log_gap",
    _tail_log_gap,
    "mean over the tuning seeds of the mean of log(F(θ) − F*) over the last 10% of the evaluated steps "
    "(F* computed from the data in float64, the gap clipped at the float floor; the loss F(θ) itself for "
    "tasks without a computable F*); a diverged run counts as +inf",
)
register_criterion(
    "tail_loss",
    lambda rows: float(np.mean(_tail(rows, "loss"))),
    "mean over the tuning seeds of the mean training loss F(θ) over the last 10% of the evaluated steps; "
    "a diverged run counts as +inf",
)
register_criterion(
    "final_test_loss",
    lambda rows: float(rows["test_loss"].to_numpy(np.float64)[-1]),
    "mean over the tuning seeds of the test loss at the last evaluated step; a diverged run counts as +inf",
)


def lr_grid(cfg: ExperimentConfig, below: int = 6, above: int = 2, factor: float = 2.0) -> list[float]:
    """Learning-rate candidates around 1/L̂ (`reference.smoothness(cfg)`, from the
    configuration's data in float64): (1/L̂)·factor^j for j = −below … above, 9 values
    from 1/(64 L̂) to 4/L̂ by default, rounded to 4 significant digits."""
    return log_grid(1.0 / smoothness(cfg), below, above, factor)


# ========================================================================== reuse


class RowCache:
    """Rows of finished runs by configuration id: the same `config_id` is the same
    computation whatever the method label, so its rows can be copied (relabelled)
    instead of computed again (`sweep_reusing`, `tune(known=...)`)."""

    def __init__(self) -> None:
        self._rows: dict[str, pd.DataFrame] = {}

    def add(self, df: pd.DataFrame) -> None:
        """Remember the runs of a results table (the first copy of a configuration wins)."""
        if df is None or df.empty:
            return
        df = df.drop(columns=[c for c in ("part",) if c in df])
        for cid, rows in df.groupby("config_id", sort=False):
            if cid not in self._rows:
                first = rows["method"].iloc[0]
                self._rows[cid] = rows[rows["method"] == first].reset_index(drop=True)

    def get(self, cid: str) -> pd.DataFrame | None:
        return self._rows.get(cid)

    def __contains__(self, cid: object) -> bool:
        return cid in self._rows

    def __len__(self) -> int:
        return len(self._rows)


def _stats_sum(parts: Sequence[SweepStats]) -> SweepStats:
    out = SweepStats()
    for st in parts:
        for f in ("num_configs", "groups", "compilations", "computed_configs", "data_loads"):
            setattr(out, f, getattr(out, f) + getattr(st, f))
        for f in ("compile_s", "run_s", "wall_time_s"):
            setattr(out, f, getattr(out, f) + getattr(st, f))
        out.resumed = out.resumed or st.resumed
        out.local_devices = max(out.local_devices, st.local_devices)
        out.batches = out.batches + list(st.batches)
    return out


def sweep_reusing(
    grid: Grid, out: str | os.PathLike | None = None, *, known: RowCache | None = None, **kwargs
) -> tuple[SweepResult, int]:
    """`cj.sweep(grid, out, **kwargs)`, with the configurations `known` holds copied
    (relabelled with this grid's method label) instead of computed. Returns (table,
    number of configurations copied). The table has the rows a sweep computing them
    would have (equal up to float32 reassociation: another batch of another program);
    copied rows are bit-identical to the earlier run's. Runs on user arrays (`data`)
    are never copied.

    With `out`, the copied rows are recorded as a finished part of the directory
    before the sweep starts, so the sweep resumes past them and its table, sidecar and
    resume behave as for any sweep (`coco-jax plot` and `cj.load_results` read it as
    usual)."""
    entries = grid.configs()
    reuse = [(m, c) for m, c in entries if known is not None and config_id(c) in known]
    if not reuse or kwargs.get("data") is not None:
        return sweep(grid, out=out, **kwargs), 0
    copied = pd.concat(
        [known.get(config_id(c)).assign(method=m) for m, c in reuse], ignore_index=True
    )  # fmt: skip
    if out is None:
        rest = [(m, c) for m, c in entries if config_id(c) not in known]
        frames, stats = [copied], SweepStats(num_configs=len(entries))
        if rest:
            df = sweep(Grid.explicit(rest, name=grid.name, description="configurations not reused"), **kwargs)
            frames.append(df)
            stats = dataclasses.replace(df.stats, num_configs=len(entries))
        table = pd.concat(frames, ignore_index=True)
        rank = {(m, config_id(c)): i for i, (m, c) in enumerate(entries)}
        table["_rank"] = [rank[k] for k in zip(table["method"], table["config_id"])]
        table = table.sort_values(["_rank", "step"], kind="stable").drop(columns="_rank")
        result = SweepResult(normalise(table.reset_index(drop=True)))
        result.stats = stats
        return result, len(reuse)
    rd = store.ResultsDir(out)
    ghash = grid_hash(entries_of(grid), None, kwargs.get("test_data"), kwargs.get("straggler_trace"))
    comm = Comm()
    overwrite = bool(kwargs.get("overwrite"))
    with contextlib.ExitStack() as held:
        rd.hold(comm, held)  # the sweep takes it again (re-entrant)
        state = rd.state(ghash, overwrite)  # refuses another grid's results unless overwrite
        if state != "complete":
            if rd.status(ghash) != "resume":  # new, or refused and overwritten
                if comm.index == 0:
                    rd.clear()
                rd.mark_running(
                    comm,
                    lambda previous: {
                        "status": "running",
                        "grid_hash": ghash,
                        "grid": grid.describe(),
                        "num_configs": len(entries),
                        "invocations": previous,
                    },
                )
            if comm.index == 0:
                keys = sorted(f"{m}|{config_id(c)}" for m, c in reuse)
                name = "reused-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
                if not (rd.path / store.PARTS / f"{name}.parquet").exists():
                    store.write_part(rd.path, name, copied)
        df = sweep(grid, out=out, **kwargs)
        df.stats.resumed = state == "resume"
    return df, len(reuse) if state != "complete" else 0


# ========================================================================= stages


@dataclasses.dataclass
class _Cell:
    """One cell of a tuned grid: a configuration less its tuned fields and seeds."""

    key: str
    method: str
    rep: ExperimentConfig  # its first reported configuration
    candidates: list[tuple]  # values of the tuned fields, per candidate
    rounds: list[int]  # the round that added each candidate
    scores: dict = dataclasses.field(default_factory=dict)  # candidate -> (score, per-seed, runs, diverged)
    extended: list = dataclasses.field(default_factory=list)  # sentences
    blocked: dict = dataclasses.field(default_factory=dict)  # field -> why it cannot be extended


def _cell_key(method: str, cfg: ExperimentConfig, drop: Sequence[str]) -> str:
    fields = {k: v for k, v in cfg.to_dict().items() if k not in drop}
    text = json.dumps([method, jsonable(fields)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cells(grid: Grid) -> list[_Cell]:
    tn = grid.tuning
    drop = (*tn.names, *tn.seed_fields)
    cands = list(itertools.product(*(v for _, v in tn.fields)))
    cells: dict[str, _Cell] = {}
    for m, c in grid.reported_configs():
        key = _cell_key(m, c, drop)
        if key not in cells:
            cells[key] = _Cell(key, m, c, list(cands), [0] * len(cands))
    return list(cells.values())


def _run_config(cell: _Cell, tn: Tuning, cand: tuple, seed: int) -> ExperimentConfig:
    fields = dict(zip(tn.names, cand))
    fields.update({f: seed for f in tn.seed_fields})
    return cell.rep.replace(**fields)


def _stage_grid(grid: Grid, cells: list[_Cell], tn: Tuning, round_: int) -> Grid | None:
    configs = [
        (cell.method, _run_config(cell, tn, cand, s))
        for cell in cells
        for cand, r in zip(cell.candidates, cell.rounds)
        if r == round_
        for s in tn.seeds
    ]
    if not configs:
        return None
    what = "tuning runs" if round_ == 0 else f"tuning runs of extension round {round_}"
    return Grid.explicit(
        configs, name=grid.name, description=f"{what} of the tuned grid {grid.name or ''}".strip()
    )


def _stage_dir(out: pathlib.Path | None, round_: int) -> pathlib.Path | None:
    if out is None:
        return None
    return out / TUNING_DIR if round_ == 0 else out / TUNING_DIR / f"extend-{round_}"


def _with_gap(table: pd.DataFrame, data) -> tuple[pd.DataFrame, str]:
    """The stage table with its gap F − F*: F* of each configured dataset, or of the
    user arrays `data` (per task) when the runs trained on them."""
    if data is None:
        return tables.with_gap(table)
    frames, ys = [], set()
    for task, sub in table.groupby("task", sort=False):
        f_star = optimum_of_data(str(task), *data[:2])
        sub, y = tables.with_gap(sub, f_star) if f_star is not None else (sub, "loss")
        frames.append(sub)
        ys.add(y)
    return pd.concat(frames).loc[table.index], ("gap" if ys == {"gap"} else "loss")


def _score(cells: list[_Cell], tn: Tuning, table: pd.DataFrame, data=None) -> None:
    """Score every candidate whose runs `table` holds (mean over the tuning seeds of
    the criterion's per-run value; diverged or NaN runs count as +inf)."""
    df, y = _with_gap(table, data)
    if y == "loss" and "gap" in df:
        df = df.drop(columns="gap")
    bad = tables.diverged_runs(df, y)
    df = df.assign(_run=tables.run_key(df).to_numpy()).sort_values("step", kind="stable")
    per_run = {}
    for run, rows in df.groupby("_run", sort=False):
        if run in bad:
            per_run[run] = (math.inf, True)
            continue
        try:
            v = float(tn.criterion.per_run(rows.drop(columns="_run").reset_index(drop=True)))
        except Exception as err:  # any error of a user's criterion: name the criterion
            raise ConfigError(
                f"criterion {tn.criterion.name!r} failed on a run: {type(err).__name__}: {err}"
            ) from err
        per_run[run] = (v if math.isfinite(v) else math.inf, False)
    for cell in cells:
        for cand in cell.candidates:
            if cand in cell.scores:
                continue
            keys = [f"{config_id(_run_config(cell, tn, cand, s))}|{cell.method}" for s in tn.seeds]
            if not all(k in per_run for k in keys):
                continue
            vals = [per_run[k][0] for k in keys]
            score = math.inf if any(math.isinf(v) for v in vals) else float(np.mean(vals))
            cell.scores[cand] = (score, vals, len(vals), sum(per_run[k][1] for k in keys))


def _choice(cell: _Cell) -> tuple:
    """The best candidate (lowest score; ties and an all-diverged cell: the first)."""
    return min(cell.candidates, key=lambda c: (cell.scores[c][0], cell.candidates.index(c)))


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _edges(cell: _Cell, tn: Tuning) -> dict[str, str]:
    """Tuned field -> "lowest"/"highest" where the cell's choice sits on that edge of
    the field's candidates (numeric fields only)."""
    choice = _choice(cell)
    out = {}
    for i, name in enumerate(tn.names):
        values = sorted({c[i] for c in cell.candidates})
        if len(values) < 2 or not _numeric(values):
            continue
        if choice[i] == values[-1]:
            out[name] = "highest"
        elif choice[i] == values[0]:
            out[name] = "lowest"
    return out


def _beyond(values: list, side: str) -> tuple[Any, str | None]:
    """The value one geometric step beyond an edge of sorted `values` (None and why not)."""
    a, b = (values[-1], values[-2]) if side == "highest" else (values[0], values[1])
    if a == 0 or b == 0 or (a > 0) != (b > 0):
        return None, f"no geometric step from {a!r} and {b!r}"
    new = a * (a / b)
    if isinstance(a, int) and isinstance(b, int):
        new = round(new)
        if new == a:
            new = a + (1 if side == "highest" else -1)
    else:
        new = float(f"{new:.4g}")
    return new, None


def _extend(cell: _Cell, tn: Tuning, round_: int) -> bool:
    """Add candidates one geometric step beyond each edge of the cell's choice; False
    when nothing can be added (the reason is kept in `cell.blocked`)."""
    added = False
    for name, side in _edges(cell, tn).items():
        i = tn.names.index(name)
        values = sorted({c[i] for c in cell.candidates})
        new, why = _beyond(values, side)
        if new is not None:
            try:
                _run_config(
                    cell, tn, tuple(new if j == i else v for j, v in enumerate(_choice(cell))), tn.seeds[0]
                )
            except ConfigError as err:
                new, why = None, f"{name}={new!r} is not a valid configuration ({err})"
        if new is None:
            cell.blocked[name] = why
            continue
        per_field = [sorted({c[j] for c in cell.candidates}) for j in range(len(tn.names))]
        per_field[i] = sorted([*per_field[i], new])
        for cand in itertools.product(*per_field):
            if cand not in cell.candidates:
                cell.candidates.append(cand)
                cell.rounds.append(round_)
        word = "above" if side == "highest" else "below"
        cell.extended.append(f"{name} extended one step {word} to {new:g} (round {round_})")
        added = True
    return added


# ===================================================================== the stages


def _stages(grid: Grid, out, runner, data=None) -> tuple[list[_Cell], list, bool]:
    """Run (or load) the tuning stages: `runner(stage grid, directory, round)` returns
    the stage's table, or None to stop (status checks). Returns (cells, [(round,
    stage table)], whether every stage finished)."""
    tn = grid.tuning
    cells = _cells(grid)
    comm = Comm()
    done = []
    for round_ in range(tn.extend_edges + 1):
        targets = cells if round_ == 0 else [c for c in cells if _extend(c, tn, round_)]
        g = _stage_grid(grid, targets, tn, round_)
        if g is None:
            break
        table = runner(g, _stage_dir(out, round_), round_)
        if table is None:
            return cells, done, False
        done.append((round_, table))
        if comm.index == 0:
            _score(targets, tn, table, data)
        if comm.count > 1:  # process 0 holds the whole table: its scores decide everywhere
            scores = {c.key: [[list(k), *v] for k, v in c.scores.items()] for c in cells}
            scores = comm.allgather_json(scores if comm.index == 0 else None)[0]
            for c in cells:
                c.scores = {
                    tuple(k): (score, per_seed, n, bad) for k, score, per_seed, n, bad in scores[c.key]
                }
    return cells, done, True


def _reported_grid(grid: Grid, cells: list[_Cell]) -> Grid:
    tn = grid.tuning
    drop = (*tn.names, *tn.seed_fields)
    by_key = {c.key: c for c in cells}
    configs = []
    for m, c in grid.reported_configs():
        cell = by_key[_cell_key(m, c, drop)]
        configs.append((m, c.replace(**dict(zip(tn.names, _choice(cell))))))
    return Grid.explicit(
        configs,
        name=grid.name,
        description={"tuned grid": grid.describe(), "stage": "reported runs at the choices"},
    )


def _tuning_table(grid: Grid, cells: list[_Cell]) -> pd.DataFrame:
    """One row per (cell, candidate): `load_tuning`'s columns."""
    tn = grid.tuning
    rows = []
    for cell in cells:
        choice = _choice(cell)
        edges = _edges(cell, tn)
        edge_text = "; ".join(f"{n} at its {s} candidate" for n, s in edges.items())
        blocked = "; ".join(f"{n} not extended: {w}" for n, w in cell.blocked.items() if n in edges)
        for cand, round_ in zip(cell.candidates, cell.rounds):
            score, per_seed, runs, diverged = cell.scores.get(cand, (math.nan, [], 0, 0))
            cfg = _run_config(cell, tn, cand, tn.seeds[0])
            row = {"cell": cell.key, "method": cell.method}
            row.update({k: v for k, v in config_columns(cfg).items() if k not in tn.seed_fields})
            row.update(
                {
                    "round": round_,
                    "criterion": score,
                    "per_seed": json.dumps([None if not math.isfinite(v) else v for v in per_seed]),
                    "runs": runs,
                    "diverged_runs": diverged,
                    "chosen": cand == choice,
                    "edge": bool(edges),
                    "edge_fields": edge_text,
                    "extended": "; ".join(cell.extended),
                    "note": "; ".join(x for x in (blocked, _all_diverged(cell)) if x),
                    "criterion_name": tn.criterion.name,
                    "criterion_definition": tn.criterion.definition,
                    "tuning_seeds": json.dumps(list(tn.seeds)),
                    "tuned_fields": json.dumps(list(tn.names)),
                }
            )
            rows.append(row)
    return normalise(pd.DataFrame(rows))


def _all_diverged(cell: _Cell) -> str:
    if math.isinf(cell.scores[_choice(cell)][0]):
        return "every candidate diverged on some tuning seed: the first candidate is reported"
    return ""


def _summary(grid: Grid, cells: list[_Cell], rounds: int) -> dict:
    tn = grid.tuning
    chosen: dict[str, dict] = {n: {} for n in tn.names}
    for cell in cells:
        for n, v in zip(tn.names, _choice(cell)):
            text = f"{v:g}" if _numeric([v]) else str(v)
            chosen[n][text] = chosen[n].get(text, 0) + 1
    return jsonable(
        {
            **tn.describe(),
            "reported_seeds": sorted({c.seed for _, c in grid.reported_configs()}),
            "cells": len(cells),
            "edge_cells": sum(bool(_edges(c, tn)) for c in cells),
            "extended_cells": sum(bool(c.extended) for c in cells),
            "all_diverged_cells": sum(math.isinf(c.scores[_choice(c)][0]) for c in cells),
            "extension_rounds_run": rounds,
            "chosen_counts": chosen,
            "table": TUNING_TABLE,
            "directories": [TUNING_DIR],
        }
    )


class TunedResult(SweepResult):
    """The reported table of `tune` (a `SweepResult`): `.stats` sums every stage's
    sweep, `.stage_stats` has each stage's, `.tuning` is the tuning table (None for a
    grid without tuned fields), `.reused` counts configurations copied from `known`."""

    _metadata: ClassVar[list[str]] = ["stats", "stage_stats", "tuning", "reused"]


def _tuned_result(df: pd.DataFrame, stage_stats: dict, tuning_table, reused: int) -> TunedResult:
    out = TunedResult(df)
    flat = [s for v in stage_stats.values() for s in (v if isinstance(v, list) else [v])]
    out.stats = _stats_sum(flat)
    out.stats.num_configs = stage_stats["reported"].num_configs
    out.stage_stats = stage_stats
    out.tuning = tuning_table
    out.reused = reused
    return out


def tune(
    grid: Grid, out: str | os.PathLike | None = None, *, known: RowCache | None = None, **sweep_kwargs
) -> TunedResult:
    """Run a grid with tuned fields: its tuning stages, then its reported seeds at each
    cell's choice (module docstring). A grid without tuned fields is swept as by
    `cj.sweep`, so callers need one entry point.

    Args:
        grid: the grid (`Grid(..., tune=..., tuning_seeds=..., criterion=...)`).
        out: the results directory: the reported table in `out`, the tuning runs in
            `out/tuning/` (and `out/tuning/extend-<r>/`), `out/tuning.parquet`. None:
            nothing written, no resume.
        known: a `RowCache` of finished runs to copy instead of computing them; every
            run this call computes or loads is added to it.
        sweep_kwargs: passed to every stage's `cj.sweep` (memory_budget, overwrite,
            progress, chunk_steps, data, test_data, straggler_trace).

    Returns:
        A `TunedResult`: the reported rows (tuned fields at the chosen values), with
        `.tuning` (the `load_tuning` table) and `.stats` over all stages.

    Raises:
        ConfigError: as `cj.sweep` (before anything is computed), or when the criterion
            fails on a run.
        KeyboardInterrupt: on Ctrl-C; the same call resumes (finished stages and
            batches are kept).
    """
    outp = pathlib.Path(out) if out is not None else None
    t0 = time.time()
    if grid.tuning is None:
        df, reused = sweep_reusing(grid, outp, known=known, **sweep_kwargs)
        if known is not None:
            known.add(df)
        return _tuned_result(df, {"reported": df.stats}, None, reused)
    if outp is not None:
        _check_reported_dir(outp, bool(sweep_kwargs.get("overwrite")))
    stage_stats: dict[str, Any] = {"tuning": []}
    reused_total = 0

    def runner(g: Grid, d, round_: int):
        nonlocal reused_total
        df, reused = sweep_reusing(g, d, known=known, **sweep_kwargs)
        reused_total += reused
        stage_stats["tuning"].append(df.stats)
        if known is not None:
            known.add(df)
        return df

    cells, done, _ = _stages(grid, outp, runner, sweep_kwargs.get("data"))
    table = _tuning_table(grid, cells)
    comm = Comm()
    if outp is not None and comm.index == 0:
        path = outp / TUNING_TABLE
        if sweep_kwargs.get("overwrite") or not path.exists() or not _same_table(path, table):
            store.write_table(path, table)
    df, reused = sweep_reusing(_reported_grid(grid, cells), outp, known=known, **sweep_kwargs)
    reused_total += reused
    stage_stats["reported"] = df.stats
    if known is not None:
        known.add(df)
    if outp is not None and comm.index == 0:
        _record_summary(outp, _summary(grid, cells, len(done) - 1))
    result = _tuned_result(df, stage_stats, table, reused_total)
    result.stats.wall_time_s = time.time() - t0
    return result


def _same_table(path: pathlib.Path, table: pd.DataFrame) -> bool:
    try:
        old = store.read_table(path)
    except Exception:  # noqa: BLE001 - unreadable: rewrite it
        return False
    return old.shape == table.shape and old.fillna(-1).equals(table.fillna(-1))


def _record_summary(out: pathlib.Path, summary: dict) -> None:
    """Add the tuning summary to the reported sweep's sidecar (atomically)."""
    side = read_json(out / store.SIDECAR) or {}
    if side.get("tuning") != summary:
        write_json(out / store.SIDECAR, {**side, "tuning": summary})


def _check_reported_dir(out: pathlib.Path, overwrite: bool) -> None:
    """Refuse, before any tuning run, a directory whose results are not this tuned
    grid's (results there but no tuning record beside them)."""
    rd = store.ResultsDir(out)
    if overwrite:
        return
    try:
        side = rd.sidecar()
    except ValueError:
        side = None
    if (side is not None or rd.has_results()) and not (out / TUNING_DIR).is_dir():
        raise ConfigError(
            f"out={str(out)!r} holds results that are not a tuned grid's (no {TUNING_DIR}/ beside them): choose "
            "another directory or pass overwrite=True (--overwrite) to replace them"
        )


def out_status(grid: Grid, out: str | os.PathLike, overwrite: bool = False) -> str:
    """What `tune(grid, out=out)` would find ('new', 'resume', 'complete'), read-only;
    raises the ConfigError it would raise (another grid's results in `out` or in
    one of its stage directories) unless `overwrite`. A grid without tuned fields:
    `cj.sweep`'s answer."""
    outp = pathlib.Path(out)
    if grid.tuning is None:
        return sweep_status(grid, outp, overwrite)
    _check_reported_dir(outp, overwrite)
    states = []

    def runner(g: Grid, d, round_: int):
        st = sweep_status(g, d, overwrite)
        states.append(st)
        return load_results(d) if st == "complete" else None

    cells, _, finished = _stages(grid, outp, runner)
    if not finished:
        return "resume" if any(s != "new" for s in states) else "new"
    st = sweep_status(_reported_grid(grid, cells), outp, overwrite)
    return "complete" if st == "complete" else "resume"


def load_tuning(directory: str | os.PathLike) -> pd.DataFrame:
    """The tuning table of a tuned sweep's directory (`out/tuning.parquet`): one row
    per (cell, candidate) with the cell's configuration columns (the tuned fields
    holding the candidate's values; no seed columns), and

    - `cell` (id of the cell), `method`, `round` (0: declared; r: added by extension r),
    - `criterion` (the candidate's score: lower is better, inf when a seed diverged),
      `per_seed` (JSON list of per-seed scores, null = diverged), `runs`,
      `diverged_runs`, `criterion_name`, `criterion_definition`,
    - `chosen` (the cell's choice), `edge` (the choice is on an edge of its cell's
      candidates), `edge_fields` (which field, which edge), `extended` (what extension
      rounds added), `note` (an edge that could not be extended, an all-diverged cell),
    - `tuning_seeds`, `tuned_fields` (JSON lists).

    Raises:
        ConfigError: no tuning table there (not a tuned grid's directory, or its
            tuning has not finished).
    """
    path = pathlib.Path(directory) / TUNING_TABLE
    if not path.is_file():
        raise ConfigError(
            f"{str(directory)!r} holds no {TUNING_TABLE}: not the directory of a tuned grid (or its tuning stage "
            "has not finished; running it again resumes)"
        )
    try:
        return store.read_table(path)
    except Exception as err:
        raise ConfigError(
            f"{path} is unreadable ({store.read_error(err)}): run the tuned sweep again"
        ) from err


# ======================================================================== dry run


def describe_plan(
    grid: Grid,
    out: str | os.PathLike | None = None,
    memory_budget=None,
    chunk_steps: int | None = None,
) -> str:
    """The --dry-run text of a tuned grid: the tuning stage's plan and estimates, the
    bound on extension rounds, and the reported stage's plan (its programs and sizes do
    not depend on the choices: the tuned fields are dynamic)."""
    tn = grid.tuning
    outp = pathlib.Path(out) if out is not None else None
    cells = _cells(grid)
    first = _stage_grid(grid, cells, tn, 0)
    plan1 = plan_sweep(first, memory_budget=memory_budget, out=_stage_dir(outp, 0))
    check_memory_budget(memory_budget, plan1.groups)
    ncand = len(cells[0].candidates)
    where = f" -> {_stage_dir(outp, 0)}" if outp is not None else ""
    lines = [
        (
            f"tuning stage{where}: {len(cells)} cells x {ncand} candidates ({', '.join(tn.names)}) x "
            f"{len(tn.seeds)} tuning seeds = {len(first)} configurations; criterion {tn.criterion.name}"
        ),
        plan1.describe(plan_estimates(plan1, chunk_steps)),
    ]
    if tn.extend_edges:
        lines.append(
            f"extension rounds: at most {tn.extend_edges}, each at most {len(cells)} cells x "
            f"{len(tn.seeds)} seeds x the new candidates (only cells whose choice is on an edge)"
        )
    placeholder = Grid.explicit(
        [(m, c.replace(**dict(zip(tn.names, cells[0].candidates[0])))) for m, c in grid.reported_configs()],
        name=grid.name,
    )
    plan2 = plan_sweep(placeholder, memory_budget=memory_budget)
    lines += [
        (
            f"reported stage{' -> ' + str(outp) if outp is not None else ''}: {len(placeholder)} "
            "configurations at the chosen values (same programs and sizes whatever the choice)"
        ),
        plan2.describe(plan_estimates(plan2, chunk_steps)),
    ]
    return "\n".join(lines)
