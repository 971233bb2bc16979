"""Auxiliary-variable inference (ADGM, Maaløe et al. 2016; hierarchical variational models, Ranganath et
al. 2016).

An auxiliary a makes the marginal q(z|x) = ∫ q(a|x) q(z|a,x) da a continuous mixture of Gaussians:

    q(a|x) = N(a; mu_a(x), sigma_a^2(x)),   q(z|a,x) = N(z; mu_z(x, a), sigma_z^2(x, a)),
    r(a|x,z) = N(a; mu_r(x, z), sigma_r^2(x, z))    (a learned reverse model)

and the bound, with (a, z) ~ q(a|x) q(z|a,x),

    L = E_q[log p(x|z) + log p(z) + log r(a|x,z) - log q(a|x) - log q(z|a,x)]
      = ELBO[q(z|x)] - E_q(z|x)[KL(q(a|z,x) || r(a|x,z))]  <=  log p(x).

``Posterior.sample(n)`` returns z and log_q = log q(a|x) + log q(z|a,x) - log r(a|x,z): the shared ELBO
is then L, and the shared IS estimate mean_s p(x,z_s) r(a_s|x,z_s) / q(a_s,z_s|x) is unbiased for p(x),
so IS-NLL stays valid. With r equal to the exact q(a|z,x), log_q is the marginal log q(z|x) and L is the
ELBO of the marginal.

``reverse: prior`` is the labelled variant with a fixed p(a) = N(0, I) in place of r (the inference side
of a two-level hierarchical VAE). Its bound E_q(a|x)[ELBO(q(z|a,x))] - KL(q(a|x) || p(a)) is valid but
never above the best diagonal-Gaussian ELBO; ``learned`` is the default.

Networks: the x-features come from ``model.encoder_body()`` (shared by q and r, computed once per batch);
q(a|x) is a linear head; q(z|a,x) and r(a|x,z) are heads on [features, a] and [features, z]: a linear map
plus an MLP whose last layer starts at zero, so training starts from a linear-Gaussian head (a plain MLP
head trained markedly slower on MNIST in the quick suite's epoch budget). Defaults: aux_dim = latent_dim,
one hidden layer of 128 tanh units per head, one training sample.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from benchmarks.networks import Activation, activation, mlp
from benchmarks.options import Options

from .base import LOG_2PI, DiagonalGaussian, InferenceMethod, Posterior, gaussian_log_prob


class AuxiliaryConfig(Options):
    aux_dim: Optional[int] = Field(None, ge=1)  # dimension of a; None: the model's latent_dim
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (128,)  # hidden layers of the q(z|a,x) and r(a|x,z) heads
    activation: Activation = "tanh"
    reverse: Literal["learned", "prior"] = "learned"  # r(a|x,z), or the fixed p(a) = N(0, I) variant
    train_samples: int = Field(1, ge=1)
    logvar_min: float = -12.0
    logvar_max: float = 8.0


class ConditionalGaussianHead(nn.Module):
    """(features (B, F), v (..., B, V)) -> (mu, log sigma^2) of a diagonal Gaussian over `output_dim`.

    A linear map of [features, v] plus, with hidden layers, an MLP of [features, v] whose last layer starts
    at zero: the head starts as a linear Gaussian head (as fast to train as AVI's) and grows nonlinear.
    Every layer on [features, v] is W_f features + W_v v + b, computed for the features once per datapoint
    rather than once per sample.
    """

    def __init__(self, feature_dim: int, input_dim: int, hidden: tuple[int, ...], output_dim: int,
                 activation_name: str, logvar_range: tuple[float, float]):
        super().__init__()
        self.feature_out = nn.Linear(feature_dim, 2 * output_dim)
        self.input_out = nn.Linear(input_dim, 2 * output_dim, bias=False)
        self.nonlinear = None
        if hidden:
            self.feature_in = nn.Linear(feature_dim, hidden[0])
            self.input_in = nn.Linear(input_dim, hidden[0], bias=False)
            self.nonlinear = nn.Sequential(activation(activation_name), mlp([*hidden, 2 * output_dim], activation_name))
            with torch.no_grad():
                self.nonlinear[-1][-1].weight.zero_()
                self.nonlinear[-1][-1].bias.zero_()
        self.logvar_range = logvar_range

    def forward(self, features: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.feature_out(features) + self.input_out(v)
        if self.nonlinear is not None:
            out = out + self.nonlinear(self.feature_in(features) + self.input_in(v))
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(*self.logvar_range)


class AuxiliaryPosterior(Posterior):
    """Samples (a, z) ~ q(a|x) q(z|a,x) and scores them by log q(a|x) + log q(z|a,x) - log r(a|x,z)."""

    def __init__(self, method: "Auxiliary", features: torch.Tensor):
        self.method = method
        self.features = features
        self.aux = method.aux_distribution(features)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, log_q_a = self.aux.sample(n)
        mu, logvar = self.method.latent_head(self.features, a)
        eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q_z = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)
        return z, log_q_a + log_q_z - self.method.reverse_log_prob(self.features, z, a)

    def mean(self, n: int = 64) -> torch.Tensor:
        """E_q[z] = E_q(a|x)[mu_z(x, a)], Monte Carlo over n draws of a."""
        a, _ = self.aux.sample(n)
        return self.method.latent_head(self.features, a)[0].mean(0)


class Auxiliary(InferenceMethod):
    name = "auxiliary"
    Config = AuxiliaryConfig

    def __init__(self, model, config: AuxiliaryConfig):
        super().__init__(model, config)
        latent_dim = model.latent_dim
        self.aux_dim = config.aux_dim or latent_dim
        logvar_range = (config.logvar_min, config.logvar_max)
        hidden = tuple(config.hidden)
        self.body, features = model.encoder_body()
        self.aux_head = nn.Linear(features, 2 * self.aux_dim)
        self.latent_head = ConditionalGaussianHead(features, self.aux_dim, hidden, latent_dim,
                                                   config.activation, logvar_range)
        self.reverse_head = (
            ConditionalGaussianHead(features, latent_dim, hidden, self.aux_dim, config.activation, logvar_range)
            if config.reverse == "learned"
            else None
        )

    def aux_distribution(self, features: torch.Tensor) -> DiagonalGaussian:
        """q(a|x)."""
        mu, logvar = self.aux_head(features).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max))

    def reverse_log_prob(self, features: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log r(a|x,z), or log N(a; 0, I) in the fixed-prior variant; shape (n, B)."""
        if self.reverse_head is None:
            return -0.5 * (a.pow(2) + LOG_2PI).sum(-1)
        mu, logvar = self.reverse_head(features, z)
        return gaussian_log_prob(a, mu, logvar)

    def variational_family(self) -> str:
        reverse = "learned r(a|x,z)" if self.reverse_head is not None else "fixed p(a)"
        return f"auxiliary variables ({reverse})"

    def posterior(self, x: torch.Tensor) -> AuxiliaryPosterior:
        return AuxiliaryPosterior(self, self.body(x))
