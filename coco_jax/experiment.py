"""Experiment modules: load one, run its sweep, draw its figures, write its report.

An experiment is a Python module (``experiments/<name>.py``) with

- a docstring stating the question, the expected result and the command;
- ``NAME`` (str) and ``DESCRIPTION`` (one line);
- ``grid(quick: bool = False)``: a `coco_jax.Grid`, or several (a list of named
  Grids, ``Grid(..., name="time")``, or a dict name -> Grid) when the study needs
  configurations no single grid expresses (say, Bernoulli and latency stragglers);
- ``figures(df) -> dict[str, Figure]``: figures from the results table. ``df`` is the
  tidy table of `coco_jax.sweep` plus a column ``part``: the grid's name (for a
  single grid, the experiment's name);
- optionally ``REPORT_METRICS``: history keys added to the report's final-metrics table
  (mean over the last half of the evaluated steps);
- optionally ``observations(df) -> list[str]``: sentences computed from the results
  table (the ``df`` of ``figures``), rendered in the report under "Observed (computed
  from these results)" (`coco_jax.report`); the docstring keeps the question and the
  expectation, never numbers typed by hand;
- optionally ``PARTS``: names of other experiments; such a module (``paper``) runs all
  of them and writes one report with a section per experiment.

``run_experiment`` (``coco-jax run experiments/<name>.py [--quick] [--out DIR]``) runs the
sweep (resuming if DIR holds part of it), draws the figures, writes the report. It
checks everything that can refuse the run first (the experiment recorded in DIR, every
part's grid against its sidecar, the directory lock), and writes experiment.json only
once the run is accepted, atomically. Config field flags (``--num-devices 100``) are
`overrides` of every grid's base, recorded in experiment.json and the report; a field a
grid varies (an axis, a zip, a preset on the preset axis) is refused.
``coco-jax plot DIR`` redraws figures and report from the saved tables only; a
directory written by ``coco-jax sweep`` (an experiment module or a YAML/JSON grid)
gets the module's figures, or the standard curves (`plots.standard_figures`).

Output layout (DIR defaults to ``results/<name>``, ``results/<name>-quick`` with
``--quick``, the same directory ``coco-jax sweep`` uses):

    DIR/report.md               the report (figures inline, final metrics, grid, versions)
    DIR/figures/<fig>.png|.pdf   the figures (paper: <experiment>_<fig>)
    DIR/experiment.json         what ran: module, quick, parts, wall times
    DIR/results.parquet, results.json          a single grid's sweep (coco_jax.results)
    DIR/<part>/results.parquet, results.json   or one directory per named grid
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from coco_jax.config import ConfigError, ExperimentConfig
from coco_jax.grid import load_grid_file

__all__ = [
    "Experiment",
    "cli_list",
    "cli_plot",
    "compose_figures",
    "compose_grids",
    "default_out",
    "draw_figures",
    "find_experiments",
    "load_experiment",
    "load_tables",
    "run_experiment",
    "standard_config",
]

ENV_DIR = "COCO_JAX_EXPERIMENTS"
META = "experiment.json"
FIGURES = "figures"
REPORT = "report.md"

# =========================================================== the shared problem


def standard_config(quick: bool = False, **overrides) -> ExperimentConfig:
    """A label-sorted synthetic logistic-regression problem (the shipped experiments
    used it before issue 12; they now run the COCO-EF paper's two settings from
    experiments/_settings.py). Kept for user experiments.

    Logistic regression (convex, so the optimality gap F(θ) − F* is exact) on synthetic
    data with label-sorted partitions: half of the partitions hold only one class, the
    rest only the other, the heterogeneity under which ignoring stragglers biases the
    gradient and gradient coding matters. Stragglers are Bernoulli(p = 0.2), the code is
    cyclic with s = 1, the compressor keeps k/d = 10% of the coordinates.

    quick: M = 16 devices, d = 100, 1024 training rows, 200 steps (a 2-core CPU).
    full: M = 100 devices (the COCO-EF paper's scale), d = 500, 10 000 rows, 1000 steps.
    """
    # the method is ExperimentConfig's default: COCO-EF (cyclic s = 1, Bernoulli p = 0.2,
    # top-k 10% with error feedback, fixed decoder, SGD)
    base: dict[str, Any] = {
        "task": "logreg",
        "dataset": "synthetic",
        "partitioning": "sorted",
        "noise": 0.05,
        "lr": 1.0,
    }
    if quick:
        base.update(num_devices=16, num_features=100, num_samples=1024, num_test=512, steps=200, eval_every=5)
    else:
        base.update(
            num_devices=100, num_features=500, num_samples=10000, num_test=2000, steps=1000, eval_every=10
        )
    base.update(overrides)
    return ExperimentConfig(**base)


def seeds(quick: bool) -> range:
    """Seeds per configuration: 3 quick, 5 full."""
    return range(3) if quick else range(5)


# ============================================================ loading modules


@dataclasses.dataclass
class Experiment:
    """A loaded experiment module."""

    name: str
    description: str
    path: pathlib.Path
    module: Any

    @property
    def doc(self) -> str:
        return (self.module.__doc__ or "").strip()

    @property
    def parts(self) -> tuple[str, ...]:
        """Names of the experiments a composite module (paper) runs; () otherwise."""
        return tuple(getattr(self.module, "PARTS", ()))

    def grids(self, quick: bool = False) -> list[tuple[str, Any]]:
        """[(part name, Grid)]: a single grid is the part named like the experiment."""
        return parts_of(self, quick)

    def figures(self, df) -> dict:
        """The module's `figures(df)`, or the standard curves when it defines none."""
        fn = getattr(self.module, "figures", None)
        if fn is None:
            from coco_jax import plots

            return plots.standard_figures(df)
        return fn(df)


def _search_dirs() -> list[pathlib.Path]:
    dirs = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.extend(pathlib.Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(pathlib.Path.cwd() / "experiments")
    dirs.append(pathlib.Path(__file__).resolve().parent.parent / "experiments")
    out = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def find_experiments() -> list[pathlib.Path]:
    """Experiment modules (experiments/*.py, not starting with "_") in the search path:
    $COCO_JAX_EXPERIMENTS, ./experiments, then the project's experiments/."""
    seen: dict[str, pathlib.Path] = {}
    for d in _search_dirs():
        for p in sorted(d.glob("*.py")):
            if not p.name.startswith("_") and p.stem not in seen:
                seen[p.stem] = p
    return list(seen.values())


_LOADED: dict[pathlib.Path, Experiment] = {}


def load_experiment(target: str | os.PathLike) -> Experiment:
    """Load an experiment module from a path (``experiments/methods.py``) or a name
    (``methods``, looked up in `find_experiments`' directories)."""
    path = pathlib.Path(target)
    if not path.is_file():
        name = path.stem if path.suffix == ".py" else str(target)
        hits = [d / f"{name}.py" for d in _search_dirs() if (d / f"{name}.py").is_file()]
        if not hits:
            known = ", ".join(p.stem for p in find_experiments()) or "none found"
            raise ConfigError(
                f"experiment {str(target)!r} not found: give a path to a module or one of: {known} "
                f"(searched {', '.join(str(d) for d in _search_dirs()) or './experiments'})"
            )
        path = hits[0]
    path = path.resolve()
    if path in _LOADED:
        return _LOADED[path]
    from coco_jax.registry import exec_module

    module = exec_module(path, f"coco_jax_experiments.{path.stem}")
    if not callable(getattr(module, "grid", None)):
        raise ConfigError(f"{str(path)!r} defines no grid(quick: bool = False) -> Grid function")
    doc_line = (module.__doc__ or "").strip().split("\n")[0]
    exp = Experiment(
        str(getattr(module, "NAME", path.stem)), str(getattr(module, "DESCRIPTION", doc_line)), path, module
    )
    _LOADED[path] = exp
    return exp


def parts_of(exp: Experiment, quick: bool) -> list[tuple[str, Any]]:
    """Normalise `exp.module.grid(quick)` to [(part name, Grid)]."""
    import inspect

    from coco_jax.grid import Grid

    fn = exp.module.grid
    accepts_quick = "quick" in inspect.signature(fn).parameters
    if quick and not accepts_quick:
        raise ConfigError(f"{str(exp.path)!r}: grid() takes no 'quick' argument")
    g = fn(quick=quick) if accepts_quick else fn()
    if isinstance(g, Grid):
        return [(exp.name, g)]
    if isinstance(g, dict):
        items = list(g.items())
    elif isinstance(g, (list, tuple)):
        items = [(x.name or f"part{i}", x) if isinstance(x, Grid) else tuple(x) for i, x in enumerate(g)]
    else:
        raise ConfigError(
            f"{exp.name}.grid() returned {type(g).__name__}: expected a Grid, a list or a dict of them"
        )
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ConfigError(f"{exp.name}.grid(): part names must be unique, got {names}")
    for n, x in items:
        if not isinstance(x, Grid):
            raise ConfigError(f"{exp.name}.grid(): part {n!r} is a {type(x).__name__}, not a Grid")
    return items


def load_grids(target: str | os.PathLike, quick: bool = False) -> tuple[str, list[tuple[str, Any]]]:
    """(name, [(part, grid)]) of an experiment module or a YAML/JSON grid file.

    An experiment module is loaded by `load_experiment` (the one module loader); a bare name looks for experiments/<name>.py. A grid file's name is
    its `name:` key, else its file stem."""
    path = pathlib.Path(target)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ConfigError(
                f"{str(target)!r} does not exist: give experiments/<name>.py or a .yaml/.json grid file"
            )
        g = load_grid_file(path, quick)
        return g.name or path.stem, [(g.name or path.stem, g)]
    if path.suffix not in ("", ".py"):
        raise ConfigError(
            f"{str(path)!r}: expected an experiment module (.py) or a grid file (.yaml, .yml, .json)"
        )
    exp = load_experiment(target)
    return exp.name, exp.grids(quick)


# ================================================================ composites


def _sibling(here: str | os.PathLike, name: str) -> Experiment:
    path = pathlib.Path(here).resolve().with_name(f"{name}.py")
    return load_experiment(path if path.is_file() else name)


def compose_grids(names: Sequence[str], quick: bool, here: str | os.PathLike) -> dict[str, Any]:
    """The grids of several experiments (modules beside `here`) as one dict:
    "<experiment>" for a single grid, "<experiment>/<part>" for each named grid."""
    out = {}
    for n in names:
        sub = _sibling(here, n)
        parts = parts_of(sub, quick)
        single = len(parts) == 1 and parts[0][0] == sub.name
        for pname, g in parts:
            out[sub.name if single else f"{sub.name}/{pname}"] = g
    return out


def split_parts(df, name: str):
    """Rows of experiment `name` in a composite table, with `part` as that experiment sees it."""
    mask = (df["part"] == name) | df["part"].str.startswith(name + "/")
    sub = df[mask].copy()
    sub["part"] = sub["part"].map(lambda p: name if p == name else p[len(name) + 1 :])
    return sub


def compose_figures(names: Sequence[str], df, here: str | os.PathLike) -> dict:
    """Every figure of several experiments, named "<experiment>_<figure>"."""
    figs = {}
    for n in names:
        sub_exp = _sibling(here, n)
        sub = split_parts(df, sub_exp.name)
        if sub.empty:
            continue
        for k, fig in sub_exp.figures(sub).items():
            figs[f"{sub_exp.name}_{k}"] = fig
    return figs


# ================================================================== running


def default_out(name: str, quick: bool) -> pathlib.Path:
    """results/<name>, or results/<name>-quick for the quick variant (as `coco-jax sweep`)."""
    return pathlib.Path("results") / (name + ("-quick" if quick else ""))


def _part_dir(out: pathlib.Path, exp_name: str, part: str, nparts: int) -> pathlib.Path:
    """A single grid sweeps into `out` itself (shared with `coco-jax sweep`), named
    grids into out/<part>."""
    if nparts == 1 and part == exp_name:
        return out
    return out / part


def _describe_run(name, quick, overrides) -> str:
    text = f"{name!r} ({'quick' if quick else 'full'}"
    if overrides:
        text += ", overrides " + ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return text + ")"


def _check_meta(out: pathlib.Path, exp: Experiment, quick: bool, overrides: dict, overwrite: bool) -> None:
    """Refuse `out` when it holds another experiment (or variant, or overrides)."""
    if overwrite:
        return
    meta = _read_meta(out)
    if meta is None:
        return
    theirs = meta.get("overrides") or {}
    if meta.get("experiment") != exp.name or bool(meta.get("quick")) != quick or theirs != overrides:
        raise ConfigError(
            f"out={str(out)!r} holds results of experiment "
            f"{_describe_run(meta.get('experiment'), meta.get('quick'), theirs)}, not "
            f"{_describe_run(exp.name, quick, overrides)}: choose another --out or pass --overwrite"
        )


def _read_meta(out: pathlib.Path) -> dict | None:
    p = out / META
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as err:
        raise ConfigError(
            f"{p} is unreadable ({err}): run the experiment again with --overwrite to rebuild it"
        ) from None


def apply_overrides(parts: list[tuple[str, Any]], overrides: dict | None) -> list[tuple[str, Any]]:
    """The grids with `overrides` (config fields) set on every grid's base. A field
    that a grid varies (on an axis, in a zip, or through a preset on its preset axis)
    is refused: the override would silently not apply to some configurations."""
    from collections.abc import Mapping

    from coco_jax.grid import Grid

    if not overrides:
        return parts
    flags = {k: "--" + k.replace("_", "-") for k in overrides}
    out = []
    for pname, g in parts:
        varied = set(g.axes) | {k for block in g.zip_blocks for k in block}
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
            ng = Grid(
                base=new_base,
                axes=g.axes,
                zip_axes=g.zip_blocks or None,
                exclude=g.exclude,
                name=g.name,
            )
        except ConfigError as err:
            raise ConfigError(f"overriding grid {pname!r} ({', '.join(flags.values())}): {err}") from None
        for method, cfg in ng.configs():
            for k, v in overrides.items():
                if getattr(cfg, k) != v:
                    raise ConfigError(
                        f"{flags[k]} cannot apply to grid {pname!r}: its method {method!r} sets "
                        f"{k}={getattr(cfg, k)!r} itself; remove the flag, or edit the experiment's grid"
                    )
        out.append((pname, ng))
    return out


def _write_meta(out: pathlib.Path, meta: dict) -> None:
    from coco_jax.fileio import write_json

    write_json(out / META, meta)


def sweep_parts(
    exp: Experiment,
    quick: bool,
    out: pathlib.Path,
    overwrite: bool = False,
    progress: bool = True,
    grids=None,
):
    """Run (or resume) every grid of `exp` into `out`; returns (table with `part`, info)."""
    import pandas as pd

    from coco_jax.sweep import sweep

    parts = grids if grids is not None else parts_of(exp, quick)
    frames = []
    info = {}
    for pname, g in parts:
        d = _part_dir(out, exp.name, pname, len(parts))
        t0 = time.time()
        if progress:
            print(f"[{exp.name}] sweep {pname}: {len(g)} configurations -> {d}", file=sys.stderr, flush=True)
        df = sweep(g, out=d, overwrite=overwrite, progress=progress)
        info[pname] = {
            "dir": str(d.relative_to(out)) if d != out else ".",
            "configs": len(g),
            "wall_time_s": round(time.time() - t0, 2),
            "compile_s": round(df.stats.compile_s, 2),
            "run_s": round(df.stats.run_s, 2),
            "compilations": df.stats.compilations,
            "resumed": df.stats.resumed,
        }
        frames.append(df.assign(part=pname))
    return pd.concat(frames, ignore_index=True), info


def load_tables(out: str | os.PathLike, meta: dict | None = None):
    """The table of a finished experiment directory (with `part`), from experiment.json
    (or the given `meta`)."""
    import pandas as pd

    from coco_jax.results import load_results

    out = pathlib.Path(out)
    meta = meta if meta is not None else _read_meta(out)
    if meta is None:
        raise ConfigError(
            f"{str(out)!r} holds no {META}: it is not the output of `coco-jax run experiments/<name>.py`"
        )
    frames = []
    for pname, p in meta["parts"].items():
        frames.append(load_results(out / p["dir"]).assign(part=pname))
    return pd.concat(frames, ignore_index=True), meta


def draw_figures(exp: Experiment, df, out: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Draw `exp`'s figures from `df` into out/figures (PNG + PDF)."""
    from coco_jax import plots

    figs = exp.figures(df)
    paths = {}
    for name, fig in figs.items():
        paths[name] = plots.save_figure(fig, out / FIGURES, name)
    return paths


def _sections(exp: Experiment, df, figure_paths: dict, meta: dict) -> list:
    from coco_jax.report import Section

    if not exp.parts:
        return [
            Section(
                exp.name,
                exp.description,
                exp.doc,
                figure_paths,
                df,
                grids=meta.get("grids", {}),
                metrics=tuple(getattr(exp.module, "REPORT_METRICS", ())),
                observe=getattr(exp.module, "observations", None),
            )
        ]
    out = []
    for n in exp.parts:
        sub_exp = _sibling(exp.path, n)
        sub = split_parts(df, sub_exp.name)
        figs = {
            k[len(sub_exp.name) + 1 :]: v for k, v in figure_paths.items() if k.startswith(sub_exp.name + "_")
        }
        grids = {
            (k[len(sub_exp.name) + 1 :] or sub_exp.name): v
            for k, v in meta.get("grids", {}).items()
            if k == sub_exp.name or k.startswith(sub_exp.name + "/")
        }
        out.append(
            Section(
                sub_exp.name,
                sub_exp.description,
                sub_exp.doc,
                figs,
                sub,
                grids=grids,
                metrics=tuple(getattr(sub_exp.module, "REPORT_METRICS", ())),
                observe=getattr(sub_exp.module, "observations", None),
            )
        )
    return out


def _grids_meta(parts) -> dict:
    return {pname: g.describe() for pname, g in parts}


def _finish(exp: Experiment, df, out: pathlib.Path, meta: dict, redraw: bool) -> dict:
    from coco_jax.report import write_report

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
    _write_meta(out, meta)
    return meta


def _accept(
    exp: Experiment, parts, out: pathlib.Path, quick: bool, overrides: dict, overwrite: bool
) -> list[str]:
    """Everything that can refuse the run, read-only: the experiment recorded in `out`,
    and every part's directory (another grid, a missing sidecar). Returns the parts'
    states ('new', 'resume', 'complete')."""
    from coco_jax.sweep import out_status

    _check_meta(out, exp, quick, overrides, overwrite)
    return [out_status(g, _part_dir(out, exp.name, pname, len(parts)), overwrite) for pname, g in parts]


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
    from coco_jax import store

    t_start = time.time()
    exp = load_experiment(target)
    overrides = dict(overrides or {})
    parts = apply_overrides(parts_of(exp, quick), overrides)
    out = store.check_directory(out if out is not None else default_out(exp.name, quick))
    _accept(exp, parts, out, quick, overrides, overwrite)  # refuse before the lock creates anything
    with store.lock(out):
        states = _accept(exp, parts, out, quick, overrides, overwrite)
        meta = {
            "experiment": exp.name,
            "description": exp.description,
            "module": str(exp.path),
            "quick": quick,
            "overrides": overrides,
            "command": store.invoked_as,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
            "grids": _grids_meta(parts),
            "parts": {
                pname: {"dir": str(_part_dir(out, exp.name, pname, len(parts)).relative_to(out)) or "."}
                for pname, _ in parts
            },
            "status": "running",
        }
        if any(st != "complete" for st in states) or _read_meta(out) is None:
            _write_meta(out, meta)  # accepted: something will be computed
        return _run_accepted(exp, parts, out, quick, overwrite, progress, meta, t_start)


def _run_accepted(exp, parts, out, quick, overwrite, progress, meta, t_start) -> int:
    from coco_jax import results as res_lib

    df, info = sweep_parts(exp, quick, out, overwrite=overwrite, progress=progress, grids=parts)
    sweep_time = time.time() - t_start
    meta["parts"] = info
    meta["wall_time_s"] = {"sweep": round(sweep_time, 2)}
    meta["versions"] = res_lib.package_versions()
    meta["python"] = sys.version.split()[0]
    meta["devices"] = res_lib.device_description()
    meta["git"] = res_lib.git_commit()
    meta["status"] = "complete"
    meta = _finish(exp, df, out, meta, redraw=False)
    total = meta["wall_time_s"]["total"]
    print(
        f"{exp.name}{' (quick)' if quick else ''}: {len(df)} rows, {len(meta['figures'])} figures, "
        f"{total:.1f} s -> {out / REPORT}"
    )
    return 0


def _adopt_sweep_directory(out: pathlib.Path) -> dict:
    """The experiment.json for a directory that `coco-jax sweep` filled (the tables,
    no figures yet), so that `plot` can draw it (written once the figures are drawn):
    with the experiment module whose grids
    it holds (found by the grid's name in the sidecar or by the directory's name,
    <name>[-quick]), or else as a plain grid (a YAML/JSON file, `cj.sweep`) drawn with
    the standard curves."""
    from coco_jax.fileio import read_json
    from coco_jax.store import SIDECAR, TABLE, part_files

    try:
        root = read_json(out / SIDECAR)
    except ValueError:
        root = None
    if root is None and ((out / TABLE).exists() or part_files(out)):
        raise ConfigError(
            f"{str(out)!r} holds results but {out / SIDECAR} is missing (was it deleted?), so they cannot be "
            "matched to a grid: restore it, or run the sweep again with --overwrite to recompute them"
        )
    try:
        meta = _adopt_module(out, root or {})
    except ConfigError:
        if root is None:
            raise
        meta = _adopt_grid(out, root)
    return meta


def _adopt_module(out: pathlib.Path, root: dict) -> dict:
    from coco_jax.fileio import read_json
    from coco_jax.store import SIDECAR
    from coco_jax.sweep import out_status

    quick = out.name.endswith("-quick")
    candidates = [c for c in ((root.get("grid") or {}).get("name"), out.name.removesuffix("-quick")) if c]
    exp = None
    for name in candidates:
        try:
            exp = load_experiment(name)
            break
        except ConfigError:
            continue
    if exp is None:
        raise ConfigError(
            f"{str(out)!r} holds no {META}, and no experiment module named "
            f"{' or '.join(repr(c) for c in candidates) or '?'} was found: run it with `coco-jax run`"
        )
    try:
        parts = dict(parts_of(exp, quick))
    except ConfigError:  # its grid names components of plugins not loaded here: read the layout on disk
        names = (
            [exp.name]
            if (out / SIDECAR).is_file()
            else sorted(d.name for d in out.iterdir() if (d / SIDECAR).is_file())
        )
        parts = dict.fromkeys(names)
    meta_parts, grids, sidecars = {}, {}, []
    for pname, g in parts.items():
        d = _part_dir(out, exp.name, pname, len(parts))
        side = read_json(d / SIDECAR)
        if side is None:
            raise ConfigError(f"{str(d)!r} holds no {SIDECAR}: the sweep of part {pname!r} is missing")
        # the module's grid, finished (raises for another grid); without the plugins: the sidecar's word
        finished = out_status(g, d) == "complete" if g is not None else side.get("status") == "complete"
        if not finished:
            raise ConfigError(f"{str(d)!r}: the sweep of part {pname!r} has not finished: run it again")
        sidecars.append(side)
        rel = str(d.relative_to(out)) if d != out else "."
        meta_parts[pname] = {"dir": rel, "configs": side.get("num_configs"), "compilations": 0}
        grids[pname] = side.get("grid", {})
    first = sidecars[0]
    started = [inv.get("started") for s in sidecars for inv in s.get("invocations", []) if inv.get("started")]
    return {
        "experiment": exp.name,
        "description": exp.description,
        "module": str(exp.path),
        "quick": quick,
        "command": first.get("command")
        or f"coco-jax sweep experiments/{exp.name}.py{' --quick' if quick else ''}",
        "started": min(started) if started else "?",
        "grids": grids,
        "parts": meta_parts,
        "wall_time_s": {"sweep": round(sum(s.get("total_wall_time_s") or 0.0 for s in sidecars), 2)},
        "versions": first.get("versions"),
        "python": first.get("python"),
        "devices": first.get("devices"),
        "git": first.get("git"),
        "status": "complete",
    }


def _adopt_grid(out: pathlib.Path, side: dict) -> dict:
    """experiment.json for a finished sweep of a plain grid (no experiment module)."""
    from coco_jax.store import TABLE

    if side.get("status") != "complete" or not (out / TABLE).exists():
        raise ConfigError(
            f"the sweep in {str(out)!r} has not finished (status {side.get('status')!r}): run the same sweep "
            "again to finish it, then plot"
        )
    grid = side.get("grid") or {}
    name = grid.get("name") or out.name
    started = [inv.get("started") for inv in side.get("invocations", []) if inv.get("started")]
    return {
        "experiment": name,
        "description": f"sweep of the grid {name!r} ({side.get('num_configs')} configurations)",
        "module": None,
        "quick": out.name.endswith("-quick"),
        "command": side.get("command") or f"cj.sweep(grid, out={str(out)!r})",
        "started": min(started) if started else "?",
        "grids": {name: grid},
        "parts": {name: {"dir": ".", "configs": side.get("num_configs"), "compilations": 0}},
        "wall_time_s": {"sweep": round(side.get("total_wall_time_s") or 0.0, 2)},
        "versions": side.get("versions"),
        "python": side.get("python"),
        "devices": side.get("devices"),
        "git": side.get("git"),
        "status": "complete",
    }


def _grid_experiment(meta: dict) -> Experiment:
    """A stand-in experiment for a directory without a module: the standard figures."""
    import types

    name = str(meta.get("experiment") or "sweep")
    module = types.ModuleType(f"coco_jax_grid_{name}")
    module.__doc__ = (
        f"The sweep of the grid {name!r}, drawn with the standard curves (loss against steps and uploaded "
        "bits, test accuracy where there is a test split); no experiment module defines its figures."
    )
    return Experiment(
        name, str(meta.get("description") or module.__doc__), pathlib.Path(f"{name}.yaml"), module
    )


def plot_directory(directory: str | os.PathLike) -> dict:
    """Redraw figures and report of a finished experiment directory from its tables
    (also a directory that `coco-jax sweep` wrote, from an experiment module or a grid
    file). An unreadable table is a ConfigError naming the file and the repair."""
    out = pathlib.Path(directory)
    if not out.is_dir():
        raise ConfigError(f"{str(out)!r} is not a results directory (it does not exist or is a file)")
    adopted = None if (out / META).is_file() else _adopt_sweep_directory(out)
    df, meta = load_tables(out, adopted)  # nothing is written before the tables have loaded
    if meta.get("module") is None:
        exp = _grid_experiment(meta)
    else:
        try:
            exp = load_experiment(meta["module"])
        except ConfigError:
            exp = load_experiment(meta["experiment"])
    return _finish(exp, df, out, meta, redraw=True)


def cli_plot(args) -> int:
    """`coco-jax plot DIR`: redraw the figures (and report) from saved results."""
    meta = plot_directory(args.results_dir)
    out = pathlib.Path(args.results_dir)
    print(f"redrew {len(meta['figures'])} figures in {out / FIGURES} and {out / REPORT}")
    return 0


def cli_list(args) -> int:
    """`coco-jax list`: one line per experiment module."""
    rows = []
    for path in find_experiments():
        try:
            exp = load_experiment(path)
            rows.append((exp.name, exp.description))
        except Exception as err:  # noqa: BLE001 - list the others
            rows.append((path.stem, f"(cannot load: {err})"))
    if not rows:
        print("no experiment modules found (looked in ./experiments and the project's experiments/)")
        return 1
    width = max(len(n) for n, _ in rows)
    for n, d in rows:
        print(f"{n:<{width}}  {d}")
    return 0
