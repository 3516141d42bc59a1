"""Damaged or moved results directories never leave a dead end (issue 19, items 1, 5
and 7), with real `coco-jax` subprocesses and real files:

- an unreadable experiment.json is moved to quarantine/ and written again by the next
  run (with or without --overwrite), recomputing nothing; `plot` names that command;
- an unreadable results.json is moved to quarantine/ and the sweep resumes from the
  saved rows of its grid (configuration ids are content hashes), computing only what
  is missing; results of other configurations are refused, and `plot` says the
  sidecar is unreadable (not missing);
- repair hints are built for the directory actually being read (its --out, the grid
  file where it is), after the directory was moved;
- a resume after a plug-in's component changed is refused, naming the component,
  unless --overwrite.

Sizes are tiny (linreg, M = 4, d = 8, 4 steps, one compiled program per sweep).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import coco_jax as cj
from coco_jax import fileio, store
from coco_jax.config import ConfigError

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_helper as ch

# rows read back compare exactly. Rows recomputed in a batch of another size may differ
# in the last bits (XLA reassociates the vmapped reductions; issue 19 item 9): float32
# eps (1.2e-7) times the ~10^2 sequential additions of 4 steps of a d = 8, K = 4 problem
# bounds the relative difference by about 1e-5.
EXACT = {"check_exact": True}
RECOMPUTED = {"check_exact": False, "rtol": 1e-5, "atol": 0.0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """`coco-jax sweep grid.yaml --out done` and `coco-jax run tinyexp.py --quick --out
    res`, finished in one directory (copied per test)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "grid.yaml").write_text(ch.TINY_YAML)
    (root / "tinyexp.py").write_text(ch.TINY_MODULE.format(name="tinyexp", axes='{"seed": [0, 1]}'))
    for proc in ch.cli_many(
        [
            ("sweep", "grid.yaml", "--out", "done", "--no-progress"),
            ("run", "tinyexp.py", "--quick", "--out", "res"),
        ],
        cwd=root,
    ):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _copy(finished: pathlib.Path, tmp_path: pathlib.Path, *names: str) -> None:
    for name in ("grid.yaml", "tinyexp.py"):
        shutil.copy(finished / name, tmp_path / name)
    for name in names:
        shutil.copytree(finished / name, tmp_path / name)


def _killed(out: pathlib.Path, saved: int) -> pd.DataFrame:
    """Turn the finished sweep in `out` into what a sweep killed after `saved` batches of
    one configuration leaves (a running sidecar and one part per batch); the full table."""
    table = pd.read_parquet(out / store.TABLE)
    keys = list(dict.fromkeys(zip(table.method, table.config_id)))
    for i, key in enumerate(keys[:saved]):
        store.write_part(
            out, f"batch-test{i}-p0", table[(table.method == key[0]) & (table.config_id == key[1])]
        )
    (out / store.TABLE).unlink()
    side = json.loads((out / store.SIDECAR).read_text())
    fileio.write_json(out / store.SIDECAR, {**side, "status": "running"})
    return table


# ------------------------------------------------------------- 1. experiment.json


