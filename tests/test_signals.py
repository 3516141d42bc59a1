"""Ctrl-C and SIGTERM honoured promptly (issue 19, item 3), in real `coco-jax`
subprocesses: a single run of hours and a sweep stop within seconds, at any moment
(the sweep's first second while it plans and compiles in background threads, or
after a batch), with exit 130 (SIGINT) or 143 (SIGTERM), one `coco-jax: ...` line, the
directory's lock released and the finished batches kept.

Timing: every bound below is a wide margin (60 s) against runs that would take hours
uninterrupted, so a loaded machine cannot make them fail; the seconds themselves are
not asserted. Sizes are tiny (linreg, M = 4 or 8, d = 8).
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
import time

import pandas as pd

import coco_jax as cj
from coco_jax import interrupt, store

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_helper as ch

STOP_WITHIN_S = 60.0  # uninterrupted, the runs below take hours

# one run of 2e8 steps: about an hour and a half on a 2-core CPU
LONG_RUN = (
    "run",
    "--preset",
    "coco-ef",
    "--num-devices",
    "8",
    "--steps",
    "200000000",
    "--eval-every",
    "10000000",
)

# a short group (steps 8) then a long one (2e8 steps, in chunks of 20,000 steps)
TWO_GROUPS_YAML = (
    "base: {task: linreg, num_devices: 4, num_samples: 64, num_features: 8, eval_every: 10000000}\n"
    "axes: {steps: [8, 200000000], seed: [0, 1]}\n"
)


def _ready(proc: subprocess.Popen) -> None:
    """Wait until the command has loaded the plugin (it prints "ready"): from here its
    signal handling is active."""
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.poll())


def _stop(proc: subprocess.Popen, sig: int) -> tuple[subprocess.CompletedProcess, float]:
    """Send `sig`; (the finished process, seconds from the signal to its exit)."""
    t0 = time.perf_counter()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=STOP_WITHIN_S * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.perf_counter() - t0


def test_a_single_run_of_hours_stops_within_seconds_on_sigint_and_sigterm(tmp_path):
    (tmp_path / "ready.py").write_text('print("ready", flush=True)\n')
    procs = {
        sig: ch.start(*LONG_RUN, "--out", f"run-{sig.name}", "--plugins", "ready.py", cwd=tmp_path)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for proc in procs.values():
            _ready(proc)
        time.sleep(2.0)  # compiling or running by now
        stopped = {sig: _stop(proc, sig) for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for sig, code, said in (
        (signal.SIGINT, 130, "coco-jax: interrupted: a single run keeps nothing; run it again"),
        (signal.SIGTERM, 143, "coco-jax: interrupted by SIGTERM: a single run keeps nothing; run it again"),
    ):
        proc, seconds = stopped[sig]
        assert ch.one_line_error(proc, code=code) == said
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
        assert seconds < STOP_WITHIN_S, (sig, seconds)
        out = tmp_path / f"run-{sig.name}"
        assert not (out / store.LOCK).exists() and not (out / "history.csv").exists()


def test_a_sweep_stops_in_its_first_second_and_after_a_batch_keeping_what_finished(tmp_path):
    """SIGINT as soon as the sweep starts (it is planning and compiling in its background
    threads) and SIGTERM once the short group's batch is saved: both stop within
    seconds, say what is saved and how to resume, and leave no lock; the saved batch
    is kept and readable."""
    (tmp_path / "ready.py").write_text('print("ready", flush=True)\n')
    (tmp_path / "grid.yaml").write_text(TWO_GROUPS_YAML)
    args = ("sweep", "grid.yaml", "--chunk-steps", "20000", "--no-progress", "--plugins", "ready.py")
    early = ch.start(*args, "--out", "early", cwd=tmp_path)
    late = ch.start(*args, "--out", "late", cwd=tmp_path)
    try:
        _ready(early)
        first, first_s = _stop(early, signal.SIGINT)  # in the sweep's first second
        _ready(late)
        deadline = time.time() + 300
        while not store.part_files(tmp_path / "late"):
            assert late.poll() is None, late.communicate()[1][-3000:]
            assert time.time() < deadline, "the short group's batch was never saved"
            time.sleep(0.05)
        second, second_s = _stop(late, signal.SIGTERM)
    finally:
        for proc in (early, late):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    line = ch.one_line_error(first, code=130)
    assert line.startswith("coco-jax: interrupted: 0 of 4 configurations are saved in early; run `"), line
    assert line.endswith("--out early` again to resume"), line
    assert first_s < STOP_WITHIN_S, first_s
    assert "Exception ignored" not in first.stderr

    line = ch.one_line_error(second, code=143)
    assert line.startswith("coco-jax: interrupted by SIGTERM: 2 of 4 configurations are saved in late"), line
    assert second_s < STOP_WITHIN_S, second_s
    for name in ("early", "late"):
        assert not (tmp_path / name / store.LOCK).exists()
    saved = cj.load_results(tmp_path / "late", partial=True)
    assert sorted(saved["steps"].unique()) == [8] and saved["config_id"].nunique() == 2
    assert isinstance(saved, pd.DataFrame) and len(saved) == 2 * 2  # steps 0 and 8 of each
    with store.lock(tmp_path / "late"):  # nobody holds it
        pass


def test_waiting_for_a_background_result_stops_at_a_signal_and_keeps_its_kind():
    """`interrupt.wait` (how a sweep waits for a program compiling in its background
    thread) raises a pending SIGTERM within its poll interval; `with_message` keeps the
    signal; a second signal raises at once and stays pending for the next check."""
    never = concurrent.futures.Future()  # nobody completes it
    with interrupt.handling():
        os.kill(os.getpid(), signal.SIGTERM)
        t0 = time.perf_counter()
        try:
            interrupt.wait(never, poll_s=0.05)
        except interrupt.Interrupted as err:
            caught = err
        waited = time.perf_counter() - t0
        assert caught.exit_code == 143 and caught.signal_name == "SIGTERM"
        assert waited < STOP_WITHIN_S, waited
        again = interrupt.with_message(caught, "interrupted: 1 of 2 configurations are saved in out")
        assert (again.exit_code, str(again)) == (143, "interrupted: 1 of 2 configurations are saved in out")
        assert interrupt.with_message(KeyboardInterrupt(), "x").exit_code == 130  # Python's own Ctrl-C

        os.kill(os.getpid(), signal.SIGINT)  # pending
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the second: raised by the handler
            time.sleep(1.0)
            raise AssertionError("the second signal did not raise")
        except interrupt.Interrupted as err:
            assert err.exit_code == 130
        assert interrupt.pending() == signal.SIGINT  # still pending: a swallowed raise is not lost
        try:
            interrupt.check()
            raise AssertionError("check() did not raise the pending signal")
        except interrupt.Interrupted:
            pass
        assert interrupt.pending() is None
