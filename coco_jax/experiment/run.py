"""Running an experiment end to end (sweep, figures, report), and redrawing one.

`run_experiment` (``coco-jax run experiments/<name>.py [--quick] [--out DIR]``) runs the
sweep of every part (resuming if DIR holds part of it), draws the figures, writes the
report. It checks everything that can refuse the run first (the experiment recorded in
DIR, every part's grid against its sidecar, the directory lock: `store.ResultsDir`),
and writes experiment.json only once the run is accepted. `plot_directory`
(``coco-jax plot DIR``) redraws figures and report from the saved tables only, adopting
a directory that `coco-jax sweep` wrote (`coco_jax.experiment.adopt`).
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from coco_jax import interrupt, plots, store
from coco_jax import results as res_lib
from coco_jax.errors import ConfigError
from coco_jax.experiment.adopt import adopt, grid_experiment
from coco_jax.experiment.load import (
    Experiment,
    default_out,
    load_experiment,
    part_dir,
    parts_of,
    sibling,
    split_parts,
)
from coco_jax.report import Section, write_report
from coco_jax.store import EXPERIMENT, ResultsDir
from coco_jax.tuning import RowCache, tune
from coco_jax.tuning import out_status as tuned_status

__all__ = [
    "FIGURES",
    "REPORT",
    "apply_overrides",
    "draw_figures",
    "load_tables",
    "plot_directory",
    "run_experiment",
    "sweep_parts",
]

FIGURES = "figures"
REPORT = "report.md"


def apply_overrides(parts: list[tuple[str, Any]], overrides: dict | None) -> list[tuple[str, Any]]:
    """The grids with `overrides` (config fields) set on every grid's base. A field
    that a grid varies (on an axis, in a zip, or through a preset on its preset axis)
    is refused: the override would silently not apply to some configurations."""
    if not overrides:
        return parts
    flags = {k: "--" + k.replace("_", "-") for k in overrides}
    out = []
    for pname, g in parts:
        varied = g.varied_fields()
        for k in overrides:
            if k in varied:
                raise ConfigError(
                    f"{flags[k]} cannot apply to grid {pname!r}: the grid varies {k} itself "
                    "(an axis or a zip); remove the flag, or edit the experiment's grid"
                )
        base = g._base_input
        if isinstance(base, str):
            new_base: Any = {"preset": base, **overrides}
        elif isinstance(base, Mapping):
            new_base = {**base, **overrides}
        elif base is None:
            new_base = dict(overrides)
        else:
            new_base = g.base.replace(**overrides)
        try:
            ng = g.with_base(new_base)
        except ConfigError as err:
            raise ConfigError(f"overriding grid {pname!r} ({', '.join(flags.values())}): {err}") from None
        for method, cfg in ng.reported_configs():
            for k, v in overrides.items():
                if getattr(cfg, k) != v:
                    raise ConfigError(
                        f"{flags[k]} cannot apply to grid {pname!r}: its method {method!r} sets "
                        f"{k}={getattr(cfg, k)!r} itself; remove the flag, or edit the experiment's grid"
                    )
        out.append((pname, ng))
    return out


def sweep_parts(
    exp: Experiment,
    quick: bool,
    out: pathlib.Path,
    overwrite: bool = False,
    progress: bool = True,
    grids=None,
):
    """Run (or resume) every grid of `exp` into `out`; returns (table with `part`, info).

    One number per configuration: a configuration (same `config_id`, whatever its
    method label) that an earlier part computed or loaded is not computed again; its
    rows are copied into the later part (`tuning.RowCache`, `tuning.sweep_reusing`;
    tuning runs included). A tuned grid runs its tuning stages first (`tuning.tune`)."""
    parts = grids if grids is not None else parts_of(exp, quick)
    frames = []
    info = {}
    known = RowCache()
    for pname, g in parts:
        d = part_dir(out, exp.name, pname, len(parts))
        t0 = time.time()
        if progress:
            tuned = f" (tuning {', '.join(g.tuning.names)} first)" if g.tuning is not None else ""
            print(
                f"[{exp.name}] sweep {pname}: {len(g)} configurations{tuned} -> {d}",
                file=sys.stderr,
                flush=True,
            )
        df = tune(g, out=d, overwrite=overwrite, progress=progress, known=known)
        info[pname] = {
            "dir": str(d.relative_to(out)) if d != out else ".",
            "configs": len(g),
            "wall_time_s": round(time.time() - t0, 2),
            "compile_s": round(df.stats.compile_s, 2),
            "run_s": round(df.stats.run_s, 2),
            "compilations": df.stats.compilations,
            "computed": df.stats.computed_configs,
            "reused": df.reused,
            "resumed": df.stats.resumed,
        }
        if g.tuning is not None:
            info[pname]["tuning_configs"] = sum(s.num_configs for s in df.stage_stats["tuning"])
        frames.append(df.assign(part=pname))
    return pd.concat(frames, ignore_index=True), info


def load_tables(out: str | os.PathLike, meta: dict | None = None):
    """The table of a finished experiment directory (with `part`), from experiment.json
    (or the given `meta`)."""
    out = pathlib.Path(out)
    meta = meta if meta is not None else ResultsDir(out).experiment()
    if meta is None:
        raise ConfigError(
            f"{str(out)!r} holds no {EXPERIMENT}: it is not the output of `coco-jax run experiments/<name>.py`"
        )
    frames = []
    for pname, p in meta["parts"].items():
        frames.append(res_lib.load_results(out / p["dir"]).assign(part=pname))
    return pd.concat(frames, ignore_index=True), meta


def draw_figures(exp: Experiment, df, out: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Draw `exp`'s figures from `df` into out/figures (PNG + PDF)."""
    figs = exp.figures(df)
    paths = {}
    for name, fig in figs.items():
        interrupt.check()
        paths[name] = plots.save_figure(fig, out / FIGURES, name)
    return paths


