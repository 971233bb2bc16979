"""Auxiliary-variable inference: a tight bound with the exact reverse model, the fixed-p(a) variant's
known slack, learned r against fixed p(a), gradients, and bounds / IS-NLL against the exact log p(x)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from benchmarks import models
from benchmarks.datasets import LinearGaussianData
from benchmarks.errors import ConfigError
from benchmarks.estimators import elbo
from methods import build_method

from .helpers import assert_bounds_converge_to_exact, fit


@pytest.fixture(scope="module")
def correlated_data():
    """Linear-Gaussian data whose exact posterior has correlation -0.84 (no diagonal Gaussian fits it)."""
    return LinearGaussianData(x_dim=4, latent_dim=2, n_train=300, n_valid=100, n_test=100, noise_std=0.5,
                              diagonal_posterior=False, seed=11).build(Path("unused"))


def true_model(data):
    model = models.build(data, {"fixed_to_truth": True}).double()
    truth = data.meta["truth"]
    model.set_parameters(truth["W"], truth["b"], truth["psi"])
    return model


def set_linear_gaussian_q(method, model, delta_fraction: float = 0.5):
    """Set a linear auxiliary method (hidden=[], aux_dim = D) so that q(a|x) = N(0, I) and
    q(z|a,x) = N(m(x) + L a, delta I) with L L^T + delta I = the exact posterior covariance S and m(x) the
    exact posterior mean: the marginal q(z|x) is then p(z|x). Returns (L, delta)."""
    dim = model.latent_dim
    w_scaled = model.W.T * torch.exp(-model.log_psi)
    precision = torch.eye(dim, dtype=torch.float64) + w_scaled @ model.W
    cov = torch.linalg.inv(precision)
    mean_map = cov @ w_scaled  # E[z|x] = mean_map (x - b)
    delta = delta_fraction * float(torch.linalg.eigvalsh(cov).min())
    L = torch.linalg.cholesky(cov - delta * torch.eye(dim, dtype=torch.float64))
    head = method.latent_head
    with torch.no_grad():
        method.aux_head.weight.zero_()
        method.aux_head.bias.zero_()
        head.feature_out.weight[:dim] = mean_map
        head.feature_out.bias[:dim] = -mean_map @ model.b
        head.feature_out.weight[dim:] = 0.0
        head.feature_out.bias[dim:] = math.log(delta)
        head.input_out.weight[:dim] = L
        head.input_out.weight[dim:] = 0.0
    return L, delta


def test_exact_reverse_model_makes_the_bound_tight(correlated_data):
    """With r(a|x,z) = the exact q(a|z,x), log_q is the marginal log q(z|x) for every sample; here that
    marginal is the exact posterior, so log w = log p(x) for every sample and the bound is log p(x)."""
    model = true_model(correlated_data)
    dim = model.latent_dim
    method = build_method("auxiliary", model, {"hidden": [], "aux_dim": dim}).double()
    L, delta = set_linear_gaussian_q(method, model)
    x = correlated_data.test[:50].double()
    assert torch.equal(method.body(x), x)  # the linear-Gaussian encoder body is the identity
    exact = model.exact_log_marginal(x)
    post_mean, post_cov = model.exact_posterior(x)
    # exact q(a|z,x) for a ~ N(0, I), z|a ~ N(m + L a, delta I): Gaussian with precision I + L^T L / delta
    cond_cov = torch.linalg.inv(torch.eye(dim, dtype=torch.float64) + L.T @ L / delta)

    def exact_reverse(features, z, a):
        cond_mean = ((z - post_mean) / delta) @ L @ cond_cov
        return MultivariateNormal(cond_mean, covariance_matrix=cond_cov).log_prob(a)

    method.reverse_log_prob = exact_reverse
    torch.manual_seed(0)
    with torch.no_grad():
        posterior = method.posterior(x)
        z, log_q = posterior.sample(500)
        assert torch.allclose(log_q, MultivariateNormal(post_mean, post_cov).log_prob(z), atol=1e-9)
        log_w = model.log_joint(x, z) - log_q
        assert torch.allclose(log_w, exact.expand_as(log_w), atol=1e-9)  # constant: the bound is tight
        assert torch.allclose(elbo(model, posterior, x, 50), exact, atol=1e-9)
        # mean(n) averages mu_z(x, a) = m(x) + L a over n draws of a: Monte Carlo error sd = |L row| / sqrt(n)
        standard_error = L.pow(2).sum(1).sqrt() / math.sqrt(4000)
        assert ((posterior.mean(4000) - post_mean).abs() < 5 * standard_error).all()

        # the same q with the (untrained, diagonal) learned r: a valid but strictly looser bound
        del method.reverse_log_prob
        learned_gap = float((exact - elbo(model, method.posterior(x), x, 2000)).mean())
        assert learned_gap > 0.05

        # the fixed-p(a) variant with the same q: its slack is the mutual information I(a; z | x) under q,
        # 0.5 log det(I + L^T L / delta) in closed form
        prior_variant = build_method("auxiliary", model, {"hidden": [], "aux_dim": dim, "reverse": "prior"})
        prior_variant.double().load_state_dict(method.state_dict(), strict=False)
        prior_gap = float((exact - elbo(model, prior_variant.posterior(x), x, 4000)).mean())
        mutual_information = -0.5 * float(torch.logdet(cond_cov))
        assert abs(prior_gap - mutual_information) < 0.02, (prior_gap, mutual_information)


def test_learned_reverse_model_beats_the_fixed_prior_variant(correlated_data):
    """Trained alike, the fixed-p(a) bound is no higher than the learned-r bound. It can never beat the best
    diagonal Gaussian (its gap is >= -0.5 log(1 - rho^2)), while the learned-r bound does."""
    gaps = {}
    for reverse in ("learned", "prior"):
        torch.manual_seed(0)
        method = build_method("auxiliary", models.build(correlated_data, {"fixed_to_truth": True}),
                              {"reverse": reverse})
        fit(method, correlated_data, steps=300, lr=1e-2)
        model, x = method.model, correlated_data.test
        torch.manual_seed(1)
        with torch.no_grad():
            gaps[reverse] = float((model.exact_log_marginal(x) - elbo(model, method.posterior(x), x, 2000)).mean())
    _, cov = model.exact_posterior(x)
    rho = float(cov[0, 1] / cov.diagonal().prod().sqrt())
    mean_field_gap = -0.5 * math.log(1 - rho**2)
    assert gaps["learned"] < gaps["prior"]
    assert gaps["prior"] > mean_field_gap - 0.02  # a theorem, up to Monte Carlo error
    assert 0 < gaps["learned"] < mean_field_gap - 0.1


def test_elbo_below_and_is_nll_converging_to_the_exact_log_px(lg_data):
    torch.manual_seed(0)
    method = build_method("auxiliary", models.build(lg_data, {"fixed_to_truth": True}))
    fit(method, lg_data, steps=200, lr=1e-2)  # deliberately short: q and r are close but not exact
    torch.manual_seed(1)
    with torch.no_grad():
        posterior = method.posterior(lg_data.test)
    assert_bounds_converge_to_exact(method.model, posterior, lg_data.test, largest_samples=5000)


def test_fixed_prior_is_a_labelled_variant_without_reverse_model(lg_data):
    model = models.build(lg_data, {})
    learned = build_method("auxiliary", model, {})
    prior = build_method("auxiliary", model, {"reverse": "prior"})
    assert learned.config.reverse == "learned" and "reverse=learned" in learned.description()
    assert "reverse=prior" in prior.description()
    assert prior.reverse_head is None
    n_reverse = sum(p.numel() for p in learned.reverse_head.parameters())
    assert len(learned.inference_parameters()) > len(prior.inference_parameters())
    assert (sum(p.numel() for p in learned.inference_parameters())
            - sum(p.numel() for p in prior.inference_parameters())) == n_reverse
    with pytest.raises(ConfigError):
        build_method("auxiliary", model, {"reverse": "exact"})