def test_an_unreadable_experiment_record_is_written_again_with_or_without_overwrite(tmp_path, finished):
    _copy(finished, tmp_path, "res")
    res = tmp_path / "res"
    table = pd.read_parquet(res / store.TABLE)
    (res / store.EXPERIMENT).write_text('{"experiment": "tinyexp", "qu')  # a torn write of an old version

    plot = ch.cli("plot", "res", cwd=tmp_path)
    line = ch.one_line_error(plot)
    assert line.startswith("coco-jax: error: res/experiment.json is unreadable (")
    assert line.endswith(
        "run `coco-jax run tinyexp.py --quick --out res` again; it moves the file to res/quarantine/ and "
        "writes it again, keeping the finished sweeps"
    )

    for extra in ((), ("--overwrite",)):
        proc = ch.cli("run", "tinyexp.py", "--quick", "--out", "res", *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "res/experiment.json is unreadable (" in proc.stderr
        assert (
            "moved it to res/quarantine/" in proc.stderr and "it is written again by this run" in proc.stderr
        )
        meta = json.loads((res / store.EXPERIMENT).read_text())
        assert (meta["experiment"], meta["quick"], meta["status"]) == ("tinyexp", True, "complete")
        assert meta["parts"]["tinyexp"]["compilations"] == 0  # nothing was recomputed
        pd.testing.assert_frame_equal(pd.read_parquet(res / store.TABLE), table, **EXACT)
        (res / store.EXPERIMENT).write_text("")  # empty, for the --overwrite round
    assert len(list((res / store.QUARANTINE).iterdir())) == 2


# ------------------------------------------------------------- 1. results.json


def test_an_unreadable_sidecar_is_quarantined_and_the_sweep_resumes_from_its_parts(tmp_path, finished):
    """A killed sweep (2 of 4 configurations saved) whose sidecar is then corrupted:
    `plot` says it is unreadable and how to repair; the rerun quarantines it and
    computes the 2 missing configurations only; the table equals the clean run's."""
    _copy(finished, tmp_path, "done")
    out = tmp_path / "done"
    table = _killed(out, saved=2)
    (out / store.SIDECAR).write_bytes((out / store.SIDECAR).read_bytes()[:50])  # truncated

    line = ch.one_line_error(ch.cli("plot", "done", cwd=tmp_path))
    assert "is missing" not in line
    assert line.startswith("coco-jax: error: done/results.json is unreadable (")
    assert line.endswith(
        "run the same sweep with out='done' again; it moves the file to done/quarantine/ and rebuilds it, "
        "keeping the saved results of its grid"
    )
    rerun = ch.cli("sweep", "grid.yaml", "--out", "done", "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "done/results.json is unreadable (" in rerun.stderr
    assert "it is rebuilt, and the saved rows of this grid are kept" in rerun.stderr
    assert "4 configurations, 12 rows" in rerun.stdout and "2 computed" in rerun.stdout
    pd.testing.assert_frame_equal(cj.load_results(out), table, **RECOMPUTED)
    side = json.loads((out / store.SIDECAR).read_text())
    assert side["status"] == "complete" and side["fingerprints"]["compressor topk"]
    assert [p.name.endswith("results.json") for p in (out / store.QUARANTINE).iterdir()] == [True]


def test_an_unreadable_sidecar_of_a_finished_sweep_keeps_its_table_and_refuses_other_grids(
    tmp_path, finished
):
    """Finished, then its sidecar corrupted: the rerun computes nothing (the table's rows
    are the grid's); another grid's sweep into it is refused, naming how many saved
    configurations are not its own, unless --overwrite."""
    _copy(finished, tmp_path, "done")
    out = tmp_path / "done"
    table = pd.read_parquet(out / store.TABLE)
    (out / store.SIDECAR).write_text("[1, 2")
    (tmp_path / "other.yaml").write_text(ch.TINY_YAML.replace("seed: [0, 1]", "seed: [0, 5]"))
    other = ch.cli("sweep", "other.yaml", "--out", "done", "--no-progress", cwd=tmp_path)
    line = ch.one_line_error(other)
    assert f"out='done' holds results but {pathlib.Path('done') / store.SIDECAR} is unreadable (" in line
    assert "and 2 of the configurations saved there are not in this grid: choose another directory" in line
    assert not (out / store.QUARANTINE).exists()  # refused: nothing moved

    rerun = ch.cli("sweep", "grid.yaml", "--out", "done", "--no-progress", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "4 configurations, 12 rows, 0 compilation(s)" in rerun.stdout and "0 computed" in rerun.stdout
    pd.testing.assert_frame_equal(cj.load_results(out), table, **EXACT)
    assert json.loads((out / store.SIDECAR).read_text())["status"] == "complete"


# ------------------------------------------------------------- 5. moved directories


def test_repair_hints_name_the_moved_directory_and_where_the_grid_file_is(tmp_path, finished):
    """Results moved to another place: hints say the directory as it is read now, and the
    grid file or module where it is (not the --out and relative path recorded)."""
    _copy(finished, tmp_path, "done", "res")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "done", moved / "sweep-copy")
    shutil.move(tmp_path / "res", moved / "exp-copy")
    (moved / "sweep-copy" / store.TABLE).write_bytes(b"PAR1 torn")
    (moved / "exp-copy" / store.EXPERIMENT).write_text("{")
    line = ch.one_line_error(ch.cli("plot", "elsewhere/sweep-copy", cwd=tmp_path))
    assert "elsewhere/sweep-copy/results.parquet is unreadable" in line
    assert "run `coco-jax sweep grid.yaml --out elsewhere/sweep-copy --no-progress` again" in line
    assert "elsewhere/sweep-copy/quarantine/" in line

    # from inside: the module it ran is not here, so the hint names it where it is
    line = ch.one_line_error(ch.cli("plot", "exp-copy", cwd=moved))
    assert f"run `coco-jax run {finished / 'tinyexp.py'} --quick --out exp-copy` again" in line

    with pytest.raises(ConfigError) as err:  # from Python, anywhere: an absolute grid path
        cj.load_results(moved / "sweep-copy")
    assert f"`coco-jax sweep {finished / 'grid.yaml'} --out {moved / 'sweep-copy'} --no-progress`" in str(
        err.value
    )
    assert store.repair_command(tmp_path / "nowhere") is None


# ------------------------------------------------------------- 7. plug-in fingerprints

PLUGIN = """
import jax, jax.numpy as jnp
import coco_jax as cj

SCALE = {scale}


@cj.register_compressor("shrink")
def shrink(dim: int) -> cj.Compressor:
    def compress(key, v):
        return SCALE * v

    return cj.Compressor(compress=compress, bits=32 * dim)
"""

SHRINK_YAML = ch.TINY_YAML.replace("steps: 4,", "steps: 4, compressor: shrink,")


def test_a_resume_after_a_plugin_changed_is_refused_naming_the_component(tmp_path):
    """A sweep killed after its first batch, resumed after the plug-in's compressor
    changed: refused (exit 2, nothing written) naming compressor 'shrink'; the old
    plug-in resumes; --overwrite recomputes every configuration with the new one."""
    (tmp_path / "grid.yaml").write_text(SHRINK_YAML)
    (tmp_path / "shrink.py").write_text(PLUGIN.format(scale=0.75))
    (tmp_path / "slow.py").write_text(ch.SLOW_PLUGIN)
    budget = str(ch.one_config_budget_of_yaml(tmp_path / "grid.yaml", plugins=[tmp_path / "shrink.py"]))
    args = (
        "sweep",
        "grid.yaml",
        "--out",
        "out",
        "--memory-budget",
        budget,
        "--no-progress",
        "--plugins",
        "shrink.py",
    )
    first = ch.start(*args, "--plugins", "slow.py", cwd=tmp_path, extra_env={"SLOW": 60})
    try:
        deadline = time.time() + 120
        while not store.part_files(tmp_path / "out"):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "no part file appeared"
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, err[-3000:]
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))

    (tmp_path / "shrink.py").write_text(PLUGIN.format(scale=0.25))
    changed = ch.cli(*args, cwd=tmp_path)
    line = ch.one_line_error(changed)
    assert "out='out' holds results computed by another version of compressor 'shrink' (was " in line
    assert "its factory or its plug-in file changed since, and resuming would mix the two versions" in line
    assert "pass overwrite=True (--overwrite) to recompute them" in line
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before  # nothing written

    replaced = ch.cli(*args, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "4 computed" in replaced.stdout
    df = cj.load_results(tmp_path / "out")
    assert set(df["contraction"].dropna().round(6)) <= {0.5625}  # (1 - 0.25)^2: one implementation only

    (tmp_path / "shrink.py").write_text(PLUGIN.format(scale=0.75))  # the results are now the new version's
    line = ch.one_line_error(ch.cli(*args, cwd=tmp_path))
    assert "another version of compressor 'shrink'" in line


# ------------------------------------------------------------- 8. partial reads race a finishing sweep


def test_partial_reads_while_the_sweep_finishes_never_call_a_part_unreadable(tmp_path, finished, monkeypatch):
    """The two windows of a finishing sweep (it writes the table, then removes the
    parts), forced: parts that vanish while they are read, and a table that appears
    after the reader found none and the parts are gone. Both read the table."""
    _copy(finished, tmp_path, "done")
    out = tmp_path / "done"
    side = json.loads((out / store.SIDECAR).read_text())
    table = _killed(out, saved=2)
    real_read, real_parts = store.read_table, store.part_files

    def finish_now():
        store.ResultsDir(out).complete(table, side)

    def read_as_it_finishes(path):
        if pathlib.Path(path).parent.name == store.PARTS:
            finish_now()
        return real_read(path)

    monkeypatch.setattr(store, "read_table", read_as_it_finishes)
    pd.testing.assert_frame_equal(cj.load_results(out, partial=True), table, **EXACT)
    monkeypatch.undo()

    table = _killed(out, saved=2)

    def listed_after_it_finished(d):
        finish_now()
        return real_parts(d)

    monkeypatch.setattr(store, "part_files", listed_after_it_finished)
    pd.testing.assert_frame_equal(cj.load_results(out, partial=True), table, **EXACT)


def test_polling_partial_results_during_a_real_sweep_raises_nothing_false(tmp_path):
    """`load_results(partial=True)` in a tight loop while a sweep of 24 one-configuration
    batches runs and finishes: every read returns saved rows (growing) or says the sweep
    has saved nothing yet; none says a file is unreadable."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(ch.TINY_YAML.replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"))
    budget = str(ch.one_config_budget_of_yaml(spec))
    proc = ch.start(
        "sweep", "grid.yaml", "--out", "out", "--memory-budget", budget, "--no-progress", cwd=tmp_path
    )
    seen, reads = [], 0
    try:
        while proc.poll() is None:
            try:
                df = cj.load_results(tmp_path / "out", partial=True)
            except ConfigError as err:
                assert "holds no results.parquet" in str(err) or "does not exist" in str(err), str(err)
                continue
            reads += 1
            seen.append(df["config_id"].nunique())
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert (
        reads > 0 and seen == sorted(seen) and cj.load_results(tmp_path / "out")["config_id"].nunique() == 24
    )


# ------------------------------------------------------------- 6. a full disk during figures

# --plugins file for where no small file system can be mounted: every file written
# through coco_jax.fileio under $FULL_DIR gets $ROOM bytes, then "No space left on device"
FULL_DISK_PLUGIN = """
import errno, io, os
from coco_jax import fileio

_left = [int(os.environ["ROOM"])]
_full = os.environ["FULL_DIR"]


class _Filling(io.FileIO):
    def write(self, data):
        room = min(len(data), _left[0])
        if room < len(data):
            super().write(bytes(data[:room]))
            _left[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _left[0] -= room
        return super().write(data)


def open(path, mode="r", *args, **kwargs):
    if "w" in mode and os.path.abspath(path).startswith(_full):
        return _Filling(path, "w")
    return __builtins__["open"](path, mode, *args, **kwargs)


fileio.open = open
"""


def _tmpfs_prefix(mountpoint: pathlib.Path, size_kib: int, source: pathlib.Path, keep: pathlib.Path):
    """A command prefix that runs the command with `source` copied onto a fresh tmpfs of
    `size_kib` KiB at `mountpoint` (a private mount namespace: it vanishes with the
    command), then copies the result to `keep`; None where this cannot be done."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    m, src, dst = (shlex.quote(str(p)) for p in (mountpoint, source, keep))
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {m} && cp -a {src} {m}/ && "
        f'"$@"; code=$?; cp -a {m}/{shlex.quote(source.name)} {dst}; exit $code'
    )
    probe = subprocess.run(
        [unshare, "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {m}"], capture_output=True, check=False
    )
    return (unshare, "-m", "sh", "-c", script, "sh") if probe.returncode == 0 else None


def _usage_kib(d: pathlib.Path) -> int:
    return sum(
        4 + p.stat().st_size // 1024 for p in d.rglob("*")
    )  # a page (4 KiB) per file or dir, rounded up


def test_a_full_disk_while_drawing_figures_leaves_no_truncated_file_and_names_it(tmp_path, finished):
    """`coco-jax plot` onto a disk with room for the results but not a figure: exit 1,
    one line naming the figure file and what to do; no figure file (whole or
    truncated) and no temporary file is left, and the results are untouched. A small
    tmpfs where one can be mounted, else a plug-in that fills a pretend disk."""
    _copy(finished, tmp_path, "res")
    res = tmp_path / "res"
    shutil.rmtree(res / "figures")
    (res / "report.md").unlink()
    before = {p.relative_to(res): p.read_bytes() for p in res.rglob("*") if p.is_file()}
    mountpoint, after = tmp_path / "disk", tmp_path / "after"
    mountpoint.mkdir()
    prefix = _tmpfs_prefix(mountpoint, _usage_kib(res) + 16, res, after)
    if prefix is not None:
        proc = ch.cli("plot", mountpoint / "res", cwd=tmp_path, prefix=prefix)
        shown = mountpoint / "res"
    else:
        (tmp_path / "full.py").write_text(FULL_DISK_PLUGIN)
        proc = ch.cli(
            "plot",
            "res",
            "--plugins",
            "full.py",
            cwd=tmp_path,
            extra_env={"FULL_DIR": str(res), "ROOM": 16384},
        )
        after, shown = res, pathlib.Path("res")
    line = ch.one_line_error(proc, code=1)
    assert line.startswith(f"coco-jax: error: {shown / 'figures'}/loss.")
    assert line.endswith(
        ": No space left on device (the disk is full: free space and run the same command again "
        "(finished work is kept))"
    )
    assert not (after / "figures").exists() or not any((after / "figures").iterdir())
    assert not list(after.rglob(".tmp-*")) and not (after / "report.md").exists()
    kept = {
        p.relative_to(after): p.read_bytes() for p in after.rglob("*") if p.is_file() and p.name != ".lock"
    }
    assert kept == before
