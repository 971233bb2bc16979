"""Inverse autoregressive flow (IAF; Kingma et al. 2016) on a diagonal Gaussian encoder.

The encoder maps x to (mu, log sigma^2, h), h a context vector. With eps ~ N(0, I):

    z_0 = mu + sigma * eps,                 log q_0 = log N(eps; 0, I) - sum_i log sigma_i
    for t = 1..T:  (m_t, s_t) = MADE_t(z_{t-1}, h),   g_t = sigmoid(s_t)
                   z_t = g_t * z_{t-1} + (1 - g_t) * m_t           (the numerically stable gated update)
    log q(z_T|x) = log q_0 - sum_t sum_i log g_{t,i}

MADE_t is autoregressive in step t's variable order (m_{t,i}, s_{t,i} depend only on z_j earlier than i;
the context h enters its first layer unmasked), so each step's Jacobian is triangular in that order with
diagonal g_t, and log |det| = sum_i log g_{t,i}. The order is reversed between steps. The bias of the s
output starts at ``gate_bias`` (+2: g ~ 0.88), so each step starts close to a pass-through of z.

Trained jointly with the decoder on the ELBO E_q[log p(x, z_T) - log q(z_T|x)] (``train_samples``
reparameterized samples); evaluated by the shared ELBO / IS estimator with this log q.
Defaults: T = 2 steps of a 2-layer MADE (2 x 128 ELU units), context of 32 -- the paper's MNIST setting
(2-layer MADE, depth 2-8) at its cheapest depth: in the 60-epoch mnist5k quick suite T = 4 reached no better
validation ELBO (-122.7 vs -122.2 nats) at a higher cost per training step and per inference; raise
``steps`` for longer runs.

MADE is written here (masked linear layers) rather than taken from a flow library. Pyro's
ConditionalAffineAutoregressive(stable=True) is this very update with a context, but it would add a PPL and
its dependencies (pyro-api, opt_einsum) for some forty lines, and it hands the log-determinant over through
a per-call cache; zuko's MaskedAutoregressiveTransform takes a context and samples in one pass, but its
affine layer is exp-scale, so the gated update would need a custom univariate transform; nflows
(unmaintained since 2020) has no gated update.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from benchmarks.networks import Activation, activation
from benchmarks.options import Options

from .base import LOG_2PI, InferenceMethod, Posterior


class IAFConfig(Options):
    steps: int = Field(2, ge=0)  # T, the number of IAF steps (0 gives the plain Gaussian encoder)
    made_hidden: tuple[Annotated[int, Field(ge=1)], ...] = (128, 128)  # hidden layers of each step's MADE
    context_dim: int = Field(32, ge=0)  # size of the context h fed to every MADE (0: no context)
    activation: Activation = "elu"
    gate_bias: float = 2.0  # initial bias of s: gates start at sigmoid(gate_bias)
    train_samples: int = Field(1, ge=1)
    logvar_min: float = -12.0
    logvar_max: float = 8.0


class MaskedLinear(nn.Linear):
    """y = x (W * M)^T + b with a fixed 0/1 connectivity mask M of shape (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(order: torch.Tensor, hidden: tuple[int, ...], outputs_per_variable: int) -> list[torch.Tensor]:
    """Masks of a MADE whose outputs for variable order[k] see only variables order[:k].

    Variable at position k has degree k + 1; hidden units get degrees cycling over 1..D-1 (0, i.e. no
    variable input, when D = 1). A hidden unit sees inputs of degree <= its own; an output of degree d sees
    hidden units of degree < d, so the network is strictly autoregressive in `order`.
    """
    dim = order.numel()
    position = torch.empty_like(order)
    position[order] = torch.arange(dim, device=order.device)
    input_degree = position + 1
    degrees = [input_degree]
    for size in hidden:
        degrees.append(torch.arange(size, device=order.device) % max(dim - 1, 1) + 1 if dim > 1
                       else torch.zeros(size, dtype=torch.long, device=order.device))
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    output_degree = input_degree.repeat(outputs_per_variable)
    masks.append(output_degree[:, None] > degrees[-1][None, :])
    return [m.float() for m in masks]


class GatedIAFStep(nn.Module):
    """One IAF step: (m, s) = MADE(z, h) in `order`, z <- g z + (1 - g) m with g = sigmoid(s)."""

    def __init__(self, latent_dim: int, context_dim: int, hidden: tuple[int, ...], activation_name: str,
                 order: torch.Tensor, gate_bias: float):
        super().__init__()
        self.register_buffer("order", order.clone())
        masks = made_masks(order, hidden, outputs_per_variable=2)
        sizes = [latent_dim, *hidden, 2 * latent_dim]
        self.layers = nn.ModuleList(MaskedLinear(n_in, n_out, mask)
                                    for n_in, n_out, mask in zip(sizes[:-1], sizes[1:], masks))
        self.context_in = nn.Linear(context_dim, sizes[1], bias=False) if context_dim > 0 else None
        self.activation = activation(activation_name)
        with torch.no_grad():
            self.layers[-1].bias[latent_dim:].fill_(gate_bias)

    def made(self, z: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, s), each shaped like z; context of shape (B, C) broadcasts against z of shape (..., B, D)."""
        hidden = self.layers[0](z)
        if self.context_in is not None:
            hidden = hidden + self.context_in(context)
        for layer in self.layers[1:]:
            hidden = layer(self.activation(hidden))
        return hidden.chunk(2, dim=-1)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z', log |det dz'/dz|), the latter summed over D."""
        m, s = self.made(z, context)
        gate = torch.sigmoid(s)
        return gate * z + (1.0 - gate) * m, F.logsigmoid(s).sum(-1)


class IAFPosterior(Posterior):
    """q(z_T|x): the Gaussian base N(mu, sigma^2) pushed through the IAF steps given context h."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, context: torch.Tensor | None,
                 steps: nn.ModuleList):
        self.mu, self.logvar, self.context, self.steps = mu, logvar, context, steps

    def transform(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard-normal noise (n, B, D) -> (z_T, log q(z_T|x))."""
        z = self.mu + torch.exp(0.5 * self.logvar) * eps
        log_q = -0.5 * (eps.pow(2) + self.logvar + LOG_2PI).sum(-1)
        for step in self.steps:
            z, log_det = step(z, self.context)
            log_q = log_q - log_det
        return z, log_q

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn((n, *self.mu.shape), dtype=self.mu.dtype, device=self.mu.device)
        return self.transform(eps)


class IAF(InferenceMethod):
    name = "iaf"
    Config = IAFConfig

    def __init__(self, model, config: IAFConfig):
        super().__init__(model, config)
        dim = model.latent_dim
        self.body, features = model.encoder_body()
        self.head = nn.Linear(features, 2 * dim + config.context_dim)
        identity = torch.arange(dim)
        self.steps = nn.ModuleList(
            GatedIAFStep(dim, config.context_dim, tuple(config.made_hidden), config.activation,
                         identity if t % 2 == 0 else identity.flip(0), config.gate_bias)
            for t in range(config.steps)
        )

    def variational_family(self) -> str:
        return f"IAF ({self.config.steps} gated MADE steps)" if self.config.steps else "diagonal Gaussian"

    def posterior(self, x: torch.Tensor) -> IAFPosterior:
        dim = self.model.latent_dim
        out = self.head(self.body(x))
        mu, logvar = out[..., :dim], out[..., dim:2 * dim]
        context = out[..., 2 * dim:] if self.config.context_dim > 0 else None
        logvar = logvar.clamp(self.config.logvar_min, self.config.logvar_max)
        return IAFPosterior(mu, logvar, context, self.steps)
