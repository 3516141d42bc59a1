"""The benchmark's NumPy references agree with each other and use the engine's code
matrix (with tests/test_engine.py's check that they equal the engine, that is what makes
the ratios honest), and `coco-jax bench` runs end to end at a tiny size. No timing is
asserted anywhere."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import run_tolerances

import coco_jax as cj
from coco_jax import bench, cli, reference
from coco_jax.coding import make_allocation

M, N_K, D, S, K, STEPS, P, LR = 6, 5, 20, 2, 3, 12, 0.2, 0.1


def test_code_matrix_is_the_engines_cyclic_code():
    b = np.asarray(make_allocation("cyclic", M, M, S).sample(jax.random.key(0)))
    np.testing.assert_array_equal(b, bench.code_matrix(M, S))
    np.testing.assert_array_equal(
        np.asarray(make_allocation("uncoded", M, M, 0).sample(jax.random.key(0))), np.eye(M)
    )


def test_loop_and_vectorized_agree_with_ties():
    rng = np.random.default_rng(1)
    xp = rng.integers(-2, 3, size=(M, N_K, D)).astype(np.float32)
    yp = rng.integers(-2, 3, size=(M, N_K)).astype(np.float32)
    b = bench.code_matrix(M, S)
    w = bench.decode_weights(M, S, P)
    for fn_args in [("linreg",), ("logreg",)]:
        task = fn_args[0]
        y = yp if task == "linreg" else (yp > 0).astype(np.float32)
        trace = rng.random((5, M)) < P
        # two float32 programs of one configuration: `conftest.run_tolerances` per step
        cfg = cj.ExperimentConfig(
            task=task, num_devices=M, redundancy=S, allocation="cyclic", decoder="fixed",
            straggler="trace", straggler_prob=P, compressor="topk", compress_k=K,
            error_feedback="ef", lr=LR, steps=5, eval_every=1,
        )  # fmt: skip
        labels = y.reshape(-1) if task == "linreg" else y.reshape(-1).astype(np.int32)
        tol = run_tolerances(cfg, data=(xp.reshape(-1, D), labels), straggler_trace=trace)
        th_l = th_v = np.zeros(D, np.float32)
        e_l = e_v = np.zeros((M, D), np.float32)
        for t in range(5):
            st = trace[t]
            th_l, e_l = reference.loop_step(task, th_l, e_l.copy(), xp, y, b, st, w, K, LR, True)
            th_v, e_v = reference.vectorized_step(task, th_v, e_v, xp, y, b, st, w, K, LR, True)
            assert np.linalg.norm(th_l - th_v) <= tol["theta_steps"][t + 1], (task, t)
            assert np.linalg.norm(e_l - e_v, axis=1).max() <= tol["memory_steps"][t + 1], (task, t)


def test_rows_per_partition_cap():
    assert bench.rows_per_partition(64, 1000) == 32
    assert bench.rows_per_partition(256, 100_000) * 256 * 100_000 * 4 <= bench.MAX_X_BYTES
    assert bench.rows_per_partition(10**6, 10**6) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`coco-jax bench --tiny --json FILE`, run once for the tests below: (table, JSON path)."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["bench", "--tiny", "--json", str(path)]) == 0
    return printed.getvalue(), path


def test_compile_section_tiny(tiny_run):
    """[4] compile time: a single run and a sweep group compiled cold in a subprocess with a
    fresh persistent cache, then again after jax.clear_caches(), read back from that cache
    (every program loaded, none compiled). Speed itself is measured, not asserted."""
    printed, path = tiny_run
    result = json.loads(path.read_text())
    assert "compile" in result["plan"]["sections"]
    cp = result["compile"]
    plan = bench.make_plan("tiny")
    assert [cp["task"], cp["M"], cp["d"], cp["steps"]] == list(plan.compile_case)
    assert cp["batch"] == plan.compile_batch and cp["reps"] == plan.compile_reps
    for name, least in (("single", 1), ("group", 2)):  # the group: init and chunk programs
        c = cp[name]
        cold, cached = c["cold"], c["cached"]
        for key in ("lower_s", "compile_s", "total_s"):
            assert cold[key] > 0 and cached[key] > 0
        n = cold["programs"]["count"]
        assert n >= least and cold["programs"] == {"count": n, "loaded": 0, "compiled": n}  # really cold
        assert cached["programs"]["count"] == cached["programs"]["loaded"] == n * cp["reps"]
        assert [r["programs"]["loaded"] for r in cached["runs"]] == [n] * cp["reps"]
        assert c["hlo_lines"] == sum(c["hlo_lines_by_program"].values()) > 0
        assert c["label"] in printed
    assert set(cp["group"]["hlo_lines_by_program"]) == {"init", "chunk"}
    assert cp["cache_files_written"] >= 3
    table = printed[printed.index("[4] compile time") :].split("\n\n")[0].splitlines()
    assert table[2].split()[:2] == ["program", "HLO"] and len(table) == 6  # title, note, header, rule, 2 rows


def test_compile_subprocess_cache_is_fresh(monkeypatch, tmp_path):
    """Whatever cache the user configured, the compile subprocess uses the fresh directory."""
    from coco_jax.bench.compile_time import fresh_cache_env

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "5")
    monkeypatch.setenv("COCO_JAX_CACHE_DIR", "off")
    env = fresh_cache_env(str(tmp_path))
    assert env["COCO_JAX_CACHE_DIR"] == str(tmp_path)
    assert not [k for k in env if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))]


def test_bench_sections(capsys):
    assert "compile" in bench.make_plan("tiny").sections and "compile" in bench.make_plan("quick").sections
    assert cli.main(["bench", "--tiny", "--sections", "compile,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_cli_bench_tiny_writes_json(tiny_run):
    printed, path = tiny_run
    for heading in (
        "[1] step throughput",
        "[2] cost of redundancy",
        "[3] sweep throughput",
        "[4] compile time",
        "[5] roofline",
    ):
        assert heading in printed
    result = json.loads(path.read_text())  # valid JSON (no NaN: strict parse below)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert result["schema"] == bench.SCHEMA and result["mode"] == "tiny"
    mc = result["machine"]
    for key in ("cpu_model", "device_kind", "device_count", "jax", "jaxlib", "numpy", "matmul_flops_per_s"):
        assert key in mc
    assert mc["read_bytes_per_s"] > 0 and mc["copy_bytes_per_s"] > 0
    rows = result["throughput"]
    assert {r["task"] for r in rows} == {"linreg", "logreg"}
    for r in rows:
        for key in ("step_s", "steps_per_s", "device_steps_per_s", "compile_s"):
            assert r["engine"][key] > 0
        assert r["engine"]["step_s_min"] <= r["engine"]["step_s_max"]  # per-repetition spread (may dip < 0)
        for ref in ("numpy_vectorized", "numpy_loop"):
            assert r[ref]["step_s"] > 0 and r[ref]["blas_threads"] in ("default", "1")
        assert r["x_vectorized"] > 0 and r["x_loop"] > 0
    levels = result["redundancy"]["levels"]
    assert [lv["s"] for lv in levels] == list(range(len(levels))) and levels[0]["engine_rel"] == 1.0
    assert all(lv["loop"]["step_s"] > 0 for lv in levels)
    assert len(result["sweep"]) == 1
    sizes = result["sweep"][0]["sizes"]
    assert [r["configs"] for r in sizes] == [1, 4]
    for r in sizes:
        assert r["vmapped"]["compilations"] >= 1 and r["one_by_one"]["compilations"] >= 1
        assert r["speedup"] > 0
    assert result["roofline"]["cases"] and result["memory"]["x_bytes"] > 0
    assert {t["name"] for t in result["targets"]} == {name for name, *_ in bench.TARGETS}
    assert result["numpy_blas"]["env_mode"] == "clean"


def test_topk_prefilter_returns_lax_top_k_indices():
    """compressors._topk_indices (lower-bound prefilter for k >= 32, d >= 16 k) picks
    exactly lax.top_k's indices, ties, zeros, inf and NaN included."""
    from coco_jax.compressors import _topk_indices

    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(20):  # 20 shapes (k, d), each compiled once for 3 trials' rows
        k = int(rng.integers(32, 80))
        d = int(rng.integers(16 * k, 16 * k + 900))
        rows = []
        for _ in range(3):
            trial = checked
            v = rng.standard_normal((3, d)).astype(np.float32)
            if trial % 3 == 0:
                v = (rng.integers(-3, 4, size=(3, d)) * 0.25).astype(np.float32)  # heavy ties and zeros
            if trial % 3 == 1:
                v[:, : d // 2] = 0.0
            if trial % 5 == 0:
                v[0, rng.integers(0, d, 4)] = np.nan
            if trial % 7 == 0:
                v[1, rng.integers(0, d, 3)] = -np.inf
            rows.append(v)
            checked += 1
        vj = jax.numpy.asarray(np.concatenate(rows))
        got = jax.jit(jax.vmap(lambda r, k=k: _topk_indices(r, k)))(vj)
        want = jax.vmap(lambda r, k=k: jax.lax.top_k(jax.numpy.abs(r), k)[1])(vj)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert checked == 60
