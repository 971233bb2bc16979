"""Auxiliary-variable flow (Cremer et al. 2018's Flow): the coupling map's log-det against autograd Jacobians,
log q~ as a change of variables, near-identity init, reparameterized samples, bounds / IS-NLL against the
exact log p(x), per-datapoint family optimization (q*_family of the gaps stage) and seeded determinism."""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch.autograd.functional import jacobian

from benchmarks import models
from benchmarks.errors import ConfigError
from benchmarks.estimators import elbo
from benchmarks.localopt import LocalOptimConfig, family_importance_sample, optimize_family
from methods import build_method

from .helpers import assert_bounds_converge_to_exact, directional_derivative_check, fit

SMALL = {"hidden": [8], "coupling_hidden": [8], "steps": 2}
VARIANTS = [  # (shift_activation, context, aux_base)
    ("elu", True, "conditional"), ("none", True, "conditional"),
    ("elu", False, "conditional"), ("none", False, "standard"),
]
DIM = 3


def randomized_flow(data, shift: str, context: bool, aux_base: str = "conditional", seed: int = 0):
    """A float64 flow on a 3-d latent space, its inference weights drawn far from their (near-identity) init."""
    torch.manual_seed(seed)
    options = {**SMALL, "shift_activation": shift, "context": context, "aux_base": aux_base}
    method = build_method("flow", models.build(data, {"latent_dim": DIM, "encoder_hidden": [5]}), options).double()
    with torch.no_grad():
        for p in method.inference_parameters():
            p.normal_(0.0, 0.4)
        for net in (method.aux_net, method.reverse_net):  # moderate Gaussian outputs (r off by ~1e6 nats
            if net is not None:                           # would swamp every other term in float64)
                for p in net.rest[-1][-1].parameters():
                    p.normal_(0.0, 0.1)
    return method


@pytest.mark.parametrize("shift,context,aux_base", VARIANTS)
def test_coupling_map_log_det_matches_the_autograd_jacobian(lg_data, shift, context, aux_base):
    method = randomized_flow(lg_data, shift, context, aux_base)
    x = lg_data.test[:3].double()
    posterior = method.posterior(x)
    assert (posterior.context is None) == (not context)
    for b in range(x.shape[0]):
        c = None if posterior.context is None else posterior.context[b:b + 1]

        def flow_map(u):
            zT, vT, _ = method.couple(u[:DIM].view(1, 1, DIM), u[DIM:].view(1, 1, DIM), c)
            return torch.cat([zT.view(DIM), vT.view(DIM)])

        u = torch.randn(2 * DIM, dtype=torch.float64)
        J = jacobian(flow_map, u)  # (2D, 2D): d(zT, vT) / d(z0, v0)
        with torch.no_grad():
            _, _, log_det = method.couple(u[:DIM].view(1, 1, DIM), u[DIM:].view(1, 1, DIM), c)
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign > 0  # every half-step scales by sigmoids: orientation preserved
        assert math.isclose(float(log_det), float(logabsdet), abs_tol=1e-10), (float(log_det), float(logabsdet))
        init_log_det = 2 * 2 * DIM * math.log(1 / (1 + math.exp(-2.0)))  # T = 2 steps at their init
        assert abs(float(logabsdet) - init_log_det) > 1.0  # randomized: far from the init, so the check has teeth
        # the map is not triangular as a whole (z_T depends on v_0 and v_T on z_0): a real coupling flow
        assert J[:DIM, DIM:].abs().max() > 1e-3 and J[DIM:, :DIM].abs().max() > 1e-3


