"""Inference-gap decomposition (benchmarks/gaps.py, benchmarks/localopt.py) against closed forms on the linear-Gaussian model.

For p(z|x) = N(m, S) the KL-optimal diagonal Gaussian is q*(z) = N(m, diag(1 / diag(S^-1))), and the
approximation gap of the FFG family is KL(q* || p(z|x)) = 0.5 (sum_i log (S^-1)_ii - log det S^-1).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from benchmarks import models
from benchmarks.gaps import GapConfig, inference_gaps
from benchmarks.localopt import (LocalOptimConfig, family_importance_sample, optimize_family, optimize_ffg,
                                 optimize_ffg_one_at_a_time)
from methods import build_method
from methods.base import DiagonalGaussian, InferenceMethod, Step



def true_model(data, W=None):
    model = models.build(data, {"fixed_to_truth": True}).double()
    t = data.meta["truth"]
    model.set_parameters(t["W"] if W is None else W, t["b"], t["psi"])
    return model


def closed_form(model, x):
    """(posterior mean, precision, exact log p(x), FFG optimum (mu, logvar), closed-form FFG gap)."""
    mean, cov = model.exact_posterior(x)
    precision = torch.linalg.inv(cov)
    diag = torch.diagonal(precision)
    gap = 0.5 * (torch.log(diag).sum() - torch.logdet(precision))
    logvar = (-torch.log(diag)).expand_as(mean)
    return mean, precision, model.exact_log_marginal(x), (mean, logvar), float(gap)


def exact_elbo(model, x, mu, logvar):
    """L[q] = log p(x) - KL(q || p(z|x)) for q = N(mu, diag exp(logvar)), per datapoint."""
    mean, precision, exact, _, _ = closed_form(model, x)
    diff = mean - mu
    kl = 0.5 * ((torch.diagonal(precision) * logvar.exp()).sum(-1) + torch.einsum("bi,ij,bj->b", diff, precision, diff)
                - mu.shape[-1] - torch.logdet(precision) - logvar.sum(-1))
    return exact - kl


FAST = LocalOptimConfig(lr=3e-2, samples=100, check_every=50, patience=4, max_steps=5000)  # 1e-3 in the paper
QUICK = LocalOptimConfig(lr=3e-2, samples=100, check_every=20, patience=5, max_steps=5000)


def correlated_W(data):
    """The fixture's W with its second column pulled toward the first: a strongly correlated posterior."""
    W = data.meta["truth"]["W"].clone()
    W[:, 1] = 0.6 * W[:, 0] + 0.6 * W[:, 1]
    return W


def trained_avi(model, data, steps=150):
    """AVI's encoder fitted for a few Adam steps on the train split (float64; the model stays fixed)."""
    torch.manual_seed(0)
    method = build_method("avi", model).double()
    optimizer = torch.optim.Adam(method.encoder.parameters(), lr=2e-2)
    x = data.train.double()
    for _ in range(steps):
        loss = method.loss(x, Step())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return method.eval()


def test_approximation_gap_is_zero_when_the_posterior_is_diagonal(lg_data):
    model = true_model(lg_data)
    x = lg_data.test[:10].double()
    _, _, exact, _, gap = closed_form(model, x)
    assert gap < 1e-10  # the fixture's posterior is diagonal: inside the FFG family
    method = trained_avi(model, lg_data)
    cfg = GapConfig(elbo_samples=2000, eval_samples=5000, local=FAST, ais=None)
    result = inference_gaps(method, x, cfg)
    gaps = result.per_point
    assert torch.allclose(gaps["exact_log_px"], exact)
    # q*_FFG is (nearly) the posterior: L[q*] ~ log p(x), and the IWAE estimate with it is exact
    assert float((exact - gaps["elbo_qstar_ffg"]).max()) < 0.02
    assert float((gaps["log_px_iwae_qstar_ffg"] - exact).abs().max()) < 0.005
    # log p(x): the candidate with the largest mean (IWAE with q or with q*): a selection, so slightly noisy
    assert float((gaps["log_px"] - exact).abs().mean()) < 0.015
    assert abs(float(gaps["approximation_gap_ffg"].mean())) < 0.015
    assert float(gaps["amortization_gap_ffg"].mean()) > 0.02  # q (150 training steps) is not optimal yet
    assert torch.allclose(gaps["inference_gap"], gaps["approximation_gap_ffg"] + gaps["amortization_gap_ffg"])


