"""Annealed importance sampling (AIS) estimate of log p(x) for any generative model of the harness.

Geometric path from the prior to the posterior, 0 = beta_0 < beta_1 < ... < beta_T = 1:

    f_t(z) = p(z)^(1 - beta_t) p(x, z)^beta_t  =  p(z) p(x|z)^beta_t,      f_0 = p(z),  f_T ∝ p(z|x)

Each chain starts from z_0 ~ p(z) = N(0, I) (the prior of every family in benchmarks/models.py) and
alternates a weight update with an HMC transition that leaves f_t invariant (Neal 2001):

    log w += (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log p(z_{t-1})],    z_t ~ HMC_t(. | z_{t-1})

for t = 1..T (the transition after the last weight update is not needed and not run). Then
E[w] = p(x) for every chain, and with K independent chains per datapoint

    log p̂(x) = log (1/K) sum_k w_k          (float64 log-mean-exp)

is a stochastic lower bound of log p(x) (Jensen), tight as T grows. Only ``model.log_joint`` and
``model.log_prior`` are used (log p(x|z) = their difference) and gradients come from autograd, so every
family works. All datapoints x chains run at once as tensors (K, B, D); the only Python loop is over
the schedule (and the leapfrog steps).

HMC transition: momentum r ~ N(0, I), ``leapfrog`` steps of size eps on U = -log f_t, Metropolis
accept/reject per chain. The step size is adapted toward ``target_accept`` (0.65, Neal's optimum for
HMC) after every transition: eps *= ``adapt_factor`` when the acceptance probability is above the
target, eps /= ``adapt_factor`` otherwise, clamped to [step_size_min, step_size_max]. ``adapt``:
"datapoint" (default) averages the acceptance probability over the chains of a datapoint, so each
datapoint has its own schedule of step sizes (posteriors of different datapoints differ in scale);
"chain" adapts each chain on its own; "none" keeps ``step_size``. Note that an adapted step size depends
on the chains' past, so strictly the transitions are not fixed in advance; this is what Wu et al. (2017)
and Cremer et al. (2018) do, and the test against the exact log p(x) of the linear-Gaussian model checks
that no bias is visible. ``adapt: none`` gives the textbook estimator.

Schedules (``schedule``): "sigmoid" (Grosse et al. 2015: beta_t ∝ sigmoid(delta (2t/T - 1)), rescaled to
[0, 1], more distributions near both ends, delta = ``sigmoid_delta``) or "linear".

Defaults: a small CPU configuration (T = 500 intermediate distributions, 16 chains). The protocol of
Cremer et al. (PROTOCOLS.md) is ``AISConfig.paper()``: 10 leapfrog steps, 100 chains, thousands of
intermediate distributions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from .options import Options


class AISConfig(Options):
    intermediate: int = Field(500, ge=1)  # T: number of intermediate distributions beta_1..beta_T (beta_T = 1)
    schedule: Literal["sigmoid", "linear"] = "sigmoid"
    sigmoid_delta: float = 4.0
    chains: int = Field(16, ge=1)  # K independent chains per datapoint
    leapfrog: int = Field(10, ge=1)  # leapfrog steps per HMC transition
    step_size: float = Field(0.05, gt=0)  # initial leapfrog step size
    target_accept: float = Field(0.65, gt=0, lt=1)
    adapt: Literal["datapoint", "chain", "none"] = "datapoint"
    adapt_factor: float = Field(1.02, ge=1)
    step_size_min: float = Field(1e-4, gt=0)
    step_size_max: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _step_range(self):
        if self.step_size_min > self.step_size_max:
            raise ValueError("step_size_min must not exceed step_size_max")
        return self

    @classmethod
    def paper(cls, intermediate: int = 5000) -> "AISConfig":
        """The protocol of Cremer et al. (2018): HMC with 10 leapfrog steps, 100 chains."""
        return cls(intermediate=intermediate, chains=100, leapfrog=10)


def beta_schedule(config: AISConfig, dtype=torch.float64) -> torch.Tensor:
    """beta_0 = 0 < beta_1 < ... < beta_T = 1, shape (T + 1,)."""
    t = torch.linspace(0.0, 1.0, config.intermediate + 1, dtype=torch.float64)
    if config.schedule == "linear":
        beta = t
    else:
        s = torch.sigmoid(config.sigmoid_delta * (2.0 * t - 1.0))
        beta = (s - s[0]) / (s[-1] - s[0])
    beta[0], beta[-1] = 0.0, 1.0
    return beta.to(dtype)


@dataclass
class AISResult:
    log_px: torch.Tensor  # (B,) float64: log mean_k w_k
    log_weights: torch.Tensor  # (K, B) float64: log AIS weight of each chain
    z: torch.Tensor  # (K, B, D): the chains' last states (approximately from the posterior)
    acceptance: torch.Tensor  # (B,): mean HMC acceptance probability over transitions and chains
    step_size: torch.Tensor  # (K or 1, B, 1): final step sizes


class _Energy:
    """log p(x, z) and log p(z) with their gradients at z (K, B, D), per chain.

    One backward pass per call: for the N(0, I) prior of the base class the prior's gradient is -z in
    closed form; a family that overrides ``log_prior`` gets a second autograd pass.
    """

    def __init__(self, model, x):
        self.model, self.x = model, x
        self.standard_prior = getattr(model, "standard_normal_prior", False)

    def __call__(self, z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_joint = self.model.log_joint(self.x, z)
            g_joint, = torch.autograd.grad(log_joint.sum(), z)
            if self.standard_prior:
                log_prior, g_prior = self.model.log_prior(z.detach()), -z.detach()
            else:
                log_prior = self.model.log_prior(z)
                g_prior, = torch.autograd.grad(log_prior.sum(), z)
        return log_joint.detach(), log_prior.detach(), g_joint, g_prior


def _log_f(beta, joint, prior):
    return (1.0 - beta) * prior + beta * joint


@torch.no_grad()
def ais(model, x: torch.Tensor, config: AISConfig | None = None) -> AISResult:
    """AIS estimate of log p(x) for a batch x (see the module docstring); uses the global torch RNG."""
    config = config or AISConfig()
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    K, B, D = config.chains, x.shape[0], model.latent_dim
    energy = _Energy(model, x)
    betas = beta_schedule(config).tolist()

    z = torch.randn(K, B, D, dtype=dtype, device=x.device)
    joint, prior, g_joint, g_prior = energy(z)
    log_w = torch.zeros(K, B, dtype=torch.float64, device=x.device)
    eps_shape = (K, B, 1) if config.adapt == "chain" else (1, B, 1)
    eps = torch.full(eps_shape, config.step_size, dtype=dtype, device=x.device)
    accept_sum = torch.zeros(B, dtype=torch.float64, device=x.device)

    for t in range(1, config.intermediate + 1):
        log_w += (betas[t] - betas[t - 1]) * (joint - prior).double()
        if t == config.intermediate:
            break
        beta = betas[t]
        # HMC transition leaving f_t invariant
        r0 = torch.randn_like(z)
        z_new = z
        r = r0 + 0.5 * eps * _log_f(beta, g_joint, g_prior)
        for step in range(config.leapfrog):
            z_new = z_new + eps * r
            j_new, p_new, gj_new, gp_new = energy(z_new)
            grad = _log_f(beta, gj_new, gp_new)
            r = r + (eps if step < config.leapfrog - 1 else 0.5 * eps) * grad
        h_old = -_log_f(beta, joint, prior) + 0.5 * r0.pow(2).sum(-1)
        h_new = -_log_f(beta, j_new, p_new) + 0.5 * r.pow(2).sum(-1)
        log_accept = (h_old - h_new).clamp(max=0.0)
        log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
        accept_prob = log_accept.exp()  # (K, B)
        accept = torch.rand_like(accept_prob) < accept_prob
        keep = accept.unsqueeze(-1)
        z = torch.where(keep, z_new, z)
        g_joint = torch.where(keep, gj_new, g_joint)
        g_prior = torch.where(keep, gp_new, g_prior)
        joint = torch.where(accept, j_new, joint)
        prior = torch.where(accept, p_new, prior)
        accept_sum += accept_prob.double().mean(0)
        if config.adapt != "none":
            rate = accept_prob if config.adapt == "chain" else accept_prob.mean(0, keepdim=True)
            factor = torch.where(rate > config.target_accept, config.adapt_factor, 1.0 / config.adapt_factor)
            eps = (eps * factor.unsqueeze(-1)).clamp(config.step_size_min, config.step_size_max)

    transitions = max(1, config.intermediate - 1)
    log_px = torch.logsumexp(log_w, 0) - math.log(K)
    return AISResult(log_px, log_w, z, accept_sum / transitions, eps)


def ais_log_px(model, x: torch.Tensor, config: AISConfig | None = None, batch_size: int | None = None
               ) -> torch.Tensor:
    """log p̂(x) by AIS, shape (N,) float64, over minibatches of `batch_size` datapoints (memory)."""
    if batch_size is None or batch_size >= x.shape[0]:
        return ais(model, x, config).log_px
    return torch.cat([ais(model, xb, config).log_px for xb in x.split(batch_size)])
