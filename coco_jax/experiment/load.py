"""Experiment modules: find and load one, and the grids it declares.

`load_experiment` is the one loader of experiment modules (a path or a name looked up
in $COCO_JAX_EXPERIMENTS, ./experiments, then the project's experiments/); `parts_of`
normalises what its ``grid(quick)`` returns to named parts; `load_grids` also reads
YAML/JSON grid files (`coco-jax sweep`). A composite module (``paper``) composes the
grids and figures of other modules with `compose_grids` and `compose_figures`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from coco_jax import plots
from coco_jax.errors import ConfigError
from coco_jax.grid import Grid, load_grid_file
from coco_jax.registry import exec_module

__all__ = [
    "ENV_DIR",
    "Experiment",
    "compose_figures",
    "compose_grids",
    "default_out",
    "find_experiments",
    "helper_module",
    "load_experiment",
    "load_grids",
    "part_dir",
    "parts_of",
    "sibling",
    "split_parts",
]

ENV_DIR = "COCO_JAX_EXPERIMENTS"


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
            return plots.standard_figures(df)
        return fn(df)


# ================================================================== finding


def _search_dirs() -> list[pathlib.Path]:
    dirs = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.extend(pathlib.Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(pathlib.Path.cwd() / "experiments")
    dirs.append(pathlib.Path(__file__).resolve().parent.parent.parent / "experiments")
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


_LOADED: dict[pathlib.Path, Experiment] = {}  # resolved path -> the module loaded once per process


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
    module = exec_module(path, f"coco_jax_experiments.{path.stem}")
    if not callable(getattr(module, "grid", None)):
        raise ConfigError(f"{str(path)!r} defines no grid(quick: bool = False) -> Grid function")
    doc_line = (module.__doc__ or "").strip().split("\n")[0]
    exp = Experiment(
        str(getattr(module, "NAME", path.stem)), str(getattr(module, "DESCRIPTION", doc_line)), path, module
    )
    _LOADED[path] = exp
    return exp


_HELPERS: dict[pathlib.Path, Any] = {}  # resolved path -> a helper module loaded once per process


def helper_module(here: str | os.PathLike, name: str = "_settings"):
    """The helper module `name` beside the experiment module `here` (a file whose name
    starts with "_", such as experiments/_settings.py: shared settings, not an
    experiment), loaded once per process as ``coco_jax_experiments.<name>``.

    Example (in experiments/<study>.py):
        >>> S = helper_module(__file__)  # doctest: +SKIP
        >>> S.linreg(quick=True).num_devices  # doctest: +SKIP
        16
    """
    path = pathlib.Path(here).resolve().with_name(f"{name}.py")
    if path not in _HELPERS:
        _HELPERS[path] = exec_module(path, f"coco_jax_experiments.{name}")
    return _HELPERS[path]


# ==================================================================== grids


def parts_of(exp: Experiment, quick: bool) -> list[tuple[str, Any]]:
    """Normalise `exp.module.grid(quick)` to [(part name, Grid)]."""
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


def load_grids(target: str | os.PathLike, quick: bool = False) -> tuple[str, list[tuple[str, Grid]]]:
    """(name, [(part, grid)]) of an experiment module or a YAML/JSON grid file.

    An experiment module is loaded by `load_experiment`; a bare name looks for
    experiments/<name>.py. A grid file's name is its `name:` key, else its file stem."""
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


def default_out(name: str, quick: bool) -> pathlib.Path:
    """results/<name>, or results/<name>-quick for the quick variant (as `coco-jax sweep`)."""
    return pathlib.Path("results") / (name + ("-quick" if quick else ""))


def part_dir(out: pathlib.Path, exp_name: str, part: str, nparts: int) -> pathlib.Path:
    """A single grid sweeps into `out` itself (shared with `coco-jax sweep`), named
    grids into out/<part>."""
    if nparts == 1 and part == exp_name:
        return out
    return out / part


# =============================================================== composites


def sibling(here: str | os.PathLike, name: str) -> Experiment:
    """The experiment `name` beside the module `here` (else found by name)."""
    path = pathlib.Path(here).resolve().with_name(f"{name}.py")
    return load_experiment(path if path.is_file() else name)


def compose_grids(names: Sequence[str], quick: bool, here: str | os.PathLike) -> dict[str, Any]:
    """The grids of several experiments (modules beside `here`) as one dict:
    "<experiment>" for a single grid, "<experiment>/<part>" for each named grid."""
    out = {}
    for n in names:
        sub = sibling(here, n)
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
        sub_exp = sibling(here, n)
        sub = split_parts(df, sub_exp.name)
        if sub.empty:
            continue
        for k, fig in sub_exp.figures(sub).items():
            figs[f"{sub_exp.name}_{k}"] = fig
    return figs
