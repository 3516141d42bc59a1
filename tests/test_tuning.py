"""Tuning as a sweep feature (coco_jax/tuning.py, the tuned fields of coco_jax/grid.py)
and the smoothness constant L̂ (coco_jax/reference.py).

The planted problems use user data whose Hessian is known exactly: X with orthogonal
columns of equal norm, XᵀX/n = L·I, so full gradient descent on linreg contracts the
error by |1 − ηL| per step: η = 1/L reaches the optimum in one step, η and 2/L − η
contract alike, and η > 2/L diverges. The best of a set of candidates that straddle
1/L is therefore 1/L, and the best of candidates below it is the largest one.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coco_jax as cj
from coco_jax import data as data_lib
from coco_jax import reference, tables, tuning
from coco_jax.grid import LogGrid, load_grid_file, log_grid
from coco_jax.partition import truncate_to_multiple
from coco_jax.tasks import make_task

L_PLANTED = 2.0  # XᵀX/n = 2 I: candidates that are powers of two are exact in float32


def planted_data(n: int = 32, d: int = 4, seed: int = 0, noise: float = 0.3):
    """X [n, d] with XᵀX/n = L_PLANTED·I exactly up to rounding, y = Xθ* + noise."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    x = q * math.sqrt(n * L_PLANTED)
    y = x @ rng.normal(size=d) + noise * rng.normal(size=n)
    return x.astype(np.float32), y.astype(np.float32)


def planted_grid(candidates, **kw) -> cj.Grid:
    base = cj.preset("gd", task="linreg", num_devices=4, steps=4, eval_every=1)
    kw.setdefault("tuning_seeds", [100, 101])
    return cj.Grid(base=base, seeds=range(2), tune={"lr": candidates}, name="planted", **kw)


# ------------------------------------------------------------------ L̂


def _hessian_eigs(cfg: cj.ExperimentConfig, theta) -> np.ndarray:
    """Eigenvalues of the engine's loss Hessian (float32, jax.hessian) at θ."""
    ds = truncate_to_multiple(data_lib.load_dataset(cfg), cfg.num_partitions_resolved)
    task = make_task(cfg, ds.x_train.shape, ds.num_classes, jnp.float32)
    h = jax.hessian(task.loss)(jnp.asarray(theta, jnp.float32), ds.x_train, ds.y_train)
    return np.linalg.eigvalsh(np.asarray(h, np.float64))


@pytest.mark.parametrize(
    "task, classes, tight_at_zero",
    [("linreg", 2, True), ("logreg", 2, True), ("softmax", 2, True), ("softmax", 3, False)],
)
def test_smoothness_bounds_the_hessian(task, classes, tight_at_zero):
    """L̂ ≥ λ_max(∇²F(θ)) at θ = 0 and at random θ, with equality where the docstring
    says it is attained (linreg everywhere, logreg and 2-class softmax at 0). Tolerance:
    the float32 Hessian sums n = 64 products per entry (relative error ≲ 64·eps ≈ 8e-6
    each) and its eigenvalues move by at most d·max|error| (d ≤ 24): rtol 1e-4."""
    cfg = cj.ExperimentConfig(
        task=task, num_devices=4, num_samples=64, num_features=8, num_classes=classes, data_seed=3
    )
    lhat = reference.smoothness(cfg)
    dim = 8 if task != "softmax" else 8 * classes
    at_zero = _hessian_eigs(cfg, np.zeros(dim))[-1]
    if tight_at_zero:
        np.testing.assert_allclose(at_zero, lhat, rtol=1e-4)
    else:
        assert at_zero < lhat * (1 + 1e-4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert _hessian_eigs(cfg, rng.normal(size=dim))[-1] <= lhat * (1 + 1e-4)


def test_smoothness_of_linreg_equals_numpy_and_refuses_networks():
    cfg = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=64, num_features=8, data_seed=5)
    ds = truncate_to_multiple(data_lib.load_dataset(cfg), 4)
    x = ds.x_train.astype(np.float64)
    expected = np.linalg.eigvalsh(x.T @ x / x.shape[0])[-1]
    assert reference.smoothness(cfg) == pytest.approx(expected, rel=1e-12)  # both float64, same data
    with pytest.raises(cj.ConfigError, match="task='mlp' has no computable smoothness"):
        reference.smoothness(cj.ExperimentConfig(task="mlp", num_devices=4, num_samples=64))


