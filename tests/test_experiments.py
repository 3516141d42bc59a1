"""Experiment modules: their grids build (the full variants at the COCO-EF paper's scale
and settings), a tiny variant of each runs, draws its figures (one curve per compared
label, labelled axes, honest dataset names) and computes its observations, the report
renders them, and the `run` / `plot` / `list` commands work end to end."""

import json
import pathlib
import re
import textwrap

import numpy as np
import pytest
from matplotlib.image import AxesImage

import coco_jax as cj
from coco_jax import experiment as ex
from coco_jax.cli import main
from coco_jax.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = (
    "methods",
    "straggler_prob",
    "compression",
    "redundancy",
    "compressors",
    "heatmap",
    "theory",
    "neural",
    "heterogeneity",
)


def load(name):
    return ex.load_experiment(ROOT / "experiments" / f"{name}.py")


def tiny(grid, steps=4):
    """A test-only shrink of a grid: few steps, a small synthetic dataset or network, one seed, the
    first two values of every categorical axis (presets, compressors, codes), one value
    of every numeric axis (the base's own value when the axis holds it) and the first
    two positions of every zip block. Structure (parts, exclusions, zips) is kept."""
    base = grid.base.replace(steps=steps, eval_every=2, hidden_sizes=(8,), cnn_channels=(2,))
    if base.batch_size is not None:
        base = base.replace(batch_size=2)
    if base.dataset == "synthetic":
        base = base.replace(num_samples=16 * base.num_devices, num_test=64)
    axes = {}
    for name, values in grid.axes.items():
        values = list(values)
        if name == "seed":
            axes[name] = values[:1]
        elif all(isinstance(v, str) or v is None for v in values):
            axes[name] = values[: 1 if base.task == "cnn" else 2]  # a CNN compiles slowly
        else:
            own = getattr(base, name, None)
            axes[name] = [own] if own in values else values[:1]
    zips = []
    for block in grid.zip_blocks:
        zips.append({k: ([steps] * 2 if k == "steps" else list(v)[:2]) for k, v in block.items()})
    return cj.Grid(base=base, axes=axes, zip_axes=zips or None, exclude=grid.exclude, name=grid.name)


