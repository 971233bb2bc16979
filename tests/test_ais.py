"""AIS (benchmarks/ais.py) against exact log p(x): the linear-Gaussian closed form and 2-d quadrature."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import models
from benchmarks.ais import AISConfig, ais, ais_log_px, beta_schedule
from benchmarks.models import BernoulliMLP, BernoulliMLPOptions
from benchmarks.quadrature import log_marginal_2d


def true_model(data):
    model = models.build(data, {"fixed_to_truth": True}).double()
    t = data.meta["truth"]
    model.set_parameters(t["W"], t["b"], t["psi"])
    return model


@pytest.mark.parametrize("schedule", ["sigmoid", "linear"])
def test_beta_schedule_runs_from_prior_to_posterior(schedule):
    beta = beta_schedule(AISConfig(intermediate=50, schedule=schedule))
    assert beta.shape == (51,) and beta[0] == 0.0 and beta[-1] == 1.0
    steps = beta.diff()
    assert torch.all(steps > 0)
    if schedule == "sigmoid":  # denser near both ends than in the middle
        assert steps[0] < steps[25] / 3 and steps[-1] < steps[25] / 3
    else:
        assert torch.allclose(steps, torch.full_like(steps, 1 / 50))


def test_ais_recovers_exact_log_px_and_tightens_with_more_distributions(lg_full_data):
    model = true_model(lg_full_data)  # full-covariance posterior: HMC has to do real work
    x = lg_full_data.test[:16].double()
    exact = model.exact_log_marginal(x)
    errors, bias = {}, {}
    for intermediate in (5, 300):
        torch.manual_seed(1)
        result = ais(model, x, AISConfig(intermediate=intermediate, chains=32, leapfrog=5, step_size=0.2))
        assert result.log_px.dtype == torch.float64 and result.log_weights.shape == (32, 16)
        errors[intermediate] = float((result.log_px - exact).abs().mean())
        bias[intermediate] = float((result.log_px - exact).mean())
    assert errors[300] < 0.2, errors
    assert abs(bias[300]) < 0.1, bias
    assert errors[300] < errors[5] / 5, errors


def test_ais_is_a_lower_bound_in_expectation(lg_data):
    model = true_model(lg_data)
    x = lg_data.test[:40].double()
    exact = model.exact_log_marginal(x)
    diffs = []
    for repeat in range(3):
        torch.manual_seed(10 + repeat)
        diffs.append(ais_log_px(model, x, AISConfig(intermediate=30, chains=4, leapfrog=3, step_size=0.2),
                                batch_size=20) - exact)
    diff = torch.cat(diffs)
    # E[w] = p(x), so E[log mean w] <= log p(x): no significant excess over the exact value
    assert float(diff.mean()) < 3 * float(diff.std()) / math.sqrt(diff.numel()), float(diff.mean())
    assert float(diff.abs().mean()) < 1.0  # and not absurdly low either


def test_step_size_adapts_toward_the_target_acceptance_from_both_sides(lg_full_data):
    model = true_model(lg_full_data)
    x = lg_full_data.test[:8].double()
    finals = {}
    for start in (0.01, 1.0):
        torch.manual_seed(2)
        cfg = AISConfig(intermediate=200, chains=8, leapfrog=3, step_size=start, adapt_factor=1.05)
        result = ais(model, x, cfg)
        finals[start] = result.step_size.view(-1)
        assert result.step_size.shape == (1, 8, 1)  # one step size per datapoint
    # started 100x apart, the adapted step sizes meet (within the 1.05 dither and chain noise)
    ratio = finals[1.0] / finals[0.01]
    assert torch.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert torch.all(finals[0.01] > 0.05) and torch.all(finals[1.0] < 0.8)
    torch.manual_seed(2)
    fixed = ais(model, x, AISConfig(intermediate=20, chains=4, leapfrog=3, step_size=0.3, adapt="none"))
    assert torch.all(fixed.step_size == 0.3)
    torch.manual_seed(2)
    per_chain = ais(model, x, AISConfig(intermediate=20, chains=4, leapfrog=3, adapt="chain"))
    assert per_chain.step_size.shape == (4, 8, 1)


def test_ais_on_a_nonlinear_model_matches_quadrature():
    """A Bernoulli MLP decoder with a 2-d latent: skewed, non-Gaussian posteriors, exact log p(x) by quadrature."""
    torch.manual_seed(0)
    model = BernoulliMLP(20, BernoulliMLPOptions(latent_dim=2, hidden=(8,))).double()
    with torch.no_grad():
        for layer in model.decoder:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(3.0)
        z = torch.randn(12, 2, dtype=torch.float64)
        x = torch.bernoulli(model.decode_mean(z))
    exact = log_marginal_2d(model, x).log_px
    torch.manual_seed(3)
    estimate = ais(model, x, AISConfig(intermediate=300, chains=16, leapfrog=5, step_size=0.2)).log_px
    err = estimate - exact
    assert float(err.abs().mean()) < 0.12, err
    assert float(err.mean()) < 3 * float(err.std()) / math.sqrt(err.numel())