def test_log_grid_and_lr_grid():
    assert log_grid(1.0, below=2, above=1) == [0.25, 0.5, 1.0, 2.0]
    assert log_grid(3.0, below=1, above=1, factor=10) == [0.3, 3.0, 30.0]
    cfg = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=64, num_features=8)
    grid = tuning.lr_grid(cfg)
    inv = 1 / reference.smoothness(cfg)
    assert len(grid) >= 8 and grid == sorted(grid)
    assert grid[6] == pytest.approx(inv, rel=1e-3)  # 4 significant digits
    assert grid[0] == pytest.approx(inv / 64, rel=1e-3) and grid[-1] == pytest.approx(4 * inv, rel=1e-3)
    assert LogGrid().values(cfg) == grid
    for bad in ({"below": -1}, {"factor": 1.0}, {"center": -2.0}):
        with pytest.raises(cj.ConfigError, match="log grid"):
            log_grid(**{"center": 1.0, **bad})
    with pytest.raises(cj.ConfigError, match="center='1/M'"):
        LogGrid(center="1/M").values(cfg)


# ------------------------------------------------------------------ grids


def test_tuned_grid_is_validated_at_construction(small_base):
    ok = {"tune": {"lr": [0.1, 0.2]}, "tuning_seeds": [100]}
    g = cj.Grid(base=small_base(), axes={"seed": [0, 1]}, **ok)
    assert g.tuning.seed_fields == ("seed",) and len(g) == 2
    with pytest.raises(cj.ConfigError, match="run it with cj.tune"):
        cj.sweep(g)  # before anything compiles: the choices are not known yet
    cases = [
        ({"tune": {"compressor": ["topk", "sign"]}, "tuning_seeds": [9]}, "must be dynamic"),
        ({"tune": {"seed": [1, 2]}, "tuning_seeds": [9]}, "must be dynamic"),
        ({"tune": {"lr": [0.1, 0.2]}, "axes": {"lr": [0.3]}, "tuning_seeds": [9]}, "both tuned and varied"),
        ({"tune": {"lr": [0.1]}, "tuning_seeds": [9]}, "at least two values"),
        ({"tune": {"lr": [0.1, 0.1]}, "tuning_seeds": [9]}, "twice"),
        ({"tune": {"lr": [0.1, 0.2]}}, "needs tuning_seeds"),
        ({"tuning_seeds": [9]}, "without tune="),
        (
            {"tune": {"lr": [0.1, 0.2]}, "tuning_seeds": [9], "criterion": "best"},
            "criterion='best' is unknown",
        ),
        ({"tune": {"lr": [0.1, 0.2]}, "tuning_seeds": [9], "extend_edges": -1}, "extend_edges=-1"),
        ({"tune": {"lr": [0.1, -0.2]}, "tuning_seeds": [9]}, "candidate -0.2"),
        ({"tune": {"momentum": [0.5, 1.5]}, "tuning_seeds": [9]}, "candidate 1.5"),
        (
            {"tune": {"lr": [0.1, 0.2]}, "tuning_seeds": [1, 7]},
            r"overlap the reported seed values \[0, 1\] at \[1\]",
        ),
        ({"tune": {"lr": [0.1, 0.2]}, "tuning_seeds": [-1]}, "integers >= 0"),
    ]
    for kw, match in cases:
        axes = {"seed": [0, 1], **kw.pop("axes", {})}
        with pytest.raises(cj.ConfigError, match=match):
            cj.Grid(base=small_base(), axes=axes, **kw)
    with pytest.raises(cj.ConfigError, match=r"overlap the reported seed values \[0, 1, 2\] at \[2\]"):
        cj.Grid(base=small_base(seed=50), seeds=range(3), tune={"lr": [0.1, 0.2]}, tuning_seeds=[2])
    with pytest.raises(cj.ConfigError, match="seeds= sets seed and data_seed together"):
        cj.Grid(base=small_base(), seeds=[0, 1], axes={"seed": [3]})


