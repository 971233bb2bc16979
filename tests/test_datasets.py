"""Datasets: embedded MNIST digits, Fashion-MNIST from upstream-format files, the linear-Gaussian set."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.datasets import images as datasets
from benchmarks.datasets import DataSplits, LinearGaussianData, prepare
from benchmarks.errors import ConfigError, DataError


def test_mnist5k_split_is_seeded_disjoint_and_binarized():
    data = prepare("mnist5k", {}, "unused")
    assert [data.split(s).shape for s in ("train", "valid", "test")] == [(4000, 784), (500, 784), (500, 784)]
    assert data.train.dtype == torch.uint8 and int(data.train.max()) > 1  # gray levels, binarized per batch
    assert set(torch.unique(data.test).tolist()) == {0, 1}
    rows = {s: {bytes(r.numpy()) for r in data.split(s)} for s in ("train", "valid", "test")}
    again = prepare("mnist5k", {}, "unused")
    assert torch.equal(again.test, data.test) and torch.equal(again.train, data.train)
    other = prepare("mnist5k", {"split_seed": 1}, "unused")
    assert not torch.equal(other.test, data.test)
    # the gray test digits are not among the training digits
    gray_test = prepare("mnist5k", {"binarization": "threshold"}, "unused")
    assert len(rows["train"] & {bytes(r.numpy()) for r in gray_test.test}) == 0


def test_dynamic_binarization_redraws_every_batch():
    data = prepare("mnist5k", {}, "unused")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    a = next(data.batches("train", 64, generator=g1))
    b = next(data.batches("train", 64, generator=g2))
    assert set(torch.unique(a).tolist()) == {0.0, 1.0}
    assert not torch.equal(a, b)
    # the empirical mean of many draws is the gray level
    raw = data.train[:64].float() / 255
    draws = torch.stack([data.to_model_input(data.train[:64], "train", g1) for _ in range(400)])
    assert float((draws.mean(0) - raw).abs().max()) < 0.12


def test_prepared_file_round_trip_and_corruption(tmp_path):
    data = prepare("linear_gaussian", {"n_train": 50, "n_valid": 10, "n_test": 10}, tmp_path)
    path = tmp_path / "prepared" / "linear_gaussian.pt"
    provenance = LinearGaussianData(n_train=50, n_valid=10, n_test=10).provenance()
    data.save(path, provenance)
    loaded = DataSplits.load(path, expect=provenance)
    assert torch.equal(loaded.test, data.test) and loaded.meta["true_nll"] == data.meta["true_nll"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=str(path)):
        DataSplits.load(path)
    with pytest.raises(DataError, match="does not exist"):
        DataSplits.load(tmp_path / "nope.pt")


def test_linear_gaussian_is_seeded_and_true_nll_is_exact():
    spec = LinearGaussianData(x_dim=5, latent_dim=2, n_test=300, seed=9)
    a, b = spec.build(None), spec.build(None)
    assert torch.equal(a.test, b.test)
    t = a.meta["truth"]
    wtw = t["W"].T @ t["W"]
    assert torch.allclose(wtw, torch.diag(torch.diagonal(wtw)), atol=1e-10)
    cov = t["W"] @ t["W"].T + torch.diag(t["psi"])
    ref = -torch.distributions.MultivariateNormal(t["b"], cov).log_prob(a.test.double()).mean()
    assert abs(float(ref) - a.meta["true_nll"]) < 1e-9


# --- Fashion-MNIST through the real loader, on fixtures in the upstream idx format --------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """Bytes of an IDX file (the MNIST/Fashion-MNIST format): magic, big-endian dims, uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_fixture(folder: Path, n_train: int = 30, n_test: int = 10, compress: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, array in arrays.items():
        raw = idx_bytes(array)
        checksums[name] = hashlib.md5(raw).hexdigest()
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return {"checksums": checksums, "arrays": arrays}


@pytest.fixture
def fashion_fixture(tmp_path, monkeypatch):
    fixture = write_fashion_fixture(tmp_path / "raw" / "fashion_mnist")
    monkeypatch.setattr(datasets.FashionMnist, "RAW_MD5", fixture["checksums"])
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", str(tmp_path / "no-debian-here"))
    return tmp_path, fixture


def test_fashion_from_upstream_files(fashion_fixture):
    data_dir, fixture = fashion_fixture
    data = prepare("fashion_mnist", {"n_valid": 5, "download": False}, data_dir)
    assert data.train.shape == (25, 784) and data.valid.shape == (5, 784) and data.test.shape == (10, 784)
    expected_test = (fixture["arrays"]["t10k-images-idx3-ubyte"].reshape(10, -1) / 255.0 > 0.5)
    assert np.array_equal(data.test.numpy(), expected_test.astype(np.uint8))
    dynamic = prepare("fashion_mnist", {"n_valid": 5, "download": False, "binarization": "dynamic"}, data_dir)
    assert dynamic.train_transform == "dynamic_binarize" and int(dynamic.train.max()) > 1


def test_fashion_truncated_gzip_is_named(fashion_fixture):
    data_dir, _ = fashion_fixture
    bad = data_dir / "raw" / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*corrupt or truncated"):
        prepare("fashion_mnist", {"download": False, "n_valid": 5}, data_dir)
    assert not (data_dir / "raw" / "torchvision" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_fashion_wrong_checksum_is_named(fashion_fixture):
    data_dir, _ = fashion_fixture
    bad = data_dir / "raw" / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(10))))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has the wrong content"):
        prepare("fashion_mnist", {"download": False, "n_valid": 5}, data_dir)


def test_fashion_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", str(tmp_path / "none"))
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        prepare("fashion_mnist", {"download": False}, tmp_path)

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="download failed"):
        prepare("fashion_mnist", {}, tmp_path)


@pytest.mark.realdata
@pytest.mark.skipif(not Path(datasets.DEBIAN_FASHION_DIR).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist_files_pass_the_upstream_checksums(tmp_path):
    data = prepare("fashion_mnist", {"train_subset": 1000, "test_subset": 500}, tmp_path)
    assert data.train.shape == (1000, 784) and data.valid.shape == (5000, 784) and data.test.shape == (500, 784)
    assert data.meta["source"] == datasets.DEBIAN_FASHION_DIR
    assert 0.2 < float(data.test.float().mean()) < 0.6  # clothes cover a good part of the image


def test_unknown_dataset_option_names_it():
    with pytest.raises(ConfigError, match="n_tets"):
        prepare("mnist5k", {"n_tets": 3}, "unused")