@pytest.mark.parametrize("correlation", ["fixture", "strong"])
def test_approximation_gap_matches_the_closed_form_kl_of_the_best_diagonal_gaussian(lg_full_data, correlation):
    model = true_model(lg_full_data, correlated_W(lg_full_data) if correlation == "strong" else None)
    x = lg_full_data.test[:10].double()
    _, _, exact, _, gap = closed_form(model, x)
    assert gap > (0.02 if correlation == "fixture" else 0.3)
    method = trained_avi(model, lg_full_data)
    cfg = GapConfig(elbo_samples=2000, eval_samples=5000, local=FAST, ais=None)
    result = inference_gaps(method, x, cfg)
    gaps, summary = result.per_point, result.summary()
    # L[q*_FFG] against the closed-form optimum log p(x) - KL(q*||p): the optimizer leaves a little on the table
    shortfall = float((exact - gaps["elbo_qstar_ffg"]).mean())
    assert gap - 0.005 < shortfall < gap + 0.01 + 0.1 * gap, (shortfall, gap)
    # the estimated approximation gap (log p(x) estimated too) against the closed form
    approx = summary["approximation_gap_ffg"]
    assert gap - 3 * approx["sem"] - 0.01 < approx["mean"] < gap + 3 * approx["sem"] + 0.01 + 0.1 * gap, (approx, gap)
    assert approx["mean"] > 0.015  # distinguishable from the diagonal case (<= 0.015 there)
    # the inference gap of q itself against its closed form, and the identity of the decomposition
    with torch.no_grad():
        q = method.posterior(x)
    true_inference_gap = float((exact - exact_elbo(model, x, q.mu, q.logvar)).mean())
    inference = summary["inference_gap"]
    assert abs(inference["mean"] - true_inference_gap) < 3 * approx["sem"] + 0.02, (inference, true_inference_gap)
    assert torch.allclose(gaps["inference_gap"], gaps["approximation_gap_ffg"] + gaps["amortization_gap_ffg"])


def test_optimizer_stops_by_its_rule_per_datapoint(lg_full_data):
    model = true_model(lg_full_data)
    x = lg_full_data.test[:6].double()
    _, _, _, (mu_star, logvar_star), _ = closed_form(model, x)
    # datapoints 0-2 start at their optimum, 3-5 far from it
    mu0 = torch.cat([mu_star[:3], mu_star[3:] + 2.0])
    logvar0 = torch.cat([logvar_star[:3], torch.full_like(logvar_star[3:], 1.0)])
    cfg = LocalOptimConfig(lr=2e-2, samples=50, check_every=20, patience=3, max_steps=5000)
    torch.manual_seed(0)
    r = optimize_ffg(model, x, cfg, init=(mu0, logvar0))
    assert torch.all(r.stopped) and torch.all(r.steps < cfg.max_steps)
    assert torch.equal(r.steps, r.checks * cfg.check_every)
    assert torch.equal(r.checks - r.best_check, torch.full_like(r.checks, cfg.patience))
    assert float(r.steps[:3].max()) < float(r.steps[3:].min()), r.steps  # converged ones froze first
    assert torch.all(r.best_loss <= r.start_loss)
    # the cap: no datapoint converges within 130 steps; a partial last window is checked at the cap
    capped = optimize_ffg(model, x, LocalOptimConfig(lr=1e-3, check_every=50, patience=100, max_steps=130))
    assert torch.all(capped.steps == 130) and not bool(capped.stopped.any())
    assert torch.all(capped.checks == 3)


