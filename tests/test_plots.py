"""Figure functions on synthetic results tables (no sweep, no compilation)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import gamma
from matplotlib.image import AxesImage

from coco_jax import plots, results, tables, testing
from coco_jax.report import final_table


def data_lines(fig):
    """Lines drawn with a label (curves, not helper lines), over all axes."""
    out = []
    for ax in fig.axes:
        out += [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    return out


def legend_labels(fig):
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


@pytest.fixture(scope="module")
def table():
    return testing.synthetic_results(
        methods=("coco-ef", "gc", "gc-compressed", "ef-uncoded", "gd"), straggler_probs=(0.1, 0.2, 0.3)
    )


def test_synthetic_table_has_the_sweep_columns(table):
    from coco_jax.config import FIELD_NAMES
    from coco_jax.results import HISTORY_KEYS

    for col in (*FIELD_NAMES, "method", "config_id", "bits_per_message", "diverged_step"):
        assert col in table
    for key in HISTORY_KEYS:
        if key not in ("accuracy", "test_accuracy"):
            assert key in table


def test_curves_figure_one_curve_per_method_per_panel(table, tmp_path):
    sub = table[table.straggler_prob == 0.2]
    fig = plots.curves_figure(sub, [("step", "loss"), ("bits", "loss"), ("time", "loss")])
    methods = set(sub.method)
    for ax in fig.axes:
        labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert sorted(labels) == sorted(methods)  # one curve per method, no duplicates
        assert ax.get_xlabel() and ax.get_ylabel()
    assert sorted(legend_labels(fig)) == sorted(methods)  # one shared legend
    assert "band: 95% CI of the mean (Student t)" in fig.legends[0].get_title().get_text()
    assert "3 seeds" in fig.legends[0].get_title().get_text()
    paths = plots.save_figure(fig, tmp_path, "curves")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_units_and_log_scale(table):
    fig = plots.curves_figure(table[table.straggler_prob == 0.2], [("step", "loss"), ("time", "loss")])
    ax0, ax1 = fig.axes
    assert ax0.get_xlabel() == "Iteration"
    assert "(time units)" in ax1.get_xlabel()
    # a linreg table: the loss is plotted as the optimality gap against F* of the data
    assert "F*" in ax0.get_ylabel()
    # linear axis for a metric within one decade, log for one spanning decades
    narrow = table.assign(test_loss=1.0 + 0.1 * np.sin(table.step))
    fig2 = plots.curves_figure(narrow, [("step", "test_loss")], logy="auto", over=("seed", "straggler_prob"))
    assert fig2.axes[0].get_yscale() == "linear"
    wide = table.assign(test_loss=10.0 ** (-table.step / 10.0))
    fig3 = plots.curves_figure(wide, [("step", "test_loss")], over=("seed", "straggler_prob"))
    assert fig3.axes[0].get_yscale() == "log"


def test_fixed_style_per_method_in_every_figure(table):
    a = plots.curves_figure(table[table.straggler_prob == 0.1], [("step", "loss")])
    b = plots.finals_figure(
        [{"finals": tables.final_values(table, "loss"), "x": "straggler_prob", "y": "loss"}]
    )
    for fig_lines in (data_lines(a), data_lines(b)):
        for ln in fig_lines:
            st = plots.style(ln.get_label())
            assert ln.get_color() == st["color"]
            assert ln.get_marker() == st["marker"]
    assert plots.style("coco-ef") == plots.style("coco-ef")
    assert plots.style("some custom label") == plots.style("some custom label")  # stable hash
    assert plots.style("topk + no EF")["linestyle"] == "--"


def test_diverged_runs_are_dropped_and_named(tmp_path):
    df = testing.synthetic_results(methods=("coco-ef", "gc", "gc-unbiased"), diverge=("gc-unbiased",))
    fig = plots.curves_figure(df, [("step", "loss"), ("bits", "loss")])
    labels = legend_labels(fig)
    assert "gc-unbiased (diverged)" in labels
    assert "diverged runs dropped: gc-unbiased 3/3" in fig.legends[0].get_title().get_text()
    for ln in data_lines(fig):
        assert np.all(np.isfinite(np.asarray(ln.get_ydata(), float)))
    plots.save_figure(fig, tmp_path, "div")  # draws despite inf/NaN in the table
    # one seed of three diverges: the curve stays, the note counts it
    df2 = testing.synthetic_results(methods=("coco-ef", "gc"))
    bad = (df2.method == "gc") & (df2.seed == 1) & (df2.step >= 25)
    df2.loc[bad, "loss"] = np.nan
    df2.loc[bad, "diverged"] = True
    fig2 = plots.curves_figure(df2, [("step", "loss")])
    assert "gc 1/3" in fig2.legends[0].get_title().get_text()
    assert sorted(ln.get_label() for ln in data_lines(fig2)) == ["coco-ef", "gc"]


def test_styles_follow_the_label_order_and_labels_sort_by_it():
    assert tuple(plots.STYLES) == tables.LABEL_ORDER
    assert tables.ordered_labels(["x", "gc", "topk", "coco-ef", "a"]) == ["coco-ef", "gc", "topk", "x", "a"]


def test_tables_and_report_do_not_import_matplotlib(subprocess_env):
    """Reports and table helpers stay free of the plotting stack."""
    code = "import sys, coco_jax.report, coco_jax.tables; print('matplotlib' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_finite_blow_up_counts_as_divergence():
    df = testing.synthetic_results(methods=("coco-ef", "gc"), seeds=2)
    df.loc[(df.method == "gc") & (df.step == df.step.max()), "loss"] = 1e9
    assert len(tables.diverged_runs(df)) == 2


def test_final_values_and_steps_to_target(table):
    fin = tables.final_values(table, "loss")
    assert len(fin) == table.config_id.nunique()
    last = table.sort_values("step").groupby("config_id").loss.last()
    np.testing.assert_array_equal(fin.set_index("config_id").loc[last.index, "final"], last)  # copied values
    hits = tables.steps_to_target(table, "loss", 0.1)
    assert ((hits.final > 0) | hits.final.isna()).all()
    never = tables.steps_to_target(table, "loss", -1.0)
    assert never.final.isna().all()


def test_finals_figure_with_ci_and_missing_points(table, tmp_path):
    hits = tables.steps_to_target(table, "loss", 0.02)
    fig = plots.finals_figure(
        [
            {"finals": tables.final_values(table, "loss"), "x": "straggler_prob", "y": "loss"},
            {
                "finals": hits,
                "x": "straggler_prob",
                "y": "step",
                "missing_note": "missing: target not reached",
                "logy": False,
            },
        ],
        band="ci95",
    )
    title = fig.legends[0].get_title().get_text()
    assert "95% CI" in title
    for ax in fig.axes:
        assert ax.get_xlabel() == "Straggling probability p"
    assert sorted(legend_labels(fig)) == sorted(set(table.method))
    plots.save_figure(fig, tmp_path, "finals")


def test_mixed_curves_are_refused(table):
    # two straggling probabilities in one curve would silently average them
    with pytest.raises(ValueError, match="straggler_prob"):
        plots.curves_figure(table, [("step", "loss")])


def test_category_and_heatmap_figures(table, tmp_path):
    fin = tables.final_values(table[table.straggler_prob == 0.2], "loss")
    fig = plots.category_figure(fin, "loss")
    assert sorted(ln.get_label() for ln in data_lines(fig)) == sorted(set(table.method))
    plots.save_figure(fig, tmp_path, "cat")
    values = pd.DataFrame([[-0.3, 0.1], [np.nan, 0.2]], index=[0.1, 0.2], columns=[0.05, 0.1])
    hm = plots.heatmap_figure(values, xlabel="k/d", ylabel="p", colorbar_label="log ratio", note="a note")
    images = [a for ax in hm.axes for a in ax.get_children() if isinstance(a, AxesImage)]
    assert images
    texts = [t.get_text() for t in hm.axes[0].texts]
    assert "-0.30" in texts and "n/a" in texts
    assert hm.axes[0].get_xlabel() == "k/d"
    paths = plots.save_figure(hm, tmp_path, "heat")
    assert all(p.exists() for p in paths)


def test_saving_is_deterministic(table, tmp_path):
    def draw(d):
        fig = plots.curves_figure(table[table.straggler_prob == 0.2], [("step", "loss")])
        return plots.save_figure(fig, d, "same")

    a = draw(tmp_path / "a")
    b = draw(tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()


def test_optimum_matches_least_squares():
    from coco_jax import data as data_lib
    from coco_jax.config import ExperimentConfig

    cfg = ExperimentConfig(task="linreg", num_samples=256, num_features=8, num_devices=8)
    ds = data_lib.load_dataset(cfg)
    x, y = ds.x_train.astype(float), ds.y_train.astype(float)
    theta = np.linalg.lstsq(x, y, rcond=None)[0]
    f_star = 0.5 * np.mean((x @ theta - y) ** 2)
    # two float64 least-squares solves: at the minimum F moves only to second order in the
    # solution's error; evaluating F rounds within gamma_(n+d+4) (float64) of its terms
    terms = 0.5 * np.mean((np.abs(x) @ np.abs(theta) + np.abs(y)) ** 2)
    assert abs(tables.optimum(cfg) - f_star) <= 2 * gamma(len(y) + x.shape[1] + 4, np.float64) * terms
    assert tables.optimum(cfg.replace(task="mlp")) is None
    # logreg: L-BFGS reaches a stationary point
    f_star = tables.optimum(cfg.replace(task="logreg"))
    assert 0 < f_star < np.log(2)


def test_config_from_row_round_trips(table):
    row = table.iloc[0]
    cfg = results.config_from_row(row)
    assert cfg.task == row.task and cfg.hidden_sizes == (32,) and cfg.seed == row.seed


def test_final_table_mean_and_ci(table):
    t, _note = final_table(table.assign(part="x"))
    assert set(t["Method"]) == set(table.method)
    assert "straggler_prob" in t.columns  # the varied axis labels rows
    assert t["Runs"].eq("3").all()
    assert all("±" in v for v in t["Final F − F*"])
    # the ± is the half-width of the 95% t-interval of the seeds' final values
    df, y = tables.with_gap(table[(table.method == "gc") & (table.straggler_prob == 0.1)])
    finals = df[df.step == df.step.max()][y].to_numpy(np.float64)
    half = tables.t_interval(finals).half
    row = t[(t.Method == "gc") & (t.straggler_prob == 0.1)].iloc[0]
    assert row["Final F − F*"] == f"{tables.num(finals.mean(), 3)} ± {tables.num(half, 2)}"


def test_one_divergence_rule_for_table_and_legend():
    """A finite blow-up (final loss > 10x the initial, as qsgd + EF at few levels) is
    diverged for the table, the legend and the sentences alike, and the legend of a
    final-value panel says at which x the runs were dropped."""
    df = testing.synthetic_results(methods=("coco-ef", "gc"), straggler_probs=(0.1, 0.3), seeds=3)
    blown = (df.method == "gc") & (df.straggler_prob == 0.3) & (df.step == df.step.max())
    df.loc[blown, "loss"] = 3e3  # finite, but 6000x the initial loss
    t, _ = final_table(df.assign(part="x"))
    row = t[(t.Method == "gc") & (t.straggler_prob == 0.3)].iloc[0]
    assert row["Runs"] == "3 (3 diverged, left out)" and row["Final F − F*"] == "–"
    gapped, y = tables.with_gap(df)
    fin = tables.final_values(gapped, y)
    fig = plots.finals_figure([{"finals": fin, "x": "straggler_prob", "y": y}])
    assert "diverged runs dropped: gc 3/6 (straggler prob 0.3: 3/3)" in fig.legends[0].get_title().get_text()
    means = tables.final_means(gapped, y, by=("method", "straggler_prob"))
    assert means.set_index(["method", "straggler_prob"]).loc[("gc", 0.3), "diverged"] == 3


def test_a_gap_at_the_float_floor_is_never_printed_as_plus_minus_zero():
    df = testing.synthetic_results(methods=("gd",), seeds=3)
    f_star = tables.optimum(df.iloc[0])
    df.loc[df.step == df.step.max(), "loss"] = f_star  # every run at the optimum: the gap is clipped
    t, _ = final_table(df.assign(part="x"))
    floor = tables.GAP_FLOOR * max(f_star, 1e-3)
    assert t["Final F − F*"].tolist() == [f"at the float floor (≤ {tables.num(floor)})"]
    assert "± 0" not in t.to_string()
    assert tables.value_text([2.0, 2.0, 2.0]) == "2 (all 3 equal)"
    assert tables.value_text([1e-7, 2e-5, 3e-5], floor=1e-7).endswith("(1 of 3 at the float floor)")
    assert tables.value_text([0.5]) == "0.5 (1 run)" and tables.value_text([np.nan]) == "–"


def test_band_is_the_t_interval_and_one_seed_has_none(table):
    """The shaded band of a curve is the 95% t-interval of the mean over seeds at each
    step (checked against scipy's interval); with one seed the legend says no band."""
    from scipy import stats

    sub = table[(table.straggler_prob == 0.2) & (table.method == "gc")]
    fig = plots.curves_figure(sub, [("step", "grad_norm_sq")], logy=False)
    band_y = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    wide = sub.pivot(index="seed", columns="step", values="grad_norm_sq").to_numpy(np.float64)
    lo, hi = stats.t.interval(0.95, wide.shape[0] - 1, loc=wide.mean(0), scale=stats.sem(wide, axis=0))
    _, lo_p, hi_p = plots._spread(wide, "ci95")
    # float64 on both sides, the same formula up to reassociation: rtol 1e-12
    np.testing.assert_allclose(np.c_[lo_p, hi_p], np.c_[lo, hi], rtol=1e-12)
    for v in np.r_[lo, hi]:  # the drawn polygon runs along both edges
        assert np.min(np.abs(band_y - v)) <= 1e-9 * abs(v)
    one = plots.curves_figure(sub[sub.seed == 0], [("step", "loss")])
    assert "Mean over 1 seed; no band (one seed)" in one.legends[0].get_title().get_text()


def test_heatmap_title_is_not_clipped():
    values = pd.DataFrame([[0.1, 0.2], [0.3, 0.4]], index=[0.1, 0.2], columns=[0.05, 0.1])
    title = (
        "log10 of COCO-EF's final gap over the best compressed baseline within ±10% bits per message, " * 2
    )
    fig = plots.heatmap_figure(values, xlabel="k/d", ylabel="p", colorbar_label="log ratio", title=title)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert fig._suptitle.get_text().replace("\n", " ") == title.strip()
