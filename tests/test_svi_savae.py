"""SVI and SA-VAE: gradients through the refinement (exact vs finite differences vs numerical), the
K = 0 reduction to AVI, convergence to the exact posterior, step scaling and the ablation variants."""
from __future__ import annotations

import torch

from benchmarks import models
from benchmarks.estimators import elbo
from methods import build_method
from methods._refinement import SVIOptions, refine
from methods.base import DiagonalGaussian, Step

from .helpers import directional_derivative_check, fit


def tiny_savae(lg_data, **options):
    """A float64 SA-VAE on the linear-Gaussian family, decoder learnable, small encoder."""
    torch.manual_seed(0)
    model = models.build(lg_data, {"encoder_hidden": [4]})
    config = {"steps": 4, "lr": 0.05, "momentum": 0.5, "grad_clip": 5.0, **options}
    return build_method("savae", model, config).double()


def seeded_loss(method, x, seed=123):
    def loss():
        torch.manual_seed(seed)  # the same SVI and ELBO noise at every evaluation
        return method.loss(x, Step())
    return loss


def test_exact_gradient_matches_numerical_derivative(lg_data):
    method = tiny_savae(lg_data)
    x = lg_data.test[:5].double()
    encoder = list(method.encoder.parameters())
    decoder = list(method.model.parameters())
    for params in (encoder, decoder):
        for analytic, numeric in directional_derivative_check(seeded_loss(method, x), params, directions=3):
            assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


def flat_grad(method, x) -> torch.Tensor:
    method.zero_grad()
    seeded_loss(method, x)().backward()
    return torch.cat([p.grad.reshape(-1) for p in method.parameters()])


def test_finite_difference_mode_agrees_with_exact_mode(lg_data):
    x = lg_data.test[:5].double()
    exact = flat_grad(tiny_savae(lg_data, gradient="exact"), x)
    finite = flat_grad(tiny_savae(lg_data, gradient="finite_difference"), x)
    assert exact.abs().max() > 1e-3
    assert torch.allclose(finite, exact, rtol=1e-3, atol=1e-5), (finite - exact).abs().max()
    # batch-mean step scaling (the reference code's) is covered too
    exact = flat_grad(tiny_savae(lg_data, step_scaling="batch_mean", lr=0.5), x)
    finite = flat_grad(tiny_savae(lg_data, step_scaling="batch_mean", lr=0.5, gradient="finite_difference"), x)
    assert torch.allclose(finite, exact, rtol=1e-3, atol=1e-5), (finite - exact).abs().max()


def test_zero_steps_is_avi(lg_data):
    x = lg_data.test[:8]
    torch.manual_seed(0)
    savae = build_method("savae", models.build(lg_data, {"encoder_hidden": [4]}), {"steps": 0})
    torch.manual_seed(0)
    avi = build_method("avi", models.build(lg_data, {"encoder_hidden": [4]}))
    losses, grads = [], []
    for method in (savae, avi):
        torch.manual_seed(5)
        loss = method.loss(x, Step())
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in method.parameters()])
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_svi_reaches_the_exact_posterior_elbo(lg_data, lg_true_model):
    x = lg_data.test
    exact = lg_true_model.exact_log_marginal(x.double())
    # single-sample SGD keeps a noise floor proportional to lr: a small step and many steps
    svi = build_method("svi", lg_true_model, {"steps": 3000, "lr": 0.002, "momentum": 0.5})
    posterior = svi.posterior(x.double())
    bound = elbo(lg_true_model, posterior, x.double(), 2000)
    gap = exact - bound
    assert float(gap.min()) > -0.02  # a bound (up to Monte Carlo error)
    assert float(gap.mean()) < 0.025  # and tight: the Gaussian family holds the true posterior
    start = elbo(lg_true_model, DiagonalGaussian(torch.zeros_like(posterior.mu), torch.zeros_like(posterior.mu)),
                 x.double(), 2000)
    assert float((exact - start).mean()) > 1.0  # it did have work to do


