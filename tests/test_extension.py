"""The extension contract (DESIGN.md, "Extension contract"), end to end.

A user top-k and a user cyclic code, written exactly as the DESIGN.md example, give the
histories and bits of the built-ins `topk` / `cyclic` in `cj.run`, `cj.sweep` and on
the command line (`--plugins FILE.py`); user presets, decoders, feedback rules,
straggler models, models, datasets and random codes work as documented; bad plugins fail with a ConfigError naming
the component before anything compiles; results load and plot in a process that never
imported the plugin; the example experiment (experiments/custom_compressor.py) runs.

Registrations are process-global: tests/conftest.py removes whatever a test registers
when it ends, and the module-scoped `contract` fixture registers the DESIGN.md
components once for this module only.
"""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_history, contraction_tolerance, gamma, run_tolerances

import coco_jax as cj
from coco_jax import config as config_lib
from coco_jax import experiment as ex
from coco_jax import registry
from coco_jax.bench import CompileCounter
from coco_jax.cli import main
from coco_jax.compressors import empirical_contraction, make_compressor
from coco_jax.data import dataset_label, load_dataset
from coco_jax.engine import prepare
from coco_jax.results import HISTORY_KEYS, config_id
from coco_jax.step import init_run

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The DESIGN.md example, verbatim but for the names: what a user puts in a plugin file.
PLUGIN = """
import math, jax, jax.numpy as jnp, numpy as np
import coco_jax as cj

@cj.register_compressor("{topk}")
def my_topk(dim: int, k: int) -> cj.Compressor:   # called once per static group, outside jit
    def compress(key, v):                          # ONE device: v [dim] -> [dim], jit/vmap-safe
        _, idx = jax.lax.top_k(jnp.abs(v), k)
        return jnp.zeros_like(v).at[idx].set(v[idx])
    return cj.Compressor(compress=compress, bits=k * (32 + math.ceil(math.log2(dim))))

@cj.register_code("{cyclic}")
def my_cyclic(num_devices: int, num_partitions: int, redundancy: int) -> np.ndarray:
    B = np.zeros((num_devices, num_partitions))    # B[m, k] != 0 where device m holds partition k
    for m in range(num_devices):
        for j in range(redundancy + 1):
            B[m, (m + j) % num_partitions] = 1.0
    return B
"""

# A small COCO-EF problem with every history key (classification, a test split) and
# stragglers; d = 10 and k = 2.
SMALL = {
    "task": "logreg",
    "num_devices": 6,
    "redundancy": 1,
    "num_samples": 96,
    "num_test": 24,
    "num_features": 10,
    "compress_ratio": 0.2,
    "straggler_prob": 0.3,
    "lr": 0.5,
    "steps": 8,
    "eval_every": 2,
}
CLI_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]


def write_plugin(path: pathlib.Path, topk: str, cyclic: str) -> pathlib.Path:
    path.write_text(PLUGIN.format(topk=topk, cyclic=cyclic))
    return path


@pytest.fixture(scope="module")
def contract(tmp_path_factory, restored_registries):
    """`user_topk` and `user_cyclic` (the DESIGN.md example, loaded as a plugin file)
    and the preset `my-method` (COCO-EF with both), registered for this module only."""
    plugin = write_plugin(tmp_path_factory.mktemp("plugins") / "contract.py", "user_topk", "user_cyclic")
    with restored_registries():
        registry.load_plugin(plugin)
        cj.register_preset(
            "my-method",
            allocation="user_cyclic",
            compressor="user_topk",
            error_feedback="ef",
            decoder="fixed",
            summary="COCO-EF with the user's top-k and cyclic code",
        )
        yield


def _assert_rows_within(user: pd.DataFrame, builtin: pd.DataFrame, cols) -> None:
    """A plugin's rows against the built-in's, configuration by configuration (rows of
    both sorted alike): within `conftest.run_tolerances` of the built-in configuration."""
    n = len(user)
    assert n == len(builtin)
    from coco_jax import results as res_lib

    start = 0
    while start < n:
        cid = builtin.config_id.iloc[start]
        stop = start
        while stop < n and builtin.config_id.iloc[stop] == cid:
            stop += 1
        tol = run_tolerances(res_lib.config_from_row(builtin.iloc[start]))
        assert_same_history(
            {c: user[c].to_numpy()[start:stop] for c in cols},
            {c: builtin[c].to_numpy()[start:stop] for c in cols},
            tol,
            str(cid),
        )
        start = stop


def history_columns(df: pd.DataFrame) -> list[str]:
    return [k for k in HISTORY_KEYS if k in df and df[k].notna().any()]


# =============================================================== same as the built-ins


def test_user_topk_and_cyclic_equal_the_builtins_in_run(contract):
    user = cj.preset("coco-ef", compressor="user_topk", allocation="user_cyclic", **SMALL)
    builtin = cj.preset("coco-ef", **SMALL)
    a, b = cj.run(user), cj.run(builtin)
    assert set(a.history) >= {"loss", "accuracy", "test_loss", "test_accuracy", "bits", "stragglers"}
    assert a.history["stragglers"][1:].sum() > 0  # the code and the decoder are exercised
    # the same algorithm in another program (the user code has no gather form): within
    # the bound on two float32 runs of the configuration (`conftest.run_tolerances`)
    tol = run_tolerances(builtin)
    assert_same_history(a.history, b.history, tol, "user vs built-in")
    assert np.linalg.norm(a.params - b.params) <= tol["params"]
    d, k = 10, 2
    assert a.bits_per_message == b.bits_per_message == k * (32 + math.ceil(math.log2(d)))
    assert a.config.compressor == "user_topk" and a.config.allocation == "user_cyclic"


