"""The shared ELBO / IS-NLL estimator against closed-form answers on the linear-Gaussian model."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.estimators import bound_terms, chunk_size, elbo, importance_sample, log_mean_exp
from methods.base import DiagonalGaussian, Posterior


def gaussian_kl(mu_q, var_q, mu_p, cov_p):
    """KL(N(mu_q, diag var_q) || N(mu_p, cov_p)) per datapoint, exact."""
    d = mu_q.shape[-1]
    prec = torch.linalg.inv(cov_p)
    diff = mu_p - mu_q
    trace = (torch.diagonal(prec) * var_q).sum(-1)
    maha = torch.einsum("bi,ij,bj->b", diff, prec, diff)
    return 0.5 * (trace + maha - d + torch.logdet(cov_p) - torch.log(var_q).sum(-1))


def exact_posterior_q(model, x):
    mean, cov = model.exact_posterior(x)
    return DiagonalGaussian(mean, torch.log(torch.diagonal(cov)).expand_as(mean).clone())


def test_true_posterior_is_diagonal_and_every_log_weight_equals_log_px(lg_data, lg_true_model):
    x = lg_data.test[:20].double()
    _, cov = lg_true_model.exact_posterior(x)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-10)
    q = exact_posterior_q(lg_true_model, x)
    exact = lg_true_model.exact_log_marginal(x)
    z, log_q = q.sample(50)
    log_w = lg_true_model.log_joint(x, z) - log_q
    # at the true posterior the importance weight p(x,z)/q(z|x) = p(x) for every z
    assert torch.allclose(log_w, exact.expand_as(log_w), atol=1e-9)
    assert torch.allclose(elbo(lg_true_model, q, x, 10), exact, atol=1e-9)


def test_elbo_equals_log_px_minus_kl_and_is_below_log_px(lg_data, lg_true_model):
    x = lg_data.test[:50].double()
    exact = lg_true_model.exact_log_marginal(x)
    post_mean, post_cov = lg_true_model.exact_posterior(x)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # several arbitrary q's
        mu = post_mean + torch.randn(post_mean.shape, generator=g, dtype=torch.float64)
        logvar = torch.randn(post_mean.shape, generator=g, dtype=torch.float64)
        q = DiagonalGaussian(mu, logvar)
        torch.manual_seed(2)
        log_w = bound_terms(lg_true_model, q, x, 20000).log_weight
        torch.manual_seed(2)
        bound = elbo(lg_true_model, q, x, 20000)
        assert torch.allclose(bound, log_w.mean(0))
        expected = exact - gaussian_kl(mu, logvar.exp(), post_mean, post_cov)
        assert torch.all(expected < exact)
        standard_error = log_w.std(0) / 20000**0.5
        assert torch.all((bound - expected).abs() < 5 * standard_error), (bound - expected).abs().max()
        assert torch.all(bound < exact)


def test_is_nll_converges_to_exact_and_error_shrinks_with_samples(lg_data, lg_true_model):
    x = lg_data.test[:100].double()
    exact = lg_true_model.exact_log_marginal(x)
    post_mean, post_cov = lg_true_model.exact_posterior(x)
    # an imperfect proposal: shifted mean, twice the posterior variance (so the weights have finite variance)
    q = DiagonalGaussian(post_mean + 0.3, torch.log(2 * torch.diagonal(post_cov)).expand_as(post_mean))
    errors = {}
    for samples in (1, 10, 100, 10000):
        torch.manual_seed(samples)
        est = importance_sample(lg_true_model, q, x, samples, chunk=257)
        errors[samples] = float((est.log_px - exact).abs().mean())
        # IWAE is a lower bound in expectation (Jensen): no significant excess over log p(x)
        diff = est.log_px - exact
        assert float(diff.mean()) < 3 * float(diff.std()) / len(diff) ** 0.5
    assert errors[1] > errors[10] > errors[100] > errors[10000]
    assert errors[10000] < 0.01


class FixedSamples(Posterior):
    """Hands out the rows of a fixed (S, B, D) tensor in order; log q from a fixed Gaussian."""

    def __init__(self, z, q: DiagonalGaussian):
        self.z, self.q, self.used = z, q, 0

    def sample(self, n):
        z = self.z[self.used : self.used + n]
        self.used += n
        return z, self.q.log_prob(z)


def test_chunked_equals_unchunked(lg_data, lg_true_model):
    x = lg_data.test[:30].double()
    q = DiagonalGaussian(torch.zeros(30, 2, dtype=torch.float64), torch.zeros(30, 2, dtype=torch.float64))
    z, _ = q.sample(1000)
    full = importance_sample(lg_true_model, FixedSamples(z, q), x, 1000)
    for chunk in (1, 7, 100, 999):
        part = importance_sample(lg_true_model, FixedSamples(z, q), x, 1000, chunk=chunk)
        for name in ("log_px", "elbo", "kl", "log_likelihood", "ess"):
            assert torch.allclose(getattr(part, name), getattr(full, name), rtol=0, atol=1e-9), name
    reference = log_mean_exp(lg_true_model.log_joint(x, z) - q.log_prob(z))
    assert torch.allclose(full.log_px, reference, atol=1e-10)


class FixedLogQ(Posterior):
    """Hands out a fixed float32 sequence of log q values (z unused), chunk after chunk."""

    def __init__(self, log_q):
        self.log_q, self.used = log_q, 0

    def sample(self, n):
        log_q = self.log_q[self.used : self.used + n]
        self.used += n
        return torch.zeros(n, log_q.shape[1], 1), log_q


class ZeroModel:
    def log_likelihood(self, x, z):
        return torch.zeros(z.shape[:2], dtype=torch.float32)

    def log_prior(self, z):
        return torch.zeros(z.shape[:2], dtype=torch.float32)


def test_accumulation_is_float64():
    """Log weights ~ -1.2e4 with a spread of 1: a float32 running sum would be off by far more than 1e-6."""
    samples = 200_000
    log_q = (12345.678 + torch.rand(samples, 2, generator=torch.Generator().manual_seed(0))).float()
    est = importance_sample(ZeroModel(), FixedLogQ(log_q), torch.zeros(2, 1), samples, chunk=50_000)
    assert est.log_px.dtype == torch.float64 and est.elbo.dtype == torch.float64
    log_w = -log_q.double()
    assert torch.allclose(est.elbo, log_w.mean(0), rtol=0, atol=1e-8)
    assert torch.allclose(est.log_px, torch.logsumexp(log_w, 0) - math.log(samples), rtol=0, atol=1e-8)
    float32_running_sum = torch.zeros(2)
    for block in (-log_q).split(1000):
        float32_running_sum += block.sum(0)
    assert float((float32_running_sum / samples - log_w.mean(0)).abs().max()) > 1e-4  # the test has teeth


def test_chunk_size_bounds_memory():
    assert chunk_size(5000, 100, 784, 1 << 24) * 100 * 784 <= 1 << 24
    assert chunk_size(10, 100, 784, 1 << 30) == 10
    assert chunk_size(5000, 10**6, 10**6, 10) == 1


@pytest.mark.parametrize("n", [1, 5])
def test_diagonal_gaussian_log_q_matches_torch_and_normalizes(n):
    mu, logvar = torch.randn(3, 1, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    z, log_q = q.sample(n)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(log_q, ref, atol=1e-12)
    grid = torch.linspace(-40, 40, 200001, dtype=torch.float64).view(-1, 1, 1)
    mass = torch.trapezoid(q.log_prob(grid).exp(), grid.view(-1), dim=0)
    assert torch.allclose(mass, torch.ones(3, dtype=torch.float64), atol=1e-6)
    z, log_q = q.sample(200000)
    mc_kl = log_q + 0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)  # log q - log N(z; 0, 1)
    assert torch.allclose(mc_kl.mean(0), q.kl_to_standard_normal(), atol=0.05)
