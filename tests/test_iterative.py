"""Iterative amortized inference: its initialization, its gradient split, test-time autograd, and its
convergence to the exact log p(x) of the linear-Gaussian model with enough test-time iterations."""
from __future__ import annotations

import torch

from benchmarks import models
from benchmarks.estimators import elbo
from methods import build_method
from methods.base import DiagonalGaussian, Step

from .helpers import fit


def test_zero_iterations_return_the_initialization(lg_data):
    x = lg_data.test[:10]
    prior_start = build_method("iterative", models.build(lg_data, {}), {"iterations": 0, "test_iterations": 0})
    q = prior_start.posterior(x)
    assert torch.equal(q.mu, torch.zeros(10, 2)) and torch.equal(q.logvar, torch.zeros(10, 2))
    encoder_start = build_method("iterative", models.build(lg_data, {"encoder_hidden": [5]}),
                                 {"iterations": 0, "test_iterations": 0, "init": "encoder"})
    q = encoder_start.posterior(x)
    mu, logvar = encoder_start.init_head(encoder_start.data_body(x)).chunk(2, -1)
    assert torch.equal(q.mu, mu) and torch.equal(q.logvar, logvar)
    # a nonzero T moves away from it
    moved = build_method("iterative", models.build(lg_data, {}), {"iterations": 1, "test_iterations": 1})
    assert not torch.equal(moved.posterior(x).mu, torch.zeros(10, 2))


def test_test_iterations_apply_in_eval_mode_and_iterations_in_training(lg_data):
    method = build_method("iterative", models.build(lg_data, {}), {"iterations": 2, "test_iterations": 0})
    x = lg_data.test[:4]
    assert not torch.equal(method.train().posterior(x).mu, torch.zeros(4, 2))
    assert torch.equal(method.eval().posterior(x).mu, torch.zeros(4, 2))


def test_posterior_under_no_grad_runs_autograd_on_lambda_only(lg_data):
    method = build_method("iterative", models.build(lg_data, {}), {"test_iterations": 3}).eval()
    x = lg_data.test[:8]
    with torch.no_grad():
        q = method.posterior(x)
    assert not q.mu.requires_grad  # no graph escapes a no_grad call
    assert all(p.grad is None for p in method.parameters())
    torch.manual_seed(0)
    q = method.posterior(x)  # with autograd on, lambda_T stays differentiable w.r.t. the update network
    q.mu.sum().backward()
    assert all(p.grad is None for p in method.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.inference_parameters())


def test_loss_trains_the_network_on_the_average_bound_and_the_decoder_on_the_last(lg_data):
    """Against a direct implementation: the update network's gradient is that of the mean over t of
    -ELBO(lambda_t), the decoder's that of -ELBO(lambda_T) with lambda_T constant (same noise)."""
    torch.manual_seed(0)
    model = models.build(lg_data, {}).double()  # a learnable decoder
    method = build_method("iterative", model, {"iterations": 3, "hidden": [8]}).double()
    x = lg_data.test[:6].double()
    torch.manual_seed(1)
    loss = method.loss(x, Step())
    net_params, decoder_params = method.inference_parameters(), list(model.parameters())
    got = torch.autograd.grad(loss, net_params + decoder_params)

    torch.manual_seed(1)  # replay the same noise, draw by draw
    data_term = method._data_term(method.data_body(x))
    lam = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
    bounds = []
    for t in range(4):
        bound = elbo(model, DiagonalGaussian(*lam.chunk(2, -1)), x)  # keeps its graph to the network
        bounds.append(bound)
        if t < 3:
            (grad,) = torch.autograd.grad(bound.sum(), lam, retain_graph=True)
            lam = method._update(lam.detach(), grad, data_term)
    network_loss = -torch.stack(bounds[1:]).mean(0).mean()
    expected_net = torch.autograd.grad(network_loss, net_params, retain_graph=True)
    # lambda_T holds no theta (the g_t are constants), so this is the decoder's gradient at a fixed lambda_T
    expected_decoder = torch.autograd.grad(-bounds[-1].mean(), decoder_params, retain_graph=True)
    for a, b in zip(got, list(expected_net) + list(expected_decoder)):
        assert torch.allclose(a, b, atol=1e-10), (a, b)
    assert torch.allclose(loss, -bounds[-1].mean())  # the reported value is -ELBO(lambda_T)
    # and the split is real: the two gradients differ from those of the plain sum of the terms
    mixed = torch.autograd.grad(network_loss - bounds[-1].mean(), decoder_params)
    assert not all(torch.allclose(a, b) for a, b in zip(mixed, expected_decoder))


def test_enough_iterations_reach_the_exact_log_marginal(lg_data):
    """A learned optimizer (gradient and lambda only, no view of x) trained with T = 5 on the true
    linear-Gaussian model: ELBO -> log p(x) as test-time iterations grow, and it stays there at 20x T."""
    torch.manual_seed(0)
    method = build_method("iterative", models.build(lg_data, {"fixed_to_truth": True}),
                          {"use_data": False, "gradient_encoding": "log_sign", "samples": 16, "hidden": [32, 32]})
    fit(method, lg_data, steps=120, lr=3e-2)
    method.eval()
    x = lg_data.test
    exact = method.model.exact_log_marginal(x)
    gaps = {}
    for iterations in (0, 1, 20, 100):
        method.config.test_iterations = iterations
        torch.manual_seed(1)
        with torch.no_grad():
            gaps[iterations] = float((exact - elbo(method.model, method.posterior(x), x, 1000)).mean())
    assert gaps[0] > 10.0, gaps  # the prior is far from p(z|x)
    assert gaps[1] > gaps[20], gaps
    assert 0.0 < gaps[20] < 0.1, gaps  # KL(q || p(z|x)) of a few hundredths of a nat
    assert 0.0 < gaps[100] < 0.1, gaps  # stable far beyond the trained horizon