def labelled_lines(ax):
    return [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def check_figure(fig, expected: set | None):
    """Labelled axes; in every panel with curves, one curve per label, no duplicates;
    the figure's legend names exactly the expected labels (when given)."""
    images = [a for ax in fig.axes for a in ax.get_children() if isinstance(a, AxesImage)]
    curves = [ax for ax in fig.axes if labelled_lines(ax)]
    assert images or curves, "a figure with neither curves nor an image"
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel(), "unlabelled x axis"
        assert ax.get_ylabel(), "unlabelled y axis"
    for ax in curves:
        labels = labelled_lines(ax)
        assert len(labels) == len(set(labels)), f"duplicate curves: {labels}"
    if expected is not None and curves:
        legend = {t.get_text().removesuffix(" (diverged)") for lg in fig.legends for t in lg.get_texts()}
        legend = {lb for lb in legend if not lb.startswith("top-k bound")}
        assert legend == expected


def expected_labels(name, df):
    """The labels each experiment's figures compare (tiny grids)."""
    if name == "compressors":
        return set(df.compressor)
    if name == "redundancy":
        return set(df.allocation)
    if name == "compression":
        mod = load("compression").module
        return None if df.empty else {mod.label(r) for _, r in df.iterrows()}
    if name == "heatmap":
        return None
    if name == "methods":
        return None  # its figures compare different labels (methods; the equal-compute control)
    return set(df.method)


# ----------------------------------------------------------------- grids build


@pytest.mark.parametrize("name", [*EXPERIMENTS, "paper"])
def test_module_has_the_contract(name):
    exp = load(name)
    assert exp.name == name
    assert exp.description and "\n" not in exp.description
    doc = exp.doc
    for word in ("Question", "Expected", "Command"):
        assert word in doc, f"{name}: docstring lacks {word}"
    assert f"experiments/{name}.py --quick" in doc


@pytest.mark.parametrize("name", [*EXPERIMENTS, "paper"])
def test_quick_and_full_grids_build(name):
    exp = load(name)
    quick = exp.grids(quick=True)
    full = exp.grids(quick=False)
    assert quick and [n for n, _ in quick] == [n for n, _ in full]
    for (_, gq), (_, gf) in zip(quick, full):
        assert len(gq) >= 1
        assert gq.base.num_devices <= 16
        assert gf.base.num_devices == 100  # the COCO-EF paper's scale
        assert gq.base.steps <= gf.base.steps


def test_paper_composes_every_experiment():
    parts = dict(load("paper").grids(quick=True))
    for name in EXPERIMENTS:
        assert any(p == name or p.startswith(name + "/") for p in parts), name
    assert "methods/linreg" in parts and "methods/mnist" in parts and "straggler_prob" in parts


# The paper's settings (issue 12): which study runs which setting at full scale.
PAPER_SETTINGS = {
    ("methods", "linreg"): ("linreg", "synthetic"),
    ("methods", "mnist"): ("softmax", "mnist"),
    ("methods", "time"): ("linreg", "synthetic"),
    ("straggler_prob", "straggler_prob"): ("linreg", "synthetic"),
    ("compression", "sparsification"): ("linreg", "synthetic"),
    ("compression", "quantization"): ("linreg", "synthetic"),
    ("neural", "mlp"): ("mlp", "mnist"),
}


@pytest.mark.parametrize("key", list(PAPER_SETTINGS), ids=lambda k: "/".join(k))
def test_full_variants_run_the_papers_settings_at_100_devices(key):
    name, part = key
    task, dataset = PAPER_SETTINGS[key]
    full = dict(load(name).grids(quick=False))
    g = full[part]
    assert (g.base.task, g.base.dataset, g.base.num_devices) == (task, dataset, 100)
    for _, cfg in g.configs() if g.tuning is None else g.reported_configs():
        assert cfg.num_devices == 100
    if dataset == "mnist":
        assert g.base.partitioning == "sorted"  # the heterogeneous setting
        assert g.base.data_dir is None  # the packaged 5k subset: 4,000 rows / 100 = 40 per device
    else:
        assert g.base.num_samples == 40 * 100 and 100 <= g.base.num_features <= 500
    quick = dict(load(name).grids(quick=True))[part]
    assert (quick.base.task, quick.base.dataset) == (task, dataset)
    assert quick.base.num_devices <= 16


@pytest.mark.parametrize("name", [*EXPERIMENTS, "paper"])
def test_docstrings_keep_question_and_expectation_but_no_typed_observations(name):
    doc = load(name).doc
    assert "Paper setting" in doc
    assert "Observed" not in doc, f"{name}: observations belong in report.md, computed from the results"
    if name != "paper":
        assert callable(getattr(load(name).module, "observations", None))
    # the MNIST subset is named honestly wherever the docstring names the data
    flat = " ".join(doc.split())  # Markdown joins the docstring's lines
    assert "mnist" not in flat.lower() or "mnist (5k subset)" in flat


# ------------------------------------------------------------ tiny variants run


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_variant_runs_and_draws(name, tmp_path):
    exp = load(name)
    frames = []
    for part, grid in exp.grids(quick=True):
        df = cj.sweep(tiny(grid), progress=False)
        assert df.groupby("config_id").step.max().eq(df.steps.max()).all()
        frames.append(df.assign(part=part))
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    figs = exp.figures(df)
    assert figs
    expected = expected_labels(name, df)
    for fig_name, fig in figs.items():
        check_figure(fig, expected)
        titles = " ".join(
            [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
        )
        if (df.dataset == "mnist").any():
            assert "MNIST" not in titles, f"{fig_name}: the subset must be named 'mnist (5k subset)'"
        if fig_name in ("loss", "accuracy", "accuracy_vs_bits") and (df.dataset == "mnist").any():
            assert "mnist (5k subset)" in titles
        paths = __import__("coco_jax.plots", fromlist=["x"]).save_figure(fig, tmp_path, fig_name)
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)
    sentences = exp.module.observations(df)
    assert sentences and all(isinstance(x, str) and x for x in sentences)
    assert any(re.search(r"\d", x) for x in sentences), "observations carry the numbers of the results"
    assert not any("could not be computed" in x for x in sentences)


# ------------------------------------------------------------- run, plot, list

TINY_MODULE = '''
"""A tiny experiment for the tests.

Question: does the pipeline run? Expected: yes.
Command: coco-jax run {name}.py --quick
"""
import coco_jax as cj
from coco_jax import plots

NAME = "{name}"
DESCRIPTION = "tiny test experiment {name}"


def grid(quick=False):
    base = cj.ExperimentConfig(task="linreg", num_devices=4, num_samples=64, num_test=16, num_features=8,
                               steps=6 if quick else 8, eval_every=2)
    {grids}


def figures(df):
    out = {{}}
    for part in sorted(set(df.part)):
        out["loss_" + part.replace("/", "_")] = plots.curves_figure(
            df[df.part == part], [("step", "loss"), ("bits", "loss")], title=part)
    return out


def observations(df):
    return [f"{{df.config_id.nunique()}} runs of {name} end at loss {{df.loss.iloc[-1]:.3g}}."]
'''

SINGLE = 'return cj.Grid(base=base, axes={"preset": ["coco-ef", "gc"], "seed": range(2)})'
NAMED = (
    'return [cj.Grid(base=base, axes={"preset": ["coco-ef"], "seed": range(2)}, name="one"),\n'
    '            cj.Grid(base=base, axes={"preset": ["gc-compressed"], "seed": range(2)}, name="two")]'
)


def write_module(directory, name, grids):
    path = directory / f"{name}.py"
    path.write_text(TINY_MODULE.format(name=name, grids=grids))
    return path


def figure_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "figures").iterdir())}