def test_user_preset_and_sweep_mixing_builtin_and_user_names(contract):
    cfg = cj.preset("my-method", **SMALL)
    assert (cfg.compressor, cfg.allocation, cfg.error_feedback) == ("user_topk", "user_cyclic", "ef")
    assert cj.preset("my-method", lr=0.2).lr == 0.2
    assert "my-method" in cj.PRESETS and cj.PRESETS["my-method"].summary.startswith("COCO-EF")
    grid = cj.Grid(base=SMALL, axes={"preset": ["coco-ef", "my-method"], "seed": [0, 1], "lr": [0.2, 0.5]})
    importlib.import_module("coco_jax.sweep").clear_programs()
    df = cj.sweep(grid, progress=False)
    # the user's compressor and code are options of coco-ef's program (one program, one compile)
    assert df.stats.groups == 1 and df.stats.compilations == 1
    assert set(df.method) == {"coco-ef", "my-method"}
    assert set(df.compressor) == {"topk", "user_topk"} and set(df.allocation) == {"cyclic", "user_cyclic"}
    cols = history_columns(df)
    for method, c in grid.configs():  # rows equal cj.run of each configuration
        rows = df[df.config_id == config_id(c)].sort_values("step")
        assert set(rows.method) == {method}
        res = cj.run(c)
        tol = run_tolerances(c)  # the sweep's batch and cj.run: two programs of one configuration
        assert_same_history(
            {k: rows[k].to_numpy(np.float64) for k in cols}, {k: res.history[k] for k in cols}, tol
        )
    # and the user method's rows are the built-in method's rows
    key = ["seed", "lr", "step"]
    user = df[df.method == "my-method"].sort_values(key).reset_index(drop=True)
    base = df[df.method == "coco-ef"].sort_values(key).reset_index(drop=True)
    _assert_rows_within(user, base, cols)


def test_user_preset_is_not_a_builtin(contract):
    """`PRESETS.builtin_names()` (what tests parametrise over) lists coco_jax's own
    presets only, like every other registry."""
    assert "my-method" in registry.PRESETS.names()
    assert "my-method" not in registry.PRESETS.builtin_names()
    assert "user_topk" not in registry.COMPRESSORS.builtin_names()
    assert "user_cyclic" not in registry.CODES.builtin_names()


def test_cli_run_and_sweep_with_plugins(tmp_path, capsys):
    """`coco-jax run --plugins A.py --plugins B.py --compressor ... --allocation ...` and
    `coco-jax sweep grid.yaml --plugins ...` write what the built-ins write."""
    both = write_plugin(tmp_path / "both.py", "cli_topk", "cli_cyclic")
    text = both.read_text()
    comp_file, code_file = tmp_path / "comp.py", tmp_path / "code.py"  # one component per file
    comp_file.write_text(text[: text.index('@cj.register_code("cli_cyclic")')])
    code_file.write_text(
        text.replace(text[text.index("@cj.register_compressor") : text.index("@cj.register_code")], "")
    )
    plugins = ["--plugins", str(comp_file), "--plugins", str(code_file)]
    assert "cli_topk" not in registry.COMPRESSORS
    assert main(["run", "--preset", "coco-ef", "--compressor", "cli_topk", *CLI_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "cli_topk" in err and "--plugins" in err and "register_compressor" in err

    user, builtin = tmp_path / "user", tmp_path / "builtin"
    argv = ["run", "--preset", "coco-ef", *CLI_FLAGS]
    assert main([*argv[:1], *plugins, *argv[1:], "--compressor", "cli_topk", "--allocation", "cli_cyclic",
                 "--out", str(user)]) == 0  # fmt: skip
    assert main([*argv, "--out", str(builtin)]) == 0
    a = pd.read_csv(user / "history.csv")
    b = pd.read_csv(builtin / "history.csv")
    assert list(a.columns) == list(b.columns) and len(a) == SMALL["steps"] // SMALL["eval_every"] + 1
    tol = run_tolerances(cj.preset("coco-ef", **SMALL))  # the built-in configuration's bound
    assert_same_history({c: a[c].to_numpy() for c in a.columns}, {c: b[c].to_numpy() for c in b.columns}, tol)
    meta_a = json.loads((user / "config.json").read_text())
    meta_b = json.loads((builtin / "config.json").read_text())
    assert meta_a["config"]["compressor"] == "cli_topk" and meta_a["config"]["allocation"] == "cli_cyclic"
    assert meta_a["bits_per_message"] == meta_b["bits_per_message"]

    spec = tmp_path / "grid.yaml"
    spec.write_text(
        "base: " + json.dumps({"preset": "coco-ef", **SMALL}) + "\n"
        "axes: {seed: [0, 1]}\n"
        "zip: {compressor: [topk, cli_topk], allocation: [cyclic, cli_cyclic]}\n"
    )
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), *plugins, "--out", str(out), "--no-progress"]) == 0
    df = cj.load_results(out)
    key = ["seed", "step"]
    user_rows = df[df.compressor == "cli_topk"].sort_values(key).reset_index(drop=True)
    builtin_rows = df[df.compressor == "topk"].sort_values(key).reset_index(drop=True)
    assert len(user_rows) == len(builtin_rows) == 2 * 5
    assert set(user_rows.allocation) == {"cli_cyclic"}
    _assert_rows_within(user_rows, builtin_rows, history_columns(df))


# ===================================================================== other components


def _decaying_ef(compressor: cj.Compressor, keep: float) -> cj.Feedback:
    """Error feedback that keeps a fraction `keep` of its error: v = g + e, c = C(v),
    e <- keep·(v − c); a straggler's memory decays to keep·e."""

    def init(dim, dtype):
        return {"e": jnp.zeros(dim, dtype)}

    def send(key, g, state, hp):
        v = g + state["e"]
        c = compressor.compress(key, v)
        return c, v, {"e": keep * (v - c)}

    def hold(g, state, hp):
        return {"e": keep * state["e"]}

    def memory(state, g):
        return jnp.linalg.norm(state["e"])

    return cj.Feedback(init=init, send=send, hold=hold, memory=memory)


