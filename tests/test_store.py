"""Results on disk that can be trusted (issue 13), with real `coco-jax` subprocesses and
real files: a refused run changes nothing, unreadable files are quarantined and exactly
their configurations recomputed, a missing sidecar is named, one run at a time holds a
directory (a lock that a killed run does not leave behind), and Ctrl-C stops cleanly.

Sizes are tiny (linreg, M = 4, d = 8, 4 steps, one compiled program per sweep).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from conftest import assert_same_tables

import coco_jax as cj
from coco_jax import fileio, store
from coco_jax.config import ConfigError

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_helper as ch


def _files(d: pathlib.Path) -> dict[str, bytes]:
    """Every file under `d` (but the lock file) with its bytes."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A directory that `coco-jax sweep grid.yaml --out done` finished (copied per test)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "grid.yaml").write_text(ch.TINY_YAML)
    proc = ch.cli("sweep", "grid.yaml", "--out", "done", "--no-progress", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _copy(finished: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copy(finished / "grid.yaml", tmp_path / "grid.yaml")
    shutil.copytree(finished / "done", tmp_path / "done")
    return tmp_path / "done"


# ------------------------------------------------------------ 1. refusal changes nothing


def test_refused_run_leaves_the_finished_directory_untouched(tmp_path):
    """Another grid or another experiment into a finished --out is refused (exit 2)
    before anything is written: experiment.json, the sidecar and the table keep their
    bytes, and `coco-jax plot` still describes the grid that ran."""
    mod = tmp_path / "tinyexp.py"
    mod.write_text(ch.TINY_MODULE.format(name="tinyexp", axes='{"seed": [0, 1]}'))
    first = ch.cli("run", "tinyexp.py", "--quick", "--out", "res", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _files(tmp_path / "res")
    assert json.loads(before["experiment.json"])["status"] == "complete"

    mod.write_text(ch.TINY_MODULE.format(name="tinyexp", axes='{"seed": [0, 1, 2]}'))  # a changed grid
    (tmp_path / "otherexp.py").write_text(ch.TINY_MODULE.format(name="otherexp", axes='{"seed": [0, 1]}'))
    changed, other = ch.cli_many(
        [("run", "tinyexp.py", "--quick", "--out", "res"), ("run", "otherexp.py", "--quick", "--out", "res")],
        cwd=tmp_path,
    )
    assert "another grid" in ch.one_line_error(changed)
    assert "holds results of experiment 'tinyexp'" in ch.one_line_error(other)
    assert _files(tmp_path / "res") == before  # not a byte changed

    mod.write_text(ch.TINY_MODULE.format(name="tinyexp", axes='{"seed": [0, 1]}'))
    plot = ch.cli("plot", "res", cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr[-3000:]
    meta = json.loads((tmp_path / "res" / "experiment.json").read_text())
    assert meta["status"] == "complete" and meta["versions"]["jax"] and meta["git"] is not None
    assert meta["grids"]["tinyexp"]["axes"] == {"seed": [0, 1]}
    assert "- 2 configurations" in (tmp_path / "res" / "report.md").read_text()


# ------------------------------------------- 7, 5, 3. lock, Ctrl-C, corrupt part


def test_lock_then_ctrl_c_then_corrupt_part_is_recomputed(tmp_path):
    """A slowed sweep holds --out: a second sweep into it is refused at once and names
    the first one's process. Ctrl-C stops the first cleanly (exit 130, one line saying
    what is saved and the command that resumes). A part file truncated afterwards is
    moved to quarantine/ by the rerun, which recomputes exactly its configurations."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(ch.TINY_YAML)
    (tmp_path / "slow.py").write_text(ch.SLOW_PLUGIN)
    budget = str(ch.one_config_budget_of_yaml(spec))  # batches of one configuration: 4 part files
    args = ("sweep", "grid.yaml", "--out", "out", "--memory-budget", budget, "--no-progress")
    first = ch.start(*args, "--plugins", "slow.py", cwd=tmp_path, extra_env={"SLOW": 60})
    try:
        deadline = time.time() + 120
        while not store.part_files(tmp_path / "out"):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "no part file appeared"
            time.sleep(0.05)
        t0 = time.time()
        second = ch.cli(*args, cwd=tmp_path)
        line = ch.one_line_error(second)
        assert f"is in use by process {first.pid}" in line and "coco-jax sweep grid.yaml" in line
        assert time.time() - t0 < 60  # refused at once, not after computing
        assert len(store.part_files(tmp_path / "out")) == 1  # the second one wrote nothing

        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    proc = subprocess.CompletedProcess(args, first.returncode, out, err)
    line = ch.one_line_error(proc, code=130)
    assert "interrupted: 1 of 4 configurations are saved in out" in line
    assert "coco-jax sweep grid.yaml --out out" in line and "again to resume" in line

    part = store.part_files(tmp_path / "out")[0]
    part.write_bytes(part.read_bytes()[:100])  # truncated
    with pytest.raises(ConfigError, match=r"parts/batch-.*\.parquet is unreadable.*quarantine"):
        cj.load_results(tmp_path / "out", partial=True)
    rerun = ch.cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{part.relative_to(tmp_path)} is unreadable" in rerun.stderr and "quarantine" in rerun.stderr
    assert "4 configurations, 12 rows" in rerun.stdout and "4 computed" in rerun.stdout
    assert len(list((tmp_path / "out" / store.QUARANTINE).iterdir())) == 1
    assert len(cj.load_results(tmp_path / "out")) == 12


def test_corrupt_part_among_good_ones_recomputes_only_its_configurations(tmp_path, finished):
    """Two saved parts, one corrupt: the rerun computes the corrupt one's configuration
    and the two that were never run, not the good part's."""
    out = _copy(finished, tmp_path)
    table = pd.read_parquet(out / store.TABLE)
    # the state a killed sweep leaves: a running sidecar and one part per finished batch
    keys = list(dict.fromkeys(zip(table.method, table.config_id)))
    for i, key in enumerate(keys[:2]):
        rows = table[(table.method == key[0]) & (table.config_id == key[1])]
        store.write_part(out, f"batch-test{i}-p0", rows)
    (out / store.TABLE).unlink()
    side = json.loads((out / store.SIDECAR).read_text())
    fileio.write_json(out / store.SIDECAR, {**side, "status": "running"})
    bad = out / store.PARTS / "batch-test1-p0.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64)
    rerun = ch.cli("sweep", "grid.yaml", "--out", "done", "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "batch-test1-p0.parquet is unreadable" in rerun.stderr
    assert "3 computed" in rerun.stdout  # 4 configurations, 1 of them in the good part
    # the recomputed configurations ran in another batch: two float32 programs of each
    assert_same_tables(cj.load_results(out), table)


# ------------------------------------------------------- 3. corrupt table, sidecar


def test_corrupt_table_names_the_file_and_the_rerun_rebuilds_it(tmp_path, finished):
    out = _copy(finished, tmp_path)
    good = pd.read_parquet(out / store.TABLE)
    (out / store.TABLE).write_bytes(b"not a parquet file at all")
    with pytest.raises(ConfigError) as err:  # read from elsewhere: the grid file where it ran, this --out
        cj.load_results(out)
    assert "results.parquet is unreadable" in str(err.value)
    assert f"run `coco-jax sweep {finished / 'grid.yaml'} --out {out} --no-progress` again" in str(err.value)
    line = ch.one_line_error(ch.cli("plot", "done", cwd=tmp_path))
    assert "done/results.parquet is unreadable" in line
    assert "`coco-jax sweep grid.yaml --out done --no-progress`" in line and "quarantine" in line
    assert not (out / "experiment.json").exists()  # the failed plot wrote nothing
    rerun = ch.cli("sweep", "grid.yaml", "--out", "done", "--overwrite", "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "results.parquet is unreadable" in rerun.stderr and "moved it to" in rerun.stderr
    assert "4 computed" in rerun.stdout
    assert [p.name.endswith("results.parquet") for p in (out / store.QUARANTINE).iterdir()] == [True]
    assert_same_tables(cj.load_results(out), good)  # recomputed: as above


def test_missing_sidecar_is_reported_as_missing_not_as_another_grid(tmp_path, finished):
    out = _copy(finished, tmp_path)
    (out / store.SIDECAR).unlink()
    rerun, plot = ch.cli_many([("sweep", "grid.yaml", "--out", "done"), ("plot", "done")], cwd=tmp_path)
    for proc in (rerun, plot):
        line = ch.one_line_error(proc)
        assert "results.json is missing" in line and "another grid" not in line, line
    assert "--overwrite" in ch.one_line_error(rerun)
    assert not (out / store.SIDECAR).exists() and not (out / "experiment.json").exists()  # nothing written


# ------------------------------------------------------------------ 7. the lock


def test_lock_names_its_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    """A live holder (another process) refuses `coco-jax run` of an experiment and a
    sweep into its directory; killed with SIGKILL, it leaves nothing that blocks."""
    out = tmp_path / "res"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from coco_jax import store
                store.invoked_as = "coco-jax sweep holder.yaml"
                with store.lock({str(out)!r}):
                    print("held", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        env=ch.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "tinyexp.py").write_text(ch.TINY_MODULE.format(name="tinyexp", axes='{"seed": [0]}'))
        (tmp_path / "grid.yaml").write_text(ch.TINY_YAML)
        for proc in ch.cli_many(
            [("run", "tinyexp.py", "--out", "res"), ("sweep", "grid.yaml", "--out", "res")], cwd=tmp_path
        ):
            line = ch.one_line_error(proc)
            assert f"is in use by process {holder.pid} (coco-jax sweep holder.yaml)" in line
        assert not (out / "experiment.json").exists() and not (out / store.SIDECAR).exists()
        with pytest.raises(ConfigError, match=f"process {holder.pid}"), store.lock(out):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with store.lock(out):  # the OS released the killed holder's lock
        assert json.loads((out / store.LOCK).read_text())["pid"] == __import__("os").getpid()
    with store.lock(out), store.lock(out):  # re-entrant in one process (experiment, then its sweep)
        pass


# ------------------------------------------------------------------ 5. out is a file


def test_sweep_into_a_file_is_a_config_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    grid = cj.Grid(base=cj.ExperimentConfig(num_devices=4, num_samples=64, steps=2), axes={"seed": [0]})
    with pytest.raises(ConfigError, match="out=.*afile.* is a file, not a directory"):
        cj.sweep(grid, out=afile, progress=False)
    with pytest.raises(ConfigError, match="chunk_steps=0 is invalid"):
        cj.sweep(grid, progress=False, chunk_steps=0)
    (tmp_path / "grid.yaml").write_text(ch.TINY_YAML)
    proc = ch.cli("sweep", "grid.yaml", "--out", "afile", cwd=tmp_path)
    assert "is a file, not a directory" in ch.one_line_error(proc)
    assert afile.read_text() == "x"


# ------------------------------------------------------- the results directory object


class _Alone:
    """The collectives of a single process (`distributed.Comm` without JAX)."""

    index, count = 0, 1

    def allgather_json(self, obj):
        return [obj]

    def barrier(self, name):
        pass


def test_results_dir_states_and_refusals(tmp_path):
    """new -> resume -> complete for its own grid; another grid's results and results
    without a readable sidecar are refused with the way out, read-only, unless overwrite."""
    d = store.ResultsDir(tmp_path / "res")
    assert (d.status("h1"), d.state("h1"), d.has_results(), d.sidecar()) == ("new", "new", False, None)
    assert not d.path.exists()  # reading the state creates nothing
    fileio.write_json(d.path / store.SIDECAR, {"grid_hash": "h1", "status": "running", "invocations": [1]})
    assert (d.status("h1"), d.invocations(), d.is_complete()) == ("resume", [1], False)
    d.complete(
        pd.DataFrame({"method": ["m"], "config_id": ["c"], "step": [0]}),
        {"grid_hash": "h1", "status": "complete"},
    )
    assert (d.status("h1"), d.is_complete(), d.has_results()) == ("complete", True, True)
    with pytest.raises(ConfigError, match=r"holds results of another grid \(grid hash h1, this grid h2\)"):
        d.state("h2")
    assert (
        d.state("h2", overwrite=True) == "new" and d.is_complete()
    )  # overwrite decides, state() writes nothing
    (d.path / store.SIDECAR).write_text("{not json")  # unreadable: recovered when its results are the grid's
    assert d.status("h1", keys={("m", "c")}) == "recover" and d.state("h1", keys={("m", "c")}) == "resume"
    with pytest.raises(ConfigError, match=r"results.json is unreadable \(.*\), and 1 of the configurations"):
        d.state("h1", keys={("m", "other")})
    with pytest.raises(ConfigError, match=r"results.json is unreadable \(.*\), and the sweep of their grid"):
        d.state("h1")
    (d.path / store.SIDECAR).unlink()
    with pytest.raises(ConfigError, match="results.json is missing, so they cannot be matched"):
        d.state("h1")
    d.clear()
    assert d.status("h1") == "new"


def test_results_dir_open_clears_another_grid_only_with_overwrite(tmp_path):
    d = store.ResultsDir(tmp_path)
    fileio.write_json(d.path / store.SIDECAR, {"grid_hash": "old", "status": "complete"})
    (d.path / ".tmp-1-results.parquet").write_bytes(b"half")  # a killed writer's temporary file
    with pytest.raises(ConfigError, match="another grid"):
        d.open(_Alone(), "new", overwrite=False)
    assert not (d.path / ".tmp-1-results.parquet").exists() and d.sidecar()["grid_hash"] == "old"
    assert d.open(_Alone(), "new", overwrite=True) == "new" and d.sidecar() is None
    d.mark_running(_Alone(), lambda previous: {"grid_hash": "new", "status": "running", "previous": previous})
    assert d.sidecar() == {"grid_hash": "new", "status": "running", "previous": []}


def test_results_dir_lock_refuses_a_second_holder_and_hold_raises_it(tmp_path, monkeypatch):
    import contextlib
    import os

    d = store.ResultsDir(tmp_path / "res")
    with d.lock():
        assert (d.path / store.LOCK).exists()
        with d.lock():  # re-entrant in this process
            pass
        # another holder: forget this process's re-entrancy, so a new descriptor asks the OS
        monkeypatch.setattr(store, "_HELD", {})
        holder = re.escape(f"out={str(d.path)!r} is in use by process {os.getpid()}")
        with pytest.raises(ConfigError, match=holder), contextlib.ExitStack() as held:
            store.ResultsDir(tmp_path / "res").hold(_Alone(), held)
        monkeypatch.undo()
    assert not (d.path / store.LOCK).exists()


def test_results_dir_experiment_record(tmp_path):
    """experiment.json: absent, written, refused for another experiment, variant or
    overrides (unless overwrite), and an unreadable one names the repair."""
    d = store.ResultsDir(tmp_path)
    assert d.experiment() is None
    d.check_experiment("methods", True, {})  # nothing recorded: accepted
    d.write_experiment({"experiment": "methods", "quick": True, "overrides": {"num_devices": 8}})
    assert d.experiment()["experiment"] == "methods"
    d.check_experiment("methods", True, {"num_devices": 8})
    with pytest.raises(ConfigError) as err:
        d.check_experiment("methods", False, {})
    assert str(err.value) == (
        f"out={str(tmp_path)!r} holds results of experiment 'methods' (quick, overrides num_devices=8), "
        "not 'methods' (full): choose another --out or pass --overwrite"
    )
    d.check_experiment("theory", True, {}, overwrite=True)
    (tmp_path / store.EXPERIMENT).write_text("{")
    with pytest.raises(ConfigError) as err:
        d.experiment()
    assert str(err.value).startswith(f"{tmp_path / store.EXPERIMENT} is unreadable (")
    assert str(err.value).endswith(
        f"run the experiment with --out {str(tmp_path)!r} again; it moves the file to "
        f"{tmp_path / store.QUARANTINE}/ and writes it again, keeping the finished sweeps"
    )
    d.check_experiment("theory", False, {})  # refuses nothing: the run writes it again
    assert d.heal_experiment().parent == tmp_path / store.QUARANTINE and d.experiment() is None


def test_results_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="it is a file, not a directory"):
        store.ResultsDir(tmp_path / "f")