def test_run_then_plot_reproduces_the_same_files(tmp_path, capsys):
    mod = write_module(tmp_path, "tinyexp", SINGLE)
    out = tmp_path / "res"
    assert main(["run", str(mod), "--quick", "--out", str(out)]) == 0
    names = {p.name for p in (out / "figures").iterdir()}
    assert names == {"loss_tinyexp.png", "loss_tinyexp.pdf"}
    assert (out / "results.parquet").exists()  # a single grid sweeps into DIR itself
    report = (out / "report.md").read_text()
    assert "![loss_tinyexp](figures/loss_tinyexp.png)" in report
    assert "Final metrics" in report and "±" in report and "coco-ef" in report
    assert "| jax |" in report and "wall time" in report
    assert "## Observed (computed from these results)" in report
    assert re.search(r"- 4 runs of tinyexp end at loss [0-9.e+-]+\.", report)
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["quick"] and meta["experiment"] == "tinyexp" and meta["wall_time_s"]["total"] > 0
    before = figure_bytes(out)
    for p in (out / "figures").iterdir():
        p.unlink()
    assert main(["plot", str(out)]) == 0
    assert figure_bytes(out) == before  # same files, same bytes, no recomputation
    assert "redrew 1 figures" in capsys.readouterr().out


def test_run_resumes_and_refuses_other_experiments(tmp_path):
    mod = write_module(tmp_path, "tinyexp", SINGLE)
    out = tmp_path / "res"
    assert ex.run_experiment(mod, quick=True, out=out, progress=False) == 0
    assert ex.run_experiment(mod, quick=True, out=out, progress=False) == 0
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["parts"]["tinyexp"]["compilations"] == 0  # finished: loaded, not recomputed
    other = write_module(tmp_path, "otherexp", SINGLE)
    with pytest.raises(ConfigError, match="another --out or pass --overwrite"):
        ex.run_experiment(other, quick=True, out=out, progress=False)
    # the full variant is another grid: refused without --overwrite as well
    with pytest.raises(ConfigError):
        ex.run_experiment(mod, quick=False, out=out, progress=False)
    assert ex.run_experiment(mod, quick=False, out=out, overwrite=True, progress=False) == 0
    assert main(["plot", str(tmp_path / "nowhere")]) == 2


# a composite of the tiny modules alpha (SINGLE) and beta (NAMED)
COMBO = textwrap.dedent(
    '''
    """Both tiny experiments. Question: composes? Expected: yes. Command: coco-jax run combo.py"""
    from coco_jax.experiment import compose_figures, compose_grids

    NAME = "combo"
    DESCRIPTION = "alpha and beta"
    PARTS = ("alpha", "beta")


    def grid(quick=False):
        return compose_grids(PARTS, quick, here=__file__)


    def figures(df):
        return compose_figures(PARTS, df, here=__file__)
    '''
)


