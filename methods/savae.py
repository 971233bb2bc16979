"""Semi-amortized VAE (Kim, Wiseman, Miller, Sontag, Rush 2018).

lambda_0 = enc_phi(x), then the K SVI steps of methods/_refinement.py give lambda_K, and

    loss = -ELBO(x; lambda_K(lambda_0(phi), theta), theta)

with gradients to theta and phi *through* all K steps. ``gradient`` chooses how the second-order terms
are formed: "exact" (autograd double backward through the unrolled steps) or "finite_difference" (the
paper's Algorithm 1: central-difference Hessian-vector products replaying the same noise, step
``fd_step``). KL warm-up applies inside the SVI objective too. K = 0 is exactly AVI.

``variant`` (the paper's ablations):
* "savae"       the above (default);
* "vae_svi"     the encoder is trained on its own ELBO(lambda_0), the decoder on ELBO(lambda_K) with
                lambda_K held constant (no backprop through the steps);
* "vae_svi_kl"  as vae_svi, but the encoder is trained to minimize KL(q_{lambda_K} || q_{lambda_0}),
                i.e. toward the refined posterior.
At test time every variant runs the encoder and ``test_steps`` SVI steps.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from benchmarks.estimators import elbo

from ._refinement import SVIOptions, refine, refine_finite_difference
from .avi import GaussianEncoder
from .base import DiagonalGaussian, InferenceMethod, Step


class SAVAEConfig(SVIOptions):
    gradient: Literal["exact", "finite_difference"] = "exact"
    fd_step: float = Field(1e-5, gt=0)
    variant: Literal["savae", "vae_svi", "vae_svi_kl"] = "savae"
    logvar_min: float = -12.0
    logvar_max: float = 8.0


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0).sum(-1)


class SAVAE(InferenceMethod):
    name = "savae"
    Config = SAVAEConfig
    test_config = {"steps": 10, "lr": 0.05}  # see svi.SVI.test_config

    def __init__(self, model, config: SAVAEConfig):
        super().__init__(model, config)
        self.encoder = GaussianEncoder(model, config.logvar_min, config.logvar_max)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        mu0, logvar0 = self.encoder(x)
        mu, logvar = refine(self.model, x, mu0, logvar0, self.config, self.config.inference_steps)
        return DiagonalGaussian(mu, logvar)

    def refined(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu0, logvar0, muK, logvarK) for training, differentiable as the variant requires."""
        c = self.config
        mu0, logvar0 = self.encoder(x)
        if c.variant != "savae":
            return (mu0, logvar0, *refine(self.model, x, mu0, logvar0, c, c.steps, kl_weight))
        if c.gradient == "exact" or c.steps == 0:
            return (mu0, logvar0, *refine(self.model, x, mu0, logvar0, c, c.steps, kl_weight, create_graph=True))
        return (mu0, logvar0, *refine_finite_difference(self.model, x, mu0, logvar0, c, c.steps, kl_weight, c.fd_step))

    def loss(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        c = self.config
        mu0, logvar0, mu, logvar = self.refined(x, step.kl_weight)
        decoder_loss = -elbo(self.model, DiagonalGaussian(mu, logvar), x, c.train_samples,
                             step.kl_weight, step.entropy_weight).mean()
        if c.variant == "savae":
            return decoder_loss
        if c.variant == "vae_svi":
            encoder_loss = _encoder_only_loss(self.model, x, mu0, logvar0, c.train_samples, step)
        else:
            encoder_loss = gaussian_kl(mu.detach(), logvar.detach(), mu0, logvar0).mean()
        return decoder_loss + encoder_loss


def _encoder_only_loss(model, x, mu0, logvar0, samples: int, step: Step) -> torch.Tensor:
    """-ELBO(lambda_0) as a loss whose gradient reaches only the encoder (theta held constant).

    With g = dELBO/dlambda_0 at the detached lambda_0, the surrogate -g . lambda_0(phi) has the encoder
    gradient of -ELBO and none for theta; its value is shifted to -ELBO for logging.
    """
    with torch.enable_grad():
        lam = (mu0.detach().requires_grad_(True), logvar0.detach().requires_grad_(True))
        bound = elbo(model, DiagonalGaussian(*lam), x, samples, step.kl_weight, step.entropy_weight).mean()
        g_mu, g_lv = torch.autograd.grad(bound, lam)
    surrogate = -(g_mu * mu0).sum() - (g_lv * logvar0).sum()
    return surrogate - surrogate.detach() - bound.detach()