def test_user_feedback_rule():
    """A "half-EF" (keep = 0.5, bound at registration) learns and differs from EF; the
    same factory with keep = 1 is exactly the built-in `ef`."""
    cj.register_feedback("half_ef", _decaying_ef, keep=0.5)
    cj.register_feedback("full_ef", _decaying_ef, keep=1.0)
    base = cj.preset("coco-ef", **SMALL)
    ef = cj.run(base)
    full = cj.run(base.replace(error_feedback="full_ef"))
    assert_same_history(full.history, ef.history, run_tolerances(base), "keep = 1 vs ef")  # 1 x = x exactly
    half = cj.run(base.replace(error_feedback="half_ef"))
    assert half.history["loss"][-1] < 0.9 * half.history["loss"][0]
    assert not np.allclose(half.history["loss"], ef.history["loss"])  # another rule: O(1), not rounding
    assert half.config.error_feedback == "half_ef"


def _odd_devices_on_odd_steps(num_devices: int) -> cj.StragglerModel:
    """Deterministic: devices 1, 3, 5, ... straggle on steps 1, 3, 5, ...; the state
    counts the steps. Nominal rate 1/2 for odd devices, 0 for even ones."""
    odd = jnp.arange(num_devices) % 2 == 1

    def init(key, hp):
        return jnp.zeros((), jnp.int32)

    def sample(key, state, hp, load=None, trace_row=None):
        t = state + 1
        return odd & (t % 2 == 1), jnp.float32(1.0), t

    def marginal_rate(hp, load=None):
        return jnp.where(odd, 0.5, 0.0).astype(jnp.float32)

    return cj.StragglerModel(init=init, sample=sample, marginal_rate=marginal_rate)


