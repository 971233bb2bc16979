"""Generative model families: likelihoods against torch.distributions, closed forms against quadrature."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import models
from benchmarks.datasets import LinearGaussianData
from benchmarks.errors import ConfigError


def test_bernoulli_log_likelihood_matches_torch(binary_model, binary_data):
    x = binary_data.test[:5].float()
    z = torch.randn(3, 5, binary_model.latent_dim)
    logits = binary_model.decoder(z)
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(binary_model.log_likelihood(x, z), ref, atol=1e-4)


def test_bernoulli_likelihood_normalizes_over_all_binary_vectors():
    model = models.BernoulliMLP(3, models.BernoulliMLPOptions(latent_dim=2, hidden=(4,)))
    xs = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float32)
    z = torch.randn(1, 1, 2).expand(1, 8, 2)
    with torch.no_grad():
        total = torch.logsumexp(model.log_likelihood(xs, z), dim=-1)
    assert abs(float(total)) < 1e-5


def test_linear_gaussian_marginal_matches_quadrature():
    spec = LinearGaussianData(x_dim=3, latent_dim=1, seed=5)
    data = spec.build(None)
    model = models.build(data, {"fixed_to_truth": True}).double()
    t = data.meta["truth"]
    model.set_parameters(t["W"], t["b"], t["psi"])
    x = data.test[:4].double()
    grid = torch.linspace(-12, 12, 40001, dtype=torch.float64).view(-1, 1, 1).expand(-1, 4, 1)
    joint = model.log_joint(x, grid).exp()
    quad = torch.log(torch.trapezoid(joint, grid[:, 0, 0], dim=0))
    assert torch.allclose(quad, model.exact_log_marginal(x), atol=1e-8)


@pytest.mark.parametrize("diagonal", [True, False])
def test_linear_gaussian_exact_posterior_is_the_conditional(diagonal):
    data = LinearGaussianData(x_dim=5, latent_dim=3, diagonal_posterior=diagonal, seed=2).build(None)
    model = models.build(data, {"fixed_to_truth": True}).double()
    t = data.meta["truth"]
    model.set_parameters(t["W"], t["b"], t["psi"])
    x = data.test[:6].double()
    mean, cov = model.exact_posterior(x)
    z = torch.randn(7, 6, 3, dtype=torch.float64)
    post = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    # Bayes: log p(z|x) = log p(x,z) - log p(x) for every z
    assert torch.allclose(post.log_prob(z), model.log_joint(x, z) - model.exact_log_marginal(x), atol=1e-9)
    off_diagonal = (cov - torch.diag(torch.diagonal(cov))).abs().max()
    assert (off_diagonal < 1e-10) if diagonal else (off_diagonal > 1e-3)


def test_encoder_bodies_map_batches_to_features(binary_model, binary_data, lg_data):
    body, features = binary_model.encoder_body()
    assert body(binary_data.test[:3].float()).shape == (3, features)
    lg_model = models.build(lg_data, {"encoder_hidden": [8]})
    body, features = lg_model.encoder_body()
    assert features == 8 and body(lg_data.test[:3]).shape == (3, 8)


def test_family_must_fit_the_dataset(lg_data):
    with pytest.raises(ConfigError, match="bernoulli_mlp"):
        models.build(lg_data, {"family": "bernoulli_mlp"})
    with pytest.raises(ConfigError, match="unknown option"):
        models.build(lg_data, {"hiddn": [3]})


def test_log_prior_is_standard_normal(binary_model):
    z = torch.randn(2, 3, binary_model.latent_dim)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(binary_model.log_prior(z), ref, atol=1e-5)
    assert math.isclose(float(binary_model.log_prior(torch.zeros(1, 1, 4))), -2 * math.log(2 * math.pi), rel_tol=1e-6)
