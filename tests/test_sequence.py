"""Token-sequence family, the SA-VAE synthetic oracle and the 2-d quadrature behind its true NLL."""
from __future__ import annotations

import itertools

import pytest
import torch

from benchmarks import models
from benchmarks.datasets import DataSplits, LinearGaussianData, SyntheticOracle
from benchmarks.errors import ConfigError
from benchmarks.models import LSTMCategorical, LSTMCategoricalOptions
from benchmarks.quadrature import log_marginal_2d

SMALL_ORACLE = dict(vocab_size=50, hidden=16, embed_dim=8, n_train=40, n_valid=10, n_test=20, seed=3)


@pytest.mark.parametrize("diagonal", [True, False])
def test_quadrature_matches_the_exact_marginal(diagonal):
    data = LinearGaussianData(x_dim=4, latent_dim=2, n_test=30, diagonal_posterior=diagonal, seed=1).build(None)
    model = models.build(data, {"fixed_to_truth": True}).double()
    t = data.meta["truth"]
    model.set_parameters(t["W"], t["b"], t["psi"])
    x = data.test.double()
    result = log_marginal_2d(model, x)
    exact = model.exact_log_marginal(x)
    assert torch.allclose(result.log_px, exact, atol=1e-8, rtol=0)
    assert float(result.error.max()) < 1e-6


def small_model(vocab=3, **options):
    torch.manual_seed(0)
    opts = LSTMCategoricalOptions(latent_dim=2, embed_dim=4, hidden=5, **options)
    return LSTMCategorical(vocab, opts).double()


@pytest.mark.parametrize("wiring", [dict(), dict(z_to_input=False, z_to_hidden=False, z_to_output=True),
                                    dict(z_to_output=True)])
def test_sequence_likelihood_normalizes(wiring):
    model = small_model(**wiring)
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))  # all 27 sequences of length 3
    z = torch.randn(2, 1, 2, dtype=torch.float64).expand(2, 27, 2)
    total = torch.logsumexp(model.log_likelihood(xs, z), dim=-1)
    assert torch.allclose(total, torch.zeros(2, dtype=torch.float64), atol=1e-10)


def test_output_only_fast_path_equals_softmax_path():
    model = small_model(vocab=40, z_to_input=False, z_to_hidden=False, z_to_output=True).float()
    x = torch.randint(0, 40, (6, 4))
    z = (3 * torch.randn(3, 6, 2)).requires_grad_(True)
    fast = model.log_likelihood(x, z)
    logits = model.logits(x, z)
    slow = (logits.gather(-1, x.expand(3, 6, 4).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).sum(-1)
    assert torch.allclose(fast, slow, atol=1e-4)
    g_fast, = torch.autograd.grad(fast.sum(), z)
    g_slow, = torch.autograd.grad(slow.sum(), z)
    assert torch.allclose(g_fast, g_slow, atol=1e-4)


def test_padding_is_ignored_by_likelihood_and_encoder():
    model = small_model(vocab=6)
    full = torch.tensor([[1, 2, 3, 4], [5, 1, -1, -1]])
    z = torch.randn(1, 2, 2, dtype=torch.float64)
    ll = model.log_likelihood(full, z)
    short = model.log_likelihood(torch.tensor([[5, 1]]), z[:, 1:])
    assert torch.allclose(ll[:, 1], short[:, 0], atol=1e-12)
    body, features = model.encoder_body()
    body = body.double()
    out = body(full)
    assert out.shape == (2, features)
    assert torch.allclose(out[1], body(torch.tensor([[5, 1]]))[0], atol=1e-12)


def test_oracle_is_deterministic_and_its_true_nll_is_stable():
    a = SyntheticOracle(**SMALL_ORACLE).build(None)
    b = SyntheticOracle(**SMALL_ORACLE).build(None)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert a.meta["true_nll"] == b.meta["true_nll"]
    assert not torch.equal(a.test, SyntheticOracle(**{**SMALL_ORACLE, "seed": 4}).build(None).test)
    assert a.test.shape == (20, 5) and int(a.test.min()) >= 0 and int(a.test.max()) < 50
    # the stated error bounds a much finer and wider quadrature
    oracle = SyntheticOracle(**SMALL_ORACLE).oracle()
    fine = log_marginal_2d(oracle, a.test, coarse=41, fine=81, box=9.0, passes=3)
    assert abs(float(-fine.log_px.mean()) - a.meta["true_nll"]) <= max(a.meta["true_nll_error"], 1e-4)
    # and a brute-force importance-sampling estimate from the prior agrees within its noise
    torch.manual_seed(0)
    z = torch.randn(40_000, 20, 2)
    log_w = torch.cat([oracle.log_likelihood(a.test, chunk).double() for chunk in z.split(4000)])
    prior_is = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(40_000.0, dtype=torch.float64))
    assert abs(float(-prior_is.mean()) - a.meta["true_nll"]) < 0.05


def test_z_matters_in_the_oracle():
    oracle = SyntheticOracle(**SMALL_ORACLE).oracle()
    assert oracle.out_z.weight.abs().max() > 2.0 and oracle.out_h.weight.abs().max() <= 1.0
    x = oracle.sample(torch.zeros(4, 2), 5, generator=torch.Generator().manual_seed(0))
    near = oracle.log_likelihood(x, torch.zeros(1, 4, 2))
    far = oracle.log_likelihood(x, torch.full((1, 4, 2), 3.0))
    assert float((near - far).abs().mean()) > 5.0


def test_fixed_oracle_generator_loads_and_mismatches_are_named():
    data = SyntheticOracle(**SMALL_ORACLE).build(None)
    model = models.build(data, {"latent_dim": 2, "embed_dim": 8, "hidden": 16, "z_to_input": False,
                                "z_to_hidden": False, "z_to_output": True, "fixed_to_truth": True})
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.out_z.weight, data.meta["truth"]["out_z.weight"])
    with pytest.raises(ConfigError, match="true generator"):
        models.build(data, {"latent_dim": 2, "embed_dim": 8, "hidden": 32, "fixed_to_truth": True})


def test_prepared_sequence_data_round_trip(tmp_path):
    data = SyntheticOracle(**SMALL_ORACLE).build(None)
    data.save(tmp_path / "so.pt", SyntheticOracle(**SMALL_ORACLE).provenance())
    loaded = DataSplits.load(tmp_path / "so.pt")
    assert loaded.test.dtype == torch.int64 and torch.equal(loaded.test, data.test)
    batch = next(loaded.batches("train", 8))
    assert batch.dtype == torch.int64 and batch.shape == (8, 5)