def _section(exp: Experiment, df, figures: dict, grids: dict) -> Section:
    return Section(
        exp.name,
        exp.description,
        exp.doc,
        figures,
        df,
        grids=grids,
        metrics=tuple(getattr(exp.module, "REPORT_METRICS", ())),
        observe=getattr(exp.module, "observations", None),
        claims=getattr(exp.module, "claims", None),
    )


def _sections(exp: Experiment, df, figure_paths: dict, meta: dict) -> list[Section]:
    """The report's sections: the experiment's, or one per part of a composite."""
    if not exp.parts:
        return [_section(exp, df, figure_paths, meta.get("grids", {}))]
    out = []
    for n in exp.parts:
        sub_exp = sibling(exp.path, n)
        sub = split_parts(df, sub_exp.name)
        figs = {
            k[len(sub_exp.name) + 1 :]: v for k, v in figure_paths.items() if k.startswith(sub_exp.name + "_")
        }
        grids = {
            (k[len(sub_exp.name) + 1 :] or sub_exp.name): v
            for k, v in meta.get("grids", {}).items()
            if k == sub_exp.name or k.startswith(sub_exp.name + "/")
        }
        out.append(_section(sub_exp, sub, figs, grids))
    own = getattr(exp.module, "claims", None)
    if own is not None:  # the composite's own claims read the whole table (parts "<experiment>/<part>")
        out.insert(0, Section(exp.name, exp.description, "", {}, df, claims=own, body=False))
    return out


def _finish(exp: Experiment, df, rd: ResultsDir, meta: dict, redraw: bool) -> dict:
    """Draw the figures, write the report and experiment.json; the record written."""
    out = rd.path
    t0 = time.time()
    paths = draw_figures(exp, df, out)
    fig_time = time.time() - t0
    meta = dict(meta)
    meta["figures"] = {k: [str(p.relative_to(out)) for p in v] for k, v in paths.items()}
    wall = dict(meta.get("wall_time_s", {}))
    if redraw:
        wall["last_redraw_figures"] = round(fig_time, 2)
    else:
        wall["figures"] = round(fig_time, 2)
        wall["total"] = round(wall.get("sweep", 0.0) + fig_time, 2)
    meta["wall_time_s"] = wall
    write_report(out, exp, _sections(exp, df, paths, meta), meta)
    rd.write_experiment(meta)
    return meta


