"""The shared generative models p_theta(x, z) = p_theta(x|z) N(z; 0, I), one family per data modality.

Every method on a dataset gets the same family and sizes, built by ``build``. A family also supplies
the *encoder body* (x -> features) matching its modality, so methods add only heads and stay
modality-agnostic.

Families:
* ``bernoulli_mlp``  binary images / vectors: MLP decoder, p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i))
  (IWAE / Cremer et al.: z = 50, 200-200 tanh, encoder 784-200-200-2z).
* ``linear_gaussian``  factor analysis x = W z + b + e, e ~ N(0, diag psi): log p(x) = log N(x; b, W W^T +
  diag psi) and the posterior N(S W^T Psi^-1 (x - b), S), S = (I + W^T Psi^-1 W)^-1 are exact.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .config import from_dict
from .errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def mlp(sizes: list[int], activation: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (and after the last if asked)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GenerativeModel(nn.Module, abc.ABC):
    """p_theta(x|z) p(z) with p(z) = N(0, I). Shapes: x (B, ...), z (n, B, D) -> per-sample (n, B)."""

    family: str = ""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)

    @abc.abstractmethod
    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_theta(x|z), shape (n, B)."""

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(x, z) + self.log_prior(z)

    @abc.abstractmethod
    def encoder_body(self) -> tuple[nn.Module, int]:
        """A fresh x -> features network for this modality, and its feature size."""

    @abc.abstractmethod
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], for sample and reconstruction grids."""

    @classmethod
    def from_data(cls, data, options) -> "GenerativeModel":
        """Build the family for prepared data (a DataSplits) with typed options."""
        return cls(data.x_dim, options)

    def exact_log_marginal(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """log p_theta(x) in closed form where the family allows it, else None."""
        return None

    def output_elements(self) -> int:
        """Numbers the decoder produces per sample and datapoint (sizes evaluation chunks)."""
        return 1


# --------------------------------------------------------------------------------------------------
# binary data: MLP decoder with Bernoulli likelihood


@dataclass
class BernoulliMLPOptions:
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)
    encoder_hidden: Optional[tuple[int, ...]] = None  # default: same as `hidden`
    activation: str = "tanh"

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")


class BernoulliMLP(GenerativeModel):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(f_theta(z)_i)), f an MLP (z -> hidden -> x_dim)."""

    family = "bernoulli_mlp"

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


# --------------------------------------------------------------------------------------------------
# linear-Gaussian latent model (factor analysis): everything in closed form


@dataclass
class LinearGaussianOptions:
    latent_dim: Optional[int] = None  # default: the dataset's true latent dimension
    encoder_hidden: tuple[int, ...] = ()  # () = linear encoder, which contains the exact posterior
    activation: str = "tanh"
    fixed_to_truth: bool = False  # set theta to the data-generating parameters and freeze it


class LinearGaussian(GenerativeModel):
    """x = W z + b + e, e ~ N(0, diag(psi)); log p(x) and p(z|x) are Gaussian and exact."""

    family = "linear_gaussian"

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


# --------------------------------------------------------------------------------------------------
# registry of families

FAMILIES: dict[str, tuple[type, type]] = {
    "bernoulli_mlp": (BernoulliMLP, BernoulliMLPOptions),
    "linear_gaussian": (LinearGaussian, LinearGaussianOptions),
}


def _split_family(dataset_cls: type, model_cfg: dict) -> tuple[str, dict]:
    cfg = dict(model_cfg or {})
    family = cfg.pop("family", dataset_cls.default_family)
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; available: {sorted(FAMILIES)}")
    if family not in dataset_cls.families:
        raise ConfigError(
            f"model family {family!r} does not fit dataset {dataset_cls.name!r} "
            f"(it takes {list(dataset_cls.families)})"
        )
    return family, cfg


def family_options(dataset_cls: type, model_cfg: dict, where: str = "model"):
    """Type-checked options of the model family a dataset's `model:` section selects."""
    family, cfg = _split_family(dataset_cls, model_cfg)
    return from_dict(FAMILIES[family][1], cfg, where)


def build(data, model_cfg: dict | None = None) -> GenerativeModel:
    """The generative model for prepared data `data` (a DataSplits) and a `model:` config section."""
    from .datasets import dataset_class

    dataset_cls = dataset_class(data.name)
    family, cfg = _split_family(dataset_cls, model_cfg or {})
    model_cls, options_cls = FAMILIES[family]
    options = from_dict(options_cls, cfg, f"datasets.{data.name}.model")
    return model_cls.from_data(data, options)
