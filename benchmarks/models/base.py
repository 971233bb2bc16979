"""The generative-model contract and the family registry.

p_theta(x, z) = p_theta(x|z) N(z; 0, I). Shapes: x (B, ...), z (n, B, D) -> per-sample (n, B).
A family is a subclass with a ``name``, an ``Options`` class and the data it fits: ``fits`` lists the
(modality, likelihood) pairs of prepared data it can model, the first family (by name) that lists a pair
in ``default_for`` is that data's default. A family also supplies the *encoder body* (x -> features)
matching its modality, so methods add only heads and stay modality-agnostic.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..options import Options
from ..registry import Registry

LOG_2PI = math.log(2.0 * math.pi)
FAMILIES = Registry("model family", "benchmarks.models")


class GenerativeModel(nn.Module, abc.ABC):
    """p_theta(x|z) p(z) with p(z) = N(0, I)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]]
    fits: ClassVar[tuple[tuple[str, str], ...]] = ()
    default_for: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: log_prior is the standard normal of this base class (AIS then uses its gradient -z in closed form)
    standard_normal_prior: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            FAMILIES.add(cls)

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

    @property
    def recurrent(self) -> bool:
        """Whether the model runs recurrent (cuDNN RNN) kernels: double backward and eval-mode backward
        through them need cuDNN off on CUDA (see benchmarks.runtime's guards)."""
        return any(isinstance(m, nn.RNNBase) for m in self.modules())


def family_class(modality: str, likelihood: str, requested: Optional[str] = None) -> type[GenerativeModel]:
    """The family for data of this modality and likelihood: `requested`, checked to fit, or the default."""
    kind = (modality, likelihood)
    if requested is not None:
        cls = FAMILIES.get(requested)
        if kind not in cls.fits:
            fitting = [c.name for c in FAMILIES.classes() if kind in c.fits]
            raise ConfigError(f"model family {requested!r} does not fit {likelihood} {modality} data "
                              f"(families that do: {fitting})")
        return cls
    for cls in FAMILIES.classes():
        if kind in cls.default_for:
            return cls
    raise ConfigError(f"no model family models {likelihood} {modality} data")


def resolve_options(modality: str, likelihood: str, model_cfg: dict | None, where: str = "model") -> dict:
    """A `model:` section with its family named and every option's default filled in."""
    cfg = dict(model_cfg or {})
    cls = family_class(modality, likelihood, cfg.pop("family", None))
    return {"family": cls.name, **cls.Options.parse(cfg, where).to_dict()}


def build(data, model_cfg: dict | None = None) -> GenerativeModel:
    """The generative model for prepared data `data` (a DataSplits) and a `model:` config section."""
    cfg = dict(model_cfg or {})
    cls = family_class(data.modality, data.likelihood, cfg.pop("family", None))
    return cls.from_data(data, cls.Options.parse(cfg, f"datasets.{data.name}.model"))
