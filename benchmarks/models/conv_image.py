"""RGB images (CelebA 64x64): conv encoder, deconv decoder, discretized likelihood over 8-bit pixels.

p(x|z) = prod_pixels Discretized{Logistic|Gaussian}(x; mean_theta(z), scale_c); NLL in nats, so
bits/dim = NLL / (D ln 2).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.special import log_ndtr

from ..errors import ConfigError
from ..options import Options
from .base import GenerativeModel


class ConvImageOptions(Options):
    latent_dim: int = Field(64, ge=1)
    channels: tuple[int, ...] = (32, 64, 128, 256)  # per resolution halving, encoder order
    features: int = Field(512, ge=1)  # encoder body output
    likelihood: Literal["discretized_logistic", "gaussian"] = "discretized_logistic"
    min_log_scale: float = -7.0


def log_prob_discretized(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, kind: str) -> torch.Tensor:
    """log P(x) per pixel for x in {0, 1/255, ..., 1}: the mass of the bin [x - 1/510, x + 1/510] (the
    edge bins extend to -inf / +inf) under a logistic or Gaussian with this mean and scale.

    Middle bins use log(F(a) - F(b)) computed stably: for the logistic sigma(a) - sigma(b) =
    sigma(a) sigma(-b) (1 - e^(b - a)); for the Gaussian the tail on the side away from the mean.
    """
    half = 1.0 / 510.0
    inv = torch.exp(-log_scale)
    upper, lower = (x + half - mean) * inv, (x - half - mean) * inv
    if kind == "discretized_logistic":
        log_cdf_upper = F.logsigmoid(upper)
        log_sf_lower = F.logsigmoid(-lower)
        middle = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(lower - upper))
    else:
        log_cdf_upper, log_sf_lower = log_ndtr(upper), log_ndtr(-lower)
        right = (lower + upper) > 0  # bin to the right of the mean: use survival functions
        hi = torch.where(right, log_ndtr(-lower), log_ndtr(upper))
        lo = torch.where(right, log_ndtr(-upper), log_ndtr(lower))
        middle = hi + torch.log(-torch.expm1(lo - hi))
    return torch.where(x < half, log_cdf_upper, torch.where(x > 1 - half, log_sf_lower, middle))


class ConvImage(GenerativeModel):
    """p(x|z) = prod_pixels Discretized{Logistic|Gaussian}(x; mean_theta(z), scale_c): a deconv decoder
    from z to per-pixel means in [0, 1] and a learned log-scale per channel. NLL in nats over 8-bit
    pixels, so bits/dim = NLL / (D ln 2)."""

    name = "conv_image"
    Options = ConvImageOptions
    fits = (("image", "discrete_pixels"),)
    default_for = fits

    def __init__(self, image_shape: tuple[int, int, int], options: ConvImageOptions):
        super().__init__(options.latent_dim)
        self.image_shape = tuple(image_shape)
        self.options = options
        channels, size = self.image_shape[0], self.image_shape[1]
        levels = self._levels(size, len(options.channels))
        self.start = size // 2**levels
        widths = list(options.channels[:levels])
        self.width = widths[-1]
        self.project = nn.Linear(options.latent_dim, widths[-1] * self.start**2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[::-1], widths[::-1][1:] + [channels]):
            layers += [nn.ELU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        self.deconv = nn.Sequential(*layers)
        self.log_scale = nn.Parameter(torch.full((channels, 1, 1), -2.0))

    @staticmethod
    def _levels(size: int, available: int) -> int:
        levels = 0
        while levels < available and size % 2 ** (levels + 1) == 0 and size // 2 ** (levels + 1) >= 4:
            levels += 1
        if levels == 0:
            raise ConfigError(f"image size {size} is too small for the conv family (need >= 8)")
        return levels

    @classmethod
    def from_data(cls, data, options):
        return cls(tuple(data.meta["image_shape"]), options)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.project(z.reshape(-1, z.shape[-1])).reshape(-1, self.width, self.start, self.start)
        return torch.sigmoid(self.deconv(h)).reshape(*lead, *self.image_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean = self.decode_mean(z)  # (n, B, C, H, W)
        log_scale = self.log_scale.clamp(min=self.options.min_log_scale)
        per_pixel = log_prob_discretized(x.reshape(x.shape[0], *self.image_shape), mean, log_scale,
                                         self.options.likelihood)
        return per_pixel.flatten(-3).sum(-1)

    def encoder_body(self) -> tuple[nn.Module, int]:
        channels, size = self.image_shape[0], self.image_shape[1]
        levels = self._levels(size, len(self.options.channels))
        widths = [channels, *self.options.channels[:levels]]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ELU()]
        flat = widths[-1] * (size // 2**levels) ** 2
        body = nn.Sequential(_AsImage(self.image_shape), *layers,
                             nn.Flatten(), nn.Linear(flat, self.options.features), nn.ELU())
        return body, self.options.features

    def output_elements(self) -> int:
        return int(np.prod(self.image_shape))


class _AsImage(nn.Module):
    """Reshape a batch to (B, C, H, W) whatever its incoming layout."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)