def test_optimizer_never_returns_worse_than_its_start(lg_data):
    model = true_model(lg_data)
    x = lg_data.test[:8].double()
    _, _, _, (mu_star, logvar_star), _ = closed_form(model, x)
    start = exact_elbo(model, x, mu_star, logvar_star)
    # a step size far too large: the iterates wander off, the rule keeps the best (here: the start)
    torch.manual_seed(0)
    r = optimize_ffg(model, x, LocalOptimConfig(lr=0.5, check_every=20, patience=3), init=(mu_star, logvar_star))
    final = exact_elbo(model, x, r.final["mu"], r.final["logvar"])
    best = exact_elbo(model, x, r.params["mu"], r.params["logvar"])
    assert float((start - final).min()) > 0.01  # the test has teeth: the last iterate is clearly worse
    assert torch.all(best >= start - 1e-3), best - start
    assert torch.all(r.best_loss <= r.start_loss)
    # from the fresh start (the prior) the result is much better than the start
    torch.manual_seed(1)
    fresh = optimize_ffg(model, x, FAST)
    zeros = torch.zeros_like(mu_star)
    assert torch.all(exact_elbo(model, x, fresh.params["mu"], fresh.params["logvar"])
                     > exact_elbo(model, x, zeros, zeros) + 0.5)


def test_batched_and_one_at_a_time_agree(lg_full_data):
    model = true_model(lg_full_data, correlated_W(lg_full_data))
    x = lg_full_data.test[:4].double()
    _, _, _, (mu_star, logvar_star), _ = closed_form(model, x)
    optimum = exact_elbo(model, x, mu_star, logvar_star)
    torch.manual_seed(0)
    batched = optimize_ffg(model, x, QUICK)
    torch.manual_seed(1)
    single = optimize_ffg_one_at_a_time(model, x, QUICK)
    assert single.steps.shape == batched.steps.shape == (4,)
    assert torch.all(batched.stopped) and torch.all(single.stopped)
    excess = {}
    for name, r in (("batched", batched), ("single", single)):
        assert float((r.params["mu"] - mu_star).abs().max()) < 0.1
        excess[name] = optimum - exact_elbo(model, x, r.params["mu"], r.params["logvar"])
        assert float(excess[name].max()) < 0.1 and float(excess[name].mean()) < 0.05, excess
    assert float((excess["batched"] - excess["single"]).abs().max()) < 0.05, excess
    assert float((batched.params["mu"] - single.params["mu"]).abs().max()) < 0.1
    assert float((batched.params["logvar"] - single.params["logvar"]).abs().max()) < 0.4
    assert float((batched.steps.double() - single.steps.double()).abs().max()) < 0.5 * float(single.steps.max())


def test_family_optimum_of_avi_matches_the_ffg_optimum(lg_full_data):
    """AVI's family is every diagonal Gaussian: per-datapoint copies of its encoder reach q*_FFG."""
    model = true_model(lg_full_data, correlated_W(lg_full_data))
    x = lg_full_data.test[:4].double()
    _, _, _, (mu_star, logvar_star), _ = closed_form(model, x)
    optimum = exact_elbo(model, x, mu_star, logvar_star)
    method = trained_avi(model, lg_full_data)
    with torch.no_grad():
        q = method.posterior(x)
    amortized = exact_elbo(model, x, q.mu, q.logvar)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # AVI must vectorize (no fallback to the loop)
        r = optimize_family(method, x, LocalOptimConfig(lr=1e-2, check_every=25, patience=4), vectorize="auto")
    assert r.params["encoder.head.weight"].shape == (4, 4, 6)
    assert torch.all(r.stopped)
    # evaluate q*_family in closed form: each datapoint under its own copy of the encoder
    mus, logvars = [], []
    for i in range(4):
        with torch.no_grad():
            w, b = r.params["encoder.head.weight"][i], r.params["encoder.head.bias"][i]
            mu, logvar = (x[i] @ w.T + b).chunk(2)
        mus.append(mu)
        logvars.append(logvar.clamp(*method.encoder.logvar_range))
    family = exact_elbo(model, x, torch.stack(mus), torch.stack(logvars))
    torch.manual_seed(0)
    ffg = optimize_ffg(model, x, FAST)
    ffg_elbo = exact_elbo(model, x, ffg.params["mu"], ffg.params["logvar"])
    assert float((optimum - family).max()) < 0.08 and float((optimum - family).mean()) < 0.05, optimum - family
    assert float((family - ffg_elbo).abs().mean()) < 0.05, (family, ffg_elbo)
    assert float((optimum - amortized).mean()) > 0.1  # there was an amortization gap to close
    assert torch.all(r.best_loss <= r.start_loss)  # the start is q itself
    estimate = family_importance_sample(method, r.params, x, 5000).elbo
    assert float((estimate - family).abs().max()) < 0.06  # 5000-sample Monte Carlo ELBO
    # the parameters of the shared method are untouched
    with torch.no_grad():
        assert torch.equal(method.posterior(x).mu, q.mu)