def _accept(
    exp: Experiment, parts, rd: ResultsDir, quick: bool, overrides: dict, overwrite: bool
) -> list[str]:
    """Everything that can refuse the run, read-only: the experiment recorded in the
    directory, and every part's directory (another grid, a missing sidecar). Returns
    the parts' states ('new', 'resume', 'complete')."""
    rd.check_experiment(exp.name, quick, overrides, overwrite)
    return [tuned_status(g, part_dir(rd.path, exp.name, pname, len(parts)), overwrite) for pname, g in parts]


def run_experiment(
    target: str | os.PathLike,
    quick: bool = False,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
) -> int:
    """Run an experiment end to end: sweep (resuming), figures, report. Returns 0.

    `overrides` (config fields, the CLI's field flags) are set on every grid's base
    (`apply_overrides`). Nothing is written before the run is accepted: the experiment
    recorded in `out` and every part's grid are checked first, under the directory's
    lock; a refused run leaves `out` as it was."""
    t_start = time.time()
    exp = load_experiment(target)
    overrides = dict(overrides or {})
    parts = apply_overrides(parts_of(exp, quick), overrides)
    rd = ResultsDir(out if out is not None else default_out(exp.name, quick))
    store.record_out(rd.path)
    _accept(exp, parts, rd, quick, overrides, overwrite)  # refuse before the lock creates anything
    with rd.lock():
        states = _accept(exp, parts, rd, quick, overrides, overwrite)
        rd.heal_experiment()  # an unreadable record refuses nothing: it is written again below
        meta = {
            "experiment": exp.name,
            "description": exp.description,
            "module": str(exp.path),
            "quick": quick,
            "overrides": overrides,
            "command": store.invoked_as,
            "invocation": store.recorded_invocation(rd.path),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
            "grids": {pname: g.describe() for pname, g in parts},
            "parts": {
                pname: {
                    "dir": str(part_dir(rd.path, exp.name, pname, len(parts)).relative_to(rd.path)) or "."
                }
                for pname, _ in parts
            },
            "status": "running",
        }
        if any(st != "complete" for st in states) or rd.experiment() is None:
            rd.write_experiment(meta)  # accepted: something will be computed
        return _run_accepted(exp, parts, rd, quick, overwrite, progress, meta, t_start)


def _run_accepted(exp, parts, rd: ResultsDir, quick, overwrite, progress, meta, t_start) -> int:
    df, info = sweep_parts(exp, quick, rd.path, overwrite=overwrite, progress=progress, grids=parts)
    sweep_time = time.time() - t_start
    meta["parts"] = info
    meta["wall_time_s"] = {"sweep": round(sweep_time, 2)}
    meta["versions"] = res_lib.package_versions()
    meta["python"] = sys.version.split()[0]
    meta["devices"] = res_lib.device_description()
    meta["git"] = res_lib.git_commit()
    meta["status"] = "complete"
    try:
        meta = _finish(exp, df, rd, meta, redraw=False)
    except KeyboardInterrupt as err:
        raise interrupt.with_message(
            err,
            f"interrupted while drawing the figures: the results are saved in {rd.path} "
            f"(`coco-jax plot {rd.path}` draws them)",
        ) from None
    total = meta["wall_time_s"]["total"]
    print(
        f"{exp.name}{' (quick)' if quick else ''}: {len(df)} rows, {len(meta['figures'])} figures, "
        f"{total:.1f} s -> {rd.path / REPORT}"
    )
    return 0


def plot_directory(directory: str | os.PathLike) -> dict:
    """Redraw figures and report of a finished experiment directory from its tables
    (also a directory that `coco-jax sweep` wrote, from an experiment module or a grid
    file). An unreadable table is a ConfigError naming the file and the repair."""
    out = pathlib.Path(directory)
    if not out.is_dir():
        raise ConfigError(f"{str(out)!r} is not a results directory (it does not exist or is a file)")
    rd = ResultsDir(out)
    with rd.lock():
        # an unreadable experiment.json raises here, naming the command that writes it again
        adopted = None if (out / EXPERIMENT).is_file() else adopt(rd)
        df, meta = load_tables(out, adopted)  # nothing is written before the tables have loaded
        if meta.get("module") is None:
            exp = grid_experiment(meta)
        else:
            try:
                exp = load_experiment(meta["module"])
            except ConfigError:
                exp = load_experiment(meta["experiment"])
        return _finish(exp, df, rd, meta, redraw=True)
