"""Factor analysis, everything in closed form: x = W z + b + e, e ~ N(0, diag psi).

log p(x) = log N(x; b, W W^T + diag psi) and p(z|x) = N(S W^T Psi^-1 (x - b), S), S = (I + W^T Psi^-1 W)^-1.
"""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..networks import Activation, mlp
from ..options import Options
from .base import LOG_2PI, GenerativeModel


class LinearGaussianOptions(Options):
    latent_dim: Optional[int] = Field(None, ge=1)  # default: the dataset's true latent dimension
    encoder_hidden: tuple[int, ...] = ()  # () = linear encoder, which contains the exact posterior
    activation: Activation = "tanh"
    fixed_to_truth: bool = False  # set theta to the data-generating parameters and freeze it


class LinearGaussian(GenerativeModel):
    """x = W z + b + e, e ~ N(0, diag(psi)); log p(x) and p(z|x) are Gaussian and exact."""

    name = "linear_gaussian"
    Options = LinearGaussianOptions
    fits = (("vector", "gaussian"),)
    default_for = fits

    def __init__(self, x_dim: int, options: LinearGaussianOptions, truth: dict | None = None):
        latent_dim = options.latent_dim or (truth["W"].shape[1] if truth else None)
        if latent_dim is None:
            raise ConfigError("model.latent_dim is required for linear_gaussian without a true model")
        super().__init__(latent_dim)
        self.x_dim = x_dim
        self.options = options
        self.W = nn.Parameter(0.1 * torch.randn(x_dim, latent_dim))
        self.b = nn.Parameter(torch.zeros(x_dim))
        self.log_psi = nn.Parameter(torch.zeros(x_dim))
        if options.fixed_to_truth:
            if truth is None:
                raise ConfigError("model.fixed_to_truth needs a dataset with a known generator")
            self.set_parameters(truth["W"], truth["b"], truth["psi"])
            self.requires_grad_(False)

    @classmethod
    def from_data(cls, data, options) -> "LinearGaussian":
        return cls(data.x_dim, options, truth=data.meta.get("truth"))

    def set_parameters(self, W: torch.Tensor, b: torch.Tensor, psi: torch.Tensor) -> None:
        with torch.no_grad():
            if W.shape != self.W.shape:
                raise ConfigError(f"true W has shape {tuple(W.shape)}, model has {tuple(self.W.shape)}")
            self.W.copy_(W)
            self.b.copy_(b)
            self.log_psi.copy_(torch.log(psi))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean = z @ self.W.T + self.b
        return -0.5 * ((x - mean).pow(2) * torch.exp(-self.log_psi) + self.log_psi + LOG_2PI).sum(-1)

    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.W @ self.W.T + torch.diag(torch.exp(self.log_psi))
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)

    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, D) and covariance (D, D) of p(z|x)."""
        w_scaled = self.W.T * torch.exp(-self.log_psi)  # W^T Psi^-1, (D, x_dim)
        precision = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device) + w_scaled @ self.W
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ (cov @ w_scaled).T
        return mean, cov

    def encoder_body(self) -> tuple[nn.Module, int]:
        hidden = list(self.options.encoder_hidden)
        if not hidden:
            return nn.Identity(), self.x_dim
        return mlp([self.x_dim, *hidden], self.options.activation, True), hidden[-1]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W.T + self.b

    def output_elements(self) -> int:
        return self.x_dim
