"""RecMix: the mixture density, the batched encoders, the staged schedule and the growth guarantees."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks import models
from benchmarks.estimators import elbo
from methods import build_method
from methods.base import DiagonalGaussian, Step
from methods.recmix import EncoderBank, GaussianMixture, gaussian_kl


def random_mixture(components=3, batch=2, dim=2, seed=0, dtype=torch.float64) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    mu = 2.0 * torch.randn(components, batch, dim, generator=g, dtype=dtype)
    logvar = 0.5 * torch.randn(components, batch, dim, generator=g, dtype=dtype) - 0.5
    log_weights = torch.log_softmax(torch.randn(components, generator=g, dtype=dtype), 0)
    return GaussianMixture(mu, logvar, log_weights)


def test_mixture_density_integrates_to_one_and_is_weighted_logsumexp():
    q = random_mixture()
    axis = torch.linspace(-12.0, 12.0, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2).expand(-1, 2, 2)
    log_q = q.log_prob(grid)  # (G, B)
    cell = float(axis[1] - axis[0]) ** 2
    assert torch.allclose(log_q.exp().sum(0) * cell, torch.ones(2, dtype=torch.float64), atol=1e-6)
    # against an explicit sum of weighted component densities
    explicit = sum(
        q.log_weights[k].exp()
        * torch.distributions.Independent(torch.distributions.Normal(q.mu[k], (0.5 * q.logvar[k]).exp()), 1)
        .log_prob(grid).exp()
        for k in range(3)
    )
    assert torch.allclose(log_q, explicit.log(), atol=1e-9)


def test_mixture_samples_follow_the_weights_and_score_with_the_mixture_density():
    # three far-apart components; datapoint 1 has them in the reverse order of datapoint 0 (D = 1)
    mu = torch.tensor([[[-10.0], [10.0]], [[0.0], [0.0]], [[10.0], [-10.0]]])  # (K, B, D)
    q = GaussianMixture(mu, torch.full_like(mu, -2.0), torch.log(torch.tensor([0.2, 0.5, 0.3])))
    torch.manual_seed(0)
    z, log_q = q.sample(20000)
    assert z.shape == (20000, 2, 1) and log_q.shape == (20000, 2)
    low, high = (z[..., 0] < -5).float().mean(0), (z[..., 0] > 5).float().mean(0)
    assert torch.allclose(low, torch.tensor([0.2, 0.3]), atol=0.015)
    assert torch.allclose(high, torch.tensor([0.3, 0.2]), atol=0.015)
    assert torch.allclose(log_q, q.log_prob(z))
    assert torch.allclose(q.mean(), torch.tensor([[1.0], [-1.0]]))


def test_method_posterior_is_a_normalized_mixture(lg_data):
    """The method's own Q(z|x) on the 2-d latent of the linear-Gaussian model integrates to one."""
    method = build_method("recmix", models.build(lg_data, {}), {"components": 3}).double()
    method.on_epoch_start(10**6)  # refinement: all components
    with torch.no_grad():
        method.weight_logits.copy_(torch.tensor([0.3, -1.0, 0.5]))
        method.weights_set = 3
        for encoder in method.bank.encoders:  # spread the components apart
            encoder.head.bias.add_(torch.randn(4, dtype=torch.float64))
        q = method.posterior(lg_data.test[:3].double())
    axis = torch.linspace(-20.0, 20.0, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
    mass = q.log_prob(grid).exp().sum(0) * float(axis[1] - axis[0]) ** 2
    assert torch.allclose(mass, torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(q.log_weights.exp(), torch.softmax(method.weight_logits, 0))


# --------------------------------------------------------------------------------------------------
# batched vs sequential encoders


def _compare_paths(bank: EncoderBank, x: torch.Tensor, count: int):
    outputs, grads = [], []
    for batched in (False, True):
        bank.zero_grad(set_to_none=True)
        mu, logvar = bank.batched_encode(x, count) if batched else bank.sequential_encode(x, count)
        weights = torch.randn(mu.shape, generator=torch.Generator().manual_seed(2), dtype=mu.dtype)
        ((mu * weights).sum() + logvar.pow(2).sum()).backward()
        outputs.append((mu.detach(), logvar.detach()))
        grads.append([None if p.grad is None else p.grad.clone() for p in bank.parameters()])
    return outputs, grads


class _StubModel:
    """Just what an EncoderBank needs from a generative model: a latent size and an encoder body."""

    def __init__(self, latent_dim: int, make_body):
        self.latent_dim, self.make_body = latent_dim, make_body

    def encoder_body(self):
        return self.make_body()


def _normalized_body():  # LayerNorm has parameters: not a plain MLP, so the bank uses vmap
    return nn.Sequential(nn.Linear(6, 7), nn.LayerNorm(7), nn.ELU()), 7


@pytest.mark.parametrize("family", ["binary", "linear_gaussian", "normalized"])
def test_batched_encoders_match_sequential_outputs_and_gradients(family, binary_data, lg_data):
    torch.manual_seed(0)
    if family == "binary":
        data, model, path = binary_data, models.build(binary_data, {"latent_dim": 3, "hidden": [16, 8]}), "stacked_mlp"
    elif family == "linear_gaussian":
        data, model, path = lg_data, models.build(lg_data, {"encoder_hidden": [5]}), "stacked_mlp"
    else:
        data, model, path = lg_data, _StubModel(2, _normalized_body), "vmap"
    bank = EncoderBank(model, 4, -12.0, 8.0).double()
    assert bank.batched_path == path
    x = next(data.batches("test", 8)).double()
    (seq_out, batch_out), (seq_grads, batch_grads) = _compare_paths(bank, x, 4)
    for a, b in zip(seq_out, batch_out):
        assert a.shape == (4, 8, model.latent_dim) and torch.allclose(a, b, atol=1e-10)
    assert all(g is not None for g in seq_grads)
    for a, b in zip(seq_grads, batch_grads):
        assert torch.allclose(a, b, atol=1e-10)
    with torch.no_grad():  # the inference call (cached stack) agrees too
        assert torch.allclose(bank(x, 4)[0], seq_out[0], atol=1e-10)
    # a frozen component gets no gradient at all through the stack (so Adam skips it)
    bank.encoders[1].requires_grad_(False)
    _, (_, frozen_grads) = _compare_paths(bank, x, 4)
    frozen_ids = {id(p) for p in bank.encoders[1].parameters()}
    for p, grad in zip(bank.parameters(), frozen_grads):
        assert (grad is None) == (id(p) in frozen_ids)


def test_inference_cache_follows_parameter_updates(binary_data):
    model = models.build(binary_data, {"latent_dim": 3, "hidden": [16]})
    bank = EncoderBank(model, 3, -12.0, 8.0)
    x = next(binary_data.batches("test", 8))
    with torch.no_grad():
        first = bank.batched_encode(x, 3)[0].clone()
        bank.encoders[2].head.bias.add_(1.0)  # an in-place update, as optimizer.step does
        second = bank.batched_encode(x, 3)[0]
        reference = bank.sequential_encode(x, 3)[0]
    assert torch.allclose(second, reference, atol=1e-6)
    assert torch.allclose(second[2] - first[2], torch.ones_like(first[2])[..., :3], atol=1e-6)


def test_swapped_parameters_reach_every_component(binary_data):
    """torch.func.functional_call (the gaps stage's q*_family: per-datapoint copies of every parameter) must
    act on the stacked computation, also after an inference call has filled the stack cache."""
    from torch.func import functional_call

    model = models.build(binary_data, {"latent_dim": 3, "hidden": [16]})
    bank = EncoderBank(model, 3, -12.0, 8.0)
    x = next(binary_data.batches("test", 8))
    with torch.no_grad():
        original = bank.batched_encode(x, 3)[0].clone()  # fills the inference cache
    swapped = {name: t.detach() + (1.0 if name == "encoders.2.head.bias" else 0.0)
               for name, t in bank.named_parameters()}
    mu = functional_call(bank, swapped, (x, 3))[0]
    assert torch.allclose(mu[:2], original[:2], atol=1e-6)
    assert torch.allclose(mu[2] - original[2], torch.ones_like(original[2]), atol=1e-6)
    with torch.no_grad():
        assert torch.equal(bank.batched_encode(x, 3)[0], original)  # the real parameters are untouched


def test_per_datapoint_parameters_vectorize_under_no_grad(binary_data):
    """The gaps stage evaluates q*_family losses under no_grad with torch.func.vmap over per-datapoint copies
    of every parameter: the stacked-parameter cache must step aside for those storage-less tensors (it used
    to raise, and the gaps stage fell back to one datapoint at a time), and each datapoint must get its own
    copy."""
    from torch.func import functional_call, vmap

    model = models.build(binary_data, {"latent_dim": 3, "hidden": [16]})
    bank = EncoderBank(model, 3, -12.0, 8.0)
    x = next(binary_data.batches("test", 4))
    shifts = torch.arange(4, dtype=x.dtype)
    per_point = {name: t.detach().unsqueeze(0) + (shifts.view(-1, *[1] * t.dim()) if name == "encoders.1.head.bias"
                                                  else torch.zeros(4, *t.shape, dtype=t.dtype))
                 for name, t in bank.named_parameters()}

    def one(params, x_one):
        return functional_call(bank, params, (x_one.unsqueeze(0), 3))[0].squeeze(1)

    with torch.no_grad():
        mapped = vmap(one)(per_point, x)
        looped = torch.stack([one({k: t[i] for k, t in per_point.items()}, x[i]) for i in range(4)])
        plain = bank.batched_encode(x, 3)[0]
    assert torch.allclose(mapped, looped, atol=1e-6)
    assert torch.allclose(mapped[:, 1] - plain[1], shifts[:, None].expand(4, 3), atol=1e-5)
    assert torch.allclose(mapped[:, [0, 2]], plain[[0, 2]].transpose(0, 1), atol=1e-6)


class _RecurrentBody(nn.Module):
    """A stand-in for a text encoder: embedding + LSTM (vmap has no batching rule for aten::lstm)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, batch_first=True)

    def forward(self, tokens):
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return hidden[-1]


def test_bodies_vmap_cannot_batch_fall_back_to_sequential_passes():
    torch.manual_seed(0)
    bank = EncoderBank(_StubModel(2, lambda: (_RecurrentBody(), 8)), 3, -12.0, 8.0)
    assert bank.batched_path == "vmap"
    tokens = torch.randint(0, 20, (5, 7))
    mu, logvar = bank(tokens, 3, batched=True)
    ref_mu, ref_logvar = bank.sequential_encode(tokens, 3)
    assert bank.batched_path == "sequential"
    assert mu.shape == (3, 5, 2) and torch.equal(mu, ref_mu) and torch.equal(logvar, ref_logvar)


# --------------------------------------------------------------------------------------------------
# the schedule and the stage objective


def test_schedule_hooks_switch_stages_freeze_components_and_allow_selection_only_in_refinement(lg_data):
    method = build_method("recmix", models.build(lg_data, {}),
                          {"components": 3, "stage_epochs": 2, "refine_epochs": 4})
    assert method.train_epochs(50) == 3 * 2 + 4
    expected_stage = [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    for epoch, stage in enumerate(expected_stage):
        method.on_epoch_start(epoch)
        assert method.stage == stage
        trainable = [all(p.requires_grad for p in e.parameters()) for e in method.bank.encoders]
        if stage <= 3:
            assert trainable == [k == stage - 1 for k in range(3)]
            assert not method.weight_logits.requires_grad and not method.selectable(epoch)
        else:
            assert all(trainable) and method.weight_logits.requires_grad and method.selectable(epoch)
    joint = build_method("recmix", models.build(lg_data, {}), {"components": 3, "schedule": "joint"})
    joint.on_epoch_start(0)
    assert joint.selectable(0) and joint.active == 3 and joint.weight_logits.requires_grad


def test_frozen_components_do_not_move_during_a_later_stage(lg_data):
    """Stage 2 leaves component 1 bit-for-bit unchanged although Adam holds momentum for it from
    stage 1 (a zero gradient would still move it; no gradient does not)."""
    torch.manual_seed(0)
    method = build_method("recmix", models.build(lg_data, {}),
                          {"components": 2, "stage_epochs": 3, "refine_epochs": 1})
    optimizer = torch.optim.Adam(list(method.parameters()), lr=1e-2)  # built once, as the trainer does

    def run_epochs(epochs):
        for epoch in epochs:
            method.on_epoch_start(epoch)
            for x in lg_data.batches("train", 100):
                optimizer.zero_grad(set_to_none=True)
                method.loss(x, Step()).backward()
                optimizer.step()

    snapshot = lambda k: [p.detach().clone() for p in method.bank.encoders[k].parameters()]  # noqa: E731
    run_epochs(range(0, 3))
    first, second = snapshot(0), snapshot(1)
    run_epochs(range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(first, snapshot(0)))
    assert not all(torch.equal(a, b) for a, b in zip(second, snapshot(1)))
    assert method.weights_set == 1 and float(method.weight_logits[0]) == 0.0
    run_epochs(range(6, 7))  # refinement: everything moves, the second weight was set on entry
    assert method.weights_set == 2
    assert not all(torch.equal(a, b) for a, b in zip(first, snapshot(0)))
    # the schedule's position travels with the state dict: a rebuilt method (evaluation) is the mixture
    rebuilt = build_method("recmix", models.build(lg_data, {}),
                           {"components": 2, "stage_epochs": 3, "refine_epochs": 1})
    rebuilt.load_state_dict(method.state_dict())
    assert (rebuilt.stage, rebuilt.weights_set) == (3, 2)
    x = lg_data.test[:5]
    with torch.no_grad():
        assert torch.equal(rebuilt.posterior(x).log_weights, method.posterior(x).log_weights)


def test_stage_objective_is_elbo_plus_weighted_kl(lg_data):
    """J = ELBO(q') + w KL(q' || Q_ref) with the KL from the same draws z ~ q'. With Q_ref = Q_{m-1} and
    w = 1 the entropies cancel (J = E_q'[log p(x,z) - log Q_{m-1}]); with Q_ref = the mixture q' joins,
    the diversity term is at most -log eps."""
    model = models.build(lg_data, {"fixed_to_truth": True})
    x = lg_data.test[:16]
    torch.manual_seed(0)
    method = build_method("recmix", model, {"components": 2, "kl_reference": "previous"})
    method.stage = 2
    method.weights_set = 1
    with torch.no_grad():
        method.bank.encoders[1].head.bias.add_(0.5)  # make the two components differ
        posterior = method.posterior(x)

    def objective(weight, reference="previous"):
        method.config.diversity_weight, method.config.kl_reference = weight, reference
        torch.manual_seed(5)
        return method.growth_objective(x, posterior, Step())

    torch.manual_seed(5)
    z, log_q_new = DiagonalGaussian(posterior.mu[1], posterior.logvar[1]).sample(1)
    log_previous = GaussianMixture(posterior.mu[:1], posterior.logvar[:1], torch.zeros(1)).log_prob(z)
    own_elbo = (model.log_joint(x, z) - log_q_new).mean(0)
    kl_estimate = (log_q_new - log_previous).mean(0)
    assert torch.allclose(objective(0.0), own_elbo, atol=1e-5)
    assert torch.allclose(objective(1.0), (model.log_joint(x, z) - log_previous).mean(0), atol=1e-5)
    assert torch.allclose(objective(2.5), own_elbo + 2.5 * kl_estimate, atol=1e-4)
    bounded_kl = objective(1.0, "mixture") - objective(0.0, "mixture")
    assert (bounded_kl <= -math.log(method.tentative_weight(1)) + 1e-5).all()
    assert (kl_estimate > -math.log(method.tentative_weight(1))).any()  # the unbounded form exceeds it
    eps = method.tentative_weight(1)
    log_joined = torch.logaddexp(log_previous + math.log1p(-eps), log_q_new + math.log(eps))
    assert torch.allclose(bounded_kl, (log_q_new - log_joined).mean(0), atol=1e-5)


def test_decoder_gradient_in_growth_comes_from_the_mixture_bound_only(binary_data):
    """With decoder_in_growth=mixture, the diversity weight changes the new component's gradient but not
    the decoder's; old components get none."""
    grads = {}
    for w in (0.0, 5.0):
        torch.manual_seed(0)
        model = models.build(binary_data, {"latent_dim": 3, "hidden": [16]})
        method = build_method("recmix", model, {"components": 2, "stage_epochs": 1, "diversity_weight": w})
        method.on_epoch_start(1)
        x = next(binary_data.batches("test", 8))
        torch.manual_seed(1)
        method.loss(x, Step()).backward()
        grads[w] = (
            [p.grad.clone() for p in model.parameters()],
            [p.grad.clone() for p in method.bank.encoders[1].parameters()],
        )
        assert all(p.grad is None for p in method.bank.encoders[0].parameters())
        assert method.weight_logits.grad is None
    for a, b in zip(grads[0.0][0], grads[5.0][0]):
        assert torch.equal(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0][1], grads[5.0][1]))


def test_frozen_decoder_in_growth_gets_no_gradient(binary_data):
    torch.manual_seed(0)
    model = models.build(binary_data, {"latent_dim": 3, "hidden": [16]})
    method = build_method("recmix", model, {"components": 2, "stage_epochs": 1, "decoder_in_growth": "frozen"})
    x = next(binary_data.batches("test", 8))
    method.on_epoch_start(0)
    method.loss(x, Step()).backward()  # stage 1 is a VAE: the decoder learns
    assert all(p.grad is not None for p in model.parameters())
    method.zero_grad(set_to_none=True)
    method.on_epoch_start(1)
    method.loss(x, Step()).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in method.bank.encoders[1].parameters())