def test_named_grids_and_composite_report(tmp_path):
    write_module(tmp_path, "alpha", SINGLE)
    write_module(tmp_path, "beta", NAMED)
    (tmp_path / "combo.py").write_text(COMBO)
    out = tmp_path / "res"
    assert ex.run_experiment(tmp_path / "combo.py", quick=True, out=out, progress=False) == 0
    assert (out / "alpha" / "results.parquet").exists()
    assert (out / "beta" / "one" / "results.parquet").exists()
    assert (out / "beta" / "two" / "results.parquet").exists()
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert figs == {"alpha_loss_alpha.png", "beta_loss_one.png", "beta_loss_two.png"}
    report = (out / "report.md").read_text()
    assert "## alpha" in report and "## beta" in report
    assert report.count("### Final metrics") == 2
    # each part's own computed observations, in its own section
    assert report.count("### Observed (computed from these results)") == 2
    assert "runs of alpha end at loss" in report and "runs of beta end at loss" in report
    assert report.index("runs of alpha") < report.index("## beta") < report.index("runs of beta")
    df, _ = ex.load_tables(out)
    assert set(df.part) == {"alpha", "beta/one", "beta/two"}
    assert np.isfinite(df.loss).all()


def test_report_renders_observations_and_survives_a_failing_one(tmp_path):
    """Section.observe (the module's observations) becomes a list under its own
    heading; an observation that raises is reported, and the report is still written."""
    import types

    from coco_jax import report, testing

    df = testing.synthetic_results(seeds=2).assign(part="x")
    exp = types.SimpleNamespace(
        name="x", description="d", doc="", parts=(), path=tmp_path / "x.py", module=None
    )
    ok = report.Section("x", "d", "", {}, df, observe=lambda d: [f"{d.config_id.nunique()} runs here."])
    report.write_report(tmp_path, exp, [ok], {"quick": True})
    text = (tmp_path / "report.md").read_text()
    assert f"## {report.OBSERVED_HEADING}" in text and "- 10 runs here." in text
    bad = report.Section("x", "d", "", {}, df, observe=lambda d: 1 / 0)
    report.write_report(tmp_path, exp, [bad], {"quick": True})
    assert "observations could not be computed: ZeroDivisionError" in (tmp_path / "report.md").read_text()
    none = report.Section("x", "d", "", {}, df)  # no observe, module without observations: no heading
    report.write_report(tmp_path, exp, [none], {"quick": True})
    assert report.OBSERVED_HEADING not in (tmp_path / "report.md").read_text()


def test_observation_helpers():
    from coco_jax import report as rp

    assert [rp.num(v) for v in (0.00172, 0.3, 12.34, 986.2, 2.5e6, float("nan"))] == [
        "1.7e-03",
        "0.3",
        "12",
        "986",
        "2.5e+06",
        "n/a",
    ]
    assert rp.listing({"a": 1.0, "b": 0.001}) == "a (1), b (1.0e-03)"
    assert (rp.compare(1.0, 2.0), rp.compare(2.0, 1.0), rp.compare(1.0, 1.005)) == (
        "below",
        "above",
        "equal to",
    )


