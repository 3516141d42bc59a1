"""The `coco-jax` command.

    coco-jax run --preset coco-ef --task logreg --num-devices 20 --straggler-prob 0.2 [--out DIR]
    coco-jax sweep experiments/methods.py --quick [--dry-run]
    coco-jax presets

`--plugins FILE.py` (repeatable) imports FILE before the configuration is built, so
the compressors, codes, ... it registers are valid names. Every ExperimentConfig field is a flag (`--num-devices`, `--compress-ratio`, ...);
tuples are comma lists (`--hidden-sizes 64,32`), `none` clears an optional field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from coco_jax.config import ConfigError, ExperimentConfig

_FIELDS = {f.name: f for f in dataclasses.fields(ExperimentConfig)}


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
        raise ConfigError(f"{name}={text!r} is invalid: expected {ann}") from None
    return text


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name VALUE` flag per ExperimentConfig field (default: unset)."""
    group = parser.add_argument_group("configuration fields (see ExperimentConfig)")
    for name, f in _FIELDS.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest="field_" + name,
            metavar=str(f.type).upper().replace(" ", "")[:12],
        )


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    from coco_jax.presets import preset

    overrides = {
        name: _parse_value(name, getattr(args, "field_" + name))
        for name in _FIELDS
        if getattr(args, "field_" + name, None) is not None
    }
    if getattr(args, "preset", None):
        return preset(args.preset, **overrides)
    return ExperimentConfig(**overrides)


def _format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_run(result, out: pathlib.Path) -> None:
    """history.csv (one row per evaluated step) and config.json in `out`."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    keys = list(result.history)
    table = np.column_stack([result.history[k].astype(np.float64) for k in keys])
    np.savetxt(out / "history.csv", table, delimiter=",", header=",".join(keys), comments="", fmt="%.10g")
    meta = {
        "config": result.config.to_dict(),
        "diverged_step": result.diverged_step,
        "bits_per_message": result.bits_per_message,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=list))


def cmd_run(args: argparse.Namespace) -> int:
    if args.experiment is not None:
        from coco_jax.experiment import run_experiment

        return run_experiment(args.experiment, quick=args.quick, out=args.out, overwrite=args.overwrite)
    from coco_jax.engine import run

    cfg = config_from_args(args)
    result = run(cfg)
    final = result.final()
    rows = [("steps", str(cfg.steps))]
    for key in ("loss", "accuracy", "test_accuracy", "grad_norm_sq", "bits", "time", "ef_error_norm"):
        if key in final:
            rows.append((key, f"{final[key]:.6g}"))
    rows.append(("diverged", "no" if result.diverged_step is None else f"at step {result.diverged_step}"))
    print(_format_table(rows))
    if args.out:
        write_run(result, pathlib.Path(args.out))
        print(f"wrote {args.out}/history.csv and {args.out}/config.json")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`coco-jax sweep TARGET [--quick] [--out DIR] [--dry-run] ...`."""
    import jax

    from coco_jax.distributed import init_distributed, use_cpu_devices
    from coco_jax.grid import load_grids
    from coco_jax.plan import plan_sweep
    from coco_jax.store import TABLE
    from coco_jax.sweep import sweep

    use_cpu_devices(args.cpu_devices)
    init_distributed(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)
    name, parts = load_grids(args.target, quick=args.quick)
    out = pathlib.Path(args.out or pathlib.Path("results", name + ("-quick" if args.quick else "")))
    for part, grid in parts:
        # a single grid sweeps into out itself, named parts into out/<part> (as `coco-jax run`)
        d = out if len(parts) == 1 and part == name else out / part
        if args.dry_run:
            plan = plan_sweep(grid, memory_budget=args.memory_budget, out=d)
            print(f"grid {part!r} -> {d}")
            print(plan.describe(plan.estimates(args.chunk_steps)))
            continue
        df = sweep(
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
                f"{st.wall_time_s:.1f} s -> {d / TABLE}"
            )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from coco_jax.presets import PRESETS

    print(_format_table([(name, f"{p.summary} [{p.reference}]") for name, p in PRESETS.items()]))
    return 0