# --------------------------------------------------------------------------------------------------
# growth on a posterior a diagonal Gaussian cannot fit


def mixture_bound(method, x, count, samples=4000, seed=0) -> float:
    """The shared estimator's ELBO of the first `count` components (with their set weights)."""
    with torch.no_grad():
        mu, logvar = method.encode(x, count)
        posterior = GaussianMixture(mu, logvar, method.log_weights(count))
        torch.manual_seed(seed)
        return float(elbo(method.model, posterior, x, samples).mean())


def test_growth_never_decreases_the_mixture_elbo_and_components_stay_apart(lg_full_data):
    torch.manual_seed(0)
    model = models.build(lg_full_data, {"fixed_to_truth": True})
    stage_epochs, components = 40, 3
    method = build_method("recmix", model, {"components": components, "stage_epochs": stage_epochs,
                                            "refine_epochs": 1, "train_samples": 4})
    fixed_batch = lg_full_data.test
    line_search_batch = next(lg_full_data.batches("valid", 100))
    optimizer = torch.optim.Adam(list(method.parameters()), lr=3e-2)
    generator = torch.Generator().manual_seed(0)
    bounds = []
    for stage in range(components):
        for epoch in range(stage * stage_epochs, (stage + 1) * stage_epochs):
            method.on_epoch_start(epoch)
            for x in lg_full_data.batches("train", 100, shuffle=True, generator=generator):
                optimizer.zero_grad(set_to_none=True)
                method.loss(x, Step()).backward()
                optimizer.step()
        method.on_epoch_start((stage + 1) * stage_epochs)  # the next stage begins: the weight is set
        method.set_pending_weights(line_search_batch)
        bounds.append(mixture_bound(method, fixed_batch, stage + 1))
    exact = float(model.exact_log_marginal(fixed_batch).mean())
    for previous, current in zip(bounds, bounds[1:]):
        assert current >= previous - 0.005, bounds
    assert bounds[-1] - bounds[0] > 0.05, bounds  # the mixture closes part of the gap ...
    assert bounds[-1] < exact  # ... and stays a lower bound
    weights = torch.softmax(method.weight_logits, 0)
    assert (weights > 0.05).all(), weights
    with torch.no_grad():
        mu, logvar = method.encode(fixed_batch, components)
    for i in range(components):
        for j in range(components):
            if i != j:
                kl = float(gaussian_kl(mu[i], logvar[i], mu[j], logvar[j]).mean())
                assert kl > 0.1, (i, j, kl)
