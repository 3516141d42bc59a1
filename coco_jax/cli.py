"""The `coco-jax` command.

    coco-jax run --preset coco-ef --task logreg --num-devices 20 --straggler-prob 0.2 [--out DIR]
    coco-jax run experiments/methods.py --quick [--num-devices 100 ...]
    coco-jax sweep experiments/methods.py --quick [--dry-run]
    coco-jax plot results/methods-quick
    coco-jax presets

`--plugins FILE.py` (repeatable) imports FILE before the configuration is built, so
the compressors, codes, ... it registers are valid names. Every ExperimentConfig field
is a flag of `coco-jax run` (`--num-devices`, `--compress-ratio`, ...), grouped and
documented from the field's own declaration (`config.FIELDS`); tuples are comma lists
(`--hidden-sizes 64,32`), `none` clears an optional field. With an experiment module,
the field flags override the base of every grid of the experiment (recorded in
experiment.json and the report); a field that a grid varies is refused.

Errors end in one line on stderr and a non-zero exit, without a traceback unless
`--debug` is given: 2 for bad input (a ConfigError, a bad flag), 1 for a file system
error (read-only, full disk), 130 for Ctrl-C and 143 for SIGTERM (honoured at the next
chunk of a run or batch of a sweep, within seconds; finished work is kept, the lock
released, and the same command resumes). Flags are never abbreviated.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import pathlib
import shlex
import sys
import threading

import jax
import numpy as np

from coco_jax import fileio, interrupt, store
from coco_jax.bench import cli_bench
from coco_jax.config import FIELDS, GROUPS, ConfigError, ExperimentConfig, allowed_values
from coco_jax.distributed import init_distributed, use_cpu_devices
from coco_jax.engine import run
from coco_jax.experiment import (
    FIGURES,
    REPORT,
    default_out,
    find_experiments,
    load_experiment,
    load_grids,
    part_dir,
    plot_directory,
    run_experiment,
)
from coco_jax.plan import plan_sweep, remember_widths
from coco_jax.presets import PRESETS, preset
from coco_jax.program import plan_estimates
from coco_jax.registry import load_plugin
from coco_jax.sweep import check_memory_budget
from coco_jax.tuning import describe_plan as describe_tuning
from coco_jax.tuning import tune

_FIELDS = FIELDS
OUTPUT_GROUP = "output"


def _parse_value(name: str, text: str):
    """Parse one flag's text by the field's annotation."""
    ann = str(_FIELDS[name].type)
    optional = "None" in ann
    if optional and text.lower() == "none":
        return None
    try:
        if ann.startswith("tuple[int"):
            return tuple(int(v) for v in text.split(",") if v.strip())
        if ann.startswith("tuple[float"):
            return tuple(float(v) for v in text.split(",") if v.strip())
        if ann.startswith("bool"):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError(text)
        if ann.startswith("int"):
            return int(text)
        if ann.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is invalid: expected {_kind_words(name)}") from None
    return text


def _kind_words(name: str) -> str:
    ann = str(_FIELDS[name].type)
    words = {
        "tuple[int": "a comma list of integers",
        "tuple[float": "a comma list of numbers",
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
    }
    for prefix, text in words.items():
        if ann.startswith(prefix):
            return text + (" or none" if "None" in ann else "")
    return "a name"


def _metavar(name: str) -> str:
    ann = str(_FIELDS[name].type)
    meta = _FIELDS[name].metadata
    if meta.get("choices") is not None or meta.get("registry") is not None:
        return "NAME"
    if ann.startswith("tuple[int"):
        return "N,N,..."
    if ann.startswith("tuple[float"):
        return "X,X,..."
    for prefix, var in (("bool", "BOOL"), ("int", "INT"), ("float", "FLOAT")):
        if ann.startswith(prefix):
            return var
    return "DIR" if name.endswith("_dir") else "TEXT"


def _default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def field_help(name: str) -> str:
    """A field's help line: its documentation, default and allowed values."""
    f = _FIELDS[name]
    extra = [f"default: {_default_text(f.default)}"]
    allowed = allowed_values(name)
    if allowed:
        extra.append("one of: " + ", ".join(allowed))
    elif str(f.type).startswith("bool"):
        extra.append("true or false")
    return f"{f.metadata['doc']} ({'; '.join(extra)})".replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name VALUE` flag per ExperimentConfig field (default: unset), in one
    argument group per `config.GROUPS` entry, with the field's documentation, default
    and allowed values as help."""
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for name, f in _FIELDS.items():
        groups[f.metadata["group"]].add_argument(
            "--" + name.replace("_", "-"), dest="field_" + name, metavar=_metavar(name), help=field_help(name)
        )


def field_overrides(args: argparse.Namespace) -> dict:
    """The config fields given as flags, parsed."""
    return {
        name: _parse_value(name, getattr(args, "field_" + name))
        for name in _FIELDS
        if getattr(args, "field_" + name, None) is not None
    }


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    overrides = field_overrides(args)
    if getattr(args, "preset", None):
        return preset(args.preset, **overrides)
    return ExperimentConfig(**overrides)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


RUN_FILES = ("history.csv", "config.json")
_RESULT_FILES = (*RUN_FILES, "results.json", "results.parquet", "experiment.json")


def check_run_directory(out: pathlib.Path, overwrite: bool) -> None:
    """Refuse a directory that already holds a run's (or a sweep's) results unless
    `overwrite`: a single run never silently replaces an earlier history."""
    found = [n for n in _RESULT_FILES if (out / n).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"out={str(out)!r} already holds results ({', '.join(found)}): choose another --out, "
            "or pass --overwrite to replace history.csv and config.json"
        )


def write_run(result, out: pathlib.Path) -> None:
    """history.csv (one row per evaluated step) and config.json in `out`, each written
    atomically (a temporary file renamed over the target)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(result.history)
    table = np.column_stack([result.history[k].astype(np.float64) for k in keys])
    buf = io.StringIO()
    np.savetxt(buf, table, delimiter=",", header=",".join(keys), comments="", fmt="%.10g")
    meta = {
        "config": result.config.to_dict(),
        "diverged_step": result.diverged_step,
        "bits_per_message": result.bits_per_message,
    }
    fileio.atomic_write_bytes(out / "history.csv", buf.getvalue().encode())
    fileio.write_json(out / "config.json", meta)


def cmd_run(args: argparse.Namespace) -> int:
    """`coco-jax run`: one configuration, or an experiment module."""
    if args.experiment is not None:
        if args.preset:
            raise ConfigError(
                f"--preset {args.preset} is for a single run: an experiment's grids choose their methods "
                "(field flags such as --num-devices override every grid's base)"
            )
        return run_experiment(
            args.experiment,
            quick=args.quick,
            out=args.out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            overrides=field_overrides(args),
        )
    if args.quick:
        raise ConfigError("--quick selects an experiment's small variant: give an experiment module to run")
    cfg = config_from_args(args)
    rd = store.ResultsDir(args.out) if args.out else None
    out = rd.path if rd is not None else None
    with rd.lock() if rd is not None else contextlib.nullcontext():
        if rd is not None:  # before computing: refuse an earlier run, fail now on a read-only place
            check_run_directory(rd.path, args.overwrite)
            rd.ensure_writable()
        try:
            result = run(cfg)
        except KeyboardInterrupt as err:
            raise interrupt.with_message(
                err, "interrupted: a single run keeps nothing; run it again"
            ) from None
        final = result.final()
        rows = [("steps", str(cfg.steps))]
        for key in ("loss", "accuracy", "test_accuracy", "grad_norm_sq", "bits", "time", "ef_error_norm"):
            if key in final:
                rows.append((key, f"{final[key]:.6g}"))
        rows.append(("diverged", "no" if result.diverged_step is None else f"at step {result.diverged_step}"))
        print(_format_table(rows))
        if out is not None:
            write_run(result, out)
            print(f"wrote {out}/history.csv and {out}/config.json")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`coco-jax sweep TARGET [--quick] [--out DIR] [--dry-run] ...`."""
    use_cpu_devices(args.cpu_devices)
    init_distributed(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)
    name, parts = load_grids(args.target, quick=args.quick)
    out = pathlib.Path(args.out) if args.out else default_out(name, args.quick)
    store.record_out(out)
    programs: set = set()  # distinct compiled programs over the parts (--dry-run)
    configs = 0
    for part, grid in parts:
        d = part_dir(out, name, part, len(parts))  # as `coco-jax run`: a single grid into out itself
        if args.dry_run and grid.tuning is not None:  # both stages: tuning runs, then the reported seeds
            print(f"grid {part!r} (tuned) -> {d}")
            print(
                describe_tuning(grid, out=d, memory_budget=args.memory_budget, chunk_steps=args.chunk_steps)
            )
            continue
        if args.dry_run:
            plan = plan_sweep(grid, memory_budget=args.memory_budget, out=d)
            check_memory_budget(args.memory_budget, plan.groups)
            print(f"grid {part!r} -> {d}")
            print(plan.describe(plan_estimates(plan, args.chunk_steps)))
            programs.update(g.program_key() for g in plan.groups)
            remember_widths(plan)  # as a run of the parts would (`plan.group_width`)
            configs += len(plan.entries)
            if len(parts) > 1 and part == parts[-1][0]:
                print(
                    f"programs: {len(programs)} distinct compiled programs for {configs} configurations in {len(parts)} parts"
                )
            continue
        df = tune(  # a grid without tuned fields is swept as by cj.sweep
            grid,
            out=d,
            memory_budget=args.memory_budget,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            chunk_steps=args.chunk_steps,
        )
        if jax.process_index() == 0:
            st = df.stats
            print(
                f"{part}: {st.num_configs} configurations, {len(df)} rows, {st.compilations} compilation(s) "
                f"({st.compile_s:.1f} s), {st.computed_configs} computed ({st.run_s:.1f} s), "
                f"{st.wall_time_s:.1f} s -> {d / store.TABLE}"
            )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    """`coco-jax presets`: one line per method preset."""
    print(_format_table([(name, f"{p.summary} [{p.reference}]") for name, p in PRESETS.items()]))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """`coco-jax plot DIR`: redraw the figures (and report) from saved results."""
    meta = plot_directory(args.results_dir)
    out = pathlib.Path(args.results_dir)
    print(f"redrew {len(meta['figures'])} figures in {out / FIGURES} and {out / REPORT}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
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


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="FILE.py",
        help="import this Python file first (it registers compressors, codes, ...); repeatable",
    )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )


def _subparser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The `coco-jax` parser: one subcommand each (run, presets, sweep, plot, list, bench)."""
    parser = argparse.ArgumentParser(prog="coco-jax", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    p_pre = _subparser(sub, "presets", help="list the method presets")
    _add_common_flags(p_pre)
    p_pre.set_defaults(func=cmd_presets)
    _add_sweep(sub)
    p_plot = _subparser(
        sub,
        "plot",
        help="redraw the figures and report of an experiment or sweep directory from saved results",
    )
    p_plot.add_argument("results_dir")
    _add_common_flags(p_plot)
    p_plot.set_defaults(func=cmd_plot)
    p_list = _subparser(sub, "list", help="list the experiment modules")
    p_list.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p_list.set_defaults(func=cmd_list)
    _add_bench(sub)
    return parser


def _add_run(sub) -> None:
    """`coco-jax run`: one configuration, or an experiment module."""
    p_run = _subparser(
        sub,
        "run",
        help="run one configuration (flags) or an experiment module (experiments/<name>.py)",
        usage=(
            "coco-jax run [EXPERIMENT] [--quick] [--preset NAME] [--FIELD VALUE ...] [--out DIR] [--overwrite] "
            "[--no-progress]"
        ),
        description=(
            "Run one configuration given by the field flags below (prints the final metrics; --out writes "
            "history.csv and config.json), or an experiment module: its sweep (resumable), figures and "
            "report. With an experiment, the field flags override the base of every grid of the experiment "
            "(recorded in experiment.json and report.md); a field a grid varies (an axis, a zip, a method preset) is refused."
        ),
    )
    p_run.add_argument(
        "experiment",
        nargs="?",
        help="an experiment module path or name (see `coco-jax list`); omit for one run",
    )
    p_run.add_argument(
        "--preset", metavar="NAME", help="single run: a method preset (see `coco-jax presets`)"
    )
    p_run.add_argument("--quick", action="store_true", help="experiment: the small variant")
    _add_common_flags(p_run)
    add_config_flags(p_run)
    p_out = p_run.add_argument_group(OUTPUT_GROUP)
    p_out.add_argument(
        "--out",
        metavar="DIR",
        help="single run: write history.csv and config.json here (refused if DIR holds results); "
        "experiment: its results directory (default results/<name>[-quick]; resumes)",
    )
    p_out.add_argument(
        "--overwrite",
        action="store_true",
        help="single run: replace the results in --out; experiment: replace results of another grid",
    )
    p_out.add_argument(
        "--no-progress",
        action="store_true",
        help="experiment: no progress bar and no line per sweep (a single run shows none anyway)",
    )
    p_run.set_defaults(func=cmd_run)


def _add_sweep(sub) -> None:
    """`coco-jax sweep`: a grid file or experiment module as vmapped programs."""
    p_sweep = _subparser(
        sub, "sweep", help="run a grid (experiment module or YAML/JSON file) as vmapped programs"
    )
    p_sweep.add_argument("target", help="experiments/<module>.py or a .yaml/.json grid file")
    _add_common_flags(p_sweep)
    p_sweep.add_argument(
        "--quick", action="store_true", help="the experiment's small variant (grid(quick=True))"
    )
    p_sweep.add_argument(
        "--out",
        metavar="DIR",
        help="results directory (default results/<name>; results/<name>-quick with --quick); resumes, "
        "one run at a time (a lock in DIR)",
    )
    p_sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="print groups, configurations, compilations, memory; compile nothing",
    )
    p_sweep.add_argument(
        "--memory-budget",
        metavar="BYTES",
        help="bytes per device, e.g. 2GB or 512MiB, at least one configuration (default: from the device)",
    )
    p_sweep.add_argument(
        "--chunk-steps",
        type=_positive_int,
        metavar="N",
        help="steps per call and progress update, a positive integer (default: calls of about 0.25 s, timed on a program's first call)",
    )
    p_sweep.add_argument("--overwrite", action="store_true", help="replace results of another grid in --out")
    p_sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_sweep.add_argument(
        "--cpu-devices",
        type=_positive_int,
        metavar="N",
        help="on CPU: split the cores into this many JAX devices (default: one device)",
    )
    _add_distributed(p_sweep)
    p_sweep.set_defaults(func=cmd_sweep)


def _add_distributed(p_sweep) -> None:
    """The flags of a multi-host sweep (jax.distributed)."""
    p_dist = p_sweep.add_argument_group("several hosts (jax.distributed)")
    p_dist.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help="host:port of process 0 (else $JAX_COORDINATOR_ADDRESS)",
    )
    p_dist.add_argument(
        "--num-processes",
        type=_positive_int,
        metavar="N",
        help="number of processes (else $JAX_NUM_PROCESSES)",
    )
    p_dist.add_argument(
        "--process-id", type=int, metavar="I", help="this process's index (else $JAX_PROCESS_ID)"
    )
    p_dist.add_argument(
        "--distributed", action="store_true", help="jax.distributed with cluster auto-detection"
    )


def _add_bench(sub) -> None:
    """`coco-jax bench`: the engine against NumPy references and machine limits."""
    p_bench = _subparser(
        sub, "bench", help="benchmark the engine against NumPy references and machine limits"
    )
    p_bench.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p_bench.add_argument("--quick", action="store_true", help="small sizes (about a minute on a 2-core CPU)")
    p_bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-suite size
    p_bench.add_argument("--json", metavar="FILE", help="write every figure and the machine description here")
    p_bench.add_argument("--tasks", help="comma list of linreg,logreg (default both)")
    p_bench.add_argument("--devices", help="comma list of M for the throughput grid (e.g. 16,64,256)")
    p_bench.add_argument("--dims", help="comma list of d for the throughput grid (e.g. 1000,10000,100000)")
    p_bench.add_argument("--rows", type=int, help="rows per partition before the X-size cap (default 32)")
    p_bench.add_argument("--reps", type=int, help="timing repetitions")
    p_bench.add_argument("--sections", help="comma list: throughput,redundancy,sweep,compile,roofline (all)")
    p_bench.add_argument(
        "--numpy-env",
        choices=("clean", "inherit"),
        help="clean (default): NumPy runs without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE; inherit: as set",
    )
    p_bench.add_argument("--numpy-budget", type=float, help="seconds a NumPy variant may run (else skipped)")
    p_bench.set_defaults(func=cli_bench)


def _preparse(argv: list[str]) -> argparse.Namespace:
    """--plugins and --debug wherever they are, before the real parser is built (plugins
    register names that the help lists)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugins", action="append", default=[])
    pre.add_argument("--debug", action="store_true")
    known, _ = pre.parse_known_args(argv)
    return known


_OS_HINTS = {
    errno.EROFS: "the file system is read-only: choose another output directory",
    errno.EACCES: "permission denied: choose an output directory you can write",
    errno.EPERM: "permission denied: choose an output directory you can write",
    errno.ENOSPC: "the disk is full: free space and run the same command again (finished work is kept)",
    errno.EDQUOT: "the disk quota is exhausted: free space and run the same command again (finished work is kept)",
    errno.EFBIG: "the file is too large for this file system or limit: free space or raise the limit and run again",
}


def os_error_message(err: OSError) -> str:
    """One line for a file system error: the file, what failed and what to do."""
    what = err.strerror or str(err)
    text = f"{err.filename}: {what}" if getattr(err, "filename", None) else what
    hint = _OS_HINTS.get(err.errno)
    return f"{text} ({hint})" if hint else text


def _say(text: str) -> None:
    print(f"coco-jax: {text}", file=sys.stderr, flush=True)


def interrupted_message(err: KeyboardInterrupt, command: str) -> str:
    """The one line for a run stopped by Ctrl-C or SIGTERM: what was kept and, for a
    sweep, the command that resumes it."""
    detail = str(err).strip() or "interrupted"
    if "resumes" in detail:  # a sweep: say what was kept and the command that resumes it
        detail = f"{detail.split(';')[0]}; run `{command}` again to resume"
    if not detail.startswith("interrupted"):
        detail = f"interrupted: {detail}"
    name = getattr(err, "signal_name", "SIGINT")
    if name != "SIGINT":
        detail = f"interrupted by {name}" + detail[len("interrupted") :]
    return detail


def main(argv: list[str] | None = None) -> int:
    """`coco-jax ARGV` (default: the process's arguments); returns the exit status. Ctrl-C
    and SIGTERM only set a flag while it runs (`coco_jax.interrupt`): the command stops at
    its next safe point (a run's chunk, a sweep's batch) and exits 130 or 143."""
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _preparse(argv)
    command = "coco-jax " + shlex.join(argv)
    previous, store.invoked_as = store.invoked_as, command
    recorded, store.invocation = store.invocation, {"argv": argv, "cwd": os.getcwd()}
    try:
        with interrupt.handling():
            for path in pre.plugins:
                load_plugin(path)
            args = build_parser().parse_args(argv)
            code = args.func(args)
            interrupt.check()  # a signal that arrived after the last safe point
            return code
    except ConfigError as err:
        if pre.debug:
            raise
        _say(f"error: {err}")
        return 2
    except KeyboardInterrupt as err:
        if pre.debug:
            raise
        _say(interrupted_message(err, command))
        code = getattr(err, "exit_code", 130)
        if own_process:
            _exit_now(code)
        return code
    except OSError as err:
        if pre.debug:
            raise
        _say(f"error: {os_error_message(err)}")
        return 1
    finally:
        store.invoked_as, store.invocation = previous, recorded


def _exit_now(code: int) -> None:
    """End the process now (after an interrupt, everything is saved and the lock released)
    rather than wait at exit for a background compilation that nobody will use."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
