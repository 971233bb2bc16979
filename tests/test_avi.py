"""AVI: its log q, its gradient against finite differences, and its fit to an exact posterior."""
from __future__ import annotations

import torch

from benchmarks import models
from benchmarks.estimators import elbo
from methods import build_method

from .helpers import fit


def test_log_q_is_the_density_of_the_samples(lg_data):
    method = build_method("avi", models.build(lg_data, {}))
    x = lg_data.test[:10]
    posterior = method.posterior(x)
    z, log_q = posterior.sample(4)
    assert torch.allclose(log_q, posterior.log_prob(z), atol=1e-5)


def test_linear_encoder_learns_the_exact_posterior(lg_data):
    torch.manual_seed(0)
    method = build_method("avi", models.build(lg_data, {"fixed_to_truth": True}))
    fit(method, lg_data, steps=1000, lr=2e-2)
    fit(method, lg_data, steps=1000, lr=1e-3)
    x = lg_data.test
    with torch.no_grad():
        mean, cov = method.model.exact_posterior(x)
        posterior = method.posterior(x)
    # posterior std is 0.24-0.48 here: errors are a small fraction of it (SGD noise remains)
    assert float((posterior.mu - mean).abs().mean()) < 0.02
    assert float((posterior.mu - mean).abs().max()) < 0.06
    mean_logvar = posterior.logvar.mean(0)
    assert torch.allclose(mean_logvar, torch.log(torch.diagonal(cov)), atol=0.1)
    # the remaining inference gap KL(q || p(z|x)) = log p(x) - ELBO is small
    gap = method.model.exact_log_marginal(x) - elbo(method.model, posterior, x, 4000)
    assert 0 < float(gap.mean()) < 0.05