def test_refinement_improves_the_encoder_elbo(lg_data):
    torch.manual_seed(0)
    method = build_method("savae", models.build(lg_data, {"fixed_to_truth": True}),
                          {"steps": 20, "lr": 0.05, "test_steps": 20})
    fit(method, lg_data, steps=50, lr=1e-2)
    x = lg_data.test
    with torch.no_grad():
        mu0, logvar0 = method.encoder(x)
    refined = method.posterior(x)
    before = elbo(method.model, DiagonalGaussian(mu0, logvar0), x, 500)
    after = elbo(method.model, refined, x, 500)
    assert float(after.mean()) > float(before.mean())


def test_per_example_steps_do_not_depend_on_the_batch(lg_data, lg_true_model):
    x = lg_data.test[:6].double()
    zeros = torch.zeros(6, 2, dtype=torch.float64)
    results = {}
    for scaling in ("per_example", "batch_mean"):
        opts = SVIOptions(steps=5, lr=0.05, step_scaling=scaling)
        torch.manual_seed(1)
        full, _ = refine(lg_true_model, x, zeros, zeros, opts, 5)
        torch.manual_seed(1)
        eps = [torch.randn(6, 2, dtype=torch.float64) for _ in range(5)]
        # the first datapoint alone, fed the noise it saw inside the batch
        generator = iter(eps)
        original = torch.randn_like
        torch.randn_like = lambda t: next(generator)[:1]  # noqa: E731
        try:
            alone, _ = refine(lg_true_model, x[:1], zeros[:1], zeros[:1], opts, 5)
        finally:
            torch.randn_like = original
        results[scaling] = (full[:1], alone)
    assert torch.allclose(*results["per_example"], atol=1e-12)
    assert not torch.allclose(*results["batch_mean"], atol=1e-3)


def test_vae_svi_trains_the_encoder_on_its_own_elbo_only(lg_data):
    torch.manual_seed(0)
    model = models.build(lg_data, {"encoder_hidden": [4]})
    method = build_method("savae", model, {"steps": 3, "lr": 0.05, "variant": "vae_svi"}).double()
    x = lg_data.test[:5].double()
    torch.manual_seed(9)
    method.loss(x, Step()).backward()
    encoder_grads = [p.grad.clone() for p in method.encoder.parameters()]
    decoder_grads = [p.grad.clone() for p in method.model.parameters()]
    # the same computation by hand, in the same order of random draws
    method.zero_grad()
    torch.manual_seed(9)
    mu0, logvar0 = method.encoder(x)
    mu, logvar = refine(method.model, x, mu0, logvar0, method.config, 3)
    (-elbo(method.model, DiagonalGaussian(mu, logvar), x).mean()).backward()
    for p, g in zip(method.model.parameters(), decoder_grads):
        assert torch.allclose(p.grad, g, atol=1e-12)  # decoder: only the refined ELBO
    method.zero_grad()
    mu0, logvar0 = method.encoder(x)
    (-elbo(method.model, DiagonalGaussian(mu0, logvar0), x).mean()).backward()
    for p, g in zip(method.encoder.parameters(), encoder_grads):
        assert torch.allclose(p.grad, g, atol=1e-12)  # encoder: only its own ELBO


def test_vae_svi_kl_moves_the_encoder_toward_the_refined_posterior(lg_data):
    torch.manual_seed(0)
    model = models.build(lg_data, {"fixed_to_truth": True})
    method = build_method("savae", model, {"steps": 20, "lr": 0.05, "variant": "vae_svi_kl"})
    x = lg_data.test
    exact_mean, _ = model.exact_posterior(x)
    with torch.no_grad():
        before = (method.encoder(x)[0] - exact_mean).abs().mean()
    fit(method, lg_data, steps=200, lr=1e-2)
    with torch.no_grad():
        after = (method.encoder(x)[0] - exact_mean).abs().mean()
    assert float(after) < 0.5 * float(before)