@pytest.mark.parametrize("shift,context,aux_base", VARIANTS)
def test_log_q_is_a_change_of_variables_of_the_noise_minus_log_r(lg_data, shift, context, aux_base):
    """(eps_z, eps_v) -> (z_T, v_T) has density log N(eps) - log|det J|; log q~ is that minus log r(v_T|x,z_T)."""
    method = randomized_flow(lg_data, shift, context, aux_base, seed=1)
    x = lg_data.test[:3].double()
    posterior = method.posterior(x)
    for b in range(x.shape[0]):
        single = type(posterior)(method, posterior.mu[b:b + 1], posterior.logvar[b:b + 1],
                                 None if posterior.context is None else posterior.context[b:b + 1])

        def noise_map(e):
            zT, vT, _ = single.transform(e[:DIM].view(1, 1, DIM), e[DIM:].view(1, 1, DIM))
            return torch.cat([zT.view(DIM), vT.view(DIM)])

        eps = torch.randn(2 * DIM, dtype=torch.float64)
        J = jacobian(noise_map, eps)
        with torch.no_grad():
            zT, vT, log_q = single.transform(eps[:DIM].view(1, 1, DIM), eps[DIM:].view(1, 1, DIM))
            log_r = float(method.reverse_log_prob(single.context, zT, vT))
        log_noise = -0.5 * float((eps.pow(2) + math.log(2 * math.pi)).sum())
        log_joint_q = log_noise - float(torch.linalg.slogdet(J).logabsdet)
        assert math.isclose(float(log_q), log_joint_q - log_r, rel_tol=1e-12, abs_tol=1e-9)
    # sample(n) is that map applied to standard-normal noise drawn z first, then v
    torch.manual_seed(5)
    z, log_q = posterior.sample(4)
    torch.manual_seed(5)
    eps_z = torch.randn(4, 3, DIM, dtype=torch.float64)
    z_again, _, log_q_again = posterior.transform(eps_z, torch.randn_like(eps_z))
    assert torch.equal(z, z_again) and torch.equal(log_q, log_q_again)


def test_steps_start_as_a_near_identity_scaling(lg_data):
    torch.manual_seed(0)
    model = models.build(lg_data, {"latent_dim": DIM})
    z, v = torch.randn(2, 5, 4, DIM).unbind(0)
    start = build_method("flow", model, {"steps": 3})
    gate = 1.0 / (1.0 + math.exp(-2.0))
    zT, vT, log_det = start.couple(z, v, torch.randn(4, DIM))
    assert torch.allclose(zT, gate**3 * z, atol=1e-6) and torch.allclose(vT, gate**3 * v, atol=1e-6)
    assert torch.allclose(log_det, torch.full((5, 4), 2 * 3 * DIM * math.log(gate)), atol=1e-5)
    default_init = build_method("flow", model, {"steps": 3, "gate_bias": None})  # the source's init
    zT, _, _ = default_init.couple(z, v, torch.randn(4, DIM))
    assert not torch.allclose(zT, gate**3 * z, atol=1e-2)


def test_samples_are_reparameterized_and_shaped(lg_data):
    torch.manual_seed(0)
    method = build_method("flow", models.build(lg_data, {"encoder_hidden": [5]}), SMALL).double()
    x = lg_data.test[:6].double()
    weights = torch.randn(7, 6, 2, dtype=torch.float64)

    def sampled(which):
        def loss():
            torch.manual_seed(3)
            z, log_q = method.posterior(x).sample(7)
            assert z.shape == (7, 6, 2) and log_q.shape == (7, 6)
            return (weights * z).sum() if which == "z" else log_q.sum()
        return loss

    encoder = [*method.body.parameters(), *method.head.parameters()]
    for which in ("z", "log_q"):
        pairs = directional_derivative_check(sampled(which), encoder)
        assert any(abs(analytic) > 1e-3 for analytic, _ in pairs)  # the samples do depend on the encoder
        for analytic, numeric in pairs:
            assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (which, analytic, numeric)
    # every inference network is wired in: with weights off their init, each gets a gradient from the loss
    method = randomized_flow(lg_data, "elu", True)
    x = lg_data.test[:6].double()
    z, log_q = method.posterior(x).sample(3)
    (method.model.log_joint(x, z) - log_q).mean().backward()
    missing = [name for name, p in method.named_parameters()
               if p.requires_grad and id(p) in {id(q) for q in method.inference_parameters()}
               and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


def test_elbo_below_and_is_nll_converging_to_the_exact_log_px(lg_data):
    torch.manual_seed(0)
    method = build_method("flow", models.build(lg_data, {"fixed_to_truth": True}),
                          {"hidden": [32], "coupling_hidden": [32]})
    fit(method, lg_data, steps=150, lr=1e-2)  # deliberately short: q and r are close but not exact
    torch.manual_seed(1)
    with torch.no_grad():
        posterior = method.posterior(lg_data.test)
    assert_bounds_converge_to_exact(method.model, posterior, lg_data.test, largest_samples=5000)


def test_family_optimization_vmaps_and_improves_on_the_amortized_posterior(lg_data):
    """The gaps stage's q*_family: per-datapoint copies of every inference parameter, vmapped (no fallback
    to the loop), never worse than the start by the rule's measure, and better in a many-sample ELBO."""
    torch.manual_seed(0)
    method = build_method("flow", models.build(lg_data, {"fixed_to_truth": True}), SMALL)
    fit(method, lg_data, steps=60, lr=1e-2)
    x = lg_data.test[:4]
    before = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a vmap failure would warn and fall back to the loop
        result = optimize_family(method, x, LocalOptimConfig(lr=1e-2, samples=8, check_every=20, patience=2,
                                                             max_steps=200), vectorize="auto")
    names = {name for name, p in method.named_parameters() if id(p) in {id(q) for q in method.inference_parameters()}}
    assert set(result.params) == names
    assert all(result.params[k].shape == (4, *method.get_parameter(k).shape) for k in names)
    assert torch.all(result.best_loss <= result.start_loss)
    assert torch.any(result.best_loss < result.start_loss)  # the copies did move somewhere
    torch.manual_seed(2)
    family = family_importance_sample(method, result.params, x, 4000).elbo
    with torch.no_grad():
        amortized = elbo(method.model, method.posterior(x), x, 4000).double()
    assert float((family - amortized).mean()) > 0.1, (family, amortized)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())  # the method is untouched


