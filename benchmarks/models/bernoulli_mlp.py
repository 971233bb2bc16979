"""Binary images and vectors: an MLP decoder with a Bernoulli likelihood per dimension.

p(x|z) = prod_i Bernoulli(x_i; sigmoid(f_theta(z)_i)), f an MLP z -> hidden -> x_dim (IWAE / Cremer et al.:
z = 50, 200-200, encoder 784-200-200-2z).
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ..networks import Activation, mlp
from ..options import Options
from .base import GenerativeModel


class BernoulliMLPOptions(Options):
    latent_dim: int = Field(50, ge=1)
    hidden: tuple[int, ...] = (200, 200)
    encoder_hidden: Optional[tuple[int, ...]] = None  # default: same as `hidden`
    activation: Activation = "tanh"


class BernoulliMLP(GenerativeModel):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(f_theta(z)_i))."""

    name = "bernoulli_mlp"
    Options = BernoulliMLPOptions
    fits = (("image", "bernoulli"), ("vector", "bernoulli"))
    default_for = fits

    def __init__(self, x_dim: int, options: BernoulliMLPOptions):
        super().__init__(options.latent_dim)
        self.x_dim = x_dim
        self.options = options
        self.decoder = mlp([options.latent_dim, *options.hidden, x_dim], options.activation)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(z)
        x = x.reshape(x.shape[0], -1).to(logits.dtype)
        # log Bernoulli(x; sigmoid(l)) = x * l - softplus(l)
        return (x * logits).sum(-1) - F.softplus(logits).sum(-1)

    def encoder_body(self) -> tuple[nn.Module, int]:
        hidden = list(self.options.encoder_hidden or self.options.hidden)
        body = nn.Sequential(nn.Flatten(), mlp([self.x_dim, *hidden], self.options.activation, True))
        return body, hidden[-1] if hidden else self.x_dim

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def output_elements(self) -> int:
        return self.x_dim
