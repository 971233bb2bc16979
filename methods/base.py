"""The method contract: every inference method turns x into a Posterior it can sample and score.

Everything generic (ELBO, importance-sampled NLL, KL, active units, timing, tables) lives in
`benchmarks/` and only talks to this contract:

* ``InferenceMethod.posterior(x) -> Posterior``: all the test-time work (encoder pass, SVI steps,
  flows, mixtures, iterative updates).
* ``Posterior.sample(n) -> (z, log_q)``: ``z`` of shape (n, B, D), reparameterized, and ``log_q`` of
  shape (n, B), the log-density entering the importance weight w = p(x, z) / q. For methods with
  auxiliary variables, ``log_q = log q(z, a | x) - log r(a | x, z)``, so that E_q[w] = p(x) still holds.
* ``InferenceMethod.loss(x, step) -> scalar``: the training objective (a negative bound, averaged over
  the minibatch). The default is the negative (annealed) ELBO of the method's own posterior.

A method declares ``name`` (equal to its module's name) and a ``Config`` (an ``Options`` subclass: typed
options with defaults); defining the class in a module of ``methods/`` registers it in ``METHODS``.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from benchmarks.estimators import elbo
from benchmarks.models import GenerativeModel
from benchmarks.options import Options
from benchmarks.registry import Registry

LOG_2PI = math.log(2.0 * math.pi)
METHODS = Registry("method", "methods")
FFG_FAMILY = "diagonal Gaussian"  # the fully factorized Gaussian family (Cremer et al.'s FFG)


@dataclass(frozen=True)
class Step:
    """Where training is, as a method's loss needs to know it.

    The annealed bound is E_q[log p(x|z) + kl_weight * log p(z) - entropy_weight * log q]; KL warm-up
    sets both weights to beta, entropy annealing only ``entropy_weight`` (Cremer et al. 2018).
    """

    epoch: int = 0
    iteration: int = 0
    kl_weight: float = 1.0
    entropy_weight: float = 1.0

    @property
    def prior_weight(self) -> float:
        return self.kl_weight


class Posterior(abc.ABC):
    """An approximate posterior q(z|x) for a batch of B datapoints."""

    @abc.abstractmethod
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (z, log_q): z of shape (n, B, D), reparameterized; log_q of shape (n, B)."""

    def mean(self, n: int = 64) -> torch.Tensor:
        """E_q[z], shape (B, D). Default: Monte Carlo over n samples."""
        z, _ = self.sample(n)
        return z.mean(0)


class DiagonalGaussian(Posterior):
    """q(z) = N(z; mu, diag(exp(logvar))), parameters of shape (B, D)."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu
        self.logvar = logvar

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn((n, *self.mu.shape), dtype=self.mu.dtype, device=self.mu.device)
        z = self.mu + torch.exp(0.5 * self.logvar) * eps
        log_q = -0.5 * (eps.pow(2) + self.logvar + LOG_2PI).sum(-1)
        return z, log_q

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu, sigma^2) summed over D; z of shape (..., B, D)."""
        return gaussian_log_prob(z, self.mu, self.logvar)

    def mean(self, n: int = 0) -> torch.Tensor:
        return self.mu

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Closed-form KL(q || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2), shape (B,)."""
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


class InferenceMethod(nn.Module, abc.ABC):
    """Base class of all methods. Holds the shared generative model as ``self.model``.

    Subclasses set ``name`` (the registry key, equal to the module name) and ``Config`` (an ``Options``
    subclass), optionally ``test_config`` (small options the generic tests use), and
    implement ``posterior``. ``loss`` defaults to the negative annealed ELBO
    with ``config.train_samples`` samples, estimated by the shared estimator.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[Options]]
    #: options for the generic tests: small and numerically safe settings (benchopt's test_config)
    test_config: ClassVar[dict] = {}
    #: True when loss() returns a surrogate whose gradient is deliberately not the gradient of its value
    #: (e.g. per-part gradients with stop-gradients); the generic finite-difference check then does not apply
    surrogate_loss: ClassVar[bool] = False
    #: False for methods without an encoder (svi): L[q*] - L[q] is then an optimization gap
    amortized: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            return
        module_name = cls.__module__.rsplit(".", 1)[-1]
        if cls.name != module_name:
            raise TypeError(f"method class {cls.__qualname__} is named {cls.name!r} but lives in methods/{module_name}.py;"
                            " the registry name must equal the module name")
        if not (isinstance(cls.__dict__.get("Config"), type) and issubclass(cls.Config, Options)):
            raise TypeError(f"method {cls.name!r} must declare its Config, a subclass of benchmarks.options.Options")
        METHODS.add(cls)

    def __init__(self, model: GenerativeModel, config: Options):
        super().__init__()
        if not isinstance(config, type(self).Config):
            raise TypeError(f"{type(self).__name__} expects its {type(self).Config.__name__}, got {type(config)}")
        self.model = model
        self.config = config

    @abc.abstractmethod
    def posterior(self, x: torch.Tensor) -> Posterior:
        """Run inference for a batch x and return q(z|x)."""

    def loss(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        n = getattr(self.config, "train_samples", 1)
        bound = elbo(self.model, self.posterior(x), x, n, step.kl_weight, step.entropy_weight)
        return -bound.mean()

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for methods with staged training (e.g. mixture growth). Default: nothing."""

    def train_epochs(self, configured: int) -> int:
        """Total training epochs; staged methods derive it from their schedule. Default: train.epochs."""
        return configured

    def selectable(self, epoch: int) -> bool:
        """Whether the state after `epoch` may be chosen by validation (e.g. only the final stage)."""
        return True

    def inference_parameters(self) -> list[nn.Parameter]:
        """Parameters of the inference side (everything but the generative model)."""
        model_ids = {id(p) for p in self.model.parameters()}
        return [p for p in self.parameters() if id(p) not in model_ids]

    def variational_family(self) -> str:
        """The family q belongs to, named in every gap table (q*_family is its best member per point)."""
        return FFG_FAMILY

    def description(self) -> str:
        """A short note for the leaderboard: the options that define this run of the method."""
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
