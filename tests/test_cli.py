"""The `coco-jax` command as a demanding user meets it (issue 13), in real subprocesses:
readable, grouped --help built from the fields' declarations; no abbreviated flags;
refused bad numbers; experiment runs that apply (and record) config flags or refuse
them; a single run that never loses or clobbers results; one-line errors (exit 2 for
bad input, 1 for the file system) with a traceback only under --debug.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from coco_jax.config import FIELDS, GROUPS, allowed_values

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_helper as ch

TINY_RUN = (
    "--task",
    "linreg",
    "--num-devices",
    "4",
    "--num-samples",
    "64",
    "--num-features",
    "8",
    "--steps",
    "4",
)


# ------------------------------------------------------------------ 8. --help


def test_run_help_groups_every_field_with_its_doc_default_and_allowed_values(tmp_path):
    proc = ch.cli("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    flat = " ".join(text.split())
    headers = [
        ln.rstrip(":") for ln in text.splitlines() if ln and not ln.startswith(" ") and ln.endswith(":")
    ]
    assert [h for h in headers if h in (*GROUPS, "output")] == [*GROUPS, "output"]  # in this order
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        m = re.search(rf"^  {re.escape(flag)} (\S+)", text, re.MULTILINE)
        assert m, f"{flag} missing"
        assert m.group(1) in ("INT", "FLOAT", "NAME", "BOOL", "N,N,...", "X,X,...", "TEXT", "DIR"), m.group(1)
        assert " ".join(f.metadata["doc"].split()) in flat, name
        default = f.default
        shown = "none" if default is None else (
            str(default).lower() if isinstance(default, bool) else
            ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        )  # fmt: skip
        assert f"(default: {shown}" in flat, name
        allowed = allowed_values(name)
        if allowed:
            assert "one of: " + ", ".join(allowed) in flat, name
    assert "TUPLE" not in text and "[INT,.." not in text
    # the field flags sit under their group heading
    group_of = {}
    current = None
    for ln in text.splitlines():
        if ln and not ln.startswith(" ") and ln.endswith(":"):
            current = ln.rstrip(":")
        m = re.match(r"^  --([a-z0-9-]+)", ln)
        if m:
            group_of[m.group(1).replace("-", "_")] = current
    for name, f in FIELDS.items():
        assert group_of[name] == f.metadata["group"], name
    assert group_of["out"] == "output" and group_of["overwrite"] == "output"


# ---------------------------------------------------- 6. abbreviations, bad numbers


def test_abbreviations_and_bad_numbers_are_refused(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text(ch.TINY_YAML)
    abbrev, budget = ch.cli_many(
        [
            ("run", *TINY_RUN, "--num-device", "2"),
            ("sweep", "grid.yaml", "--memory-budget", "1000", "--out", "o"),
        ],
        cwd=tmp_path,
    )
    assert abbrev.returncode == 2 and "Traceback" not in abbrev.stderr and abbrev.stdout == "", abbrev.stderr
    assert abbrev.stderr.strip().splitlines()[-1].endswith("error: unrecognized arguments: --num-device")
    line = ch.one_line_error(budget)
    assert "memory_budget='1000' is invalid" in line and "less than one configuration needs" in line
    assert not (tmp_path / "o").exists()
    # the same parser in this process: abbreviations of every subcommand, positive counts
    from coco_jax.cli import main

    for argv, message in [
        (["sweep", "grid.yaml", "--chunk", "2"], "unrecognized arguments: --chunk"),
        (["sweep", "grid.yaml", "--no-prog"], "unrecognized arguments: --no-prog"),
        (["run", "--ste", "4"], "unrecognized arguments: --ste"),
        (["sweep", "grid.yaml", "--chunk-steps", "0"], "--chunk-steps: must be a positive integer, got 0"),
        (["sweep", "grid.yaml", "--chunk-steps", "-3"], "must be a positive integer, got -3"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv


# ------------------------------------------------------- 5, 6. grid files, modules


def test_grid_file_and_module_errors_are_one_line(tmp_path, capsys, monkeypatch):
    base = f"base: {ch.TINY_BASE}\n"
    (tmp_path / "list.yaml").write_text(base + "axes:\n  - lr: [0.1]\n")
    (tmp_path / "empty.yaml").write_text(base + "axes: {}\n")
    (tmp_path / "none.yaml").write_text(base)
    (tmp_path / "syntax.py").write_text(
        "import coco_jax as cj\n\ndef grid(quick=False):\n    return cj.Grid(\n"
    )
    (tmp_path / "imports.py").write_text("import coco_jax as cj\nimport no_such_module_here\n")
    procs = ch.cli_many(
        [
            ("sweep", "list.yaml"),
            ("run", "syntax.py"),
            ("sweep", "imports.py"),
            ("--debug", "sweep", "list.yaml"),
        ],
        cwd=tmp_path,
    )
    lines = [ch.one_line_error(p) for p in procs[:3]]
    assert "list.yaml: 'axes' must be a mapping of field -> list of values" in lines[0]
    assert "got list" in lines[0]
    assert f"{tmp_path / 'syntax.py'}:4: syntax error" in lines[1]
    assert f"{tmp_path / 'imports.py'}:2: importing the module failed: ModuleNotFoundError" in lines[2]
    debug = procs[3]
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    # an empty or missing axes: refused, not the base configuration alone
    from coco_jax.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("empty.yaml", "none.yaml"):
        assert main(["sweep", name, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no axes: it would run its base configuration alone" in err[0]
    assert not (tmp_path / "results").exists()


# ----------------------------------------------- 6. YAML name:, plot any sweep


def test_yaml_name_sets_the_output_folder_and_plot_draws_the_sweep(tmp_path):
    (tmp_path / "grid.yaml").write_text(
        "name: lr_study\n" + ch.TINY_YAML.replace("lr: [", "preset: [coco-ef], lr: [")
    )
    proc = ch.cli("sweep", "grid.yaml", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "lr_study"
    assert (out / "results.parquet").exists() and not (tmp_path / "results" / "grid").exists()
    plot = ch.cli("plot", "results/lr_study", cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr[-3000:]
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"loss.png", "loss.pdf"}  # linreg: no accuracy curves
    report = (out / "report.md").read_text()
    assert "![loss](figures/loss.png)" in report and "coco-jax sweep grid.yaml --no-progress" in report
    assert "coco-ef" in report and "Final metrics" in report


# ---------------------------------------------------------- 2. experiment + flags


def test_experiment_applies_config_flags_to_every_grid_and_records_them(tmp_path):
    mod = textwrap.dedent(
        '''
        """Two grids. Question: q? Expected: e. Command: coco-jax run twogrids.py --quick"""
        import coco_jax as cj

        def grid(quick=False):
            base = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=64, num_test=16,
                                       num_features=8, steps=4, eval_every=2)
            return {"a": cj.Grid(base="coco-ef", axes={"seed": [0, 1]}),
                    "b": cj.Grid(base=base, axes={"seed": [0]})}
        '''
    )
    (tmp_path / "twogrids.py").write_text(mod)
    flags = ("--num-devices", "2", "--lr", "0.3", "--steps", "4", "--num-samples", "32", "--eval-every", "2")
    run = ch.cli("run", "twogrids.py", "--quick", "--out", "res", *flags, "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # --no-progress, as for sweep: no line per sweep, no progress bar
    assert "[twogrids] sweep" not in run.stderr and "cfg-step" not in run.stderr
    out = tmp_path / "res"
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["overrides"] == {"num_devices": 2, "num_samples": 32, "lr": 0.3, "steps": 4, "eval_every": 2}
    for part in ("a", "b"):
        df = pd.read_parquet(out / part / "results.parquet")
        assert set(df.num_devices) == {2} and set(df.lr) == {0.3} and set(df.steps) == {4}, part
    assert set(pd.read_parquet(out / "a" / "results.parquet").method) == {"coco-ef"}
    report = (out / "report.md").read_text()
    assert (
        "- Overrides of every grid's base: " in report
        and "`num_devices=2`" in report
        and "`lr=0.3`" in report
    )

    (tmp_path / "presets.py").write_text(
        mod.replace(
            '"a": cj.Grid(base="coco-ef", axes={"seed": [0, 1]})',
            '"a": cj.Grid(base=base, axes={"preset": ["gc"]})',
        )
    )
    varied, preset_sets, preset_flag, other_flags = ch.cli_many(
        [
            ("run", "twogrids.py", "--quick", "--out", "res2", "--seed", "3"),
            ("run", "presets.py", "--quick", "--out", "res2", "--compressor", "sign"),
            ("run", "twogrids.py", "--quick", "--out", "res2", "--preset", "gc"),
            ("run", "twogrids.py", "--quick", "--out", "res"),  # res holds the run with overrides
        ],
        cwd=tmp_path,
    )
    assert "--seed cannot apply to grid 'a': the grid varies seed itself" in ch.one_line_error(varied)
    line = ch.one_line_error(preset_sets)
    assert "--compressor cannot apply to grid 'a': its method 'gc' sets compressor='identity'" in line
    assert "--preset gc is for a single run" in ch.one_line_error(preset_flag)
    assert "overrides num_samples=32, num_devices=2" in ch.one_line_error(other_flags)
    assert not (tmp_path / "res2").exists()


# ------------------------------------------------------------ 4. single run --out


def test_single_run_refuses_an_existing_run_and_writes_atomically(tmp_path):
    first = ch.cli("run", *TINY_RUN, "--out", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    hist = (tmp_path / "r" / "history.csv").read_bytes()
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["config"]["steps"] == 4 and b"step" in hist.splitlines()[0] and len(hist.splitlines()) == 6
    # one after the other: run at once, either may meet the other's lock instead
    again = ch.cli("run", *TINY_RUN, "--out", "r", cwd=tmp_path)
    other = ch.cli("run", *TINY_RUN, "--lr", "0.3", "--out", "r", "--overwrite", cwd=tmp_path)
    line = ch.one_line_error(again)
    assert "already holds results (history.csv, config.json)" in line and "--overwrite" in line
    assert again.stdout == ""  # refused before computing
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["lr"] == 0.3
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".tmp-")]
    assert ch.one_line_error(ch.cli("run", "--quick", *TINY_RUN, cwd=tmp_path)).endswith(
        "--quick selects an experiment's small variant: give an experiment module to run"
    )


@contextlib.contextmanager
def _read_only_dir(tmp_path):
    """A read-only directory and the command prefix under which the child sees it so:
    permissions (0o555) for a normal user; root, whom permissions do not stop, gets a
    read-only bind mount in its own mount namespace (`unshare -rm`)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        try:
            yield ro, ()
        finally:
            os.chmod(ro, 0o755)
        return
    unshare = shutil.which("unshare")
    prefix = (unshare, "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(ro))
    if unshare is None or subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode:
        pytest.skip("running as root without `unshare -rm`: cannot make a directory read-only")
    yield ro, prefix


def test_read_only_and_full_disk_end_in_one_line_and_leave_no_partial_file(tmp_path):
    (tmp_path / "grid.yaml").write_text(ch.TINY_YAML)
    with _read_only_dir(tmp_path) as (ro, prefix):
        calls = [("run", *TINY_RUN, "--out", "ro/run"), ("sweep", "grid.yaml", "--out", "ro/sweep")]
        for args in calls:
            proc = ch.cli(*args, cwd=tmp_path, prefix=prefix)
            line = ch.one_line_error(proc, code=1)
            assert "Permission denied" in line or "Read-only file system" in line, line
            assert "choose" in line and proc.stdout == ""  # before anything was computed
        assert list(ro.iterdir()) == []

    def small_files(limit):  # run the command with a file size limit (RLIMIT_FSIZE)
        setlimit = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))"
        return (sys.executable, "-c", setlimit.format(limit) + "; os.execv(sys.argv[1], sys.argv[1:])")

    # a write that the file system refuses half-way (a file size limit: EFBIG, as ENOSPC)
    full_run = ch.cli("run", *TINY_RUN, "--out", "full", cwd=tmp_path, prefix=small_files(200))
    line = ch.one_line_error(full_run, code=1)
    assert "history.csv: File too large" in line, line
    assert [p.name for p in (tmp_path / "full").iterdir()] == []  # no partial file, no temporary, no lock
    full_sweep = ch.cli("sweep", "grid.yaml", "--out", "fs", "--no-progress", cwd=tmp_path,
                        prefix=small_files(6000))  # fmt: skip
    line = ch.one_line_error(full_sweep, code=1)
    assert "File too large" in line and "parts" in line, line
    assert sorted(p.name for p in (tmp_path / "fs").rglob("*") if p.is_file()) == ["results.json"]


# ------------------------------------------------------- 6. classes from the labels


def test_softmax_class_count_must_match_the_user_labels(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np
        import coco_jax as cj
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)); y = np.arange(64) % 5          # labels 0..4
        cfg = cj.ExperimentConfig(task="softmax", num_devices=4, steps=2, num_classes=3)
        try:
            cj.run(cfg, data=(x, y))
        except cj.ConfigError as err:
            print("refused:", err)
        res = cj.run(cfg.replace(num_classes=5), data=(x, y))
        print("ran:", res.config.num_classes, res.params.shape)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=ch.env(), capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "refused: num_classes=3 is invalid: the labels of data=(X, y) (and test_data) run 0..4" in proc.stdout
    )
    assert "set num_classes=5" in proc.stdout
    assert "ran: 5 (4, 5)" in proc.stdout
