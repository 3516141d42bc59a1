"""Adopting a directory that `coco-jax sweep` (or `cj.sweep`) filled, so that
`coco-jax plot` can draw it: the experiment.json it would have had.

A sweep of an experiment module is adopted with that module (found by the grid's name
in the sidecar, or by the directory's name, <name>[-quick]); a sweep of a plain grid (a
YAML/JSON file, `cj.sweep`) as a stand-in experiment drawn with the standard curves
(`plots.standard_figures`). `adopted_record` builds the record in both cases.
"""

from __future__ import annotations

import pathlib
import types

from coco_jax.errors import ConfigError
from coco_jax.experiment.load import Experiment, load_experiment, part_dir, parts_of
from coco_jax.store import EXPERIMENT, QUARANTINE, SIDECAR, ResultsDir, repair_how
from coco_jax.tuning import out_status

__all__ = ["adopt", "adopted_record", "grid_experiment"]


def adopted_record(
    name: str,
    description: str,
    module: str | None,
    quick: bool,
    command: str,
    parts: dict[str, tuple[str, dict]],
) -> dict:
    """The experiment.json of finished sweeps: `parts` maps each part to (its directory
    relative to the experiment's, its sweep sidecar). Command, versions, devices and git
    commit come from the first part's sidecar (`command` when it recorded none), the
    start from the earliest invocation, the sweep time from the sum over the parts."""
    sidecars = [side for _, side in parts.values()]
    first = sidecars[0]
    started = [inv.get("started") for s in sidecars for inv in s.get("invocations", []) if inv.get("started")]
    return {
        "experiment": name,
        "description": description,
        "module": module,
        "quick": quick,
        "command": first.get("command") or command,
        "started": min(started) if started else "?",
        "grids": {p: side.get("grid") or {} for p, (_, side) in parts.items()},
        "parts": {
            p: {"dir": rel, "configs": side.get("num_configs"), "compilations": 0}
            for p, (rel, side) in parts.items()
        },
        "wall_time_s": {"sweep": round(sum(s.get("total_wall_time_s") or 0.0 for s in sidecars), 2)},
        "versions": first.get("versions"),
        "python": first.get("python"),
        "devices": first.get("devices"),
        "git": first.get("git"),
        "status": "complete",
    }


def adopt(rd: ResultsDir) -> dict:
    """The experiment.json for a directory that `coco-jax sweep` filled (the tables,
    no figures yet), written once the figures are drawn: with the experiment module
    whose grids it holds, or else as a plain grid."""
    out = rd.path
    root = _sidecar_of(rd)
    if root is None and rd.has_results():
        raise ConfigError(
            f"{str(out)!r} holds results but {out / SIDECAR} is missing (was it deleted?), so they cannot be "
            "matched to a grid: restore it, or run the sweep again with --overwrite to recompute them"
        )
    try:
        return _adopt_module(out, root or {})
    except ConfigError:
        if root is None:
            raise
        return _adopt_grid(rd, root)


def _sidecar_of(rd: ResultsDir) -> dict | None:
    """A sweep directory's sidecar (None when absent); an unreadable one is a ConfigError
    naming the repair (the sweep run again recovers it from the saved rows)."""
    error = rd.sidecar_error()
    if error is not None:
        raise ConfigError(
            f"{rd.path / SIDECAR} is unreadable ({error}): run {repair_how(rd.path)} again; it moves the "
            f"file to {rd.path / QUARANTINE}/ and rebuilds it, keeping the saved results of its grid"
        )
    return rd.sidecar()


def _adopt_module(out: pathlib.Path, root: dict) -> dict:
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
            f"{str(out)!r} holds no {EXPERIMENT}, and no experiment module named "
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
    found = {}
    for pname, g in parts.items():
        d = part_dir(out, exp.name, pname, len(parts))
        side = _sidecar_of(ResultsDir(d))
        if side is None:
            raise ConfigError(f"{str(d)!r} holds no {SIDECAR}: the sweep of part {pname!r} is missing")
        # the module's grid, finished (raises for another grid); without the plugins: the sidecar's word
        finished = out_status(g, d) == "complete" if g is not None else side.get("status") == "complete"
        if not finished:
            raise ConfigError(
                f"{str(d)!r}: the sweep of part {pname!r} has not finished: run {repair_how(d)} again to finish "
                "it, then plot"
            )
        found[pname] = (str(d.relative_to(out)) if d != out else ".", side)
    command = f"coco-jax sweep experiments/{exp.name}.py{' --quick' if quick else ''}"
    return adopted_record(exp.name, exp.description, str(exp.path), quick, command, found)


def _adopt_grid(rd: ResultsDir, side: dict) -> dict:
    """experiment.json for a finished sweep of a plain grid (no experiment module)."""
    out = rd.path
    if not rd.is_complete():
        raise ConfigError(
            f"the sweep in {str(out)!r} has not finished (status {side.get('status')!r}): run "
            f"{repair_how(out)} again to finish it, then plot"
        )
    name = (side.get("grid") or {}).get("name") or out.name
    description = f"sweep of the grid {name!r} ({side.get('num_configs')} configurations)"
    command = f"cj.sweep(grid, out={str(out)!r})"
    return adopted_record(name, description, None, out.name.endswith("-quick"), command, {name: (".", side)})


def grid_experiment(meta: dict) -> Experiment:
    """A stand-in experiment for a directory without a module: the standard figures."""
    name = str(meta.get("experiment") or "sweep")
    module = types.ModuleType(f"coco_jax_grid_{name}")
    module.__doc__ = (
        f"The sweep of the grid {name!r}, drawn with the standard curves (loss against steps and uploaded "
        "bits, test accuracy where there is a test split); no experiment module defines its figures."
    )
    return Experiment(
        name, str(meta.get("description") or module.__doc__), pathlib.Path(f"{name}.yaml"), module
    )