def test_list_prints_one_line_per_experiment(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [ln.split()[0] for ln in lines]
    assert set(names) >= {*EXPERIMENTS, "paper"}
    assert all(len(ln.split(None, 1)) == 2 for ln in lines)
    # a description serves both variants (it is `coco-jax list`'s line and the report's title)
    for ln in lines:
        assert "full variant" not in ln and "quick variant" not in ln, ln
    paper = next(ln for ln in lines if ln.split()[0] == "paper")
    assert "100 devices as in the paper; 16 with --quick" in paper


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(ConfigError, match="not found"):
        ex.load_experiment("no_such_experiment")


def test_plot_draws_a_directory_written_by_coco_jax_sweep(tmp_path, monkeypatch):
    mod = write_module(tmp_path, "sweptexp", NAMED)
    monkeypatch.setenv(ex.ENV_DIR, str(tmp_path))
    exp = ex.load_experiment("sweptexp")
    assert exp.path == mod.resolve()
    out = tmp_path / "results" / "sweptexp-quick"
    for part, grid in exp.grids(quick=True):  # what `coco-jax sweep --quick` writes
        cj.sweep(grid, out=out / part, progress=False)
    assert main(["plot", str(out)]) == 0
    assert {p.name for p in (out / "figures").glob("*.png")} == {"loss_one.png", "loss_two.png"}
    assert "coco-jax sweep experiments/sweptexp.py --quick" in (out / "report.md").read_text()


def test_adopted_record_is_one_experiment_json_for_module_and_grid_sweeps():
    """`coco-jax plot` of a sweep directory writes the experiment.json a run would
    have: one builder for sweeps of an experiment module (several parts) and of a grid."""
    env = {"versions": {"jax": "0.x"}, "python": "3.12", "devices": {"platform": "cpu"}, "git": None}
    one = {
        "command": None,
        "invocations": [{"started": "2026-01-02T10:00"}, {"started": "2026-01-01T09:00"}],
        "grid": {"name": "one"},
        "num_configs": 4,
        "total_wall_time_s": 1.234,
        **env,
    }
    two = {"invocations": [{"started": "2026-01-03T08:00"}], "grid": {"name": "two"}, "num_configs": 2,
           "total_wall_time_s": 2.0, "versions": {"jax": "other"}}  # fmt: skip
    rec = ex.adopted_record("exp", "an experiment", "/x/exp.py", True, "coco-jax sweep exp.py --quick",
                            {"one": ("one", one), "two": ("two", two)})  # fmt: skip
    assert list(rec) == [
        "experiment", "description", "module", "quick", "command", "started", "grids", "parts",
        "wall_time_s", "versions", "python", "devices", "git", "status",
    ]  # fmt: skip
    assert rec["command"] == "coco-jax sweep exp.py --quick"  # the first sidecar recorded none
    assert rec["started"] == "2026-01-01T09:00" and rec["wall_time_s"] == {"sweep": 3.23}
    assert rec["grids"] == {"one": {"name": "one"}, "two": {"name": "two"}}
    assert rec["parts"] == {
        "one": {"dir": "one", "configs": 4, "compilations": 0},
        "two": {"dir": "two", "configs": 2, "compilations": 0},
    }
    assert {k: rec[k] for k in env} == env and rec["status"] == "complete"  # the first part's environment
    grid = ex.adopted_record("g", "d", None, False, "cj.sweep(...)", {"g": (".", {**one, "command": "c"})})
    assert (grid["command"], grid["module"], grid["parts"]["g"]["dir"]) == ("c", None, ".")


def test_experiments_share_one_settings_module_and_method_list():
    """experiments/_settings.py is loaded once (`helper_module`) and every study picks
    its methods from its one list, in its order."""
    from coco_jax import testing

    settings = ex.helper_module(ROOT / "experiments" / "methods.py")
    assert all(load(name).module.S is settings for name in EXPERIMENTS)
    assert ex.helper_module(ROOT / "experiments" / "theory.py", "_settings") is settings
    assert load("methods").module.METHODS == settings.METHODS
    assert load("straggler_prob").module.METHODS == [m for m in settings.METHODS if m != "gd"]
    for name in EXPERIMENTS:
        used = set(getattr(load(name).module, "METHODS", ())) | set(
            getattr(load(name).module, "BASELINES", ())
        )
        assert used <= set(settings.METHODS), name
    df, y, what = settings.gap_of(testing.synthetic_results(methods=("coco-ef",), seeds=1))
    assert (y, what) == ("gap", "F − F*") and "gap" in df


# ----------------------------------------- exp-b modules: new module, claims on planted tables


def _planted(methods, **kw):
    """Made-up curves (`testing.synthetic_results`, no F*: the loss decides) where the
    method listed first ends lowest: its floor 1e-3·(1 + i)(1 + p) grows with its index."""
    from coco_jax import testing

    kw = {"seeds": 4, "steps": 400, "eval_every": 50, "task": "mlp", **kw}
    return testing.synthetic_results(methods, **kw)


def _noise_copies(df, source, names):
    """Copies of `source`'s runs relabelled as each of `names`, their last value moved by
    ±0.1% alternating with the seed: no paired interval can exclude 0 on either side."""
    import pandas as pd

    src = df[df.method == source]
    out = [src]
    rng = np.random.default_rng(3)
    for i, name in enumerate(names):
        c = src.assign(method=name, config_id=src["config_id"] + f"-{i}", loss=src["loss"].astype(np.float64))
        last = c.step == c.step.max()
        c.loc[last, "loss"] *= 1 + 1e-3 * np.where(c.loc[last, "seed"] % 2 == 0, 1, -1) * (
            1 + 0.1 * rng.random(last.sum())
        )
        out.append(c)
    return pd.concat(out, ignore_index=True)


def _verdicts(claims):
    return [c.verdict for c in claims]


def test_compression_claims_follow_planted_outcomes():
    claims = load("compression").module.claims
    names = ("coco-ef", "gc-compressed", "gc-unbiased", "ef-uncoded")
    ratios = {"compress_ratios": (0.02, 0.3)}
    holds = claims(_planted(names, **ratios).assign(part="sparsification"))
    assert _verdicts(holds)[:3] == ["holds"] * 3
    assert all("95% CI" in e for c in holds[:3] for e in c.evidence)
    reversed_ = claims(_planted(names[1:] + names[:1], **ratios).assign(part="sparsification"))
    assert _verdicts(reversed_)[:3] == ["contradicted"] * 3
    noise = _noise_copies(_planted(names[:1], **ratios), "coco-ef", names[1:]).assign(part="sparsification")
    assert _verdicts(claims(noise))[:3] == ["inconclusive"] * 3
    assert claims(noise.iloc[:0]) == []  # nothing ran: no claim, no crash


def test_heatmap_claims_follow_planted_outcomes():
    mod = load("heatmap").module
    kw = {"straggler_probs": (0.1, 0.3), "compress_ratios": (0.1, 0.3)}
    names = ("coco-ef", "gc-compressed", "ef-uncoded")
    assert _verdicts(mod.claims(_planted(names, **kw))) == ["holds", "holds"]
    assert _verdicts(mod.claims(_planted(names[::-1], **kw))) == ["contradicted", "contradicted"]
    noise = _noise_copies(_planted(names[:1], **kw), "coco-ef", names[1:])
    assert _verdicts(mod.claims(noise)) == ["inconclusive", "inconclusive"]
    table, notes, _ = mod.gap_table(_planted(names, **kw))
    assert table.shape == (2, 2) and (table.to_numpy() < 0).all()
    assert all("below" in notes.iat[i, j] for i in range(2) for j in range(2))
    # a baseline whose messages are not within ±10% of COCO-EF's is no rival
    far = _planted(("coco-ef", "gc"), **kw)  # gc: uncompressed, 32 × 32 bits per message
    assert mod.claims(far) == [] and mod.observations(far)[0].startswith("No cell")


def test_theory_claims_follow_planted_outcomes():
    mod = load("theory").module
    kw = {"straggler_probs": (0.0, 0.2), "compress_ratios": (0.1,)}
    last = lambda cs: next(c for c in cs if c.statement.startswith("coco-ef21"))
    assert last(mod.claims(_planted(("coco-ef21", "coco-ef"), **kw))).verdict == "holds"
    assert last(mod.claims(_planted(("coco-ef", "coco-ef21"), **kw))).verdict == "contradicted"
    noise = _noise_copies(_planted(("coco-ef",), **kw), "coco-ef", ["coco-ef21"])
    noise["grad_error_sq"] = noise["loss"] * 0.1
    assert last(mod.claims(noise)).verdict == "inconclusive"
    by_construction = mod.claims(_planted(("coco-ef",), **kw))[0]
    assert by_construction.verdict == "holds by construction"


def test_compressors_claims_follow_planted_outcomes():
    mod = load("compressors").module

    def as_compressors(df, names):
        return df.assign(compressor=df["method"].map(names))

    df = _planted(("coco-ef", "gc-compressed"))
    first = lambda cs: cs[0].verdict
    assert (
        first(mod.claims(as_compressors(df, {"coco-ef": "scaled_sign", "gc-compressed": "sign"}))) == "holds"
    )
    assert (
        first(mod.claims(as_compressors(df, {"coco-ef": "sign", "gc-compressed": "scaled_sign"})))
        == "contradicted"
    )
    noise = _noise_copies(_planted(("coco-ef",)), "coco-ef", ["gc-compressed"])
    assert first(mod.claims(as_compressors(noise, {"coco-ef": "scaled_sign", "gc-compressed": "sign"}))) == (
        "inconclusive"
    )


def test_redundancy_claims_follow_planted_outcomes():
    mod = load("redundancy").module

    def at_s(df, s_of):  # every run is COCO-EF's, at the redundancy its planted method stands for
        return df.assign(
            redundancy=df["method"].map(s_of), method="coco-ef", allocation="cyclic", part="iterations"
        )

    df = _planted(("coco-ef", "gc"))
    first = lambda cs: cs[0].verdict
    assert first(mod.claims(at_s(df, {"coco-ef": 1, "gc": 0}))) == "holds"
    assert first(mod.claims(at_s(df, {"coco-ef": 0, "gc": 1}))) == "contradicted"
    noise = _noise_copies(_planted(("coco-ef",)), "coco-ef", ["gc"])
    assert first(mod.claims(at_s(noise, {"coco-ef": 1, "gc": 0}))) == "inconclusive"


def test_heterogeneity_claims_follow_planted_outcomes():
    import pandas as pd

    mod = load("heterogeneity").module

    def split(df):
        return pd.concat(
            [df.assign(partitioning=p, config_id=df["config_id"] + p) for p in ("iid", "sorted")],
            ignore_index=True,
        )

    names = ("coco-ef", "gc-compressed", "gc-unbiased")
    assert _verdicts(mod.claims(split(_planted(names)))) == ["holds", "holds"]
    assert _verdicts(mod.claims(split(_planted(names[::-1])))) == ["contradicted", "contradicted"]
    noise = split(_noise_copies(_planted(names[:1]), "coco-ef", names[1:]))
    assert _verdicts(mod.claims(noise)) == ["inconclusive", "inconclusive"]


def test_dry_run_plans_both_stages_of_a_tuned_experiment(capsys):
    """`--dry-run` of a tuned module plans its tuning and reported stages without
    compiling (the stages are explicit grids: their static keys must exist)."""
    assert main(["sweep", str(ROOT / "experiments" / "compressors.py"), "--dry-run", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "tuning stage" in out and "reported stage" in out and "estimated" in out


# ------------------------------------------- claims of methods, straggler_prob, neural, paper
# Planted outcomes on `testing.synthetic_results` (task "mlp": no F*, the loss is read):
# method number i ends at the made-up floor 1e-3·(1 + i)(1 + p), so listing COCO-EF first
# plants "below" (the claim holds), last plants the reversal (contradicted), and a copy
# of COCO-EF with sign-alternating noise across seeds plants no difference (inconclusive).


def _planted_parts(order, parts, probs=(0.2,), seeds=4):
    import pandas as pd

    from coco_jax import testing

    base = testing.synthetic_results(
        methods=order, straggler_probs=probs, seeds=seeds, steps=400, eval_every=50, task="mlp"
    )
    return pd.concat([base.assign(part=p) for p in parts], ignore_index=True)


def _noisy_copy(order, parts, copy_as, probs=(0.2,)):
    """COCO-EF and `copy_as`, a copy of COCO-EF whose final loss differs by ±0.1%
    alternately by seed: no interval excludes 0."""
    import pandas as pd

    df = _planted_parts(order, parts, probs)
    a = df[df.method == "coco-ef"]
    b = a.assign(method=copy_as, loss=a["loss"].astype(np.float64), config_id=a["config_id"] + "c")
    last = b.step == b.step.max()
    b.loc[last, "loss"] *= 1 + 1e-3 * np.where(b.loc[last, "seed"] % 2 == 0, 1, -1)
    return pd.concat([a, b], ignore_index=True)


def _verdict(claims, words):
    hits = [c for c in claims if words in c.statement]
    assert len(hits) == 1, [c.statement for c in claims]
    return hits[0].verdict


@pytest.mark.parametrize(
    ("name", "parts", "words"),
    [
        ("methods", ("linreg", "mnist"), "COCO-EF ends below gc-compressed"),
        ("straggler_prob", ("straggler_prob",), "COCO-EF ends below gc-compressed at every p"),
        ("neural", ("mlp", "cnn"), "lower training loss than gc-compressed"),
        ("paper", ("methods/linreg", "methods/mnist"), "COCO-EF ends below gc-compressed"),
    ],
)
def test_claims_follow_planted_outcomes(name, parts, words):
    claims = load(name).module.claims
    probs = (0.1, 0.3) if name == "straggler_prob" else (0.2,)
    assert _verdict(claims(_planted_parts(("coco-ef", "gc-compressed"), parts, probs)), words) == "holds"
    assert (
        _verdict(claims(_planted_parts(("gc-compressed", "coco-ef"), parts, probs)), words) == "contradicted"
    )
    noise = _noisy_copy(("coco-ef", "gd"), parts, "gc-compressed", probs)
    assert _verdict(claims(noise), words) == "inconclusive"


def test_claims_never_crash_on_missing_parts_or_methods():
    """A tiny variant runs fewer things: claims return fewer rows, never raise."""
    import pandas as pd

    empty = _planted_parts(("gd",), ("x",)).iloc[:0]
    for name in ("methods", "straggler_prob", "neural", "paper"):
        claims = load(name).module.claims
        assert claims(empty) == []
        assert claims(_planted_parts(("gd",), ("linreg", "mlp", "straggler_prob", "methods/linreg"))) == []
    assert isinstance(load("paper").module.claims(pd.DataFrame({"part": []})), list)


def test_straggler_prob_growth_claim_sees_a_planted_artefact():
    """The made-up floor grows with p: "above" holds; relabelling p backwards plants the
    old "more stragglers look faster" artefact: contradicted."""
    mod = load("straggler_prob").module
    df = _planted_parts(("coco-ef", "ef-uncoded"), ("straggler_prob",), probs=(0.0, 0.4))
    words = "largest p is above its gap at p = 0"
    assert _verdict(mod.claims(df), words) == "holds"
    backwards = df.assign(straggler_prob=0.4 - df.straggler_prob)
    assert _verdict(mod.claims(backwards), words) == "contradicted"
    assert any("LOWER final gap" in s for s in mod.observations(backwards))


def test_methods_bits_claim_and_reach_table():
    """Synthetic gc uploads 1024 bits per message, COCO-EF 112: COCO-EF reaches the first
    target with fewer bits (holds); the reach table says "not reached" where a run does not
    get there and gives the mean where every run does."""
    mod = load("methods").module
    df = _planted_parts(("coco-ef", "gc"), ("linreg", "mnist"))
    # every seed reaches the target at the same evaluated step: one observation, no verdict
    assert _verdict(mod.claims(df), "with fewer bits than gc") == "inconclusive"
    spread = df.copy()  # gc's uploads vary a little by seed: a replicated interval
    gc = spread.method == "gc"
    spread.loc[gc, "bits"] = spread.loc[gc, "bits"] * (1 + 0.01 * spread.loc[gc, "seed"])
    assert _verdict(mod.claims(spread), "with fewer bits than gc") == "holds"
    table = mod.S.reach_table(df[df.part == "linreg"], xs=("step", "bits"))
    assert set(table.method) == {"coco-ef", "gc"}
    assert table["iterations to 0.01"].str.match(r"\d").all()  # reached by every seed: a number
    assert table.loc[table.method == "coco-ef", "uploaded bits to 0.01"].str.startswith("1.08e+05").all()
    # the made-up curves fall from 0.5 to a floor ≥ 1e-3: 1e-6 of the initial gap is never reached
    assert table["iterations to 1e-06"].str.startswith("not reached").all()


def test_flatness_rule():
    """< 5% change over the last 20% of steps: a converged made-up curve is flat; the same
    curves cut at a quarter of their length (still falling) are not."""
    S = load("methods").module.S
    df = _planted_parts(("coco-ef", "gc"), ("linreg",))
    label, change, flat = S.flatness(df, "loss")
    assert label == "coco-ef" and flat and change < 0.05
    _, change, flat = S.flatness(df[df.step <= 100], "loss")
    assert not flat and change >= 0.05


def test_a_composites_own_claims_read_the_whole_table(tmp_path):
    """paper.py's claims(df) sees every part ("<experiment>/<part>"); they appear in the
    Claims table under the composite's name, which adds no section body of its own."""
    write_module(tmp_path, "alpha", SINGLE)
    write_module(tmp_path, "beta", NAMED)
    claims = textwrap.dedent(
        """
        from coco_jax import report as rp


        def claims(df):
            parts = ",".join(sorted(set(df.part)))
            return [rp.claim_by_construction("the table holds " + parts, "combo", "test")]
        """
    )
    (tmp_path / "combo.py").write_text(COMBO + claims)
    out = tmp_path / "res"
    assert ex.run_experiment(tmp_path / "combo.py", quick=True, out=out, progress=False) == 0
    report = (out / "report.md").read_text()
    assert (
        "| 1 | combo | the table holds alpha,beta/one,beta/two | combo | **holds by construction** |"
        in report
    )
    assert "## combo" not in report and "- [combo]" not in report
    assert "## alpha" in report and "## beta" in report
