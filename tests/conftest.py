"""Shared fixtures: tiny, seeded models and data so that every test runs in seconds on a CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import models  # noqa: E402
from benchmarks.datasets import DataSplits, LinearGaussianData  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def lg_data() -> DataSplits:
    """A small linear-Gaussian dataset whose true posterior is diagonal."""
    return LinearGaussianData(x_dim=6, latent_dim=2, n_train=300, n_valid=100, n_test=100,
                              noise_std=0.5, seed=3).build(Path("unused"))


@pytest.fixture(scope="session")
def lg_full_data() -> DataSplits:
    """A linear-Gaussian dataset with a full-covariance true posterior."""
    return LinearGaussianData(x_dim=6, latent_dim=2, n_train=300, n_valid=100, n_test=100,
                              noise_std=0.5, diagonal_posterior=False, seed=4).build(Path("unused"))


@pytest.fixture
def lg_true_model(lg_data):
    """The generating linear-Gaussian model (float64, frozen)."""
    model = models.build(lg_data, {"fixed_to_truth": True}).double()
    truth = lg_data.meta["truth"]
    model.set_parameters(truth["W"], truth["b"], truth["psi"])  # again, now in float64
    return model


def tiny_binary_data(n_train: int = 64, n_valid: int = 32, n_test: int = 32, dim: int = 784) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    gray = lambda n: (torch.rand(n, dim, generator=g) * 255).to(torch.uint8)  # noqa: E731
    return DataSplits("mnist5k", "image", "bernoulli", gray(n_train),
                      torch.bernoulli(torch.full((n_valid, dim), 0.3), generator=g).to(torch.uint8),
                      torch.bernoulli(torch.full((n_test, dim), 0.3), generator=g).to(torch.uint8),
                      "dynamic_binarize", {"image_shape": [1, 28, 28]})


@pytest.fixture
def binary_data() -> DataSplits:
    return tiny_binary_data()


@pytest.fixture
def binary_model(binary_data):
    return models.build(binary_data, {"latent_dim": 4, "hidden": [16]})
