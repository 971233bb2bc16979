"""IAF: triangular step Jacobians with the reported log-determinants, log q as a change of variables,
near-identity gates at init, gradients, and bounds / IS-NLL against the exact log p(x)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.autograd.functional import jacobian

from benchmarks import models
from benchmarks.datasets import LinearGaussianData
from benchmarks.estimators import elbo
from methods import build_method

from .helpers import assert_bounds_converge_to_exact, fit

SMALL = {"steps": 3, "made_hidden": [8, 8], "context_dim": 3}


def randomized_iaf(data, latent_dim: int = 4, seed: int = 0):
    """A float64 IAF on a small latent space, its flow weights drawn far from the near-identity init."""
    torch.manual_seed(seed)
    method = build_method("iaf", models.build(data, {"latent_dim": latent_dim}), SMALL).double()
    with torch.no_grad():
        for p in method.steps.parameters():
            p.normal_(0.0, 0.7)
    return method


def test_each_step_jacobian_is_triangular_in_its_order_and_log_det_matches(lg_data):
    method = randomized_iaf(lg_data)
    x = lg_data.test[:3].double()
    posterior = method.posterior(x)
    dim = 4
    identity = torch.arange(dim)
    for t, step in enumerate(method.steps):
        expected_order = identity if t % 2 == 0 else identity.flip(0)
        assert torch.equal(step.order, expected_order)  # the order is reversed between steps
        for b in range(x.shape[0]):
            z = torch.randn(dim, dtype=torch.float64)
            context = posterior.context[b]
            J = jacobian(lambda v: step(v, context)[0], z)  # J[i, j] = dz'_i / dz_j
            in_order = J[step.order][:, step.order]
            assert torch.equal(torch.triu(in_order, 1), torch.zeros_like(in_order))  # exactly triangular
            below = in_order[tuple(torch.tril_indices(dim, dim, -1))]
            assert (below.abs() > 1e-6).all()  # and fully autoregressive below the diagonal
            if t % 2 == 1:  # reversed order: triangular the other way round in the original indices
                assert torch.equal(torch.tril(J, -1), torch.zeros_like(J))
            _, reported_log_det = step(z, context)
            assert torch.allclose(reported_log_det, torch.linalg.slogdet(J).logabsdet, atol=1e-10)
            m, s = step.made(z, context)
            assert torch.allclose(torch.diagonal(J), torch.sigmoid(s), atol=1e-12)


def test_log_q_is_the_base_density_minus_the_log_det_of_the_whole_map(lg_data):
    method = randomized_iaf(lg_data, seed=1)
    x = lg_data.test[:4].double()
    posterior = method.posterior(x)
    dim = 4
    for b in range(x.shape[0]):
        single = type(posterior)(posterior.mu[b:b + 1], posterior.logvar[b:b + 1], posterior.context[b:b + 1],
                                 posterior.steps)
        eps = torch.randn(dim, dtype=torch.float64)
        J = jacobian(lambda e: single.transform(e.view(1, 1, dim))[0].view(dim), eps)
        _, log_q = single.transform(eps.view(1, 1, dim))
        base = -0.5 * float((eps.pow(2) + math.log(2 * math.pi)).sum())
        log_det = float(torch.linalg.slogdet(J).logabsdet)
        assert math.isclose(float(log_q.detach()), base - log_det, abs_tol=1e-9)
    # sample(n) is that map applied to standard-normal noise
    torch.manual_seed(5)
    z, log_q = posterior.sample(3)
    torch.manual_seed(5)
    z_again, log_q_again = posterior.transform(torch.randn(3, 4, dim, dtype=torch.float64))
    assert torch.equal(z, z_again) and torch.equal(log_q, log_q_again)


def test_gates_start_near_the_identity(lg_data):
    x = lg_data.test
    for gate_bias in (2.0, 0.0):
        torch.manual_seed(0)
        method = build_method("iaf", models.build(lg_data, {}), {"gate_bias": gate_bias})
        with torch.no_grad():
            posterior = method.posterior(x)
            z = posterior.mu + torch.exp(0.5 * posterior.logvar) * torch.randn(4, *posterior.mu.shape)
            for step in method.steps:
                gates = torch.sigmoid(step.made(z, posterior.context)[1])
                z, _ = step(z, posterior.context)
                assert abs(float(gates.mean()) - 1 / (1 + math.exp(-gate_bias))) < 0.05
                if gate_bias == 2.0:
                    assert float(gates.min()) > 0.6


def test_elbo_below_and_is_nll_converging_to_the_exact_log_px(lg_data):
    torch.manual_seed(0)
    method = build_method("iaf", models.build(lg_data, {"fixed_to_truth": True}), {"made_hidden": [32, 32]})
    fit(method, lg_data, steps=50, lr=1e-2)  # deliberately short: q is close but not exact
    torch.manual_seed(1)
    with torch.no_grad():
        posterior = method.posterior(lg_data.test)
    assert_bounds_converge_to_exact(method.model, posterior, lg_data.test, largest_samples=2000)


def test_flow_goes_beyond_the_best_diagonal_gaussian():
    """On a linear-Gaussian model whose posterior has correlation -0.84, no diagonal Gaussian q gets within
    -0.5 log(1 - rho^2) = 0.60 nats of log p(x); a trained IAF does."""
    data = LinearGaussianData(x_dim=4, latent_dim=2, n_train=300, n_valid=100, n_test=100, noise_std=0.5,
                              diagonal_posterior=False, seed=11).build(Path("unused"))
    torch.manual_seed(0)
    method = build_method("iaf", models.build(data, {"fixed_to_truth": True}), {"steps": 2})
    fit(method, data, steps=150, lr=1e-2)
    model, x = method.model, data.test
    _, cov = model.exact_posterior(x)
    rho = float(cov[0, 1] / cov.diagonal().prod().sqrt())
    mean_field_gap = -0.5 * math.log(1 - rho**2)
    assert mean_field_gap > 0.5
    torch.manual_seed(1)
    with torch.no_grad():
        gap = float((model.exact_log_marginal(x) - elbo(model, method.posterior(x), x, 2000)).mean())
    assert 0 < gap < mean_field_gap - 0.3