class _Branchy(InferenceMethod):
    """A diagonal-Gaussian encoder with data-dependent Python control flow: it cannot be vmapped."""

    @dataclass
    class Config:
        pass

    def __init__(self, model):
        super().__init__(model, self.Config())
        self.head = nn.Linear(model.x_dim, 2 * model.latent_dim).double()

    def posterior(self, x):
        mu, logvar = self.head(x).chunk(2, dim=-1)
        if float(mu.detach().abs().sum()) > 1e12:
            raise AssertionError("unreachable")
        return DiagonalGaussian(mu, logvar)


def test_family_falls_back_to_a_loop_when_the_posterior_cannot_be_vmapped(lg_data):
    model = true_model(lg_data)
    torch.manual_seed(0)
    method = _Branchy(model)
    x = lg_data.test[:2].double()
    cfg = LocalOptimConfig(lr=1e-2, check_every=10, patience=2, max_steps=60)
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="cannot be vmapped"):
        auto = optimize_family(method, x, cfg, vectorize="auto")
    torch.manual_seed(1)
    loop = optimize_family(method, x, cfg, vectorize="loop")
    for name in auto.params:
        assert torch.equal(auto.params[name], loop.params[name])
    assert torch.all(auto.best_loss < auto.start_loss)
    with pytest.raises(Exception):
        optimize_family(method, x, cfg, vectorize="vmap")


def test_gap_result_is_json_ready_deterministic_and_configurable(lg_data):
    model = true_model(lg_data)
    method = trained_avi(model, lg_data, steps=20)
    cfg = GapConfig.parse({"elbo_samples": 100, "eval_samples": 100, "batch_size": 3,
                           "local": {"lr": 0.02, "check_every": 10, "patience": 2, "max_steps": 40},
                           "ais": {"intermediate": 10, "chains": 4, "leapfrog": 2}}, "gaps")
    x = lg_data.test[:5].double()
    first = inference_gaps(method, x, cfg)
    torch.manual_seed(123)  # the caller's RNG state does not matter: the config's seed does
    second = inference_gaps(method, x, cfg)
    for name, values in first.per_point.items():
        assert values.shape == (5,) and values.dtype == torch.float64
        assert torch.equal(values, second.per_point[name]), name
    payload = json.loads(json.dumps(first.to_dict(per_point=True)))
    assert payload["n_points"] == 5 and payload["q_star"] == "ffg"
    for name in ("log_px", "log_px_ais", "elbo_q", "elbo_qstar_ffg", "inference_gap", "approximation_gap_ffg",
                 "amortization_gap_ffg"):
        entry = payload["metrics"][name]
        assert isinstance(entry["mean"], float) and isinstance(entry["sem"], float)
        values = torch.tensor(payload["per_point"][name], dtype=torch.float64)
        assert math.isclose(entry["mean"], float(values.mean()), rel_tol=1e-12)
        assert math.isclose(entry["sem"], float(values.std() / math.sqrt(5)), rel_tol=1e-9)
    # log p(x) is the candidate estimator with the largest mean over the points
    per = first.per_point
    names = ("log_px_iwae_q", "log_px_iwae_qstar_ffg", "log_px_ais")
    best = max(names, key=lambda n: float(per[n].mean()))
    assert payload["log_px_source"] == best and torch.equal(per["log_px"], per[best])
    assert payload["config"]["ais"]["intermediate"] == 10