@pytest.mark.parametrize("options", [{}, {"aux_base": "standard", "context": False, "shift_activation": "none"}])
def test_deterministic_under_a_seed(lg_data, options):
    options = {**SMALL, **options}
    x = lg_data.test[:5]

    def run(build_seed, sample_seed):
        torch.manual_seed(build_seed)
        method = build_method("flow", models.build(lg_data, {}), options)
        torch.manual_seed(sample_seed)
        z, log_q = method.posterior(x).sample(3)
        return method.state_dict(), z.detach(), log_q.detach()

    (state_a, z_a, q_a), (state_b, z_b, q_b) = run(7, 11), run(7, 11)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(z_a, z_b) and torch.equal(q_a, q_b)
    _, z_c, _ = run(7, 12)
    state_d, _, _ = run(8, 11)
    assert not torch.equal(z_a, z_c)
    assert not all(torch.equal(state_a[k], state_d[k]) for k in state_a)


def test_options_and_variants(lg_data):
    model = models.build(lg_data, {})
    default = build_method("flow", model)
    cfg = default.config
    assert (cfg.steps, cfg.context, cfg.aux_base, cfg.shift_activation) == (2, True, "conditional", "elu")
    assert (tuple(cfg.hidden), tuple(cfg.coupling_hidden), cfg.activation) == ((200, 200), (200,), "elu")
    assert "shift_activation=elu" in default.description()
    assert "coupling" in default.variational_family()  # not the diagonal Gaussian: the gaps stage runs q*_family
    variant_b = build_method("flow", model, {"aux_base": "standard", "context": False, "shift_activation": "none",
                                             "coupling_hidden": [50], "coupling_activation": "tanh",
                                             "hidden": [50, 50]})
    assert variant_b.aux_net is None and variant_b.context_layer is None
    assert variant_b.reverse_net.context_in is None and variant_b.steps[0].v_net.context_in is None
    assert isinstance(variant_b.steps[0].v_net.rest[0], torch.nn.Tanh)
    assert isinstance(variant_b.reverse_net.rest[0], torch.nn.ELU)
    none = build_method("flow", model, {"steps": 0})
    assert len(none.steps) == 0
    z, log_q = none.posterior(lg_data.test[:3]).sample(2)
    assert z.shape == (2, 3, 2) and torch.isfinite(log_q).all()
    for bad in ({"steps": -1}, {"shift_activation": "relu"}, {"aux_base": "prior"}, {"hidden": [0]},
                {"coupling": 2}):
        with pytest.raises(ConfigError):
            build_method("flow", model, bad)
