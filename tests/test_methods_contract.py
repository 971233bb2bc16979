"""The method contract, checked for every registered method (new methods are picked up automatically)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import models
from benchmarks.datasets import DataSplits
from benchmarks.estimators import elbo, importance_sample
from methods import available_methods, build_method, method_class
from methods.base import InferenceMethod, Posterior, Step

from .helpers import directional_derivative_check, fit

METHODS = available_methods()


def make(name, data, model_options=None, seed=0):
    torch.manual_seed(seed)
    model = models.build(data, model_options or {})
    return build_method(name, model, method_class(name).test_config)


def test_registry_finds_every_module():
    assert "avi" in METHODS
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, InferenceMethod) and cls.name == name


@pytest.mark.parametrize("name", METHODS)
def test_posterior_shapes_and_loss_gradients(name, binary_data):
    method = make(name, binary_data, {"latent_dim": 3, "hidden": [16]})
    x = next(binary_data.batches("test", 8))
    posterior = method.posterior(x)
    assert isinstance(posterior, Posterior)
    z, log_q = posterior.sample(5)
    assert z.shape == (5, 8, 3) and log_q.shape == (5, 8)
    assert torch.isfinite(z).all() and torch.isfinite(log_q).all()
    assert posterior.mean().shape == (8, 3)
    loss = method.loss(x, Step())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    decoder_grads = [p.grad for p in method.model.parameters() if p.requires_grad]
    assert all(g is not None for g in decoder_grads) and any(g.abs().sum() > 0 for g in decoder_grads)
    inference = method.inference_parameters()
    if inference:  # methods without an encoder (pure SVI) have none
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inference)


@pytest.mark.parametrize("name", [m for m in METHODS if not method_class(m).surrogate_loss])
def test_loss_gradient_matches_finite_differences(name, lg_data):
    """The training loss's autograd gradient (float64, noise fixed by a seed) against central differences,
    along random directions in all trainable parameters (inference side and decoder)."""
    torch.manual_seed(0)
    model = models.build(lg_data, {"encoder_hidden": [5]})
    method = build_method(name, model, method_class(name).test_config).double()
    x = lg_data.test[:6].double()

    def loss():
        torch.manual_seed(123)  # the same reparameterization noise at every evaluation
        return method.loss(x, Step())

    loss()  # staged methods settle which parameters train at their first loss call
    params = [p for p in method.parameters() if p.requires_grad]
    for analytic, numeric in directional_derivative_check(loss, params):
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_under_seed(name, binary_data):
    x = next(binary_data.batches("test", 8))
    results = []
    for _ in range(2):
        method = make(name, binary_data, {"latent_dim": 3, "hidden": [16]}, seed=7)
        torch.manual_seed(11)
        loss = method.loss(x, Step())
        torch.manual_seed(12)
        z, log_q = method.posterior(x).sample(3)
        results.append((loss.detach(), z.detach(), log_q.detach()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_bounds_and_is_nll_against_exact_log_px(name, lg_data):
    """On the linear-Gaussian model with the true generator fixed: ELBO <= log p(x), and the IS estimate
    with the method's own posterior converges to the exact log p(x) (a wrong log_q would not)."""
    method = make(name, lg_data, {"fixed_to_truth": True})
    fit(method, lg_data, steps=300, lr=1e-2)
    model = method.model
    x = lg_data.test
    exact = model.exact_log_marginal(x).double()
    torch.manual_seed(0)
    with torch.no_grad():
        posterior = method.posterior(x)
        bound = elbo(model, posterior, x, 200).double()
    assert float(bound.mean()) < float(exact.mean())
    estimate = importance_sample(model, posterior, x, 5000, chunk=1000)
    assert float((estimate.log_px - exact).abs().mean()) < 0.05
    assert float(estimate.elbo.mean()) <= float(estimate.log_px.mean())


def tiny_family_data(family: str):
    """In-memory data + model options for one step of every method on every model family."""
    g = torch.Generator().manual_seed(0)
    if family == "conv_image":
        pixels = (torch.rand(12, 3, 16, 16, generator=g) * 255).to(torch.uint8)
        data = DataSplits("celeba", "image", "discrete_pixels", pixels, pixels[:4], pixels[:4],
                          meta={"image_shape": [3, 16, 16], "bits_per_dim": True})
        return data, {"latent_dim": 3, "channels": [4, 8], "features": 16}
    tokens = torch.randint(0, 12, (12, 6), generator=g)
    tokens[::3, 4:] = -1  # some shorter sequences
    data = DataSplits("yahoo", "sequence", "categorical", tokens, tokens[:4], tokens[:4], meta={"vocab_size": 12})
    wiring = {} if family == "lstm_text" else {"z_to_input": False, "z_to_hidden": False, "z_to_output": True}
    return data, {"latent_dim": 3, "embed_dim": 8, "hidden": 10, **wiring}


@pytest.mark.parametrize("family", ["conv_image", "lstm_text", "lstm_oracle"])
@pytest.mark.parametrize("name", METHODS)
def test_one_training_step_on_every_family(name, family):
    data, options = tiny_family_data(family)
    method = make(name, data, options)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x = next(data.batches("train", 6, shuffle=True, generator=torch.Generator().manual_seed(1)))
    loss = method.loss(x, Step())
    optimizer.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    optimizer.step()
    with torch.no_grad():
        posterior = method.posterior(x)
    estimate = importance_sample(method.model, posterior, x, 8)
    assert torch.isfinite(estimate.log_px).all() and estimate.log_px.shape == (x.shape[0],)