def _add_plugins_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="FILE.py",
        help="import this Python file first (it registers compressors, codes, ...); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coco-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # --- run: one configuration, or an experiment module (issue: experiments) ---
    p_run = sub.add_parser(
        "run", help="run one configuration (flags) or an experiment module (experiments/<name>.py)"
    )
    p_run.add_argument("experiment", nargs="?", help="an experiment module path or name; omit for one run")
    p_run.add_argument("--preset", help="a method preset (see `coco-jax presets`)")
    p_run.add_argument(
        "--out", help="one run: write history.csv and config.json here; experiment: results dir"
    )
    p_run.add_argument("--quick", action="store_true", help="experiment: the small variant")
    p_run.add_argument("--overwrite", action="store_true", help="experiment: replace results of another grid")
    _add_plugins_flag(p_run)
    add_config_flags(p_run)
    p_run.set_defaults(func=cmd_run)

    p_pre = sub.add_parser("presets", help="list the method presets")
    _add_plugins_flag(p_pre)
    p_pre.set_defaults(func=cmd_presets)

    # --- sweep (coco_jax/sweep.py) ---
    p_sweep = sub.add_parser(
        "sweep", help="run a grid (experiment module or YAML/JSON file) as vmapped programs"
    )
    p_sweep.add_argument("target", help="experiments/<module>.py or a .yaml/.json grid file")
    _add_plugins_flag(p_sweep)
    p_sweep.add_argument(
        "--quick", action="store_true", help="the experiment's small variant (grid(quick=True))"
    )
    p_sweep.add_argument(
        "--out", help="results directory (default results/<name>; results/<name>-quick with --quick)"
    )
    p_sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="print groups, configurations, compilations, memory; compile nothing",
    )
    p_sweep.add_argument(
        "--memory-budget", help="bytes per device, e.g. 2GB or 512MiB (default: from the device)"
    )
    p_sweep.add_argument(
        "--chunk-steps", type=int, help="steps per progress update (a multiple of eval_every)"
    )
    p_sweep.add_argument("--overwrite", action="store_true", help="replace results of another grid in --out")
    p_sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_sweep.add_argument(
        "--cpu-devices",
        type=int,
        help="on CPU: split the cores into this many JAX devices (default: one device)",
    )
    p_dist = p_sweep.add_argument_group("several hosts (jax.distributed)")
    p_dist.add_argument(
        "--coordinator-address", help="host:port of process 0 (else $JAX_COORDINATOR_ADDRESS)"
    )
    p_dist.add_argument("--num-processes", type=int, help="number of processes (else $JAX_NUM_PROCESSES)")
    p_dist.add_argument("--process-id", type=int, help="this process's index (else $JAX_PROCESS_ID)")
    p_dist.add_argument(
        "--distributed", action="store_true", help="jax.distributed with cluster auto-detection"
    )
    p_sweep.set_defaults(func=cmd_sweep)

    # --- experiments: plot, list (coco_jax/experiment.py) ---
    p_plot = sub.add_parser("plot", help="redraw an experiment's figures from saved results")
    p_plot.add_argument("results_dir")
    _add_plugins_flag(p_plot)
    p_plot.set_defaults(func=lambda a: __import__("coco_jax.experiment", fromlist=["x"]).cli_plot(a))
    p_list = sub.add_parser("list", help="list the experiment modules")
    p_list.set_defaults(func=lambda a: __import__("coco_jax.experiment", fromlist=["x"]).cli_list(a))

    # --- bench (coco_jax/bench/) ---
    p_bench = sub.add_parser("bench", help="benchmark the engine against NumPy references and machine limits")
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
    p_bench.set_defaults(func=lambda a: __import__("coco_jax.bench", fromlist=["x"]).cli_bench(a))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from coco_jax.registry import load_plugin

        for path in getattr(args, "plugins", []):
            load_plugin(path)
        return args.func(args)
    except ConfigError as err:
        print(f"coco-jax: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
