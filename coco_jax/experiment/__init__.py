"""Experiment modules: load one, run its sweep, draw its figures, write its report.

The package's modules: `load` (finding and loading modules, their grids, composites,
grid files), `run` (running an experiment, redrawing one), `adopt` (a directory that
`coco-jax sweep` filled, adopted for `coco-jax plot`), `standard` (a shared problem for
user experiments). Their public names are importable from here.

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
- optionally ``claims(df) -> list[coco_jax.report.Claim]``: the claims of the paper and
  of the module's "Expected", each with a verdict computed from paired intervals
  (`report.claim_all`, `report.claim_threshold`, `report.claim_by_construction`),
  listed in the "Claims" table at the top of report.md;
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

from coco_jax.experiment.adopt import adopt, adopted_record
from coco_jax.experiment.load import (
    _LOADED,  # noqa: F401 - the loaded modules; tests forget them (tests/conftest.py)
    ENV_DIR,
    Experiment,
    compose_figures,
    compose_grids,
    default_out,
    find_experiments,
    helper_module,
    load_experiment,
    load_grids,
    part_dir,
    parts_of,
    split_parts,
)
from coco_jax.experiment.run import (
    FIGURES,
    REPORT,
    apply_overrides,
    draw_figures,
    load_tables,
    plot_directory,
    run_experiment,
    sweep_parts,
)
from coco_jax.experiment.standard import seeds, standard_config

__all__ = [
    "ENV_DIR",
    "FIGURES",
    "REPORT",
    "Experiment",
    "adopt",
    "adopted_record",
    "apply_overrides",
    "compose_figures",
    "compose_grids",
    "default_out",
    "draw_figures",
    "find_experiments",
    "helper_module",
    "load_experiment",
    "load_grids",
    "load_tables",
    "part_dir",
    "parts_of",
    "plot_directory",
    "run_experiment",
    "seeds",
    "split_parts",
    "standard_config",
    "sweep_parts",
]