def test_user_straggler_model():
    """The pattern happens as written (the history counts it), a run equals the same
    pattern given as a trace, and the fixed decoder divides by the model's own rates."""
    cj.register_straggler_model("odd_odd", _odd_devices_on_odd_steps)
    m, steps = SMALL["num_devices"], SMALL["steps"]
    cfg = cj.preset("gc", **{**SMALL, "eval_every": 1}, straggler="odd_odd")
    res = cj.run(cfg)
    per_step = np.array([m // 2 if t % 2 == 1 else 0 for t in range(1, steps + 1)])
    np.testing.assert_array_equal(res.history["stragglers"][1:], per_step)
    np.testing.assert_array_equal(res.history["delivered"][1:], np.cumsum(m - per_step))
    np.testing.assert_array_equal(res.history["time"], np.arange(steps + 1))
    trace = np.zeros((steps, m), bool)
    trace[0::2, 1::2] = True
    traced = cj.run(cfg.replace(straggler="bernoulli"), straggler_trace=trace)
    tol = run_tolerances(cfg.replace(straggler="bernoulli"), straggler_trace=trace)  # two programs
    assert_same_history(res.history, traced.history, tol, "model vs trace")
    prep = prepare(cfg.replace(decoder="fixed"))
    rates = jax.jit(lambda hp: init_run(prep.comps, hp, prep.data).consts.rates)(
        config_lib.hparams_of(prep.cfg)
    )
    np.testing.assert_array_equal(rates, np.tile([0.0, 0.5], m // 2))


class TinyMLP(nn.Module):
    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(nn.tanh(nn.Dense(self.width)(x)))


def test_user_model_learns_digits():
    @cj.register_model("tiny_mlp")
    def tiny_mlp(num_classes: int, hidden_sizes: tuple[int, ...]) -> nn.Module:
        return TinyMLP(hidden_sizes[0], num_classes)

    cfg = cj.preset("coco-ef", task="tiny_mlp", dataset="digits", hidden_sizes=(16,), num_devices=4,
                    steps=30, eval_every=10, lr=0.5)  # fmt: skip
    res = cj.run(cfg)
    assert res.history["loss"][-1] < 0.5 * res.history["loss"][0]
    assert res.history["accuracy"][-1] > 0.6 and res.history["test_accuracy"][-1] > 0.6  # chance: 0.1
    assert prepare(cfg).static.dim == 64 * 16 + 16 + 16 * 10 + 10
    assert set(res.params) == {"params"}  # the flax parameter tree


def _shuffled_cyclic(num_devices: int, num_partitions: int, redundancy: int, key: jax.Array) -> jax.Array:
    """A random code: the rows of the cyclic code in a random order (drawn per run);
    every column still sums to s + 1."""
    rows = np.zeros((num_devices, num_partitions), np.float32)
    for m in range(num_devices):
        for j in range(redundancy + 1):
            rows[m, (m + j) % num_partitions] = 1.0
    return jnp.asarray(rows)[jax.random.permutation(key, num_devices)]


def test_user_random_code():
    cj.register_code("shuffled", _shuffled_cyclic)
    cfg = cj.preset("gc", **SMALL, allocation="shuffled")  # optimal decoder
    alloc = prepare(cfg).comps.codes[0]
    assert alloc.random and alloc.replication is None
    b0, b1 = alloc.sample(jax.random.key(0)), alloc.sample(jax.random.key(1))
    assert b0.shape == (6, 6) and not np.array_equal(b0, b1)
    np.testing.assert_array_equal(np.sort(np.asarray(b0), axis=0), np.sort(np.asarray(b1), axis=0))
    res = cj.run(cfg)
    assert res.history["loss"][-1] < 0.9 * res.history["loss"][0]
    with CompileCounter() as cc, pytest.raises(cj.ConfigError, match="decoder='fixed'.*replication="):
        cj.run(cfg.replace(decoder="fixed"))
    assert cc.count == 0
    # registered with its replication, the fixed decoder is exact without stragglers
    cj.register_code("shuffled_r", _shuffled_cyclic, replication=lambda m, k, s: s + 1)
    gd_like = cj.preset("gc", **SMALL, allocation="shuffled_r", decoder="fixed", straggler="none")
    uncoded = cj.preset("gd", **{**SMALL, "redundancy": 0})
    # both are gradient descent in exact arithmetic: each within its bound of it
    tol = (
        run_tolerances(gd_like, reference="exact")["params"]
        + run_tolerances(uncoded, reference="exact")["params"]
    )
    assert np.linalg.norm(cj.run(gd_like).params - cj.run(uncoded).params) <= tol


def _received_by_hand() -> cj.Decoder:
    """The built-in `received` decoder written as a user would: M / (|S| K r)."""

    def weights(B, straggles, rates, replication):
        m_dev, k_parts = B.shape
        alive = ~straggles
        n_alive = jnp.maximum(jnp.sum(alive), 1).astype(B.dtype)
        return jnp.where(alive, m_dev / (n_alive * k_parts * replication), 0.0).astype(B.dtype)

    return cj.Decoder(weights)


def test_user_decoder_equals_the_builtin_and_shares_its_program():
    """A user decoder written like `received` gives received's history; registered
    exchangeable, it is refused with heterogeneous stragglers like the built-in; as a
    traceable decoder it is merged into one program with the built-in ones."""
    cj.register_decoder("my_received", _received_by_hand, exchangeable=True)
    base = cj.preset("coco-ef", **SMALL)
    builtin = cj.run(base.replace(decoder="received"))
    mine = cj.run(base.replace(decoder="my_received"))
    tol = run_tolerances(base.replace(decoder="received"))  # two float32 programs of one configuration
    assert_same_history(mine.history, builtin.history, tol, "user vs built-in decoder")
    assert mine.config.decoder == "my_received"
    probs = tuple(np.linspace(0.0, 0.4, SMALL["num_devices"]).tolist())
    with (
        CompileCounter() as cc,
        pytest.raises(cj.ConfigError, match="decoder='my_received'.*different rates"),
    ):
        cj.ExperimentConfig(**{**SMALL, "decoder": "my_received", "straggler": "heterogeneous",
                               "straggler_probs": probs})  # fmt: skip
    assert cc.count == 0
    grid = cj.Grid(base=base, axes={"decoder": ["fixed", "received", "my_received"], "seed": [0, 1]})
    df = cj.sweep(grid, progress=False)
    assert df.stats.groups == 1  # the three decoders are one traced choice
    for dec in ("received", "my_received"):
        rows = df[(df.decoder == dec) & (df.seed == 0)].sort_values("step")
        np.testing.assert_allclose(rows["loss"].to_numpy(), builtin.history["loss"], rtol=1e-5)


def test_user_decoder_validate_option_refuses_before_compiling():
    """A registration's own `validate(cfg)` runs for every configuration that chooses it."""

    def needs_no_stragglers(cfg):
        if cfg.straggler != "none":
            raise cj.ConfigError(f"straggler={cfg.straggler!r} is invalid: decoder 'all_in' needs 'none'")

    cj.register_decoder("all_in", lambda: cj.Decoder(lambda B, st, r, rep: jnp.full(B.shape[0], 1.0 / B.shape[1]) / rep),
                        validate=needs_no_stragglers)  # fmt: skip
    uncoded = {**SMALL, "redundancy": 0}
    cfg = cj.preset("gd", **uncoded, decoder="all_in")
    # both weight every device by the same float32 1/K, so the runs differ at most by
    # float32 reassociation in the update: a few eps per step
    steps_eps = 4 * SMALL["steps"] * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(cj.run(cfg).params, cj.run(cj.preset("gd", **uncoded)).params, rtol=steps_eps)
    with pytest.raises(cj.ConfigError, match="decoder 'all_in' needs 'none'"):
        cfg.replace(straggler="bernoulli")


def _two_blobs(task: str, num_samples: int, num_test: int, num_features: int, data_seed: int) -> cj.Dataset:
    """Two Gaussian blobs at ±1 (binary labels), generated from data_seed."""
    rng = np.random.default_rng(data_seed)
    n = num_samples + num_test
    y = (rng.random(n) < 0.5).astype(np.int32)
    x = (rng.normal(size=(n, num_features)) + np.where(y[:, None] == 1, 1.0, -1.0)).astype(np.float32)
    return cj.Dataset("two_blobs", x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:], 2,
                      source="generated")  # fmt: skip


def test_user_dataset_runs_sweeps_and_is_checked():
    """A registered dataset is a config value: it loads from the config's data fields
    (data_seed changes it), logreg learns it, a sweep over datasets runs, its label
    shows, and a task its class count cannot serve is refused at config time."""
    cj.register_dataset("two_blobs", _two_blobs, classes=2, label=lambda cfg: "two blobs (±1)")
    cfg = cj.preset("coco-ef", **{**SMALL, "task": "logreg", "dataset": "two_blobs", "lr": 0.5})
    res = cj.run(cfg)
    assert res.history["loss"][-1] < 0.8 * res.history["loss"][0]
    assert res.history["test_accuracy"][-1] > 0.8
    a = load_dataset(cfg)
    assert not np.array_equal(a.x_train, load_dataset(cfg.replace(data_seed=1)).x_train)
    assert dataset_label(cfg) == "two blobs (±1)"
    with pytest.raises(cj.ConfigError, match="dataset='two_blobs' is binary"):
        cfg.replace(task="softmax")
    df = cj.sweep(cj.Grid(base=cfg, axes={"dataset": ["synthetic", "two_blobs"]}), progress=False)
    assert sorted(df.dataset.unique()) == ["synthetic", "two_blobs"]


def test_user_dataset_errors_name_the_dataset():
    cj.register_dataset("bad_ds", lambda task: (np.zeros((4, 2)), np.zeros(4)))
    with pytest.raises(
        cj.ConfigError, match=r"dataset 'bad_ds': the factory returned tuple, must return cj\.Dataset"
    ):
        cj.run(cj.preset("coco-ef", **SMALL, dataset="bad_ds"))
    cj.register_dataset("nan_ds", lambda num_features: cj.Dataset(
        "nan_ds", np.full((12, num_features), np.nan, np.float32), np.zeros(12, np.float32),
        np.zeros((0, num_features), np.float32), np.zeros(0, np.float32), 0))  # fmt: skip
    with pytest.raises(cj.ConfigError, match="dataset 'nan_ds': training data: x contains NaN"):
        cj.run(cj.preset("coco-ef", **SMALL, dataset="nan_ds"))
    cj.register_dataset("wants_lr", lambda task, hidden_sizes: None)
    with pytest.raises(
        cj.ConfigError, match="dataset 'wants_lr': factory argument 'hidden_sizes' is unknown"
    ):
        cj.run(cj.preset("coco-ef", **SMALL, dataset="wants_lr"))


# =============================================================== bad plugins, clear errors


def _asks_fancy(dim, k, fancy):
    return make_compressor("topk", dim, k=k)


def _asks_lr(dim, k, lr):
    return make_compressor("topk", dim, k=k)


def _asks_lr_with_default(dim, k, lr=0.1):
    return make_compressor("topk", dim, k=k)


def _bad_shape(dim, k):
    return cj.Compressor(compress=lambda key, v: v[:k], bits=32 * k)


def _raises(dim, k):
    raise RuntimeError("my bug")


class NotAModule:
    pass


BAD_PLUGINS = {
    # id: (register, config overrides, message)
    "compressor-returns-dict": (
        lambda: cj.register_compressor("bad_c", lambda dim, k: {"compress": None, "bits": 1}),
        {"compressor": "bad_c"},
        r"compressor 'bad_c': the factory returned dict, must return cj\.Compressor",
    ),
    "compress-wrong-shape": (
        lambda: cj.register_compressor("bad_shape", _bad_shape),
        {"compressor": "bad_shape"},
        r"compressor 'bad_shape': compress\(key, v\) returned shape \(2,\) for v of shape \(10,\)",
    ),
    "compressor-factory-raises": (
        lambda: cj.register_compressor("bad_raise", _raises),
        {"compressor": "bad_raise"},
        r"compressor 'bad_raise': the factory raised RuntimeError: my bug",
    ),
    "compressor-returns-integers": (
        lambda: cj.register_compressor(
            "bad_int", lambda dim: cj.Compressor(compress=lambda key, v: v.astype(jnp.int32), bits=32 * dim)
        ),
        {"compressor": "bad_int"},
        r"compressor 'bad_int': compress\(key, v\) returned dtype int32 for v of dtype float32",
    ),
    "code-returns-list": (
        lambda: cj.register_code("bad_code", lambda num_devices, num_partitions: [[1.0]] * num_devices),
        {"allocation": "bad_code"},
        r"code 'bad_code': the factory returned list, must return a numpy array",
    ),
    "code-wrong-shape": (
        lambda: cj.register_code("bad_code_shape", lambda num_devices: np.ones((num_devices, 2))),
        {"allocation": "bad_code_shape"},
        r"code 'bad_code_shape': the factory returned B of shape \(6, 2\), must be \(M, K\) = \(6, 6\)",
    ),
    "feedback-returns-tuple": (
        lambda: cj.register_feedback("bad_fb", lambda compressor: (None, None)),
        {"error_feedback": "bad_fb"},
        r"feedback 'bad_fb': the factory returned tuple, must return cj\.Feedback",
    ),
    "straggler-model-returns-function": (
        lambda: cj.register_straggler_model("bad_sm", lambda num_devices: lambda key: key),
        {"straggler": "bad_sm"},
        r"straggler model 'bad_sm': the factory returned function, must return cj\.StragglerModel",
    ),
    "model-returns-class": (
        lambda: cj.register_model("bad_model", lambda num_classes: NotAModule()),
        {"task": "bad_model"},
        r"model 'bad_model': the factory returned NotAModule, must return a flax linen Module",
    ),
    "unknown-argument": (
        lambda: cj.register_compressor("bad_arg", _asks_fancy),
        {"compressor": "bad_arg"},
        r"compressor 'bad_arg': factory argument 'fancy' is unknown: the engine provides dim, k",
    ),
    "dynamic-field": (
        lambda: cj.register_compressor("bad_lr", _asks_lr),
        {"compressor": "bad_lr"},
        r"compressor 'bad_lr': factory argument 'lr' is a dynamic config field",
    ),
    "dynamic-field-with-default": (
        lambda: cj.register_compressor("bad_lr_default", _asks_lr_with_default),
        {"compressor": "bad_lr_default"},
        r"compressor 'bad_lr_default': factory argument 'lr' is a dynamic config field",
    ),
    "code-asks-dynamic-field": (
        lambda: cj.register_code("bad_code_p", lambda num_devices, straggler_prob: np.eye(num_devices)),
        {"allocation": "bad_code_p", "redundancy": 0},
        r"code 'bad_code_p': factory argument 'straggler_prob' is a dynamic config field",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_fails_before_compiling(case):
    register, overrides, message = BAD_PLUGINS[case]
    register()
    with CompileCounter() as cc, pytest.raises(cj.ConfigError, match=message):
        cj.run(cj.preset("coco-ef", **{**SMALL, **overrides}))
    assert cc.count == 0


def test_bad_registrations_fail_at_registration():
    def factory(dim, k, table=(1, 2)):
        return make_compressor("topk", dim, k=k)

    with pytest.raises(
        cj.ConfigError, match=r"compressor 'tbl': factory argument table=\[1, 2\] is not hashable"
    ):
        cj.register_compressor("tbl", factory, table=[1, 2])
    with pytest.raises(cj.ConfigError, match=r"bound argument 'width' is not a parameter of"):
        cj.register_compressor("wid", factory, width=3)
    with pytest.raises(cj.ConfigError, match="must be callable"):
        cj.register_code("notfn", np.eye(3))
    with pytest.raises(cj.ConfigError, match=r"preset 'p': 'learning_rate' is not an ExperimentConfig field"):
        cj.register_preset("p", learning_rate=0.1)
    assert "tbl" not in registry.COMPRESSORS and "wid" not in registry.COMPRESSORS
    # a value handed to a factory from outside the registration must be hashable too
    cj.register_compressor("tbl2", factory)
    with pytest.raises(
        cj.ConfigError, match=r"compressor 'tbl2': factory argument table=\[1, 2\] is not hashable"
    ):
        make_compressor("tbl2", 10, k=2, fields={"table": [1, 2]})
    # every config field a factory can ask for is hashable: tuple fields refuse lists
    cj.register_compressor("widths", lambda dim, k, hidden_sizes: make_compressor("topk", dim, k=k))
    prepare(cj.preset("coco-ef", **SMALL, compressor="widths", hidden_sizes=(4, 4)))
    with pytest.raises(cj.ConfigError, match="hidden_sizes"):
        cj.ExperimentConfig(hidden_sizes=[4, 4])


@pytest.mark.parametrize(
    "field,registry_name,register",
    [
        ("compressor", "COMPRESSORS", "register_compressor"),
        ("allocation", "CODES", "register_code"),
        ("error_feedback", "FEEDBACKS", "register_feedback"),
        ("straggler", "STRAGGLER_MODELS", "register_straggler_model"),
        ("task", "MODELS", "register_model"),
        ("decoder", "DECODERS", "register_decoder"),
        ("dataset", "DATASETS", "register_dataset"),
    ],
)
def test_unknown_name_lists_registered_names_and_how_to_register(contract, field, registry_name, register):
    with CompileCounter() as cc, pytest.raises(cj.ConfigError) as info:
        cj.ExperimentConfig(**{field: "nope"})
    assert cc.count == 0
    msg = str(info.value)
    assert f"{field}='nope' is invalid" in msg
    for name in getattr(registry, registry_name).names():
        assert name in msg
    assert f"@cj.{register}('nope')" in msg and "--plugins FILE.py" in msg
    if field == "compressor":
        assert "user_topk" in msg
    if field == "task":
        assert "linreg" in msg


def test_unknown_preset_lists_presets_and_says_how_to_register(contract):
    with pytest.raises(cj.ConfigError) as info:
        cj.preset("nope")
    msg = str(info.value)
    assert "preset='nope' is invalid" in msg and "coco-ef" in msg and "my-method" in msg
    # register_preset is called with the fields, it is not a decorator
    assert "cj.register_preset('nope'" in msg and "@cj.register_preset" not in msg


def test_presets_command_lists_plugin_presets(tmp_path, capsys):
    plugin = tmp_path / "preset_plugin.py"
    plugin.write_text(
        "import coco_jax as cj\n"
        "cj.register_preset('plugin-method', compressor='randk', summary='rand-k from a plugin')\n"
    )
    try:
        code = main(["presets", "--plugins", str(plugin)])
    except SystemExit as exit_:  # argparse refusing the flag
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "plugin-method" in captured.out and "rand-k from a plugin" in captured.out


def test_taken_names_need_overwrite(contract):
    for register, name in ((cj.register_compressor, "topk"), (cj.register_compressor, "user_topk"),
                           (cj.register_code, "user_cyclic"), (cj.register_feedback, "ef"),
                           (cj.register_straggler_model, "bernoulli"), (cj.register_model, "mlp"),
                           (cj.register_decoder, "fixed"), (cj.register_dataset, "digits")):  # fmt: skip
        with pytest.raises(cj.ConfigError, match=rf"'{name}' is already registered; pass overwrite=True"):
            register(name, lambda **kw: None)
    with pytest.raises(cj.ConfigError, match="'coco-ef' is already registered"):
        cj.register_preset("coco-ef", lr=0.3)
    assert cj.preset("coco-ef").compressor == "topk"


# ------------------------------------------------------------------ overwrite=True


def _zero_compressor(dim, k):
    return cj.Compressor(compress=lambda key, v: jnp.zeros_like(v), bits=1)


def _identity_compressor(dim):
    return cj.Compressor(compress=lambda key, v: v, bits=32 * dim, biased=False, omega=0.0)


def test_overwrite_compressor_takes_effect_in_a_new_program():
    """A configuration that ran with the old factory runs the new one after
    overwrite=True: no stale component or compiled program is reused."""
    cj.register_compressor("swap", _zero_compressor)
    cfg = cj.preset("coco-ef", **SMALL, compressor="swap")
    old = cj.run(cfg)
    np.testing.assert_array_equal(old.history["loss"], old.history["loss"][0])  # nothing sent: θ never moves
    assert old.bits_per_message == 1
    static_old = prepare(cfg).static
    cj.register_compressor("swap", _identity_compressor, overwrite=True)
    assert prepare(cfg).static != static_old
    new = cj.run(cfg)
    assert new.bits_per_message == 32 * 10
    assert new.history["loss"][-1] < 0.9 * new.history["loss"][0]


def _everyone_at_ten_percent(num_devices: int) -> cj.StragglerModel:
    def sample(key, state, hp, load=None, trace_row=None):
        return jax.random.uniform(key, (num_devices,)) < 0.1, jnp.float32(1.0), state

    return cj.StragglerModel(
        init=lambda key, hp: (), sample=sample, marginal_rate=lambda hp, load=None: jnp.full(num_devices, 0.1)
    )


def _model_v1(num_classes):
    return TinyMLP(4, num_classes)


def _model_v2(num_classes):
    return TinyMLP(8, num_classes)


OVERWRITES = {
    # kind: (register old, register new with overwrite=True, config overrides, observe(prep))
    "code": (
        lambda: cj.register_code("swap", lambda num_devices: np.eye(num_devices)),
        lambda: cj.register_code(
            "swap", lambda num_devices: np.roll(np.eye(num_devices), 1, axis=1), overwrite=True
        ),
        {"allocation": "swap", "redundancy": 0},
        lambda prep: int(np.argmax(prep.comps.codes[0].matrix[0])),
    ),
    "feedback": (
        lambda: cj.register_feedback("swap", lambda compressor: _decaying_ef(compressor, 0.5)),
        lambda: cj.register_feedback(
            "swap", lambda compressor: _decaying_ef(compressor, 0.25), overwrite=True
        ),
        {"error_feedback": "swap"},
        lambda prep: float(prep.comps.feedback.hold(None, {"e": jnp.ones(1)}, None)["e"][0]),
    ),
    "straggler model": (
        lambda: cj.register_straggler_model("swap", _odd_devices_on_odd_steps),
        lambda: cj.register_straggler_model("swap", _everyone_at_ten_percent, overwrite=True),
        {"straggler": "swap"},
        lambda prep: float(prep.comps.straggler_models[0].marginal_rate(None)[1]),
    ),
    "decoder": (
        lambda: cj.register_decoder("swap", _received_by_hand),
        lambda: cj.register_decoder(
            "swap", lambda: cj.Decoder(lambda B, st, r, rep: jnp.zeros(B.shape[0])), overwrite=True
        ),
        {"decoder": "swap"},
        lambda prep: float(
            prep.comps.decoders[0].weights(jnp.ones((2, 2)), jnp.zeros(2, bool), jnp.zeros(2), 1.0)[0]
        ),
    ),
    "model": (
        lambda: cj.register_model("swap", _model_v1),
        lambda: cj.register_model("swap", _model_v2, overwrite=True),
        {"task": "swap", "num_classes": 3, "num_features": 5},
        lambda prep: prep.static.dim,
    ),
}


@pytest.mark.parametrize("kind", sorted(OVERWRITES))
def test_overwrite_takes_effect(kind):
    """After overwrite=True the same configuration is built from the new factory (and
    gets a new static part, so a new compiled program)."""
    register_old, register_new, overrides, observe = OVERWRITES[kind]
    register_old()
    cfg = cj.preset("coco-ef", **{**SMALL, **overrides})
    before = prepare(cfg)
    register_new()
    after = prepare(cfg)
    assert observe(after) != observe(before), f"{kind}: overwrite=True did not take effect"
    assert after.static != before.static


def test_overwrite_preset_takes_effect():
    cj.register_preset("swap", compressor="topk", lr=0.3)
    assert cj.preset("swap").lr == 0.3
    cj.register_preset("swap", compressor="randk", lr=0.2, overwrite=True)
    assert (cj.preset("swap").lr, cj.preset("swap").compressor) == (0.2, "randk")
    assert cj.Grid(base=SMALL, axes={"preset": ["swap"]}).configs()[0][1].compressor == "randk"


# ============================================================ results without the plugin

EXPERIMENT = '''
"""A plugin experiment for the tests.

Question: do results written with a plugin load and plot without it? Expected: yes.
Command: coco-jax run plugexp.py --plugins plugin.py
"""
import coco_jax as cj
from coco_jax import plots

NAME = "plugexp"
DESCRIPTION = "built-in and plugin top-k and cyclic code"


def grid(quick=False):
    base = cj.preset("coco-ef", **{small})
    return cj.Grid(base=base, axes={{"seed": [0]}},
                   zip_axes={{"compressor": ["topk", "plug_topk"], "allocation": ["cyclic", "plug_cyclic"]}},
                   name=NAME)


def figures(df):
    return {{"loss": plots.curves_figure(df, [("step", "loss"), ("bits", "loss")], hue="compressor")}}
'''

WITHOUT_PLUGIN = """
import json, pathlib, shutil, sys
import coco_jax as cj
from coco_jax.cli import main
from coco_jax.registry import CODES, COMPRESSORS

out, swept = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
assert "plug_topk" not in COMPRESSORS and "plug_cyclic" not in CODES, "the plugin was imported"
df = cj.load_results(out)
report = {"compressors": sorted(set(df.compressor)), "allocations": sorted(set(df.allocation)),
          "rows": len(df), "plot": main(["plot", str(out)])}
# the same tables as `coco-jax sweep plugexp.py --plugins plugin.py` leaves them
swept.mkdir()
for name in ("results.parquet", "results.json"):
    shutil.copy(out / name, swept / name)
report["plot_sweep_dir"] = main(["plot", str(swept)])
report["still_unregistered"] = "plug_topk" not in COMPRESSORS
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def plugin_results(tmp_path_factory, subprocess_env):
    """`coco-jax run plugexp.py --plugins plugin.py` in one process, then loading and
    `coco-jax plot` of its directory (and of a copy laid out as `coco-jax sweep` leaves
    it) in another process that never imports the plugin."""
    tmp = tmp_path_factory.mktemp("without_plugin")
    plugin = write_plugin(tmp / "plugin.py", "plug_topk", "plug_cyclic")
    module = tmp / "plugexp.py"
    module.write_text(EXPERIMENT.format(small=repr(SMALL)))
    out = tmp / "out"
    env = subprocess_env(1)
    env[ex.ENV_DIR] = str(tmp)
    cli = [sys.executable, "-m", "coco_jax.cli"]
    run = subprocess.run([*cli, "run", str(module), "--plugins", str(plugin), "--out", str(out)],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    script = tmp / "without_plugin.py"
    script.write_text(WITHOUT_PLUGIN)
    load = subprocess.run([sys.executable, str(script), str(out), str(tmp / "plugexp")],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]
    line = next(ln for ln in load.stdout.splitlines() if ln.startswith("REPORT "))
    return {"out": out, "swept": tmp / "plugexp", "report": json.loads(line[len("REPORT ") :]),
            "stderr": load.stderr}  # fmt: skip


def test_results_record_names_and_load_and_plot_without_the_plugin(plugin_results):
    report, out = plugin_results["report"], plugin_results["out"]
    assert report["compressors"] == ["plug_topk", "topk"] and report["allocations"] == [
        "cyclic",
        "plug_cyclic",
    ]
    assert report["rows"] == 2 * 5
    assert report["plot"] == 0, plugin_results["stderr"][-2000:]
    assert report["still_unregistered"]
    assert (out / "figures" / "loss.png").stat().st_size > 0 and (out / "figures" / "loss.pdf").is_file()
    assert "plug_topk" in (out / "report.md").read_text()
    meta = json.loads((out / "results.json").read_text())
    assert any("plug_topk" in g["label"] and "plug_cyclic" in g["label"] for g in meta["groups"])
    df = pd.read_parquet(out / "results.parquet")  # and the plugin's rows are the built-ins'
    a = df[df.compressor == "plug_topk"].sort_values("step").reset_index(drop=True)
    b = df[df.compressor == "topk"].sort_values("step").reset_index(drop=True)
    _assert_rows_within(a, b, history_columns(df))


def test_plot_of_a_sweep_directory_without_the_plugin(plugin_results):
    """`coco-jax plot DIR` on what `coco-jax sweep exp.py --plugins plugin.py` wrote (no
    experiment.json yet) must not need the plugin either: the tables hold everything."""
    report = plugin_results["report"]
    assert report["plot_sweep_dir"] == 0, plugin_results["stderr"][-2000:]
    assert (plugin_results["swept"] / "figures" / "loss.png").is_file()


# ============================================================ the example experiment


def test_custom_compressor_experiment_runs_and_draws(tmp_path, monkeypatch):
    """experiments/custom_compressor.py: the experiment contract, its compressor's
    documented constants, and a tiny variant run end to end (sweep, figure, report)."""
    from test_experiments import tiny

    path = ROOT / "experiments" / "custom_compressor.py"
    exp = ex.load_experiment(path)  # registers topk_sign and its preset (removed after the test)
    assert exp.name == "custom_compressor" and "\n" not in exp.description
    for word in ("Question", "Expected", "Observed", "Command", "experiments/custom_compressor.py --quick"):
        assert word in exp.doc
    assert "topk_sign" in registry.COMPRESSORS and "topk_sign" not in registry.COMPRESSORS.builtin_names()
    quick, full = exp.grids(quick=True), exp.grids(quick=False)
    assert [n for n, _ in quick] == [n for n, _ in full] == ["custom_compressor"]
    assert quick[0][1].base.num_devices <= 16 and full[0][1].base.num_devices == 100
    assert {m for m, _ in quick[0][1].configs()} == {"coco-ef", exp.module.METHOD, "gc"}

    d, k = 100, 10
    comp = make_compressor("topk_sign", d, k=k)
    assert comp.bits == k * (7 + 1) + 32 == 112 and comp.biased and comp.name == "topk_sign"
    assert comp.delta == pytest.approx(k / (k * k + d - k), rel=gamma(4, np.float64))  # <= 4 float64 ops
    rng = np.random.default_rng(0)
    vs = rng.standard_normal((200, d)) * rng.choice([0.01, 1.0, 100.0], (200, d))
    vs = np.concatenate([vs, np.ones((1, d)), np.eye(d)[:1] * 5 + 1e-3], axis=0).astype(np.float32)
    cs = jax.vmap(lambda v: comp.compress(jax.random.key(0), v))(jnp.asarray(vs))
    ratio = np.asarray(empirical_contraction(jnp.asarray(vs), cs))
    tol = contraction_tolerance(vs, np.asarray(cs))  # its float32 rounding
    assert np.all(ratio <= 1 - comp.delta + tol)
    assert abs(ratio[-2] - (1 - k / d)) <= tol[-2]  # all equal magnitudes: delta = k/d
    assert np.all(np.count_nonzero(np.asarray(cs), axis=1) == k)
    np.testing.assert_array_equal(comp.compress(jax.random.key(0), jnp.zeros(d)), 0.0)

    original = exp.module.grid

    def tiny_grid(quick=False):  # the quick grid, shrunk: 4 devices, d = 20, 6 steps, one seed
        g = tiny(original(quick), steps=6)
        return cj.Grid(base=g.base.replace(num_devices=4, num_features=20), axes=g.axes, name=g.name)

    monkeypatch.setattr(exp.module, "grid", tiny_grid)
    out = tmp_path / "out"
    assert ex.run_experiment(path, quick=True, out=out, progress=False) == 0
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"loss.{ext}").stat().st_size > 0
    text = (out / "report.md").read_text()
    assert exp.module.METHOD in text and "figures/loss.png" in text
    df = cj.load_results(out)
    assert set(df.method) == {"coco-ef", exp.module.METHOD} and set(df.compressor) == {"topk", "topk_sign"}


def test_fingerprints_follow_the_source(tmp_path):
    """A component's fingerprint is stable for the same source and bound arguments, and
    changes when its plug-in file or its bound arguments change (a resume can then be
    refused); built-ins have one too."""
    plugin = tmp_path / "fp_plugin.py"
    source = (
        "import coco_jax as cj\n"
        "from coco_jax.compressors import make_compressor\n"
        "@cj.register_compressor('fp_topk', overwrite=True)\n"
        "def fp_topk(dim, k):\n"
        "    return make_compressor('topk', dim, k=k)\n"
    )
    plugin.write_text(source)
    registry.exec_module(plugin, "fp_plugin_a")
    first = registry.COMPRESSORS.fingerprint("fp_topk")
    registry.exec_module(plugin, "fp_plugin_b")
    assert registry.COMPRESSORS.fingerprint("fp_topk") == first
    plugin.write_text(source.replace("make_compressor('topk'", "make_compressor('randk'"))
    registry.exec_module(plugin, "fp_plugin_c")
    assert registry.COMPRESSORS.fingerprint("fp_topk") != first
    cj.register_feedback("fp_half", _decaying_ef, keep=0.5)
    cj.register_feedback("fp_quarter", _decaying_ef, keep=0.25)
    assert registry.FEEDBACKS.fingerprint("fp_half") != registry.FEEDBACKS.fingerprint("fp_quarter")
    assert registry.CODES.fingerprint("cyclic") == registry.CODES.fingerprint("cyclic")
    assert registry.CODES.fingerprint("cyclic") != registry.CODES.fingerprint("frc")
