"""Standard amortized VI (the VAE encoder): q(z|x) = N(mu_phi(x), diag sigma_phi^2(x)).

Trained jointly with the decoder on the ELBO  E_q[log p(x|z) + log p(z) - log q(z|x)]  with
``train_samples`` reparameterized samples (Kingma & Welling 2014). Inference is one encoder pass.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from benchmarks.options import Options

from .base import DiagonalGaussian, InferenceMethod


class AVIConfig(Options):
    train_samples: int = Field(1, ge=1)
    logvar_min: float = -12.0
    logvar_max: float = 8.0


class GaussianEncoder(nn.Module):
    """x -> (mu, log sigma^2): the data modality's encoder body plus a linear head."""

    def __init__(self, model, logvar_min: float = -12.0, logvar_max: float = 8.0):
        super().__init__()
        self.body, features = model.encoder_body()
        self.head = nn.Linear(features, 2 * model.latent_dim)
        self.logvar_range = (logvar_min, logvar_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(*self.logvar_range)


class AVI(InferenceMethod):
    name = "avi"
    Config = AVIConfig

    def __init__(self, model, config: AVIConfig):
        super().__init__(model, config)
        self.encoder = GaussianEncoder(model, config.logvar_min, config.logvar_max)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(*self.encoder(x))