def test_run_gaps_loads_a_trained_cell_and_writes_every_split(lg_data, tmp_path):
    """What the Snakemake rule calls: cell + model.pt + prepared data -> the gaps.json payload, on a seeded
    random subset of each split, with q* in both families for a method whose own family is richer."""
    from benchmarks.gaps import run_gaps, subset_indices
    from benchmarks.runtime import save_model

    cfg = GapConfig(elbo_samples=50, eval_samples=50, batch_size=3, family=True, family_batch_size=2,
                    local=LocalOptimConfig(lr=0.02, check_every=5, patience=1, max_steps=10),
                    ais=None, points={"train": 4, "test": 3}, seed=5)
    options = {"made_hidden": [8], "context_dim": 4}
    cell = {"dataset": "linear_gaussian", "method": "iaf", "seed": 0, "model": {}, "method_config": options,
            "gaps": cfg.to_dict(), "hashes": {"train": "abc", "gaps": "def"}}
    torch.manual_seed(0)
    method = build_method("iaf", models.build(lg_data, {}), options)
    save_model(tmp_path / "model.pt", method.state_dict(), {"train_hash": "abc"})
    payload = run_gaps(cell, tmp_path / "model.pt", lg_data, "cpu", per_point=True)
    payload = json.loads(json.dumps(payload))
    assert payload["method"] == "iaf" and set(payload["splits"]) == {"train", "test"}
    assert payload["splits"]["train"]["n_points"] == 4 and payload["splits"]["test"]["n_points"] == 3
    test = payload["splits"]["test"]
    assert test["q_star"] == "family" and "amortization_gap_family" in test["metrics"]
    assert test["families"] == {"ffg": "diagonal Gaussian", "family": "IAF (2 gated MADE steps)"}
    assert test["amortized"] is True and set(test["diagnostics"]) == {"stopped_by_rule_ffg", "stopped_by_rule_family"}
    assert test["log_px_source"] in ("log_px_iwae_q", "log_px_iwae_qstar_ffg")
    # the points are the seeded random subset, and the estimates belong to exactly those points
    indices = subset_indices(lg_data.test.shape[0], 3, "random", 5)
    assert test["indices"] == indices.tolist() != [0, 1, 2]
    x = lg_data.test[indices].float()
    assert torch.allclose(torch.tensor(test["per_point"]["exact_log_px"], dtype=torch.float64),
                          method.model.exact_log_marginal(x).double(), atol=1e-4)


def test_gap_points_are_a_seeded_random_subset():
    """Not the first N points (the first 100 Fashion-MNIST test images are 16 nats easier than the rest)."""
    from benchmarks.gaps import subset_indices

    a, b, other = (subset_indices(10_000, 300, "random", seed) for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert a.numel() == 300 == a.unique().numel() and torch.all(a[1:] > a[:-1]) and 0 <= int(a[0]) and int(a[-1]) < 10_000
    assert float(a.float().mean()) > 3000  # spread over the split, not bunched at its start
    assert torch.equal(subset_indices(10_000, 5, "first", 0), torch.arange(5))
    assert torch.equal(subset_indices(50, None, "random", 0), torch.arange(50))  # all points: in order


def test_family_optimization_has_its_own_budget(lg_data):
    """``family_local`` bounds q*_family's optimization; q*_FFG keeps ``local``'s budget."""
    model = true_model(lg_data)
    torch.manual_seed(0)
    method = build_method("iaf", model, {"steps": 1, "made_hidden": [4], "context_dim": 2}).double().eval()
    cfg = GapConfig.parse({"elbo_samples": 20, "eval_samples": 20, "family": True, "ais": None,
                           "local": {"lr": 0.02, "samples": 5, "check_every": 10, "patience": 50, "max_steps": 30},
                           "family_local": {"lr": 0.02, "samples": 5, "check_every": 2, "patience": 50,
                                            "max_steps": 4}}, "gaps")
    per = inference_gaps(method, lg_data.test[:3].double(), cfg).per_point
    assert torch.all(per["local_steps_ffg"] == 30) and torch.all(per["local_steps_family"] == 4)


def test_family_optimization_keeps_no_graph_between_steps(lg_data):
    """torch.func's gradients are differentiable in the decoder's parameters (which require grad): a step
    that kept them would chain every step's graph to the next (memory grew ~75 MB per step for IAF on
    Fashion-MNIST until the OOM killer stopped the gaps job). The optimized copies carry no graph."""
    model = models.build(lg_data, {})
    assert all(p.requires_grad for p in model.parameters())
    torch.manual_seed(0)
    method = build_method("iaf", model, {"steps": 1, "made_hidden": [4], "context_dim": 2}).eval()
    config = LocalOptimConfig(lr=1e-2, samples=2, check_every=2, patience=50, max_steps=6)
    result = optimize_family(method, lg_data.test[:3].float(), config, "vmap")
    for name, tensor in {**result.params, **{f"final {k}": v for k, v in result.final.items()}}.items():
        assert tensor.grad_fn is None and not tensor.requires_grad, name