def test_seeds_zip_seed_and_data_seed(small_base):
    g = cj.Grid(base=small_base(), axes={"lr": [0.1, 0.2]}, seeds=[3, 4, 5])
    assert [(c.lr, c.seed, c.data_seed) for _, c in g.configs()] == [
        (lr, s, s) for lr in (0.1, 0.2) for s in (3, 4, 5)
    ]
    assert g.describe()["seeds"] == [3, 4, 5]
    h = g.with_base(small_base(num_devices=2))
    assert [(c.num_devices, c.seed, c.data_seed) for _, c in h.configs()][:2] == [(2, 3, 3), (2, 4, 4)]


# ------------------------------------------------------------------ choosing


def test_planted_best_lr_is_chosen_and_a_diverged_candidate_never():
    """Candidates straddling 1/L: 1/L wins; 3/L diverges in every tuning seed and
    scores +inf; the criterion equals a plain recomputation from the tuning table."""
    x, y = planted_data()
    cands = [c / L_PLANTED for c in (0.25, 0.5, 1.0, 1.5, 3.0)]
    grid = planted_grid(cands)
    res = cj.tune(grid, data=(x, y), progress=False)
    tab = res.tuning.set_index("lr")
    assert tab.index[tab["chosen"]].tolist() == [1 / L_PLANTED]
    assert tab.loc[3 / L_PLANTED, "criterion"] == math.inf and tab.loc[3 / L_PLANTED, "diverged_runs"] == 2
    assert not tab["edge"].any()
    assert set(res["lr"]) == {1 / L_PLANTED} and sorted(set(res["seed"])) == [0, 1]
    # the criterion from scratch: F* by least squares in float64, the gap clipped at
    # tables.GAP_FLOOR·max(F*, 1e-3), the log of the last evaluated step (10% of 5
    # evaluated steps rounds to one), averaged over the two tuning seeds
    stage = cj.sweep(
        cj.Grid(
            base=grid.base, axes={"lr": cands[:4]}, zip_axes={"seed": [100, 101], "data_seed": [100, 101]}
        ),
        data=(x, y),
        progress=False,
    )
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    theta = np.linalg.lstsq(x64, y64, rcond=None)[0]
    f_star = 0.5 * np.mean((x64 @ theta - y64) ** 2)
    floor = tables.GAP_FLOOR * max(f_star, 1e-3)
    for lr, runs in stage.groupby("lr"):
        last = runs[runs.step == runs.step.max()].loss.to_numpy(np.float64)
        expected = np.mean(np.log(np.maximum(last - f_star, floor)))
        # F* here and in tables.optimum: the same float64 least squares (to 1e-12)
        assert tab.loc[lr, "criterion"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # the reported rows are the chosen configuration's: they equal a sweep of it alone,
    # which runs the same program at the same width in this process (bit for bit; a
    # lone cj.run agrees only up to float reassociation, README "Same rows ...")
    cfg = grid.base.replace(lr=1 / L_PLANTED, seed=1, data_seed=1)
    one = cj.sweep(cj.Grid(base=cfg, axes={"seed": [1]}), data=(x, y), progress=False).sort_values("step")
    rows = res[res.seed == 1].sort_values("step")
    assert len(rows) == len(one) > 1
    np.testing.assert_array_equal(rows.loss.to_numpy(), one.loss.to_numpy())


def test_edge_is_flagged_and_extended():
    """Candidates all below 1/L: the largest wins and sits on the edge. One extension
    round adds 1/L (which wins, again on the edge); a second adds 2/L (which does not
    contract), leaving 1/L chosen inside the candidates."""
    x, y = planted_data(seed=1)
    cands = [0.125 / L_PLANTED, 0.25 / L_PLANTED, 0.5 / L_PLANTED]
    known = tuning.RowCache()
    flagged = cj.tune(planted_grid(cands), data=(x, y), progress=False, known=known)
    chosen = flagged.tuning[flagged.tuning.chosen]
    assert chosen.lr.tolist() == [0.5 / L_PLANTED] and chosen.edge.all()
    assert chosen.edge_fields.tolist() == ["lr at its highest candidate"] and chosen.extended.tolist() == [""]
    one = cj.tune(planted_grid(cands, extend_edges=True), data=(x, y), progress=False)
    t1 = one.tuning
    assert t1[t1["round"] == 1].lr.tolist() == [1 / L_PLANTED]
    assert t1[t1.chosen].lr.tolist() == [1 / L_PLANTED] and t1[t1.chosen].edge.all()
    assert "lr extended one step above to 0.5 (round 1)" in t1.extended.iloc[0]
    two = cj.tune(planted_grid(cands, extend_edges=2), data=(x, y), progress=False)
    t2 = two.tuning
    assert t2.sort_values("lr").lr.tolist() == [c / L_PLANTED for c in (0.125, 0.25, 0.5, 1, 2)]
    assert t2[t2.chosen].lr.tolist() == [1 / L_PLANTED] and not t2.edge.any()
    assert set(two["lr"]) == {1 / L_PLANTED}
    # 2/L: |1 − 2| = 1, the error does not shrink: worse than every contracting candidate
    assert t2.set_index("lr").criterion.idxmax() == 2 / L_PLANTED


def test_extension_steps():
    assert tuning._beyond([0.1, 0.2, 0.4], "highest") == (0.8, None)
    assert tuning._beyond([0.1, 0.2, 0.4], "lowest") == (0.05, None)
    assert tuning._beyond([10, 20, 40], "highest") == (80, None)
    assert tuning._beyond([2, 3], "lowest") == (1, None)  # 2·2/3 rounds to 1
    assert tuning._beyond([1, 2], "lowest") == (0, None)  # 1·1/2 rounds to 0 (banker's rounding)
    assert tuning._beyond([0.0, 0.5, 0.9], "lowest")[0] is None  # no geometric step from 0
    assert tuning._beyond([-1.0, 1.0], "lowest")[0] is None


def test_an_edge_that_cannot_be_extended_is_said(small_base):
    """momentum [0, 0.5, 0.9]: extending above 0.9 gives 1.62 (momentum must be < 1):
    the cell keeps its edge flag and the note says why it was not extended."""
    grid = cj.Grid(
        base=small_base(steps=4),
        axes={"seed": [0]},
        tune={"momentum": [0.0, 0.5, 0.9]},
        tuning_seeds=[7],
        criterion=lambda rows: -float(rows["momentum"].iloc[0]),  # the largest momentum wins
        extend_edges=True,
    )
    res = cj.tune(grid, progress=False)
    chosen = res.tuning[res.tuning.chosen]
    assert chosen.momentum.tolist() == [0.9] and chosen.edge.all()
    assert "momentum not extended" in chosen.note.iloc[0] and "momentum=1.62" in chosen.note.iloc[0]
    assert set(res.tuning["round"]) == {0}


def test_seeds_are_disjoint_and_reported_rows_never_use_tuning_seeds(tmp_path, small_base):
    """Both with seeds= (seed and data_seed from the tuning seeds) and with a seed axis
    (the cell's data_seed kept): the tuning tables hold only tuning seeds, the reported
    table only the grid's seeds, and the cells are per straggler_prob."""
    for kw, tied in (
        ({"seeds": [0, 1]}, True),
        ({"axes": {"seed": [0, 1], "straggler_prob": [0.1, 0.3]}}, False),
    ):
        axes = kw.pop("axes", {"straggler_prob": [0.1, 0.3]})
        grid = cj.Grid(
            base=small_base(data_seed=4, steps=4),
            axes={"preset": ["coco-ef"], **axes},
            tune={"lr": [0.05, 0.1]},
            tuning_seeds=[10, 11],
            **kw,
        )
        out = tmp_path / f"tied{tied}"
        res = cj.tune(grid, out=out, progress=False)
        stage = cj.load_results(out / "tuning")
        assert set(stage.seed) == {10, 11} and set(res.seed) == {0, 1}
        assert set(stage.data_seed) == ({10, 11} if tied else {4})
        assert set(res.data_seed) == ({0, 1} if tied else {4})
        tab = cj.load_tuning(out)
        assert tab.cell.nunique() == 2 and len(tab) == 4 and tab.groupby("cell").chosen.sum().eq(1).all()
        assert json.loads(tab.tuning_seeds.iloc[0]) == [10, 11] and "seed" not in tab
        for (method, p), rows in res.groupby(["method", "straggler_prob"]):
            pick = tab[(tab.method == method) & (tab.straggler_prob == p) & tab.chosen].lr.tolist()
            assert set(rows.lr) == set(pick)
        side = json.loads((out / "results.json").read_text())["tuning"]
        assert side["cells"] == 2 and side["tuning_seeds"] == [10, 11] and side["reported_seeds"] == [0, 1]
        assert (
            side["criterion"]["name"] == "tail_log_gap"
            and "log(F(θ) − F*)" in side["criterion"]["definition"]
        )


def test_yaml_and_python_give_the_same_result(tmp_path):
    spec = tmp_path / "tuned.yaml"
    spec.write_text(
        "name: tuned\n"
        "base: {preset: gd, task: linreg, num_devices: 4, num_samples: 64, num_test: 16, num_features: 8,"
        " steps: 6, eval_every: 2}\n"
        "axes: {straggler_prob: [0.2]}\n"
        "seeds: [0, 1]\n"
        "tune:\n"
        "  lr: {log_grid: {center: 1/L, below: 2, above: 1}}\n"
        "tuning_seeds: [100]\n"
        "criterion: tail_loss\n"
        "extend_edges: true\n"
    )
    from_yaml = load_grid_file(spec)
    base = cj.ExperimentConfig(
        task="linreg", num_devices=4, num_samples=64, num_test=16, num_features=8, steps=6, eval_every=2
    )
    from_python = cj.Grid(
        base={"preset": "gd", **{k: getattr(base, k) for k in ("task", "num_devices", "num_samples", "num_test")},
              "num_features": 8, "steps": 6, "eval_every": 2},
        axes={"straggler_prob": [0.2]},
        seeds=[0, 1],
        tune={"lr": LogGrid(center="1/L", below=2, above=1)},
        tuning_seeds=[100],
        criterion="tail_loss",
        extend_edges=True,
        name="tuned",
    )  # fmt: skip
    assert from_yaml.describe() == from_python.describe()
    assert from_yaml.reported_configs() == from_python.reported_configs()
    a = cj.tune(from_yaml, progress=False)
    b = cj.tune(from_python, progress=False)
    assert a.tuning.equals(b.tuning)
    assert a.drop(columns=[]).equals(b.drop(columns=[]))


def test_a_killed_tuning_sweep_resumes(tmp_path, small_base, monkeypatch):
    """Stopped between the tuning stage and the reported stage, the same call computes
    only the reported runs, and its tables equal an uninterrupted run's."""
    grid = cj.Grid(base=small_base(steps=4), seeds=[0, 1], tune={"lr": [0.05, 0.1, 0.2]}, tuning_seeds=[9])
    out = tmp_path / "tuned"
    real = tuning._reported_grid

    class Killed(Exception):
        """A kill between the stages (pytest itself reacts to KeyboardInterrupt)."""

    def interrupted(*args):
        raise Killed

    monkeypatch.setattr(tuning, "_reported_grid", interrupted)
    with pytest.raises(Killed):
        cj.tune(grid, out=out, progress=False)
    monkeypatch.setattr(tuning, "_reported_grid", real)
    assert tuning.out_status(grid, out) == "resume" and (out / "tuning" / "results.parquet").exists()
    res = cj.tune(grid, out=out, progress=False)
    assert (
        res.stage_stats["tuning"][0].computed_configs == 0
        and res.stage_stats["reported"].computed_configs == 2
    )
    assert tuning.out_status(grid, out) == "complete"
    clean = cj.tune(grid, progress=False)
    assert res.tuning.equals(clean.tuning)
    assert cj.load_results(out).drop(columns=[]).equals(clean)
    again = cj.tune(grid, out=out, progress=False)
    assert again.stats.computed_configs == 0
    # a directory holding an untuned sweep is refused before any tuning run
    plain = tmp_path / "plain"
    cj.sweep(cj.Grid(base=small_base(steps=4), axes={"seed": [0]}), out=plain, progress=False)
    with pytest.raises(cj.ConfigError, match="not a tuned grid's"):
        cj.tune(grid, out=plain, progress=False)
    assert not (plain / "tuning").exists()


def test_any_dynamic_field_can_be_tuned(small_base):
    """diana_alpha on gc-diana and lr_decay_steps (an integer) with a schedule: the
    candidates share one program per static group and the choice is one of them."""
    grid = cj.Grid(
        base=small_base(steps=6),
        axes={"preset": ["gc-diana"]},
        seeds=[0],
        tune={"diana_alpha": [0.1, 0.5], "lr_decay_steps": [2, 8]},
        tuning_seeds=[5, 6],
    )
    res = cj.tune(grid, progress=False)
    assert len(res.tuning) == 4 and res.tuning.chosen.sum() == 1
    pick = res.tuning[res.tuning.chosen].iloc[0]
    assert set(res.diana_alpha) == {pick.diana_alpha} and set(res.lr_decay_steps) == {pick.lr_decay_steps}
    assert res.stage_stats["tuning"][0].num_configs == 8


def test_cli_dry_run_shows_both_stages(tmp_path, capsys):
    from coco_jax.cache import CompileCounter
    from coco_jax.cli import main

    spec = tmp_path / "tuned.yaml"
    spec.write_text(
        "base: {task: linreg, num_devices: 4, num_samples: 64, num_test: 16, num_features: 8, steps: 4}\n"
        "axes: {preset: [coco-ef], straggler_prob: [0.1, 0.2]}\n"
        "seeds: [0]\n"
        "tune: {lr: [0.05, 0.1, 0.2]}\n"
        "tuning_seeds: [100]\n"
    )
    out = tmp_path / "res"
    with CompileCounter() as cc:
        assert main(["sweep", str(spec), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert cc.count == 0 and not out.exists()
    assert (
        "tuning stage -> " in text
        and "2 cells x 3 candidates (lr) x 1 tuning seeds = 6 configurations" in text
    )
    assert "reported stage -> " in text and "2 configurations at the chosen values" in text
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert len(cj.load_tuning(out)) == 6 and len(cj.load_results(out / "tuning")) == 6 * 5  # steps 0..4


def test_a_tuned_experiment_runs_reports_its_choices_and_redraws(tmp_path):
    """An experiment module with a tuned grid: `coco-jax run` tunes, reports the chosen
    lr in the final-metrics table and the tuning in the grid block, accepts a field
    override (the tuning follows the new base), and `coco-jax plot` redraws it."""
    from coco_jax.experiment import plot_directory, run_experiment

    module = tmp_path / "tuned_exp.py"
    module.write_text(
        '"""A tuned study (test)."""\n'
        "import coco_jax as cj\n"
        "NAME = 'tuned_exp'\n"
        "def grid(quick: bool = False):\n"
        "    base = cj.ExperimentConfig(task='linreg', num_devices=4, num_samples=64, num_test=16,\n"
        "                               num_features=8, steps=4, eval_every=2)\n"
        "    return cj.Grid(base=base, seeds=[0, 1], tune={'lr': [0.05, 0.2]}, tuning_seeds=[50])\n"
    )
    out = tmp_path / "out"
    assert run_experiment(module, out=out, progress=False, overrides={"straggler_prob": 0.3}) == 0
    text = (out / "report.md").read_text()
    table = text.split("Final metrics")[1]
    chosen = cj.load_tuning(out).query("chosen").lr.item()
    head, first = table.splitlines()[2], table.splitlines()[4]
    assert "| lr |" in head and "data_seed" not in head  # a seed's data is pooled with it
    assert f"| {chosen:g} |" in first and first.endswith("| 2 |")  # both seeds in one row
    assert "tuned per cell on tuning seeds 50" in text and "criterion tail_log_gap" in text
    assert set(cj.load_results(out).straggler_prob) == {0.3} and set(cj.load_results(out).lr) == {chosen}
    meta = json.loads((out / "experiment.json").read_text())["parts"]["tuned_exp"]
    assert meta["tuning_configs"] == 2 and meta["computed"] == 4
    assert run_experiment(module, out=out, progress=False, overrides={"straggler_prob": 0.3}) == 0
    assert json.loads((out / "experiment.json").read_text())["parts"]["tuned_exp"]["computed"] == 0
    plot_directory(out)


def test_the_readme_grid_file_declares_its_tuning():
    """experiments/grids/tuned_lr.yaml (the README's example): 6 cells, 9 candidates
    around 1/L̂ of its base data, seeds and tuning seeds as documented."""
    grid = load_grid_file(tuning_root() / "experiments" / "grids" / "tuned_lr.yaml")
    tn = grid.tuning
    assert len(grid) == 18 and len(tuning._cells(grid)) == 6 and tn.seeds == (100, 101)
    lhat = reference.smoothness(grid.base)
    assert tn.candidates()["lr"][6] == pytest.approx(1 / lhat, rel=1e-3) and len(tn.candidates()["lr"]) == 9
    assert tn.extend_edges == 1 and tn.seed_fields == ("seed", "data_seed")


def tuning_root():
    import pathlib

    return pathlib.Path(__file__).resolve().parent.parent
